"""Enforcement of timeouts, deadlines, memory limits and cancels, with real workers and signals.

Every test checks the task's final record, that the worker and every process its handler
started are gone and reaped (no zombie), and that the pool is back to its configured size.
Tests that depend on how processes are found and killed run twice: with a cgroup per
worker, where cgroup v2 is writable, and with the fallback (`--no-cgroup`) of process
groups, descendants and the PROCQ_ATTEMPT environment marker. Time bounds are generous, for a loaded 2-core machine.

This module is also an application (`app` below): tests/apps/basic.py plus two handlers it
lacks, one that crashes after starting a child and one whose end cannot be interrupted.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

import psutil
import pytest

import procq
from tests.apps import basic
from tests.conftest import (TEST_APP, new_marker, pool_size, process_state, processes_with_marker,
                            wait_for)

app = procq.App("enforcement-tests", default_timeout=60, default_grace=1.0,
                retry_delay=lambda attempt, error: 0.05)
app.handlers.update(basic.app.handlers)
ENFORCEMENT_APP = "tests.test_enforcement:app"


@app.task("crash_with_child")
def crash_with_child(ctx, marker, crash):
    """Start `sleep 1000` marked with `marker`, then crash the worker with os._exit(3) or a segfault."""
    subprocess.Popen(["sleep", "1000"], env={**os.environ, "PROCQ_TEST_MARKER": marker})
    if crash == "exit":
        os._exit(3)
    ctypes.string_at(0)


@app.task("sleep_then_masked")
def sleep_then_masked(ctx, seconds, masked_seconds):
    """Sleep `seconds`, then `masked_seconds` more with SIGUSR1 blocked, like a finish that cannot be interrupted."""
    time.sleep(seconds)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    time.sleep(masked_seconds)
    return seconds + masked_seconds


# Max lateness in seconds of the soft signal and of SIGKILL, and the slack on measured durations.
MAX_LATENESS_S = 0.5
# Seconds a test waits for a state it expects: a task to end, processes to vanish, the pool to refill.
SETTLE_S = 20.0
# Seconds a test waits for SIGKILLed processes to vanish and be reaped; it takes milliseconds.
GONE_S = 5.0
GRACE_S = 0.5


# -- helpers ---------------------------------------------------------------------------

@pytest.fixture(params=["cgroup", "no_cgroup"])
def isolation(request):
    """How workers are isolated: `cgroup` (skipped where cgroup v2 is not writable) or `no_cgroup`."""
    return request.param


def start_pool(start_supervisor, isolation: str = "cgroup", *, workers: int = 2, app_spec: str = TEST_APP):
    """Start a supervisor with `workers` workers and wait until all of them are idle."""
    if isolation == "cgroup":
        supervisor = start_supervisor(workers=workers, app=app_spec, env={"PROCQ_NO_CGROUP": ""})
    else:
        supervisor = start_supervisor(workers=workers, app=app_spec, extra_args=("--no-cgroup",))
    client = supervisor.client()
    uses_cgroups = client.status()["cgroups"]
    if isolation == "cgroup" and not uses_cgroups:
        pytest.skip("cgroup v2 is not writable here; the supervisor uses the fallback")
    assert uses_cgroups == (isolation == "cgroup")
    wait_for(lambda: pool_size(client) == workers, SETTLE_S, 0.05, f"{workers} idle workers")
    return supervisor, client


def poll(probe, done, timeout: float = SETTLE_S, interval: float = 0.02):
    """Call probe() until done(value) is true or `timeout` seconds pass; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def live_states(pids) -> dict[int, str]:
    """Return {pid: state} for the pids that still exist, zombies (state Z) included."""
    states = {pid: process_state(pid) for pid in set(pids)}
    return {pid: state for pid, state in states.items() if state is not None}


def wait_state(client, task_id: str, state: str) -> procq.TaskInfo:
    def reached():
        task = client.get(task_id)
        return task if task.state == state else None

    return wait_for(reached, SETTLE_S, 0.01, f"task {task_id} to be {state}")


def marked_sleepers(marker: str) -> list[int]:
    """Return the pids of `sleep` processes whose environment has PROCQ_TEST_MARKER=marker."""
    found = []
    for pid in processes_with_marker(marker):
        try:
            with open(f"/proc/{pid}/comm") as file:
                if file.read().strip() == "sleep":
                    found.append(pid)
        except OSError:
            continue
    return found


