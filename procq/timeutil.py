"""Conversions between POSIX timestamps, aware datetimes and ISO 8601 UTC strings."""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc


def to_datetime(timestamp: float | None) -> dt.datetime | None:
    """Return an aware UTC datetime for a POSIX timestamp in seconds, or None."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, UTC)


def to_iso(timestamp: float | None) -> str | None:
    """Format a POSIX timestamp as ISO 8601 UTC with microseconds, e.g. 2026-12-04T20:42:00.123456Z."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_iso(text: str | None) -> dt.datetime | None:
    """Parse an ISO 8601 string with an offset or a trailing Z into an aware datetime."""
    if text is None:
        return None
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return value
