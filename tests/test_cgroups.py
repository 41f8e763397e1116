"""Tests for procq.supervisor.cgroups: mountinfo parsing, and real groups on this machine.

Tests that need a writable cgroup v2 skip, with the reason, where there is none. Run groups
created here are named procq-test-<uuid>: the name has no pid, so `remove_stale_groups` of
another supervisor never touches them.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import psutil
import pytest

from procq.supervisor import cgroups
from procq.supervisor.cgroups import CgroupTree

# TODO: move the `spawn` fixture and its helpers from test_proctree to conftest.py.
from tests.test_proctree import is_gone, spawn, unique_marker, wait_until_gone  # noqa: F401

HYBRID = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime shared:15 - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:16 - cgroup2 cgroup2 rw
"""

UNIFIED = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""

V1_ONLY = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
"""

ESCAPED = """\
50 24 0:40 / /mnt/my\\040cgroups\\011tab rw,relatime shared:30 master:2 - cgroup2 none rw
"""

# A container whose cgroup2 mount shows only its own subtree of the host's hierarchy.
BIND_MOUNTED_SUBTREE = """\
60 50 0:30 /docker/abc /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw
"""

# Joins the cgroup in argv[1], then starts a process with Popen, a child that calls setsid and a
# double-forked orphan, and prints the pids of all four.
TREE_IN_GROUP = r"""
import os, subprocess, sys, time
from procq.supervisor.cgroups import join
join(sys.argv[1])
sleep = subprocess.Popen(["sleep", "1000"])
read_end, write_end = os.pipe()
if os.fork() == 0:
    os.setsid()
    os.write(write_end, str(os.getpid()).encode().ljust(16))
    time.sleep(1000)
    os._exit(0)
intermediate = os.fork()
if intermediate == 0:
    if os.fork() == 0:
        os.write(write_end, str(os.getpid()).encode().ljust(16))
        time.sleep(1000)
        os._exit(0)
    os._exit(0)
os.waitpid(intermediate, 0)
others = sorted(int(os.read(read_end, 16)) for _ in range(2))
print(os.getpid(), sleep.pid, *others, flush=True)
time.sleep(1000)
"""

JOIN_AND_SLEEP = r"""
import os, sys, time
from procq.supervisor.cgroups import join
join(sys.argv[1])
print(os.getpid(), flush=True)
time.sleep(1000)
"""


def write_text(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def tree():
    """Open a real run group below this process's cgroup; kill and remove it at the end."""
    run_name = f"procq-test-{uuid.uuid4().hex}"
    opened = CgroupTree.open(run_name)
    if opened is None:
        mount = cgroups.find_cgroup2_mount()
        if mount is None:
            pytest.skip("no cgroup v2 mount in /proc/self/mountinfo")
        pytest.skip(f"cgroup v2 at {mount} is not writable for this user")

    yield opened

    opened.close()
    assert not os.path.exists(opened.path), f"run group {opened.path} was not removed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HYBRID, "/sys/fs/cgroup/unified"),
        (UNIFIED, "/sys/fs/cgroup"),
        (V1_ONLY, None),
        (ESCAPED, "/mnt/my cgroups\ttab"),
        (BIND_MOUNTED_SUBTREE, "/sys/fs/cgroup"),
        ("", None),
    ],
    ids=["hybrid", "unified", "v1-only", "escaped", "bind-mounted-subtree", "empty"],
)
def test_find_cgroup2_mount(tmp_path, text, expected):
    mountinfo = write_text(tmp_path / "mountinfo", text)

    assert cgroups.find_cgroup2_mount(mountinfo) == expected


def test_find_cgroup2_mount_of_missing_file(tmp_path):
    assert cgroups.find_cgroup2_mount(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0::/system.slice/procq.service\n", "/system.slice/procq.service"),
        ("9:name=systemd:/\n4:memory:/user.slice\n0::/\n", "/"),
        ("4:memory:/user.slice\n1:cpu:/\n", None),
        ("0::/path:with:colons\n", "/path:with:colons"),
    ],
    ids=["unified", "hybrid", "v1-only", "colons"],
)
def test_own_cgroup(tmp_path, text, expected):
    proc_cgroup = write_text(tmp_path / "cgroup", text)

    assert cgroups.own_cgroup(proc_cgroup) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), (" yes ", True), ("0", False), ("no", False), ("", False)],
)
def test_cgroups_disabled_by_env(value, expected):
    assert cgroups.cgroups_disabled_by_env({"PROCQ_NO_CGROUP": value}) is expected


