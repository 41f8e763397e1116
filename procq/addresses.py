"""Control socket addresses: defaults, and conversion between paths and ipc:// endpoints."""

from __future__ import annotations

import os
import tempfile

from procq.errors import ProcqError

SYSTEM_SOCKET = "/run/procq/procq.sock"
SOCKET_ENV = "PROCQ_SOCKET"
# sockaddr_un.sun_path is 108 bytes on Linux, one of which is the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


def user_runtime_dir() -> str:
    """Return the per-user runtime directory for procq (not created here)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "procq")
    return os.path.join(tempfile.gettempdir(), f"procq-{os.getuid()}")


def default_client_address() -> str:
    """Return the socket a client uses when none is given: PROCQ_SOCKET, the system one, the user's."""
    from_env = os.environ.get(SOCKET_ENV)
    if from_env:
        return from_env
    if os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return os.path.join(user_runtime_dir(), "procq.sock")


def socket_path(address: str) -> str:
    """Return the filesystem path of an address given as a path or an ipc:// URL.

    Raises ProcqError for tcp:// and other transports, and for paths over the kernel's limit.
    """
    if address.startswith("ipc://"):
        path = address[len("ipc://"):]
    elif "://" in address:
        scheme = address.split("://", 1)[0]
        if scheme == "tcp":
            raise ProcqError(
                f"invalid socket address {address!r}: tcp:// is rejected because network access "
                "needs authentication, which procq does not support yet; use a filesystem path "
                "or an ipc:// URL on this host"
            )
        raise ProcqError(f"invalid socket address {address!r}: use a filesystem path or an ipc:// URL")
    else:
        path = address
    if not path:
        raise ProcqError("invalid socket address: the path is empty")
    path = os.path.abspath(os.path.expanduser(path))
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ProcqError(
            f"socket path {path!r} is {len(os.fsencode(path))} bytes, over the kernel's limit of "
            f"{MAX_SOCKET_PATH_BYTES}; choose a shorter path with --socket or PROCQ_SOCKET"
        )
    return path


def endpoint(address: str) -> str:
    """Return the ZeroMQ endpoint (ipc://ABSOLUTE_PATH) for an address."""
    return "ipc://" + socket_path(address)
