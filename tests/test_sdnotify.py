"""Tests for procq.supervisor.sdnotify against notification sockets bound by the test."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import uuid

import pytest

from procq.supervisor import sdnotify
from procq.supervisor.sdnotify import Notifier

RECEIVE_TIMEOUT_S = 5.0


class Receiver:
    """The systemd side: a bound datagram socket and its NOTIFY_SOCKET value."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def receive(self) -> dict[str, str]:
        """Return the fields of the next datagram, waiting up to RECEIVE_TIMEOUT_S."""
        self.sock.settimeout(RECEIVE_TIMEOUT_S)
        data = self.sock.recv(65536)
        assert data.endswith(b"\n"), data
        return dict(line.split("=", 1) for line in data.decode("utf-8").splitlines())

    def assert_empty(self) -> None:
        """Assert that no datagram is queued. A datagram send is complete when sendto() returns."""
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        raise AssertionError(f"unexpected datagram {data!r}")

    def notifier(self, **environ: str) -> Notifier:
        return Notifier.from_environ({"NOTIFY_SOCKET": self.notify_socket, **environ}, pid=1234)


def bind_receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(address)
    return sock


@pytest.fixture
def path_receiver():
    # Unix socket paths are limited to 107 bytes, so the directory is short and under /tmp.
    directory = tempfile.mkdtemp(prefix="pq", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = bind_receiver(path)
    yield Receiver(sock, path)
    sock.close()
    shutil.rmtree(directory)


@pytest.fixture
def abstract_receiver():
    name = f"procq-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = bind_receiver("\0" + name)
    yield Receiver(sock, "@" + name)
    sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request):
    return request.getfixturevalue(f"{request.param}_receiver")


def test_ready_sends_ready(receiver):
    notifier = receiver.notifier()

    assert notifier.enabled
    assert notifier.ready() is True
    assert receiver.receive() == {"READY": "1"}


def test_ready_with_status(receiver):
    notifier = receiver.notifier()

    assert notifier.ready(status="4 workers idle") is True
    assert receiver.receive() == {"READY": "1", "STATUS": "4 workers idle"}


def test_ready_status_is_not_repeated(receiver):
    notifier = receiver.notifier()
    notifier.ready(status="idle")
    receiver.receive()

    assert notifier.status("idle", now=time.monotonic() + 10) is False
    receiver.assert_empty()


def test_send_many_fields_in_one_datagram(receiver):
    notifier = receiver.notifier()

    assert notifier.send(STATUS="busy", ERRNO=0, BUSERROR=True) is True
    assert receiver.receive() == {"STATUS": "busy", "ERRNO": "0", "BUSERROR": "1"}


def test_send_rejects_newline_in_value(receiver):
    notifier = receiver.notifier()

    with pytest.raises(ValueError, match="newline"):
        notifier.send(STATUS="two\nlines")
    receiver.assert_empty()


def test_send_rejects_oversized_datagram(receiver):
    notifier = receiver.notifier()

    with pytest.raises(ValueError, match="4096"):
        notifier.send(STATUS="x" * 5000)
    receiver.assert_empty()


def test_stopping_and_extend_timeout(receiver):
    notifier = receiver.notifier()

    assert notifier.stopping() is True
    assert receiver.receive() == {"STOPPING": "1"}
    assert notifier.extend_timeout(2.5) is True
    assert receiver.receive() == {"EXTEND_TIMEOUT_USEC": "2500000"}


def test_extend_timeout_rejects_zero(receiver):
    notifier = receiver.notifier()

    with pytest.raises(ValueError, match="seconds > 0"):
        notifier.extend_timeout(0)


def test_reloading_carries_monotonic_usec(receiver):
    notifier = receiver.notifier()
    before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    assert notifier.reloading() is True
    fields = receiver.receive()
    after_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    assert fields["RELOADING"] == "1"
    assert set(fields) == {"RELOADING", "MONOTONIC_USEC"}
    assert before_usec <= int(fields["MONOTONIC_USEC"]) <= after_usec


