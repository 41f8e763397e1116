"""`procq enqueue` (also `procq task enqueue`): store a task and print its id."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from procq.cli import output
from procq.cli.connection import connection_options, get_client
from procq.cli.errors import InvalidValue
from procq.cli.parse import Count, Duration, JsonObject, Size, Time, parse_json_arg


@click.command("enqueue")
@click.argument("name")
@click.argument("args", metavar="[ARG]...", nargs=-1)
@click.option("--kwargs", "kwargs", type=JsonObject(), metavar="JSON",
              help="Keyword arguments as a JSON object, e.g. '{\"n\": 3}'.")
@click.option("--queue", "-q", default="default", show_default=True, metavar="Q",
              help="The queue to put the task in.")
@click.option("--timeout", type=Duration(allow_none=True), metavar="D|none",
              help="Maximum run time of one attempt, counted from its start; none for no limit. "
                   "[default: the handler's, else the application's]")
@click.option("--deadline", type=Time(), metavar="TIME",
              help="No attempt may run after this ISO 8601 time with a UTC offset.")
@click.option("--grace", type=Duration(), metavar="D",
              help="Time between the soft signal and SIGKILL. [default: the handler's]")
@click.option("--max-retry", type=Count(minimum=0), metavar="N",
              help="Retries after a failed attempt. [default: the handler's]")
@click.option("--max-memory", type=Size(), metavar="SIZE",
              help="Memory limit of the worker's process tree, e.g. 512M, 2G.")
@click.option("--retention", type=Duration(), metavar="D",
              help="How long the finished task is kept. [default: 24h]")
@click.option("--id", "task_id", metavar="ID",
              help="The task's id; a second task with the same id is rejected.")
@click.option("--in", "process_in", type=Duration(), metavar="D",
              help="Start no sooner than D from now (e.g. 10m).")
@click.option("--at", "process_at", type=Time(), metavar="TIME",
              help="Start no sooner than this ISO 8601 time with a UTC offset.")
@click.option("--wait", "wait", is_flag=True,
              help="Wait for the task to be final and print its outcome (exit 1 unless it completed).")
@click.option("--json", "as_json", is_flag=True, help="Print the task as JSON instead of its id.")
@connection_options
def enqueue_command(name: str, args: tuple[str, ...], kwargs: dict[str, Any] | None, queue: str,
                    timeout: Any, deadline: dt.datetime | None, grace: float | None,
                    max_retry: int | None, max_memory: int | None, retention: float | None,
                    task_id: str | None, process_in: float | None, process_at: dt.datetime | None,
                    wait: bool, as_json: bool) -> None:
    """Enqueue a task for the handler NAME and print its id.

    Each ARG is parsed as JSON, or taken as a string when it is not JSON: `3` is a
    number, `abc` and '"3"' are strings, '[1, 2]' is a list. Put `--` before
    arguments that start with a dash, e.g. `procq enqueue add -- -5 3`.

    \b
    Durations (D): seconds (90, 1.5) or with a unit: 250ms, 1.5s, 5m, 2h, 7d.
    Sizes: 512M, 2G, 64K or bytes; K, M, G and T are multiples of 1024.
    Times: ISO 8601 with a UTC offset, e.g. 2026-05-01T12:00:00+02:00 or ...Z.
    """
    if process_in is not None and process_at is not None:
        raise click.UsageError("give --in or --at, not both")
    if deadline is not None and deadline <= dt.datetime.now(dt.timezone.utc):
        raise InvalidValue(f"{deadline.isoformat()} is in the past; give a future time",
                           param_hint="'--deadline'")

    client = get_client()
    task = client.enqueue(
        name, [parse_json_arg(arg) for arg in args], kwargs, queue=queue, timeout=timeout,
        deadline=deadline, grace=grace, max_retry=max_retry, max_memory=max_memory,
        task_id=task_id, process_in=process_in, process_at=process_at, retention=retention,
    )

    if wait:
        from procq.cli.wait_cmd import report_final, wait_for_task

        click.echo(f"enqueued {task.id}", err=True)
        report_final(wait_for_task(client, task.id, None), as_json)
    elif as_json:
        output.print_json(task.to_dict())
    else:
        click.echo(task.id)

