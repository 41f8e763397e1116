"""Tests for procq.supervisor.memory against real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from procq.supervisor import memory
from procq.supervisor.cgroups import CgroupTree
from procq.supervisor.proctree import ProcessRef

# TODO: move the `spawn` fixture and its helpers from test_proctree to conftest.py.
from tests.test_proctree import spawn, unique_marker  # noqa: F401

MIB = 2**20

# Writes every byte of 200 MiB, so that all of its pages are resident and private to the process.
ALLOCATE_200_MIB = r"""
import os, time
data = bytearray(b"x") * (200 * 2**20)
print(os.getpid(), flush=True)
time.sleep(1000)
"""

IDLE = r"""
import os, time
print(os.getpid(), flush=True)
time.sleep(1000)
"""

# An idle parent whose child allocates 200 MiB and whose other child is an idle sleep.
PARENT_OF_ALLOCATOR = r"""
import os, subprocess, sys, time
allocator = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE)
allocator_pid = allocator.stdout.readline().split()[0].decode()
sleep = subprocess.Popen(["sleep", "1000"])
print(os.getpid(), allocator_pid, sleep.pid, flush=True)
time.sleep(1000)
"""

EXIT_AT_ONCE = r"""
import os
print(os.getpid(), flush=True)
"""


def pid_max() -> int:
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as file:
        return int(file.read())


def test_tree_memory_counts_allocated_memory(spawn):
    allocator = spawn(ALLOCATE_200_MIB, unique_marker()).refs()[0]

    measured = memory.tree_memory_bytes(allocator.pid)

    assert measured is not None
    assert measured > 150 * MIB


def test_tree_memory_of_idle_process_is_small(spawn):
    idle = spawn(IDLE, unique_marker()).refs()[0]

    measured = memory.tree_memory_bytes(idle.pid)

    assert measured is not None
    assert 0 < measured < 50 * MIB


def test_tree_memory_includes_descendants(spawn):
    parent, allocator, sleep = spawn(PARENT_OF_ALLOCATOR, unique_marker(), ALLOCATE_200_MIB).refs()

    measured = memory.tree_memory_bytes(parent.pid)
    parent_alone = psutil.Process(parent.pid).memory_full_info().uss

    assert parent_alone < 50 * MIB
    assert measured is not None
    assert measured > 150 * MIB


def test_tree_memory_counts_extra_process(spawn):
    idle = spawn(IDLE, unique_marker()).refs()[0]
    allocator = spawn(ALLOCATE_200_MIB, unique_marker()).refs()[0]

    measured = memory.tree_memory_bytes(idle.pid, extra=[allocator])

    assert measured is not None
    assert measured > 150 * MIB


def test_tree_memory_skips_extra_with_reused_pid(spawn):
    idle = spawn(IDLE, unique_marker()).refs()[0]
    allocator = spawn(ALLOCATE_200_MIB, unique_marker()).refs()[0]
    stale = ProcessRef(allocator.pid, allocator.create_time - 100.0)

    measured = memory.tree_memory_bytes(idle.pid, extra=[stale])

    assert measured is not None
    assert measured < 50 * MIB


def test_tree_memory_counts_extra_once(spawn):
    parent, allocator, sleep = spawn(PARENT_OF_ALLOCATOR, unique_marker(), ALLOCATE_200_MIB).refs()

    without_extra = memory.tree_memory_bytes(parent.pid)
    with_extra = memory.tree_memory_bytes(parent.pid, extra=[allocator, allocator])

    assert without_extra is not None
    assert with_extra is not None
    # The allocator's USS may drift by a few pages between the two calls, never by 150 MiB.
    assert abs(with_extra - without_extra) < 10 * MIB


def test_tree_memory_of_missing_pid_is_none():
    assert memory.tree_memory_bytes(pid_max()) is None


def test_tree_memory_of_zombie_is_none():
    # Started directly, so that this test is the parent and decides when it is reaped.
    child = subprocess.Popen([sys.executable, "-c", EXIT_AT_ONCE], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        deadline = time.monotonic() + 10.0
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "child did not exit"
            time.sleep(0.01)

        assert memory.tree_memory_bytes(child.pid) is None
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_cgroup_memory_reads_memory_current(tmp_path):
    (tmp_path / "memory.current").write_text("12345678\n", encoding="ascii")

    assert memory.cgroup_memory_bytes(str(tmp_path)) == 12345678


def test_cgroup_memory_without_controller_is_none(tmp_path):
    assert memory.cgroup_memory_bytes(str(tmp_path)) is None


def test_cgroup_memory_of_invalid_file_is_none(tmp_path):
    (tmp_path / "memory.current").write_text("max\n", encoding="ascii")

    assert memory.cgroup_memory_bytes(str(tmp_path)) is None


def test_cgroup_memory_of_real_group():
    tree = CgroupTree.open(f"procq-test-{uuid.uuid4().hex}")
    if tree is None:
        pytest.skip("cgroup v2 is not mounted or not writable here")
    try:
        group = tree.create_worker_group("worker-1")
        has_controller = os.path.exists(os.path.join(group, "memory.current"))

        measured = memory.cgroup_memory_bytes(group)

        if has_controller:
            assert isinstance(measured, int)
        else:
            assert measured is None
    finally:
        tree.close()

