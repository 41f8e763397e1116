"""Find and kill the processes of one attempt when no cgroup is available.

Each finder misses some processes, so the caller combines them:

- `descendants`: children of the worker, or of the fork server, which as child subreaper
  inherits orphans. It misses processes re-parented elsewhere.
- `group_members`: the worker's process group. A process leaves it by calling setsid.
- `marked`: an environment variable, which survives setsid and re-parenting but is visible only
  in processes started by execve after it was set.

Every finder returns `ProcessRef`s, pids paired with their start time. `kill` signals through a
pidfd only after checking that start time again, so a pid that was listed, then exited and was
reused by an unrelated process is never signalled.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)

_RETRY_INTERVAL_S = 0.001


@dataclass(frozen=True)
class ProcessRef:
    """The identity of one process: its pid and psutil's create_time (seconds since the epoch).

    NOTE: psutil adds the boot time from /proc/stat, which moves when the wall clock is stepped. A
    ref taken before a step no longer matches, so `kill` skips that process (the next `collect` of
    `kill_until_gone` lists it again with the new time).
    """

    pid: int
    create_time: float


def ref(pid: int) -> ProcessRef | None:
    """Return the ProcessRef of the process that has `pid` now, or None if there is none."""
    try:
        return ProcessRef(pid, psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def descendants(pid: int) -> set[ProcessRef]:
    """Return the children of `pid`, their children and so on; empty if `pid` has exited."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return set()

    refs = set()
    for child in children:
        try:
            refs.add(ProcessRef(child.pid, child.create_time()))
        except psutil.Error:
            continue
    return refs


def group_members(pgid: int) -> set[ProcessRef]:
    """Return every process whose process group id is `pgid`.

    Scans /proc with one getpgid(2) call per process and reads the start time of members only.
    Measured on a 2-vCPU AMD EPYC VM with Linux 6.18 and 80 processes: 0.24 ms for a group of 3,
    against 1.0 ms for `descendants` and 0.6 ms for `marked`. The scan alone takes 0.07 ms, while
    reading every /proc/PID/stat instead takes 0.9 ms.
    """
    return _scan(lambda pid: os.getpgid(pid) == pgid)


def marked(variable: str, value: str) -> set[ProcessRef]:
    """Return every process whose /proc/PID/environ contains `variable=value`.

    NOTE: /proc/PID/environ shows the environment a process received at execve, inherited by its
    forks. A variable set later through os.environ is visible only in programs executed after that,
    not in the process that set it or in its plain forks. Processes whose environ is unreadable
    (other users' processes, without root) are skipped.
    """
    entry = f"{variable}={value}".encode("utf-8", "surrogateescape")
    return _scan(lambda pid: entry in _environ_entries(pid))


def marked_prefix(variable: str, prefix: str) -> set[ProcessRef]:
    """Return every process whose /proc/PID/environ has `variable` set to a value starting with `prefix`."""
    start = f"{variable}={prefix}".encode("utf-8", "surrogateescape")
    return _scan(lambda pid: any(item.startswith(start) for item in _environ_entries(pid)))


def kill(refs: Iterable[ProcessRef], sig: int = signal.SIGKILL) -> int:
    """Send `sig` to each process in `refs` that still exists; return how many were signalled.

    pid 1, this process and its parent are never signalled.
    """
    protected = {1, os.getpid(), os.getppid()}
    signalled = []
    for process in sorted(refs, key=lambda item: item.pid):
        if process.pid in protected:
            log.warning("skipped %s to pid %d: pid 1, this process and its parent are never signalled", _signal_name(sig), process.pid)
            continue
        if _send_signal(process, sig):
            signalled.append(process.pid)

    if signalled:
        log.info("sent %s to %d processes, pids %s", _signal_name(sig), len(signalled), signalled)
    return len(signalled)


def kill_until_gone(collect: Callable[[], set[ProcessRef]], timeout_s: float = 1.0) -> int:
    """Send SIGKILL to what `collect` returns, in rounds, until a round finds no new process.

    A process that forks while it is being killed can leave a child that the first `collect` did
    not list, and the next round finds it. Returns the total number signalled. After `timeout_s`
    seconds this logs a warning and returns, even if new processes keep appearing.
    """
    signalled: set[ProcessRef] = set()
    total = 0
    deadline = time.monotonic() + timeout_s
    while True:
        new = collect() - signalled
        if not new:
            return total
        total += kill(new)
        signalled |= new

        if time.monotonic() > deadline:
            new_pids = sorted(item.pid for item in new)
            log.warning("kill timed out after %.1f s: new processes keep appearing, last new pids %s", timeout_s, new_pids)
            return total
        time.sleep(_RETRY_INTERVAL_S)


def _send_signal(process: ProcessRef, sig: int) -> bool:
    """Signal `process` through a pidfd if the pid still belongs to it; return whether it was signalled.

    The pidfd is opened before the start time is compared. If the pid was reused before
    pidfd_open, the comparison fails. If the process exits and its pid is reused after the
    comparison, the pidfd still names the exited process, so pidfd_send_signal fails and nothing
    else is hit.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return False

    try:
        if ref(process.pid) != process:
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def _scan(matches: Callable[[int], bool]) -> set[ProcessRef]:
    """Return the processes in /proc for which `matches(pid)` is true.

    The ProcessRef is read before and after `matches`, and a process whose ref changed in between is
    skipped. Otherwise a pid reused during the check could pair the new process with the old
    process's attribute. Processes that vanish or deny access are skipped too.
    """
    found = set()
    for pid in _pids():
        try:
            if not matches(pid):
                continue
        except OSError:  # the process exited (ENOENT, ESRCH) or denies access (EACCES)
            continue
        before = ref(pid)
        if before is None:
            continue
        try:
            still_matches = matches(pid)
        except OSError:
            continue
        if still_matches and ref(pid) == before:
            found.add(before)
    return found


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _environ_entries(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as file:
        return file.read().split(b"\0")


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