def seconds_between(start, end) -> float:
    return (end - start).total_seconds()


def assert_processes_gone(pids, description: str) -> None:
    left = poll(lambda: live_states(pids), lambda states: not states, GONE_S)
    assert left == {}, f"{description} still exist as {{pid: state}}, Z is a zombie: {left}"


def assert_marker_gone(marker: str) -> None:
    left = poll(lambda: processes_with_marker(marker), lambda pids: not pids, GONE_S)
    assert left == [], f"processes with PROCQ_TEST_MARKER={marker} still exist: {left}"


def assert_workers_gone(task: procq.TaskInfo) -> None:
    assert_processes_gone({attempt.worker_pid for attempt in task.attempts}, "worker processes")


def zombie_children(parent_pids) -> dict[int, int]:
    """Return {zombie pid: parent pid} for the zombie children of `parent_pids`."""
    parents = set(parent_pids)
    zombies = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) in parents:
            zombies[int(entry)] = int(fields[1])
    return zombies


def assert_pool_full(client, workers: int) -> None:
    """Check the pool is back to `workers` workers and neither they nor the fork server have a zombie child."""
    size = poll(lambda: pool_size(client), lambda value: value == workers, interval=0.05)
    assert size == workers

    def parents():
        return [client.status()["fork_server_pid"], *(worker["pid"] for worker in client.workers())]

    zombies = poll(lambda: zombie_children(parents()), lambda found: not found, GONE_S)
    assert zombies == {}, f"zombie children of the fork server or a worker, as {{pid: parent}}: {zombies}"


def assert_soft_stop(task: procq.TaskInfo, outcome: str, timeout_s: float | None = None) -> None:
    """Check a task's final attempt ended at the soft signal, with no SIGKILL."""
    attempt = task.attempts[-1]
    assert task.state == "failed"
    assert task.outcome == outcome
    assert attempt.outcome == outcome
    assert attempt.soft_signal_at is not None
    assert attempt.kill_at is None
    assert attempt.soft_lateness_s < MAX_LATENESS_S
    assert attempt.exit_signal is None
    assert attempt.exit_code == 0
    if timeout_s is not None:
        ran_s = seconds_between(attempt.started_at, attempt.soft_signal_at)
        assert ran_s > timeout_s - 0.05
        assert ran_s < timeout_s + MAX_LATENESS_S


def assert_killed_after_grace(task: procq.TaskInfo, grace_s: float) -> None:
    """Check a timed-out task's final attempt was SIGKILLed `grace_s` after the soft signal."""
    attempt = task.attempts[-1]
    assert task.state == "failed"
    assert task.outcome == "timeout"
    assert attempt.outcome == "timeout"
    assert attempt.soft_signal_at is not None
    assert attempt.kill_at is not None
    assert attempt.exit_signal == signal.SIGKILL
    assert attempt.kill_lateness_s < MAX_LATENESS_S
    waited_s = seconds_between(attempt.soft_signal_at, attempt.kill_at)
    assert waited_s > grace_s - 0.05
    assert waited_s < grace_s + MAX_LATENESS_S


# -- soft signal -------------------------------------------------------------------------

@pytest.mark.parametrize("handler", ["cpu_loop", "cpu_loop_swallow"])
def test_timeout_stops_python_loop_softly(start_supervisor, isolation, handler):
    supervisor, client = start_pool(start_supervisor, isolation)

    task = client.enqueue(handler, timeout=0.5, grace=5.0)
    done = client.wait(task.id, timeout=SETTLE_S)

    assert_soft_stop(done, "timeout", timeout_s=0.5)
    assert len(done.attempts) == 1
    assert "TaskCancelled" in done.error
    assert_workers_gone(done)
    assert_pool_full(client, 2)


def test_timeout_stops_backtracking_regex_softly(start_supervisor, isolation):
    supervisor, client = start_pool(start_supervisor, isolation)

    task = client.enqueue("backtrack", [40], timeout=0.5, grace=5.0)
    done = client.wait(task.id, timeout=SETTLE_S)

    assert_soft_stop(done, "timeout", timeout_s=0.5)
    assert_workers_gone(done)
    assert_pool_full(client, 2)


# -- SIGKILL after the grace period ------------------------------------------------------

