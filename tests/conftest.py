"""Shared fixtures: real supervisors in short temporary directories, and process probes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import procq

ROOT = Path(__file__).resolve().parent.parent
TEST_APP = "tests.apps.basic:app"


def wait_for(condition, timeout: float = 15.0, interval: float = 0.02, message: str = "condition"):
    """Poll `condition` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def short_tempdir() -> str:
    """Return a new private directory under /tmp: ipc socket paths must stay under 107 bytes."""
    return tempfile.mkdtemp(prefix="pq", dir="/tmp")


class SupervisorProcess:
    """A real `procq supervisor run` subprocess with its own socket, database and log file."""

    def __init__(self, directory: str, *, app: str = TEST_APP, workers: int = 2,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.directory = directory
        self.socket = os.path.join(directory, "procq.sock")
        self.db = os.path.join(directory, "procq.db")
        self.log_path = os.path.join(directory, "supervisor.log")
        self.app = app
        self.workers = workers
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self._clients: list[procq.Client] = []

    def command(self) -> list[str]:
        return [sys.executable, "-m", "procq.cli.main", "supervisor", "run", "--app", self.app,
                "--socket", self.socket, "--db", self.db, "--workers", str(self.workers),
                "--log-level", "DEBUG", *self.extra_args]

    def start(self, *, wait_ready: bool = True) -> SupervisorProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        env.pop("NOTIFY_SOCKET", None) if "NOTIFY_SOCKET" not in self.env else None
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=str(ROOT), env=env, stdout=self._log_file,
                                        stderr=subprocess.STDOUT)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"supervisor exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                status = self.client(connect_timeout=0.5).status()
            except procq.SupervisorUnavailable:
                return False
            return status["idle"] >= min(self.workers, 1)

        wait_for(ready, timeout, 0.05, "the supervisor to report an idle worker")

    def client(self, **kwargs) -> procq.Client:
        client = procq.Client(self.socket, **kwargs)
        self._clients.append(client)
        return client

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self) -> dict:
        return self.client().status()

    def stop(self, timeout: float = 60.0) -> int:
        """Send SIGTERM and wait for the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"supervisor did not stop within {timeout} s:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the supervisor, as a crash would."""
        self.process.kill()
        self.process.wait()

    def restart(self, *, wait_ready: bool = True) -> SupervisorProcess:
        if self.process is not None and self.process.poll() is None:
            self.stop()
        self.close_clients()
        return self.start(wait_ready=wait_ready)

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.close_clients()
        if self.process is not None and self.process.poll() is None:
            try:
                self.stop(timeout=30)
            except AssertionError:
                pass
        if self._log_file is not None:
            self._log_file.close()


@pytest.fixture
def tmpdir_short():
    directory = short_tempdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log of every supervisor a failed test started to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for supervisor in getattr(item, "procq_supervisors", []):
            report.sections.append((f"supervisor log {supervisor.log_path}", supervisor.log_text()[-8000:]))


@pytest.fixture
def start_supervisor(request):
    """Factory: start_supervisor(workers=2, extra_args=(), env={}, app=TEST_APP) -> SupervisorProcess."""
    started: list[SupervisorProcess] = []
    request.node.procq_supervisors = started
    directories: list[str] = []

    def start(directory: str | None = None, *, wait_ready: bool = True, **kwargs) -> SupervisorProcess:
        if directory is None:
            directory = short_tempdir()
            directories.append(directory)
        supervisor = SupervisorProcess(directory, **kwargs)
        started.append(supervisor)
        return supervisor.start(wait_ready=wait_ready)

    yield start
    for supervisor in started:
        supervisor.close()
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def supervisor(start_supervisor):
    return start_supervisor()


@pytest.fixture
def client(supervisor):
    return supervisor.client()


# -- process probes --------------------------------------------------------------------

def new_marker() -> str:
    return f"pqtest-{uuid.uuid4().hex[:12]}"


def processes_with_marker(marker: str) -> list[int]:
    """Return pids (zombies included) whose environment has PROCQ_TEST_MARKER=marker."""
    needle = f"PROCQ_TEST_MARKER={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                if needle in file.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def process_state(pid: int) -> str | None:
    """Return the one-letter state from /proc/PID/stat (Z for a zombie), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def wait_gone(pids, timeout: float = 10.0) -> None:
    """Wait until every pid is gone entirely: not running, and not a zombie either."""
    wait_for(lambda: all(process_state(pid) is None for pid in pids), timeout, 0.02,
             f"processes {list(pids)} to be gone and reaped")


def pool_size(client: procq.Client) -> int:
    return sum(1 for worker in client.workers() if worker["state"] in ("idle", "busy"))
