"""The fork-server channel: JSON messages, with file descriptors attached, over a SEQPACKET pair.

SOCK_SEQPACKET keeps message boundaries, so each send is one whole message and a
file descriptor travels with the message it belongs to (SCM_RIGHTS).
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_MESSAGE_BYTES = 1 << 20
MAX_FDS = 4


def socketpair() -> tuple[socket.socket, socket.socket]:
    first, second = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (first, second):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE_BYTES)
    return first, second


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] = ()) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """Return the next message and its file descriptors; (None, []) when the peer closed."""
    data, fds, _flags, _address = socket.recv_fds(sock, MAX_MESSAGE_BYTES, MAX_FDS)
    if not data:
        for fd in fds:
            _close_quietly(fd)
        return None, []
    return json.loads(data), list(fds)


def _close_quietly(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass
