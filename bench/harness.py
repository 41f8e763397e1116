"""Shared benchmark helpers: a supervisor in a temporary directory, percentiles, machine facts."""

from __future__ import annotations

import hashlib
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procq

ROOT = Path(__file__).resolve().parent.parent
BENCH_APP = "bench.apps:app"


class BenchSupervisor:
    """A `procq supervisor run` subprocess with its socket, database and log in a new /tmp dir.

    The directory is short because ipc socket paths must stay under 107 bytes. `stop()`
    sends SIGTERM, waits for the exit and removes the directory.
    """

    def __init__(self, *, workers: int = 2, sync: str = "normal", extra_args: tuple[str, ...] = ()):
        self.directory = tempfile.mkdtemp(prefix="pqb", dir="/tmp")
        self.socket = os.path.join(self.directory, "s")
        self.db = os.path.join(self.directory, "procq.db")
        self.log_path = os.path.join(self.directory, "supervisor.log")
        self.workers = workers
        self.sync = sync
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None
        self._log_file = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "procq.cli.main", "supervisor", "run", "--app", BENCH_APP,
                "--socket", self.socket, "--db", self.db, "--workers", str(self.workers),
                "--sync", self.sync, "--log-level", "WARNING", *self.extra_args]

    def start(self, timeout: float = 30.0) -> BenchSupervisor:
        """Start the supervisor and return once all its workers are idle."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        env.pop("NOTIFY_SOCKET", None)
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=str(ROOT), env=env, stdout=self._log_file,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with procq.Client(self.socket, connect_timeout=0.5) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"supervisor exited with {self.process.returncode} during start:\n"
                                       f"{self.log_text()[-3000:]}")
                try:
                    if client.status()["idle"] >= self.workers:
                        return self
                except procq.SupervisorUnavailable:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"supervisor not ready with {self.workers} idle workers after "
                                       f"{timeout:g} s:\n{self.log_text()[-3000:]}")
                time.sleep(0.05)

    def client(self, **kwargs) -> procq.Client:
        return procq.Client(self.socket, **kwargs)

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> str:
        """Stop the supervisor, remove its directory and return its log."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            return self.log_text()
        finally:
            if self._log_file is not None:
                self._log_file.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> BenchSupervisor:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def percentile(values: list[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile (fraction in 0..1) of `values`, or None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values_s: list[float]) -> dict[str, float | int | None]:
    """Return count, p50, p99 and max of durations given in seconds, in milliseconds."""
    values_ms = [value * 1000 for value in values_s]
    return {"n": len(values_ms), "p50": percentile(values_ms, 0.5), "p99": percentile(values_ms, 0.99),
            "max": max(values_ms) if values_ms else None}


def machine_facts() -> dict[str, str | int]:
    """Return nproc, the CPU model, the kernel release, the Python version, the date and the load."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count() or 0, "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "load_average_1m": os.getloadavg()[0], "procq_commit": procq_commit()}


def procq_commit() -> str:
    """Return the checkout's short commit, plus "+changes-HASH" if procq's sources differ from it.

    HASH is the start of the SHA-1 of `git diff HEAD` over procq/, supervisor/ and cli/, so two
    runs with the same uncommitted changes show the same string.
    """
    git = ["git", "-C", str(ROOT)]
    sources = ["--", "procq", "supervisor", "cli"]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                                text=True).stdout.strip()
        diff = subprocess.run([*git, "diff", "HEAD", *sources], check=True, capture_output=True).stdout
        untracked = subprocess.run([*git, "ls-files", "--others", "--exclude-standard", *sources], check=True,
                                   capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if not diff and not untracked:
        return commit
    return f"{commit}+changes-{hashlib.sha1(diff + untracked).hexdigest()[:8]}"

