"""Supervisor: the event loop that owns the store, the pool, the timers and the sockets.

One thread runs everything. Each turn of the loop waits for the next event or timer:
a control request, a worker message, a fork-server report, a worker's pidfd or a
signal. It handles what is ready in a fixed order and commits the store once. Only
then does it send what the turn produced, tasks to workers and replies to clients, so
a task is recorded active before its handler starts and an enqueue is acknowledged
only once it is durable.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import signal
import time
from typing import Any

import zmq

from procq import protocol, states
from procq.supervisor import control, pool as pool_module
from procq.supervisor.dispatcher import Dispatcher
from procq.supervisor.enforcer import KILL, SOFT, Enforcer
from procq.supervisor.pool import (BUSY, DEAD, IDLE, RETIRING, STARTING, STOPPING, Pool,
                                   WorkerHandle)
from procq.supervisor.tasks import TaskBook
from procq.supervisor.waiters import Waiter, Waiters
from procq.supervisor.worker import MARKER_VARIABLE

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_TURN = 2000
SAMPLE_INTERVAL_S = 0.1
MAX_BACKOFF_S = 30.0


class Supervisor:
    def __init__(self, config, store, pool: Pool, clock, notifier, *, wake_fd: int,
                 workers_endpoint: str, control_endpoint: str):
        self.config = config
        self.store = store
        self.pool = pool
        self.clock = clock
        self.notifier = notifier
        self.wake_fd = wake_fd
        self.started_mono = clock.monotonic()
        self.started_at = clock.time()

        self.dispatcher = Dispatcher(config.queues, config.strict_priority)
        self.dispatcher.paused = store.paused_queues()
        self.tasks = TaskBook(store, self.dispatcher, clock, max_payload=config.max_payload,
                              max_grace_s=config.max_grace_s)
        self.enforcer = Enforcer()
        self.draining = store.setting("draining") == "1"

        self.zmq_context = zmq.Context()
        self.control_socket = self.zmq_context.socket(zmq.ROUTER)
        self.control_socket.setsockopt(zmq.LINGER, 0)
        self.control_socket.bind(control_endpoint)
        self.workers_socket = self.zmq_context.socket(zmq.ROUTER)
        self.workers_socket.setsockopt(zmq.LINGER, 0)
        self.workers_socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.workers_socket.bind(workers_endpoint)

        self.outbox: list[tuple[Any, list[bytes]]] = []
        self.waiters = Waiters()
        self.idle_workers: collections.deque[str] = collections.deque()
        self.signals: list[int] = []
        self.poller_dirty = True
        self.poller = zmq.Poller()
        self.turn_mono = clock.monotonic()

        self.ready_sent = False
        self.shutdown_started: float | None = None
        self.shutdown_stopping = False
        self.finished = False
        self.exit_code = 0
        self.reloading = False
        self.consecutive_failures = 0
        self.worker_failures = 0
        self.last_worker_error: str | None = None
        self.next_spawn_mono = 0.0
        self.next_sample_mono = 0.0
        self.next_purge_mono = clock.monotonic() + config.purge_interval_s
        self.next_extend_mono = 0.0
        self.next_db_check_mono = 0.0

    # == the loop ======================================================================

    def run(self) -> int:
        """Serve until a graceful stop completes; return the process exit code."""
        log.info("supervisor %d serving on %s with %d workers", os.getpid(), self.config.socket,
                 self.config.workers)
        self.keep_pool_full()
        while not self.finished:
            ready = self.wait_for_events()
            self.turn_mono = self.clock.monotonic()
            self.enforce_time_limits()      # first, so a busy turn never delays a due signal
            self.read_signals(ready)
            self.read_fork_servers(ready)
            self.read_worker_exits(ready)
            self.read_workers()
            self.read_control()
            self.enforce_time_limits()
            self.sample_workers()
            self.release_due_tasks()
            self.dispatch()
            self.keep_pool_full()
            self.advance_shutdown()
            self.commit_and_send()
            self.notify_systemd()
            self.check_database_file()
            self.purge_old_tasks()
        return self.exit_code

    def wait_for_events(self) -> set:
        if self.poller_dirty:
            self.poller = zmq.Poller()
            self.poller.register(self.control_socket, zmq.POLLIN)
            self.poller.register(self.workers_socket, zmq.POLLIN)
            self.poller.register(self.wake_fd, zmq.POLLIN)
            for handle in self.pool.fork_servers.values():
                if handle.state != "gone":
                    self.poller.register(handle.sock.fileno(), zmq.POLLIN)
            for pidfd in self.pool.by_pidfd:
                self.poller.register(pidfd, zmq.POLLIN)
            self.poller_dirty = False
        timeout_ms = self.poll_timeout_ms()
        return {item for item, _event in self.poller.poll(timeout_ms)}

    def poll_timeout_ms(self) -> int:
        now = self.clock.monotonic()
        candidates = [now + 1.0]
        for when in (self.enforcer.next_time(), self.dispatcher.next_timer(),
                     self.notifier.status_due_at(), self.notifier.watchdog_due_at()):
            if when is not None:
                candidates.append(when)
        if any(worker.attempt is not None for worker in self.pool.workers.values()):
            candidates.append(self.next_sample_mono)
        expiry = self.waiters.next_expiry()
        if expiry is not None:
            candidates.append(expiry)
        if self.consecutive_failures or self.next_spawn_mono > now:
            candidates.append(self.next_spawn_mono)
        if not self.ready_sent:
            candidates.append(self.started_mono + self.config.worker_start_timeout_s)
        for worker in self.pool.workers.values():
            if worker.state in (pool_module.SPAWNING, STARTING):
                candidates.append(worker.spawned_mono + self.config.worker_start_timeout_s)
        if self.outbox:
            candidates.append(now)
        # Round up to whole milliseconds: waking early costs one extra turn, waking late
        # makes a soft signal or SIGKILL late.
        return max(0, math.ceil((min(candidates) - now) * 1000))

    # == signals =======================================================================

    def read_signals(self, ready: set) -> None:
        if self.wake_fd not in ready:
            return
        try:
            data = os.read(self.wake_fd, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.begin_shutdown(signum)
            elif signum == signal.SIGHUP:
                self.begin_reload()
            elif signum == signal.SIGCHLD:
                self.pool.reap_servers()

    def begin_shutdown(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.shutdown_started is None:
            self.shutdown_started = self.clock.monotonic()
            log.info("received %s: graceful stop begins; %d active tasks get up to %.1f s",
                     name, len(self.tasks.active), self.config.shutdown_timeout_s)
            self.notifier.stopping()
        elif not self.shutdown_stopping:
            log.info("received %s again: stopping active tasks now", name)
            self.stop_all_for_shutdown()

    def begin_reload(self) -> None:
        if self.shutdown_started is not None:
            return
        log.info("received SIGHUP: starting a new fork server to reload %s", self.config.app)
        self.notifier.reloading()
        self.reloading = True
        self.pool.exec_server()
        self.poller_dirty = True

    # == fork servers ==================================================================

    def read_fork_servers(self, ready: set) -> None:
        from procq.supervisor import channel

        for handle in list(self.pool.fork_servers.values()):
            if handle.state == "gone" or handle.sock.fileno() not in ready:
                continue
            while True:
                try:
                    message, fds = channel.receive(handle.sock)
                except BlockingIOError:
                    break
                except OSError as exc:
                    log.error("fork server %d channel failed: %s", handle.pid, exc)
                    message, fds = None, []
                if message is None:
                    self.on_fork_server_lost(handle)
                    break
                self.on_fork_server_message(handle, message, fds)
                if handle.sock.fileno() < 0:
                    break

    def on_fork_server_message(self, handle, message: dict, fds: list[int]) -> None:
        op = message.get("op")
        if op == "ready":
            self.on_fork_server_ready(handle, message)
        elif op == "import_failed":
            log.error("fork server %d failed to import %s; the workers keep the previous code:\n%s",
                      handle.pid, self.config.app, message.get("error", ""))
            self.pool.close_server(handle, ask_exit=False)
            self.poller_dirty = True
            if self.reloading:
                self.reloading = False
                self.notifier.ready(status="reload failed: the application does not import")
        elif op == "spawned":
            worker = self.pool.workers.get(message["worker_id"])
            if worker is None or not fds:
                for fd in fds:
                    os.close(fd)
                return
            self.pool.attach(worker, message["pid"], fds[0])
            self.poller_dirty = True
            log.info("worker %d started (%s, fork server %d)", worker.pid, worker.worker_id, handle.pid)
        elif op == "spawn_failed":
            worker = self.pool.workers.get(message["worker_id"])
            self.record_start_failure(f"fork failed: {message.get('error')}")
            if worker is not None:
                self.pool.forget(worker)
        elif op == "exited":
            worker = self.pool.workers.get(message.get("worker_id"))
            if worker is not None:
                self.on_worker_reaped(worker, message.get("exit_code"), message.get("exit_signal"),
                                      message.get("at"))
        elif op == "retry_delay":
            if message.get("seconds") is not None:
                self.tasks.reschedule_retry(message["task_id"], message["run"], message["seconds"])
            else:
                log.error("task %s: the application's retry_delay failed (%s); using asynq's formula",
                          message.get("task_id"), message.get("error"))

    def on_fork_server_ready(self, handle, message: dict) -> None:
        handle.app = message["app"]
        handle.state = "ready"
        previous = self.pool.current_generation
        self.pool.current_generation = handle.generation
        self.tasks.set_application(handle.app)
        log.info("fork server %d ready: application %s with %d handlers", handle.pid,
                 handle.app.get("name"), len(handle.app.get("handlers", {})))
        if previous and previous != handle.generation:
            self.retire_generation(previous)
            log.info("reload: new tasks run on the new code; old workers are replaced as they become idle")
            self.reloading = False
            self.notifier.ready()

    def retire_generation(self, generation: int) -> None:
        for worker in list(self.pool.workers.values()):
            if worker.generation == generation and worker.state in (IDLE, STARTING):
                self.retire_worker(worker)
        self.close_idle_fork_servers()

    def close_idle_fork_servers(self) -> None:
        for handle in self.pool.fork_servers.values():
            if handle.generation == self.pool.current_generation or handle.state == "gone":
                continue
            if not any(worker.generation == handle.generation for worker in self.pool.workers.values()):
                self.pool.close_server(handle)
                self.poller_dirty = True

    def on_fork_server_lost(self, handle) -> None:
        log.error("fork server %d exited unexpectedly; its workers die with it", handle.pid)
        self.pool.close_server(handle, ask_exit=False)
        self.poller_dirty = True
        for worker in list(self.pool.workers.values()):
            if worker.generation == handle.generation:
                # No reap report will come: the fork server was their parent.
                self.on_worker_died(worker)
                self.on_worker_reaped(worker, None, None, self.clock.time())
        if handle.generation == self.pool.current_generation and self.shutdown_started is None:
            self.record_start_failure("the fork server exited")
            self.pool.exec_server()

    # == workers =======================================================================

    def read_worker_exits(self, ready: set) -> None:
        for pidfd in [fd for fd in ready if isinstance(fd, int) and fd in self.pool.by_pidfd]:
            worker = self.pool.by_pidfd[pidfd]
            # Earlier in this turn a reaped worker's pidfd may have been closed and its number
            # reused for a new worker's pidfd, so ask the pidfd itself before acting on the event.
            if worker.state != DEAD and _pidfd_exited(pidfd):
                self.on_worker_died(worker)

    def on_worker_died(self, worker: WorkerHandle) -> None:
        """Handle a worker whose process ended: kill what it left and await its reap report."""
        if worker.state == DEAD:
            return
        previous_state = worker.state
        worker.state = DEAD
        if worker.worker_id in self.idle_workers:
            self.idle_workers.remove(worker.worker_id)
        attempt = worker.attempt
        killed = self.pool.kill_tree(worker, attempt)
        if attempt is not None:
            attempt.children_killed += killed
        if previous_state in (STARTING, pool_module.SPAWNING) and not worker.ever_ready:
            self.record_start_failure(f"worker {worker.pid} exited before it was ready")
        log.info("worker %s exited while %s%s", worker.pid, previous_state,
                 f" running task {attempt.task_id}" if attempt else "")

    def on_worker_reaped(self, worker: WorkerHandle, exit_code, exit_signal, reaped_at) -> None:
        if worker.state != DEAD:
            self.on_worker_died(worker)
        worker.reaped = True
        worker.exit_code, worker.exit_signal, worker.reaped_at = exit_code, exit_signal, reaped_at
        attempt = worker.attempt
        if attempt is not None and not attempt.done:
            self.finish_lost_attempt(worker, attempt)
        worker.attempt = None
        self.pool.forget(worker)
        self.poller_dirty = True
        self.close_idle_fork_servers()
        log.info("worker %s reaped: %s", worker.pid, _describe_exit(exit_code, exit_signal))

    def finish_lost_attempt(self, worker: WorkerHandle, attempt) -> None:
        """Record an attempt whose worker is gone: stopped, or lost without a stop."""
        report = attempt.report or {}
        result_json = _result_json(report)
        error = report.get("error")
        if attempt.stop_reason is not None:
            outcome = attempt.stop_reason
        elif report:
            outcome = _report_outcome(report)
        else:
            outcome = states.WORKER_LOST
            error = f"worker {worker.pid} died while running this attempt: {_describe_exit(worker.exit_code, worker.exit_signal)}"
        new_state = self.tasks.finish_attempt(
            attempt, outcome, result_json=result_json, error=error, exit_code=worker.exit_code,
            exit_signal=worker.exit_signal, reaped_at=worker.reaped_at,
            retry_delay_s=report.get("retry_delay_s"),
        )
        log.info("task %s: attempt %d ended %s (worker %s, %s); task is now %s", attempt.task_id,
                 attempt.counted, outcome, worker.pid, _describe_exit(worker.exit_code, worker.exit_signal),
                 new_state)
        if new_state == states.RETRY and "retry_delay_s" not in report and self.tasks.custom_retry_delay:
            self.request_retry_delay(attempt.task_id, attempt.run, attempt.counted, error)

    def request_retry_delay(self, task_id: str, run: int, counted: int, error: str | None) -> None:
        """Ask the fork server for the application's retry_delay; the reply reschedules the task."""
        from procq.supervisor import channel

        server = self.pool.active_server()
        if server is None:
            return
        channel.send(server.sock, {"op": "retry_delay", "task_id": task_id, "run": run,
                                   "attempt": counted, "error": error})

    def read_workers(self) -> None:
        for _ in range(MAX_MESSAGES_PER_TURN):
            # Checking EVENTS first is cheaper than a non-blocking recv that raises zmq.Again.
            if not self.workers_socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            frames = self.workers_socket.recv_multipart(zmq.NOBLOCK)
            worker = self.pool.workers.get(frames[0].decode(errors="replace"))
            if worker is None or len(frames) != 2:
                continue
            try:
                message = protocol.decode(frames[1])
            except protocol.errors.ProtocolError as exc:
                log.error("worker %s sent an invalid message: %s", worker.pid, exc)
                continue
            kind = message.get("t")
            if kind == "result":
                self.on_worker_result(worker, message)
            elif kind == "progress":
                attempt = worker.attempt
                if attempt is not None and (message.get("id"), message.get("run")) == attempt.key:
                    self.tasks.record_progress(attempt, message)
            elif kind == "ready":
                self.on_worker_ready(worker)
            elif kind == "start_failed":
                error = f"on_worker_start hook failed in worker {worker.pid}:\n{message.get('error', '')}"
                if worker.state == DEAD:
                    # Its exit, read earlier in this turn, was already counted as the failure.
                    self.last_worker_error = error
                    log.error("worker failed to start: %s", error)
                else:
                    self.record_start_failure(error)
                    # It exits now, and RETIRING keeps on_worker_died from counting that exit again.
                    worker.state = RETIRING

    def on_worker_ready(self, worker: WorkerHandle) -> None:
        if worker.state in (DEAD, RETIRING):
            return  # Its exit or retirement was handled already; a late ready changes nothing.
        worker.ever_ready = True
        self.consecutive_failures = 0
        self.next_spawn_mono = 0.0
        if worker.generation != self.pool.current_generation or self.shutdown_started is not None:
            self.retire_worker(worker)
            return
        worker.state = IDLE
        self.idle_workers.append(worker.worker_id)
        log.debug("worker %d ready", worker.pid)

    def on_worker_result(self, worker: WorkerHandle, report: dict) -> None:
        attempt = worker.attempt
        if attempt is None or (report.get("id"), report.get("run")) != attempt.key:
            log.warning("worker %s reported a result for task %s run %s, which it is not running",
                        worker.pid, report.get("id"), report.get("run"))
            return
        worker.tasks_done += 1
        attempt.report = report
        if report.get("retire") and attempt.stop_reason is not None:
            # The handler stopped on the soft signal and the worker exits now; the attempt
            # is final once it is reaped and its tree is killed.
            worker.state = RETIRING
            return

        leftovers = self.pool.kill_leftovers(worker, attempt, alone=report.get("alone"))
        attempt.children_killed += leftovers
        outcome = attempt.stop_reason or _report_outcome(report)
        new_state = self.tasks.finish_attempt(
            attempt, outcome, result_json=_result_json(report), error=report.get("error"),
            retry_delay_s=report.get("retry_delay_s"),
        )
        worker.attempt = None
        if outcome == states.SUCCEEDED:
            log.debug("task %s: attempt %d succeeded in worker %d", attempt.task_id, attempt.counted, worker.pid)
        else:
            log.info("task %s: attempt %d ended %s in worker %d; task is now %s", attempt.task_id,
                     attempt.counted, outcome, worker.pid, new_state)
        if report.get("retire"):
            worker.state = RETIRING   # It exits by itself (threads left running).
        elif leftovers or self.worker_should_retire(worker):
            # A killed child of the worker stays a zombie until its parent waits for it or
            # exits. Replace the worker: the fork server, as subreaper, then reaps the child.
            self.retire_worker(worker)
        else:
            worker.state = IDLE
            self.idle_workers.append(worker.worker_id)

    def worker_should_retire(self, worker: WorkerHandle) -> bool:
        limit = self.config.max_tasks_per_worker
        return ((limit is not None and worker.tasks_done >= limit)
                or worker.generation != self.pool.current_generation
                or self.shutdown_started is not None)

    def retire_worker(self, worker: WorkerHandle) -> None:
        if worker.worker_id in self.idle_workers:
            self.idle_workers.remove(worker.worker_id)
        worker.state = RETIRING
        self.send_to_worker(worker, b'{"t":"exit"}')

    def send_to_worker(self, worker: WorkerHandle, frame: bytes) -> None:
        self.outbox.append((self.workers_socket, [worker.worker_id.encode(), frame]))

    # == control requests ==============================================================

    def read_control(self) -> None:
        for _ in range(MAX_MESSAGES_PER_TURN):
            if not self.control_socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            frames = self.control_socket.recv_multipart(zmq.NOBLOCK)
            control.handle(self, frames)

    def reply(self, identity: bytes, envelope: bool, message: dict) -> None:
        try:
            body = protocol.encode(message)
        except (TypeError, ValueError) as exc:
            log.error("reply to request %r could not be encoded: %s", message.get("id"), exc)
            error = protocol.errors.ProtocolError(f"the reply could not be encoded as JSON: {exc}")
            body = protocol.encode(protocol.error_reply(None, error))
        frames = [identity, b"", body] if envelope else [identity, body]
        self.outbox.append((self.control_socket, frames))

    # == time limits ===================================================================

    def enforce_time_limits(self) -> None:
        for kind, attempt, target in self.enforcer.pop_due(self.clock.monotonic()):
            if kind == SOFT:
                self.stop_attempt(attempt, attempt.soft_reason, target)
            elif kind == KILL:
                self.kill_attempt(attempt, target)

    def stop_attempt(self, attempt, reason: str, target_mono: float | None = None) -> bool:
        """Send the soft signal for `attempt` and arm its SIGKILL; False if it already stopped."""
        worker = self.pool.workers.get(attempt.worker_id)
        if attempt.done or attempt.stop_reason is not None or worker is None:
            return False
        now_mono, now = self.clock.monotonic(), self.clock.time()
        target_mono = self.turn_mono if target_mono is None else target_mono
        attempt.stop_reason = reason
        attempt.soft_signal_at = now
        attempt.soft_lateness_s = max(0.0, now_mono - target_mono)
        delivered = self.pool.send_stop(worker, attempt, reason)
        if worker.state == BUSY:
            worker.state = STOPPING
        # The grace period counts from the signal actually sent, so a late soft signal never
        # shortens the time the handler has to clean up.
        grace_s = min(attempt.grace_s, self.config.max_grace_s)
        attempt.kill_target_mono = now_mono + grace_s
        self.enforcer.schedule(attempt.kill_target_mono, KILL, attempt)
        self.store.update_attempt(attempt.task_id, attempt.run, soft_signal_at=now,
                                  soft_lateness_s=attempt.soft_lateness_s)
        log.info("task %s: soft signal (%s) sent to worker %s, %.1f ms after its target; SIGKILL in %.3f s%s",
                 attempt.task_id, reason, worker.pid, attempt.soft_lateness_s * 1000, grace_s,
                 "" if delivered else " (worker already exiting)")
        return True

    def kill_attempt(self, attempt, target_mono: float) -> None:
        worker = self.pool.workers.get(attempt.worker_id)
        if worker is None or worker.state == DEAD or attempt.done:
            return
        now_mono = self.clock.monotonic()
        attempt.kill_at = self.clock.time()
        attempt.kill_lateness_s = max(0.0, now_mono - target_mono)
        killed = self.pool.kill_tree(worker, attempt)
        attempt.children_killed += killed
        self.store.update_attempt(attempt.task_id, attempt.run, kill_at=attempt.kill_at,
                                  kill_lateness_s=attempt.kill_lateness_s)
        log.warning("task %s: worker %s still running %.3f s after the soft signal (%s); "
                    "SIGKILL sent to it and %d other processes, %.1f ms after its target",
                    attempt.task_id, worker.pid, attempt.grace_s, attempt.stop_reason, killed,
                    attempt.kill_lateness_s * 1000)

    def sample_workers(self) -> None:
        """Check memory limits and, without cgroups, note each attempt's descendants."""
        now = self.clock.monotonic()
        if now < self.next_sample_mono:
            return
        self.next_sample_mono = now + SAMPLE_INTERVAL_S
        from procq.supervisor import memory, proctree

        for worker in list(self.pool.workers.values()):
            attempt = worker.attempt
            if attempt is None or attempt.done or worker.state == DEAD:
                continue
            if worker.cgroup is None and now - attempt.started_mono >= SAMPLE_INTERVAL_S:
                attempt.seen |= proctree.descendants(worker.pid)
                if attempt.max_memory is not None:
                    # Daemonized children left the worker's tree; their marker still names the attempt.
                    marker = f"{worker.marker}/{attempt.task_id}/{attempt.run}"
                    attempt.seen |= proctree.marked(MARKER_VARIABLE, marker)
            if attempt.max_memory is None or attempt.stop_reason is not None:
                continue
            extra = set(attempt.seen)
            if worker.cgroup is not None and self.pool.cgroups is not None:
                try:
                    pids = set(self.pool.cgroups.procs(worker.cgroup)) - {worker.pid}
                    extra = {ref for ref in map(proctree.ref, pids) if ref is not None}
                except OSError:
                    pass
            used = memory.tree_memory_bytes(worker.pid, extra)
            if used is not None and used > attempt.max_memory:
                log.warning("task %s: worker %s uses %d bytes, over max_memory %d", attempt.task_id,
                            worker.pid, used, attempt.max_memory)
                # The target is the moment the measurement showed the excess.
                self.stop_attempt(attempt, states.MEMORY, self.clock.monotonic())

    # == waiting tasks and dispatch ====================================================

    def release_due_tasks(self) -> None:
        now = self.clock.monotonic()
        for task_id in list(self.dispatcher.pop_due(now)):
            self.tasks.promote(task_id)
        for task_id in list(self.dispatcher.pop_expired(now)):
            if task_id not in self.tasks.active:
                self.tasks.expire(task_id)

    def dispatch(self) -> None:
        if self.draining or self.shutdown_started is not None:
            return
        while self.idle_workers:
            picked = self.dispatcher.next_task()
            if picked is None:
                return
            worker = self.pool.workers[self.idle_workers[0]]
            started = self.tasks.start_attempt(picked[0], worker.worker_id, worker.pid)
            if started is None:
                continue
            attempt, frame = started
            self.idle_workers.popleft()
            worker.attempt = attempt
            worker.state = BUSY
            self.send_to_worker(worker, frame)
            log.debug("task %s: attempt %d dispatched to worker %d (queue %s)", attempt.task_id,
                      attempt.counted, worker.pid, attempt.queue)
            if attempt.soft_target_mono is not None:
                self.enforcer.schedule(attempt.soft_target_mono, SOFT, attempt)

    # == pool size =====================================================================

    def keep_pool_full(self) -> None:
        now = self.clock.monotonic()
        self.kill_slow_starters(now)
        server = self.pool.active_server()
        if server is None or self.shutdown_started is not None or now < self.next_spawn_mono:
            return
        serving = [w for w in self.pool.workers.values() if w.state not in (DEAD, RETIRING)]
        missing = self.config.workers - len(serving)
        if self.consecutive_failures:
            missing = min(missing, 1)  # While workers keep failing, start one at a time.
        for _ in range(max(0, missing)):
            self.pool.spawn(server)

    def kill_slow_starters(self, now: float) -> None:
        for worker in list(self.pool.workers.values()):
            if worker.state in (pool_module.SPAWNING, STARTING) and \
                    now - worker.spawned_mono > self.config.worker_start_timeout_s:
                self.record_start_failure(
                    f"worker {worker.pid} not ready within {self.config.worker_start_timeout_s:g} s")
                if worker.state == STARTING:
                    self.pool.kill_tree(worker, None)
                    worker.state = RETIRING
                else:
                    self.pool.forget(worker)

    def record_start_failure(self, reason: str) -> None:
        self.worker_failures += 1
        self.consecutive_failures += 1
        self.last_worker_error = reason
        delay = min(MAX_BACKOFF_S, 0.25 * 2 ** (self.consecutive_failures - 1))
        self.next_spawn_mono = self.clock.monotonic() + delay
        log.error("worker failed to start (%d in a row): %s; next start in %.2f s",
                  self.consecutive_failures, reason, delay)

    # == graceful stop =================================================================

    def advance_shutdown(self) -> None:
        if self.shutdown_started is None:
            return
        now = self.clock.monotonic()
        if not self.shutdown_stopping and self.tasks.active:
            if now - self.shutdown_started < self.config.shutdown_timeout_s:
                return
            self.stop_all_for_shutdown()
        if self.tasks.active:
            return
        for worker in list(self.pool.workers.values()):
            if worker.state in (IDLE, STARTING, pool_module.SPAWNING):
                if worker.state == pool_module.SPAWNING:
                    self.pool.forget(worker)
                    continue
                self.pool.kill_tree(worker, None)
                worker.state = RETIRING
        if any(worker.pid is not None for worker in self.pool.workers.values()):
            return
        for handle in self.pool.fork_servers.values():
            self.pool.close_server(handle)
        self.pool.wait_servers(timeout_s=5.0)
        self.finished = True
        log.info("graceful stop complete")

    def stop_all_for_shutdown(self) -> None:
        self.shutdown_stopping = True
        for attempt in list(self.tasks.active.values()):
            self.stop_attempt(attempt, states.SHUTDOWN)

    # == end of turn ===================================================================

    def commit_and_send(self) -> None:
        self.store.commit()
        self.answer_waiters()
        for sock, frames in self.outbox:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.warning("message to %r not delivered: %s", frames[0], exc)
        self.outbox.clear()

    def answer_waiters(self) -> None:
        """Reply to held wait and wait_idle requests that this turn's commit resolved or that expired."""
        finalized, self.tasks.finalized = self.tasks.finalized, []
        for task_id in finalized:
            waiters = self.waiters.for_task(task_id)
            if waiters:
                data = self.store.task_dict(task_id)
                for waiter in waiters:
                    self.reply_to(waiter, data)
        if not self.tasks.active:
            for waiter in self.waiters.idle():
                self.reply_to(waiter, True)
        for waiter in self.waiters.expired(self.clock.monotonic()):
            # A wait that ends without a final task returns null; the client asks again.
            self.reply_to(waiter, None if waiter.task_id is not None else not self.tasks.active)

    def reply_to(self, waiter: Waiter, data: Any) -> None:
        self.reply(waiter.identity, waiter.envelope, {"id": waiter.request_id, "ok": True, "data": data})

    def notify_systemd(self) -> None:
        if not self.ready_sent:
            if any(worker.ever_ready for worker in self.pool.workers.values()):
                self.ready_sent = True
                self.notifier.ready(status=self.status_line())
                log.info("ready: %d workers starting, %d tasks pending", len(self.pool.workers),
                         self.dispatcher.pending_count())
            elif self.shutdown_started is None and \
                    self.clock.monotonic() - self.started_mono > self.config.worker_start_timeout_s:
                log.error("no worker became ready within %.0f s: %s", self.config.worker_start_timeout_s,
                          self.last_worker_error or "unknown reason")
                self.exit_code = 1
                self.shutdown_started = self.clock.monotonic()
                self.shutdown_stopping = True
        if self.notifier.enabled:
            self.notifier.status(self.status_line())
            self.notifier.flush_status()
        self.notifier.watchdog_if_due()
        now = self.clock.monotonic()
        if self.shutdown_started is not None and not self.finished and now >= self.next_extend_mono:
            # Ask systemd for the time the stop may still take within its configured bounds:
            # the shutdown timeout, then the longest grace, then a margin to reap and commit.
            # A stop that overruns them gets no more extensions.
            self.next_extend_mono = now + 1.0
            bound = self.shutdown_started + self.config.shutdown_timeout_s + self.config.max_grace_s + 5.0
            if bound > now:
                self.notifier.extend_timeout(bound - now)

    def status_line(self) -> str:
        workers = self.pool.live_workers()
        busy = sum(1 for w in workers if w.attempt is not None)
        idle = sum(1 for w in workers if w.state == IDLE)
        line = f"{busy} busy, {idle} idle workers; {self.dispatcher.pending_count()} pending"
        if self.draining:
            line += "; draining"
        if self.consecutive_failures:
            line += f"; workers failing to start ({self.consecutive_failures} in a row): {(self.last_worker_error or '').splitlines()[0]}"
        return line

    def check_database_file(self) -> None:
        """Warn loudly if the database file was deleted or replaced while the supervisor uses it."""
        now = self.clock.monotonic()
        if now < self.next_db_check_mono:
            return
        self.next_db_check_mono = now + 60.0
        problem = self.store.file_problem()
        if problem:
            log.critical("%s", problem)

    def purge_old_tasks(self) -> None:
        now = self.clock.monotonic()
        if now < self.next_purge_mono:
            return
        self.next_purge_mono = now + self.config.purge_interval_s
        purged = self.store.purge_finished(self.clock.time())
        self.store.commit()
        if purged:
            log.info("purged %d tasks past their retention", purged)

    # == shutdown of the process =======================================================

    def close(self) -> None:
        self.store.commit()
        self.control_socket.close(linger=0)
        self.workers_socket.close(linger=0)
        self.zmq_context.term()


def _pidfd_exited(pidfd: int) -> bool:
    """Return True if the process behind a pidfd has exited (the pidfd polls readable)."""
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _report_outcome(report: dict) -> str:
    status = report.get("status")
    if status == "ok":
        return states.SUCCEEDED
    if status == "result_invalid":
        return states.RESULT_INVALID
    return states.ERROR


def _result_json(report: dict) -> str | None:
    import json

    if "result" not in report:
        return None
    return json.dumps(report["result"], separators=(",", ":"))


def _describe_exit(exit_code, exit_signal) -> str:
    if exit_signal is not None:
        try:
            return f"killed by signal {exit_signal} ({signal.Signals(exit_signal).name})"
        except ValueError:
            return f"killed by signal {exit_signal}"
    if exit_code is not None:
        return f"exit code {exit_code}"
    return "exit status unknown"