@pytest.mark.parametrize("handler", ["ignore_cancel", "c_loop", "mask_signals"])
def test_timeout_kills_unstoppable_handler(start_supervisor, isolation, handler):
    supervisor, client = start_pool(start_supervisor, isolation)

    task = client.enqueue(handler, timeout=0.5, grace=GRACE_S)
    done = client.wait(task.id, timeout=SETTLE_S)

    assert_killed_after_grace(done, GRACE_S)
    assert len(done.attempts) == 1
    assert_workers_gone(done)
    assert_pool_full(client, 2)


def test_ignored_soft_signal_restored_for_next_task(start_supervisor, isolation):
    supervisor, client = start_pool(start_supervisor, isolation, workers=1)

    first = client.wait(client.enqueue("ignore_soft_signal").id, timeout=SETTLE_S)
    second = client.wait(client.enqueue("cpu_loop", timeout=0.5, grace=5.0).id, timeout=SETTLE_S)

    assert first.state == "completed"
    assert first.result == "ignored"
    assert second.worker_pid == first.worker_pid
    assert_soft_stop(second, "timeout", timeout_s=0.5)
    assert_workers_gone(second)
    assert_pool_full(client, 1)


# -- processes the handler started -------------------------------------------------------

@pytest.mark.parametrize("handler", ["popen_sleep", "setsid_child", "double_fork"])
def test_timeout_kills_handler_children(start_supervisor, isolation, handler):
    supervisor, client = start_pool(start_supervisor, isolation)
    marker = new_marker()

    task = client.enqueue(handler, [marker], timeout=1.0, grace=GRACE_S)
    children = wait_for(lambda: marked_sleepers(marker), SETTLE_S, 0.01, f"the {handler} child to start")
    done = client.wait(task.id, timeout=SETTLE_S)

    assert done.state == "failed"
    assert done.outcome == "timeout"
    assert done.attempts[-1].soft_signal_at is not None
    assert done.children_killed == 1
    assert_processes_gone(children, f"children of {handler}")
    assert_marker_gone(marker)
    assert_workers_gone(done)
    assert_pool_full(client, 2)


@pytest.mark.parametrize("handler", ["popen_sleep", "setsid_child", "double_fork"])
def test_return_kills_leftover_children(start_supervisor, isolation, handler):
    supervisor, client = start_pool(start_supervisor, isolation)
    marker = new_marker()

    task = client.enqueue(handler, [marker], {"wait": False}, timeout=10.0)
    done = client.wait(task.id, timeout=SETTLE_S)

    assert done.state == "completed"
    assert done.outcome == "succeeded"
    assert done.children_killed == 1
    assert done.attempts[-1].soft_signal_at is None
    assert_marker_gone(marker)
    if isinstance(done.result, int):
        assert_processes_gone([done.result], f"the child of {handler}")
    assert_pool_full(client, 2)


# -- workers that die on their own -------------------------------------------------------

@pytest.mark.parametrize(("crash", "exit_code", "exit_signal"), [("exit", 3, None), ("segfault", None, signal.SIGSEGV)])
def test_worker_crash_recorded_as_lost(start_supervisor, isolation, crash, exit_code, exit_signal):
    supervisor, client = start_pool(start_supervisor, isolation, workers=1, app_spec=ENFORCEMENT_APP)
    marker = new_marker()

    task = client.enqueue("crash_with_child", [marker, crash], timeout=10.0)
    done = client.wait(task.id, timeout=SETTLE_S)

    assert done.state == "failed"
    assert done.outcome == "worker_lost"
    assert done.exit_code == exit_code
    assert done.exit_signal == exit_signal
    assert done.soft_signal_at is None
    assert done.children_killed == 1
    assert_marker_gone(marker)
    assert_workers_gone(done)
    assert_pool_full(client, 1)

    following = client.wait(client.enqueue("echo", ["after"]).id, timeout=SETTLE_S)
    assert following.state == "completed"
    assert following.result["args"] == ["after"]
    assert following.worker_pid != done.worker_pid


# -- timeout and deadline are counted from the right moment ----------------------------

