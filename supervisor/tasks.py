"""TaskBook: every task state change, written to the store and mirrored in the dispatcher.

Nothing here commits: the supervisor's loop commits once per turn. Tasks that reach a
final state during the turn are collected in `finalized`, so the loop can reply to the
clients waiting for them after the commit.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import random
from typing import Any

from procq import options, states
from procq.protocol import clean_text
from procq.errors import DuplicateTask, InvalidTask, PayloadTooLarge
from procq.store.sqlite import task_dict_from_row
from procq.supervisor.attempt import Attempt

log = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 24 * 3600.0
RETRYABLE = frozenset({states.ERROR, states.TIMEOUT, states.MEMORY, states.WORKER_LOST})


def asynq_delay(attempt: int) -> float:
    return attempt ** 4 + 15 + random.randint(0, 29) * (attempt + 1)


class TaskBook:
    def __init__(self, store, dispatcher, clock, *, max_payload: int, max_grace_s: float):
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.max_payload = max_payload
        self.max_grace_s = max_grace_s
        self.handlers: dict[str, dict[str, Any]] = {}
        self.custom_retry_delay = False
        self.active: dict[str, Attempt] = {}
        self.finalized: list[str] = []
        self.finish_times: collections.deque[float] = collections.deque()
        # (task id, run, attempt, error) of recovered tasks that went to retry.
        self.recovered_retries: list[tuple[str, int, int, str]] = []

    def set_application(self, description: dict[str, Any]) -> None:
        self.handlers = description["handlers"]
        self.custom_retry_delay = bool(description.get("custom_retry_delay"))

    # -- start ------------------------------------------------------------------------

    def recover(self) -> int:
        """Finish attempts left active by a previous run as worker_lost; return how many."""
        now = self.clock.time()
        rows = self.store.active_rows()
        for row in rows:
            error = "the supervisor stopped while this attempt ran (crash or SIGKILL); its worker was lost"
            self.store.update_attempt(row["id"], row["runs"], finished_at=now, outcome=states.WORKER_LOST,
                                      error=error)
            log.warning("task %s: attempt %d was active when the supervisor stopped; recorded as worker_lost",
                        row["id"], row["runs"])
            deadline_mono = None if row["deadline_at"] is None else self.clock.to_monotonic(row["deadline_at"])
            new_state = self._after_failure(row["id"], row["queue"], row["attempt"], row["max_retry"],
                                            deadline_mono, states.WORKER_LOST, error, None)
            if new_state == states.RETRY:
                self.recovered_retries.append((row["id"], row["runs"], row["attempt"], error))
        return len(rows)

    def load_waiting(self) -> int:
        """Fill the dispatcher from the store's pending, scheduled and retry tasks."""
        rows = self.store.waiting_rows()
        for row in rows:
            deadline_mono = None
            if row["deadline_at"] is not None:
                deadline_mono = self.clock.to_monotonic(row["deadline_at"])
            if row["state"] == states.PENDING:
                self.dispatcher.add_pending(row["id"], row["queue"])
            else:
                due = row["scheduled_at"] if row["scheduled_at"] is not None else self.clock.time()
                self.dispatcher.add_delayed(row["id"], self.clock.to_monotonic(due))
            self.dispatcher.watch_deadline(row["id"], deadline_mono)
        return len(rows)

    # -- enqueue ----------------------------------------------------------------------

    def enqueue(self, requests: list[Any], *, retry_of: str | None = None) -> list[dict[str, Any]]:
        """Validate and store new tasks, all or none; return their TaskInfo dicts."""
        if not isinstance(requests, list) or not requests:
            raise InvalidTask("invalid enqueue: `tasks` must be a non-empty list")
        many = len(requests) > 1
        rows, seen = [], set()
        for index, request in enumerate(requests):
            try:
                row = self._new_row(request)
                if row["id"] in seen:
                    raise DuplicateTask(f"duplicate task_id {row['id']!r} within one enqueue_many")
                if request.get("task_id") and self.store.task_exists(row["id"]):
                    raise DuplicateTask(f"task {row['id']!r} already exists", self.store.task_dict(row["id"]))
            except (InvalidTask, PayloadTooLarge, DuplicateTask) as exc:
                if many:
                    exc.args = (f"item {index}: {exc}",)
                raise
            row["retry_of"] = retry_of
            seen.add(row["id"])
            rows.append(row)

        # Build the replies first: a value that cannot be shown must fail before anything is stored.
        replies = [task_dict_from_row(_RowView(row), []) for row in rows]
        self.store.insert_tasks_atomically(rows)
        for row in rows:
            deadline_mono = None if row["deadline_at"] is None else self.clock.to_monotonic(row["deadline_at"])
            if row["state"] == states.PENDING:
                self.dispatcher.add_pending(row["id"], row["queue"])
            else:
                self.dispatcher.add_delayed(row["id"], self.clock.to_monotonic(row["scheduled_at"]))
            self.dispatcher.watch_deadline(row["id"], deadline_mono)
        return replies

    def _new_row(self, request: Any) -> dict[str, Any]:
        now = self.clock.time()
        options.check_request(request, now=now)
        name = request["name"]
        handler = self.handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.handlers)[:20]) or "none"
            raise InvalidTask(f"unknown handler {name!r}; the application registers: {known}")

        args_json = json.dumps(request.get("args", []), separators=(",", ":"), ensure_ascii=False)
        kwargs_json = json.dumps(request.get("kwargs") or {}, separators=(",", ":"), ensure_ascii=False)
        size = len(args_json.encode()) + len(kwargs_json.encode())
        if size > self.max_payload:
            raise PayloadTooLarge(
                f"task {name!r} has {size} bytes of encoded arguments, over the supervisor's "
                f"--max-payload of {self.max_payload} bytes; pass a reference (a path or a key) instead"
            )

        timeout_s = request.get("timeout_s")
        if timeout_s == options.NO_LIMIT:
            timeout_s = None
        elif timeout_s is None:
            timeout_s = handler["timeout_s"]
        grace_s = request.get("grace_s") or handler["grace_s"]
        max_retry = request.get("max_retry")
        max_memory = request.get("max_memory")
        process_at = request.get("process_at")
        if request.get("process_in_s") is not None:
            process_at = now + request["process_in_s"]
        scheduled = process_at is not None and process_at > now
        return {
            "id": request.get("task_id") or os.urandom(16).hex(),
            "name": name,
            "queue": request.get("queue") or handler.get("queue") or "default",
            "state": states.SCHEDULED if scheduled else states.PENDING,
            "args": args_json,
            "kwargs": kwargs_json,
            "max_retry": handler["max_retry"] if max_retry is None else max_retry,
            "timeout_s": timeout_s,
            "deadline_at": request.get("deadline_at"),
            "grace_s": min(float(grace_s), self.max_grace_s),
            "max_memory": handler["max_memory"] if max_memory is None else max_memory,
            "retention_s": request.get("retention_s") or DEFAULT_RETENTION_S,
            "enqueued_at": now,
            "scheduled_at": process_at if scheduled else None,
            "attempt": 0,
            "runs": 0,
        }

    def copy_task(self, task_id: str) -> dict[str, Any]:
        """Enqueue a new task with the same name, arguments and options as `task_id`."""
        row = self.store.task_row(task_id)
        if row is None:
            from procq.errors import TaskNotFound

            raise TaskNotFound(f"task {task_id} not found", task_id)
        request = {
            "name": row["name"], "args": json.loads(row["args"]), "kwargs": json.loads(row["kwargs"]),
            "queue": row["queue"], "timeout_s": options.NO_LIMIT if row["timeout_s"] is None else row["timeout_s"],
            "grace_s": row["grace_s"], "max_retry": row["max_retry"], "max_memory": row["max_memory"],
            "retention_s": row["retention_s"],
        }
        if row["deadline_at"] is not None and row["deadline_at"] > self.clock.time():
            request["deadline_at"] = row["deadline_at"]
        return self.enqueue([request], retry_of=task_id)[0]

    # -- waiting tasks ----------------------------------------------------------------

    def promote(self, task_id: str) -> None:
        """Make a scheduled or retrying task pending, now that it is due."""
        row = self.store.task_row(task_id)
        if row is None or row["state"] not in (states.SCHEDULED, states.RETRY):
            return
        self.store.update_task(task_id, state=states.PENDING)
        self.dispatcher.add_pending(task_id, row["queue"])

    def expire(self, task_id: str) -> None:
        """Fail a waiting task whose deadline passed before it could start."""
        row = self.store.task_row(task_id)
        self.dispatcher.forget_deadline(task_id)
        if row is None or row["state"] not in states.WAITING_STATES:
            return
        self.dispatcher.remove(task_id, row["queue"])
        self._finalize(task_id, states.FAILED, states.EXPIRED,
                       error=f"deadline passed before the task could start ({row['state']})")
        log.info("task %s expired: its deadline passed while it was %s", task_id, row["state"])

    def cancel_waiting(self, task_id: str, queue: str) -> None:
        self.dispatcher.remove(task_id, queue)
        self.dispatcher.forget_deadline(task_id)
        self._finalize(task_id, states.CANCELLED, states.CANCELLED)
        log.info("task %s cancelled before it started", task_id)

    # -- attempts ---------------------------------------------------------------------

    def start_attempt(self, task_id: str, worker_id: str, worker_pid: int) -> tuple[Attempt, bytes] | None:
        """Record a new attempt as active and return it with the message for the worker."""
        row = self.store.dispatch_row(task_id)
        if row is None or row["state"] != states.PENDING:
            return None
        now_mono, now = self.clock.monotonic(), self.clock.time()
        deadline_mono = self.dispatcher.deadline_of(task_id)
        run, counted = row["runs"] + 1, row["attempt"] + 1
        if deadline_mono is not None and deadline_mono <= now_mono:
            self.expire(task_id)
            return None

        soft_target, soft_reason = None, None
        if row["timeout_s"] is not None:
            soft_target, soft_reason = now_mono + row["timeout_s"], states.TIMEOUT
        if deadline_mono is not None and (soft_target is None or deadline_mono < soft_target):
            soft_target, soft_reason = deadline_mono, states.DEADLINE

        self.store.update_task(task_id, state=states.ACTIVE, attempt=counted, runs=run, started_at=now,
                               worker_pid=worker_pid)
        self.store.insert_attempt(task_id, run, counted=1, started_at=now, worker_pid=worker_pid)
        attempt = Attempt(
            task_id=task_id, run=run, counted=counted, queue=row["queue"], worker_id=worker_id,
            worker_pid=worker_pid, started_mono=now_mono, started_at=now, grace_s=row["grace_s"],
            max_memory=row["max_memory"], soft_target_mono=soft_target, soft_reason=soft_reason,
            max_retry=row["max_retry"], deadline_mono=deadline_mono,
        )
        self.active[task_id] = attempt

        header = {"t": "task", "id": task_id, "run": run, "name": row["name"], "queue": row["queue"],
                  "attempt": counted, "soft_at": None, "soft_in_s": None}
        if soft_target is not None:
            header["soft_in_s"] = soft_target - now_mono
            header["soft_at"] = now + header["soft_in_s"]
        frame = json.dumps(header, separators=(",", ":"))[:-1]
        frame += ',"args":' + row["args"] + ',"kwargs":' + row["kwargs"] + "}"
        return attempt, frame.encode()

    def reschedule_retry(self, task_id: str, run: int, delay_s: float) -> None:
        """Apply the application's retry_delay, computed by the fork server after a kill."""
        row = self.store.task_row(task_id)
        if row is None or row["state"] != states.RETRY or row["runs"] != run:
            return
        self.store.update_task(task_id, scheduled_at=self.clock.time() + delay_s)
        self.dispatcher.add_delayed(task_id, self.clock.monotonic() + delay_s)

    def record_progress(self, attempt: Attempt, message: dict[str, Any]) -> None:
        done, total, text = message.get("done"), message.get("total"), message.get("message")
        if not _finite_or_none(done) or not _finite_or_none(total):
            log.warning("task %s: progress update ignored: done=%r total=%r are not finite numbers",
                        attempt.task_id, done, total)
            return
        if text is not None:
            text = clean_text(str(text), 1000)
        progress = {"done": done, "total": total, "message": text, "updated_at": _iso(self.clock.time())}
        self.store.update_task(attempt.task_id, progress=json.dumps(progress))

    def finish_attempt(self, attempt: Attempt, outcome: str, *, result_json: str | None = None,
                       error: str | None = None, exit_code: int | None = None,
                       exit_signal: int | None = None, reaped_at: float | None = None,
                       retry_delay_s: float | None = None) -> str:
        """Record how an attempt ended and move its task on; return the task's new state."""
        now = self.clock.time()
        attempt.done = True
        self.active.pop(attempt.task_id, None)
        if error is not None:
            error = clean_text(error, 64 * 1024)
        self.store.update_attempt(
            attempt.task_id, attempt.run, finished_at=now, outcome=outcome,
            counted=0 if outcome == states.SHUTDOWN else 1,
            soft_signal_at=attempt.soft_signal_at, kill_at=attempt.kill_at, reaped_at=reaped_at,
            soft_lateness_s=attempt.soft_lateness_s, kill_lateness_s=attempt.kill_lateness_s,
            exit_signal=exit_signal, exit_code=exit_code, children_killed=attempt.children_killed,
            error=error,
        )
        outputs: dict[str, Any] = {}
        if result_json is not None:
            outputs["result"] = result_json
        if error is not None:
            outputs["error"] = error

        if outcome == states.SUCCEEDED:
            self.dispatcher.forget_deadline(attempt.task_id)
            self._finalize(attempt.task_id, states.COMPLETED, states.SUCCEEDED, error=None, **outputs)
            return states.COMPLETED
        if outputs:
            self.store.update_task(attempt.task_id, **outputs)
        if outcome == states.SHUTDOWN:
            # A graceful stop interrupted it: back to the head of its queue, attempt not counted.
            self.store.update_task(attempt.task_id, state=states.PENDING, attempt=attempt.counted - 1)
            self.dispatcher.add_pending_front(attempt.task_id, attempt.queue)
            self.dispatcher.watch_deadline(attempt.task_id, attempt.deadline_mono)
            return states.PENDING
        if outcome in (states.CANCELLED,):
            self.dispatcher.forget_deadline(attempt.task_id)
            self._finalize(attempt.task_id, states.CANCELLED, states.CANCELLED)
            return states.CANCELLED
        return self._after_failure(attempt.task_id, attempt.queue, attempt.counted, attempt.max_retry,
                                   attempt.deadline_mono, outcome, error, retry_delay_s)

    def _after_failure(self, task_id: str, queue: str, counted: int, max_retry: int,
                       deadline_mono: float | None, outcome: str, error: str | None,
                       retry_delay_s: float | None) -> str:
        if outcome in RETRYABLE and counted <= max_retry:
            delay = retry_delay_s if retry_delay_s is not None else asynq_delay(counted)
            due_mono = self.clock.monotonic() + max(0.0, delay)
            if deadline_mono is None or due_mono < deadline_mono:
                self.store.update_task(task_id, state=states.RETRY,
                                       scheduled_at=self.clock.time() + max(0.0, delay))
                self.dispatcher.add_delayed(task_id, due_mono)
                self.dispatcher.watch_deadline(task_id, deadline_mono)
                log.info("task %s: attempt %d ended %s; retry in %.3f s (%d of %d retries used)",
                         task_id, counted, outcome, delay, counted, max_retry)
                return states.RETRY
        self.dispatcher.forget_deadline(task_id)
        self._finalize(task_id, states.FAILED, outcome, error=error)
        return states.FAILED

    def _finalize(self, task_id: str, state: str, outcome: str, **fields: Any) -> None:
        now = self.clock.time()
        self.store.update_task(task_id, state=state, outcome=outcome, finished_at=now, **fields)
        self.finalized.append(task_id)
        self.finish_times.append(self.clock.monotonic())


def _finite_or_none(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _RowView(dict):
    """A task row built in memory, readable like sqlite3.Row by task_dict_from_row."""

    def __missing__(self, key: str) -> Any:
        return None


def _iso(timestamp: float) -> str:
    from procq.timeutil import to_iso

    return to_iso(timestamp)
