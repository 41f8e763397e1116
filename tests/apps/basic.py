"""Handlers used by the test suite: each one exercises one behaviour of the pool."""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import subprocess
import sys
import time

import procq

app = procq.App("tests", default_timeout=60, default_grace=1.0, retry_delay=lambda attempt, error: 0.05)

STARTS_FILE = os.environ.get("PROCQ_TEST_STARTS")


@app.on_worker_start
def record_worker_start():
    if STARTS_FILE:
        with open(STARTS_FILE, "a") as file:
            file.write(f"{os.getpid()}\n")


@app.task("echo")
def echo(ctx, *args, **kwargs):
    return {"args": list(args), "kwargs": kwargs, "attempt": ctx.attempt, "task_id": ctx.task_id}


@app.task("add")
def add(ctx, a, b):
    return a + b


@app.task("sleep")
def sleep(ctx, seconds, marker=None):
    time.sleep(seconds)
    return seconds


@app.task("fail")
def fail(ctx, message="boom"):
    raise ValueError(message)


class Unpicklable(Exception):
    def __init__(self, handle):
        super().__init__("cannot be pickled")
        self.handle = handle

    def __reduce__(self):
        raise TypeError("no pickling")


@app.task("fail_unpicklable")
def fail_unpicklable(ctx):
    raise Unpicklable(lambda: None)


@app.task("bad_result")
def bad_result(ctx):
    return {"value": object()}


@app.task("big_result")
def big_result(ctx, size):
    return "x" * size


@app.task("progress")
def progress(ctx, steps=5, delay=0.05):
    for step in range(steps):
        ctx.progress(step + 1, steps, f"step {step + 1}")
        time.sleep(delay)
    return steps


@app.task("cpu_loop")
def cpu_loop(ctx, swallow=False):
    count = 0
    while True:
        try:
            count += 1
        except Exception:  # noqa: BLE001 - the case under test: a handler that swallows Exception
            pass


@app.task("cpu_loop_swallow")
def cpu_loop_swallow(ctx):
    while True:
        try:
            sum(range(1000))
        except Exception:  # noqa: BLE001
            pass


@app.task("ignore_cancel")
def ignore_cancel(ctx):
    while True:
        try:
            while True:
                sum(range(1000))
        except BaseException:  # noqa: BLE001 - deliberately swallows TaskCancelled
            continue


@app.task("c_loop")
def c_loop(ctx):
    return sum(itertools.repeat(1, 10 ** 12))


@app.task("backtrack")
def backtrack(ctx, n=40):
    import re

    return bool(re.match(r"(a+)+$", "a" * n + "b"))


@app.task("mask_signals")
def mask_signals(ctx):
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP})
    time.sleep(1000)


@app.task("ignore_soft_signal")
def ignore_soft_signal(ctx):
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    return "ignored"


@app.task("popen_sleep")
def popen_sleep(ctx, marker, wait=True):
    child = subprocess.Popen(["sleep", "1000"], env={**os.environ, "PROCQ_TEST_MARKER": marker})
    if wait:
        child.wait()
    return child.pid


@app.task("setsid_child")
def setsid_child(ctx, marker, wait=True):
    child = subprocess.Popen(["sleep", "1000"], env={**os.environ, "PROCQ_TEST_MARKER": marker},
                             start_new_session=True)
    if wait:
        time.sleep(1000)
    return child.pid


@app.task("double_fork")
def double_fork(ctx, marker, wait=True):
    code = ("import os, subprocess, sys\n"
            "subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PROCQ_TEST_MARKER": marker}, check=True)
    if wait:
        time.sleep(1000)
    return "forked"


@app.task("exit_hard")
def exit_hard(ctx, code=3):
    os._exit(code)


@app.task("segfault")
def segfault(ctx):
    ctypes.string_at(0)


@app.task("memory_hog")
def memory_hog(ctx, megabytes=400):
    blocks = []
    for _ in range(megabytes // 10):
        blocks.append(bytearray(10 * 1024 * 1024))
        time.sleep(0.02)
    time.sleep(1000)


@app.task("cleanup_error")
def cleanup_error(ctx):
    try:
        time.sleep(1000)
    except procq.TaskCancelled:
        raise RuntimeError("cleanup failed")


@app.task("record_pid")
def record_pid(ctx):
    return os.getpid()


@app.task("slow_cancel_aware")
def slow_cancel_aware(ctx, seconds):
    try:
        time.sleep(seconds)
    except procq.TaskCancelled as exc:
        return f"stopped: {exc.reason}"
    return "finished"


@app.task("print_output")
def print_output(ctx, text):
    print(text)
    sys.stderr.write(text + "\n")
    return text


@app.task("child_ignored_signals")
def child_ignored_signals(ctx):
    """Return the SigIgn mask (hex) of a program the handler runs."""
    output = subprocess.run(["grep", "SigIgn", "/proc/self/status"], capture_output=True, text=True, check=True)
    return output.stdout.split()[1]


@app.task("enqueue_follow_up")
def enqueue_follow_up(ctx, value):
    """Enqueue an echo task from inside a handler and return its id."""
    with procq.Client() as client:
        return client.enqueue("echo", [value]).id


@app.task("surrogate_result")
def surrogate_result(ctx):
    """Return a string with a lone surrogate, as os.listdir gives for a file name that is not UTF-8."""
    return "name-\udcff"


@app.task("surrogate_error")
def surrogate_error(ctx):
    raise ValueError("bad name \udcff")


@app.task("bad_progress")
def bad_progress(ctx):
    ctx.progress(float("nan"), 10, "nan progress")
    ctx.flush_progress()
    ctx.progress(1, 10, "message \udcff" + "x" * 5000)
    ctx.flush_progress()
    return "done"