def test_timeout_counted_from_handler_start(start_supervisor):
    supervisor, client = start_pool(start_supervisor, workers=1)

    busy = client.enqueue("sleep", [1.5], timeout=10.0)
    queued = client.enqueue("sleep", [0.6], timeout=1.0)
    done = client.wait(queued.id, timeout=SETTLE_S)

    assert client.wait(busy.id, timeout=SETTLE_S).state == "completed"
    assert done.state == "completed"
    assert done.result == 0.6
    assert done.soft_signal_at is None
    assert seconds_between(done.enqueued_at, done.finished_at) > 1.0
    assert_pool_full(client, 1)


def test_deadline_expires_waiting_task(start_supervisor):
    supervisor, client = start_pool(start_supervisor, workers=1)

    busy = client.enqueue("sleep", [2.0], timeout=10.0)
    wait_state(client, busy.id, "active")
    deadline = time.time() + 0.8
    late = client.enqueue("echo", ["late"], deadline=deadline)
    done = client.wait(late.id, timeout=SETTLE_S)
    busy_then = client.get(busy.id)

    assert done.state == "failed"
    assert done.outcome == "expired"
    assert done.attempts == []
    assert done.finished_at.timestamp() > deadline - 0.05
    assert done.finished_at.timestamp() < deadline + MAX_LATENESS_S
    assert busy_then.state == "active"
    assert client.wait(busy.id, timeout=SETTLE_S).state == "completed"
    assert_pool_full(client, 1)


# -- cancel ------------------------------------------------------------------------------

def test_cancel_pending_task(start_supervisor):
    supervisor, client = start_pool(start_supervisor, workers=1)
    busy = client.enqueue("sleep", [30.0], timeout=60.0)
    wait_state(client, busy.id, "active")
    waiting = client.enqueue("echo", ["never"])

    result = client.cancel(waiting.id)

    assert result.previous_state == "pending"
    assert result.already_final is False
    assert result.stopped_by == "none"
    assert result.task.state == "cancelled"
    assert result.task.outcome == "cancelled"
    assert result.task.attempts == []
    assert client.cancel(busy.id).task.state == "cancelled"
    assert_workers_gone(client.get(busy.id))
    assert_pool_full(client, 1)


def test_cancel_active_task_soft(start_supervisor, isolation):
    supervisor, client = start_pool(start_supervisor, isolation)
    task = client.enqueue("sleep", [30.0], timeout=60.0, grace=5.0)
    wait_state(client, task.id, "active")

    result = client.cancel(task.id)

    assert result.previous_state == "active"
    assert result.already_final is False
    assert result.stopped_by == "soft"
    assert result.task.state == "cancelled"
    assert result.task.outcome == "cancelled"
    assert len(result.task.attempts) == 1
    assert result.task.attempts[0].outcome == "cancelled"
    assert result.task.kill_at is None
    assert_workers_gone(result.task)
    assert_pool_full(client, 2)


def test_cancel_active_task_kill(start_supervisor, isolation):
    supervisor, client = start_pool(start_supervisor, isolation)
    task = client.enqueue("ignore_cancel", timeout=60.0, grace=GRACE_S)
    active = wait_state(client, task.id, "active")
    # A cancel that reaches the worker before the handler starts ends it softly, so wait
    # until the handler is burning CPU in its loop.
    worker = psutil.Process(active.worker_pid)
    baseline = worker.cpu_times().user
    wait_for(lambda: worker.cpu_times().user > baseline + 0.05, SETTLE_S, 0.01, "the handler to run")

    result = client.cancel(task.id)

    assert result.previous_state == "active"
    assert result.already_final is False
    assert result.stopped_by == "kill"
    assert result.task.state == "cancelled"
    assert result.task.outcome == "cancelled"
    assert result.task.exit_signal == signal.SIGKILL
    assert_workers_gone(result.task)
    assert_pool_full(client, 2)


def test_cancel_right_after_dispatch_stops_softly(start_supervisor):
    supervisor, client = start_pool(start_supervisor)
    stopped_by = []

    for round_number in range(20):
        # Each stop replaces a worker: wait for an idle one, so the task starts at once.
        wait_for(lambda: pool_size(client) == 2, SETTLE_S, 0.01, "2 idle workers")
        task = client.enqueue("cpu_loop", timeout=60.0, grace=0.3)
        if round_number % 2:
            time.sleep(0.001 * (round_number % 5))
        result = client.cancel(task.id)
        stopped_by.append(result.stopped_by)
        assert result.previous_state == "active"
        assert result.task.state == "cancelled"
        assert_workers_gone(result.task)

    assert stopped_by == ["soft"] * 20
    assert_pool_full(client, 2)


