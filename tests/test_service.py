"""The supervisor as a systemd service: sd_notify, signals, reload, crashes and journal logging.

Every test runs real supervisors, fork servers and workers. Bounds are generous, because a
loaded test machine delays process starts by seconds.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import threading
import time
import uuid

import pytest

import procq
from tests.conftest import ROOT, new_marker, processes_with_marker, short_tempdir, wait_for, wait_gone

SERVICE_APP = "tests.apps.service:app"
BROKEN_START_APP = "tests.apps.broken_start:app"
STATUS_LINE = re.compile(r"^\d+ busy, \d+ idle workers; \d+ pending")


# -- helpers ---------------------------------------------------------------------------

class NotifyListener:
    """The systemd side of sd_notify: a bound datagram socket and a thread that records messages.

    `notify_socket` is the NOTIFY_SOCKET value to give the supervisor: a path, or `@name`
    for an address in the abstract namespace.
    """

    def __init__(self, kind: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.directory = None
        if kind == "path":
            # Unix socket paths are limited to 107 bytes, so the directory is short.
            self.directory = short_tempdir()
            self.notify_socket = os.path.join(self.directory, "notify")
            self.sock.bind(self.notify_socket)
        else:
            name = f"procq-test-{uuid.uuid4().hex}"
            self.notify_socket = "@" + name
            self.sock.bind("\0" + name)
        self.sock.settimeout(0.1)
        # Each message is (time.monotonic() at receipt, {field: value}).
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closing.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self.lock:
            return list(self.messages)

    def wait_for_field(self, key: str, value: str | None = None, *, start: int = 0,
                       timeout: float = 30.0) -> int:
        """Return the index of the first message from `start` on that has `key` (equal to `value`)."""
        def find():
            for index, (_received, fields) in enumerate(self.snapshot()[start:], start):
                if key in fields and (value is None or fields[key] == value):
                    return index + 1  # wait_for needs a truthy value, so index 0 is shifted.
            return None

        return wait_for(find, timeout, 0.02, f"an sd_notify message with {key}") - 1

    def close(self) -> None:
        self.closing.set()
        self.thread.join(5)
        self.sock.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def notify_listener():
    """Factory: notify_listener("path" or "abstract") -> a started NotifyListener."""
    listeners: list[NotifyListener] = []

    def make(kind: str = "path") -> NotifyListener:
        listener = NotifyListener(kind)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.close()


def wait_active(client: procq.Client, task_id: str, timeout: float = 20.0) -> procq.TaskInfo:
    def active():
        info = client.get(task_id)
        return info if info.state == "active" else None

    return wait_for(active, timeout, 0.02, f"task {task_id} to become active")


def wait_shutting_down(client: procq.Client) -> None:
    wait_for(lambda: client.status()["shutting_down"], 10, 0.02, "the graceful stop to begin")


def stored_task(db_path: str, task_id: str) -> tuple[dict, list[dict]]:
    """Read a task row and its attempt rows straight from a stopped supervisor's database."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        task = dict(db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone())
        attempts = [dict(row) for row in
                    db.execute("SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,))]
    return task, attempts


@contextlib.contextmanager
def killed_on_failure(supervisor):
    """SIGKILL the supervisor when the block fails, so a hung loop cannot stall the teardown's stop."""
    try:
        yield
    except BaseException:
        if supervisor.process.poll() is None:
            supervisor.kill()
        raise


# -- sd_notify -------------------------------------------------------------------------

def test_notify_ready_watchdog_stop(start_supervisor, notify_listener):
    listener = notify_listener("path")
    supervisor = start_supervisor(workers=1, env={"NOTIFY_SOCKET": listener.notify_socket,
                                                  "WATCHDOG_USEC": "400000"})

    ready = listener.wait_for_field("READY", "1")
    ready_fields = listener.snapshot()[ready][1]
    # READY=1 carries the status of that moment, so it shows the worker that made the pool ready.
    assert re.search(r"busy, [1-9]\d* idle workers", ready_fields["STATUS"]), ready_fields
    assert STATUS_LINE.match(ready_fields["STATUS"])

    # The supervisor sends WATCHDOG=1 at half of WATCHDOG_USEC, so every 200 ms here. A gap of
    # 400 ms would make systemd treat the service as hung.
    window_start = time.monotonic()
    time.sleep(2.0)
    watchdog_times = [received for received, fields in listener.snapshot()
                      if fields.get("WATCHDOG") == "1" and received >= window_start]
    gaps = [later - earlier for earlier, later in zip(watchdog_times, watchdog_times[1:])]
    assert len(watchdog_times) >= 6, watchdog_times
    assert max(gaps) < 0.4, gaps
    mean_gap = sum(gaps) / len(gaps)
    assert mean_gap >= 0.15, gaps
    assert mean_gap <= 0.3, gaps

    before_stop = len(listener.snapshot())
    assert supervisor.stop() == 0
    listener.wait_for_field("STOPPING", "1", start=before_stop, timeout=5)

    messages = [fields for _received, fields in listener.snapshot()]
    statuses = [fields["STATUS"] for fields in messages if "STATUS" in fields]
    assert statuses
    assert all(STATUS_LINE.match(status) for status in statuses), statuses
    assert sum(1 for fields in messages if fields.get("READY") == "1") == 1


def test_notify_reloading_then_ready(start_supervisor, notify_listener):
    listener = notify_listener("path")
    supervisor = start_supervisor(workers=1, env={"NOTIFY_SOCKET": listener.notify_socket})
    listener.wait_for_field("READY", "1")

    with killed_on_failure(supervisor):
        before_reload = len(listener.snapshot())
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        supervisor.process.send_signal(signal.SIGHUP)
        reloading = listener.wait_for_field("RELOADING", "1", start=before_reload)
        after_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        reloading_fields = listener.snapshot()[reloading][1]
        assert int(reloading_fields["MONOTONIC_USEC"]) >= before_usec
        assert int(reloading_fields["MONOTONIC_USEC"]) <= after_usec
        listener.wait_for_field("READY", "1", start=reloading + 1)

        # The reloaded supervisor still serves and stops.
        client = supervisor.client()
        assert client.wait(client.enqueue("echo").id, timeout=30).state == "completed"
        assert supervisor.stop(timeout=20) == 0


def test_notify_abstract_address(start_supervisor, notify_listener):
    listener = notify_listener("abstract")
    supervisor = start_supervisor(workers=1, env={"NOTIFY_SOCKET": listener.notify_socket})

    listener.wait_for_field("READY", "1")
    before_stop = len(listener.snapshot())
    assert supervisor.stop() == 0
    listener.wait_for_field("STOPPING", "1", start=before_stop, timeout=5)


# -- graceful stop ---------------------------------------------------------------------

def test_sigterm_requeues_interrupted_task(start_supervisor):
    supervisor = start_supervisor(workers=2, extra_args=("--shutdown-timeout", "1"))
    client = supervisor.client()
    long_task = client.enqueue("slow_cancel_aware", [4])
    short_task = client.enqueue("sleep", [0.5])
    waiting_task = client.enqueue("echo", ["after restart"])
    wait_active(client, long_task.id)
    wait_active(client, short_task.id)
    worker_pids = [worker["pid"] for worker in client.workers()]
    fork_server_pid = client.status()["fork_server_pid"]
    assert fork_server_pid is not None

    sigterm_at = time.time()
    assert supervisor.stop(timeout=30) == 0
    wait_gone(worker_pids + [fork_server_pid])

    short_row, short_attempts = stored_task(supervisor.db, short_task.id)
    assert short_row["state"] == "completed"
    assert short_row["finished_at"] > sigterm_at
    assert len(short_attempts) == 1

    long_row, long_attempts = stored_task(supervisor.db, long_task.id)
    assert long_row["state"] == "pending"
    assert long_row["attempt"] == 0
    assert long_row["result"] == '"stopped: shutdown"'
    assert [row["outcome"] for row in long_attempts] == ["shutdown"]
    assert long_attempts[0]["counted"] == 0
    assert long_attempts[0]["soft_signal_at"] is not None

    waiting_row, waiting_attempts = stored_task(supervisor.db, waiting_task.id)
    assert waiting_row["state"] == "pending"
    assert waiting_attempts == []

    supervisor.restart()
    client = supervisor.client()
    long_done = client.wait(long_task.id, timeout=30)
    assert long_done.state == "completed"
    assert long_done.result == "finished"
    assert long_done.attempt == 1
    assert [(attempt.outcome, attempt.counted) for attempt in long_done.attempts] == \
        [("shutdown", False), ("succeeded", True)]
    waiting_done = client.wait(waiting_task.id, timeout=30)
    assert waiting_done.state == "completed"
    assert len(waiting_done.attempts) == 1
    assert len(client.get(short_task.id).attempts) == 1


def test_second_sigterm_skips_wait(start_supervisor):
    supervisor = start_supervisor(workers=1, extra_args=("--shutdown-timeout", "30"))
    client = supervisor.client()
    task = client.enqueue("slow_cancel_aware", [60])
    wait_active(client, task.id)

    supervisor.process.send_signal(signal.SIGTERM)
    wait_shutting_down(client)
    second_sigterm = time.monotonic()
    supervisor.process.send_signal(signal.SIGTERM)
    assert supervisor.process.wait(20) == 0
    assert time.monotonic() - second_sigterm < 5

    row, attempts = stored_task(supervisor.db, task.id)
    assert row["state"] == "pending"
    assert [attempt["outcome"] for attempt in attempts] == ["shutdown"]


def test_control_socket_serves_during_stop(start_supervisor):
    supervisor = start_supervisor(workers=1, extra_args=("--shutdown-timeout", "30"))
    client = supervisor.client()
    running = client.enqueue("slow_cancel_aware", [60])
    wait_active(client, running.id)

    supervisor.process.send_signal(signal.SIGTERM)
    wait_shutting_down(client)
    late = client.enqueue("echo", ["enqueued during the stop"])
    assert late.state == "pending"
    listed = {task.id: task.state for task in client.list()}
    assert listed == {late.id: "pending", running.id: "active"}
    assert client.get(late.id).args == ["enqueued during the stop"]

    supervisor.process.send_signal(signal.SIGTERM)
    assert supervisor.process.wait(20) == 0
    # After the restart the interrupted 60 s task runs again, so its one worker is busy at first.
    supervisor.restart(wait_ready=False)
    client = supervisor.client()
    client.cancel(running.id)
    done = client.wait(late.id, timeout=30)
    assert done.state == "completed"
    assert done.result["args"] == ["enqueued during the stop"]


# -- reload on SIGHUP ------------------------------------------------------------------

RELOADABLE_SOURCE = '''\
"""An application that a reload test rewrites on disk."""
import os
import time

import procq

VERSION = {version!r}

app = procq.App("reloadable", default_timeout=60, default_grace=1.0)


@app.task("version")
def version(ctx, seconds=0.0):
    time.sleep(seconds)
    return {{"version": VERSION, "pid": os.getpid(), "parent_pid": os.getppid()}}
'''


def write_reloadable(directory: str, source: str) -> None:
    path = os.path.join(directory, "reloadable_app.py")
    with open(path + ".tmp", "w") as file:
        file.write(source)
    os.replace(path + ".tmp", path)


def start_reloadable(start_supervisor, directory: str):
    write_reloadable(directory, RELOADABLE_SOURCE.format(version="one"))
    # A .pyc records its source's size and mtime in whole seconds, so a same-size rewrite within
    # one second of the first import would load stale code. Writing no bytecode avoids that.
    env = {"PYTHONPATH": f"{directory}{os.pathsep}{ROOT}", "PYTHONDONTWRITEBYTECODE": "1"}
    return start_supervisor(directory, app="reloadable_app:app", workers=1, env=env)


def test_sighup_deploys_new_code(start_supervisor, tmpdir_short):
    supervisor = start_reloadable(start_supervisor, tmpdir_short)
    client = supervisor.client()
    old_server = client.status()["fork_server_pid"]
    running = client.enqueue("version", [1.5])
    wait_active(client, running.id)

    write_reloadable(tmpdir_short, RELOADABLE_SOURCE.format(version="two"))
    with killed_on_failure(supervisor):
        supervisor.process.send_signal(signal.SIGHUP)

        def new_fork_server():
            pid = client.status()["fork_server_pid"]
            return pid if pid not in (None, old_server) else None

        new_server = wait_for(new_fork_server, 30, 0.05, "a new fork server")

        finished = client.wait(running.id, timeout=30)
        assert finished.state == "completed"
        assert finished.result["version"] == "one"
        assert finished.result["parent_pid"] == old_server

        after = client.wait(client.enqueue("version").id, timeout=30)
        assert after.state == "completed"
        assert after.result["version"] == "two"
        assert after.result["parent_pid"] == new_server
        assert after.result["pid"] != finished.result["pid"]
        # The old fork server is the supervisor's child, so the supervisor must reap it once it exits.
        wait_gone([old_server])
        assert supervisor.stop(timeout=20) == 0


def test_sighup_with_broken_code_keeps_workers(start_supervisor, tmpdir_short):
    supervisor = start_reloadable(start_supervisor, tmpdir_short)
    client = supervisor.client()
    old_server = client.status()["fork_server_pid"]
    before = client.wait(client.enqueue("version").id, timeout=30)

    write_reloadable(tmpdir_short, "VERSION = (\n")
    with killed_on_failure(supervisor):
        supervisor.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "SyntaxError" in supervisor.log_text(), 30, 0.05, "the import error in the log")
        assert "failed to import reloadable_app:app" in supervisor.log_text()

        for _ in range(3):
            during = client.wait(client.enqueue("version").id, timeout=30)
            assert during.state == "completed"
            assert during.result["version"] == "one"
            assert during.result["pid"] == before.result["pid"]
        assert client.status()["fork_server_pid"] == old_server

        # A later reload with working code still deploys it.
        write_reloadable(tmpdir_short, RELOADABLE_SOURCE.format(version="three"))
        supervisor.process.send_signal(signal.SIGHUP)
        wait_for(lambda: client.status()["fork_server_pid"] not in (None, old_server), 30, 0.05,
                 "a new fork server")
        fixed = client.wait(client.enqueue("version").id, timeout=30)
        assert fixed.result["version"] == "three"
        assert supervisor.stop(timeout=20) == 0


def test_fork_server_crash_replaced(start_supervisor):
    supervisor = start_supervisor(workers=1)
    client = supervisor.client()
    old_server = client.status()["fork_server_pid"]
    old_workers = [worker["pid"] for worker in client.workers()]

    with killed_on_failure(supervisor):
        os.kill(old_server, signal.SIGKILL)

        def new_fork_server():
            pid = client.status()["fork_server_pid"]
            return pid if pid not in (None, old_server) else None

        wait_for(new_fork_server, 30, 0.05, "a new fork server")
        assert client.wait(client.enqueue("echo").id, timeout=30).state == "completed"
        # The workers die with their fork server, and the supervisor reaps its dead child.
        wait_gone(old_workers + [old_server])
        assert supervisor.stop(timeout=20) == 0


# -- crashes ---------------------------------------------------------------------------

class Enqueuer(threading.Thread):
    """Enqueue record_run tasks in a loop until stopped, and keep the ids the supervisor acknowledged."""

    def __init__(self, socket_path: str, runs_file: str, marker: str, max_retry: int, seed: int):
        super().__init__(daemon=True)
        self.socket_path = socket_path
        self.runs_file = runs_file
        self.marker = marker
        self.max_retry = max_retry
        self.rng = random.Random(seed)
        self.acknowledged: list[str] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self.enqueue_until_stopped()
        except BaseException as exc:  # noqa: BLE001 - the test thread reports it.
            self.error = exc

    def enqueue_until_stopped(self) -> None:
        with procq.Client(self.socket_path, connect_timeout=0.5) as client:
            while not self.stopping.is_set():
                seconds = self.rng.choice([0.0, 0.02, 0.1, 0.3])
                # Some handlers start a child, which outlives the handler if the supervisor dies.
                marker = self.marker if self.rng.random() < 0.3 else None
                try:
                    task = client.enqueue("record_run", [self.runs_file, seconds, marker],
                                          max_retry=self.max_retry)
                except procq.SupervisorUnavailable:
                    continue
                self.acknowledged.append(task.id)
                time.sleep(0.01)


def run_sigkill_cycles(start_supervisor, directory: str, cycles: int, max_retry: int, seed: int,
                       final_wait_s: float = 60.0) -> None:
    """SIGKILL a supervisor at random moments of a task stream, restart it, and audit every task."""
    rng = random.Random(seed)
    runs_file = os.path.join(directory, "runs")
    supervisor = start_supervisor(directory, app=SERVICE_APP, workers=2)
    acknowledged: list[str] = []
    earlier_workers: set[int] = set()
    earlier_markers: list[str] = []

    for cycle in range(cycles):
        marker = new_marker()
        client = supervisor.client(connect_timeout=2)
        enqueuer = Enqueuer(supervisor.socket, runs_file, marker, max_retry, rng.randrange(1 << 30))
        enqueuer.start()
        workers = {worker["pid"] for worker in client.workers()}
        time.sleep(rng.uniform(0.05, 0.8))
        workers |= {worker["pid"] for worker in client.workers()}
        supervisor.kill()
        enqueuer.stopping.set()
        enqueuer.join(10)
        assert enqueuer.error is None, repr(enqueuer.error)
        acknowledged += enqueuer.acknowledged
        earlier_workers |= workers
        earlier_markers.append(marker)

        supervisor.close_clients()
        supervisor.start()
        # The PDEATHSIG chain ends the workers. The new supervisor kills the handlers' children.
        wait_gone(earlier_workers, timeout=15)
        for earlier in earlier_markers:
            wait_for(lambda: not processes_with_marker(earlier), 15, 0.05,
                     f"children started in cycle {cycle} to be killed")

    client = supervisor.client()
    finished = [client.wait(task_id, timeout=final_wait_s) for task_id in acknowledged]
    with open(runs_file) as file:
        runs = collections.Counter(file.read().split())
    for info in finished:
        lost = sum(1 for attempt in info.attempts if attempt.outcome == "worker_lost")
        assert info.state in ("completed", "failed"), info
        if info.state == "failed":
            assert info.outcome == "worker_lost", info
        if info.state == "completed":
            assert runs[info.id] >= 1, info
        # A handler starts only after its attempt is stored, and runs again only after a lost one.
        assert runs[info.id] <= len(info.attempts), (runs[info.id], info)
        assert runs[info.id] <= 1 + lost, (runs[info.id], info)
    assert len(acknowledged) >= cycles
    # The kills hit running tasks, so the crash path was exercised.
    assert any(attempt.outcome == "worker_lost" for info in finished for attempt in info.attempts)
    assert supervisor.stop() == 0


def test_sigkill_cycles_lose_no_task(start_supervisor, tmpdir_short):
    # With max_retry=0, a task whose attempt was lost fails as worker_lost and never runs again.
    run_sigkill_cycles(start_supervisor, tmpdir_short, cycles=10, max_retry=0, seed=1)


@pytest.mark.slow
def test_sigkill_many_cycles_with_retries(start_supervisor, tmpdir_short):
    # NOTE: until recovery uses the application's retry_delay, a retry after a crash waits for
    # asynq's default delay, up to about 2 minutes.
    run_sigkill_cycles(start_supervisor, tmpdir_short, cycles=40, max_retry=2, seed=2, final_wait_s=180)


def test_recovered_attempt_uses_retry_delay(start_supervisor, tmpdir_short):
    runs_file = os.path.join(tmpdir_short, "runs")
    supervisor = start_supervisor(tmpdir_short, app=SERVICE_APP, workers=1,
                                  extra_args=("--shutdown-timeout", "0"))
    client = supervisor.client()
    task = client.enqueue("record_run", [runs_file, 30], max_retry=1)
    wait_active(client, task.id)
    supervisor.kill()

    supervisor.close_clients()
    restarted_at = time.time()
    # The retry may occupy the only worker at once, so an idle worker is not awaited.
    supervisor.start(wait_ready=False)
    client = supervisor.client()

    def second_attempt():
        info = client.get(task.id)
        return info if len(info.attempts) == 2 else None

    # The application's retry_delay returns 0.05 s, so the retry starts at once after recovery.
    retried = wait_for(second_attempt, 10, 0.05, "the second attempt to start")
    assert retried.attempts[0].outcome == "worker_lost"
    assert retried.attempts[1].started_at.timestamp() - restarted_at < 8


# -- failing starts --------------------------------------------------------------------

def start_broken(start_supervisor, directory: str, notify_socket: str | None = None):
    env = {"PROCQ_TEST_HOOK_CALLS": os.path.join(directory, "hook-calls")}
    if notify_socket is not None:
        env["NOTIFY_SOCKET"] = notify_socket
    return start_supervisor(directory, app=BROKEN_START_APP, workers=1, wait_ready=False,
                            extra_args=("--worker-start-timeout", "3"), env=env)


def hook_calls(directory: str) -> list[float]:
    try:
        with open(os.path.join(directory, "hook-calls")) as file:
            return [float(line) for line in file.read().split()]
    except FileNotFoundError:
        return []


def test_failing_start_hook_backs_off(start_supervisor, tmpdir_short, notify_listener):
    listener = notify_listener("path")
    started = time.monotonic()
    supervisor = start_broken(start_supervisor, tmpdir_short, listener.notify_socket)
    client = supervisor.client(connect_timeout=2)

    wait_for(lambda: len(hook_calls(tmpdir_short)) >= 2, 15, 0.05, "two on_worker_start calls")
    status = client.status()
    assert status["worker_failures"] > 0
    assert status["idle"] == 0

    exit_code = supervisor.process.wait(30)
    assert exit_code != 0
    assert time.monotonic() - started >= 3
    assert "no worker became ready within 3 s" in supervisor.log_text()
    assert not any(fields.get("READY") == "1" for _received, fields in listener.snapshot())

    calls = hook_calls(tmpdir_short)
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:])]
    # A fork storm would call the hook hundreds of times, but exponential backoff allows a handful.
    assert len(calls) >= 2, calls
    assert len(calls) < 15, calls
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:])), gaps


