"""procq: a process pool for CPU-heavy Python jobs that stops each task when its time is up."""

__version__ = "0.1.0"

from procq.app import App
from procq.client import Client
from procq.context import Context, TaskCancelled
from procq.errors import (DuplicateTask, InvalidTask, PayloadTooLarge, PermissionDenied,
                          ProcqError, ProtocolError, SupervisorUnavailable, TaskNotFinal,
                          TaskNotFound, WaitTimeout)
from procq.states import NO_TIMEOUT
from procq.taskinfo import AttemptInfo, CancelResult, TaskInfo

__all__ = [
    "App", "AttemptInfo", "CancelResult", "Client", "Context", "DuplicateTask", "InvalidTask",
    "NO_TIMEOUT", "PayloadTooLarge", "PermissionDenied", "ProcqError", "ProtocolError",
    "SupervisorUnavailable", "TaskCancelled", "TaskInfo", "TaskNotFinal", "TaskNotFound",
    "WaitTimeout",
]
