"""Tests for procq.supervisor.logsetup: the plain and journal line formats and level parsing."""

from __future__ import annotations

import io
import logging
import os
import re

import pytest

from procq.supervisor.logsetup import HANDLER_NAME, configure_logging

PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<message>.*)$")


@pytest.fixture(autouse=True)
def restore_procq_logger():
    logger = logging.getLogger("procq")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handlers, level, propagate = saved
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


class Pipe:
    """A real pipe: the handler writes to `stream`, the test reads what arrived."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.reader = os.fdopen(read_fd, "r", encoding="utf-8")
        self.stream = os.fdopen(write_fd, "w", encoding="utf-8")

    def journal_environ(self) -> dict[str, str]:
        """Return JOURNAL_STREAM as systemd sets it when this pipe is the journal stream."""
        stat = os.fstat(self.stream.fileno())
        return {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}

    def read_all(self) -> str:
        self.stream.close()
        return self.reader.read()

    def close(self) -> None:
        if not self.stream.closed:
            self.stream.close()
        self.reader.close()


@pytest.fixture
def pipe():
    pipe = Pipe()
    yield pipe
    pipe.close()


def test_plain_format_line(pipe):
    configure_logging("INFO", stream=pipe.stream, environ={})

    logging.getLogger("procq.supervisor.loop").info("worker %d started", 4321)

    lines = pipe.read_all().splitlines()
    assert len(lines) == 1
    match = PLAIN_LINE.match(lines[0])
    assert match, lines[0]
    assert match["level"] == "INFO"
    assert match["name"] == "procq.supervisor.loop"
    assert match["message"] == "worker 4321 started"


def test_plain_format_uses_utc(monkeypatch):
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, environ={})
    # 2026-12-04T20:42:00.1235Z: the extra half millisecond keeps float rounding from giving .122.
    monkeypatch.setattr("time.time", lambda: 1796416920.1235)
    monkeypatch.setattr("time.time_ns", lambda: 1796416920_123_500_000)

    logging.getLogger("procq").warning("late")

    assert stream.getvalue() == "2026-12-04T20:42:00.123Z WARNING procq: late\n"


def test_journal_format_priority_prefix(pipe):
    configure_logging("DEBUG", stream=pipe.stream, environ=pipe.journal_environ())
    logger = logging.getLogger("procq.supervisor")

    logger.critical("c")
    logger.error("e")
    logger.warning("w")
    logger.info("i")
    logger.debug("d")

    assert pipe.read_all().splitlines() == [
        "<2>CRITICAL procq.supervisor: c",
        "<3>ERROR procq.supervisor: e",
        "<4>WARNING procq.supervisor: w",
        "<6>INFO procq.supervisor: i",
        "<7>DEBUG procq.supervisor: d",
    ]


def test_journal_format_custom_level_priority(pipe):
    configure_logging("DEBUG", stream=pipe.stream, environ=pipe.journal_environ())

    logging.getLogger("procq").log(25, "between info and warning")
    logging.getLogger("procq").log(45, "between error and critical")
    logging.getLogger("procq").log(5, "below debug")

    lines = pipe.read_all().splitlines()
    assert len(lines) == 2
    assert lines[0] == "<6>Level 25 procq: between info and warning"
    assert lines[1] == "<3>Level 45 procq: between error and critical"


def test_journal_format_traceback_lines_prefixed(pipe):
    configure_logging("INFO", stream=pipe.stream, environ=pipe.journal_environ())

    try:
        raise RuntimeError("handler exploded")
    except RuntimeError:
        logging.getLogger("procq.worker").exception("task %s failed", "t-1")

    lines = pipe.read_all().splitlines()
    assert lines[0] == "<3>ERROR procq.worker: task t-1 failed"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>RuntimeError: handler exploded"
    assert all(line.startswith("<3>") for line in lines)
    assert any('raise RuntimeError("handler exploded")' in line for line in lines)


def test_journal_format_multiline_message(pipe):
    configure_logging("INFO", stream=pipe.stream, environ=pipe.journal_environ())

    logging.getLogger("procq").warning("first\nsecond")

    assert pipe.read_all().splitlines() == ["<4>WARNING procq: first", "<4>second"]


def test_plain_format_keeps_traceback(pipe):
    configure_logging("INFO", stream=pipe.stream, environ={})

    try:
        raise KeyError("missing")
    except KeyError:
        logging.getLogger("procq").exception("lookup failed")

    lines = pipe.read_all().splitlines()
    assert PLAIN_LINE.match(lines[0])
    assert lines[0].endswith("ERROR procq: lookup failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "KeyError: 'missing'"


def test_journal_stream_of_other_file_is_ignored(pipe):
    other = Pipe()
    try:
        configure_logging("INFO", stream=pipe.stream, environ=other.journal_environ())
    finally:
        other.close()

    logging.getLogger("procq").info("hello")

    assert PLAIN_LINE.match(pipe.read_all().splitlines()[0])


@pytest.mark.parametrize("value", ["", "garbage", "1:2:3", "a:b"])
def test_journal_stream_invalid_value_is_ignored(pipe, value):
    configure_logging("INFO", stream=pipe.stream, environ={"JOURNAL_STREAM": value})

    logging.getLogger("procq").info("hello")

    assert PLAIN_LINE.match(pipe.read_all().splitlines()[0])


def test_journal_stream_without_file_descriptor():
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, environ={"JOURNAL_STREAM": "1:2"})

    logging.getLogger("procq").info("hello")

    assert PLAIN_LINE.match(stream.getvalue().splitlines()[0])


def test_level_filters_records():
    stream = io.StringIO()
    configure_logging("warning", stream=stream, environ={})

    logging.getLogger("procq.x").info("hidden")
    logging.getLogger("procq.x").warning("shown")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("WARNING procq.x: shown")


@pytest.mark.parametrize("name, levelno", [
    ("debug", logging.DEBUG), ("Info", logging.INFO), ("WARNING", logging.WARNING),
    (" error ", logging.ERROR), ("critical", logging.CRITICAL),
])
def test_level_names_any_case(name, levelno):
    configure_logging(name, stream=io.StringIO(), environ={})

    assert logging.getLogger("procq").level == levelno


@pytest.mark.parametrize("name", ["verbose", "warn", "", "10"])
def test_invalid_level_raises(name):
    with pytest.raises(ValueError) as excinfo:
        configure_logging(name, stream=io.StringIO(), environ={})

    message = str(excinfo.value)
    assert repr(name) in message
    assert "CRITICAL, ERROR, WARNING, INFO, DEBUG" in message


def test_configure_again_replaces_handler():
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", stream=first, environ={})
    configure_logging("INFO", stream=second, environ={})

    logging.getLogger("procq").info("once")

    logger = logging.getLogger("procq")
    assert len([h for h in logger.handlers if h.get_name() == HANDLER_NAME]) == 1
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_records_do_not_reach_root_handler():
    root_stream = io.StringIO()
    root_handler = logging.StreamHandler(root_stream)
    logging.getLogger().addHandler(root_handler)
    try:
        configure_logging("INFO", stream=io.StringIO(), environ={})
        logging.getLogger("procq").info("only once")
    finally:
        logging.getLogger().removeHandler(root_handler)

    assert root_stream.getvalue() == ""


def test_default_stream_is_stderr(capsys):
    configure_logging("INFO", environ={})

    logging.getLogger("procq").info("to stderr")

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("INFO procq: to stderr\n")