def test_cgroups_disabled_by_env_unset():
    assert cgroups.cgroups_disabled_by_env({}) is False


def test_open_disabled_returns_none(caplog):
    with caplog.at_level(logging.INFO, logger="procq.supervisor.cgroups"):
        assert CgroupTree.open("procq-test-disabled", enabled=False) is None

    assert "cgroups disabled by option" in caplog.text


def test_open_without_cgroup2_returns_none(tmp_path, caplog):
    mountinfo = write_text(tmp_path / "mountinfo", V1_ONLY)

    with caplog.at_level(logging.INFO, logger="procq.supervisor.cgroups"):
        assert CgroupTree.open("procq-test-none", mountinfo=mountinfo) is None

    assert "no cgroup v2 mount" in caplog.text


def test_open_unwritable_mount_returns_none(tmp_path, caplog):
    # Root may write anywhere, so a missing mount point replaces a read-only one in this test.
    missing = tmp_path / "missing"
    mountinfo = write_text(tmp_path / "mountinfo", f"41 31 0:38 / {missing} rw - cgroup2 cgroup2 rw\n")
    proc_cgroup = write_text(tmp_path / "cgroup", "0::/\n")

    with caplog.at_level(logging.INFO, logger="procq.supervisor.cgroups"):
        assert CgroupTree.open("procq-test-ro", mountinfo=mountinfo, proc_cgroup=proc_cgroup) is None

    assert "is not writable" in caplog.text


@pytest.mark.parametrize(
    ("root", "own", "expected_parent"),
    [("/", "/system.slice/procq.service", "system.slice/procq.service"), ("/docker/abc", "/docker/abc/sub", "sub")],
    ids=["mount-root", "bind-mounted-subtree"],
)
def test_open_places_group_under_own(tmp_path, root, own, expected_parent):
    # A plain directory replaces the cgroup2 mount, so the tree has no cgroup.kill.
    mount = tmp_path / "mount"
    (mount / expected_parent).mkdir(parents=True)
    mountinfo = write_text(tmp_path / "mountinfo", f"41 31 0:38 {root} {mount} rw - cgroup2 cgroup2 rw\n")
    proc_cgroup = write_text(tmp_path / "cgroup", f"0::{own}\n")

    opened = CgroupTree.open("procq-1234", mountinfo=mountinfo, proc_cgroup=proc_cgroup)

    assert opened is not None
    assert opened.path == str(mount / expected_parent / "procq-1234")
    assert os.path.isdir(opened.path)
    assert opened.has_kill is False


def test_open_rejects_invalid_name():
    with pytest.raises(ValueError, match="invalid cgroup name"):
        CgroupTree.open("a/b")


def test_open_creates_run_group_with_kill(tree):
    assert os.path.isdir(tree.path)
    assert tree.has_kill is os.path.exists(os.path.join(tree.path, "cgroup.kill"))
    assert tree.procs(tree.path) == []


def test_create_worker_group(tree):
    path = tree.create_worker_group("worker-1")

    assert path == os.path.join(tree.path, "worker-1")
    assert os.path.isdir(path)


def test_create_worker_group_rejects_invalid_name(tree):
    with pytest.raises(ValueError, match="invalid cgroup name"):
        tree.create_worker_group("../escape")


@pytest.mark.parametrize("has_kill", [True, False], ids=["cgroup.kill", "signal-each-pid"])
def test_kill_group_stops_whole_tree(tree, spawn, has_kill):
    if has_kill and not tree.has_kill:
        pytest.skip("this kernel has no cgroup.kill (Linux < 5.14)")
    tree.has_kill = has_kill
    group = tree.create_worker_group("worker-1")
    bystander = spawn(JOIN_AND_SLEEP, unique_marker(), tree.create_worker_group("worker-2")).refs()[0]
    processes = spawn(TREE_IN_GROUP, unique_marker(), group).refs()

    assert sorted(tree.procs(group)) == sorted(process.pid for process in processes)

    killed = tree.kill(group)

    assert killed == 4
    assert wait_until_gone(processes) == []
    assert tree.procs(group) == []
    assert not is_gone(bystander)
    assert tree.remove(group) is True
    assert not os.path.exists(group)


def test_kill_counts_processes_in_child_groups(tree, spawn):
    group = tree.create_worker_group("worker-1")
    child_group = os.path.join(group, "nested")
    os.mkdir(child_group)
    process = spawn(JOIN_AND_SLEEP, unique_marker(), child_group).refs()[0]

    assert tree.procs(group) == []
    assert tree.procs(group, recursive=True) == [process.pid]
    assert tree.kill(group) == 1
    assert wait_until_gone([process]) == []
    assert tree.remove(group) is True


