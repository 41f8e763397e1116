"""Attempt: the supervisor's in-memory record of one task run in one worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Attempt:
    """One run of a task. Times named *_mono are monotonic; *_at are wall-clock POSIX seconds.

    `run` numbers every run of the task (attempt rows in the store); `counted` is the
    task's attempt number as the handler reads it from ctx.attempt.
    """

    task_id: str
    run: int
    counted: int
    queue: str
    worker_id: str
    worker_pid: int
    started_mono: float
    started_at: float
    grace_s: float
    max_memory: int | None
    soft_target_mono: float | None
    soft_reason: str | None          # timeout or deadline: what the soft target stands for
    max_retry: int
    deadline_mono: float | None
    stop_reason: str | None = None   # set when the soft signal is sent; the attempt's outcome
    soft_signal_at: float | None = None
    soft_lateness_s: float | None = None
    kill_target_mono: float | None = None
    kill_at: float | None = None
    kill_lateness_s: float | None = None
    children_killed: int = 0
    report: dict[str, Any] | None = None   # the worker's result message, once it arrived
    seen: set = field(default_factory=set)  # descendants seen while it ran (no-cgroup mode)
    done: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.run)
