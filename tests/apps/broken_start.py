"""An application whose on_worker_start hook always raises, so no worker ever becomes ready."""

from __future__ import annotations

import os
import time

import procq

app = procq.App("broken-start")

# Each hook call appends one line here: the CLOCK_MONOTONIC time of the call, in seconds.
CALLS_FILE = os.environ.get("PROCQ_TEST_HOOK_CALLS")


@app.on_worker_start
def fail_to_start():
    if CALLS_FILE:
        with open(CALLS_FILE, "a") as file:
            file.write(f"{time.monotonic()}\n")
    raise RuntimeError("on_worker_start failed on purpose")


@app.task("echo")
def echo(ctx, *args):
    return list(args)
