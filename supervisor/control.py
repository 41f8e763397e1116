"""The control socket's commands: decode a request, run it, queue the reply.

Every request gets a reply, including malformed, truncated, unknown and oversized ones,
and no request can stop the loop: unexpected errors are logged and returned as errors.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from typing import Any

from procq import __version__, protocol, states
from procq.errors import (InvalidTask, ProcqError, ProtocolError, TaskNotFinal, TaskNotFound)
from procq.supervisor.waiters import Waiter

log = logging.getLogger(__name__)

MAX_HOLD_S = 60.0
MAX_LIST_LIMIT = 10000
# Room for the JSON around a task's arguments, on top of --max-payload, in bytes.
ENVELOPE_BYTES = 1 << 20


def handle(supervisor, frames: list[bytes]) -> None:
    """Handle one message from the ROUTER socket: [identity, body] or [identity, b"", body]."""
    identity = frames[0]
    envelope = len(frames) == 3 and frames[1] == b""
    body_frames = frames[2:] if envelope else frames[1:]
    request_id = None
    try:
        if len(body_frames) != 1:
            raise ProtocolError(f"malformed message: expected one frame, got {len(body_frames)}")
        body = body_frames[0]
        limit = supervisor.config.max_payload + ENVELOPE_BYTES
        if len(body) > limit:
            # Still tell the client which request this is: procq's client sends the id first.
            match = _LEADING_ID.match(body[:64])
            request_id = int(match.group(1)) if match else None
            raise ProtocolError(f"message of {len(body)} bytes is over the limit of {limit} bytes "
                                f"(--max-payload plus {ENVELOPE_BYTES} bytes); pass large data by reference")
        request = protocol.decode(body)
        request_id = _request_id(request.get("id"))
        op = request.get("op")
        handler = _OPERATIONS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise ProtocolError(f"unknown command {op!r}; expected one of {', '.join(sorted(_OPERATIONS))}")
        result = handler(supervisor, request, identity, envelope)
    except ProcqError as exc:
        supervisor.reply(identity, envelope, protocol.error_reply(request_id, exc))
        return
    except Exception as exc:  # noqa: BLE001 - a bad request must never stop the supervisor.
        log.exception("control request %r failed", request_id)
        supervisor.reply(identity, envelope, protocol.error_reply(
            request_id, ProcqError(f"internal error: {type(exc).__name__}: {exc}")))
        return
    if result is not _DEFERRED:
        supervisor.reply(identity, envelope, {"id": request_id, "ok": True, "data": result})


_DEFERRED = object()
_LEADING_ID = re.compile(rb'^\{"id":(\d{1,18})[,}]')


def _request_id(value: Any) -> Any:
    """Return a request id that can be echoed back: an integer or a short string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) < 2 ** 53:
        return value
    if isinstance(value, str) and len(value) <= 200:
        return protocol.clean_text(value)
    return None


def _task_id(request: dict, key: str = "task_id") -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidTask(f"invalid {key}: {value!r}; expected a task id string")
    return value


# A task id typed by a person may be cut short, as long as this many characters match one task.
MIN_PREFIX_CHARS = 6


def _resolve(supervisor, task_id: str) -> str:
    """Return the full id of a task given its id or a unique prefix of at least MIN_PREFIX_CHARS."""
    if supervisor.store.task_exists(task_id) or len(task_id) < MIN_PREFIX_CHARS:
        return task_id
    matches = supervisor.store.ids_with_prefix(task_id)
    if len(matches) > 1:
        raise InvalidTask(f"task id prefix {task_id!r} matches several tasks; give more characters")
    return matches[0] if matches else task_id


