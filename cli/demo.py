"""`procq demo`: run a real supervisor on the example application and report how each task ended.

The demo starts `procq supervisor run` as a child process, with a private socket and
database in a temporary directory. It enqueues LZMA compression and regex search of the
largest files in Python's standard library, and catastrophic regular expressions that
only a timeout or a deadline stops. Then it prints how each task ended and stops the
supervisor with SIGTERM.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import click

import procq
from procq.errors import ProcqError, SupervisorUnavailable, WaitTimeout
from procq.taskinfo import TaskInfo

APP = "examples.stdlib_crunch:app"
SEARCH_PATTERNS = [r"^\s*def \w+", r"^\s*class \w+", r"^\s*(?:from|import) \w+", r"#.*\bTODO\b"]
# Each extra `a` doubles the time `(a+)+$` takes to fail, so n=40 means hours of CPU time.
BACKTRACK_N = 40
BACKTRACK_TIMEOUT_TASKS = 3
BACKTRACK_TIMEOUT_S = 1.0
# The deadline task is enqueued first, so a worker takes it at once and it runs until
# its deadline.
BACKTRACK_DEADLINE_IN_S = 3.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# Directories of the standard library that hold third-party packages or test data.
SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
PR_SET_PDEATHSIG = 1
SOCKET_NAME = "procq.sock"
DB_NAME = "procq.db"
LOG_NAME = "supervisor.log"
LOG_TAIL_LINES = 30


@dataclass
class DemoTask:
    """One enqueued task and the outcomes that count as success for it."""

    id: str
    name: str
    expected_outcomes: tuple[str, ...]
    info: TaskInfo | None = None


def find_examples_parent() -> str:
    """Return the directory that contains `examples/`, so that `examples` is importable.

    `examples/` is not installed with procq. It sits next to `procq/` in a source
    checkout, which an editable install imports from. The current directory is tried next.
    """
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(procq.__file__)))
    for candidate in (package_parent, os.getcwd()):
        if os.path.isfile(os.path.join(candidate, "examples", "stdlib_crunch.py")):
            return candidate
    raise click.ClickException(
        f"examples/stdlib_crunch.py not found next to the procq package ({package_parent}) or in "
        f"the current directory ({os.getcwd()}); run `procq demo` from a procq source checkout, "
        "e.g. after `pip install -e .`"
    )


def largest_stdlib_files(count: int) -> list[str]:
    """Return the paths of the `count` largest .py files of this Python's standard library."""
    stdlib = sysconfig.get_paths()["stdlib"]
    sized_paths = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = [name for name in dirs if name not in SKIPPED_DIRS]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                sized_paths.append((os.path.getsize(path), path))
    sized_paths.sort(reverse=True)
    return [path for _, path in sized_paths[:count]]


def _terminate_with_parent() -> None:
    # This runs in the child between fork and exec. If the demo dies, even by SIGKILL,
    # the kernel sends the supervisor SIGTERM, so no supervisor outlives the demo.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_supervisor(workdir: str, examples_parent: str, workers: int) -> subprocess.Popen:
    """Start `procq supervisor run` on the example application, with its files in `workdir`.

    `examples_parent` is put first on the supervisor's PYTHONPATH, so that its fork
    server can import the application.
    """
    # Drop PROCQ_* settings (queues, socket, limits) meant for the user's own supervisor.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROCQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [examples_parent, env.get("PYTHONPATH")]))

    command = [
        sys.executable, "-m", "procq.cli.main", "supervisor", "run",
        "--app", APP, "--socket", os.path.join(workdir, SOCKET_NAME),
        "--db", os.path.join(workdir, DB_NAME), "--workers", str(workers),
    ]
    with open(os.path.join(workdir, LOG_NAME), "wb") as log:
        # A session of its own keeps a Ctrl-C in the terminal away from the supervisor,
        # because the demo stops it with one SIGTERM in any case.
        return subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_terminate_with_parent)


