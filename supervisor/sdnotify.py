"""The sd_notify protocol: readiness, reload, stop, status and watchdog messages to systemd.

Each message is one datagram of `KEY=VALUE` lines sent to the AF_UNIX socket named by
$NOTIFY_SOCKET, as described in sd_notify(3). Only the stdlib is used.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

# systemd reads each notification into a buffer of PIPE_BUF (4096) bytes, its NOTIFY_BUFFER_MAX,
# and rejects longer datagrams.
MAX_DATAGRAM_BYTES = 4096
# STATUS= is kept well under the datagram limit so that it fits next to other fields.
MAX_STATUS_BYTES = 1024
STATUS_MIN_INTERVAL_S = 1.0
# A send blocks while systemd's receive queue is full, so this caps how long the loop waits.
SEND_TIMEOUT_S = 1.0
ERROR_LOG_INTERVAL_S = 60.0


def socket_address(notify_socket: str) -> str:
    """Convert a $NOTIFY_SOCKET value to an AF_UNIX address: a path, or an abstract name.

    Raises ValueError for the other forms, such as relative paths and the `vsock:` addresses
    of newer systemd versions, which this module does not support.
    """
    if notify_socket.startswith("@"):
        # Abstract namespace: the leading NUL replaces the `@`.
        return "\0" + notify_socket[1:]
    if notify_socket.startswith("/"):
        return notify_socket
    raise ValueError(
        f"unsupported NOTIFY_SOCKET {notify_socket!r}: expected an absolute path or an "
        "abstract address starting with @"
    )


def watchdog_interval_from_environ(environ: Mapping[str, str], pid: int) -> float | None:
    """Return how often to send WATCHDOG=1, in seconds: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.

    Returns None when WATCHDOG_USEC is unset or invalid, or when WATCHDOG_PID names another process.
    """
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a process id", watchdog_pid)
            return None

    watchdog_usec = environ.get("WATCHDOG_USEC")
    if not watchdog_usec:
        return None
    try:
        usec = int(watchdog_usec)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("ignoring the watchdog: WATCHDOG_USEC=%r is not a positive integer", watchdog_usec)
        return None
    return usec / 2_000_000


def monotonic_usec() -> int:
    """Return CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC= against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def encode_fields(fields: Mapping[str, object]) -> bytes:
    """Encode fields as `KEY=VALUE\\n` lines; booleans become 1 and 0.

    Raises ValueError for an empty or invalid key, a value containing a newline, or a
    datagram longer than MAX_DATAGRAM_BYTES.
    """
    lines = []
    for key, value in fields.items():
        if not key or "=" in key or "\n" in key:
            raise ValueError(f"invalid sd_notify field name {key!r}")
        if isinstance(value, bool):
            value = int(value)
        text = str(value)
        if "\n" in text:
            raise ValueError(f"invalid value for sd_notify field {key}: it contains a newline: {text!r}")
        lines.append(f"{key}={text}\n")

    data = "".join(lines).encode("utf-8")
    if len(data) > MAX_DATAGRAM_BYTES:
        raise ValueError(
            f"sd_notify message is {len(data)} bytes, over systemd's limit of {MAX_DATAGRAM_BYTES}"
        )
    return data


def clean_status(text: str) -> str:
    """Return text fit for STATUS=: one line of at most MAX_STATUS_BYTES bytes of UTF-8."""
    text = " ".join(str(text).splitlines())
    data = text.encode("utf-8")
    if len(data) <= MAX_STATUS_BYTES:
        return text
    # Cut on a character boundary and mark the cut.
    return data[: MAX_STATUS_BYTES - 3].decode("utf-8", errors="ignore") + "..."