def test_status_first_change_is_sent(receiver):
    notifier = receiver.notifier()

    assert notifier.status("starting", now=100.0) is True
    assert receiver.receive() == {"STATUS": "starting"}
    assert notifier.status_due_at() is None


def test_status_unchanged_is_not_sent(receiver):
    notifier = receiver.notifier()
    notifier.status("idle", now=100.0)
    receiver.receive()

    assert notifier.status("idle", now=105.0) is False
    receiver.assert_empty()
    assert notifier.status_due_at() is None


def test_status_change_within_second_is_held(receiver):
    notifier = receiver.notifier()
    notifier.status("one", now=100.0)
    receiver.receive()

    assert notifier.status("two", now=100.2) is False
    assert notifier.status("three", now=100.5) is False
    receiver.assert_empty()
    assert notifier.status_due_at() == pytest.approx(101.0)

    assert notifier.flush_status(now=100.9) is False
    receiver.assert_empty()

    assert notifier.flush_status(now=101.0) is True
    assert receiver.receive() == {"STATUS": "three"}
    assert notifier.status_due_at() is None
    assert notifier.flush_status(now=110.0) is False
    receiver.assert_empty()


def test_status_flush_restarts_interval(receiver):
    notifier = receiver.notifier()
    notifier.status("one", now=100.0)
    notifier.status("two", now=100.5)
    notifier.flush_status(now=101.2)
    receiver.receive()
    receiver.receive()

    assert notifier.status("three", now=101.5) is False
    assert notifier.status_due_at() == pytest.approx(102.2)


def test_status_return_to_sent_text_drops_held(receiver):
    notifier = receiver.notifier()
    notifier.status("idle", now=100.0)
    receiver.receive()

    notifier.status("busy", now=100.3)
    assert notifier.status("idle", now=100.6) is False
    assert notifier.status_due_at() is None
    assert notifier.flush_status(now=102.0) is False
    receiver.assert_empty()


def test_status_after_interval_is_sent_at_once(receiver):
    notifier = receiver.notifier()
    notifier.status("one", now=100.0)
    receiver.receive()

    assert notifier.status("two", now=101.0) is True
    assert receiver.receive() == {"STATUS": "two"}


def test_status_is_one_bounded_line(receiver):
    notifier = receiver.notifier()

    notifier.status("line one\nline two", now=100.0)
    assert receiver.receive() == {"STATUS": "line one line two"}

    notifier.status("é" * 2000, now=200.0)
    status = receiver.receive()["STATUS"]
    assert len(status.encode("utf-8")) <= sdnotify.MAX_STATUS_BYTES
    assert status.endswith("...")


def test_watchdog_interval_is_half_of_watchdog_usec(receiver):
    notifier = receiver.notifier(WATCHDOG_USEC="30000000")

    assert notifier.watchdog_interval_s == 15.0


def test_watchdog_interval_with_matching_pid(receiver):
    notifier = receiver.notifier(WATCHDOG_USEC="10000000", WATCHDOG_PID="1234")

    assert notifier.watchdog_interval_s == 5.0


def test_watchdog_interval_with_other_pid(receiver):
    notifier = receiver.notifier(WATCHDOG_USEC="10000000", WATCHDOG_PID="999")

    assert notifier.watchdog_interval_s is None
    assert notifier.watchdog_due_at() is None
    assert notifier.watchdog_if_due(now=1000.0) is False
    receiver.assert_empty()


