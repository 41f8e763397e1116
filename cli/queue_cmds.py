"""`procq queue`: list queues with their task counts, pause and resume them."""

from __future__ import annotations

import click

from procq import states
from procq.cli import output
from procq.cli.connection import connection_options, get_client
from procq.cli.groups import LazyGroup
from procq.cli.output import Column

# States that always get a count column. The others get one only when a queue has such tasks.
ALWAYS_COUNTED = (states.PENDING, states.ACTIVE)


@click.group("queue", cls=LazyGroup)
def queue_group() -> None:
    """List, pause and resume queues."""


def complete_queue(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Offer the supervisor's queue names for shell completion, or none if it does not reply."""
    from procq.client import Client
    from procq.errors import ProcqError

    from procq.cli.connection import SOCKET_KEY

    try:
        with Client(ctx.meta.get(SOCKET_KEY), connect_timeout=0.5) as client:
            queues = client.queues()
    except ProcqError:
        return []
    return [queue["name"] for queue in queues if queue["name"].startswith(incomplete)]


@queue_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@connection_options
def ls_command(as_json: bool) -> None:
    """List queues: weight, whether paused, tasks per state, age of the oldest pending task."""
    queues = get_client().queues()
    if as_json:
        output.print_json(queues)
        return
    if not queues:
        click.echo("no queues", err=True)
        return

    shown_states = [
        state for state in states.STATES
        if state in ALWAYS_COUNTED or any((queue.get("counts") or {}).get(state) for queue in queues)
    ]
    columns = [Column("QUEUE", shrink=True), Column("WEIGHT", align="right"), Column("PAUSED")]
    columns += [Column(state.upper(), align="right") for state in shown_states]
    columns.append(Column("OLDEST", align="right"))

    rows = []
    colors = []
    for queue in queues:
        counts = queue.get("counts") or {}
        row = [queue["name"], str(queue.get("weight", "-")), output.yes_no(queue.get("paused"))]
        row += [str(counts.get(state, 0)) for state in shown_states]
        row.append(output.format_duration(queue.get("oldest_pending_age_s")))
        rows.append(row)
        colors.append([None, None, "paused" if queue.get("paused") else None]
                      + [None] * (len(shown_states) + 1))
    output.print_table(columns, rows, colors)


@queue_group.command("pause")
@click.argument("queue", shell_complete=complete_queue)
@connection_options
def pause_command(queue: str) -> None:
    """Stop starting tasks from QUEUE, while active ones run on. It stays paused across restarts."""
    get_client().pause_queue(queue)
    click.echo(f"queue {queue} paused", err=True)


@queue_group.command("resume")
@click.argument("queue", shell_complete=complete_queue)
@connection_options
def resume_command(queue: str) -> None:
    """Start tasks from a paused QUEUE again."""
    get_client().resume_queue(queue)
    click.echo(f"queue {queue} resumed", err=True)
