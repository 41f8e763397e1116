"""The supervisor's clocks: monotonic for every timer, wall time only for stored timestamps."""

from __future__ import annotations

import time


class Clock:
    """Real clocks. Tests pass a stand-in with the same two methods to move time at will."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def to_monotonic(self, wall_at: float) -> float:
        """Convert a stored wall-clock time to a monotonic target, as of now.

        The supervisor does this once, when it accepts a task (or loads it at start), and
        keeps the monotonic target: moving the wall clock afterwards neither advances nor
        delays a timer. After a restart the target is derived again from the stored time.
        """
        return self.monotonic() + (wall_at - self.time())

    def to_wall(self, monotonic_at: float) -> float:
        return self.time() + (monotonic_at - self.monotonic())
