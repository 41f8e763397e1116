"""`procq top`: a full-screen view of the workers and active tasks, refreshed every second.

The screen is drawn with curses from the standard library. Each refresh makes three
requests (status, workers, active tasks). When one fails, the screen shows the error
and the next refresh tries again, so `top` outlives a supervisor restart.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from procq.cli import output
from procq.cli.connection import connect_timeout, connection_options, get_client
from procq.cli.errors import EXIT_USAGE, CommandError

if TYPE_CHECKING:
    from procq.client import Client

REFRESH_INTERVAL_S = 1.0
# Maximum wait for one reply during a refresh, in seconds: keys are not read meanwhile.
MAX_REPLY_WAIT_S = 2.0
KEY_POLL_MS = 100
ACTIVE_TASK_LIMIT = 200


def fetch_snapshot(client: Client) -> dict[str, Any]:
    """Read what one screen shows: the status, the workers and the active tasks."""
    return {
        "status": client.status(),
        "workers": client.workers(),
        "tasks": client.list(state="active", limit=ACTIVE_TASK_LIMIT),
    }


def render_snapshot(snapshot: dict[str, Any], width: int, address: str) -> list[str]:
    """Return the screen's lines for a snapshot, fitted to `width` columns."""
    from procq.cli.task_view import ACTIVE_COLUMNS, BASE_COLUMNS, active_cells
    from procq.cli.worker_cmds import WORKER_COLUMNS, worker_rows

    import datetime as dt

    status = snapshot["status"]
    workers = snapshot["workers"]
    tasks = snapshot["tasks"]
    now = dt.datetime.now(dt.timezone.utc)
    lines = [
        f"procq top  {address}  pid {status.get('pid', '-')}  "
        f"up {output.format_duration(status.get('uptime_s'))}  "
        f"workers {status.get('workers', len(workers))} ({status.get('busy', 0)} busy)"
        + ("  DRAINING" if status.get("draining") else ""),
        "",
    ]

    rows, _ = worker_rows(workers)
    lines += output.render_table(WORKER_COLUMNS, rows, width=width)
    lines.append("")

    task_columns = [BASE_COLUMNS[0], BASE_COLUMNS[1], BASE_COLUMNS[2]] + ACTIVE_COLUMNS
    task_rows = [[task.id, task.name, task.queue] + active_cells(task, now) for task in tasks]
    if task_rows:
        lines += output.render_table(task_columns, task_rows, width=width)
    else:
        lines.append("no active tasks")
    return lines


def _draw(screen, lines: list[str], footer: str) -> None:
    import curses

    screen.erase()
    height, width = screen.getmaxyx()
    for row, line in enumerate(lines[:max(0, height - 1)]):
        attributes = curses.A_BOLD if row == 0 else curses.A_NORMAL
        _put(screen, row, line, width, attributes)
    _put(screen, height - 1, footer, width, curses.A_REVERSE)
    screen.refresh()


def _put(screen, row: int, text: str, width: int, attributes: int) -> None:
    import curses

    try:
        # Writing the last cell of the screen moves the cursor off the screen and raises.
        screen.addnstr(row, 0, text, max(0, width - 1), attributes)
    except curses.error:
        pass


def run_screen(screen, client: Client) -> None:
    """Refresh the screen every REFRESH_INTERVAL_S until `q` is pressed."""
    import curses

    from procq.errors import ProcqError

    curses.curs_set(0)
    screen.timeout(KEY_POLL_MS)
    lines: list[str] = []
    while True:
        try:
            snapshot = fetch_snapshot(client)
        except ProcqError as exc:
            lines = [f"procq top  {client.address}", "", f"Error: {exc}",
                     "", "Trying again every second."]
        else:
            lines = render_snapshot(snapshot, screen.getmaxyx()[1] - 1, client.address)
        footer = f"q quit   refreshed {time.strftime('%H:%M:%S')}"
        _draw(screen, lines, footer)

        next_refresh = time.monotonic() + REFRESH_INTERVAL_S
        while time.monotonic() < next_refresh:
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key == curses.KEY_RESIZE:
                _draw(screen, lines, footer)


@click.command("top")
@connection_options
def top_command() -> None:
    """Show workers and active tasks full-screen, refreshed every second; q quits."""
    import curses

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CommandError("procq top needs a terminal; use `procq worker ls` and "
                           "`procq task ls --state active` in scripts", EXIT_USAGE)
    ctx = click.get_current_context()
    client = get_client(ctx, timeout_s=min(connect_timeout(ctx), MAX_REPLY_WAIT_S))
    try:
        curses.wrapper(run_screen, client)
    except KeyboardInterrupt:
        pass  # Ctrl-C quits like q.
