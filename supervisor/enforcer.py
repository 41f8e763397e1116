"""Enforcer: the heap of soft-signal and SIGKILL times of running attempts.

Each entry names one attempt by task id and run number. An entry whose attempt has
ended by the time it fires is dropped, so a timer never touches the worker's next task.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Iterator

from procq.supervisor.attempt import Attempt

SOFT = "soft"
KILL = "kill"


class Enforcer:
    def __init__(self):
        self._heap: list[tuple[float, int, str, Attempt]] = []
        self._sequence = itertools.count()

    def schedule(self, when: float, kind: str, attempt: Attempt) -> None:
        heapq.heappush(self._heap, (when, next(self._sequence), kind, attempt))

    def next_time(self) -> float | None:
        while self._heap and self._heap[0][3].done:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[tuple[str, Attempt, float]]:
        """Yield (kind, attempt, target time) for every timer due at `now`."""
        while self._heap and self._heap[0][0] <= now:
            when, _sequence, kind, attempt = heapq.heappop(self._heap)
            if attempt.done:
                continue
            if kind == SOFT and attempt.stop_reason is not None:
                continue  # Already stopped for another reason (a cancel, say).
            yield kind, attempt, when