def test_watchdog_pid_defaults_to_own_pid(receiver):
    environ = {"NOTIFY_SOCKET": receiver.notify_socket, "WATCHDOG_USEC": "4000000"}

    assert Notifier.from_environ(environ).watchdog_interval_s == 2.0
    environ["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier.from_environ(environ).watchdog_interval_s == 2.0
    environ["WATCHDOG_PID"] = str(os.getpid() + 1)
    assert Notifier.from_environ(environ).watchdog_interval_s is None


@pytest.mark.parametrize("value", ["", "0", "-5", "soon"])
def test_watchdog_interval_invalid_usec(receiver, value):
    notifier = receiver.notifier(WATCHDOG_USEC=value)

    assert notifier.watchdog_interval_s is None


def test_watchdog_interval_unset(receiver):
    notifier = receiver.notifier()

    assert notifier.watchdog_interval_s is None
    assert notifier.watchdog_due_at() is None


def test_watchdog_if_due_sends_at_interval(receiver):
    notifier = receiver.notifier(WATCHDOG_USEC="2000000")

    assert notifier.watchdog_due_at() == 0.0
    assert notifier.watchdog_if_due(now=100.0) is True
    assert receiver.receive() == {"WATCHDOG": "1"}
    assert notifier.watchdog_due_at() == pytest.approx(101.0)

    assert notifier.watchdog_if_due(now=100.9) is False
    receiver.assert_empty()

    assert notifier.watchdog_if_due(now=101.0) is True
    assert receiver.receive() == {"WATCHDOG": "1"}
    assert notifier.watchdog_due_at() == pytest.approx(102.0)


def test_watchdog_sends_without_interval(receiver):
    notifier = receiver.notifier()

    assert notifier.watchdog() is True
    assert receiver.receive() == {"WATCHDOG": "1"}


def test_disabled_notifier_does_nothing(abstract_receiver):
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "2000000"}, pid=1234)

    assert notifier.enabled is False
    assert notifier.send(READY=1) is False
    assert notifier.ready(status="ready") is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert notifier.extend_timeout(5) is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval_s is None
    assert notifier.watchdog_due_at() is None
    assert notifier.watchdog_if_due(now=100.0) is False
    assert notifier.status("busy", now=100.0) is False
    assert notifier.status("busier", now=100.1) is False
    assert notifier.status_due_at() is None
    assert notifier.flush_status(now=200.0) is False
    abstract_receiver.assert_empty()


def test_from_environ_defaults_to_os_environ(abstract_receiver, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_receiver.notify_socket)

    assert Notifier.from_environ().ready() is True
    assert abstract_receiver.receive() == {"READY": "1"}


def test_empty_notify_socket_disables(abstract_receiver):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": ""})

    assert notifier.enabled is False


@pytest.mark.parametrize("value", ["relative/notify", "vsock:2:1234"])
def test_unsupported_notify_socket_disables(value, caplog):
    with caplog.at_level(logging.WARNING, logger=sdnotify.__name__):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": value})

    assert notifier.enabled is False
    assert notifier.ready() is False
    assert value in caplog.text


def test_unreachable_path_socket_does_not_raise(caplog):
    directory = tempfile.mkdtemp(prefix="pq", dir="/tmp")
    try:
        path = os.path.join(directory, "missing")
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})

        with caplog.at_level(logging.WARNING, logger=sdnotify.__name__):
            assert notifier.ready() is False
            assert notifier.status("busy", now=100.0) is False
            assert notifier.watchdog() is False
    finally:
        shutil.rmtree(directory)

    warnings = [r for r in caplog.records if r.name == sdnotify.__name__]
    assert len(warnings) == 1
    assert path in warnings[0].getMessage()


def test_unbound_abstract_socket_does_not_raise(caplog):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": f"@procq-test-unbound-{uuid.uuid4().hex}"})

    with caplog.at_level(logging.WARNING, logger=sdnotify.__name__):
        assert notifier.ready() is False
        assert notifier.stopping() is False

    assert len([r for r in caplog.records if r.name == sdnotify.__name__]) == 1


def test_send_recovers_after_failure(caplog):
    directory = tempfile.mkdtemp(prefix="pq", dir="/tmp")
    path = os.path.join(directory, "notify")
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
        with caplog.at_level(logging.INFO, logger=sdnotify.__name__):
            assert notifier.ready() is False
            sock = bind_receiver(path)
            try:
                assert notifier.ready() is True
                assert Receiver(sock, path).receive() == {"READY": "1"}
            finally:
                sock.close()
    finally:
        shutil.rmtree(directory)

    assert "works again after 1 failed sends" in caplog.text
