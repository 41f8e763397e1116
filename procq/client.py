"""Client: enqueue, inspect, wait for and cancel tasks through a supervisor's control socket.

Every call is one request and one reply on a ZeroMQ DEALER socket, bounded by
`connect_timeout`. Long waits are a series of bounded requests that the supervisor
holds until the task is final or the hold ends, so no call blocks without limit and
nothing polls in a busy loop.
"""

from __future__ import annotations

import grp
import itertools
import os
import time
from typing import Any, Iterable

from procq import addresses, options, protocol
from procq.errors import (InvalidTask, PermissionDenied, ProcqError, SupervisorUnavailable,
                          WaitTimeout)
from procq.taskinfo import CancelResult, TaskInfo, stopped_by

# Maximum time the supervisor keeps one wait request open, in seconds. Longer waits repeat it.
MAX_HOLD_S = 10.0


class Client:
    """A connection to one supervisor. Not thread-safe: use one Client per thread."""

    def __init__(self, address: str | None = None, *, connect_timeout: float = 5.0):
        if connect_timeout is None or connect_timeout <= 0:
            raise ProcqError(f"invalid connect_timeout: {connect_timeout!r}; expected seconds > 0")
        self.address = addresses.socket_path(address or addresses.default_client_address())
        self.connect_timeout = float(connect_timeout)
        self._endpoint = "ipc://" + self.address
        self._context = None
        self._socket = None
        self._pid = os.getpid()
        self._request_ids = itertools.count(1)

    # -- connection -------------------------------------------------------------------

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _connect(self):
        import zmq  # Imported here so that `import procq` stays fast for the CLI's --help.

        if self._pid != os.getpid():
            # A Client copied into a forked child must not use the parent's ZeroMQ context.
            self._socket = None
            self._context = None
            self._pid = os.getpid()
        if self._socket is None:
            self._check_exists()
            self._check_permission()
            if self._context is None:
                self._context = zmq.Context()
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._endpoint)
            self._socket = sock
        return self._socket

    def _check_exists(self) -> None:
        # A supervisor that is starting creates its socket within moments, so wait for it
        # up to the connect timeout before saying that nothing is there.
        deadline = time.monotonic() + self.connect_timeout
        while not os.path.exists(self.address):
            if time.monotonic() >= deadline:
                raise SupervisorUnavailable(
                    f"no procq supervisor socket at {self.address} after {self.connect_timeout:g} s; "
                    "start one with `procq supervisor run`, or point the client elsewhere with "
                    "--socket or PROCQ_SOCKET", self.address)
            time.sleep(0.05)

    def _check_permission(self) -> None:
        # ZeroMQ retries a refused ipc connect silently, so check access here to say why.
        path = self.address
        if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
            try:
                group = grp.getgrgid(os.stat(path).st_gid).gr_name
            except (KeyError, OSError):
                group = str(os.stat(path).st_gid)
            raise PermissionDenied(
                f"permission denied on {path}; add yourself to group {group}", path
            )
        directory = os.path.dirname(path)
        if os.path.isdir(directory) and not os.access(directory, os.X_OK):
            raise PermissionDenied(
                f"permission denied on {directory}; add yourself to the group that owns it", path
            )

    def _reset(self) -> None:
        # Drop a socket whose request timed out, so a late reply is never read as the next call's.
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _call(self, op: str, reply_timeout: float | None = None, **params: Any) -> Any:
        import zmq

        sock = self._connect()
        request_id = next(self._request_ids)
        message = {"id": request_id, "op": op, **params}  # id first: see the size check in control.py
        sock.send(protocol.encode(message))

        timeout_s = self.connect_timeout if reply_timeout is None else reply_timeout
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not sock.poll(remaining_ms, zmq.POLLIN):
                self._reset()
                raise SupervisorUnavailable(
                    f"no reply from a procq supervisor on {self.address} within {timeout_s:g} s; "
                    "is it running? Point the client elsewhere with --socket or PROCQ_SOCKET",
                    self.address,
                )
            reply = protocol.decode(sock.recv())
            if reply.get("id") != request_id and not (reply.get("id") is None and not reply.get("ok")):
                continue  # A late reply to an earlier request that timed out.
            if reply.get("ok"):
                return reply.get("data")
            protocol.raise_error(reply.get("error") or {})

    # -- tasks ------------------------------------------------------------------------

    def enqueue(self, name: str, args: Iterable = (), kwargs: dict | None = None, *,
                queue: str | None = None, timeout=None, deadline=None, grace=None,
                max_retry: int | None = None, max_memory: int | None = None,
                task_id: str | None = None, process_in=None, process_at=None,
                retention=None) -> TaskInfo:
        """Store a task and return its record once the supervisor has committed it.

        `queue` None means the handler's own queue, else "default". Durations (`timeout`,
        `grace`, `process_in`, `retention`) are seconds or timedeltas; `deadline` and
        `process_at` are aware datetimes or POSIX timestamps; `max_memory` is in bytes.
        Options left None inherit the handler's, then the App's defaults.
        """
        request = options.client_request(
            name, args, kwargs, queue=queue,
            timeout=timeout, deadline=deadline, grace=grace, max_retry=max_retry,
            max_memory=max_memory, task_id=task_id, process_in=process_in,
            process_at=process_at, retention=retention,
        )
        data = self._call("enqueue", tasks=[request])
        return TaskInfo.from_dict(data[0])

    def enqueue_many(self, items: Iterable[dict]) -> list[TaskInfo]:
        """Store several tasks in one request and one commit: all of them, or none."""
        requests = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or "name" not in item:
                raise InvalidTask(f"invalid item {index}: expected a dict with at least 'name'")
            try:
                requests.append(options.client_request(**item))
            except InvalidTask as exc:
                raise InvalidTask(f"item {index}: {exc}") from None
            except TypeError as exc:
                raise InvalidTask(f"item {index}: {exc}") from None
        if not requests:
            return []
        data = self._call("enqueue", tasks=requests)
        return [TaskInfo.from_dict(item) for item in data]

    def get(self, task_id: str) -> TaskInfo:
        return TaskInfo.from_dict(self._call("get", task_id=task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        """Wait until the task is final and return it, whatever its outcome.

        Raises WaitTimeout if `timeout` seconds pass first. A supervisor restart during
        the wait is tolerated while the timeout allows (without a timeout: for up to
        `connect_timeout` seconds of unavailability).
        """
        started = time.monotonic()
        unavailable_since: float | None = None
        while True:
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"task {task_id} is not final after {timeout:g} s")
            hold = MAX_HOLD_S if remaining is None else min(MAX_HOLD_S, remaining)
            try:
                data = self._call("wait", reply_timeout=hold + self.connect_timeout,
                                  task_id=task_id, hold_s=hold)
            except SupervisorUnavailable:
                now = time.monotonic()
                unavailable_since = now if unavailable_since is None else unavailable_since
                if timeout is None and now - unavailable_since >= self.connect_timeout:
                    raise
                time.sleep(0.1)
                continue
            unavailable_since = None
            if data is not None:
                return TaskInfo.from_dict(data)

    def list(self, queue: str | None = None, state: str | list[str] | None = None,
             name: str | None = None, limit: int = 100, offset: int = 0) -> list[TaskInfo]:
        """Return tasks, newest enqueued first, filtered by queue, state(s) and name."""
        if isinstance(state, str):
            states = [state]
        elif state:
            states = list(state)
        else:
            states = None
        data = self._call("list", queue=queue, states=states, name=name, limit=limit, offset=offset)
        return [TaskInfo.from_dict(item) for item in data]

    def cancel(self, task_id: str, *, wait: bool = True) -> CancelResult:
        """Cancel a task; with wait=True, return once it is final."""
        data = self._call("cancel", task_id=task_id)
        result = CancelResult(TaskInfo.from_dict(data["task"]), data["previous_state"],
                              data["already_final"], data["stopped_by"])
        if wait and not result.task.is_final:
            task = self.wait(task_id)
            result = CancelResult(task, result.previous_state, False, stopped_by(task))
        return result

    def delete(self, task_ids: Iterable[str]) -> list[str]:
        """Delete final tasks and return their ids; raises TaskNotFinal or TaskNotFound."""
        return self._call("delete", task_ids=list(task_ids))

    def retry(self, task_id: str) -> TaskInfo:
        """Enqueue a copy of a task with a new id and `retry_of` set to the old id."""
        return TaskInfo.from_dict(self._call("retry", task_id=task_id))

    # -- queues, workers, supervisor --------------------------------------------------

    def queues(self) -> list[dict]:
        return self._call("queues")

    def pause_queue(self, name: str) -> None:
        self._call("pause_queue", queue=name)

    def resume_queue(self, name: str) -> None:
        self._call("resume_queue", queue=name)

    def workers(self) -> list[dict]:
        return self._call("workers")

    def stats(self) -> dict:
        return self._call("stats")

    def status(self) -> dict:
        return self._call("status")

    def ping(self) -> dict:
        return self._call("ping")

    def drain(self) -> None:
        """Stop dispatching new tasks on this supervisor; running tasks go on."""
        self._call("drain")

    def resume(self) -> None:
        self._call("resume")

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no task is active; return False if `timeout` seconds pass first."""
        started = time.monotonic()
        while True:
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                return False
            hold = MAX_HOLD_S if remaining is None else min(MAX_HOLD_S, remaining)
            idle = self._call("wait_idle", reply_timeout=hold + self.connect_timeout, hold_s=hold)
            if idle:
                return True