def log_tail(log_path: str) -> str:
    """Return the last lines of the supervisor's log, indented for an error message."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            lines = log.read().splitlines()[-LOG_TAIL_LINES:]
    except OSError as exc:
        return f"  (log {log_path} unreadable: {exc})"
    return "\n".join("  " + line for line in lines) or "  (log is empty)"


def wait_until_ready(process: subprocess.Popen, socket_path: str, log_path: str) -> None:
    """Wait until the supervisor replies to ping.

    Raises ClickException, with the end of the log, if the supervisor exits first or does
    not reply within READY_TIMEOUT_S seconds.
    """
    started = time.monotonic()
    with procq.Client(socket_path, connect_timeout=1.0) as client:
        while True:
            exit_code = process.poll()
            if exit_code is not None:
                raise click.ClickException(
                    f"the supervisor exited with code {exit_code} before it was ready; "
                    f"the end of its log {log_path}:\n{log_tail(log_path)}"
                )
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise click.ClickException(
                    f"the supervisor did not reply on {socket_path} within {READY_TIMEOUT_S:g} s; "
                    f"the end of its log {log_path}:\n{log_tail(log_path)}"
                )
            if os.path.exists(socket_path):
                try:
                    client.ping()
                    return
                except SupervisorUnavailable:
                    pass
            time.sleep(0.05)


def build_requests(paths: list[str]) -> tuple[list[dict], list[tuple[str, ...]]]:
    """Return the enqueue requests and, in the same order, the outcomes expected of each."""
    requests: list[dict] = []
    expected: list[tuple[str, ...]] = []

    # A deadline that passes while the attempt runs stops it with outcome `deadline`. If the
    # task were still pending at its deadline, it would never start (outcome `expired`).
    deadline = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=BACKTRACK_DEADLINE_IN_S)
    requests.append({"name": "crunch:backtrack", "args": [BACKTRACK_N], "deadline": deadline})
    expected.append(("deadline", "expired"))

    for _ in range(BACKTRACK_TIMEOUT_TASKS):
        requests.append({"name": "crunch:backtrack", "args": [BACKTRACK_N],
                         "timeout": BACKTRACK_TIMEOUT_S})
        expected.append(("timeout",))

    for path in paths:
        requests.append({"name": "crunch:compress", "args": [path]})
        expected.append(("succeeded",))
    for path in paths:
        requests.append({"name": "crunch:search", "args": [path, SEARCH_PATTERNS]})
        expected.append(("succeeded",))

    return requests, expected


def wait_for_tasks(client: procq.Client, tasks: list[DemoTask], timeout_s: float) -> None:
    """Wait for every task in enqueue order and store its final record in `task.info`.

    A progress bar advances as tasks end. Raises WaitTimeout after `timeout_s` seconds.
    """
    started = time.monotonic()
    with click.progressbar(tasks, label="Running tasks", show_pos=True) as bar:
        for index, task in enumerate(bar):
            remaining = timeout_s - (time.monotonic() - started)
            try:
                if remaining <= 0:
                    raise WaitTimeout(f"task {task.id} is not final")
                task.info = client.wait(task.id, timeout=remaining)
            except WaitTimeout:
                raise WaitTimeout(
                    f"{len(tasks) - index} of {len(tasks)} tasks are not final after "
                    f"{timeout_s:g} s; give them more time with --timeout"
                ) from None


def _seconds_between(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def _format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _format_milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _format_counts(counter: Counter) -> str:
    return ", ".join(f"{key} {count}" for key, count in counter.most_common())


def print_report(tasks: list[DemoTask], workers: int, wall_time_s: float) -> None:
    """Print the outcomes, compression totals, run times and every stopped task."""
    infos = [task.info for task in tasks]
    outcomes = Counter(info.outcome for info in infos)
    outcomes_by_handler: dict[str, Counter] = {}
    for info in infos:
        outcomes_by_handler.setdefault(info.name, Counter())[info.outcome] += 1

    compressed = [info.result for info in infos
                  if info.name == "crunch:compress" and info.outcome == "succeeded"]
    bytes_in = sum(result["bytes_in"] for result in compressed)
    bytes_out = sum(result["bytes_out"] for result in compressed)
    ratio = f"{bytes_in / bytes_out:.2f}" if bytes_out else "-"

    run_times = [_seconds_between(info.started_at, info.finished_at)
                 for info in infos if info.state == "completed"]
    run_times = [seconds for seconds in run_times if seconds is not None]

    click.echo()
    click.echo(f"outcomes    {_format_counts(outcomes)}")
    click.echo(f"bytes       in {bytes_in:,}, out {bytes_out:,}, ratio {ratio} "
               f"({len(compressed)} files compressed)")
    if run_times:
        click.echo(f"run time    median {statistics.median(run_times):.3f} s, "
                   f"max {max(run_times):.3f} s ({len(run_times)} completed tasks)")
    click.echo(f"wall time   {wall_time_s:.1f} s with {workers} workers")

    click.echo()
    width = max(len(name) for name in outcomes_by_handler)
    click.echo(f"{'HANDLER':<{width}}  {'TASKS':>5}  OUTCOMES")
    for name, counter in sorted(outcomes_by_handler.items()):
        click.echo(f"{name:<{width}}  {sum(counter.values()):>5}  {_format_counts(counter)}")

    stopped = [info for info in infos if info.soft_signal_at is not None or info.outcome in
               ("timeout", "deadline", "expired", "cancelled", "memory")]
    if stopped:
        click.echo()
        print_stopped_tasks(stopped)


def print_stopped_tasks(infos: list[TaskInfo]) -> None:
    """Print how each stopped task was stopped: its limit, the soft signal, and any kill.

    LIMIT_S is the time the attempt was allowed (timeout or time to deadline), RAN_S
    the time it ran, SIGNAL_TO_END_S the time from the soft signal to the attempt's end,
    and SOFT_LATE_MS how late the soft signal was against its target.
    """
    id_width = max(len("TASK"), *(len(info.id) for info in infos))
    click.echo(f"{'TASK':<{id_width}}  {'OUTCOME':<9}  {'LIMIT_S':>7}  {'RAN_S':>7}  "
               f"{'SIGNAL_TO_END_S':>15}  {'SOFT_LATE_MS':>12}  KILLED")
    for info in infos:
        limit_s = info.timeout_s
        if info.deadline_at is not None and info.started_at is not None:
            until_deadline = _seconds_between(info.started_at, info.deadline_at)
            limit_s = until_deadline if limit_s is None else min(limit_s, until_deadline)
        ran_s = _seconds_between(info.started_at, info.finished_at)
        signal_to_end_s = _seconds_between(info.soft_signal_at, info.finished_at)
        if info.kill_at is None:
            killed = "no"
        else:
            killed = f"yes, {_format_milliseconds(info.kill_lateness_s)} ms late"
        click.echo(f"{info.id:<{id_width}}  {info.outcome or '-':<9}  {_format_seconds(limit_s):>7}  "
                   f"{_format_seconds(ran_s):>7}  {_format_seconds(signal_to_end_s):>15}  "
                   f"{_format_milliseconds(info.soft_lateness_s):>12}  {killed}")


def unexpected_endings(tasks: list[DemoTask]) -> list[str]:
    """Return one line for each task whose outcome is not one it was expected to have."""
    problems = []
    for task in tasks:
        if task.info.outcome in task.expected_outcomes:
            continue
        line = (f"task {task.id} ({task.name}): outcome {task.info.outcome}, "
                f"expected {' or '.join(task.expected_outcomes)}")
        if task.info.error:
            line += f"; error: {task.info.error.strip().splitlines()[-1]}"
        problems.append(line)
    return problems


def stop_supervisor(process: subprocess.Popen) -> int | None:
    """Stop the supervisor with SIGTERM, or with SIGKILL if it still runs STOP_TIMEOUT_S later.

    Returns the exit code, or None if the supervisor had to be killed.
    """
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def run_demo(workdir: str, examples_parent: str, workers: int, file_count: int,
             timeout_s: float) -> list[str]:
    """Run the whole demo in `workdir` and return the problems found (empty on success)."""
    socket_path = os.path.join(workdir, SOCKET_NAME)
    log_path = os.path.join(workdir, LOG_NAME)
    paths = largest_stdlib_files(file_count)
    if not paths:
        raise click.ClickException(
            f"no .py files found in the standard library at {sysconfig.get_paths()['stdlib']}"
        )
    if len(paths) < file_count:
        click.echo(f"The standard library has only {len(paths)} .py files; using all of them.")

    process = start_supervisor(workdir, examples_parent, workers)
    click.echo(f"Started supervisor pid {process.pid} with {workers} workers; log: {log_path}")
    problems: list[str] = []
    try:
        wait_until_ready(process, socket_path, log_path)

        requests, expected = build_requests(paths)
        started = time.monotonic()
        with procq.Client(socket_path) as client:
            infos = client.enqueue_many(requests)
            tasks = [DemoTask(info.id, info.name, outcomes) for info, outcomes in zip(infos, expected)]
            click.echo(f"Enqueued {len(tasks)} tasks: compress and search of the {len(paths)} "
                       f"largest standard library files, and {BACKTRACK_TIMEOUT_TASKS + 1} "
                       "catastrophic regular expressions.")
            wait_for_tasks(client, tasks, timeout_s)
        print_report(tasks, workers, time.monotonic() - started)
        problems.extend(unexpected_endings(tasks))
    except ProcqError as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        exit_code = stop_supervisor(process)

    if exit_code is None:
        problems.append(f"the supervisor did not exit within {STOP_TIMEOUT_S:g} s of SIGTERM "
                        "and was killed")
    elif exit_code != 0:
        problems.append(f"the supervisor exited with code {exit_code} after SIGTERM")
    if problems:
        problems.append(f"the end of the supervisor's log {log_path}:\n{log_tail(log_path)}")
    return problems


@click.command("demo")
@click.option("--workers", type=click.IntRange(min=1), default=lambda: min(os.cpu_count() or 1, 8),
              show_default="the number of CPUs, at most 8", help="Worker processes to start.")
@click.option("--files", "file_count", type=click.IntRange(min=1), default=300, show_default=True,
              help="How many of the largest standard library files to compress and search.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds to wait for all tasks before giving up.")
@click.option("--keep", is_flag=True,
              help="Keep the temporary directory (socket, database, supervisor log) after a success.")
def demo_command(workers: int, file_count: int, timeout_s: float, keep: bool) -> None:
    """Run a supervisor on the example application and report how each task ended.

    Compresses and searches the largest files of Python's standard library, and shows
    catastrophic regular expressions stopped by their timeout or deadline. Exits 0 only
    if every task ended as expected. Needs a procq source checkout, which has examples/.
    """
    examples_parent = find_examples_parent()
    # /tmp rather than $TMPDIR: the socket path must stay under the kernel's 107-byte limit.
    workdir = tempfile.mkdtemp(prefix="procq-demo-", dir="/tmp")
    try:
        problems = run_demo(workdir, examples_parent, workers, file_count, timeout_s)
    except BaseException:
        # Keep the supervisor's log of a demo that failed to start or was interrupted.
        click.echo(f"Kept {workdir}", err=True)
        raise

    if problems:
        click.echo("The demo failed:", err=True)
        for problem in problems:
            click.echo(f"- {problem}", err=True)
        click.echo(f"Kept {workdir}", err=True)
        sys.exit(1)

    click.echo("Every task ended as expected.")
    if keep:
        click.echo(f"Kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
