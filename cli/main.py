"""The `procq` command's root group: global options and the table of subcommands.

Subcommands live in one module per noun and are imported only when used (see
procq.cli.groups.LazyGroup), so `procq --help` and `procq task ls` start quickly.
"""

from __future__ import annotations

import click

import procq
from procq.cli.connection import root_connection_options
from procq.cli.groups import LazyGroup

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

SUBCOMMANDS = {
    "enqueue": "procq.cli.enqueue_cmd:enqueue_command",
    "task": "procq.cli.task_cmds:task_group",
    "queue": "procq.cli.queue_cmds:queue_group",
    "worker": "procq.cli.worker_cmds:worker_group",
    "stats": "procq.cli.stats_cmd:stats_command",
    "top": "procq.cli.top:top_command",
    "supervisor": "procq.cli.supervisor_cmds:supervisor_group",
    "demo": "procq.cli.demo:demo_command",
}


@click.group("procq", cls=LazyGroup, lazy_commands=SUBCOMMANDS, context_settings=CONTEXT_SETTINGS)
@click.version_option(procq.__version__, "--version", prog_name="procq", message="%(prog)s %(version)s")
@root_connection_options
def main() -> None:
    """Run CPU-heavy Python tasks in a supervised process pool, and inspect and control it.

    Every command talks to a running supervisor (`procq supervisor run`) through its
    control socket. Options given before the command (--socket, --connect-timeout)
    can also be given after it.

    Exit codes: 0 success, 1 the operation failed for a task, 2 invalid usage or
    input, 3 supervisor unreachable or access denied, 4 a wait timed out.
    """


if __name__ == "__main__":
    main(prog_name="procq")
