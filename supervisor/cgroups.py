"""Per-worker cgroup v2 groups, so that one write to cgroup.kill stops a worker and everything it started.

Layout: ``<cgroup2 mount><supervisor's own cgroup>/procq-<supervisor pid>/<worker group>``. The run
group contains no processes of its own. Each worker writes its pid to its group's cgroup.procs right
after fork (`join`), and every process it starts afterwards, including ones that call setsid or
double-fork, is created in the same group. Moving a process to another group needs write access
to the cgroup.procs of both groups' common ancestor, so a handler running as root can still leave.

Without cgroup v2 (not mounted, read-only, or no delegation) `CgroupTree.open` returns None and the
supervisor falls back to process groups and pidfds (`procq.supervisor.proctree`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import time
from collections.abc import Mapping

import psutil

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
PROC_CGROUP = "/proc/self/cgroup"
RUN_GROUP_PREFIX = "procq-"

# Maximum time in seconds that `remove` retries rmdir while the kernel still lists exiting processes.
REMOVE_TIMEOUT_S = 1.0
# Maximum time in seconds that the kill without cgroup.kill keeps signalling a group that is not empty.
KILL_TIMEOUT_S = 1.0
_RETRY_INTERVAL_S = 0.01

_TRUE_VALUES = {"1", "true", "yes"}
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def cgroups_disabled_by_env(environ: Mapping[str, str] = os.environ) -> bool:
    """Return True when PROCQ_NO_CGROUP is 1, true or yes (any case)."""
    return environ.get("PROCQ_NO_CGROUP", "").strip().lower() in _TRUE_VALUES


def find_cgroup2_mount(mountinfo: str = MOUNTINFO) -> str | None:
    """Return the mount point of the first cgroup2 file system in `mountinfo`, or None."""
    mounts = _cgroup2_mounts(mountinfo)
    if not mounts:
        return None
    return mounts[0][1]


def own_cgroup(proc_cgroup: str = PROC_CGROUP) -> str | None:
    """Return the cgroup v2 path of the `0::PATH` line in `proc_cgroup`, or None if there is none."""
    try:
        with open(proc_cgroup, encoding="utf-8", errors="surrogateescape") as file:
            lines = file.read().splitlines()
    except OSError:
        return None

    for line in lines:
        hierarchy_id, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy_id == "0" and controllers == "" and path.startswith("/"):
            return path
    return None


def join(path: str, pid: int = 0) -> None:
    """Move process `pid` into the cgroup at `path`; pid 0 is the calling process.

    The fork server's child calls this right after fork, before it runs any user code, so that
    everything the worker starts is created inside the group. Raises OSError when the write fails,
    for example PermissionError without write access to the common ancestor's cgroup.procs.
    """
    _write(os.path.join(path, "cgroup.procs"), str(pid))


class CgroupTree:
    """The cgroup of one supervisor run (`path`) and the worker groups below it.

    Every path taken or returned is an absolute path in the cgroup2 file system. `has_kill` is
    False on kernels older than Linux 5.14, which have no cgroup.kill file.
    """

    def __init__(self, path: str, *, has_kill: bool) -> None:
        self.path = path
        self.has_kill = has_kill

    @classmethod
    def open(
        cls,
        run_name: str,
        *,
        enabled: bool = True,
        mountinfo: str = MOUNTINFO,
        proc_cgroup: str = PROC_CGROUP,
    ) -> CgroupTree | None:
        """Create (or reuse and empty) the run group `run_name` below this process's own cgroup.

        Returns None, after logging one INFO line with the reason, when cgroups are disabled, no
        cgroup v2 is mounted, or the own cgroup is not writable.
        """
        _validate_group_name(run_name)
        if not enabled:
            log.info("cgroups disabled by option; workers are stopped through process groups and pidfds only")
            return None

        parent_dir = _own_cgroup_dir(mountinfo, proc_cgroup)
        if parent_dir is None:
            return None

        path = os.path.join(parent_dir, run_name)
        existed = False
        try:
            os.mkdir(path)
        except FileExistsError:
            existed = True
        except OSError as error:
            log.info(
                "cgroup v2 at %s is not writable (%s); workers are stopped through process groups and pidfds only",
                parent_dir,
                error,
            )
            return None

        tree = cls(path, has_kill=os.path.exists(os.path.join(path, "cgroup.kill")))
        if existed:
            log.info("reusing existing cgroup %s: killing its processes and removing its worker groups", path)
            tree.kill(path)
            for child in _child_groups(path):
                tree.remove(child)

        memory = _enable_memory_controller(path)
        log.info(
            "using cgroup %s for workers (cgroup.kill: %s, memory controller: %s)",
            path,
            "yes" if tree.has_kill else "no, Linux < 5.14: processes are signalled one by one",
            "yes" if memory else "no",
        )
        return tree

    def create_worker_group(self, name: str) -> str:
        """Create the worker group `name` and return its path.

        An existing group of that name is reused: its processes are killed and its child groups removed.
        """
        _validate_group_name(name)
        path = os.path.join(self.path, name)
        try:
            os.mkdir(path)
        except FileExistsError:
            self.kill(path)
            for child in _child_groups(path):
                self.remove(child)
        return path

    def procs(self, path: str, *, recursive: bool = False) -> list[int]:
        """Return the pids in the group's cgroup.procs, and in its child groups if `recursive`.

        A group that no longer exists has no pids. Exited processes leave cgroup.procs at exit,
        before they are reaped, so zombies are never listed.
        """
        return _group_pids(path, recursive=recursive)

    def kill(self, path: str) -> int:
        """Send SIGKILL to every process in the group and its child groups; return how many there were."""
        return _kill_group(path, has_kill=self.has_kill)

    def remove(self, path: str) -> bool:
        """Remove the group and its child groups; return False if a group was still populated after REMOVE_TIMEOUT_S."""
        return _remove_group(path)

    def close(self) -> None:
        """Kill and remove every worker group, then remove the run group. Does nothing once removed."""
        if not os.path.isdir(self.path):
            return

        for child in _child_groups(self.path):
            self.kill(child)
            self.remove(child)

        self.kill(self.path)
        if self.remove(self.path):
            log.info("removed cgroup %s", self.path)


def remove_stale_groups(parent_dir: str, prefix: str = RUN_GROUP_PREFIX, *, current_name: str) -> list[str]:
    """Remove every run group under `parent_dir` left by a dead supervisor, killing its processes first.

    A run group is named `<prefix><supervisor pid>`. It is stale when no process has that pid, or when
    the process with that pid started after the group was created, so the pid was reused. Groups
    named `current_name`, groups of a live supervisor and names that do not match are left alone.
    Returns the paths removed.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent_dir))
    except OSError as error:
        log.info("failed to list %s for stale cgroups: %s", parent_dir, error)
        return removed

    for entry in entries:
        if entry.name == current_name or not entry.is_dir(follow_symlinks=False):
            continue
        pid = _supervisor_pid(entry.name, prefix)
        if pid is None or _supervisor_alive(pid, entry.path):
            continue

        has_kill = os.path.exists(os.path.join(entry.path, "cgroup.kill"))
        killed = _kill_group(entry.path, has_kill=has_kill)
        if _remove_group(entry.path):
            log.info("removed stale cgroup %s: supervisor pid %d is gone; killed %d processes", entry.path, pid, killed)
            removed.append(entry.path)
    return removed


