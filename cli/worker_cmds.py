"""`procq worker ls`: the supervisor's worker processes and what each one runs."""

from __future__ import annotations

import click

from procq.cli import output
from procq.cli.connection import connection_options, get_client
from procq.cli.groups import LazyGroup
from procq.cli.output import Column

WORKER_COLUMNS = [
    Column("PID", align="right"),
    Column("STATE"),
    Column("TASK", min_width=12, last_resort=True),
    Column("RUNNING", align="right"),
    Column("CPU%", align="right"),
    Column("RSS", align="right"),
    Column("USS", align="right"),
    Column("DONE", align="right"),
    Column("AGE", align="right"),
]


@click.group("worker", cls=LazyGroup)
def worker_group() -> None:
    """Show the worker processes."""


def worker_rows(workers: list[dict]) -> tuple[list[list[str]], list[list[str | None]]]:
    """Return the table cells and their colours for `worker ls` and `top`."""
    rows = []
    colors = []
    for worker in workers:
        cpu = worker.get("cpu_percent")
        rows.append([
            str(worker.get("pid", "-")),
            str(worker.get("state", "-")),
            worker.get("task_id") or "-",
            output.format_duration(worker.get("running_s")) if worker.get("task_id") else "-",
            "-" if cpu is None else f"{cpu:.0f}",
            output.format_bytes(worker.get("rss_bytes")),
            output.format_bytes(worker.get("uss_bytes")),
            str(worker.get("tasks_done", "-")),
            output.format_duration(worker.get("age_s")),
        ])
        colors.append([None, worker.get("state")] + [None] * (len(WORKER_COLUMNS) - 2))
    return rows, colors


@worker_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@connection_options
def ls_command(as_json: bool) -> None:
    """List workers: pid, state (idle, busy, stopping), task, CPU and memory use.

    RSS is the worker's resident memory and USS the part no other process shares
    (both as the supervisor measures them). DONE counts the tasks it has run and AGE
    is the time since it started.
    """
    workers = get_client().workers()
    if as_json:
        output.print_json(workers)
        return
    if not workers:
        click.echo("no workers", err=True)
        return
    rows, colors = worker_rows(workers)
    output.print_table(WORKER_COLUMNS, rows, colors)
