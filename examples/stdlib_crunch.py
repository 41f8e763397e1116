"""A procq application that compresses and searches files, plus a handler that never ends.

Run it with a supervisor and enqueue tasks from any process:

    procq supervisor run --app examples.stdlib_crunch:app --workers 2
    python -c 'import procq; print(procq.Client().enqueue("crunch:compress", ["/etc/services"]))'

Every handler takes the task's Context first, then the task's JSON arguments.
`procq demo` runs this application on the largest files of Python's standard library.
"""

from __future__ import annotations

import logging
import lzma
import re
import time

import procq

logger = logging.getLogger(__name__)

# Every attempt may run for at most 60 seconds unless the task or handler sets its own timeout.
app = procq.App("stdlib-crunch", default_timeout=60)


@app.task("crunch:compress")
def compress(ctx: procq.Context, path: str) -> dict:
    """Compress a file's bytes with LZMA at the highest preset and return the sizes.

    The compressed bytes are discarded: the point is the CPU work and the ratio.
    `bytes_in` and `bytes_out` are sizes in bytes, and `seconds` is the time spent compressing.
    """
    with open(path, "rb") as file:
        data = file.read()

    started = time.perf_counter()
    compressed = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    seconds = time.perf_counter() - started

    return {"path": path, "bytes_in": len(data), "bytes_out": len(compressed), "seconds": seconds}


@app.task("crunch:search")
def search(ctx: procq.Context, path: str, patterns: list[str]) -> dict:
    """Count the matches of each regular expression in a text file.

    Returns {"path": path, "counts": {pattern: count}}. Progress is reported after each
    pattern, so `procq task inspect` shows how far the search has got.
    """
    with open(path, encoding="utf-8", errors="replace") as file:
        text = file.read()

    counts = {}
    for done, pattern in enumerate(patterns, start=1):
        counts[pattern] = sum(1 for _ in re.finditer(pattern, text))
        ctx.progress(done, len(patterns))

    return {"path": path, "counts": counts}


@app.task("crunch:backtrack")
def backtrack(ctx: procq.Context, n: int) -> dict:
    """Match `(a+)+$` against n a's and a b, which backtracks catastrophically.

    Each extra `a` doubles the time the match takes to fail: n=20 takes milliseconds and
    n=40 takes hours. Enqueue it with a short timeout.
    CPython's `re` checks for signals while it backtracks, so procq's soft signal raises
    procq.TaskCancelled inside re.match and the handler can clean up. The handler catches
    the exception only to log it, then re-raises it: the attempt's outcome is the stop
    reason (`timeout`, `deadline`, ...) whatever the handler does after the soft signal.
    """
    started = time.perf_counter()
    try:
        match = re.match(r"(a+)+$", "a" * n + "b")
    except procq.TaskCancelled as exc:
        # procq's worker logging prefixes each line with the task id.
        logger.info("backtracking with n=%d stopped after %.2f s (reason: %s)",
                    n, time.perf_counter() - started, exc.reason)
        raise

    return {"n": n, "matched": match is not None, "seconds": time.perf_counter() - started}
