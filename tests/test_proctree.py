"""Tests for procq.supervisor.proctree against real process trees.

Every scenario runs under a reaper: a helper process that is a child subreaper
(PR_SET_CHILD_SUBREAPER), so that double-forked orphans are re-parented to it and reaped when
they die instead of escaping to PID 1. Each process a test starts carries PROCQ_TEST_RUN=<uuid>
in its environment, and the fixture's finalizer kills every process with that marker.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from procq.supervisor import proctree
from procq.supervisor.proctree import ProcessRef

ATTEMPT_VARIABLE = "PROCQ_ATTEMPT"
TEST_RUN_VARIABLE = "PROCQ_TEST_RUN"
WAIT_TIMEOUT_S = 10.0

# Runs the command in argv[2:] with the extra environment in argv[1] (JSON), in a new session,
# and reaps its own children and every orphan re-parented to it until stdin is closed and no
# child is left.
REAPER = r"""
import ctypes, json, os, select, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
subprocess.Popen(sys.argv[2:], env=dict(os.environ, **json.loads(sys.argv[1])), start_new_session=True)
stdin_closed = False
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        if stdin_closed:
            break
    if not stdin_closed and select.select([0], [], [], 0.01)[0]:
        stdin_closed = not os.read(0, 1)
    elif stdin_closed:
        select.select([], [], [], 0.01)
"""

# Each scenario prints one line: the pids of the processes it started, its own first.
POPEN_SLEEP = r"""
import os, subprocess, time
child = subprocess.Popen(["sleep", "1000"])
print(os.getpid(), child.pid, flush=True)
time.sleep(1000)
"""

SETSID_CHILD = r"""
import os, time
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.setsid()
    os.write(write_end, b"x")
    time.sleep(1000)
    os._exit(0)
os.read(read_end, 1)
print(os.getpid(), child, flush=True)
time.sleep(1000)
"""

DOUBLE_FORK = r"""
import os, time
read_end, write_end = os.pipe()
intermediate = os.fork()
if intermediate == 0:
    if os.fork() == 0:
        os.setsid()
        os.write(write_end, str(os.getpid()).encode().ljust(16))
        time.sleep(1000)
        os._exit(0)
    os._exit(0)
os.waitpid(intermediate, 0)
orphan = int(os.read(read_end, 16))
print(os.getpid(), orphan, flush=True)
time.sleep(1000)
"""

IDLE = r"""
import os, time
print(os.getpid(), flush=True)
time.sleep(1000)
"""

# Forks a new sleeping child every millisecond, at most 300, so that a kill races with fork.
FORK_LOOP = r"""
import os, time
print(os.getpid(), flush=True)
for _ in range(300):
    if os.fork() == 0:
        time.sleep(1000)
        os._exit(0)
    time.sleep(0.001)
time.sleep(1000)
"""


class Scenario:
    """One scenario started under its own reaper process."""

    def __init__(self, reaper: subprocess.Popen, marker: str) -> None:
        self.reaper = reaper
        self.marker = marker
        self._buffer = b""

    def read_pids(self) -> list[int]:
        """Return the pids from the scenario's line of output, waiting up to WAIT_TIMEOUT_S."""
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"scenario {self.marker} printed no pids within {WAIT_TIMEOUT_S} s"
            if select.select([self.reaper.stdout], [], [], remaining)[0]:
                chunk = os.read(self.reaper.stdout.fileno(), 4096)
                assert chunk, f"scenario {self.marker} closed its output before printing pids"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return [int(word) for word in line.split()]

    def refs(self) -> list[ProcessRef]:
        """Return the ProcessRefs of the pids the scenario printed."""
        refs = [proctree.ref(pid) for pid in self.read_pids()]
        assert None not in refs, "a scenario process exited before the test looked at it"
        return refs


