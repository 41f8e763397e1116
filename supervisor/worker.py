"""The worker: runs one task at a time in a process forked by the fork server.

A worker requests work by reporting `ready` or a result, and the supervisor sends it
at most one task at a time. A stop arrives as a record in the worker's stop pipe
followed by the soft signal (SIGUSR1). The record names the attempt and the reason,
so a late signal for an attempt that already ended is recognised and dropped.

The soft signal is blocked whenever the worker is not running a handler. A signal
that arrives while blocked stays pending, and the worker discards it with
sigtimedwait before it unblocks the signal for the next handler.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from procq.context import Context, TaskCancelled
from procq.protocol import clean_text
from procq.supervisor import procfs

log = logging.getLogger(__name__)

SOFT_SIGNAL = signal.SIGUSR1
# Environment variable set for each attempt, so descendants can be found after they escape.
MARKER_VARIABLE = "PROCQ_ATTEMPT"
MAX_ERROR_CHARS = 64 * 1024
MAX_PROGRESS_MESSAGE_CHARS = 1000


class _StrayTermination:
    """SIGTERM/SIGINT handler of a worker: log and go on.

    A Python-level handler, unlike SIG_IGN, is reset to the default by exec, so the
    processes a handler starts still die from SIGTERM and SIGINT as usual.
    """

    def __call__(self, signum, frame) -> None:
        os.write(2, f"procq worker {os.getpid()}: ignored signal {signum}; "
                    f"the supervisor stops workers\n".encode())


class Worker:
    def __init__(self, app, request: dict[str, Any], stop_fd: int):
        import zmq

        self.app = app
        self.worker_id = request["worker_id"]
        self.marker = request["marker"]
        self.max_payload = request["max_payload"]
        self.cgroup_procs = None
        if request.get("cgroup"):
            self.cgroup_procs = os.path.join(request["cgroup"], "cgroup.procs")
        self.stop_fd = stop_fd
        os.set_blocking(stop_fd, False)
        self.zmq_context = zmq.Context()
        self.sock = self.zmq_context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(request["endpoint"])
        self.context: Context | None = None
        self.current: tuple[str, int] | None = None
        self.in_handler = False
        self.stop_records: dict[tuple[str, int], str] = {}
        self.dispositions: dict[int, Any] = {}

    # -- setup ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {SOFT_SIGNAL})
        stray = _StrayTermination()
        signal.signal(signal.SIGTERM, stray)
        signal.signal(signal.SIGINT, stray)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(SOFT_SIGNAL, self._on_soft_signal)
        # Remember this state; every handler starts from it, whatever the previous one changed.
        for signum in signal.valid_signals():
            if signum in (signal.SIGKILL, signal.SIGSTOP):
                continue
            try:
                handler = signal.getsignal(signum)
            except (ValueError, OSError):
                continue
            if handler is not None:
                self.dispositions[signum] = handler

    def restore_signal_state(self) -> None:
        for signum, handler in self.dispositions.items():
            try:
                if signal.getsignal(signum) is not handler:
                    signal.signal(signum, handler)
            except (ValueError, OSError):
                pass

    def send(self, message: dict[str, Any]) -> None:
        self.sock.send(json.dumps(message, separators=(",", ":")).encode())

    # -- the soft signal --------------------------------------------------------------

    def _read_stop_records(self) -> None:
        try:
            data = os.read(self.stop_fd, 65536)
        except BlockingIOError:
            return
        for line in data.decode(errors="replace").splitlines():
            parts = line.split(" ")
            if len(parts) == 3 and parts[1].isdigit():
                self.stop_records.setdefault((parts[0], int(parts[1])), parts[2])

    def _on_soft_signal(self, signum, frame) -> None:
        self._read_stop_records()
        if self.current is None or self.context is None:
            return
        reason = self.stop_records.get(self.current)
        if reason is None:
            return  # A stop for an attempt that has already ended.
        first = self.context._request_stop(reason)
        if first and self.in_handler:
            raise TaskCancelled(reason)

    def _discard_stale_stops(self, key: tuple[str, int]) -> str | None:
        """Drop stop records and pending soft signals of ended attempts; return the stop reason of `key`.

        A stop for the attempt about to start can arrive before it starts (a cancel right
        after dispatch), so its record is kept and returned instead of dropped.
        """
        # Drain the signal before reading the pipe: the supervisor writes a record before it
        # signals, so a record that arrives after this read still has its signal pending.
        while signal.sigtimedwait({SOFT_SIGNAL}, 0) is not None:
            pass
        self._read_stop_records()
        reason = self.stop_records.get(key)
        self.stop_records.clear()
        if reason is not None:
            self.stop_records[key] = reason
        return reason

    # -- tasks ------------------------------------------------------------------------

    def run(self) -> int:
        import zmq

        self.install_signal_handlers()
        try:
            for hook in self.app.worker_start_hooks:
                hook()
        except BaseException:
            self.send({"t": "start_failed", "pid": os.getpid(), "error": traceback.format_exc()})
            self.sock.close()
            self.zmq_context.term()
            return 3
        self.send({"t": "ready", "pid": os.getpid()})

        while True:
            message = json.loads(self.sock.recv())
            if message.get("t") == "exit":
                break
            if message.get("t") != "task":
                continue
            retire = self.run_task(message)
            if retire:
                break
        self.sock.close()
        self.zmq_context.term()
        return 0

    def run_task(self, task: dict[str, Any]) -> bool:
        """Run one attempt, report it, and return True if this worker must be replaced."""
        handler = self.app.handlers.get(task["name"])
        key = (task["id"], task["run"])
        soft_in = task.get("soft_in_s")
        self.context = Context(
            task_id=task["id"], name=task["name"], queue=task["queue"], attempt=task["attempt"],
            deadline_at=task.get("soft_at"),
            deadline_monotonic=None if soft_in is None else time.monotonic() + soft_in,
            send_progress=lambda update: self._send_progress(key, update),
        )
        os.environ[MARKER_VARIABLE] = f"{self.marker}/{task['id']}/{task['run']}"
        early_stop = self._discard_stale_stops(key)
        self.restore_signal_state()
        self.current = key

        status, value, error = "error", None, None
        try:
            try:
                if handler is None:
                    raise LookupError(f"handler {task['name']!r} is not registered in this worker's application")
                if early_stop is not None:
                    # Stopped before it started: the handler does not run at all.
                    self.context._request_stop(early_stop)
                    raise TaskCancelled(early_stop)
                self.in_handler = True
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                value = handler.function(self.context, *task["args"], **task["kwargs"])
                status = "ok"
            except TaskCancelled as exc:
                status, error = "cancelled", _format_exception(exc)
            except BaseException as exc:
                status, error = "error", _format_exception(exc)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, {SOFT_SIGNAL})
                self.in_handler = False
        except TaskCancelled as exc:
            # The signal arrived between the handler's end and the block above.
            status, error = "cancelled", _format_exception(exc)

        self.context.flush_progress()
        stopped = self.context.cancelled
        self.current = None
        encoded = None
        if status == "ok":
            encoded, problem = _encode_result(value, self.max_payload)
            if problem:
                status, error = "result_invalid", problem
        retry_delay_s = None
        if status != "ok" and self.app.retry_delay is not None:
            try:
                retry_delay_s = float(self.app.retry_delay(task["attempt"], error or ""))
            except Exception as exc:  # noqa: BLE001 - user code; the supervisor falls back to asynq's formula.
                log.error("task %s: retry_delay raised %s: %s", task["id"], type(exc).__name__, exc)
        threads_left = threading.active_count() > 1
        retire = stopped or threads_left
        report = {"t": "result", "id": task["id"], "run": task["run"], "status": status,
                  "error": error, "retire": retire, "stopped": stopped}
        if self.cgroup_procs is not None:
            # Checked here, off the supervisor's thread: is this worker alone in its cgroup?
            report["alone"] = procfs.read_pids(self.cgroup_procs) == [os.getpid()]
        if retry_delay_s is not None:
            report["retry_delay_s"] = retry_delay_s
        frame = json.dumps(report, separators=(",", ":"))
        if encoded is not None:
            frame = frame[:-1] + ',"result":' + encoded + "}"
        self.sock.send(frame.encode())
        return retire

    def _send_progress(self, key: tuple[str, int], update: dict[str, Any]) -> None:
        text = update["message"]
        if text is not None:
            text = clean_text(str(text), MAX_PROGRESS_MESSAGE_CHARS)
        message = {"t": "progress", "id": key[0], "run": key[1], "done": update["done"],
                   "total": update["total"], "message": text}
        try:
            self.sock.send(json.dumps(message, separators=(",", ":"), allow_nan=False).encode())
        except (TypeError, ValueError) as exc:
            log.warning("task %s: progress update dropped: done and total must be finite numbers "
                        "or None (%s)", key[0], exc)


def _format_exception(exc: BaseException) -> str:
    """Format an exception as text; exception objects never leave the worker."""
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException as problem:  # A broken __str__ or __repr__ must not lose the report.
        text = f"{type(exc).__module__}.{type(exc).__qualname__} (its message could not be formatted: {problem!r})"
    return clean_text(text, MAX_ERROR_CHARS)


def _encode_result(value: Any, max_payload: int) -> tuple[str | None, str | None]:
    try:
        encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return None, f"result is not JSON-serializable: {type(value).__name__}: {exc}"
    if len(encoded) > max_payload:
        return None, (f"result is {len(encoded)} bytes as JSON, over the supervisor's "
                      f"--max-payload of {max_payload} bytes; store large results elsewhere "
                      "and return a reference")
    return encoded, None


class _TaskLogFilter(logging.Filter):
    """Add the running task's id to log records emitted while a handler runs."""

    def __init__(self, worker: Worker):
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        current = self.worker.current
        record.task_id = current[0] if current else "-"
        if current and not getattr(record, "_procq_tagged", False):
            record.msg = f"[task {current[0]}] {record.msg}"
            record._procq_tagged = True
        return True


def run(app, request: dict[str, Any], stop_fd: int) -> int:
    """Run a worker in this freshly forked process and return its exit code."""
    from procq.supervisor import prctl

    prctl.set_process_name("procq-worker")
    # The handler's stdout goes to the supervisor's stderr, like its stderr.
    # NOTE: the output is passed through as written, with no task id prefix and no rate limit.
    os.dup2(2, 1)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    worker = Worker(app, request, stop_fd)
    # Handlers' own loggers propagate to the root logger: give it procq's output if it has none.
    root = logging.getLogger()
    if not root.handlers:
        for handler in logging.getLogger("procq").handlers:
            root.addHandler(handler)
        root.setLevel(logging.getLogger("procq").level or logging.INFO)
    for handler in root.handlers:
        handler.addFilter(_TaskLogFilter(worker))
    return worker.run()
