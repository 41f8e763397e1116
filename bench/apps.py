"""Handlers for the benchmarks: procq handlers and the plain functions the peer pools run.

Each procq handler wraps the plain function of the same name, so procq and the peers
(ProcessPoolExecutor, multiprocessing.Pool, pebble) run the same code. The plain
functions take no Context and must stay importable as `bench.apps.NAME` for pickling.
"""

from __future__ import annotations

import itertools
import os
import time

import procq

# Tasks in the benchmarks always pass their own timeout and grace; these are fallbacks.
app = procq.App("bench", default_timeout=60, default_grace=0.1)


def noop():
    return None


def record_start(path: str | None) -> None:
    """Write "wall-clock start time, pid" to `path`, as the first thing a looping task does."""
    if path is None:
        return
    started = time.time()
    with open(path, "w") as file:
        file.write(f"{started!r} {os.getpid()}\n")


def py_loop(start_path: str | None = None):
    """Loop in bytecode forever; the soft signal's exception ends it."""
    record_start(start_path)
    count = 0
    while True:
        count += 1


def c_loop(start_path: str | None = None):
    """Loop inside one C call that never returns to the interpreter; only SIGKILL ends it."""
    record_start(start_path)
    return sum(itertools.repeat(1, 10 ** 12))


def swallow(start_path: str | None = None):
    """Loop in bytecode and swallow every exception, TaskCancelled included; only SIGKILL ends it."""
    record_start(start_path)
    count = 0
    while True:
        try:
            while True:
                count += 1
        except BaseException:  # noqa: BLE001 - the case under test: a handler that ignores the stop
            continue


@app.task("noop")
def noop_task(ctx):
    return noop()


@app.task("py_loop")
def py_loop_task(ctx, start_path=None):
    return py_loop(start_path)


@app.task("c_loop")
def c_loop_task(ctx, start_path=None):
    return c_loop(start_path)


@app.task("swallow")
def swallow_task(ctx, start_path=None):
    return swallow(start_path)