@pytest.fixture
def spawn():
    """Return a function that starts a scenario script under a reaper with PROCQ_ATTEMPT=marker.

    The finalizer kills every process the test started, even if the test failed, and reaps the reapers.
    """
    test_run = uuid.uuid4().hex
    reapers: list[subprocess.Popen] = []

    def start(script: str, marker: str, *args: str) -> Scenario:
        environment = {ATTEMPT_VARIABLE: marker, TEST_RUN_VARIABLE: test_run}
        command = [sys.executable, "-c", script, *args]
        reaper = subprocess.Popen(
            [sys.executable, "-c", REAPER, json.dumps(environment), *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        reapers.append(reaper)
        return Scenario(reaper, marker)

    yield start

    kill_marked_processes(TEST_RUN_VARIABLE, test_run)
    for reaper in reapers:
        reaper.stdin.close()
        reaper.stdout.close()
        try:
            reaper.wait(timeout=WAIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            reaper.kill()
            reaper.wait()


def kill_marked_processes(variable: str, value: str) -> None:
    """Send SIGKILL to every process whose environment has variable=value, using psutil only."""
    for process in psutil.process_iter():
        try:
            if process.environ().get(variable) == value:
                process.kill()
        except psutil.Error:
            continue


def unique_marker() -> str:
    return f"{uuid.uuid4().hex}/worker-1"


def is_gone(process: ProcessRef) -> bool:
    """Return True once the process has exited and been reaped (no zombie left)."""
    try:
        return psutil.Process(process.pid).create_time() != process.create_time
    except psutil.NoSuchProcess:
        return True


def is_running(process: ProcessRef) -> bool:
    try:
        current = psutil.Process(process.pid)
        return current.create_time() == process.create_time and current.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_gone(processes, timeout_s: float = WAIT_TIMEOUT_S) -> list[ProcessRef]:
    """Wait until every process is gone; return the ones still present after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    remaining = [process for process in processes if not is_gone(process)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.01)
        remaining = [process for process in remaining if not is_gone(process)]
    return remaining


def test_ref_of_running_process():
    process_ref = proctree.ref(os.getpid())

    assert process_ref == ProcessRef(os.getpid(), psutil.Process().create_time())


def test_ref_of_missing_pid():
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as file:
        pid_max = int(file.read())

    # pids are always below pid_max, so this one never exists.
    assert proctree.ref(pid_max) is None


def test_descendants_finds_popen_child(spawn):
    scenario = spawn(POPEN_SLEEP, unique_marker())
    parent, sleep = scenario.refs()

    found = proctree.descendants(parent.pid)

    assert found == {sleep}


def test_descendants_of_missing_pid_is_empty():
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as file:
        pid_max = int(file.read())

    assert proctree.descendants(pid_max) == set()


def test_kill_descendants_and_parent(spawn):
    scenario = spawn(POPEN_SLEEP, unique_marker())
    bystander = spawn(IDLE, unique_marker()).refs()[0]
    parent, sleep = scenario.refs()

    killed = proctree.kill_until_gone(lambda: proctree.descendants(parent.pid) | {parent})

    assert killed == 2
    assert wait_until_gone([parent, sleep]) == []
    assert is_running(bystander)


def test_group_members_excludes_setsid_child(spawn):
    scenario = spawn(SETSID_CHILD, unique_marker())
    parent, session_leader = scenario.refs()

    # The reaper started the scenario in a new session, so its pgid is its own pid.
    members = proctree.group_members(parent.pid)

    assert parent in members
    assert session_leader not in members
    assert os.getpgid(session_leader.pid) == session_leader.pid


def test_group_members_includes_popen_child(spawn):
    scenario = spawn(POPEN_SLEEP, unique_marker())
    parent, sleep = scenario.refs()

    members = proctree.group_members(parent.pid)

    assert members == {parent, sleep}


def test_marked_finds_setsid_child(spawn):
    marker = unique_marker()
    scenario = spawn(SETSID_CHILD, marker)
    bystander = spawn(IDLE, unique_marker()).refs()[0]
    parent, session_leader = scenario.refs()

    found = proctree.marked(ATTEMPT_VARIABLE, marker)
    killed = proctree.kill(found)

    assert found == {parent, session_leader}
    assert killed == 2
    assert wait_until_gone([parent, session_leader]) == []
    assert is_running(bystander)


def test_marked_finds_double_forked_orphan(spawn):
    marker = unique_marker()
    scenario = spawn(DOUBLE_FORK, marker)
    bystander = spawn(IDLE, unique_marker()).refs()[0]
    parent, orphan = scenario.refs()

    assert psutil.Process(orphan.pid).ppid() == scenario.reaper.pid
    assert orphan not in proctree.descendants(parent.pid)

    killed = proctree.kill_until_gone(lambda: proctree.marked(ATTEMPT_VARIABLE, marker))

    assert killed == 2
    assert wait_until_gone([parent, orphan]) == []
    assert is_running(bystander)


def test_marked_prefix_finds_whole_run(spawn):
    run_id = uuid.uuid4().hex
    first = spawn(IDLE, f"{run_id}/worker-1").refs()[0]
    second = spawn(POPEN_SLEEP, f"{run_id}/worker-2").refs()
    other_run = spawn(IDLE, f"{uuid.uuid4().hex}/worker-1").refs()[0]

    found = proctree.marked_prefix(ATTEMPT_VARIABLE, f"{run_id}/")

    assert found == {first, *second}
    assert other_run not in found


def test_marked_does_not_match_value_prefix(spawn):
    marker = unique_marker()
    process = spawn(IDLE, marker).refs()[0]

    assert process in proctree.marked(ATTEMPT_VARIABLE, marker)
    assert proctree.marked(ATTEMPT_VARIABLE, marker[:-1]) == set()


def test_kill_skips_ref_with_wrong_create_time(spawn):
    process = spawn(IDLE, unique_marker()).refs()[0]
    stale = ProcessRef(process.pid, process.create_time - 100.0)

    killed = proctree.kill([stale])

    assert killed == 0
    # Nothing to wait for when no signal was sent: give a wrongly sent SIGKILL time to land.
    time.sleep(0.2)
    assert is_running(process)


def test_kill_skips_protected_pids():
    protected = [proctree.ref(1), proctree.ref(os.getpid()), proctree.ref(os.getppid())]

    # Signal 0 only checks that the process exists, so a failure here hurts nothing.
    killed = proctree.kill([process for process in protected if process is not None], sig=0)

    assert killed == 0


def test_kill_with_signal_zero_counts_live_process(spawn):
    process = spawn(IDLE, unique_marker()).refs()[0]

    assert proctree.kill([process], sig=0) == 1
    assert is_running(process)


def test_kill_tolerates_exited_process(spawn):
    process = spawn(IDLE, unique_marker()).refs()[0]
    assert proctree.kill([process]) == 1
    assert wait_until_gone([process]) == []

    assert proctree.kill([process]) == 0


def test_kill_logs_signal_and_pids(spawn, caplog):
    process = spawn(IDLE, unique_marker()).refs()[0]

    with caplog.at_level(logging.INFO, logger="procq.supervisor.proctree"):
        proctree.kill([process])

    assert f"sent SIGKILL to 1 processes, pids [{process.pid}]" in caplog.text


def test_kill_until_gone_catches_late_forks(spawn):
    marker = unique_marker()
    forker = spawn(FORK_LOOP, marker).refs()[0]
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while len(proctree.descendants(forker.pid)) < 5:
        assert time.monotonic() < deadline, "the fork loop started no children"
        time.sleep(0.01)

    killed = proctree.kill_until_gone(lambda: proctree.marked(ATTEMPT_VARIABLE, marker))

    assert killed >= 6
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while proctree.marked(ATTEMPT_VARIABLE, marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proctree.marked(ATTEMPT_VARIABLE, marker) == set()


def test_kill_until_gone_with_nothing_to_kill():
    assert proctree.kill_until_gone(set) == 0


def test_kill_until_gone_stops_after_timeout(caplog):
    # A collect that returns a new (nonexistent) process every round never converges.
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as file:
        pid_max = int(file.read())
    rounds = iter(range(1, 10**6))

    def collect():
        return {ProcessRef(pid_max, float(next(rounds)))}

    with caplog.at_level(logging.WARNING, logger="procq.supervisor.proctree"):
        killed = proctree.kill_until_gone(collect, timeout_s=0.05)

    assert killed == 0
    assert "kill timed out after" in caplog.text
