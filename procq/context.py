"""Context, passed to every handler, and TaskCancelled, raised in it by the soft signal."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Callable

from procq.timeutil import to_datetime

# Progress updates closer together than this are merged into the next one, in seconds.
PROGRESS_INTERVAL_S = 0.2


class TaskCancelled(BaseException):
    """Raised in a handler when its attempt must stop.

    `reason` is `timeout`, `deadline`, `cancelled`, `shutdown` or `memory`. It derives from
    BaseException so that `except Exception:` in a handler does not swallow it.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Context:
    """The attempt a handler runs: its ids, its time limit and whether a stop was requested."""

    def __init__(self, *, task_id: str, name: str, queue: str, attempt: int,
                 deadline_at: float | None, deadline_monotonic: float | None,
                 send_progress: Callable[[dict[str, Any]], None] | None = None):
        self.task_id = task_id
        self.name = name
        self.queue = queue
        self.attempt = attempt
        self._deadline_at = deadline_at
        self._deadline_monotonic = deadline_monotonic
        self._send_progress = send_progress
        self._stop_reason: str | None = None
        self._progress_sent_at = 0.0
        self._progress_pending: dict[str, Any] | None = None

    @property
    def deadline_at(self) -> dt.datetime | None:
        """The aware UTC time this attempt must end by, or None without a limit."""
        return to_datetime(self._deadline_at)

    def remaining(self) -> float | None:
        """Return the seconds left before the soft signal, or None without a limit."""
        if self._deadline_monotonic is None:
            return None
        return max(0.0, self._deadline_monotonic - time.monotonic())

    @property
    def cancelled(self) -> bool:
        """True once a stop of this attempt was requested (timeout, cancel, shutdown, memory)."""
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def check(self) -> None:
        """Raise TaskCancelled if a stop of this attempt was requested."""
        if self._stop_reason is not None:
            raise TaskCancelled(self._stop_reason)

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report progress; calls closer than PROGRESS_INTERVAL_S apart are coalesced."""
        self._progress_pending = {"done": done, "total": total, "message": message}
        now = time.monotonic()
        if now - self._progress_sent_at >= PROGRESS_INTERVAL_S:
            self.flush_progress(now)

    def flush_progress(self, now: float | None = None) -> None:
        """Send the latest progress update if one is waiting."""
        if self._progress_pending is None or self._send_progress is None:
            return
        update, self._progress_pending = self._progress_pending, None
        self._progress_sent_at = time.monotonic() if now is None else now
        self._send_progress(update)

    def _request_stop(self, reason: str) -> bool:
        """Record a stop request; return True if it is the first for this attempt."""
        if self._stop_reason is not None:
            return False
        self._stop_reason = reason
        return True
