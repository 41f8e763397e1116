"""Waiters: control requests held open until a task is final, no task is active, or they expire.

The loop replies to a `wait` or `wait_idle` request at the end of the turn whose
commit made the reply true. Expiry times live in a heap, so a turn does
not scan every waiting client.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Waiter:
    """A held request: where to send the reply, and the monotonic time it expires."""

    identity: bytes
    envelope: bool
    request_id: Any
    expires_mono: float
    task_id: str | None = None   # None for wait_idle
    answered: bool = field(default=False)


class Waiters:
    def __init__(self):
        self._by_task: dict[str, list[Waiter]] = {}
        self._idle: list[Waiter] = []
        self._expiry: list[tuple[float, int, Waiter]] = []
        self._sequence = itertools.count()

    def add(self, waiter: Waiter) -> None:
        if waiter.task_id is None:
            self._idle.append(waiter)
        else:
            self._by_task.setdefault(waiter.task_id, []).append(waiter)
        heapq.heappush(self._expiry, (waiter.expires_mono, next(self._sequence), waiter))

    def for_task(self, task_id: str) -> list[Waiter]:
        """Remove and return the live waiters of a task that just became final."""
        waiters = [waiter for waiter in self._by_task.pop(task_id, []) if not waiter.answered]
        for waiter in waiters:
            waiter.answered = True
        return waiters

    def idle(self) -> list[Waiter]:
        """Remove and return the live wait_idle waiters."""
        waiters = [waiter for waiter in self._idle if not waiter.answered]
        self._idle = []
        for waiter in waiters:
            waiter.answered = True
        return waiters

    def expired(self, now: float) -> list[Waiter]:
        """Remove and return the waiters whose hold has ended."""
        expired = []
        while self._expiry and self._expiry[0][0] <= now:
            _when, _sequence, waiter = heapq.heappop(self._expiry)
            if waiter.answered:
                continue
            waiter.answered = True
            expired.append(waiter)
            if waiter.task_id is not None:
                remaining = [w for w in self._by_task.get(waiter.task_id, []) if not w.answered]
                if remaining:
                    self._by_task[waiter.task_id] = remaining
                else:
                    self._by_task.pop(waiter.task_id, None)
        if expired:
            self._idle = [waiter for waiter in self._idle if not waiter.answered]
        return expired

    def next_expiry(self) -> float | None:
        while self._expiry and self._expiry[0][2].answered:
            heapq.heappop(self._expiry)
        return self._expiry[0][0] if self._expiry else None