def test_failing_start_hook_in_status(start_supervisor, tmpdir_short):
    supervisor = start_broken(start_supervisor, tmpdir_short)
    client = supervisor.client(connect_timeout=2)

    wait_for(lambda: len(hook_calls(tmpdir_short)) >= 2, 15, 0.05, "two on_worker_start calls")
    time.sleep(0.2)
    status = client.status()
    calls = hook_calls(tmpdir_short)
    assert "RuntimeError: on_worker_start failed on purpose" in status["last_worker_error"]
    # Each worker whose hook raised is one failure.
    assert status["worker_failures"] >= 1, status
    assert status["worker_failures"] <= len(calls), (status, calls)
    assert supervisor.process.wait(30) != 0


# -- logging ---------------------------------------------------------------------------

def test_journal_stream_gets_priority_prefixes(start_supervisor, tmpdir_short):
    # SupervisorProcess appends the supervisor's stdout and stderr to this file, so creating it
    # first gives the device and inode that JOURNAL_STREAM must name.
    log_path = os.path.join(tmpdir_short, "supervisor.log")
    open(log_path, "ab").close()
    stat = os.stat(log_path)
    supervisor = start_supervisor(tmpdir_short, workers=1,
                                  env={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
    client = supervisor.client()
    assert client.wait(client.enqueue("fail", ["logged failure"]).id, timeout=30).state == "failed"
    assert supervisor.stop() == 0

    lines = [line for line in supervisor.log_text().splitlines() if line]
    assert lines
    for line in lines:
        assert re.match(r"<[0-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ", line), line
        assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line), line
    assert any(line.startswith("<6>INFO procq.supervisor.loop: supervisor ") for line in lines)
    assert any(line.startswith("<7>DEBUG ") for line in lines)


def test_notify_extends_timeout_during_stop(start_supervisor, notify_listener):
    listener = notify_listener("path")
    supervisor = start_supervisor(workers=1, env={"NOTIFY_SOCKET": listener.notify_socket},
                                  extra_args=("--shutdown-timeout", "2", "--max-grace", "1"))
    listener.wait_for_field("READY", "1")
    client = supervisor.client()
    task = client.enqueue("slow_cancel_aware", [60])
    wait_for(lambda: client.get(task.id).state == "active", message="the task to start")

    before_stop = len(listener.snapshot())
    supervisor.process.send_signal(signal.SIGTERM)
    assert supervisor.process.wait(30) == 0

    extensions = [int(fields["EXTEND_TIMEOUT_USEC"]) for _received, fields in listener.snapshot()[before_stop:]
                  if "EXTEND_TIMEOUT_USEC" in fields]
    assert extensions
    # Never more than shutdown timeout + max grace + the 5 s margin, and shrinking as the stop goes on.
    assert max(extensions) <= 8_000_000
    assert extensions == sorted(extensions, reverse=True)