class Notifier:
    """A sender of sd_notify messages; every method is a no-op when `enabled` is False.

    Times passed as `now` and returned as `*_due_at` are time.monotonic() seconds.
    """

    def __init__(self, notify_socket: str | None = None, watchdog_interval_s: float | None = None) -> None:
        self.notify_socket = notify_socket or None
        self.address = socket_address(notify_socket) if notify_socket else None
        # Without a socket no WATCHDOG=1 can be sent, so there is no interval either.
        self.watchdog_interval_s = watchdog_interval_s if self.address is not None else None

        self._status_sent: str | None = None
        self._status_sent_at: float | None = None
        self._status_held: str | None = None
        self._watchdog_sent_at: float | None = None
        self._failed_sends = 0
        self._error_logged_at: float | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """Build a Notifier from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        An unsupported NOTIFY_SOCKET is logged and gives a disabled Notifier.
        """
        if environ is None:
            environ = os.environ
        if pid is None:
            pid = os.getpid()

        notify_socket = environ.get("NOTIFY_SOCKET")
        if not notify_socket:
            return cls()
        try:
            socket_address(notify_socket)
        except ValueError as exc:
            log.warning("sd_notify is disabled: %s", exc)
            return cls()
        return cls(notify_socket, watchdog_interval_from_environ(environ, pid))

    @property
    def enabled(self) -> bool:
        """Whether messages are sent, which is when NOTIFY_SOCKET was set."""
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send the fields as one datagram and return whether the send succeeded.

        Socket errors are logged, rate-limited, and never raised. Invalid fields raise ValueError
        (see encode_fields).
        """
        if self.address is None:
            return False
        data = encode_fields(fields)

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(data, self.address)
        except OSError as exc:
            self._log_send_error(exc)
            return False

        if self._failed_sends:
            log.info("sd_notify to %s works again after %d failed sends", self.notify_socket, self._failed_sends)
            self._failed_sends = 0
            self._error_logged_at = None
        return True

    def _log_send_error(self, exc: OSError) -> None:
        # Log the first failure at once, then at most one line per ERROR_LOG_INTERVAL_S with a count.
        self._failed_sends += 1
        now = time.monotonic()
        if self._error_logged_at is not None and now - self._error_logged_at < ERROR_LOG_INTERVAL_S:
            return
        self._error_logged_at = now
        log.warning(
            "sd_notify to %s failed (%d failed sends so far): %s",
            self.notify_socket, self._failed_sends, exc,
        )

    def ready(self, status: str | None = None) -> bool:
        """Send READY=1, with STATUS= when status is given. Also ends a reload started by reloading()."""
        if status is None:
            return self.send(READY=1)
        status = clean_status(status)
        sent = self.send(READY=1, STATUS=status)
        self._record_status(status, time.monotonic())
        return sent

    def reloading(self) -> bool:
        """Send RELOADING=1 with MONOTONIC_USEC=, which systemd 253+ requires for Type=notify-reload.

        Send ready() when the reload is complete.
        """
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def stopping(self) -> bool:
        """Send STOPPING=1."""
        return self.send(STOPPING=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Send EXTEND_TIMEOUT_USEC= so that the current start, reload or stop may take `seconds` more."""
        if seconds <= 0:
            raise ValueError(f"invalid timeout extension {seconds!r}: expected seconds > 0")
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def watchdog(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 and restart the watchdog interval."""
        if self.address is None:
            return False
        self._watchdog_sent_at = time.monotonic() if now is None else now
        return self.send(WATCHDOG=1)

    def watchdog_due_at(self) -> float | None:
        """Return the monotonic time when WATCHDOG=1 is next due, or None without a watchdog.

        Before the first WATCHDOG=1 this is 0.0, a time in the past: the first one is due at once.
        """
        if self.watchdog_interval_s is None:
            return None
        if self._watchdog_sent_at is None:
            return 0.0
        return self._watchdog_sent_at + self.watchdog_interval_s

    def watchdog_if_due(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 when it is due; return whether it was sent."""
        due_at = self.watchdog_due_at()
        if due_at is None:
            return False
        if now is None:
            now = time.monotonic()
        if now < due_at:
            return False
        return self.watchdog(now)

    def status(self, text: str, now: float | None = None) -> bool:
        """Send STATUS=text when it changed, at most once per STATUS_MIN_INTERVAL_S.

        A change inside the interval is held, replacing any older held text, until
        flush_status() sends it. Returns whether a datagram was sent now.
        """
        if self.address is None:
            return False
        if now is None:
            now = time.monotonic()
        text = clean_status(text)

        if text == self._status_sent:
            # Back to what systemd already shows: nothing is left to send.
            self._status_held = None
            return False
        if self._status_sent_at is not None and now - self._status_sent_at < STATUS_MIN_INTERVAL_S:
            self._status_held = text
            return False

        sent = self.send(STATUS=text)
        self._record_status(text, now)
        return sent

    def flush_status(self, now: float | None = None) -> bool:
        """Send the held status when its interval is over; return whether a datagram was sent."""
        due_at = self.status_due_at()
        if due_at is None:
            return False
        if now is None:
            now = time.monotonic()
        if now < due_at:
            return False

        text = self._status_held
        sent = self.send(STATUS=text)
        self._record_status(text, now)
        return sent

    def status_due_at(self) -> float | None:
        """Return the monotonic time when the held status should be flushed, or None if none is held."""
        if self._status_held is None or self._status_sent_at is None:
            return None
        return self._status_sent_at + STATUS_MIN_INTERVAL_S

    def _record_status(self, text: str, now: float) -> None:
        # A failed send counts as sent: repeating it every second would only repeat the error.
        self._status_sent = text
        self._status_sent_at = now
        self._status_held = None
