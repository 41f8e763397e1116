"""`procq task wait`: wait for a task to be final, with a progress bar on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from procq.cli import output
from procq.cli.connection import connection_options, get_client
from procq.cli.errors import EXIT_FAILED, EXIT_OK
from procq.cli.parse import Duration
from procq.cli.task_cmds import complete_task_id, json_option

if TYPE_CHECKING:
    from procq.client import Client
    from procq.taskinfo import TaskInfo

# How often the progress bar is refreshed, in seconds.
PROGRESS_INTERVAL_S = 0.5
BAR_WIDTH = 30


class ProgressLine:
    """One line on a terminal, rewritten in place with a task's progress."""

    def __init__(self, stream):
        self.stream = stream
        self.bar_visible = False

    def update(self, task: TaskInfo) -> None:
        if not task.progress:
            return
        text = f"{task.state} {output.format_progress(task.progress, BAR_WIDTH)}"
        width = output.terminal_width() - 1
        self.stream.write("\r\033[K" + output.truncate(text, width, output.ellipsis_mark()))
        self.stream.flush()
        self.bar_visible = True

    def clear(self) -> None:
        if self.bar_visible:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.bar_visible = False


def wait_for_task(client: Client, task_id: str, timeout_s: float | None) -> TaskInfo:
    """Wait until the task is final and return it. Raises WaitTimeout after `timeout_s`.

    On a terminal (stderr), the task's progress is drawn every PROGRESS_INTERVAL_S
    while it runs: the wait is then a series of short waits, each followed by a `get`
    that reads the progress.
    """
    from procq.errors import WaitTimeout

    # A first `get` fails fast on an unknown task or an unreachable supervisor, which a
    # wait with a timeout would otherwise retry until that timeout.
    task = client.get(task_id)
    if task.is_final:
        return task
    if not sys.stderr.isatty():
        return client.wait(task_id, timeout=timeout_s)

    progress = ProgressLine(sys.stderr)
    started = time.monotonic()
    try:
        progress.update(task)
        while True:
            remaining_s = None if timeout_s is None else timeout_s - (time.monotonic() - started)
            if remaining_s is not None and remaining_s <= 0:
                raise WaitTimeout(f"task {task_id} is not final after {timeout_s:g} s")
            step_s = PROGRESS_INTERVAL_S if remaining_s is None else min(PROGRESS_INTERVAL_S, remaining_s)
            try:
                return client.wait(task_id, timeout=step_s)
            except WaitTimeout:
                pass
            task = client.get(task_id)
            if task.is_final:
                return task
            progress.update(task)
    finally:
        progress.clear()


def report_final(task: TaskInfo, as_json: bool) -> None:
    """Print a final task and exit 0 if it completed, 1 otherwise."""
    if as_json:
        output.print_json(task.to_dict())
    else:
        from procq.cli.task_view import print_outcome

        print_outcome(task)
    click.get_current_context().exit(EXIT_OK if task.state == "completed" else EXIT_FAILED)


@click.command("wait")
@click.argument("task_id", metavar="ID", shell_complete=complete_task_id)
@click.option("--timeout", "timeout_s", type=Duration(), metavar="D",
              help="Give up after D (e.g. 30, 5m) and exit 4. [default: wait as long as it takes]")
@json_option
@connection_options
def wait_command(task_id: str, timeout_s: float | None, as_json: bool) -> None:
    """Wait for a task to be final and print its outcome.

    Exits 0 if the task completed, 1 if it failed or was cancelled, 4 on timeout.
    """
    task = wait_for_task(get_client(), task_id, timeout_s)
    report_final(task, as_json)
