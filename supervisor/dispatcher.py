"""Dispatcher: the in-memory cache of waiting tasks, and the choice of the next one to run.

The store is the source of truth; these queues are rebuilt from it at start. Pending
tasks wait in per-queue FIFOs. Scheduled and retrying tasks wait in a heap keyed by the
monotonic time they become due. Deadlines of waiting tasks are in another heap, so an
expired task fails at its deadline even when no worker is free.
"""

from __future__ import annotations

import collections
import heapq
import random
from typing import Iterator


class Dispatcher:
    def __init__(self, weights: dict[str, int], strict_priority: bool = False,
                 rng: random.Random | None = None):
        self.weights = dict(weights)
        self.strict_priority = strict_priority
        self.rng = rng or random.Random()
        self.pending: dict[str, collections.OrderedDict[str, None]] = {}
        self.paused: set[str] = set()
        self._due: list[tuple[float, str]] = []            # (monotonic due time, task id)
        self._due_at: dict[str, float] = {}
        self._deadlines: list[tuple[float, str]] = []      # (monotonic deadline, task id)
        self._deadline_of: dict[str, float] = {}

    # -- adding and removing ----------------------------------------------------------

    def add_pending(self, task_id: str, queue: str) -> None:
        self.pending.setdefault(queue, collections.OrderedDict())[task_id] = None

    def add_pending_front(self, task_id: str, queue: str) -> None:
        """Put a task back at the head of its queue (a graceful stop interrupted it)."""
        entries = self.pending.setdefault(queue, collections.OrderedDict())
        entries[task_id] = None
        entries.move_to_end(task_id, last=False)

    def add_delayed(self, task_id: str, due_monotonic: float) -> None:
        self._due_at[task_id] = due_monotonic
        heapq.heappush(self._due, (due_monotonic, task_id))

    def watch_deadline(self, task_id: str, deadline_monotonic: float | None) -> None:
        if deadline_monotonic is None:
            return
        self._deadline_of[task_id] = deadline_monotonic
        heapq.heappush(self._deadlines, (deadline_monotonic, task_id))

    def deadline_of(self, task_id: str) -> float | None:
        return self._deadline_of.get(task_id)

    def remove(self, task_id: str, queue: str | None = None) -> None:
        """Forget a waiting task (cancelled, expired or dispatched)."""
        queues = [queue] if queue is not None else list(self.pending)
        for name in queues:
            entries = self.pending.get(name)
            if entries is not None and task_id in entries:
                del entries[task_id]
                break
        self._due_at.pop(task_id, None)

    def forget_deadline(self, task_id: str) -> None:
        self._deadline_of.pop(task_id, None)

    # -- timers -----------------------------------------------------------------------

    def pop_due(self, now: float) -> Iterator[str]:
        """Yield scheduled and retrying tasks whose time has come."""
        while self._due and self._due[0][0] <= now:
            due, task_id = heapq.heappop(self._due)
            if self._due_at.get(task_id) == due:
                del self._due_at[task_id]
                yield task_id

    def pop_expired(self, now: float) -> Iterator[str]:
        """Yield tasks whose deadline has passed and that are still watched."""
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, task_id = heapq.heappop(self._deadlines)
            if self._deadline_of.get(task_id) == deadline:
                yield task_id

    def next_timer(self) -> float | None:
        """Return the monotonic time of the next due task or deadline, or None."""
        while self._due and self._due_at.get(self._due[0][1]) != self._due[0][0]:
            heapq.heappop(self._due)
        while self._deadlines and self._deadline_of.get(self._deadlines[0][1]) != self._deadlines[0][0]:
            heapq.heappop(self._deadlines)
        candidates = [heap[0][0] for heap in (self._due, self._deadlines) if heap]
        return min(candidates) if candidates else None

    # -- choosing ---------------------------------------------------------------------

    def pending_count(self) -> int:
        return sum(len(entries) for entries in self.pending.values())

    def next_task(self) -> tuple[str, str] | None:
        """Pick the next task to run as (task id, queue), or None if nothing is ready.

        Queues not given a weight at start are served with weight 1. With strict
        priority, a queue is served only when every heavier queue is empty.
        """
        ready = [name for name, entries in self.pending.items() if entries and name not in self.paused]
        if not ready:
            return None
        if len(ready) == 1:
            queue = ready[0]
        elif self.strict_priority:
            queue = max(ready, key=lambda name: (self.weights.get(name, 1), name))
        else:
            weights = [self.weights.get(name, 1) for name in ready]
            queue = self.rng.choices(ready, weights=weights)[0]
        task_id, _ = self.pending[queue].popitem(last=False)
        return task_id, queue
