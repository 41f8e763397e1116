"""Log output of the `procq` logger hierarchy: one handler, one line per record.

When stderr is connected to systemd's journal, each line starts with a syslog priority prefix
such as `<6>` and has no timestamp. Elsewhere each line starts with a UTC ISO 8601 timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
HANDLER_NAME = "procq.logsetup"


def syslog_priority(levelno: int) -> int:
    """Return the syslog priority for a logging level; levels between two names take the lower name's priority."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """Formatter for a stream that journald reads: `<N>LEVEL logger.name: message`, no timestamp.

    journald stores each line of a stream as its own entry and reads the `<N>` prefix per line,
    so every line of a multi-line record (a traceback) gets the prefix. The record is still
    written with one write call, so its lines stay together and carry the record's priority.
    """

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.split("\n"))


class PlainFormatter(logging.Formatter):
    """Formatter for terminals and files: `2026-12-04T20:42:00.123Z LEVEL logger.name: message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


def parse_level(level: str) -> int:
    """Return the logging level for a name such as `info` or `WARNING`, in any case.

    Raises ValueError naming the invalid level and the accepted ones.
    """
    name = str(level).strip().upper()
    if name not in LEVELS:
        raise ValueError(f"invalid log level {level!r}: expected one of {', '.join(LEVELS)}")
    return logging.getLevelName(name)


def is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Return whether stream is the journal stream that systemd named in JOURNAL_STREAM.

    JOURNAL_STREAM is `DEVICE:INODE` of the journal socket. It is inherited by child processes
    whose stderr may point elsewhere, so the stream's own fstat() must match, as systemd.exec(5) advises.
    """
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, AttributeError, OSError):
        # ValueError also covers io.UnsupportedOperation from streams without a file descriptor.
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def configure_logging(
    level: str = "INFO",
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Send records of the `procq` loggers at `level` and above to stream (default sys.stderr).

    Calling it again replaces the handler that an earlier call installed. The `procq` logger
    stops propagating to the root logger, so a root handler does not print each line twice.
    """
    levelno = parse_level(level)
    if stream is None:
        stream = sys.stderr
    if environ is None:
        environ = os.environ

    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    if is_journal_stream(stream, environ):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(PlainFormatter())

    logger = logging.getLogger("procq")
    for old in [h for h in logger.handlers if h.get_name() == HANDLER_NAME]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(levelno)
    logger.propagate = False
