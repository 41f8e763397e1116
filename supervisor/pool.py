"""Pool: the supervisor's records of its fork servers and worker processes.

The pool owns the mechanics: asking a fork server for a worker, holding each worker's
pidfd and stop pipe, signalling through pidfds, and killing a worker's process tree.
The supervisor's loop decides when to do each of these.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from procq.supervisor import channel, procfs, proctree
from procq.supervisor.attempt import Attempt
from procq.supervisor.worker import MARKER_VARIABLE, SOFT_SIGNAL

log = logging.getLogger(__name__)

# Worker states.
SPAWNING = "spawning"    # requested from the fork server, no pid yet
STARTING = "starting"    # forked, not yet ready
IDLE = "idle"
BUSY = "busy"
STOPPING = "stopping"    # running an attempt that was sent the soft signal
RETIRING = "retiring"    # asked to exit, or exiting on its own after a stop
DEAD = "dead"            # its pidfd reported the exit; waiting for the reap report


@dataclass
class ForkServerHandle:
    generation: int
    pid: int
    sock: Any
    process: subprocess.Popen | None = None
    app: dict | None = None
    state: str = "starting"      # starting, ready, retiring, gone
    started_mono: float = field(default_factory=time.monotonic)


@dataclass
class WorkerHandle:
    worker_id: str
    generation: int
    stop_write: int
    marker: str
    cgroup: str | None = None
    pid: int | None = None
    pidfd: int | None = None
    create_time: float | None = None
    state: str = SPAWNING
    spawned_mono: float = field(default_factory=time.monotonic)
    tasks_done: int = 0
    attempt: Attempt | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    reaped_at: float | None = None
    reaped: bool = False
    ever_ready: bool = False
    process: Any = None          # psutil.Process, created on demand for `procq worker ls`

    @property
    def alive(self) -> bool:
        return self.state not in (DEAD,) and not self.reaped


class Pool:
    def __init__(self, app_spec: str, endpoint: str, marker_prefix: str, max_payload: int,
                 cgroups=None):
        self.app_spec = app_spec
        self.endpoint = endpoint
        self.marker_prefix = marker_prefix
        self.max_payload = max_payload
        self.cgroups = cgroups
        self.fork_servers: dict[int, ForkServerHandle] = {}   # generation -> handle
        self.current_generation = 0
        self.workers: dict[str, WorkerHandle] = {}
        self.by_pidfd: dict[int, WorkerHandle] = {}
        self._next_worker = 0

    # -- fork servers -----------------------------------------------------------------

    def fork_initial_server(self) -> ForkServerHandle:
        """Fork the first fork server. Call before any ZeroMQ context or thread exists."""
        from procq.supervisor import forkserver

        parent_end, child_end = channel.socketpair()
        supervisor_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                parent_end.close()
                code = forkserver.serve(child_end, self.app_spec, supervisor_pid)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        child_end.close()
        return self._add_fork_server(pid, parent_end, None)

    def exec_server(self) -> ForkServerHandle:
        """Start a fork server in a fresh interpreter, for a reload or after a crash.

        The supervisor has ZeroMQ threads by now, so it must not fork and then import
        the application: exec gives the new fork server a clean single-threaded process.
        """
        parent_end, child_end = channel.socketpair()
        command = [sys.executable, "-m", "procq.supervisor.forkserver", "--fd", str(child_end.fileno()),
                   "--app", self.app_spec, "--supervisor-pid", str(os.getpid()),
                   "--log-level", logging.getLevelName(logging.getLogger("procq").getEffectiveLevel())]
        process = subprocess.Popen(command, pass_fds=[child_end.fileno()], close_fds=True)
        child_end.close()
        # The loop reads the channel until BlockingIOError, like the first fork server's.
        parent_end.setblocking(False)
        return self._add_fork_server(process.pid, parent_end, process)

    def _add_fork_server(self, pid: int, sock, process) -> ForkServerHandle:
        generation = max(self.fork_servers, default=0) + 1
        handle = ForkServerHandle(generation, pid, sock, process)
        self.fork_servers[generation] = handle
        log.info("fork server %d started (generation %d, application %s)", pid, generation, self.app_spec)
        return handle

    def server_for_fd(self, fd: int) -> ForkServerHandle | None:
        for handle in self.fork_servers.values():
            if handle.state != "gone" and handle.sock.fileno() == fd:
                return handle
        return None

    def active_server(self) -> ForkServerHandle | None:
        handle = self.fork_servers.get(self.current_generation)
        return handle if handle is not None and handle.state == "ready" else None

    def close_server(self, handle: ForkServerHandle, *, ask_exit: bool = True) -> None:
        if handle.state == "gone":
            return
        if ask_exit:
            try:
                channel.send(handle.sock, {"op": "exit"})
            except OSError:
                pass
        handle.state = "gone"
        handle.sock.close()
        log.info("fork server %d closed (generation %d)", handle.pid, handle.generation)

    def wait_servers(self, timeout_s: float) -> None:
        """Wait until every fork server has exited and is reaped, for at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        for handle in self.fork_servers.values():
            while time.monotonic() < deadline:
                if handle.process is not None:
                    if handle.process.poll() is not None:
                        break
                else:
                    try:
                        pid, _status = os.waitpid(handle.pid, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid:
                        break
                time.sleep(0.01)
            else:
                log.warning("fork server %d still running %.0f s after exit was requested; killing it",
                            handle.pid, timeout_s)
                try:
                    os.kill(handle.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def reap_servers(self) -> None:
        """Reap fork servers that exited (they are the supervisor's children)."""
        for handle in self.fork_servers.values():
            if handle.process is not None:
                handle.process.poll()
                continue
            try:
                os.waitpid(handle.pid, os.WNOHANG)
            except ChildProcessError:
                continue

    # -- workers ----------------------------------------------------------------------

    def spawn(self, server: ForkServerHandle) -> WorkerHandle:
        self._next_worker += 1
        worker_id = f"w{self._next_worker}"
        stop_read, stop_write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(stop_write, False)
        cgroup = None
        if self.cgroups is not None:
            try:
                cgroup = self.cgroups.create_worker_group(f"worker-{self._next_worker}")
            except OSError as exc:
                log.warning("cgroup for worker %s not created, using process groups only: %s", worker_id, exc)
        worker = WorkerHandle(worker_id, server.generation, stop_write,
                              f"{self.marker_prefix}/{worker_id}", cgroup)
        request = {"op": "spawn", "worker_id": worker_id, "endpoint": self.endpoint,
                   "cgroup": cgroup, "marker": worker.marker, "max_payload": self.max_payload}
        try:
            channel.send(server.sock, request, [stop_read])
        finally:
            os.close(stop_read)
        self.workers[worker_id] = worker
        return worker

    def attach(self, worker: WorkerHandle, pid: int, pidfd: int) -> None:
        worker.pid = pid
        worker.pidfd = pidfd
        worker.state = STARTING
        self.by_pidfd[pidfd] = worker
        try:
            import psutil

            worker.create_time = psutil.Process(pid).create_time()
        except Exception:  # noqa: BLE001 - the worker may already be gone; its pidfd says so.
            worker.create_time = None

    def live_workers(self) -> list[WorkerHandle]:
        return [worker for worker in self.workers.values() if worker.state != DEAD]

    def signal(self, worker: WorkerHandle, signum: int) -> bool:
        """Send a signal through the worker's pidfd; False if it has already exited."""
        if worker.pidfd is None or worker.state == DEAD:
            return False
        try:
            signal.pidfd_send_signal(worker.pidfd, signum)
            return True
        except ProcessLookupError:
            return False

    def send_stop(self, worker: WorkerHandle, attempt: Attempt, reason: str) -> bool:
        """Write the stop record for `attempt`, then send the soft signal."""
        record = f"{attempt.task_id} {attempt.run} {reason}\n".encode()
        try:
            os.write(worker.stop_write, record)
        except (BlockingIOError, BrokenPipeError) as exc:
            log.warning("task %s: stop record for worker %s not written: %s", attempt.task_id, worker.pid, exc)
        return self.signal(worker, SOFT_SIGNAL)

    def kill_tree(self, worker: WorkerHandle, attempt: Attempt | None) -> int:
        """SIGKILL the worker and every process attributed to it; return how many others died."""
        killed_others = 0
        if worker.cgroup is not None and self.cgroups is not None:
            try:
                members = set(self.cgroups.procs(worker.cgroup))
                killed_others += len(members - {worker.pid})
                self.cgroups.kill(worker.cgroup)
            except OSError as exc:
                log.warning("cgroup.kill of %s failed, falling back to process lists: %s", worker.cgroup, exc)
        self.signal(worker, signal.SIGKILL)
        if worker.cgroup is None or self.cgroups is None:
            killed_others += proctree.kill_until_gone(lambda: self._attributed(worker, attempt))
        return killed_others

    def kill_leftovers(self, worker: WorkerHandle, attempt: Attempt, *, alone: bool | None = None) -> int:
        """Kill what a handler that returned normally left running; return the count.

        Each leftover is killed through its own pidfd, never through the worker's
        process group, and the worker itself is spared. `alone` is the worker's own
        report that its cgroup held only itself after the handler returned.
        """
        if worker.cgroup is not None and self.cgroups is not None:
            if alone:
                return 0  # The usual case: the worker already read its cgroup.procs.
            procs_file = os.path.join(worker.cgroup, "cgroup.procs")
            if procfs.read_pids(procs_file) == [worker.pid]:
                return 0

            def collect_group():
                pids = set(self.cgroups.procs(worker.cgroup, recursive=True)) - {worker.pid}
                return {ref for ref in map(proctree.ref, pids) if ref is not None}

            return proctree.kill_until_gone(collect_group)

        # Fast path: no child of the worker, and no orphan adopted by the fork server.
        server = self.fork_servers.get(worker.generation)
        known = {w.pid for w in self.workers.values()}
        orphans = set(procfs.direct_children(server.pid)) - known if server else set()
        if not procfs.direct_children(worker.pid) and not orphans and not attempt.seen:
            return 0
        marker = f"{worker.marker}/{attempt.task_id}/{attempt.run}"

        def collect():
            found = proctree.descendants(worker.pid) | proctree.marked(MARKER_VARIABLE, marker)
            found |= {ref for ref in attempt.seen if proctree.ref(ref.pid) == ref}
            for orphan in orphans:
                orphan_ref = proctree.ref(orphan)
                if orphan_ref is not None and self._in_worker_group(orphan, worker):
                    found.add(orphan_ref)
                    found |= proctree.descendants(orphan)
            return {ref for ref in found if ref.pid != worker.pid}

        return proctree.kill_until_gone(collect)

    def _in_worker_group(self, pid: int, worker: WorkerHandle) -> bool:
        try:
            return os.getpgid(pid) == worker.pid
        except ProcessLookupError:
            return False

    def _attributed(self, worker: WorkerHandle, attempt: Attempt | None):
        """Return every live process attributed to a worker, for workers without a cgroup.

        NOTE: a descendant that forks without exec, leaves the process group and the worker's
        tree between two samples carries no marker in /proc/PID/environ and is missed here.
        """
        found = proctree.marked_prefix(MARKER_VARIABLE, worker.marker + "/")
        if worker.pid is not None:
            found |= proctree.descendants(worker.pid)
            members = proctree.group_members(worker.pid)
            if worker.create_time is not None:
                # A process group id outlives its leader; skip a group that reused the number.
                members = {ref for ref in members if ref.create_time >= worker.create_time - 0.02}
            found |= members
        if attempt is not None:
            found |= {ref for ref in attempt.seen if proctree.ref(ref.pid) == ref}
        return {ref for ref in found if ref.pid != worker.pid}

    def forget(self, worker: WorkerHandle) -> None:
        """Release a worker that is dead and reaped: close its fds and remove its cgroup."""
        self.workers.pop(worker.worker_id, None)
        if worker.pidfd is not None:
            self.by_pidfd.pop(worker.pidfd, None)
            os.close(worker.pidfd)
            worker.pidfd = None
        try:
            os.close(worker.stop_write)
        except OSError:
            pass
        if worker.cgroup is not None and self.cgroups is not None:
            try:
                self.cgroups.remove(worker.cgroup)
            except OSError as exc:
                log.warning("cgroup %s not removed: %s", worker.cgroup, exc)
