"""TaskInfo, AttemptInfo and CancelResult: what the client returns about a task."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from procq import states
from procq.timeutil import parse_iso, to_iso

# Keys of TaskInfo.to_dict() and of every task object in the CLI's JSON, in this order.
TASK_KEYS = (
    "id", "name", "queue", "state", "outcome", "args", "kwargs", "result", "error", "progress",
    "attempt", "max_retry", "timeout_s", "deadline_at", "grace_s", "max_memory", "retention_s",
    "enqueued_at", "scheduled_at", "started_at", "finished_at", "worker_pid", "soft_signal_at",
    "kill_at", "reaped_at", "soft_lateness_s", "kill_lateness_s", "exit_signal", "exit_code",
    "children_killed", "retry_of", "attempts",
)
ATTEMPT_KEYS = (
    "number", "counted", "started_at", "finished_at", "worker_pid", "outcome", "soft_signal_at",
    "kill_at", "reaped_at", "soft_lateness_s", "kill_lateness_s", "exit_signal", "exit_code",
    "children_killed", "error",
)
_TASK_TIMES = ("deadline_at", "enqueued_at", "scheduled_at", "started_at", "finished_at",
               "soft_signal_at", "kill_at", "reaped_at")
_ATTEMPT_TIMES = ("started_at", "finished_at", "soft_signal_at", "kill_at", "reaped_at")


def _encode_time(value: dt.datetime | None) -> str | None:
    return None if value is None else to_iso(value.timestamp())


@dataclasses.dataclass
class AttemptInfo:
    """One run of a task in a worker. `counted` is false for runs a graceful stop interrupted."""

    number: int
    counted: bool
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    worker_pid: int | None = None
    outcome: str | None = None
    soft_signal_at: dt.datetime | None = None
    kill_at: dt.datetime | None = None
    reaped_at: dt.datetime | None = None
    soft_lateness_s: float | None = None
    kill_lateness_s: float | None = None
    exit_signal: int | None = None
    exit_code: int | None = None
    children_killed: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the attempt as JSON-ready data, with ISO 8601 UTC timestamps."""
        data = {key: getattr(self, key) for key in ATTEMPT_KEYS}
        for key in _ATTEMPT_TIMES:
            data[key] = _encode_time(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptInfo:
        values = {key: data.get(key) for key in ATTEMPT_KEYS}
        for key in _ATTEMPT_TIMES:
            values[key] = parse_iso(values[key])
        return cls(**values)


@dataclasses.dataclass
class TaskInfo:
    """A task's stored record. Times are aware UTC datetimes and durations are float seconds.

    `attempt` counts the attempts that count against `max_retry`, this one included.
    `timeout_s` None means the task runs without a time limit. The signal, exit and
    lateness fields repeat those of the latest attempt.
    """

    id: str
    name: str
    queue: str
    state: str
    outcome: str | None = None
    args: list = dataclasses.field(default_factory=list)
    kwargs: dict = dataclasses.field(default_factory=dict)
    result: Any = None
    error: str | None = None
    progress: dict | None = None
    attempt: int = 0
    max_retry: int = 0
    timeout_s: float | None = None
    deadline_at: dt.datetime | None = None
    grace_s: float | None = None
    max_memory: int | None = None
    retention_s: float | None = None
    enqueued_at: dt.datetime | None = None
    scheduled_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    worker_pid: int | None = None
    soft_signal_at: dt.datetime | None = None
    kill_at: dt.datetime | None = None
    reaped_at: dt.datetime | None = None
    soft_lateness_s: float | None = None
    kill_lateness_s: float | None = None
    exit_signal: int | None = None
    exit_code: int | None = None
    children_killed: int | None = None
    retry_of: str | None = None
    attempts: list[AttemptInfo] = dataclasses.field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return self.state in states.FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """Return the task as JSON-ready data with exactly the keys in TASK_KEYS."""
        data = {key: getattr(self, key) for key in TASK_KEYS}
        for key in _TASK_TIMES:
            data[key] = _encode_time(data[key])
        data["attempts"] = [attempt.to_dict() for attempt in self.attempts]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskInfo:
        values = {key: data.get(key) for key in TASK_KEYS}
        for key in _TASK_TIMES:
            values[key] = parse_iso(values[key])
        values["args"] = list(values["args"] or [])
        values["kwargs"] = dict(values["kwargs"] or {})
        values["attempts"] = [AttemptInfo.from_dict(item) for item in values["attempts"] or []]
        return cls(**values)


def stopped_by(task: TaskInfo) -> str:
    """Return how a task's last attempt was stopped: `none`, `soft` or `kill`."""
    attempt = task.attempts[-1] if task.attempts else None
    if attempt is None or attempt.soft_signal_at is None:
        return "none"
    return "kill" if attempt.kill_at is not None else "soft"


@dataclasses.dataclass
class CancelResult:
    """The outcome of a cancel: the task after it, its state before, and how it was stopped.

    `stopped_by` is `none` (it never ran or had already ended), `soft` (the handler ended
    after the soft signal) or `kill` (the worker was killed after the grace period).
    While a stop is still under way (cancel with wait=False) it is the step taken so far.
    """

    task: TaskInfo
    previous_state: str
    already_final: bool
    stopped_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.task.id,
            "state": self.task.state,
            "previous_state": self.previous_state,
            "already_final": self.already_final,
            "stopped_by": self.stopped_by,
        }
