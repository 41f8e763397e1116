"""Unit tests of procq.cli.parse: durations, sizes, times, JSON arguments and states."""

from __future__ import annotations

import datetime as dt

import click
import pytest
from click.testing import CliRunner

from procq import NO_TIMEOUT
from procq.cli import parse


@pytest.mark.parametrize("text, seconds", [
    ("90", 90.0),
    ("1.5", 1.5),
    ("1.5s", 1.5),
    ("250ms", 0.25),
    ("5m", 300.0),
    ("2h", 7200.0),
    ("7d", 604800.0),
    (" 3S ", 3.0),
    (".5s", 0.5),
])
def test_parse_duration_accepts(text, seconds):
    assert parse.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5x", "1.5.2s", "-3", "0", "0ms", "5 minutes", "1h30m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError) as info:
        parse.parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    assert "250ms" in message


@pytest.mark.parametrize("text, size", [
    ("4096", 4096),
    ("1K", 1024),
    ("64k", 64 * 1024),
    ("512M", 512 * 1024 ** 2),
    ("2G", 2 * 1024 ** 3),
    ("1T", 1024 ** 4),
    ("1.5G", int(1.5 * 1024 ** 3)),
    ("512MiB", 512 * 1024 ** 2),
])
def test_parse_size_accepts(text, size):
    assert parse.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "12Q", "-1G", "0", "0.1", "2 gigs"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError) as info:
        parse.parse_size(text)
    message = str(info.value)
    assert repr(text) in message
    assert "512M" in message


@pytest.mark.parametrize("text, expected", [
    ("2030-05-01T12:00:00+02:00",
     dt.datetime(2030, 5, 1, 10, 0, tzinfo=dt.timezone.utc)),
    ("2030-05-01T10:00:00Z", dt.datetime(2030, 5, 1, 10, 0, tzinfo=dt.timezone.utc)),
    ("2030-05-01T10:00:00.250z",
     dt.datetime(2030, 5, 1, 10, 0, 0, 250000, tzinfo=dt.timezone.utc)),
    ("2030-05-01 10:00-05:00", dt.datetime(2030, 5, 1, 15, 0, tzinfo=dt.timezone.utc)),
])
def test_parse_time_accepts_offsets(text, expected):
    value = parse.parse_time(text)
    assert value == expected
    assert value.utcoffset() is not None


def test_parse_time_rejects_missing_offset():
    with pytest.raises(ValueError) as info:
        parse.parse_time("2030-05-01T12:00:00")
    message = str(info.value)
    assert "'2030-05-01T12:00:00'" in message
    assert "no UTC offset" in message


@pytest.mark.parametrize("text", ["tomorrow", "2030-13-01T00:00Z", ""])
def test_parse_time_rejects_garbage(text):
    with pytest.raises(ValueError) as info:
        parse.parse_time(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text, value", [
    ("3", 3),
    ("1.5", 1.5),
    ("abc", "abc"),
    ('"3"', "3"),
    ("[1, 2]", [1, 2]),
    ('{"a": null}', {"a": None}),
    ("true", True),
    ("null", None),
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("{broken", "{broken"),
    ("", ""),
])
def test_parse_json_arg_falls_back_to_string(text, value):
    assert parse.parse_json_arg(text) == value


def test_parse_json_object_accepts_object():
    assert parse.parse_json_object('{"n": 3, "s": "x"}') == {"n": 3, "s": "x"}


@pytest.mark.parametrize("text, reason", [
    ("{bad", "not valid JSON"),
    ("[1, 2]", "JSON list"),
    ("3", "JSON int"),
    ('{"n": NaN}', "not valid JSON"),
])
def test_parse_json_object_rejects(text, reason):
    with pytest.raises(ValueError) as info:
        parse.parse_json_object(text)
    message = str(info.value)
    assert repr(text) in message
    assert reason in message


def _run_option(param_type, argv):
    """Run a one-option command and return the click result, with the value on stdout."""

    @click.command()
    @click.option("--value", type=param_type)
    def command(value):
        click.echo(repr(value))

    return CliRunner().invoke(command, argv)


def test_duration_type_maps_none_to_no_timeout():
    result = _run_option(parse.Duration(allow_none=True), ["--value", "none"])
    assert result.exit_code == 0
    assert result.stdout.strip() == repr(NO_TIMEOUT)


def test_duration_type_rejects_none_without_allow_none():
    result = _run_option(parse.Duration(), ["--value", "none"])
    assert result.exit_code == 2
    assert "'none' is not a duration" in result.stderr


def test_invalid_value_is_one_line():
    result = _run_option(parse.Size(), ["--value", "12Q"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: Invalid value for '--value': '12Q'")


@pytest.mark.parametrize("argv", [["--value", "active"], ["--value=active"], ["--value", "ACTIVE"]])
def test_state_type_accepts_both_spellings(argv):
    result = _run_option(parse.State(), argv)
    assert result.exit_code == 0
    assert result.stdout.strip() == "'active'"


def test_state_type_rejects_unknown_state():
    result = _run_option(parse.State(), ["--value", "running"])
    assert result.exit_code == 2
    assert "'running' is not a task state" in result.stderr
    assert "pending, scheduled, active" in result.stderr


def test_state_type_rejects_state_outside_allowed():
    result = _run_option(parse.State(("completed", "failed")), ["--value", "active"])
    assert result.exit_code == 2
    assert "'active' is not accepted here; expected one of completed, failed" in result.stderr


@pytest.mark.parametrize("text, accepted", [("3", True), ("0", True), ("-1", False), ("x", False)])
def test_count_type_minimum(text, accepted):
    result = _run_option(parse.Count(minimum=0), ["--value", text])
    assert (result.exit_code == 0) is accepted
    if not accepted:
        assert repr(text) in result.stderr
