"""`procq supervisor run`: start a supervisor in the foreground."""

from __future__ import annotations

import click


@click.command("run")
@click.option("--app", "app", envvar="PROCQ_APP", required=True, metavar="MODULE:ATTR",
              help="The application: an importable module and the App in it, e.g. myapp.tasks:app.")
def run_command(app: str) -> None:
    """Run a supervisor in the foreground until SIGTERM or SIGINT."""
    # TODO: placeholder, replaced by the real command in the supervisor work.
    raise click.ClickException("not implemented yet")