def test_kill_of_missing_group_is_zero(tree):
    assert tree.kill(os.path.join(tree.path, "never-created")) == 0


def test_kill_logs_group_and_pids(tree, spawn, caplog):
    group = tree.create_worker_group("worker-1")
    process = spawn(JOIN_AND_SLEEP, unique_marker(), group).refs()[0]

    with caplog.at_level(logging.INFO, logger="procq.supervisor.cgroups"):
        tree.kill(group)

    assert f"killed cgroup {group}: SIGKILL to 1 processes, pids [{process.pid}]" in caplog.text


def test_create_worker_group_reuses_existing(tree, spawn):
    group = tree.create_worker_group("worker-1")
    os.mkdir(os.path.join(group, "nested"))
    process = spawn(JOIN_AND_SLEEP, unique_marker(), group).refs()[0]

    reused = tree.create_worker_group("worker-1")

    assert reused == group
    assert wait_until_gone([process]) == []
    assert tree.procs(group) == []
    assert not os.path.exists(os.path.join(group, "nested"))


def test_remove_populated_group_fails(tree, spawn, monkeypatch, caplog):
    monkeypatch.setattr(cgroups, "REMOVE_TIMEOUT_S", 0.05)
    group = tree.create_worker_group("worker-1")
    spawn(JOIN_AND_SLEEP, unique_marker(), group).refs()

    with caplog.at_level(logging.WARNING, logger="procq.supervisor.cgroups"):
        removed = tree.remove(group)

    assert removed is False
    assert os.path.isdir(group)
    assert f"failed to remove cgroup {group}" in caplog.text


def test_close_kills_and_removes_groups(spawn):
    opened = CgroupTree.open(f"procq-test-{uuid.uuid4().hex}")
    if opened is None:
        pytest.skip("cgroup v2 is not mounted or not writable here")
    try:
        processes = [
            spawn(JOIN_AND_SLEEP, unique_marker(), opened.create_worker_group(f"worker-{number}")).refs()[0]
            for number in (1, 2)
        ]

        opened.close()

        assert wait_until_gone(processes) == []
        assert not os.path.exists(opened.path)
    finally:
        opened.close()


def test_open_empties_existing_run_group(tree, spawn):
    process = spawn(JOIN_AND_SLEEP, unique_marker(), tree.create_worker_group("worker-1")).refs()[0]
    run_name = os.path.basename(tree.path)

    reopened = CgroupTree.open(run_name)

    assert reopened is not None
    assert reopened.path == tree.path
    assert wait_until_gone([process]) == []
    assert [entry.name for entry in os.scandir(tree.path) if entry.is_dir()] == []


def test_remove_stale_groups(tree, spawn):
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as file:
        dead_pid = int(file.read())  # pids are always below pid_max
    live_pid = os.getpid()

    dead_owner = tree.create_worker_group(f"procq-{dead_pid}")
    dead_owner_worker = os.path.join(dead_owner, "worker-1")
    os.mkdir(dead_owner_worker)
    orphan = spawn(JOIN_AND_SLEEP, unique_marker(), dead_owner_worker).refs()[0]

    # A live process that started after the group was created cannot own it: its pid was reused.
    reused_pid_group = tree.create_worker_group(f"procq-{live_pid}")
    hour_ago = time.time() - 3600
    os.utime(reused_pid_group, (hour_ago, hour_ago))

    live_group = tree.create_worker_group(f"procq-{psutil.Process().ppid()}")
    current = tree.create_worker_group(f"procq-{dead_pid - 1}")
    unrelated = tree.create_worker_group("other-123")

    removed = cgroups.remove_stale_groups(tree.path, current_name=os.path.basename(current))

    assert sorted(removed) == sorted([dead_owner, reused_pid_group])
    assert wait_until_gone([orphan]) == []
    assert not os.path.exists(dead_owner)
    assert not os.path.exists(reused_pid_group)
    assert os.path.isdir(live_group)
    assert os.path.isdir(current)
    assert os.path.isdir(unrelated)


def test_remove_stale_groups_of_missing_parent(tmp_path):
    assert cgroups.remove_stale_groups(str(tmp_path / "missing"), current_name="procq-1") == []


def test_join_rejects_missing_group(tmp_path):
    with pytest.raises(OSError):
        cgroups.join(str(tmp_path / "missing"))