def test_cancel_final_task(start_supervisor):
    supervisor, client = start_pool(start_supervisor)
    done = client.wait(client.enqueue("echo", ["done"]).id, timeout=SETTLE_S)

    result = client.cancel(done.id)

    assert result.previous_state == "completed"
    assert result.already_final is True
    assert result.stopped_by == "none"
    assert result.task.state == "completed"
    assert result.task.outcome == "succeeded"
    assert client.get(done.id).state == "completed"
    assert_pool_full(client, 2)


def test_cancel_cleanup_error_stays_cancelled(start_supervisor):
    supervisor, client = start_pool(start_supervisor)
    task = client.enqueue("cleanup_error", timeout=60.0, grace=5.0, max_retry=2)
    wait_state(client, task.id, "active")
    time.sleep(0.2)  # Give the worker time to enter the handler's try block before the soft signal.

    result = client.cancel(task.id)
    time.sleep(0.3)  # A wrongly scheduled retry would start here, after the app's 0.05 s retry delay.
    final = client.get(task.id)

    assert result.previous_state == "active"
    assert result.stopped_by == "soft"
    assert final.state == "cancelled"
    assert final.outcome == "cancelled"
    assert len(final.attempts) == 1
    assert final.attempts[0].outcome == "cancelled"
    assert "RuntimeError: cleanup failed" in final.error
    assert "RuntimeError: cleanup failed" in final.attempts[0].error
    assert_workers_gone(final)
    assert_pool_full(client, 2)


def test_cancel_at_finish_spares_next_task(start_supervisor):
    supervisor, client = start_pool(start_supervisor, workers=1, app_spec=ENFORCEMENT_APP)
    # Rounds where the stop reached the worker after the handler could no longer see it.
    pending_stop_rounds = 0

    for round_number in range(30):
        # The short task sleeps 0.05 s, then runs 0.05 s with the soft signal blocked. The
        # cancel sweeps from inside the handler, across that blocked end, to after the result.
        short = client.enqueue("sleep_then_masked", [0.05, 0.05], timeout=10.0)
        longer = client.enqueue("sleep", [0.1], timeout=10.0)
        time.sleep(0.03 + 0.004 * round_number)
        client.cancel(short.id, wait=False)

        longer_done = client.wait(longer.id, timeout=SETTLE_S)
        short_done = client.wait(short.id, timeout=SETTLE_S)
        if short_done.outcome == "cancelled" and short_done.worker_pid == longer_done.worker_pid:
            pending_stop_rounds += 1

        assert longer_done.state == "completed", f"round {round_number}: {longer_done.error}"
        assert longer_done.outcome == "succeeded"
        assert len(longer_done.attempts) == 1
        assert longer_done.soft_signal_at is None
        assert short_done.state in ("completed", "cancelled")

    assert pending_stop_rounds > 0
    assert_pool_full(client, 1)


# -- memory and retries ------------------------------------------------------------------

def test_max_memory_stops_hog(start_supervisor, isolation):
    supervisor, client = start_pool(start_supervisor, isolation)

    task = client.enqueue("memory_hog", [400], timeout=30.0, grace=GRACE_S, max_memory=150 * 1024 * 1024)
    done = client.wait(task.id, timeout=SETTLE_S)

    assert_soft_stop(done, "memory")
    assert_workers_gone(done)
    assert_pool_full(client, 2)


def test_timeout_retries_record_every_attempt(start_supervisor):
    supervisor, client = start_pool(start_supervisor)

    task = client.enqueue("cpu_loop", timeout=0.3, grace=5.0, max_retry=2)
    done = client.wait(task.id, timeout=SETTLE_S)

    assert done.state == "failed"
    assert done.outcome == "timeout"
    assert done.attempt == 3
    assert [attempt.number for attempt in done.attempts] == [1, 2, 3]
    assert [attempt.outcome for attempt in done.attempts] == ["timeout"] * 3
    assert all(attempt.counted for attempt in done.attempts)
    assert all(attempt.soft_signal_at is not None for attempt in done.attempts)
    assert_workers_gone(done)
    assert_pool_full(client, 2)
