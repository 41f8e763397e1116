"""End-to-end behaviour of the backbone: client, supervisor, fork server, workers, store."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import zmq

import procq
from tests.conftest import ROOT, pool_size, process_state, short_tempdir, wait_for, wait_gone


def test_round_trip_args_kwargs_result(client):
    task = client.enqueue("echo", [1, "two", [3.5, None]], {"four": {"five": True}})
    done = client.wait(task.id, timeout=20)
    assert done.state == "completed"
    assert done.outcome == "succeeded"
    assert done.result["args"] == [1, "two", [3.5, None]]
    assert done.result["kwargs"] == {"four": {"five": True}}
    assert done.result["attempt"] == 1
    assert done.args == [1, "two", [3.5, None]]
    assert done.attempt == 1
    assert len(done.attempts) == 1
    assert done.attempts[0].outcome == "succeeded"
    assert done.started_at <= done.finished_at


def test_taskinfo_dict_has_exact_keys(client):
    task = client.enqueue("add", [2, 3])
    done = client.wait(task.id, timeout=20)
    data = done.to_dict()
    assert tuple(data) == procq.taskinfo.TASK_KEYS
    assert data["result"] == 5
    assert data["finished_at"].endswith("Z")
    assert tuple(data["attempts"][0]) == procq.taskinfo.ATTEMPT_KEYS


def test_handler_error_records_traceback(client):
    task = client.enqueue("fail", ["it broke"])
    done = client.wait(task.id, timeout=20)
    assert done.state == "failed"
    assert done.outcome == "error"
    assert "ValueError: it broke" in done.error
    assert "Traceback" in done.error
    assert "tests/apps/basic.py" in done.error


def test_handler_error_retried_until_max_retry(client):
    task = client.enqueue("fail", max_retry=2)
    done = client.wait(task.id, timeout=30)
    assert done.state == "failed"
    assert done.attempt == 3
    assert [attempt.outcome for attempt in done.attempts] == ["error", "error", "error"]


def test_unpicklable_exception_and_bad_result(client):
    first = client.wait(client.enqueue("fail_unpicklable").id, timeout=20)
    assert first.state == "failed"
    assert first.outcome == "error"
    assert "Unpicklable" in first.error
    second = client.wait(client.enqueue("bad_result").id, timeout=20)
    assert second.state == "failed"
    assert second.outcome == "result_invalid"
    assert "not JSON-serializable" in second.error
    after = client.wait(client.enqueue("add", [1, 1]).id, timeout=20)
    assert after.state == "completed"
    assert after.result == 2


def test_result_over_max_payload(start_supervisor):
    supervisor = start_supervisor(extra_args=("--max-payload", "1K"))
    client = supervisor.client()
    done = client.wait(client.enqueue("big_result", [5000]).id, timeout=20)
    assert done.outcome == "result_invalid"
    assert "--max-payload" in done.error


def test_unknown_handler_rejected(client):
    with pytest.raises(procq.InvalidTask, match="unknown handler 'nope'"):
        client.enqueue("nope")
    assert client.list() == []


def test_invalid_options_rejected_by_client(client):
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    cases = [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"grace": dt.timedelta(seconds=-1)}, "grace"),
        ({"deadline": dt.datetime(2030, 1, 1)}, "naive"),
        ({"deadline": past}, "already past"),
        ({"process_in": 0}, "process_in"),
        ({"max_retry": -1}, "max_retry"),
    ]
    for options, fragment in cases:
        with pytest.raises(procq.InvalidTask, match=fragment):
            client.enqueue("echo", **options)
    with pytest.raises(procq.InvalidTask, match="JSON"):
        client.enqueue("echo", [object()])


def test_raw_invalid_options_rejected_by_supervisor(supervisor):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect("ipc://" + supervisor.socket)
    sock.send(json.dumps({"id": 1, "op": "enqueue", "tasks": [{"name": "echo", "timeout_s": -5}]}).encode())
    assert sock.poll(5000)
    reply = json.loads(sock.recv())
    sock.close(linger=0)
    assert reply["ok"] is False
    assert reply["error"]["type"] == "InvalidTask"
    assert "timeout" in reply["error"]["message"]


def test_duplicate_task_id(client):
    first = client.enqueue("echo", [1], task_id="report-2026-12")
    with pytest.raises(procq.DuplicateTask) as caught:
        client.enqueue("echo", [2], task_id="report-2026-12")
    assert caught.value.existing is not None
    assert caught.value.existing.id == first.id
    assert caught.value.existing.args == [1]


def test_enqueue_many_all_or_nothing(client):
    items = [{"name": "echo", "args": [1]}, {"name": "missing"}, {"name": "echo", "args": [3]}]
    with pytest.raises(procq.InvalidTask, match="item 1"):
        client.enqueue_many(items)
    assert client.list() == []
    stored = client.enqueue_many([{"name": "add", "args": [i, i]} for i in range(50)])
    assert len(stored) == 50
    results = [client.wait(task.id, timeout=30).result for task in stored]
    assert results == [2 * i for i in range(50)]


def test_oversized_args_rejected(start_supervisor):
    supervisor = start_supervisor(extra_args=("--max-payload", "10K"))
    client = supervisor.client()
    with pytest.raises(procq.PayloadTooLarge, match="max-payload"):
        client.enqueue("echo", ["x" * 20000])
    assert client.list() == []


def test_process_in_not_before_time(client):
    enqueued = time.time()
    task = client.enqueue("echo", process_in=1.0)
    assert task.state == "scheduled"
    done = client.wait(task.id, timeout=20)
    assert done.state == "completed"
    assert done.started_at.timestamp() >= enqueued + 1.0 - 0.01


def test_queue_weights_favour_heavier(start_supervisor):
    supervisor = start_supervisor(workers=1, extra_args=("--queues", "high=9,low=1"))
    client = supervisor.client()
    client.pause_queue("high") if hasattr(client, "pause_queue") else None
    blocker = client.enqueue("sleep", [0.5], queue="blocker")
    tasks = []
    for index in range(40):
        tasks.append(client.enqueue("echo", [index], queue="high"))
        tasks.append(client.enqueue("echo", [index], queue="low"))
    extra = client.enqueue("echo", ["unlisted"], queue="other")
    client.resume_queue("high")
    for task in tasks + [extra, blocker]:
        client.wait(task.id, timeout=60)
    infos = [client.get(task.id) for task in tasks]
    order = sorted(infos, key=lambda info: info.started_at)
    first_half = order[: len(order) // 2]
    high_share = sum(1 for info in first_half if info.queue == "high") / len(first_half)
    assert high_share > 0.7
    assert client.get(extra.id).state == "completed"


def test_cancel_pending_task_never_runs(start_supervisor, tmpdir_short):
    supervisor = start_supervisor(workers=1)
    client = supervisor.client()
    blocker = client.enqueue("sleep", [1.0])
    target = client.enqueue("echo", ["never"])
    result = client.cancel(target.id)
    assert result.previous_state == "pending"
    assert result.task.state == "cancelled"
    assert result.stopped_by == "none"
    client.wait(blocker.id, timeout=20)
    time.sleep(0.2)
    info = client.get(target.id)
    assert info.state == "cancelled"
    assert info.attempts == []


def test_wait_timeout_raises(client):
    task = client.enqueue("sleep", [3])
    started = time.monotonic()
    with pytest.raises(procq.WaitTimeout):
        client.wait(task.id, timeout=0.3)
    assert time.monotonic() - started < 3


def test_list_filters_and_order(client):
    first = client.enqueue("echo", [1], queue="alpha")
    second = client.enqueue("fail", queue="beta")
    client.wait(first.id, timeout=20)
    client.wait(second.id, timeout=20)
    listed = client.list()
    assert [task.id for task in listed[:2]] == [second.id, first.id]
    assert [task.id for task in client.list(queue="alpha")] == [first.id]
    assert [task.id for task in client.list(state="failed")] == [second.id]
    assert [task.id for task in client.list(state=["failed", "completed"])] == [second.id, first.id]
    assert [task.id for task in client.list(name="echo")] == [first.id]
    assert len(client.list(limit=1)) == 1
    with pytest.raises(procq.InvalidTask, match="unknown state 'bogus'"):
        client.list(state="bogus")


def test_progress_is_stored(client):
    task = client.enqueue("progress", [4, 0.3])
    seen = wait_for(lambda: client.get(task.id).progress, 20, message="a progress update")
    assert seen["total"] == 4
    done = client.wait(task.id, timeout=20)
    assert done.progress["done"] == 4
    assert done.progress["message"] == "step 4"


def test_worker_killed_while_idle_is_replaced(supervisor, client):
    wait_for(lambda: pool_size(client) == 2, message="a full pool")
    victim = client.workers()[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_gone([victim])
    wait_for(lambda: pool_size(client) == 2 and victim not in {w["pid"] for w in client.workers()},
             message="a replacement worker")
    assert client.wait(client.enqueue("echo").id, timeout=20).state == "completed"


def test_worker_killed_mid_task_is_worker_lost(client):
    task = client.enqueue("sleep", [60])
    info = wait_for(lambda: (lambda t: t if t.state == "active" else None)(client.get(task.id)),
                    message="the task to start")
    killed_at = time.monotonic()
    os.kill(info.worker_pid, signal.SIGKILL)
    done = client.wait(task.id, timeout=20)
    assert time.monotonic() - killed_at < 5
    assert done.state == "failed"
    assert done.outcome == "worker_lost"
    assert done.exit_signal == signal.SIGKILL
    assert done.attempts[0].reaped_at is not None


def test_on_worker_start_runs_once_per_worker(start_supervisor, tmpdir_short):
    starts = os.path.join(tmpdir_short, "starts")
    supervisor = start_supervisor(workers=2, env={"PROCQ_TEST_STARTS": starts})
    client = supervisor.client()
    for _ in range(10):
        client.wait(client.enqueue("echo").id, timeout=20)
    pids = [int(line) for line in open(starts).read().split()]
    assert len(pids) == len(set(pids))
    for worker in client.workers():
        assert pids.count(worker["pid"]) == 1


def test_max_tasks_per_worker_recycles(start_supervisor):
    supervisor = start_supervisor(workers=1, extra_args=("--max-tasks-per-worker", "2"))
    client = supervisor.client()
    pids = [client.wait(client.enqueue("record_pid").id, timeout=20).result for _ in range(4)]
    assert pids[0] == pids[1]
    assert pids[2] == pids[3]
    assert pids[1] != pids[2]


def test_supervisor_unavailable_within_timeout(tmpdir_short):
    client = procq.Client(os.path.join(tmpdir_short, "nobody.sock"), connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(procq.SupervisorUnavailable) as caught:
        client.get("x")
    assert time.monotonic() - started < 2
    assert "nobody.sock" in str(caught.value)


def test_tcp_address_rejected():
    with pytest.raises(procq.ProcqError, match="authentication"):
        procq.Client("tcp://127.0.0.1:5555")


def test_long_socket_path_rejected():
    with pytest.raises(procq.ProcqError, match="107"):
        procq.Client("/tmp/" + "x" * 120 + ".sock")


def test_second_supervisor_refused(supervisor, tmpdir_short):
    same_db = subprocess.run(
        [sys.executable, "-m", "procq.cli.main", "supervisor", "run", "--app", supervisor.app,
         "--socket", os.path.join(tmpdir_short, "other.sock"), "--db", supervisor.db, "--workers", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert same_db.returncode != 0
    assert "already using database" in same_db.stderr
    same_socket = subprocess.run(
        [sys.executable, "-m", "procq.cli.main", "supervisor", "run", "--app", supervisor.app,
         "--socket", supervisor.socket, "--db", os.path.join(tmpdir_short, "other.db"), "--workers", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert same_socket.returncode != 0
    assert "already using socket" in same_socket.stderr
    assert supervisor.client().ping()["pid"] == supervisor.pid


def test_import_error_exits_nonzero(tmpdir_short):
    result = subprocess.run(
        [sys.executable, "-m", "procq.cli.main", "supervisor", "run", "--app", "tests.apps.no_such_module:app",
         "--socket", os.path.join(tmpdir_short, "s.sock"), "--db", os.path.join(tmpdir_short, "db"),
         "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "No module named 'tests.apps.no_such_module'" in result.stderr


def test_corrupt_database_not_reset(tmpdir_short):
    db = os.path.join(tmpdir_short, "bad.db")
    with open(db, "wb") as file:
        file.write(b"this is not a database" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "procq.cli.main", "supervisor", "run", "--app", "tests.apps.basic:app",
         "--socket", os.path.join(tmpdir_short, "s.sock"), "--db", db, "--workers", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert db in result.stderr
    assert open(db, "rb").read().startswith(b"this is not a database")


def test_supervisor_sigkill_loses_no_task(start_supervisor, tmpdir_short):
    supervisor = start_supervisor(tmpdir_short, workers=2)
    client = supervisor.client()
    acknowledged = [client.enqueue("sleep", [0.05]).id for _ in range(30)]
    acknowledged += [task.id for task in client.enqueue_many([{"name": "echo", "args": [i]} for i in range(30)])]
    time.sleep(0.3)
    supervisor.kill()
    supervisor.start()
    client = supervisor.client()
    for task_id in acknowledged:
        info = client.wait(task_id, timeout=60)
        assert info.state in ("completed", "failed")
        if info.state == "failed":
            assert info.outcome == "worker_lost"
    with sqlite3.connect(supervisor.db) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM tasks")}
    assert set(acknowledged) <= stored


def test_malformed_messages_get_error_replies(supervisor):
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("ipc://" + supervisor.socket)

    def exchange(frames):
        sock.send_multipart(frames)
        assert sock.poll(5000), f"no reply to {frames!r:.80}"
        return json.loads(sock.recv_multipart()[-1])

    cases = [
        [b"not json"],
        [b'{"id": 1, "op": "enq'],
        [b"[1, 2, 3]"],
        [b'{"id": 2, "op": "launch_missiles"}'],
        [b'{"id": 3}'],
        [b'{"id": 4, "op": "get"}'],
        [b"\xff\xfe\x00"],
        [b"part one", b"part two"],
        [b"x" * (17 * 1024 * 1024 + 2 * 1024 * 1024)],
    ]
    for frames in cases:
        reply = exchange(frames)
        assert reply["ok"] is False
        assert reply["error"]["message"]
    rng = random.Random(7)
    for _ in range(300):
        frame = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        reply = exchange([frame])
        assert reply["ok"] is False
    sock.close()
    client = supervisor.client()
    assert client.wait(client.enqueue("add", [2, 2]).id, timeout=20).result == 4


def test_handler_output_goes_to_supervisor_stderr(supervisor, client):
    marker = "visible-output-7f3a"
    client.wait(client.enqueue("print_output", [marker]).id, timeout=20)
    wait_for(lambda: supervisor.log_text().count(marker) >= 2, message="handler output in the log")


def test_wait_survives_supervisor_restart(start_supervisor, tmpdir_short):
    supervisor = start_supervisor(tmpdir_short, workers=1)
    client = procq.Client(supervisor.socket, connect_timeout=2)
    task = client.enqueue("sleep", [0.5], process_in=2.0)
    supervisor.kill()
    supervisor.start(wait_ready=False)
    done = client.wait(task.id, timeout=60)
    client.close()
    assert done.state == "completed"


def test_handler_queue_is_default_queue(start_supervisor, tmpdir_short):
    app_dir = os.path.join(tmpdir_short, "app")
    os.makedirs(os.path.join(app_dir, "queued_app"))
    with open(os.path.join(app_dir, "queued_app", "__init__.py"), "w") as file:
        file.write("import procq\n"
                   "app = procq.App('queued')\n"
                   "@app.task('resize', queue='images')\n"
                   "def resize(ctx):\n"
                   "    return ctx.queue\n")
    supervisor = start_supervisor(app="queued_app:app", workers=1,
                                  env={"PYTHONPATH": f"{app_dir}:{ROOT}"})
    client = supervisor.client()
    own = client.wait(client.enqueue("resize").id, timeout=20)
    assert own.queue == "images"
    assert own.result == "images"
    chosen = client.wait(client.enqueue("resize", queue="urgent").id, timeout=20)
    assert chosen.queue == "urgent"


def test_task_id_prefix_resolves(client):
    task = client.enqueue("echo", [1])
    done = client.wait(task.id[:8], timeout=20)
    assert done.id == task.id
    assert client.get(task.id[:10]).id == task.id
    with pytest.raises(procq.TaskNotFound):
        client.get(task.id[:3])


def test_strict_priority_drains_heavier_first(start_supervisor):
    supervisor = start_supervisor(workers=1, extra_args=("--queues", "high=2,low=1", "--strict-priority"))
    client = supervisor.client()
    client.pause_queue("high")
    client.pause_queue("low")
    low = [client.enqueue("echo", [index], queue="low") for index in range(10)]
    high = [client.enqueue("echo", [index], queue="high") for index in range(10)]
    client.resume_queue("high")
    client.resume_queue("low")
    for task in low + high:
        client.wait(task.id, timeout=30)
    last_high = max(client.get(task.id).started_at for task in high)
    first_low = min(client.get(task.id).started_at for task in low)
    assert last_high <= first_low


def test_handler_enqueues_follow_up(client):
    parent = client.wait(client.enqueue("enqueue_follow_up", ["next"]).id, timeout=20)
    assert parent.state == "completed"
    child = client.wait(parent.result, timeout=20)
    assert child.state == "completed"
    assert child.result["args"] == ["next"]
