"""`procq demo` end to end: a real supervisor, real workers and the example application."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

# With 40 files the demo took about 5 s on 2 cores. The bound leaves room for slow, busy machines.
DEMO_TIMEOUT_S = 240


def run_demo(cwd, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "procq.cli.main", "demo", *options],
        cwd=cwd, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S,
    )


def workdir_of(stdout: str) -> str:
    match = re.search(r"log: (\S+)/supervisor\.log$", stdout, re.MULTILINE)
    assert match, f"no supervisor log path in the output:\n{stdout}"
    return match.group(1)


def test_demo_prints_report_and_exits_0(tmp_path):
    completed = run_demo(tmp_path, "--files", "40", "--workers", "2")
    output = f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"

    assert completed.returncode == 0, output
    outcomes = re.search(r"^outcomes +(.+)$", completed.stdout, re.MULTILINE)
    assert outcomes, output
    assert "succeeded 80" in outcomes.group(1), output
    assert "timeout 3" in outcomes.group(1), output
    assert re.search(r"\b(deadline|expired) 1\b", outcomes.group(1)), output
    assert re.search(r"^bytes +in [\d,]+, out [\d,]+, ratio \d+\.\d\d \(40 files compressed\)$",
                     completed.stdout, re.MULTILINE), output
    assert re.search(r"^run time +median [\d.]+ s, max [\d.]+ s", completed.stdout, re.MULTILINE), output
    assert re.search(r"^crunch:backtrack +4 ", completed.stdout, re.MULTILINE), output
    assert "SIGNAL_TO_END_S" in completed.stdout, output
    assert "Every task ended as expected." in completed.stdout, output
    assert not os.path.exists(workdir_of(completed.stdout)), output


def test_demo_keep_leaves_workdir(tmp_path):
    completed = run_demo(tmp_path, "--files", "2", "--workers", "2", "--keep")
    output = f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    workdir = workdir_of(completed.stdout)
    try:
        assert completed.returncode == 0, output
        assert os.path.isfile(os.path.join(workdir, "supervisor.log")), output
        assert os.path.isfile(os.path.join(workdir, "procq.db")), output
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
