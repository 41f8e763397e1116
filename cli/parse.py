"""Parsing of command-line values: durations, sizes, times, task arguments, states.

The plain functions raise ValueError with a message that names the value and what is
accepted. The click parameter types below turn that into a one-line usage error.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

import click

from procq import states
from procq.cli.errors import InvalidValue

DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SIZE_UNITS_BYTES = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}

# Matched with re.match's own pattern cache, so no pattern is compiled at import.
_DURATION = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$"
_SIZE = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:i?B)?\s*$"

DURATION_HELP = "seconds (90, 1.5) or a number with ms, s, m, h or d (250ms, 1.5s, 5m, 2h, 7d)"
SIZE_HELP = "bytes, or a number with K, M, G or T in multiples of 1024 (512M, 2G)"
TIME_HELP = "an ISO 8601 time with a UTC offset (2026-05-01T12:00:00+02:00 or ...Z)"


def parse_duration(text: str) -> float:
    """Return the seconds in `90`, `1.5s`, `250ms`, `5m`, `2h` or `7d`, which must be > 0."""
    match = re.match(_DURATION, text, re.IGNORECASE)
    if match is None:
        if text.strip().startswith("-"):
            raise ValueError(f"{text!r} is negative; a duration must be positive: {DURATION_HELP}")
        raise ValueError(f"{text!r} is not a duration; expected {DURATION_HELP}")
    number, unit = match.groups()
    seconds = float(number) * DURATION_UNITS_S[(unit or "s").lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration; expected {DURATION_HELP}")
    return seconds


def parse_size(text: str) -> int:
    """Return the bytes in `4096`, `64K`, `512M`, `2G` or `1T` (also `512MiB`), which must be > 0."""
    match = re.match(_SIZE, text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{text!r} is not a size; expected {SIZE_HELP}")
    number, unit = match.groups()
    size = float(number) * SIZE_UNITS_BYTES[unit.upper()]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"{text!r} is not a positive size; expected {SIZE_HELP}")
    return int(round(size))


def parse_time(text: str) -> dt.datetime:
    """Return an aware datetime for an ISO 8601 time that has a UTC offset or a trailing Z.

    A time without an offset is rejected, because reading it as local time or as UTC
    would each surprise someone.
    """
    candidate = text.strip()
    if candidate[-1:] in ("z", "Z"):
        candidate = candidate[:-1] + "+00:00"
    try:
        value = dt.datetime.fromisoformat(candidate)
    except ValueError:
        raise ValueError(f"{text!r} is not a time; expected {TIME_HELP}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{text!r} has no UTC offset; add one, e.g. {candidate}+00:00 or {candidate}Z"
        )
    return value


def parse_json_arg(text: str) -> Any:
    """Parse one task argument as JSON, falling back to the plain string.

    `3` is a number, `'"3"'` and `abc` are strings, `[1, 2]` is a list. Non-finite
    numbers (NaN, Infinity) stay strings because JSON cannot carry them.
    """
    import json

    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def parse_json_object(text: str) -> dict[str, Any]:
    """Parse `--kwargs`: a JSON object with string keys."""
    import json

    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not valid JSON ({exc}); expected an object like "
                         "'{\"n\": 3}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{text!r} is a JSON {type(value).__name__}; expected an object like "
                         "'{\"n\": 3}'")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class _ValueType(click.ParamType):
    """Base of the types below: call `parse` and report its ValueError as InvalidValue."""

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # Already converted: a default or a value passed from Python.
        try:
            return self.parse(value)
        except ValueError as exc:
            raise InvalidValue(str(exc), ctx=ctx, param=param) from None


class Duration(_ValueType):
    """A positive duration in seconds; with `allow_none`, `none` gives procq.NO_TIMEOUT."""

    name = "duration"

    def __init__(self, allow_none: bool = False):
        self.allow_none = allow_none

    def parse(self, text: str) -> Any:
        if self.allow_none and text.strip().lower() == "none":
            return states.NO_TIMEOUT
        try:
            return parse_duration(text)
        except ValueError as exc:
            if self.allow_none:
                raise ValueError(f"{exc}, or none for no limit") from None
            raise


class Size(_ValueType):
    name = "size"

    def parse(self, text: str) -> int:
        return parse_size(text)


class Time(_ValueType):
    name = "time"

    def parse(self, text: str) -> dt.datetime:
        return parse_time(text)


class JsonObject(_ValueType):
    name = "json"

    def parse(self, text: str) -> dict[str, Any]:
        return parse_json_object(text)


class Count(_ValueType):
    """An integer >= `minimum`."""

    name = "integer"

    def __init__(self, minimum: int = 0):
        self.minimum = minimum

    def parse(self, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer; expected an integer >= {self.minimum}") from None
        if value < self.minimum:
            raise ValueError(f"{text!r} is too small; expected an integer >= {self.minimum}")
        return value


class State(_ValueType):
    """A task state, optionally restricted to `allowed` (e.g. the final states for delete)."""

    name = "state"

    def __init__(self, allowed: tuple[str, ...] = states.STATES):
        self.allowed = allowed

    def parse(self, text: str) -> str:
        value = text.strip().lower()
        if value not in self.allowed:
            if value in states.STATES:
                raise ValueError(f"{text!r} is not accepted here; expected one of {', '.join(self.allowed)}")
            raise ValueError(f"{text!r} is not a task state; expected one of {', '.join(self.allowed)}")
        return value

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.allowed) + "]"

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str):
        from click.shell_completion import CompletionItem

        return [CompletionItem(state) for state in self.allowed if state.startswith(incomplete)]
