"""Unit tests of the example applications: handlers called directly, without a supervisor."""

from __future__ import annotations

import lzma
import os
import re
import signal
import sys
import sysconfig

import pytest

import procq

# `examples/` sits at the repository root and is not installed, so import it from the checkout.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from examples import stdlib_crunch  # noqa: E402

# A real file that every CPython installation has: the standard library's `os` module.
STDLIB_FILE = os.path.join(sysconfig.get_paths()["stdlib"], "os.py")


def make_context(send_progress=None) -> procq.Context:
    return procq.Context(task_id="t", name="n", queue="q", attempt=1, deadline_at=None,
                         deadline_monotonic=None, send_progress=send_progress)


def test_app_registers_crunch_handlers():
    assert set(stdlib_crunch.app.handlers) == {"crunch:compress", "crunch:search", "crunch:backtrack"}
    assert stdlib_crunch.app.default_timeout == 60


def test_compress_returns_sizes():
    result = stdlib_crunch.compress(make_context(), STDLIB_FILE)

    with open(STDLIB_FILE, "rb") as file:
        data = file.read()
    assert result["path"] == STDLIB_FILE
    assert result["bytes_in"] == len(data)
    assert result["bytes_out"] == len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    assert 0 < result["bytes_out"] < result["bytes_in"]
    assert result["seconds"] >= 0


def test_compress_missing_file_raises():
    with pytest.raises(FileNotFoundError):
        stdlib_crunch.compress(make_context(), "/nonexistent/procq-example.py")


def test_search_counts_each_pattern():
    updates = []
    patterns = [r"^def \w+", r"\bimport\b", r"no such text in os\.py \d{40}"]

    result = stdlib_crunch.search(make_context(updates.append), STDLIB_FILE, patterns)

    with open(STDLIB_FILE, encoding="utf-8") as file:
        text = file.read()
    assert result["path"] == STDLIB_FILE
    assert list(result["counts"]) == patterns
    assert result["counts"][patterns[0]] == len(re.findall(patterns[0], text))
    assert result["counts"][patterns[1]] == len(re.findall(patterns[1], text))
    assert result["counts"][patterns[2]] == 0
    # Context sends the first update at once and merges later ones sent within 0.2 s of it,
    # so only the first update is certain to arrive.
    assert updates, "search sent no progress update"
    assert updates[0]["done"] == 1
    assert updates[0]["total"] == len(patterns)


def test_backtrack_small_n_returns():
    result = stdlib_crunch.backtrack(make_context(), 12)

    assert result["n"] == 12
    assert result["matched"] is False
    assert result["seconds"] < 5


def test_backtrack_reraises_task_cancelled():
    # Stand in for procq's soft signal: a timer signal whose handler raises TaskCancelled,
    # which CPython's `re` lets through while it backtracks.
    def raise_cancelled(signum, frame):
        raise procq.TaskCancelled("timeout")

    previous = signal.signal(signal.SIGALRM, raise_cancelled)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(procq.TaskCancelled) as caught:
            stdlib_crunch.backtrack(make_context(), 40)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert caught.value.reason == "timeout"
