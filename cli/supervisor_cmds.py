"""`procq supervisor`: run a supervisor, and drain, resume, wait for or show a running one."""

from __future__ import annotations

import click

from procq.cli import output
from procq.cli.connection import connection_options, get_client
from procq.cli.errors import EXIT_TIMEOUT
from procq.cli.groups import LazyGroup
from procq.cli.parse import Duration


@click.group("supervisor", cls=LazyGroup, lazy_commands={"run": "procq.cli.run:run_command"})
def supervisor_group() -> None:
    """Run a supervisor, or control a running one."""


@supervisor_group.command("drain")
@connection_options
def drain_command() -> None:
    """Stop starting new tasks, while active ones run on. Undo with `procq supervisor resume`."""
    get_client().drain()
    click.echo("supervisor draining: no new task will start", err=True)


@supervisor_group.command("resume")
@connection_options
def resume_command() -> None:
    """Start tasks again after `procq supervisor drain`."""
    get_client().resume()
    click.echo("supervisor resumed", err=True)


@supervisor_group.command("wait-idle")
@click.option("--timeout", "timeout_s", type=Duration(), metavar="D",
              help="Give up after D (e.g. 30, 5m) and exit 4. [default: wait as long as it takes]")
@connection_options
def wait_idle_command(timeout_s: float | None) -> None:
    """Wait until no task is active, e.g. after `drain` before a deploy. Exits 4 on timeout."""
    if not get_client().wait_idle(timeout=timeout_s):
        click.echo(f"Error: timed out after {timeout_s:g} s with tasks still active", err=True)
        click.get_current_context().exit(EXIT_TIMEOUT)


@supervisor_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@connection_options
def status_command(as_json: bool) -> None:
    """Show the supervisor's pid, uptime, workers, draining flag, paths and version."""
    status = get_client().status()
    if as_json:
        output.print_json(status)
        return

    workers = f"{status.get('workers', '-')} ({status.get('busy', 0)} busy, {status.get('idle', 0)} idle)"
    failures = str(status.get("worker_failures", 0))
    if status.get("last_worker_error"):
        failures += f" (last: {status['last_worker_error']})"
    output.print_fields([
        ("pid", status.get("pid", "-")),
        ("uptime", output.format_duration(status.get("uptime_s"))),
        ("workers", workers),
        ("draining", output.yes_no(status.get("draining"))),
        ("app", status.get("app") or "-"),
        ("database", status.get("db_path") or "-"),
        ("socket", status.get("socket") or "-"),
        ("version", status.get("version") or "-"),
        ("worker failures", failures),
    ])
