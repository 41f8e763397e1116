"""The control socket's messages: one JSON object per ZeroMQ frame, in both directions.

A request is `{"id": N, "op": NAME, ...parameters}`; its reply is `{"id": N, "ok": true,
"data": ...}` or `{"id": N, "ok": false, "error": {"type": ERROR_CLASS, "message": TEXT,
...}}`. Nothing on this socket is ever unpickled.
"""

from __future__ import annotations

import json
from typing import Any

from procq import errors

PROTOCOL_VERSION = 1

# Operations the supervisor serves on the control socket.
OPERATIONS = frozenset({
    "ping", "enqueue", "get", "wait", "list", "cancel", "delete", "retry", "queues",
    "pause_queue", "resume_queue", "workers", "stats", "drain", "resume", "wait_idle", "status",
})

_ERROR_TYPES = {
    cls.__name__: cls
    for cls in (
        errors.ProcqError, errors.TaskNotFound, errors.TaskNotFinal, errors.DuplicateTask,
        errors.InvalidTask, errors.PayloadTooLarge, errors.ProtocolError,
    )
}


def encode(message: dict[str, Any]) -> bytes:
    """Encode a message as JSON. ASCII escapes keep lone surrogates encodable; NaN raises ValueError."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def clean_text(text: str, max_chars: int | None = None) -> str:
    """Return `text` with lone surrogates escaped (SQLite and UTF-8 reject them), cut to `max_chars`."""
    cleaned = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if max_chars is not None and len(cleaned) > max_chars:
        cleaned = cleaned[:max_chars] + f"... [cut at {max_chars} characters]"
    return cleaned


def decode(frame: bytes) -> dict[str, Any]:
    """Decode one frame into a JSON object, raising ProtocolError for anything else."""
    try:
        message = json.loads(frame)
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.ProtocolError(f"malformed message: not UTF-8 JSON ({exc})") from None
    if not isinstance(message, dict):
        raise errors.ProtocolError(
            f"malformed message: expected a JSON object, got {type(message).__name__}"
        )
    return message


def error_reply(request_id: Any, exc: errors.ProcqError) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, errors.DuplicateTask) and exc.existing is not None:
        error["existing"] = exc.existing
    if isinstance(exc, (errors.TaskNotFound, errors.TaskNotFinal)) and exc.task_id is not None:
        error["task_id"] = exc.task_id
    return {"id": request_id, "ok": False, "error": error}


def raise_error(error: dict[str, Any]) -> None:
    """Raise the client-side exception for an error reply."""
    from procq.taskinfo import TaskInfo

    cls = _ERROR_TYPES.get(error.get("type"), errors.ProcqError)
    message = str(error.get("message", "unknown error"))
    if cls is errors.DuplicateTask:
        existing = error.get("existing")
        raise errors.DuplicateTask(message, TaskInfo.from_dict(existing) if existing else None)
    if cls in (errors.TaskNotFound, errors.TaskNotFinal):
        raise cls(message, error.get("task_id"))
    raise cls(message)
