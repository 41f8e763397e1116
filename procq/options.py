"""Validation of enqueue options, shared by the client (Python values) and the supervisor (JSON).

On the wire a task request is a JSON object with `name`, `args`, `kwargs`, `queue`,
`timeout_s` (seconds, null to inherit, or "none" for no limit), `deadline_at` and
`process_at` (POSIX seconds), `process_in_s`, `grace_s`, `retention_s`, `max_retry`,
`max_memory` (bytes) and `task_id`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from typing import Any

from procq.errors import InvalidTask
from procq.states import NO_TIMEOUT

NO_LIMIT = "none"
WIRE_KEYS = frozenset({
    "name", "args", "kwargs", "queue", "timeout_s", "deadline_at", "grace_s", "max_retry",
    "max_memory", "task_id", "process_in_s", "process_at", "retention_s",
})
# Limits that keep every value storable in SQLite and convertible to a datetime.
MAX_DURATION_S = 100 * 365 * 86400.0          # 100 years
MAX_TIMESTAMP = 253402300799.0                # 9999-12-31T23:59:59Z
MAX_RETRY = 1_000_000
MAX_MEMORY_BYTES = 1 << 62
# Task ids and queue names appear in logs, tables and file names: keep them printable.
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,199}$")


def duration_seconds(option: str, value: Any) -> float | None:
    """Return a positive duration in seconds from seconds or a timedelta, or None."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidTask(
            f"invalid {option}: {value!r}; expected seconds (int or float) or a datetime.timedelta"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidTask(f"invalid {option}: {value!r}; it must be a positive duration")
    if seconds > MAX_DURATION_S:
        raise InvalidTask(f"invalid {option}: {value!r} is over 100 years")
    return seconds


def timestamp_seconds(option: str, value: Any) -> float | None:
    """Return POSIX seconds from an aware datetime or a timestamp, or None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidTask(
                f"invalid {option}: {value!r} is a naive datetime; give it a timezone, "
                "e.g. datetime.now(timezone.utc)"
            )
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise InvalidTask(f"invalid {option}: {value!r}; expected an aware datetime or a POSIX timestamp")


def _check_json(option: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidTask(f"invalid {option}: not JSON-serializable ({exc})") from None


def client_request(name: Any, args: Any = (), kwargs: Any = None, *, queue: Any = None,
                   timeout: Any = None, deadline: Any = None, grace: Any = None,
                   max_retry: Any = None, max_memory: Any = None, task_id: Any = None,
                   process_in: Any = None, process_at: Any = None, retention: Any = None,
                   now: float | None = None) -> dict[str, Any]:
    """Build the wire form of one enqueue from Client.enqueue's arguments."""
    now = time.time() if now is None else now
    if not isinstance(name, str) or not name:
        raise InvalidTask(f"invalid name: {name!r}; expected the registered handler name")
    if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
        raise InvalidTask(f"invalid args: {args!r}; expected a list or tuple of positional arguments")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise InvalidTask(f"invalid kwargs: {kwargs!r}; expected a dict with string keys")
    _check_json("args", list(args))
    _check_json("kwargs", kwargs)

    if timeout is NO_TIMEOUT:
        timeout_s: Any = NO_LIMIT
    else:
        timeout_s = duration_seconds("timeout", timeout)
    deadline_at = timestamp_seconds("deadline", deadline)
    if deadline_at is not None and deadline_at <= now:
        raise InvalidTask(
            f"invalid deadline: {deadline!r} is already past; give a time in the future"
        )
    if process_in is not None and process_at is not None:
        raise InvalidTask("invalid process_in/process_at: give at most one of them")

    request = {
        "name": name,
        "args": list(args),
        "kwargs": kwargs,
        "queue": queue,
        "timeout_s": timeout_s,
        "deadline_at": deadline_at,
        "grace_s": duration_seconds("grace", grace),
        "max_retry": max_retry,
        "max_memory": max_memory,
        "task_id": task_id,
        "process_in_s": duration_seconds("process_in", process_in),
        "process_at": timestamp_seconds("process_at", process_at),
        "retention_s": duration_seconds("retention", retention),
    }
    check_request(request, now=now)
    return request


def check_request(request: Any, *, now: float | None = None) -> dict[str, Any]:
    """Validate a wire-form enqueue request (from any sender) and return it.

    Checks types and ranges only; the supervisor resolves handler names and defaults.
    """
    now = time.time() if now is None else now
    if not isinstance(request, dict):
        raise InvalidTask(f"invalid task: expected a JSON object, got {type(request).__name__}")
    unknown = sorted(set(request) - WIRE_KEYS)
    if unknown:
        raise InvalidTask(f"invalid task: unknown option(s) {', '.join(unknown)}")

    name = request.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidTask(f"invalid name: {name!r}; expected the registered handler name")
    if not isinstance(request.get("args", []), list):
        raise InvalidTask("invalid args: expected a JSON array")
    kwargs = request.get("kwargs", {})
    if kwargs is not None and not isinstance(kwargs, dict):
        raise InvalidTask("invalid kwargs: expected a JSON object")

    queue = request.get("queue")
    if queue is not None and (not isinstance(queue, str) or not _IDENT.match(queue)):
        raise InvalidTask(
            f"invalid queue: {queue!r}; use 1-200 letters, digits and _.:@/+=- starting with a letter or digit"
        )
    task_id = request.get("task_id")
    if task_id is not None and (not isinstance(task_id, str) or not _IDENT.match(task_id)):
        raise InvalidTask(
            f"invalid task_id: {task_id!r}; use 1-200 letters, digits and _.:@/+=- starting with a letter or digit"
        )

    timeout_s = request.get("timeout_s")
    if timeout_s != NO_LIMIT:
        _positive_number("timeout", timeout_s)
    for option, key in (("grace", "grace_s"), ("process_in", "process_in_s"), ("retention", "retention_s")):
        _positive_number(option, request.get(key))
    for option in ("deadline_at", "process_at"):
        value = request.get(option)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or not 0 <= value <= MAX_TIMESTAMP):
            raise InvalidTask(f"invalid {option}: {value!r}; expected POSIX seconds between 0 and "
                              f"{MAX_TIMESTAMP:.0f} (year 9999)")
    deadline_at = request.get("deadline_at")
    if deadline_at is not None and deadline_at <= now:
        raise InvalidTask(f"invalid deadline: {deadline_at!r} is already past; give a time in the future")
    if request.get("process_in_s") is not None and request.get("process_at") is not None:
        raise InvalidTask("invalid process_in/process_at: give at most one of them")

    max_retry = request.get("max_retry")
    if max_retry is not None and (isinstance(max_retry, bool) or not isinstance(max_retry, int)
                                  or not 0 <= max_retry <= MAX_RETRY):
        raise InvalidTask(f"invalid max_retry: {max_retry!r}; expected an integer from 0 to {MAX_RETRY}")
    max_memory = request.get("max_memory")
    if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, int)
                                   or not 0 < max_memory <= MAX_MEMORY_BYTES):
        raise InvalidTask(f"invalid max_memory: {max_memory!r}; expected a positive number of bytes "
                          f"up to {MAX_MEMORY_BYTES}")
    return request


def _positive_number(option: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidTask(f"invalid {option}: {value!r}; it must be a positive number of seconds")
    if value > MAX_DURATION_S:
        raise InvalidTask(f"invalid {option}: {value!r} seconds is over 100 years; "
                          "use procq.NO_TIMEOUT (CLI: --timeout none) for no limit")
