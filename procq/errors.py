"""Exceptions raised by procq's client and supervisor, all subclasses of ProcqError."""

from __future__ import annotations


class ProcqError(Exception):
    """Base class of every error procq raises on purpose."""


class SupervisorUnavailable(ProcqError):
    """No supervisor replied on the address within the connect timeout."""

    def __init__(self, message: str, address: str | None = None):
        super().__init__(message)
        self.address = address


class PermissionDenied(SupervisorUnavailable):
    """The control socket exists, but this user may not connect to it."""


class TaskNotFound(ProcqError):
    """No task with the requested id exists (it never did, or was purged or deleted)."""

    def __init__(self, message: str, task_id: str | None = None):
        super().__init__(message)
        self.task_id = task_id


class TaskNotFinal(ProcqError):
    """The operation needs a task in a final state (completed, failed, cancelled)."""

    def __init__(self, message: str, task_id: str | None = None, state: str | None = None):
        super().__init__(message)
        self.task_id = task_id
        self.state = state


class DuplicateTask(ProcqError):
    """A task with the requested task_id already exists; `existing` is its TaskInfo."""

    def __init__(self, message: str, existing=None):
        super().__init__(message)
        self.existing = existing


class InvalidTask(ProcqError):
    """An enqueue was rejected: unknown handler, invalid option or non-JSON arguments."""


class PayloadTooLarge(ProcqError):
    """A task's encoded arguments are over the supervisor's --max-payload."""


class WaitTimeout(ProcqError, TimeoutError):
    """A wait's own timeout passed before the task reached a final state."""


class ProtocolError(ProcqError):
    """A message on the control socket could not be decoded or was not understood."""
