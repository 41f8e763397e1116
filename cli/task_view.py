"""Text views of tasks: the `task ls` table, the `task inspect` block and outcome lines."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import click

from procq.cli import output
from procq.cli.output import Column

if TYPE_CHECKING:
    from procq.taskinfo import AttemptInfo, TaskInfo

BASE_COLUMNS = [
    Column("ID", min_width=12, last_resort=True),
    Column("NAME", shrink=True),
    Column("QUEUE", shrink=True),
    Column("STATE"),
    Column("OUTCOME"),
    Column("ATTEMPT", align="right"),
]
# Shown only when the listing has an active task.
ACTIVE_COLUMNS = [
    Column("WORKER", align="right"),
    Column("RUNNING", align="right"),
    Column("LEFT", align="right"),
    Column("PROGRESS", shrink=True, min_width=8),
]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def soft_signal_due_at(task: TaskInfo) -> dt.datetime | None:
    """Return when the running attempt gets its soft signal: the earlier of started_at +
    timeout_s and deadline_at, or None without a limit."""
    candidates = []
    if task.started_at is not None and task.timeout_s is not None:
        candidates.append(task.started_at + dt.timedelta(seconds=task.timeout_s))
    if task.deadline_at is not None:
        candidates.append(task.deadline_at)
    return min(candidates) if candidates else None


def time_left(task: TaskInfo, now: dt.datetime) -> str:
    """Format the time left before an active task's soft signal, as shown in LEFT."""
    if task.soft_signal_at is not None:
        return "stopping"
    due_at = soft_signal_due_at(task)
    if due_at is None:
        return "no limit"
    return output.format_duration(max(0.0, (due_at - now).total_seconds()))


def format_attempt(task: TaskInfo) -> str:
    """Format the attempt counter as `N/M`, M being the attempts allowed (max_retry + 1)."""
    return f"{task.attempt}/{task.max_retry + 1}"


def print_task_table(tasks: list[TaskInfo]) -> None:
    """Print `task ls`: one row per task, with the active columns when a task is active."""
    now = _utc_now()
    with_active = any(task.state == "active" for task in tasks)
    columns = BASE_COLUMNS + (ACTIVE_COLUMNS if with_active else [])
    rows = []
    colors = []
    for task in tasks:
        row = [task.id, task.name, task.queue, task.state, task.outcome or "-", format_attempt(task)]
        row_colors: list[str | None] = [None, None, None, task.state, task.outcome, None]
        if with_active:
            row += active_cells(task, now)
            row_colors += [None] * len(ACTIVE_COLUMNS)
        rows.append(row)
        colors.append(row_colors)
    output.print_table(columns, rows, colors)


def active_cells(task: TaskInfo, now: dt.datetime) -> list[str]:
    if task.state != "active":
        return [""] * len(ACTIVE_COLUMNS)
    running_s = None if task.started_at is None else (now - task.started_at).total_seconds()
    return [
        str(task.worker_pid) if task.worker_pid is not None else "-",
        output.format_duration(running_s),
        time_left(task, now),
        output.format_progress(task.progress),
    ]


# -- inspect ----------------------------------------------------------------------------

# JSON values longer than this on one line are printed indented over several lines.
MAX_INLINE_JSON = 72


def _json_text(value: Any) -> str:
    import json

    compact = json.dumps(value, ensure_ascii=False)
    if len(compact) <= MAX_INLINE_JSON:
        return compact
    return json.dumps(value, ensure_ascii=False, indent=2)


def _timeout_text(task: TaskInfo) -> str:
    if task.timeout_s is None:
        return "none (no limit)"
    return output.format_seconds(task.timeout_s)


def _signal_time(at: dt.datetime | None, lateness_s: float | None, now: dt.datetime) -> str:
    text = output.format_time(at, now)
    if at is not None and lateness_s is not None:
        text += f", {output.format_ms(lateness_s)} late"
    return text


def _exit_text(signal_number: int | None, code: int | None) -> str:
    if signal_number is not None:
        return f"signal {output.format_signal(signal_number)}"
    if code is not None:
        return f"code {code}"
    return "-"


