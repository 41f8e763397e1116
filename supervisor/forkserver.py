"""The fork server: imports the application once and forks every worker from that warm state.

It runs in its own process, started by the supervisor before any ZeroMQ context or
thread exists (or exec'd afresh on reload), and never starts a thread itself, so every
fork happens from a single-threaded process. It is a child subreaper: descendants that
double-fork or call setsid are re-parented here instead of to init, so the supervisor
can still find and kill them.

Messages on the channel (see channel.py):
  supervisor -> fork server: {"op": "spawn", ...} with the worker's stop-pipe read end,
                             {"op": "exit"}
  fork server -> supervisor: {"op": "ready", "app": ...}, {"op": "import_failed", ...},
                             {"op": "spawned", ...} with a pidfd, {"op": "spawn_failed", ...},
                             {"op": "exited", "pid", "exit_code", "exit_signal", "at"}
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import signal
import sys
import time
import traceback

from procq.supervisor import channel, prctl

log = logging.getLogger(__name__)

# The nice value workers run at: the supervisor's own before it raised its priority.
WORKER_NICE_VARIABLE = "PROCQ_WORKER_NICE"


def load_app(spec: str):
    """Import `module:attribute` and return the procq.App it names."""
    from procq.app import App

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"invalid --app {spec!r}; expected MODULE:ATTRIBUTE, e.g. myapp.tasks:app")
    if os.getcwd() not in sys.path:
        # Like `python -m`, look for the application in the working directory first.
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"invalid --app {spec!r}: module {module_name} has no attribute {attribute!r}") from None
    if not isinstance(app, App):
        raise ValueError(f"invalid --app {spec!r}: {attribute} is a {type(app).__name__}, not a procq.App")
    return app


class ForkServer:
    """The fork server's state and loop. Everything here runs in the fork server process."""

    def __init__(self, sock, app_spec: str):
        self.sock = sock
        self.app_spec = app_spec
        self.app = None
        self.workers: dict[int, str] = {}  # pid -> worker id
        self.worker_nice = int(os.environ.get(WORKER_NICE_VARIABLE, os.getpriority(os.PRIO_PROCESS, 0)))
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def serve(self) -> int:
        prctl.set_process_name("procq-forksrv")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # Ctrl-C and a group-wide SIGTERM are the supervisor's to handle.
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)

        try:
            self.app = load_app(self.app_spec)
        except BaseException:
            channel.send(self.sock, {"op": "import_failed", "error": traceback.format_exc()})
            return 1
        channel.send(self.sock, {"op": "ready", "pid": os.getpid(), "app": self.app.describe()})
        log.debug("fork server %d ready with application %s", os.getpid(), self.app_spec)

        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_read, select.POLLIN)
        while True:
            for fd, _event in poller.poll():
                if fd == self.wake_read:
                    self._drain_wakeups()
                    self._reap()
                    continue
                try:
                    message, fds = channel.receive(self.sock)
                except OSError:
                    message, fds = None, []  # The supervisor went away: same as a closed channel.
                if message is None or message.get("op") == "exit":
                    self._kill_children()
                    return 0
                if message.get("op") == "spawn":
                    self._spawn(message, fds)
                elif message.get("op") == "retry_delay":
                    self._retry_delay(message)
                else:
                    for extra in fds:
                        os.close(extra)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass

    def _spawn(self, request: dict, fds: list[int]) -> None:
        stop_fd = fds[0] if fds else -1
        worker_id = request["worker_id"]
        try:
            pid = os.fork()
        except OSError as exc:
            channel.send(self.sock, {"op": "spawn_failed", "worker_id": worker_id, "error": str(exc)})
            if stop_fd >= 0:
                os.close(stop_fd)
            return

        if pid == 0:
            self._become_worker(request, stop_fd)  # Never returns.

        # pidfd_open works on a child that already exited: it stays a zombie until _reap.
        pidfd = os.pidfd_open(pid)
        self.workers[pid] = worker_id
        channel.send(self.sock, {"op": "spawned", "worker_id": worker_id, "pid": pid}, [pidfd])
        os.close(pidfd)
        if stop_fd >= 0:
            os.close(stop_fd)

    def _retry_delay(self, request: dict) -> None:
        """Compute the application's retry_delay for an attempt that no worker could report."""
        try:
            seconds = float(self.app.retry_delay(request["attempt"], request.get("error") or ""))
            error = None
        except Exception as exc:  # noqa: BLE001 - user code; the supervisor falls back to asynq's formula.
            seconds, error = None, f"{type(exc).__name__}: {exc}"
        channel.send(self.sock, {"op": "retry_delay", "task_id": request["task_id"], "run": request["run"],
                                 "seconds": seconds, "error": error})

    def _become_worker(self, request: dict, stop_fd: int) -> None:
        code = 70
        try:
            parent = os.getppid()
            os.setpgid(0, 0)
            if os.getpriority(os.PRIO_PROCESS, 0) != self.worker_nice:
                os.setpriority(os.PRIO_PROCESS, 0, self.worker_nice)
            if request.get("cgroup"):
                # Join first, so that every process this worker ever starts is inside the group.
                with open(os.path.join(request["cgroup"], "cgroup.procs"), "w") as procs:
                    procs.write(str(os.getpid()))
            prctl.die_with_parent(parent)
            signal.set_wakeup_fd(-1)
            self.sock.close()
            os.close(self.wake_read)
            os.close(self.wake_write)

            from procq.supervisor import worker

            code = worker.run(self.app, request, stop_fd)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker_id = self.workers.pop(pid, None)
            if worker_id is None:
                continue  # An adopted orphan (a handler's double-forked child) ended.
            report = {"op": "exited", "pid": pid, "worker_id": worker_id, "at": time.time(),
                      "exit_code": None, "exit_signal": None}
            if os.WIFSIGNALED(status):
                report["exit_signal"] = os.WTERMSIG(status)
            else:
                report["exit_code"] = os.waitstatus_to_exitcode(status)
            channel.send(self.sock, report)

    def _kill_children(self) -> None:
        """Kill and reap every child left: workers and adopted orphans."""
        from procq.supervisor import procfs

        for _ in range(20):
            children = procfs.direct_children(os.getpid())
            if not children:
                break
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
            self._reap()
        self._reap()


def serve(sock, app_spec: str, supervisor_pid: int) -> int:
    """Run a fork server on `sock` until the supervisor sends exit or closes the channel."""
    prctl.die_with_parent(supervisor_pid)
    prctl.become_subreaper()
    server = ForkServer(sock, app_spec)
    # Like the supervisor, reap and report ahead of busy workers where permitted; each
    # worker goes back to the supervisor's original priority right after the fork.
    try:
        os.setpriority(os.PRIO_PROCESS, 0, server.worker_nice - 5)
    except OSError:
        pass
    return server.serve()


def main(argv: list[str] | None = None) -> int:
    """Entry point of a fork server exec'd by the supervisor (on reload or after a crash)."""
    import socket

    parser = argparse.ArgumentParser(prog="procq-forkserver")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--supervisor-pid", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    from procq.supervisor.logsetup import configure_logging

    configure_logging(args.log_level)
    sock = socket.socket(fileno=args.fd)
    return serve(sock, args.app, args.supervisor_pid)


if __name__ == "__main__":
    sys.exit(main())
