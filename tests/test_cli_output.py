"""Unit tests of procq.cli.output: table fitting, colour rules and value formatting."""

from __future__ import annotations

import datetime as dt
import io
import json
import re

import click
import pytest
from click.testing import CliRunner

from procq.cli import output
from procq.cli.output import Column

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_render_table_aligns_columns():
    columns = [Column("ID"), Column("STATE"), Column("N", align="right")]
    lines = output.render_table(columns, [["a1", "pending", "3"], ["b22", "active", "10"]], width=80)
    assert lines == [
        "ID   STATE     N",
        "a1   pending   3",
        "b22  active   10",
    ]


def test_render_table_truncates_shrinkable_column_to_width():
    columns = [Column("ID"), Column("NAME", shrink=True), Column("STATE")]
    long_name = "compress_" + "x" * 100
    lines = output.render_table(columns, [["0123456789abcdef", long_name, "completed"]], width=40)
    for line in lines:
        assert len(line) <= 40
    row = lines[1]
    assert row.startswith("0123456789abcdef  compress_")
    assert "…" in row or "~" in row
    assert row.endswith("completed")


def test_render_table_never_cuts_fixed_columns():
    task_id = "f" * 60
    columns = [Column("ID"), Column("NAME", shrink=True, min_width=6)]
    lines = output.render_table(columns, [[task_id, "a_long_handler_name"]], width=40)
    assert task_id in lines[1]
    assert lines[1].split()[1] == "a_lon…" or lines[1].split()[1] == "a_lon~"


def test_fit_widths_shrinks_widest_first():
    columns = [Column("A", shrink=True, min_width=4), Column("B", shrink=True, min_width=4)]
    widths = output.fit_widths(columns, [30, 10], width=32)
    assert sum(widths) + len(output.COLUMN_GAP) == 32
    assert widths == [20, 10]


def test_fit_widths_keeps_natural_widths_when_they_fit():
    columns = [Column("A", shrink=True), Column("B")]
    assert output.fit_widths(columns, [10, 10], width=80) == [10, 10]


def test_render_table_colors_cells_without_breaking_alignment():
    columns = [Column("ID"), Column("STATE"), Column("X")]
    lines = output.render_table(columns, [["a", "failed", "1"], ["bb", "completed", "2"]],
                                width=80, colors=[[None, "failed", None], [None, "completed", None]],
                                color=True)
    assert "\x1b[" in lines[1]
    plain = [ANSI.sub("", line) for line in lines]
    assert plain[1].index("1") == plain[2].index("2") == plain[0].index("X")


def test_render_table_plain_when_color_disabled():
    columns = [Column("STATE")]
    lines = output.render_table(columns, [["failed"]], width=80, colors=[["failed"]], color=False)
    assert "\x1b[" not in "".join(lines)


class _FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_use_color_needs_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert output.use_color(_FakeTty()) is True
    assert output.use_color(io.StringIO()) is False


def test_use_color_respects_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert output.use_color(_FakeTty()) is False


def test_terminal_width_reads_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "123")
    assert output.terminal_width() == 123


def test_terminal_width_defaults_to_80_in_a_pipe(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)

    @click.command()
    def command():
        click.echo(output.terminal_width())

    result = CliRunner().invoke(command)
    assert result.stdout.strip() == "80"


def test_print_json_is_valid_json_only():
    @click.command()
    def command():
        output.print_json([{"id": "a", "args": [1, "é"], "n": None}])

    result = CliRunner().invoke(command)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [{"id": "a", "args": [1, "é"], "n": None}]


def test_print_fields_aligns_and_indents_multiline_values():
    @click.command()
    def command():
        output.print_fields([("id", "a1"), ("error", "Traceback:\n  line\nValueError: x")])

    result = CliRunner().invoke(command)
    assert result.stdout.splitlines() == [
        "id:    a1",
        "error: Traceback:",
        "         line",
        "       ValueError: x",
    ]


@pytest.mark.parametrize("seconds, text", [
    (None, "-"),
    (0.25, "250ms"),
    (1.5, "1.50s"),
    (42.0, "42.0s"),
    (303, "5m 03s"),
    (7500, "2h 05m"),
    (3 * 86400 + 4 * 3600, "3d 04h"),
    (-2.0, "-2.00s"),
])
def test_format_duration(seconds, text):
    assert output.format_duration(seconds) == text


@pytest.mark.parametrize("size, text", [
    (None, "-"),
    (512, "512B"),
    (1536, "1.5K"),
    (200 * 1024 ** 2, "200M"),
    (2 * 1024 ** 3, "2.0G"),
])
def test_format_bytes(size, text):
    assert output.format_bytes(size) == text


@pytest.mark.parametrize("number, text", [(9, "9 (SIGKILL)"), (15, "15 (SIGTERM)"), (None, "-"), (999, "999")])
def test_format_signal_names_signal(number, text):
    assert output.format_signal(number) == text


def test_format_progress_with_total():
    text = output.format_progress({"done": 21, "total": 50, "message": "files"}, bar_width=10)
    assert text == "[####......] 42% 21/50 files"


def test_format_progress_without_total():
    assert output.format_progress({"done": 7, "total": None, "message": None}) == "7"
    assert output.format_progress(None) == ""


def test_format_time_shows_local_time_and_distance():
    now = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    text = output.format_time(now - dt.timedelta(seconds=90), now)
    assert text.endswith("(1m 30s ago)")
    assert output.format_time(now + dt.timedelta(seconds=5), now).endswith("(in 5.00s)")
    assert output.format_time(None) == "-"


def test_truncate_marks_cut():
    assert output.truncate("abcdef", 4, "…") == "abc…"
    assert output.truncate("abc", 4, "…") == "abc"


def test_render_table_narrows_gaps_before_overflowing():
    columns = [Column("ID"), Column("NAME", shrink=True, min_width=4), Column("STATE")]
    lines = output.render_table(columns, [["x" * 30, "handler", "completed"]], width=45)
    assert lines[1] == "x" * 30 + " han… completed" or lines[1] == "x" * 30 + " han~ completed"
    assert len(lines[1]) <= 45


def test_render_table_cuts_id_last():
    columns = [Column("ID", min_width=12, last_resort=True), Column("NAME", shrink=True, min_width=4),
               Column("STATE")]
    row = ["x" * 32, "handler", "completed"]
    roomy = output.render_table(columns, [row], width=60)
    assert roomy[1] == "x" * 32 + "  handler  completed"
    tight = output.render_table(columns, [row], width=40)
    assert len(tight[1]) == 40
    assert tight[1].startswith("x" * 24 + "…") or tight[1].startswith("x" * 24 + "~")
    assert tight[1].endswith(" han… completed") or tight[1].endswith(" han~ completed")
