"""Observers for the enforcement benchmark: CPU load, process exits and pool size over time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Callable

import psutil

import procq
from bench.harness import summary_ms


class CpuLoad:
    """Busy-loop subprocesses at normal priority that keep the CPUs loaded until stopped."""

    def __init__(self, processes: int):
        self.count = processes
        self.processes: list[subprocess.Popen] = []

    def start(self) -> CpuLoad:
        for _ in range(self.count):
            self.processes.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        return self

    @property
    def pids(self) -> set[int]:
        return {process.pid for process in self.processes}

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        self.processes.clear()


def process_state(pid: int) -> str | None:
    """Return the one-letter state from /proc/PID/stat (Z for a zombie), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class ExitWatcher(threading.Thread):
    """Record when each task's process exits and when it is gone from /proc (reaped).

    Tasks announce themselves with a start file "wall-clock time pid" (bench.apps.record_start),
    named TASK_INDEX.start in `directory`. Only tasks with `watch(index)` true are followed.
    The watcher polls every `interval_s`, so its times are late by up to one interval plus
    scheduling delay on a loaded machine, and it costs the calling process some CPU.
    """

    def __init__(self, directory: str, watch: Callable[[int], bool], interval_s: float = 0.001):
        super().__init__(daemon=True, name="exit-watcher")
        self.directory = directory
        self.watch = watch
        self.interval_s = interval_s
        self.starts: dict[int, tuple[float, int]] = {}
        self.exited_at: dict[int, float] = {}
        self.gone_at: dict[int, float] = {}
        self._followed: dict[int, int] = {}
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            self._scan_new_starts()
            now = time.time()
            for index, pid in list(self._followed.items()):
                state = process_state(pid)
                if state in (None, "Z", "X") and index not in self.exited_at:
                    self.exited_at[index] = now
                if state is None:
                    self.gone_at[index] = now
                    del self._followed[index]
            time.sleep(self.interval_s)

    def _scan_new_starts(self) -> None:
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.name.endswith(".start"):
                    continue
                index = int(entry.name.split(".")[0])
                if index in self.starts:
                    continue
                start = read_start(entry.path)
                if start is None:
                    continue  # The task is still writing it.
                self.starts[index] = start
                if self.watch(index):
                    self._followed[index] = start[1]

    def stop(self) -> None:
        """Stop polling if started, then read the start files written since the last scan."""
        self._stopping.set()
        if self.is_alive():
            self.join()
        self._scan_new_starts()


def read_start(path: str) -> tuple[float, int] | None:
    """Return (wall-clock start, pid) from a start file, or None if it is missing or incomplete."""
    try:
        with open(path) as file:
            text = file.read()
    except OSError:
        return None
    if not text.endswith("\n"):
        return None
    started, pid = text.split()
    return float(started), int(pid)


class PoolSampler(threading.Thread):
    """Sample a pool's worker count every `interval_s` and integrate the time it was short.

    `sample()` returns (workers ready for a task, workers alive, pids seen). The time below
    full size is the sum of the intervals that began with fewer than `size` ready workers.
    """

    def __init__(self, sample: Callable[[], tuple[int, int, set[int]]], size: int, interval_s: float):
        super().__init__(daemon=True, name="pool-sampler")
        self.sample = sample
        self.size = size
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []
        self.pids: set[int] = set()
        self.errors = 0
        self.call_durations: list[float] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            called = time.monotonic()
            try:
                ready, alive, pids = self.sample()
            except procq.ProcqError:
                self.errors += 1
            else:
                self.call_durations.append(time.monotonic() - called)
                self.samples.append((time.monotonic(), ready, alive))
                self.pids |= pids
            self._stopping.wait(self.interval_s)

    def stop(self) -> dict:
        """Stop sampling and return the integrated figures."""
        self._stopping.set()
        self.join()
        ready_spells = self._spells_below(1)
        alive_spells = self._spells_below(2)
        span = self.samples[-1][0] - self.samples[0][0] if len(self.samples) > 1 else 0.0
        gaps = [later[0] - earlier[0] for earlier, later in zip(self.samples, self.samples[1:])]
        return {"sampled_s": span, "samples": len(self.samples), "sample_errors": self.errors,
                "max_sample_gap_ms": max(gaps) * 1000 if gaps else None,
                "sample_call_ms": summary_ms(self.call_durations),
                "below_full_s": sum(ready_spells), "below_full_alive_s": sum(alive_spells),
                "spells_below_full_ms": summary_ms(ready_spells),
                "spells_below_full_alive_ms": summary_ms(alive_spells),
                "max_alive": max((sample[2] for sample in self.samples), default=None),
                "distinct_pids": len(self.pids)}

    def _spells_below(self, field: int) -> list[float]:
        """Return the lengths of the runs of consecutive samples whose `field` is below size."""
        spells = []
        current = 0.0
        for earlier, later in zip(self.samples, self.samples[1:]):
            if earlier[field] < self.size:
                current += later[0] - earlier[0]
            elif current:
                spells.append(current)
                current = 0.0
        if current:
            spells.append(current)
        return spells


def procq_pool_sample(client: procq.Client) -> Callable[[], tuple[int, int, set[int]]]:
    """Return a sampler of a supervisor's workers: ready is idle or busy, alive adds stopping."""

    def sample() -> tuple[int, int, set[int]]:
        workers = client.workers()
        ready = sum(1 for worker in workers if worker["state"] in ("idle", "busy"))
        alive = sum(1 for worker in workers if worker["state"] in ("idle", "busy", "stopping"))
        return ready, alive, {worker["pid"] for worker in workers}

    return sample


def child_pool_sample(excluded: set[int], overdue: Callable[[], set[int]]) -> Callable[[], tuple[int, int, set[int]]]:
    """Return a sampler of this process's live children, less `excluded`: a pool's workers.

    Ready leaves out the `overdue()` pids, workers whose task is past its timeout and that
    the pool is stopping, as procq's sampler leaves out workers in their grace period.
    """
    this_process = psutil.Process()

    def sample() -> tuple[int, int, set[int]]:
        pids = set()
        for child in this_process.children():
            if child.pid in excluded:
                continue
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.add(child.pid)
            except psutil.NoSuchProcess:
                continue
        return len(pids - overdue()), len(pids), pids

    return sample
