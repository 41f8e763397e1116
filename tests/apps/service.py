"""Handlers for the service tests: each run leaves a trace that the test can count."""

from __future__ import annotations

import os
import subprocess
import time

import procq

# A short retry delay, so that a retried task runs again within the test's time.
app = procq.App("service-tests", default_timeout=60, default_grace=1.0,
                retry_delay=lambda attempt, error: 0.05)


@app.task("record_run")
def record_run(ctx, runs_file, seconds=0.0, marker=None):
    """Append this task's id to `runs_file`, optionally start a child, then sleep.

    The child is a `sleep 1000` with PROCQ_TEST_MARKER=marker in its environment, so the
    test can find it if it outlives its handler.
    """
    descriptor = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, f"{ctx.task_id}\n".encode())
    finally:
        os.close(descriptor)
    if marker is not None:
        subprocess.Popen(["sleep", "1000"], env={**os.environ, "PROCQ_TEST_MARKER": marker})
    time.sleep(seconds)
    return ctx.task_id
