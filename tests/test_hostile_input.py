"""Hostile or unusual values never crash the supervisor or leave an unreadable task behind."""

from __future__ import annotations

import json
import time

import pytest
import zmq

import procq


def _exchange(socket_path: str, body: bytes) -> dict:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("ipc://" + socket_path)
    try:
        sock.send(body)
        assert sock.poll(5000), f"no reply to {body[:60]!r}"
        return json.loads(sock.recv())
    finally:
        sock.close()


@pytest.mark.parametrize("body", [
    b'{"id": 1e309, "op": "ping"}',
    b'{"id": NaN, "op": "ping"}',
    b'{"id": "\\ud800", "op": "ping"}',
    b'{"id": [1, 2], "op": "ping"}',
    b'{"id": 1, "op": "list", "limit": -1}',
    b'{"id": 1, "op": "wait", "task_id": "x", "hold_s": 1e309}',
    b'{"id": 1, "op": "enqueue", "tasks": [{"name": "echo", "args": ["\\ud800"]}]}',
])
def test_odd_request_keeps_supervisor_serving(supervisor, body):
    reply = _exchange(supervisor.socket, body)
    assert "ok" in reply
    client = supervisor.client()
    assert client.wait(client.enqueue("add", [1, 2]).id, timeout=20).result == 3


def test_surrogates_and_nan_from_handlers(client):
    result = client.wait(client.enqueue("surrogate_result").id, timeout=20)
    assert result.state == "completed"
    assert result.result == "name-\udcff"
    error = client.wait(client.enqueue("surrogate_error").id, timeout=20)
    assert error.outcome == "error"
    assert "bad name" in error.error
    progress = client.wait(client.enqueue("bad_progress").id, timeout=20)
    assert progress.state == "completed"
    assert progress.progress["done"] == 1
    assert len(progress.progress["message"]) < 1100
    listed = client.list()
    assert len(listed) == 3


def test_out_of_range_values_rejected(client):
    cases = [
        {"process_in": 1e300},
        {"process_at": 1e18},
        {"deadline": 1e18},
        {"timeout": 1e12},
        {"max_retry": 10 ** 20},
        {"max_memory": 10 ** 30},
    ]
    for options in cases:
        with pytest.raises(procq.InvalidTask):
            client.enqueue("echo", **options)
    assert client.list() == []


def test_oversized_request_gets_error_not_timeout(start_supervisor):
    supervisor = start_supervisor(extra_args=("--max-payload", "10K"))
    client = supervisor.client(connect_timeout=5)
    started = time.monotonic()
    with pytest.raises(procq.ProcqError) as caught:
        client.enqueue("echo", ["x" * 2_000_000])
    assert time.monotonic() - started < 4
    assert not isinstance(caught.value, procq.SupervisorUnavailable)
    assert "over the limit" in str(caught.value)
    assert client.list() == []
