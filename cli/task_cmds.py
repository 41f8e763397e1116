"""`procq task`: list, inspect, delete and retry tasks.

Its other subcommands (cancel, wait, enqueue) live in their own modules, loaded lazily.
"""

from __future__ import annotations

import click

from procq import states
from procq.cli import output
from procq.cli.connection import connection_options, get_client
from procq.cli.errors import EXIT_FAILED, InvalidValue, report_task_error
from procq.cli.groups import LazyGroup
from procq.cli.parse import Count, Duration, State

# Final states in the order of states.STATES: completed, failed, cancelled.
FINAL_STATES = tuple(state for state in states.STATES if state in states.FINAL_STATES)
# Tasks fetched per list request when a command walks a whole filtered set.
PAGE_SIZE = 500


def complete_task_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Offer the ids of recent tasks for shell completion, or none if no supervisor replies."""
    from procq.client import Client
    from procq.errors import ProcqError

    from procq.cli.connection import SOCKET_KEY

    try:
        with Client(ctx.meta.get(SOCKET_KEY), connect_timeout=0.5) as client:
            tasks = client.list(limit=200)
    except ProcqError:
        return []
    return [task.id for task in tasks if task.id.startswith(incomplete)]


def json_option(function):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON instead of text.")(function)


@click.group("task", cls=LazyGroup, lazy_commands={
    "cancel": "procq.cli.cancel_cmd:cancel_command",
    "wait": "procq.cli.wait_cmd:wait_command",
    "enqueue": "procq.cli.enqueue_cmd:enqueue_command",
})
def task_group() -> None:
    """List, inspect, wait for, cancel, retry and delete tasks."""


@task_group.command("ls")
@click.option("--queue", "-q", metavar="Q", help="Only tasks in this queue.")
@click.option("--state", "-s", "state_filter", type=State(), multiple=True,
              help="Only tasks in this state; repeat for several.")
@click.option("--name", "-n", metavar="N", help="Only tasks of this handler name.")
@click.option("--limit", type=Count(minimum=1), default=100, show_default=True, metavar="N",
              help="The maximum number of tasks listed.")
@json_option
@connection_options
def ls_command(queue: str | None, state_filter: tuple[str, ...], name: str | None, limit: int,
               as_json: bool) -> None:
    """List tasks, newest first.

    For active tasks, WORKER is the worker's pid, RUNNING the time since the attempt
    started, and LEFT the time until its soft signal (timeout or deadline, whichever
    comes first).
    """
    client = get_client()
    tasks = client.list(queue=queue, state=list(state_filter) or None, name=name, limit=limit)
    if as_json:
        output.print_json([task.to_dict() for task in tasks])
        return

    from procq.cli.task_view import print_task_table

    if not tasks:
        click.echo("no tasks match", err=True)
        return
    print_task_table(tasks)


@task_group.command("inspect")
@click.argument("task_id", metavar="ID", shell_complete=complete_task_id)
@json_option
@connection_options
def inspect_command(task_id: str, as_json: bool) -> None:
    """Show every field of a task, each attempt and the error traceback."""
    task = get_client().get(task_id)
    if as_json:
        output.print_json(task.to_dict())
        return

    from procq.cli.task_view import print_task_block

    print_task_block(task, color=output.use_color())


@task_group.command("delete")
@click.argument("task_ids", metavar="[ID]...", nargs=-1, shell_complete=complete_task_id)
@click.option("--state", "-s", "state_filter", type=State(FINAL_STATES),
              help="Delete every task in this final state (instead of IDs).")
@click.option("--older-than", type=Duration(), metavar="D",
              help="With --state: only tasks that finished longer ago than D (e.g. 7d).")
@json_option
@connection_options
def delete_command(task_ids: tuple[str, ...], state_filter: str | None, older_than: float | None,
                   as_json: bool) -> None:
    """Delete final tasks (completed, failed, cancelled), by ID or by state.

    A task that is not final is left alone and makes the exit code 1.
    """
    ctx = click.get_current_context()
    if task_ids and state_filter:
        raise click.UsageError("give task IDs or --state, not both")
    if not task_ids and not state_filter:
        raise click.UsageError("give task IDs, or --state with a final state to delete in bulk")
    if older_than is not None and not state_filter:
        raise InvalidValue("--older-than works only with --state", param_hint="'--older-than'")

    client = get_client()
    if state_filter:
        deleted = _delete_by_state(client, state_filter, older_than)
        failed = False
    else:
        deleted, failed = _delete_each(client, task_ids)

    if as_json:
        output.print_json(deleted)
    else:
        for task_id in deleted:
            click.echo(task_id)
        if deleted or not failed:
            click.echo(f"deleted {len(deleted)} task{'s' if len(deleted) != 1 else ''}", err=True)
    if failed:
        ctx.exit(EXIT_FAILED)


def _delete_each(client, task_ids: tuple[str, ...]) -> tuple[list[str], bool]:
    """Delete tasks one by one, so one missing or unfinished task does not stop the rest."""
    from procq.errors import TaskNotFinal, TaskNotFound

    deleted: list[str] = []
    failed = False
    for task_id in task_ids:
        try:
            deleted.extend(client.delete([task_id]))
        except (TaskNotFound, TaskNotFinal) as exc:
            report_task_error(exc)
            failed = True
    return deleted, failed


def _delete_by_state(client, state: str, older_than_s: float | None) -> list[str]:
    """List the final tasks in `state` (finished before now - older_than_s), then delete them."""
    import datetime as dt

    from procq.errors import TaskNotFound

    cutoff = None
    if older_than_s is not None:
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than_s)

    task_ids = []
    for task in list_all(client, state=state):
        if cutoff is None or (task.finished_at is not None and task.finished_at < cutoff):
            task_ids.append(task.id)

    deleted: list[str] = []
    for start in range(0, len(task_ids), PAGE_SIZE):
        batch = task_ids[start:start + PAGE_SIZE]
        try:
            deleted.extend(client.delete(batch))
        except TaskNotFound:
            # Purged by retention since the listing: delete the rest of the batch one by one.
            for task_id in batch:
                try:
                    deleted.extend(client.delete([task_id]))
                except TaskNotFound:
                    pass
    return deleted


def list_all(client, **filters) -> list:
    """Return every task matching `filters`, reading the list in pages.

    Tasks enqueued meanwhile shift later pages (the list is newest first), so a task
    can come back twice. It is kept once.
    """
    tasks = {}
    offset = 0
    while True:
        page = client.list(limit=PAGE_SIZE, offset=offset, **filters)
        for task in page:
            tasks.setdefault(task.id, task)
        if len(page) < PAGE_SIZE:
            return list(tasks.values())
        offset += len(page)


@task_group.command("retry")
@click.argument("task_ids", metavar="ID...", nargs=-1, required=True, shell_complete=complete_task_id)
@json_option
@connection_options
def retry_command(task_ids: tuple[str, ...], as_json: bool) -> None:
    """Enqueue a copy of each task with a new id; print the new ids, one per line.

    The copy's `retry_of` is the original's id. A task that does not exist makes the
    exit code 1; the others are still retried.
    """
    from procq.errors import TaskNotFinal, TaskNotFound

    ctx = click.get_current_context()
    client = get_client()
    new_tasks = []
    failed = False
    for task_id in task_ids:
        try:
            new_tasks.append(client.retry(task_id))
        except (TaskNotFound, TaskNotFinal) as exc:
            report_task_error(exc)
            failed = True

    if as_json:
        output.print_json([task.to_dict() for task in new_tasks])
    else:
        for task in new_tasks:
            click.echo(task.id)
    if failed:
        ctx.exit(EXIT_FAILED)
