"""Task states, outcomes and the NO_TIMEOUT marker, spelled as in the CLI and the store."""

from __future__ import annotations

PENDING = "pending"
SCHEDULED = "scheduled"
ACTIVE = "active"
RETRY = "retry"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

STATES = (PENDING, SCHEDULED, ACTIVE, RETRY, COMPLETED, FAILED, CANCELLED)
FINAL_STATES = frozenset({COMPLETED, FAILED, CANCELLED})
# States in which a task waits for a worker and has not started its current attempt.
WAITING_STATES = frozenset({PENDING, SCHEDULED, RETRY})

# Outcomes of a task (and of each attempt). `shutdown` exists only on attempts.
SUCCEEDED = "succeeded"
ERROR = "error"
TIMEOUT = "timeout"
DEADLINE = "deadline"
EXPIRED = "expired"
MEMORY = "memory"
WORKER_LOST = "worker_lost"
RESULT_INVALID = "result_invalid"
SHUTDOWN = "shutdown"

OUTCOMES = (SUCCEEDED, ERROR, TIMEOUT, DEADLINE, EXPIRED, MEMORY, WORKER_LOST, RESULT_INVALID, CANCELLED)
ATTEMPT_OUTCOMES = OUTCOMES + (SHUTDOWN,)

# Reasons a soft signal is sent; each is also the attempt's outcome.
STOP_REASONS = (TIMEOUT, DEADLINE, CANCELLED, SHUTDOWN, MEMORY)


class _NoTimeout:
    """Marker type of NO_TIMEOUT: the task may run without a time limit."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "procq.NO_TIMEOUT"

    def __reduce__(self):
        return (_NoTimeout, ())


NO_TIMEOUT = _NoTimeout()