def print_task_block(task: TaskInfo, color: bool = False) -> None:
    """Print every field of a task, its attempts and error traceback for `task inspect`."""
    now = _utc_now()
    fields = [
        ("id", task.id),
        ("name", task.name),
        ("queue", task.queue),
        ("state", output.colorize(task.state, task.state, color)),
        ("outcome", output.colorize(task.outcome or "-", task.outcome, color)),
        ("args", _json_text(task.args)),
        ("kwargs", _json_text(task.kwargs)),
        ("result", _json_text(task.result)),
        ("progress", output.format_progress(task.progress) or "-"),
        ("attempt", f"{task.attempt} of {task.max_retry + 1} allowed (max_retry {task.max_retry})"),
        ("timeout", _timeout_text(task)),
        ("deadline", output.format_time(task.deadline_at, now)),
        ("grace", output.format_seconds(task.grace_s)),
        ("max memory", output.format_bytes(task.max_memory)),
        ("retention", output.format_seconds(task.retention_s)),
        ("enqueued at", output.format_time(task.enqueued_at, now)),
        ("scheduled at", output.format_time(task.scheduled_at, now)),
        ("started at", output.format_time(task.started_at, now)),
        ("finished at", output.format_time(task.finished_at, now)),
        ("worker pid", "-" if task.worker_pid is None else str(task.worker_pid)),
        ("soft signal at", _signal_time(task.soft_signal_at, task.soft_lateness_s, now)),
        ("kill at", _signal_time(task.kill_at, task.kill_lateness_s, now)),
        ("reaped at", output.format_time(task.reaped_at, now)),
        ("soft lateness", output.format_ms(task.soft_lateness_s)),
        ("kill lateness", output.format_ms(task.kill_lateness_s)),
        ("exit", _exit_text(task.exit_signal, task.exit_code)),
        ("children killed", "-" if task.children_killed is None else str(task.children_killed)),
        ("retry of", task.retry_of or "-"),
        ("error", task.error or "-"),
    ]
    output.print_fields(fields)

    click.echo(f"attempts: {len(task.attempts) if task.attempts else 'none'}")
    for attempt in task.attempts:
        _print_attempt(attempt, task.error, now, color)


def _print_attempt(attempt: AttemptInfo, task_error: str | None, now: dt.datetime,
                   color: bool) -> None:
    counted = "" if attempt.counted else " (not counted: interrupted by a graceful stop)"
    outcome = output.colorize(attempt.outcome or "running", attempt.outcome, color)
    click.echo(f"  #{attempt.number}: {outcome}{counted}")
    fields = [
        ("worker pid", "-" if attempt.worker_pid is None else str(attempt.worker_pid)),
        ("started at", output.format_time(attempt.started_at, now)),
        ("finished at", output.format_time(attempt.finished_at, now)),
    ]
    if attempt.soft_signal_at is not None:
        fields.append(("soft signal at", _signal_time(attempt.soft_signal_at, attempt.soft_lateness_s, now)))
    if attempt.kill_at is not None:
        fields.append(("kill at", _signal_time(attempt.kill_at, attempt.kill_lateness_s, now)))
    if attempt.reaped_at is not None:
        fields.append(("reaped at", output.format_time(attempt.reaped_at, now)))
    if attempt.exit_signal is not None or attempt.exit_code is not None:
        fields.append(("exit", _exit_text(attempt.exit_signal, attempt.exit_code)))
    if attempt.children_killed:
        fields.append(("children killed", str(attempt.children_killed)))
    if attempt.error and attempt.error == task_error:
        fields.append(("error", "the task's error above"))
    elif attempt.error:
        fields.append(("error", attempt.error))
    output.print_fields(fields, indent="      ")


# -- outcome lines ----------------------------------------------------------------------

def outcome_line(task: TaskInfo) -> str:
    """Format the one-line result of a finished wait: `ID: completed (succeeded) in 1.20s`."""
    parts = [f"{task.id}: {task.state}"]
    if task.outcome and task.outcome != task.state:
        parts.append(f"({task.outcome})")
    if task.started_at is not None and task.finished_at is not None:
        parts.append(f"in {output.format_duration((task.finished_at - task.started_at).total_seconds())}")
    return " ".join(parts)


def print_outcome(task: TaskInfo) -> None:
    """Print a final task for people: its outcome line, then its result or last error line."""
    import json

    click.echo(outcome_line(task))
    if task.state == "completed":
        click.echo(f"result: {json.dumps(task.result, ensure_ascii=False)}")
    elif task.error:
        last_line = task.error.strip().splitlines()[-1] if task.error.strip() else task.error
        click.echo(f"error: {last_line}")
