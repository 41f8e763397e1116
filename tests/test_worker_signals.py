"""Workers ignore stray SIGTERM and SIGINT without passing an ignored disposition to children."""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import pool_size, wait_for


def test_stray_signals_spare_idle_worker(client):
    wait_for(lambda: pool_size(client) == 2, message="a full pool")
    pid = client.workers()[0]["pid"]
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    assert pid in {worker["pid"] for worker in client.workers()}
    assert client.wait(client.enqueue("echo").id, timeout=20).state == "completed"


def test_stray_signals_spare_running_task(client):
    task = client.enqueue("sleep", [1.0])
    info = wait_for(lambda: (lambda t: t if t.state == "active" else None)(client.get(task.id)),
                    message="the task to start")
    os.kill(info.worker_pid, signal.SIGTERM)
    os.kill(info.worker_pid, signal.SIGINT)
    done = client.wait(task.id, timeout=20)
    assert done.state == "completed"
    assert done.result == 1.0


def test_handler_children_get_default_signals(client):
    done = client.wait(client.enqueue("child_ignored_signals").id, timeout=20)
    assert done.state == "completed"
    ignored = int(done.result, 16)
    assert not ignored & (1 << (signal.SIGTERM - 1))
    assert not ignored & (1 << (signal.SIGINT - 1))
