"""Start and stop one supervisor: the start order matters, so it is spelled out here.

1. Fork the fork server first, while this process has no thread, ZeroMQ context or
   database connection that a fork could copy in a broken state.
2. Lock the database and the socket path. Forks do not inherit lockf locks, so the
   fork server has none. A second supervisor on either path exits at once, because
   libzmq would otherwise unlink the socket file and bind it itself.
3. Open and recover the store, wait until the application is imported, bind the
   sockets, kill processes left by an earlier run, and run the loop.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

from procq import addresses
from procq.errors import ProcqError
from procq.store import SQLiteStore, StoreError
from procq.supervisor import channel
from procq.supervisor.clock import Clock
from procq.supervisor.config import SupervisorConfig

log = logging.getLogger(__name__)


class StartError(Exception):
    """The supervisor cannot start; the message gives the reason and the fix."""


def lock_file(path: str, resource: str):
    """Take an exclusive lockf lock on `path`, or raise StartError naming the locked resource."""
    handle = open(path, "a+")  # OSError here is reported by the caller
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StartError(f"another supervisor is already using {resource} (lock {path} is held); "
                         "stop it first or choose another path") from None
    return handle


def prepare_socket_dir(path: str) -> None:
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        # Only the owner and the group may enter, so the socket's own mode is not the only guard.
        os.makedirs(directory, mode=0o750, exist_ok=True)


def wait_for_fork_server(handle, timeout_s: float) -> dict:
    """Block until the first fork server has imported the application."""
    import select

    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StartError(f"the application {handle.pid} did not finish importing within {timeout_s:g} s")
        ready, _, _ = select.select([handle.sock], [], [], remaining)
        if not ready:
            continue
        message, fds = channel.receive(handle.sock)
        for fd in fds:
            os.close(fd)
        if message is None:
            raise StartError("the fork server exited before it imported the application")
        if message.get("op") == "import_failed":
            raise StartError(f"cannot import the application:\n{message.get('error', '').rstrip()}")
        if message.get("op") == "ready":
            return message


def kill_leftovers(store_key: str, cgroups, current_run: str) -> None:
    """Kill processes that an earlier run on this database left behind.

    NOTE: until this runs, such processes (handler children outside the PDEATHSIG chain)
    keep running after a crash of the supervisor.
    """
    from procq.supervisor import proctree
    from procq.supervisor.worker import MARKER_VARIABLE

    if cgroups is not None:
        from procq.supervisor import cgroups as cgroups_module

        try:
            removed = cgroups_module.remove_stale_groups(os.path.dirname(cgroups.path), current_name=os.path.basename(cgroups.path))
            for path in removed:
                log.info("removed cgroup %s left by an earlier run", path)
        except OSError as exc:
            log.warning("could not remove cgroups left by an earlier run: %s", exc)
    left = {ref for ref in proctree.marked_prefix(MARKER_VARIABLE, store_key + "/")
            if not _marker_of(ref.pid, MARKER_VARIABLE).startswith(f"{store_key}/{current_run}/")}
    if left:
        killed = proctree.kill(left)
        log.warning("killed %d processes left running by an earlier supervisor on this database", killed)


def _marker_of(pid: int, variable: str) -> str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            for item in file.read().split(b"\0"):
                if item.startswith(variable.encode() + b"="):
                    return item.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        pass
    return ""


def run(config: SupervisorConfig) -> int:
    """Run a supervisor until it stops; return the exit code."""
    from procq.supervisor.pool import Pool

    socket_path = addresses.socket_path(config.socket)
    config.socket = socket_path
    # Handlers inherit this, so procq.Client() in a handler reaches its own supervisor.
    os.environ[addresses.SOCKET_ENV] = socket_path
    db_path = os.path.abspath(config.db)
    store_key = hashlib.sha1(db_path.encode()).hexdigest()[:12]
    run_id = f"{os.getpid()}.{int(time.time())}"
    private_dir = tempfile.mkdtemp(prefix="procq-")
    workers_endpoint = f"ipc://{private_dir}/workers.sock"

    from procq.supervisor.forkserver import WORKER_NICE_VARIABLE

    os.environ.setdefault(WORKER_NICE_VARIABLE, str(os.getpriority(os.PRIO_PROCESS, 0)))
    cgroups = _open_cgroups(config)
    pool = Pool(config.app, workers_endpoint, f"{store_key}/{run_id}", config.max_payload, cgroups)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    locks = []
    try:
        first_server = pool.fork_initial_server()
        _raise_priority()
        try:
            prepare_socket_dir(socket_path)
            os.makedirs(os.path.dirname(db_path), mode=0o750, exist_ok=True)
            locks.append(lock_file(db_path + ".lock", f"database {db_path}"))
            locks.append(lock_file(socket_path + ".lock", f"socket {socket_path}"))
        except OSError as exc:
            raise StartError(f"cannot prepare {exc.filename or 'the state directories'}: {exc.strerror}; "
                             "choose a writable --db and --socket, or fix the directory's permissions") from None
        store = SQLiteStore(db_path, config.sync)

        ready = wait_for_fork_server(first_server, config.worker_start_timeout_s)
        first_server.app = ready["app"]
        first_server.state = "ready"
        pool.current_generation = first_server.generation
        first_server.sock.setblocking(False)
        kill_leftovers(store_key, cgroups, run_id)
        return _serve(config, store, pool, cgroups, wake_read, wake_write, workers_endpoint, socket_path, ready)
    except (StartError, StoreError, ProcqError) as exc:
        log.error("%s", exc)
        for handle in pool.fork_servers.values():
            _stop_fork_server(handle)
        return 1
    finally:
        for lock in locks:
            lock.close()
        if cgroups is not None:
            cgroups.close()
        shutil.rmtree(private_dir, ignore_errors=True)


def _serve(config, store, pool, cgroups, wake_read, wake_write, workers_endpoint, socket_path, ready) -> int:
    from procq.supervisor.loop import Supervisor
    from procq.supervisor.sdnotify import Notifier

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, _record_signal)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)

    clock = Clock()
    supervisor = Supervisor(config, store, pool, clock, Notifier.from_environ(), wake_fd=wake_read,
                            workers_endpoint=workers_endpoint, control_endpoint="ipc://" + socket_path)
    os.chmod(socket_path, 0o660)
    supervisor.tasks.set_application(ready["app"])
    recovered = supervisor.tasks.recover()
    if supervisor.tasks.custom_retry_delay:
        # As for a worker lost while the supervisor runs, the application's retry_delay decides.
        for task_id, run, counted, error in supervisor.tasks.recovered_retries:
            supervisor.request_retry_delay(task_id, run, counted, error)
    waiting = supervisor.tasks.load_waiting()
    store.commit()
    log.info("store %s open: %d interrupted attempts recovered, %d tasks waiting", store.path, recovered, waiting)
    try:
        return supervisor.run()
    finally:
        supervisor.close()
        store.close()
        signal.set_wakeup_fd(-1)
        try:
            os.unlink(socket_path)
        except OSError:
            pass


def _raise_priority() -> None:
    """Lower the supervisor's nice value by 5 where permitted (root, or systemd's Nice=).

    Timers fire late when CPU-bound workers hold every core; a higher priority lets the
    supervisor preempt them. The fork server was forked before this, so workers keep the
    original priority.
    """
    try:
        os.nice(-5)
    except OSError as exc:
        log.debug("supervisor priority unchanged (%s); timers may fire late on a saturated CPU", exc)
        return
    log.info("supervisor priority raised to nice %d so enforcement keeps up with busy workers", os.nice(0))


def _record_signal(signum, frame) -> None:
    """Do nothing: the wake-up fd carries the signal number to the loop, which acts on it."""


def _open_cgroups(config: SupervisorConfig):
    try:
        from procq.supervisor import cgroups
    except ImportError:
        return None
    enabled = config.use_cgroups and not cgroups.cgroups_disabled_by_env(os.environ)
    try:
        return cgroups.CgroupTree.open(f"procq-{os.getpid()}", enabled=enabled)
    except OSError as exc:
        log.warning("cgroups not used: %s", exc)
        return None


def _stop_fork_server(handle) -> None:
    try:
        channel.send(handle.sock, {"op": "exit"})
    except OSError:
        pass
    try:
        os.kill(handle.pid, signal.SIGKILL)
        os.waitpid(handle.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
