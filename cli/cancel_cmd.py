"""`procq task cancel`: cancel tasks by id, or every unfinished task of a queue or state.

All cancels are sent first and only then awaited, so the active tasks stop in
parallel: cancelling N of them takes about one grace period, not N.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from procq import states
from procq.cli import output
from procq.cli.connection import connection_options, get_client
from procq.cli.errors import EXIT_FAILED, report_task_error
from procq.cli.parse import State
from procq.cli.task_cmds import complete_task_id, json_option, list_all

if TYPE_CHECKING:
    from procq.taskinfo import CancelResult

UNFINISHED_STATES = tuple(state for state in states.STATES if state not in states.FINAL_STATES)


def _seconds(value: float) -> str:
    """Format seconds with one or two decimals: 5.0s, 0.25s."""
    text = f"{value:.2f}".rstrip("0")
    return (text + "0" if text.endswith(".") else text) + "s"


def cancel_message(result: CancelResult) -> str:
    """Describe what a cancel did to one task, e.g. `ID: cancelled (was pending)`."""
    task = result.task
    prefix = f"{task.id}: "
    if result.already_final:
        return prefix + f"already {task.state}"
    if not task.is_final:
        if result.stopped_by in ("soft", "kill") or result.previous_state == states.ACTIVE:
            return prefix + "cancelling (soft signal sent)"
        return prefix + "cancelling"
    if task.state != states.CANCELLED:
        return prefix + f"{task.state} ({task.outcome}) before the cancel took effect"
    if result.previous_state in states.WAITING_STATES:
        return prefix + f"cancelled (was {result.previous_state})"
    if result.stopped_by == "soft":
        ended_at = task.reaped_at or task.finished_at
        if task.soft_signal_at is not None and ended_at is not None:
            return prefix + f"cancelled (stopped by soft signal after " \
                            f"{(ended_at - task.soft_signal_at).total_seconds():.2f}s)"
        return prefix + "cancelled (stopped by soft signal)"
    if result.stopped_by == "kill":
        grace = "" if task.grace_s is None else f" {_seconds(task.grace_s)}"
        return prefix + f"cancelled (killed after grace{grace})"
    return prefix + f"cancelled (was {result.previous_state})"


@click.command("cancel")
@click.argument("task_ids", metavar="[ID]...", nargs=-1, shell_complete=complete_task_id)
@click.option("--queue", "-q", metavar="Q", help="Cancel every unfinished task in this queue.")
@click.option("--state", "-s", "state_filter", type=State(UNFINISHED_STATES),
              help="Cancel every task in this state (with --queue: in that queue only).")
@click.option("--no-wait", is_flag=True,
              help="Return once the cancel is sent, without waiting for active tasks to stop.")
@json_option
@connection_options
def cancel_command(task_ids: tuple[str, ...], queue: str | None, state_filter: str | None,
                   no_wait: bool, as_json: bool) -> None:
    """Cancel tasks by ID, or in bulk by --queue and/or --state.

    A waiting task is cancelled at once. An active one gets the soft signal, then
    SIGKILL after its grace period. Without --no-wait the command returns once it has
    stopped. Cancelling a task that is already final changes nothing and succeeds.
    """
    from procq.errors import TaskNotFound
    from procq.taskinfo import CancelResult, stopped_by

    ctx = click.get_current_context()
    if task_ids and (queue or state_filter):
        raise click.UsageError("give task IDs or --queue/--state, not both")
    if not task_ids and not (queue or state_filter):
        raise click.UsageError("give task IDs, or --queue and/or --state to cancel in bulk")

    client = get_client()
    if not task_ids:
        target_states = [state_filter] if state_filter else list(UNFINISHED_STATES)
        task_ids = tuple(task.id for task in list_all(client, queue=queue, state=target_states))
        if not task_ids:
            click.echo("no tasks match", err=True)

    # Send every cancel before waiting for any task to stop.
    results: dict[str, CancelResult] = {}
    failed = False
    for task_id in task_ids:
        try:
            result = client.cancel(task_id, wait=False)
        except TaskNotFound as exc:
            report_task_error(exc)
            failed = True
            continue
        results[task_id] = result
        if not as_json and (result.task.is_final or no_wait):
            click.echo(cancel_message(result))

    if not no_wait:
        for task_id, result in results.items():
            if result.task.is_final:
                continue
            task = client.wait(task_id)
            results[task_id] = CancelResult(task, result.previous_state, False, stopped_by(task))
            if not as_json:
                click.echo(cancel_message(results[task_id]))

    if as_json:
        output.print_json([result.to_dict() for result in results.values()])
    if failed:
        ctx.exit(EXIT_FAILED)