def _cgroup2_mounts(mountinfo: str) -> list[tuple[str, str]]:
    """Return (root, mount point) of each cgroup2 mount listed in `mountinfo`, unescaped."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as file:
            lines = file.read().splitlines()
    except OSError:
        return []

    mounts = []
    for line in lines:
        fields = line.split(" ")
        # Optional fields of varying number sit between field 6 and the lone "-".
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) > separator + 1 and fields[separator + 1] == "cgroup2":
            mounts.append((_unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _unescape(field: str) -> str:
    """Decode mountinfo's octal escapes: \\040 space, \\011 tab, \\012 newline, \\134 backslash."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def _own_cgroup_dir(mountinfo: str, proc_cgroup: str) -> str | None:
    """Return the directory of this process's cgroup in the cgroup2 file system, or None with an INFO log."""
    mounts = _cgroup2_mounts(mountinfo)
    if not mounts:
        log.info("no cgroup v2 mount in %s; workers are stopped through process groups and pidfds only", mountinfo)
        return None

    own = own_cgroup(proc_cgroup)
    if own is None or "/.." in own:
        log.info("no usable cgroup v2 entry (0::PATH) in %s: %r; cgroups not used", proc_cgroup, own)
        return None

    # A mount's root is the part of the hierarchy it shows, "/" unless a container bind-mounted a subtree.
    for root, mount_point in mounts:
        if root == "/":
            return os.path.normpath(mount_point + own)
        if own == root or own.startswith(root.rstrip("/") + "/"):
            return os.path.normpath(mount_point + own[len(root):])

    log.info("own cgroup %s is outside every cgroup v2 mount %s; cgroups not used", own, mounts)
    return None