def _hold(request: dict) -> float:
    value = request.get("hold_s", 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidTask(f"invalid hold_s: {value!r}; expected seconds >= 0")
    return min(float(value), MAX_HOLD_S)


def _get_task(supervisor, task_id: str) -> dict[str, Any]:
    data = supervisor.store.task_dict(task_id)
    if data is None:
        raise TaskNotFound(f"task {task_id} not found", task_id)
    return data


# -- operations ---------------------------------------------------------------------------

def op_ping(supervisor, request, identity, envelope):
    return {"pid": os.getpid(), "version": __version__}


def op_enqueue(supervisor, request, identity, envelope):
    return supervisor.tasks.enqueue(request.get("tasks"))


def op_get(supervisor, request, identity, envelope):
    return _get_task(supervisor, _resolve(supervisor, _task_id(request)))


def op_wait(supervisor, request, identity, envelope):
    task_id = _resolve(supervisor, _task_id(request))
    hold = _hold(request)
    data = _get_task(supervisor, task_id)
    if data["state"] in states.FINAL_STATES or hold == 0:
        return data if data["state"] in states.FINAL_STATES else None
    expires = supervisor.clock.monotonic() + hold
    supervisor.waiters.add(Waiter(identity, envelope, request.get("id"), expires, task_id))
    return _DEFERRED


def op_list(supervisor, request, identity, envelope):
    requested_states = request.get("states")
    if requested_states is not None:
        if not isinstance(requested_states, list) or not all(isinstance(item, str) for item in requested_states):
            raise InvalidTask(f"invalid states: {requested_states!r}; expected a list of state names")
        unknown = [item for item in requested_states if item not in states.STATES]
        if unknown:
            raise InvalidTask(f"unknown state {unknown[0]!r}; expected one of {', '.join(states.STATES)}")
    limit, offset = request.get("limit", 100), request.get("offset", 0)
    for key, value in (("limit", limit), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidTask(f"invalid {key}: {value!r}; expected an integer >= 0")
    for key in ("queue", "name"):
        if request.get(key) is not None and not isinstance(request.get(key), str):
            raise InvalidTask(f"invalid {key}: {request.get(key)!r}; expected a string")
    rows = supervisor.store.list_rows(queue=request.get("queue"), states_=requested_states, name=request.get("name"),
                                      limit=min(limit, MAX_LIST_LIMIT), offset=offset)
    return [supervisor.store.row_to_dict(row) for row in rows]


def op_cancel(supervisor, request, identity, envelope):
    task_id = _resolve(supervisor, _task_id(request))
    data = _get_task(supervisor, task_id)
    previous = data["state"]
    if previous in states.FINAL_STATES:
        return {"task": data, "previous_state": previous, "already_final": True, "stopped_by": "none"}
    if previous in states.WAITING_STATES:
        supervisor.tasks.cancel_waiting(task_id, data["queue"])
        return {"task": supervisor.store.task_dict(task_id), "previous_state": previous,
                "already_final": False, "stopped_by": "none"}
    attempt = supervisor.tasks.active.get(task_id)
    stopped_by = "soft"
    if attempt is not None:
        if not supervisor.stop_attempt(attempt, states.CANCELLED):
            stopped_by = "kill" if attempt.kill_at is not None else "soft"
        log.info("task %s: cancel requested while active", task_id)
    return {"task": supervisor.store.task_dict(task_id), "previous_state": previous,
            "already_final": False, "stopped_by": stopped_by}


def op_delete(supervisor, request, identity, envelope):
    task_ids = request.get("task_ids")
    if not isinstance(task_ids, list) or not all(isinstance(item, str) for item in task_ids):
        raise InvalidTask(f"invalid task_ids: {task_ids!r}; expected a list of task ids")
    task_ids = [_resolve(supervisor, task_id) for task_id in task_ids]
    for task_id in task_ids:
        row = supervisor.store.task_row(task_id)
        if row is None:
            raise TaskNotFound(f"task {task_id} not found; nothing was deleted", task_id)
        if row["state"] not in states.FINAL_STATES:
            raise TaskNotFinal(f"task {task_id} is {row['state']}, not final; cancel it first. "
                               "Nothing was deleted", task_id, row["state"])
    supervisor.store.delete_tasks(task_ids)
    log.info("deleted %d tasks", len(task_ids))
    return task_ids


def op_retry(supervisor, request, identity, envelope):
    return supervisor.tasks.copy_task(_resolve(supervisor, _task_id(request)))


def _queue_name(request: dict) -> str:
    name = request.get("queue")
    if not isinstance(name, str) or not name:
        raise InvalidTask(f"invalid queue: {name!r}; expected a queue name")
    return name


def op_queues(supervisor, request, identity, envelope):
    counts = supervisor.store.queue_counts()
    oldest = supervisor.store.oldest_pending()
    paused = supervisor.dispatcher.paused
    names = set(counts) | set(supervisor.config.queues) | paused
    now = supervisor.clock.time()
    return [{
        "name": name,
        "weight": supervisor.config.queues.get(name, 1),
        "paused": name in paused,
        "counts": counts.get(name, {}),
        "oldest_pending_age_s": None if name not in oldest else max(0.0, now - oldest[name]),
    } for name in sorted(names)]


def _set_paused(supervisor, request, paused: bool) -> None:
    name = _queue_name(request)
    supervisor.store.set_queue_paused(name, paused)
    if paused:
        supervisor.dispatcher.paused.add(name)
    else:
        supervisor.dispatcher.paused.discard(name)
    log.info("queue %s %s", name, "paused" if paused else "resumed")


def op_pause_queue(supervisor, request, identity, envelope):
    _set_paused(supervisor, request, True)
    return None


def op_resume_queue(supervisor, request, identity, envelope):
    _set_paused(supervisor, request, False)
    return None


def op_workers(supervisor, request, identity, envelope):
    import psutil

    now = supervisor.clock.monotonic()
    rows = []
    for worker in supervisor.pool.live_workers():
        if worker.pid is None:
            continue
        cpu, rss, uss = None, None, None
        try:
            if worker.process is None:
                # psutil's first cpu_percent(None) is always 0: give the average over the life so far.
                worker.process = psutil.Process(worker.pid)
                worker.process.cpu_percent(None)
                times = worker.process.cpu_times()
                age_s = max(1e-3, time.time() - worker.process.create_time())
                cpu = 100.0 * (times.user + times.system) / age_s
            else:
                cpu = worker.process.cpu_percent(None)
            info = worker.process.memory_full_info()
            rss, uss = info.rss, info.uss
        except (psutil.Error, OSError):
            pass
        attempt = worker.attempt
        state = {"busy": "busy", "idle": "idle"}.get(worker.state, worker.state)
        if worker.state == "stopping":
            state = "stopping"
        rows.append({
            "pid": worker.pid, "state": state,
            "task_id": attempt.task_id if attempt else None,
            "running_s": now - attempt.started_mono if attempt else None,
            "cpu_percent": cpu, "rss_bytes": rss, "uss_bytes": uss,
            "tasks_done": worker.tasks_done, "age_s": now - worker.spawned_mono,
        })
    return rows


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    values = sorted(value * 1000 for value in values)

    def pick(fraction: float) -> float:
        return values[min(len(values) - 1, int(math.ceil(fraction * len(values))) - 1)]

    return {"p50": pick(0.5), "p99": pick(0.99), "max": values[-1]}


def op_stats(supervisor, request, identity, envelope):
    now = supervisor.clock.monotonic()
    finish_times = supervisor.tasks.finish_times
    while finish_times and finish_times[0] < now - 60:
        finish_times.popleft()
    samples = supervisor.store.lateness_samples(0)
    soft = [row[0] for row in samples if row[0] is not None]
    kill = [row[1] for row in samples if row[1] is not None]
    return {
        "by_state": supervisor.store.count_by_state(),
        "by_outcome": supervisor.store.count_by_outcome(),
        "tasks_per_s_1m": len(finish_times) / 60.0,
        "stops": {"soft": len(soft), "kill": len(kill)},
        "soft_lateness_ms": _percentiles(soft),
        "kill_lateness_ms": _percentiles(kill),
        "uptime_s": now - supervisor.started_mono,
        "workers": len(supervisor.pool.live_workers()),
    }


def op_drain(supervisor, request, identity, envelope):
    supervisor.draining = True
    supervisor.store.set_setting("draining", "1")
    log.info("draining: no new task starts until resume")
    return None


def op_resume(supervisor, request, identity, envelope):
    supervisor.draining = False
    supervisor.store.set_setting("draining", "0")
    log.info("resumed dispatching")
    return None


def op_wait_idle(supervisor, request, identity, envelope):
    hold = _hold(request)
    if not supervisor.tasks.active or hold == 0:
        return not supervisor.tasks.active
    supervisor.waiters.add(Waiter(identity, envelope, request.get("id"), supervisor.clock.monotonic() + hold))
    return _DEFERRED


def op_status(supervisor, request, identity, envelope):
    workers = supervisor.pool.live_workers()
    server = supervisor.pool.active_server()
    return {
        "pid": os.getpid(),
        "version": __version__,
        "app": supervisor.config.app,
        "uptime_s": supervisor.clock.monotonic() - supervisor.started_mono,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(supervisor.started_at)),
        "workers": len(workers),
        "workers_configured": supervisor.config.workers,
        "busy": sum(1 for w in workers if w.attempt is not None),
        "idle": sum(1 for w in workers if w.state == "idle"),
        "draining": supervisor.draining,
        "shutting_down": supervisor.shutdown_started is not None,
        "db_path": supervisor.store.path,
        "socket": supervisor.config.socket,
        "fork_server_pid": server.pid if server else None,
        "cgroups": supervisor.pool.cgroups is not None,
        "worker_failures": supervisor.worker_failures,
        "consecutive_worker_failures": supervisor.consecutive_failures,
        "last_worker_error": supervisor.last_worker_error,
        "pending": supervisor.dispatcher.pending_count(),
        "active": len(supervisor.tasks.active),
    }


_OPERATIONS = {
    "ping": op_ping, "enqueue": op_enqueue, "get": op_get, "wait": op_wait, "list": op_list,
    "cancel": op_cancel, "delete": op_delete, "retry": op_retry, "queues": op_queues,
    "pause_queue": op_pause_queue, "resume_queue": op_resume_queue, "workers": op_workers,
    "stats": op_stats, "drain": op_drain, "resume": op_resume, "wait_idle": op_wait_idle,
    "status": op_status,
}
