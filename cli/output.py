"""Output helpers of the `procq` command: aligned tables, JSON, colour and readable values.

Data goes to stdout. Diagnostics go to stderr, written by the commands with
click.echo(err=True). Colour is used only when stdout is a terminal and NO_COLOR is unset.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any, Iterable, Sequence

import click

DEFAULT_WIDTH = 80
COLUMN_GAP = "  "
# Used instead when a table does not fit with COLUMN_GAP even with its values cut.
NARROW_COLUMN_GAP = " "

# Colours of task states, outcomes and worker states. Other names are printed plain.
STATE_COLORS = {
    "pending": "blue", "scheduled": "blue", "retry": "yellow", "active": "cyan",
    "completed": "green", "succeeded": "green", "failed": "red", "cancelled": "yellow",
    "busy": "cyan", "idle": "green", "stopping": "yellow", "paused": "yellow",
}
FAILURE_OUTCOMES = {"error", "timeout", "deadline", "expired", "memory", "worker_lost",
                    "result_invalid"}


# -- terminal ---------------------------------------------------------------------------

def use_color(stream=None) -> bool:
    """Return True if colour may be written to `stream` (stdout by default)."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def terminal_width() -> int:
    """Return the width of stdout's terminal in columns ($COLUMNS first), else 80.

    Written out instead of shutil.get_terminal_size, because importing shutil costs
    more than the rest of this module.
    """
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns or DEFAULT_WIDTH
    except (AttributeError, ValueError, OSError):
        return DEFAULT_WIDTH


def colorize(text: str, key: str | None, enabled: bool) -> str:
    """Colour `text` by the state or outcome `key` when enabled."""
    if not enabled or key is None:
        return text
    color = "red" if key in FAILURE_OUTCOMES else STATE_COLORS.get(key)
    return click.style(text, fg=color) if color else text


def ellipsis_mark() -> str:
    """Return the character that marks a truncated value: … where stdout can encode it."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "…".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "~"
    return "…"


def truncate(text: str, width: int, mark: str = "…") -> str:
    """Cut `text` to at most `width` characters, ending with `mark` when cut."""
    if len(text) <= width:
        return text
    if width <= len(mark):
        return text[:width]
    return text[:width - len(mark)] + mark


# -- JSON -------------------------------------------------------------------------------

def print_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout, and nothing else."""
    import json

    click.echo(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))


# -- tables -----------------------------------------------------------------------------

class Column:
    """A table column. `shrink` columns may be cut, down to `min_width`, to fit the width.

    A `last_resort` column is cut only when the table does not fit otherwise, even with
    the other columns cut and single spaces between columns (a task id, which a cut
    makes useless to copy). A plain class rather than a dataclass: the dataclass
    decorator alone costs about a millisecond at import, and every command imports
    this module.
    """

    __slots__ = ("header", "align", "shrink", "min_width", "last_resort")

    def __init__(self, header: str, align: str = "left", shrink: bool = False, min_width: int = 6,
                 last_resort: bool = False):
        self.header = header
        self.align = align
        self.shrink = shrink or last_resort
        self.min_width = min_width
        self.last_resort = last_resort


def table_width(widths: Sequence[int], gap: str) -> int:
    return sum(widths) + len(gap) * (len(widths) - 1)


def fit_widths(columns: Sequence[Column], natural: list[int], width: int,
               gap: str = COLUMN_GAP, last_resort: bool = False) -> list[int]:
    """Return column widths that fit `width`, cutting the widest shrinkable column first.

    `last_resort` columns are cut only when `last_resort` is true. When every column
    that may be cut is at its minimum, the table stays wider than `width`.
    """
    widths = list(natural)
    floors = [max(column.min_width, len(column.header)) for column in columns]
    excess = table_width(widths, gap) - width
    while excess > 0:
        candidates = [index for index, column in enumerate(columns)
                      if column.shrink and not column.last_resort and widths[index] > floors[index]]
        if not candidates and last_resort:
            candidates = [index for index, column in enumerate(columns)
                          if column.last_resort and widths[index] > floors[index]]
        if not candidates:
            break
        widest = max(candidates, key=lambda index: widths[index])
        widths[widest] -= 1
        excess -= 1
    return widths