def _enable_memory_controller(path: str) -> bool:
    """Enable the memory controller for the child groups of `path` if the parent delegated it."""
    try:
        with open(os.path.join(path, "cgroup.controllers"), encoding="ascii") as file:
            if "memory" not in file.read().split():
                return False
        _write(os.path.join(path, "cgroup.subtree_control"), "+memory")
    except OSError as error:
        log.debug("memory controller not enabled in %s: %s", path, error)
        return False
    return True


def _validate_group_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\n" in name:
        raise ValueError(f"invalid cgroup name {name!r}: expected one non-empty path component")


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(text)


def _child_groups(path: str) -> list[str]:
    try:
        return [entry.path for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _group_pids(path: str, *, recursive: bool) -> list[int]:
    groups = [path]
    if recursive:
        groups = [directory for directory, _, _ in os.walk(path)]

    pids = []
    for group in groups:
        try:
            with open(os.path.join(group, "cgroup.procs"), encoding="ascii") as file:
                pids.extend(int(line) for line in file.read().split())
        except FileNotFoundError:
            continue
    return pids


def _kill_group(path: str, *, has_kill: bool) -> int:
    """Send SIGKILL to every process in the group at `path` and below; return how many pids it listed."""
    pids = _group_pids(path, recursive=True)
    if has_kill:
        # cgroup.kill kills the whole subtree, including processes forked while the kill runs.
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
        except FileNotFoundError:
            return 0
    elif pids:
        _signal_until_empty(path)

    if pids:
        log.info("killed cgroup %s: SIGKILL to %d processes, pids %s", path, len(pids), pids)
    return len(pids)


def _signal_until_empty(path: str) -> None:
    """Send SIGKILL to each listed process through a pidfd until the group is empty or KILL_TIMEOUT_S passes.

    This is the fallback for kernels without cgroup.kill. Where cgroup.freeze exists (Linux 5.2+),
    the group is frozen first so that no process in it can fork during the kill. SIGKILL still
    ends frozen processes.
    """
    frozen = _set_frozen(path, True)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while True:
            pids = _group_pids(path, recursive=True)
            if not pids:
                return
            _signal_members(path, pids)

            if time.monotonic() > deadline:
                log.warning("cgroup %s still lists pids %s after %.1f s of SIGKILL", path, pids, KILL_TIMEOUT_S)
                return
            time.sleep(_RETRY_INTERVAL_S)
    finally:
        if frozen:
            _set_frozen(path, False)


def _signal_members(path: str, pids: list[int]) -> None:
    """Send SIGKILL to each pid that is still in the group after a pidfd to it was opened.

    A pid from cgroup.procs may have exited and been reused by an unrelated process. Checking the
    membership again after pidfd_open proves that the pidfd names a process of this group. If that
    process has exited since, pidfd_send_signal fails instead of hitting the new owner of the pid.
    """
    pidfds = {}
    for pid in pids:
        try:
            pidfds[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue

    try:
        members = set(_group_pids(path, recursive=True))
        for pid, pidfd in pidfds.items():
            if pid not in members:
                continue
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                continue
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)


def _set_frozen(path: str, frozen: bool) -> bool:
    try:
        _write(os.path.join(path, "cgroup.freeze"), "1" if frozen else "0")
    except OSError:
        return False
    return True


def _remove_group(path: str) -> bool:
    # Remove child groups first: rmdir fails on a group that has children.
    for directory, _, _ in os.walk(path, topdown=False):
        if not _rmdir_when_empty(directory):
            return False
    return True


def _rmdir_when_empty(path: str) -> bool:
    """Remove the group, retrying while the kernel still lists exiting processes (EBUSY)."""
    deadline = time.monotonic() + REMOVE_TIMEOUT_S
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                pids = _group_pids(path, recursive=True)
                log.warning("failed to remove cgroup %s: %s (pids still in it: %s)", path, error, pids)
                return False
        time.sleep(_RETRY_INTERVAL_S)


def _supervisor_pid(name: str, prefix: str) -> int | None:
    suffix = name[len(prefix):] if name.startswith(prefix) else ""
    if not suffix.isdigit():
        return None
    return int(suffix)


def _supervisor_alive(pid: int, group_path: str) -> bool:
    """Return True if a process with `pid` exists and started before the group was created.

    A cgroup directory's mtime is the time the group was created (Linux 6.18 leaves it unchanged when
    child groups come and go), so a process that started after it cannot be the group's owner.
    psutil's create_time truncates the boot time to whole seconds, so a pid reused within about a
    second of the group's creation still counts as the owner. An AccessDenied also counts as alive.
    """
    try:
        started_at = psutil.Process(pid).create_time()
        group_changed_at = os.stat(group_path).st_mtime
    except (psutil.NoSuchProcess, FileNotFoundError):
        return False
    except psutil.AccessDenied:
        return True
    return started_at <= group_changed_at
