"""The `procq` command against a real supervisor: output, JSON and exit codes.

Most tests drive the command in-process with click's CliRunner. The unreachable-socket,
option-placement, progress-bar and `top` tests run it as a real process, the last two
under a pseudo-terminal. Each test uses its own queue names, so the tests
do not depend on what other tests left in the supervisor's store.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid

import pytest
from click.testing import CliRunner

import procq
from procq.cli.main import main
from procq.taskinfo import TASK_KEYS

CANCEL_KEYS = {"id", "state", "previous_state", "already_final", "stopped_by"}
WAIT_S = 20.0


# -- helpers ----------------------------------------------------------------------------

def run_cli(supervisor, *args: str):
    """Run `procq --socket SOCKET ARGS...` in-process and return click's Result."""
    return CliRunner().invoke(main, ["--socket", supervisor.socket, *args], catch_exceptions=False)


def run_json(supervisor, *args: str):
    result = run_cli(supervisor, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def procq_process(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the `procq` command as a real process."""
    return subprocess.run([sys.executable, "-m", "procq.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def unique_queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def enqueue(supervisor, name: str, *args: str) -> str:
    result = run_cli(supervisor, "enqueue", name, *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def wait_for_state(supervisor, task_id: str, state: str, timeout_s: float = WAIT_S) -> procq.TaskInfo:
    with supervisor.client() as client:
        end = time.monotonic() + timeout_s
        while True:
            task = client.get(task_id)
            if task.state == state:
                return task
            assert time.monotonic() < end, f"task {task_id} is {task.state}, expected {state}"
            time.sleep(0.05)


def wait_final(supervisor, task_id: str) -> procq.TaskInfo:
    with supervisor.client() as client:
        return client.wait(task_id, timeout=WAIT_S)


def get_task(supervisor, task_id: str) -> procq.TaskInfo:
    with supervisor.client() as client:
        return client.get(task_id)


def run_to_completion(supervisor, queue: str) -> None:
    """Enqueue an echo in `queue` and wait for it: proof that the pool is dispatching."""
    task_id = enqueue(supervisor, "echo", "--queue", queue)
    assert wait_final(supervisor, task_id).state == "completed"


def set_window_size(fd: int, rows: int, columns: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def read_pty_until(fd: int, pattern: bytes, timeout_s: float) -> bytes:
    """Read from a pseudo-terminal until `pattern` appears; return everything read."""
    data = b""
    end = time.monotonic() + timeout_s
    while pattern not in data and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def wait_child(pid: int, fd: int, timeout_s: float) -> int | None:
    """Wait for a pty child to exit while draining its output; return its exit code."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        read_pty_until(fd, b"\0never\0", 0.1)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
    return None


# -- task ls ----------------------------------------------------------------------------

def test_task_ls_filters(supervisor):
    queue_a, queue_b = unique_queue(), unique_queue()
    echo_id = enqueue(supervisor, "echo", "--queue", queue_a)
    fail_id = enqueue(supervisor, "fail", "--queue", queue_b)
    second_echo_id = enqueue(supervisor, "echo", "--queue", queue_a)
    for task_id in (echo_id, fail_id, second_echo_id):
        wait_final(supervisor, task_id)

    by_queue = run_json(supervisor, "task", "ls", "--queue", queue_a)
    assert [task["id"] for task in by_queue] == [second_echo_id, echo_id]

    by_state = run_json(supervisor, "task", "ls", "--queue", queue_b, "--state=failed")
    assert [task["id"] for task in by_state] == [fail_id]
    by_state_spaced = run_json(supervisor, "task", "ls", "--queue", queue_b, "--state", "failed")
    assert by_state_spaced == by_state
    assert run_json(supervisor, "task", "ls", "--queue", queue_b, "--state", "completed") == []

    by_name = run_json(supervisor, "task", "ls", "--name", "fail", "--limit", "1000")
    assert fail_id in [task["id"] for task in by_name]
    assert {task["name"] for task in by_name} == {"fail"}

    limited = run_json(supervisor, "task", "ls", "--queue", queue_a, "--limit", "1")
    assert [task["id"] for task in limited] == [second_echo_id]


def test_task_ls_json_uses_taskinfo_keys(supervisor):
    queue = unique_queue()
    wait_final(supervisor, enqueue(supervisor, "echo", "--queue", queue))
    tasks = run_json(supervisor, "task", "ls", "--queue", queue)
    assert len(tasks) == 1
    assert list(tasks[0]) == list(TASK_KEYS)


def test_task_ls_table_shows_active_columns(supervisor):
    queue = unique_queue()
    task_id = enqueue(supervisor, "sleep", "30", "--queue", queue)
    try:
        task = wait_for_state(supervisor, task_id, "active")
        result = run_cli(supervisor, "task", "ls", "--queue", queue)
        assert result.exit_code == 0, result.stderr
        header, row = result.stdout.splitlines()
        assert header.split() == ["ID", "NAME", "QUEUE", "STATE", "OUTCOME", "ATTEMPT",
                                  "WORKER", "RUNNING", "LEFT", "PROGRESS"]
        # 80 columns cannot hold a 32-character id and every active column: the id is cut.
        assert row.startswith(task_id[:11])
        assert f" {task.worker_pid} " in row
        assert " active " in row
        for line in result.stdout.splitlines():
            assert len(line) <= 80
    finally:
        run_cli(supervisor, "task", "cancel", task_id)


def test_task_ls_without_tasks_prints_nothing_on_stdout(supervisor):
    result = run_cli(supervisor, "task", "ls", "--queue", unique_queue())
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no tasks match" in result.stderr


# -- task inspect -----------------------------------------------------------------------

def test_task_inspect_failed_shows_traceback(supervisor):
    task_id = enqueue(supervisor, "fail", "kaboom")
    wait_final(supervisor, task_id)
    result = run_cli(supervisor, "task", "inspect", task_id)
    assert result.exit_code == 0, result.stderr
    assert f"id:              {task_id}" in result.stdout
    assert re.search(r"^state: +failed$", result.stdout, re.MULTILINE)
    assert re.search(r"^outcome: +error$", result.stdout, re.MULTILINE)
    assert "Traceback (most recent call last)" in result.stdout
    assert "ValueError: kaboom" in result.stdout
    assert re.search(r"^  #1: error$", result.stdout, re.MULTILINE)


def test_task_inspect_killed_task_names_signal(supervisor):
    task_id = enqueue(supervisor, "ignore_cancel", "--timeout", "300ms", "--grace", "300ms")
    wait_final(supervisor, task_id)
    result = run_cli(supervisor, "task", "inspect", task_id)
    assert result.exit_code == 0, result.stderr
    assert re.search(r"^exit: +signal 9 \(SIGKILL\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^soft signal at: .*, \d+\.\d\dms late$", result.stdout, re.MULTILINE)
    assert re.search(r"^kill at: .*, \d+\.\d\dms late$", result.stdout, re.MULTILINE)
    assert re.search(r"^  #1: timeout$", result.stdout, re.MULTILINE)


def test_task_inspect_json_matches_taskinfo(supervisor):
    task_id = enqueue(supervisor, "echo", "1")
    wait_final(supervisor, task_id)
    data = run_json(supervisor, "task", "inspect", task_id)
    assert list(data) == list(TASK_KEYS)
    assert data == get_task(supervisor, task_id).to_dict()


def test_task_inspect_unknown_id_exits_1(supervisor):
    result = run_cli(supervisor, "task", "inspect", "no-such-task")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "no-such-task" in result.stderr


# -- task cancel ------------------------------------------------------------------------

def test_cancel_pending_task(supervisor):
    queue = unique_queue()
    run_cli(supervisor, "queue", "pause", queue)
    task_id = enqueue(supervisor, "echo", "--queue", queue)
    result = run_cli(supervisor, "task", "cancel", task_id)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{task_id}: cancelled (was pending)\n"
    assert get_task(supervisor, task_id).state == "cancelled"


def test_cancel_active_task_by_soft_signal(supervisor):
    task_id = enqueue(supervisor, "sleep", "30")
    wait_for_state(supervisor, task_id, "active")
    result = run_cli(supervisor, "task", "cancel", task_id)
    assert result.exit_code == 0, result.stderr
    assert re.fullmatch(rf"{task_id}: cancelled \(stopped by soft signal after \d+\.\d\ds\)\n",
                        result.stdout)


def test_cancel_active_task_killed_after_grace(supervisor):
    task_id = enqueue(supervisor, "ignore_cancel", "--grace", "0.5")
    wait_for_state(supervisor, task_id, "active")
    result = run_cli(supervisor, "task", "cancel", task_id, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [{
        "id": task_id, "state": "cancelled", "previous_state": "active",
        "already_final": False, "stopped_by": "kill",
    }]
    text = run_cli(supervisor, "task", "cancel", task_id)
    assert text.stdout == f"{task_id}: already cancelled\n"


def test_cancel_killed_message(supervisor):
    task_id = enqueue(supervisor, "ignore_cancel", "--grace", "500ms")
    wait_for_state(supervisor, task_id, "active")
    result = run_cli(supervisor, "task", "cancel", task_id)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{task_id}: cancelled (killed after grace 0.5s)\n"


def test_cancel_no_wait_returns_while_stopping(supervisor):
    task_id = enqueue(supervisor, "ignore_cancel", "--grace", "1s")
    wait_for_state(supervisor, task_id, "active")
    result = run_cli(supervisor, "task", "cancel", task_id, "--no-wait")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{task_id}: cancelling (soft signal sent)\n"
    waited = run_cli(supervisor, "task", "wait", task_id)
    assert waited.exit_code == 1
    assert waited.stdout.startswith(f"{task_id}: cancelled")


def test_cancel_final_task(supervisor):
    task_id = enqueue(supervisor, "echo")
    wait_final(supervisor, task_id)
    result = run_cli(supervisor, "task", "cancel", task_id)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{task_id}: already completed\n"
    data = run_json(supervisor, "task", "cancel", task_id)
    assert data == [{"id": task_id, "state": "completed", "previous_state": "completed",
                     "already_final": True, "stopped_by": "none"}]


def test_cancel_unknown_task_exits_1(supervisor):
    queue = unique_queue()
    run_cli(supervisor, "queue", "pause", queue)
    task_id = enqueue(supervisor, "echo", "--queue", queue)
    result = run_cli(supervisor, "task", "cancel", "no-such-task", task_id, "--json")
    assert result.exit_code == 1
    assert "no-such-task" in result.stderr
    data = json.loads(result.stdout)
    assert [item["id"] for item in data] == [task_id]
    assert set(data[0]) == CANCEL_KEYS


def test_cancel_bulk_by_queue_and_state(supervisor):
    queue, other_queue = unique_queue(), unique_queue()
    run_cli(supervisor, "queue", "pause", queue)
    run_cli(supervisor, "queue", "pause", other_queue)
    task_ids = {enqueue(supervisor, "echo", str(n), "--queue", queue) for n in range(3)}
    scheduled_id = enqueue(supervisor, "echo", "--queue", queue, "--in", "1h")
    other_id = enqueue(supervisor, "echo", "--queue", other_queue)

    data = run_json(supervisor, "task", "cancel", "--queue", queue, "--state", "pending")
    assert {item["id"] for item in data} == task_ids
    assert {item["state"] for item in data} == {"cancelled"}
    assert {item["previous_state"] for item in data} == {"pending"}
    assert get_task(supervisor, scheduled_id).state == "scheduled"
    assert get_task(supervisor, other_id).state == "pending"

    result = run_cli(supervisor, "task", "cancel", "--queue", queue)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{scheduled_id}: cancelled (was scheduled)\n"


def test_cancel_rejects_final_state_filter(supervisor):
    result = run_cli(supervisor, "task", "cancel", "--state", "completed")
    assert result.exit_code == 2
    assert "'completed'" in result.stderr


# -- task wait --------------------------------------------------------------------------

def test_task_wait_completed_exits_0(supervisor):
    task_id = enqueue(supervisor, "add", "2", "3")
    result = run_cli(supervisor, "task", "wait", task_id)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{task_id}: completed (succeeded)")
    assert "result: 5" in result.stdout


def test_task_wait_failed_exits_1(supervisor):
    task_id = enqueue(supervisor, "fail", "nope")
    result = run_cli(supervisor, "task", "wait", task_id, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["state"] == "failed"
    assert "ValueError: nope" in data["error"]


def test_task_wait_timeout_exits_4(supervisor):
    task_id = enqueue(supervisor, "sleep", "30")
    try:
        started = time.monotonic()
        result = run_cli(supervisor, "task", "wait", task_id, "--timeout", "300ms")
        assert result.exit_code == 4
        assert time.monotonic() - started < 5
        assert task_id in result.stderr
    finally:
        run_cli(supervisor, "task", "cancel", task_id)


def test_task_wait_draws_progress_bar(supervisor):
    task_id = enqueue(supervisor, "progress", "12", "0.25")
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm"
        os.execv(sys.executable, [sys.executable, "-m", "procq.cli.main", "--socket",
                                  supervisor.socket, "task", "wait", task_id])
    try:
        set_window_size(fd, 24, 100)
        screen = read_pty_until(fd, b"] ", 15)
        assert b"[#" in screen, screen
        assert re.search(rb"\d+% \d+/12 step \d+", screen), screen
        screen += read_pty_until(fd, b"completed", 15)
        assert wait_child(pid, fd, 10) == 0
        assert f"{task_id}: completed (succeeded)".encode() in screen
    finally:
        os.close(fd)


# -- enqueue ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("90", 90.0), ("1.5s", 1.5), ("250ms", 0.25), ("5m", 300.0), ("2h", 7200.0), ("7d", 604800.0),
])
def test_enqueue_timeout_formats(supervisor, text, seconds):
    data = run_json(supervisor, "enqueue", "echo", "--timeout", text, "--grace", text)
    assert data["timeout_s"] == pytest.approx(seconds)
    assert data["grace_s"] == pytest.approx(min(seconds, 60.0))


def test_enqueue_timeout_none_means_no_limit(supervisor):
    data = run_json(supervisor, "enqueue", "echo", "--timeout", "none")
    assert data["timeout_s"] is None
    default = run_json(supervisor, "enqueue", "echo")
    assert default["timeout_s"] == 60.0


@pytest.mark.parametrize("text, size", [
    ("4096", 4096), ("64K", 64 * 1024), ("512M", 512 * 1024 ** 2), ("2G", 2 * 1024 ** 3),
])
def test_enqueue_max_memory_formats(supervisor, text, size):
    data = run_json(supervisor, "enqueue", "echo", "--max-memory", text)
    assert data["max_memory"] == size


def test_enqueue_deadline_formats(supervisor):
    target = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(hours=1)
    with_offset = target.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()
    with_z = target.strftime("%Y-%m-%dT%H:%M:%SZ")
    for text in (with_offset, with_z):
        data = run_json(supervisor, "enqueue", "echo", "--deadline", text)
        assert procq.TaskInfo.from_dict(data).deadline_at == target


def test_enqueue_at_and_in_schedule(supervisor):
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(hours=2)
    at = run_json(supervisor, "enqueue", "echo", "--at", start.isoformat())
    assert at["state"] == "scheduled"
    assert procq.TaskInfo.from_dict(at).scheduled_at == start

    before = dt.datetime.now(dt.timezone.utc)
    later = procq.TaskInfo.from_dict(run_json(supervisor, "enqueue", "echo", "--in", "5m"))
    assert later.state == "scheduled"
    delay_s = (later.scheduled_at - before).total_seconds()
    assert 299 <= delay_s <= 305
    run_cli(supervisor, "task", "cancel", at["id"], later.id)


def test_enqueue_parses_args_as_json(supervisor):
    result = run_cli(supervisor, "enqueue", "echo", "3", "abc", '"3"', "[1, 2]", "null",
                     "--kwargs", '{"k": {"n": 1}}', "--wait", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["args"] == [3, "abc", "3", [1, 2], None]
    assert data["kwargs"] == {"k": {"n": 1}}
    assert data["result"]["args"] == [3, "abc", "3", [1, 2], None]


def test_enqueue_options_reach_task(supervisor):
    queue = unique_queue()
    task_id = f"cli-{uuid.uuid4().hex[:8]}"
    data = run_json(supervisor, "task", "enqueue", "echo", "--queue", queue, "--id", task_id,
                    "--max-retry", "2", "--retention", "1h")
    assert data["id"] == task_id
    assert data["queue"] == queue
    assert data["max_retry"] == 2
    assert data["retention_s"] == 3600.0


def test_enqueue_wait_failed_exits_1(supervisor):
    result = run_cli(supervisor, "enqueue", "fail", "--wait")
    assert result.exit_code == 1
    assert re.match(r"\w+: failed \(error\)", result.stdout)
    assert "error: ValueError: boom" in result.stdout


def test_enqueue_duplicate_id_exits_2(supervisor):
    task_id = f"dup-{uuid.uuid4().hex[:8]}"
    assert enqueue(supervisor, "echo", "--id", task_id) == task_id
    result = run_cli(supervisor, "enqueue", "echo", "--id", task_id)
    assert result.exit_code == 2
    assert task_id in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_enqueue_unknown_handler_exits_2(supervisor):
    result = run_cli(supervisor, "enqueue", "no_such_handler")
    assert result.exit_code == 2
    assert "no_such_handler" in result.stderr


# -- invalid input ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, value", [
    (["task", "ls", "--state", "running"], "'running'"),
    (["task", "ls", "--limit", "zero"], "'zero'"),
    (["enqueue", "echo", "--timeout", "5x"], "'5x'"),
    (["enqueue", "echo", "--grace", "-1s"], "'-1s'"),
    (["enqueue", "echo", "--max-memory", "12Q"], "'12Q'"),
    (["enqueue", "echo", "--kwargs", "{bad"], "'{bad'"),
    (["enqueue", "echo", "--kwargs", "[1]"], "'[1]'"),
    (["enqueue", "echo", "--deadline", "2030-01-01T00:00:00"], "'2030-01-01T00:00:00'"),
    (["enqueue", "echo", "--deadline", "2001-01-01T00:00:00Z"], "2001-01-01T00:00:00+00:00"),
    (["enqueue", "echo", "--at", "soon"], "'soon'"),
    (["enqueue", "echo", "--max-retry", "-1"], "'-1'"),
    (["task", "delete", "--state", "active"], "'active'"),
    (["--connect-timeout", "fast", "task", "ls"], "'fast'"),
])
def test_invalid_input_exits_2(tmp_path, argv, value):
    result = CliRunner().invoke(main, ["--socket", str(tmp_path / "none.sock"), *argv])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert value in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_enqueue_rejects_in_with_at(tmp_path):
    result = CliRunner().invoke(main, ["--socket", str(tmp_path / "none.sock"), "enqueue", "echo",
                                       "--in", "5m", "--at", "2030-01-01T00:00:00Z"])
    assert result.exit_code == 2
    assert "--in or --at" in result.stderr


# -- connection -------------------------------------------------------------------------

def test_unreachable_socket_exits_3_within_timeout(tmp_path):
    address = str(tmp_path / "nobody.sock")
    started = time.monotonic()
    completed = procq_process("--socket", address, "--connect-timeout", "1", "task", "ls")
    elapsed_s = time.monotonic() - started
    assert completed.returncode == 3
    assert completed.stdout == ""
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert address in lines[0]
    assert "--socket" in lines[0]
    assert "PROCQ_SOCKET" in lines[0]
    assert elapsed_s < 1 + 4, "startup plus the 1 s connect timeout took too long"


def test_socket_option_after_leaf_wins(supervisor, tmp_path):
    env = {**os.environ, "PROCQ_SOCKET": str(tmp_path / "wrong.sock")}
    after_leaf = procq_process("--socket", str(tmp_path / "also-wrong.sock"), "task", "ls",
                               "--limit", "1", "--socket", supervisor.socket, "--json", env=env)
    assert after_leaf.returncode == 0, after_leaf.stderr
    assert isinstance(json.loads(after_leaf.stdout), list)

    from_env = procq_process("task", "ls", "--limit", "1", "--connect-timeout", "1",
                             env={**os.environ, "PROCQ_SOCKET": supervisor.socket})
    assert from_env.returncode == 0, from_env.stderr


def test_tcp_socket_rejected_with_exit_2():
    result = CliRunner().invoke(main, ["--socket", "tcp://127.0.0.1:5555", "task", "ls"])
    assert result.exit_code == 2
    assert "tcp://" in result.stderr


# -- queue ------------------------------------------------------------------------------

def queue_info(supervisor, name: str) -> dict:
    queues = run_json(supervisor, "queue", "ls")
    matches = [queue for queue in queues if queue["name"] == name]
    assert len(matches) == 1, queues
    return matches[0]


def test_queue_pause_holds_tasks_until_resume(supervisor):
    queue = unique_queue()
    assert run_cli(supervisor, "queue", "pause", queue).exit_code == 0
    task_id = enqueue(supervisor, "echo", "--queue", queue)
    run_to_completion(supervisor, unique_queue())
    assert get_task(supervisor, task_id).state == "pending"

    info = queue_info(supervisor, queue)
    assert info["paused"] is True
    assert info["counts"]["pending"] == 1
    table = run_cli(supervisor, "queue", "ls")
    row = [line for line in table.stdout.splitlines() if line.startswith(queue)]
    assert row and " yes " in row[0]

    assert run_cli(supervisor, "queue", "resume", queue).exit_code == 0
    assert wait_final(supervisor, task_id).state == "completed"
    assert queue_info(supervisor, queue)["paused"] is False


def test_queue_pause_survives_restart(supervisor):
    queue = unique_queue()
    run_cli(supervisor, "queue", "pause", queue)
    task_id = enqueue(supervisor, "echo", "--queue", queue)

    supervisor.restart()

    assert queue_info(supervisor, queue)["paused"] is True
    run_to_completion(supervisor, unique_queue())
    assert get_task(supervisor, task_id).state == "pending"
    run_cli(supervisor, "queue", "resume", queue)
    assert wait_final(supervisor, task_id).state == "completed"


# -- worker, stats, status --------------------------------------------------------------

def test_worker_ls_shows_busy_worker_with_task(supervisor):
    task_id = enqueue(supervisor, "sleep", "30")
    try:
        task = wait_for_state(supervisor, task_id, "active")
        workers = run_json(supervisor, "worker", "ls")
        busy = [worker for worker in workers if worker["task_id"] == task_id]
        assert len(busy) == 1, workers
        assert busy[0]["pid"] == task.worker_pid
        assert busy[0]["state"] == "busy"

        table = run_cli(supervisor, "worker", "ls")
        assert table.stdout.split()[:9] == ["PID", "STATE", "TASK", "RUNNING", "CPU%", "RSS",
                                            "USS", "DONE", "AGE"]
        row = [line for line in table.stdout.splitlines() if line.split()[0] == str(task.worker_pid)]
        assert row and " busy " in row[0]
        assert task_id[:8] in row[0]
    finally:
        run_cli(supervisor, "task", "cancel", task_id)


def test_stats_json_keys(supervisor):
    wait_final(supervisor, enqueue(supervisor, "echo"))
    stats = run_json(supervisor, "stats")
    for key in ("by_state", "by_outcome", "tasks_per_s_1m", "stops", "soft_lateness_ms",
                "kill_lateness_ms", "uptime_s", "workers"):
        assert key in stats
    text = run_cli(supervisor, "stats")
    assert re.search(r"^tasks by state: .*completed \d+", text.stdout, re.MULTILINE)


def test_supervisor_status(supervisor):
    status = run_json(supervisor, "supervisor", "status")
    assert status["version"] == procq.__version__
    assert os.path.samefile(status["db_path"], supervisor.db)
    text = run_cli(supervisor, "supervisor", "status")
    assert re.search(rf"^pid: +{status['pid']}$", text.stdout, re.MULTILINE)
    assert re.search(r"^draining: +no$", text.stdout, re.MULTILINE)


# -- retry and delete -------------------------------------------------------------------

def test_task_retry_links_retry_of(supervisor):
    old_id = enqueue(supervisor, "fail")
    wait_final(supervisor, old_id)
    result = run_cli(supervisor, "task", "retry", old_id)
    assert result.exit_code == 0, result.stderr
    new_id = result.stdout.strip()
    assert new_id and new_id != old_id
    new_task = wait_final(supervisor, new_id)
    assert new_task.retry_of == old_id
    assert new_task.name == "fail"

    again = run_json(supervisor, "task", "retry", new_id)
    assert again[0]["retry_of"] == new_id


def test_task_retry_unknown_exits_1(supervisor):
    result = run_cli(supervisor, "task", "retry", "no-such-task")
    assert result.exit_code == 1
    assert "no-such-task" in result.stderr


def test_task_delete_by_id(supervisor):
    done_id = enqueue(supervisor, "echo")
    wait_final(supervisor, done_id)
    queue = unique_queue()
    run_cli(supervisor, "queue", "pause", queue)
    pending_id = enqueue(supervisor, "echo", "--queue", queue)

    result = run_cli(supervisor, "task", "delete", done_id, pending_id)
    assert result.exit_code == 1
    assert result.stdout == f"{done_id}\n"
    assert pending_id in result.stderr
    with pytest.raises(procq.TaskNotFound):
        get_task(supervisor, done_id)
    assert get_task(supervisor, pending_id).state == "pending"


def test_task_delete_by_state_older_than(supervisor):
    task_id = enqueue(supervisor, "fail")
    wait_final(supervisor, task_id)
    deleted_recent = run_json(supervisor, "task", "delete", "--state", "failed", "--older-than", "1h")
    assert task_id not in deleted_recent
    assert get_task(supervisor, task_id).state == "failed"

    deleted = run_json(supervisor, "task", "delete", "--state", "failed")
    assert task_id in deleted
    with pytest.raises(procq.TaskNotFound):
        get_task(supervisor, task_id)


# -- drain and wait-idle ----------------------------------------------------------------

def test_drain_then_wait_idle(supervisor):
    queue = unique_queue()
    sleeper_id = enqueue(supervisor, "sleep", "1", "--queue", queue)
    wait_for_state(supervisor, sleeper_id, "active")
    assert run_cli(supervisor, "supervisor", "drain").exit_code == 0
    try:
        held_id = enqueue(supervisor, "echo", "--queue", queue)
        assert run_json(supervisor, "supervisor", "status")["draining"] is True

        result = run_cli(supervisor, "supervisor", "wait-idle", "--timeout", "20")
        assert result.exit_code == 0, result.stderr
        assert get_task(supervisor, sleeper_id).state == "completed"
        assert get_task(supervisor, held_id).state == "pending"
    finally:
        assert run_cli(supervisor, "supervisor", "resume").exit_code == 0
    assert wait_final(supervisor, held_id).state == "completed"


def test_wait_idle_timeout_exits_4(supervisor):
    task_id = enqueue(supervisor, "sleep", "30")
    try:
        wait_for_state(supervisor, task_id, "active")
        result = run_cli(supervisor, "supervisor", "wait-idle", "--timeout", "300ms")
        assert result.exit_code == 4
        assert "timed out after 0.3 s with tasks still active" in result.stderr
    finally:
        run_cli(supervisor, "task", "cancel", task_id)


# -- top --------------------------------------------------------------------------------

def test_top_draws_workers_and_quits_on_q(supervisor):
    task_id = enqueue(supervisor, "sleep", "30")
    wait_for_state(supervisor, task_id, "active")
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm"
        os.execv(sys.executable, [sys.executable, "-m", "procq.cli.main", "top",
                                  "--socket", supervisor.socket])
    try:
        set_window_size(fd, 30, 100)
        screen = read_pty_until(fd, b"CPU%", 15)
        assert b"PID" in screen, screen
        screen += read_pty_until(fd, task_id[:8].encode(), 5)
        assert task_id[:8].encode() in screen
        os.write(fd, b"q")
        assert wait_child(pid, fd, 10) == 0
    finally:
        os.close(fd)
        run_cli(supervisor, "task", "cancel", task_id)


def test_top_without_terminal_exits_2(supervisor):
    result = run_cli(supervisor, "top")
    assert result.exit_code == 2
    assert "terminal" in result.stderr