def render_table(columns: Sequence[Column], rows: Iterable[Sequence[str]], *,
                 width: int | None = None, colors: Sequence[Sequence[str | None]] | None = None,
                 color: bool = False) -> list[str]:
    """Return the lines of an aligned table with a header row, fitted to `width` columns.

    To fit, the table first cuts its shrinkable columns, then narrows the gaps between
    columns to one space, then cuts its last-resort columns. `colors`, when given,
    contains a state or outcome name (or None) per cell, used to colour that cell.
    The padding is computed on the plain text, so colour never breaks the alignment.
    """
    rows = [[str(cell) for cell in row] for row in rows]
    natural = [len(column.header) for column in columns]
    for row in rows:
        for index, cell in enumerate(row):
            natural[index] = max(natural[index], len(cell))
    width = terminal_width() if width is None else width
    for gap, last_resort in ((COLUMN_GAP, False), (NARROW_COLUMN_GAP, False), (NARROW_COLUMN_GAP, True)):
        widths = fit_widths(columns, natural, width, gap, last_resort)
        if table_width(widths, gap) <= width:
            break
    mark = ellipsis_mark()

    lines = [_render_row([column.header for column in columns], columns, widths, gap, None, False, mark)]
    for row_index, row in enumerate(rows):
        row_colors = colors[row_index] if colors is not None else None
        lines.append(_render_row(row, columns, widths, gap, row_colors, color, mark))
    return lines


def _render_row(cells: Sequence[str], columns: Sequence[Column], widths: list[int], gap: str,
                cell_colors: Sequence[str | None] | None, color: bool, mark: str) -> str:
    parts = []
    last = len(cells) - 1
    for index, cell in enumerate(cells):
        text = truncate(cell, widths[index], mark)
        if columns[index].align == "right":
            text = text.rjust(widths[index])
        elif index != last:
            text = text.ljust(widths[index])
        if cell_colors is not None:
            text = colorize(text, cell_colors[index], color)
        parts.append(text)
    return gap.join(parts).rstrip()


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[str]],
                colors: Sequence[Sequence[str | None]] | None = None) -> None:
    """Print a table fitted to the terminal, coloured when stdout is a terminal."""
    for line in render_table(columns, rows, colors=colors, color=use_color()):
        click.echo(line)


def print_fields(fields: Sequence[tuple[str, str]], indent: str = "") -> None:
    """Print `label: value` lines with the values aligned; multi-line values are indented."""
    if not fields:
        return
    label_width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        lines = str(value).splitlines() or [""]
        click.echo(f"{indent}{(label + ':').ljust(label_width)} {lines[0]}".rstrip())
        for line in lines[1:]:
            click.echo(f"{indent}{' ' * label_width} {line}".rstrip())


# -- values -----------------------------------------------------------------------------

def format_duration(seconds: float | None) -> str:
    """Format seconds for people: 250ms, 1.50s, 42.0s, 5m 03s, 2h 05m, 3d 04h; None is -."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{sign}{seconds:.2f}s"
    if seconds < 60:
        return f"{sign}{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{sign}{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{sign}{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{sign}{whole // 86400}d {whole % 86400 // 3600:02d}h"


def format_seconds(seconds: float | None) -> str:
    """Format a configured duration exactly, e.g. 5.0s or 1800s (30m 00s); None is -."""
    if seconds is None:
        return "-"
    exact = f"{seconds:g}s"
    return exact if seconds < 60 else f"{exact} ({format_duration(seconds)})"


def format_bytes(size: float | None) -> str:
    """Format bytes with binary multiples: 512B, 1.5K, 200M, 2.0G; None is -."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if abs(value) < 1024:
            return f"{value:.0f}{unit}" if unit == "B" or value >= 100 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def format_ms(seconds: float | None) -> str:
    """Format a lateness in seconds as milliseconds, e.g. 1.24ms; None is -."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.2f}ms"


def format_time(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """Format an aware time in the local zone with the distance from now, e.g.
    `2026-05-01 14:00:03.120+02:00 (5m 03s ago)`; None is -."""
    if value is None:
        return "-"
    now = dt.datetime.now(dt.timezone.utc) if now is None else now
    local = value.astimezone()
    text = local.isoformat(sep=" ", timespec="milliseconds")
    delta = (now - value).total_seconds()
    if delta >= 0:
        return f"{text} ({format_duration(delta)} ago)"
    return f"{text} (in {format_duration(-delta)})"


def format_progress(progress: dict | None, bar_width: int = 0) -> str:
    """Format a task's progress {done, total, message}: `42% 21/50 message`, with a bar
    of `bar_width` characters in front when it is > 0 and the total is known."""
    if not progress:
        return ""
    done = progress.get("done")
    total = progress.get("total")
    message = progress.get("message") or ""
    parts = []
    if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
        fraction = min(max(done / total, 0.0), 1.0)
        if bar_width > 0:
            filled = int(round(fraction * bar_width))
            parts.append("[" + "#" * filled + "." * (bar_width - filled) + "]")
        parts.append(f"{fraction * 100:.0f}%")
        parts.append(f"{_format_number(done)}/{_format_number(total)}")
    elif isinstance(done, (int, float)):
        parts.append(_format_number(done))
    if message:
        parts.append(str(message))
    return " ".join(parts)


def _format_number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_signal(number: int | None) -> str:
    """Format a signal number with its name, e.g. `9 (SIGKILL)`; None is -."""
    if number is None:
        return "-"
    import signal

    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


def yes_no(value: Any) -> str:
    return "yes" if value else "no"
