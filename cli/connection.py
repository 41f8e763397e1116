"""The `--socket` and `--connect-timeout` options and the Client that commands build from them.

The root group and every leaf command accept both options. Each value is stored in
the click context's `meta`, which all contexts of one invocation share. The root's
callback runs first, so a leaf's value overrides it: `procq --socket A task ls
--socket B` talks to B.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import click

from procq.cli.errors import EXIT_USAGE, CommandError
from procq.cli.parse import Duration

if TYPE_CHECKING:
    from procq.client import Client

SOCKET_KEY = "procq.socket"
CONNECT_TIMEOUT_KEY = "procq.connect_timeout"
DEFAULT_CONNECT_TIMEOUT_S = 5.0

SOCKET_HELP = ("Control socket of the supervisor: a path or ipc:// URL. [env: PROCQ_SOCKET; "
               "default: /run/procq/procq.sock if it exists, else the per-user runtime directory]")
CONNECT_TIMEOUT_HELP = "Seconds to wait for the supervisor's reply before giving up. [default: 5]"


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            ctx.meta[key] = value
        return value

    return callback


def root_connection_options(function: Callable) -> Callable:
    """Add --socket (also from PROCQ_SOCKET) and --connect-timeout to the root group."""
    function = click.option(
        "--connect-timeout", type=Duration(), metavar="SECONDS", expose_value=False,
        callback=_remember(CONNECT_TIMEOUT_KEY), help=CONNECT_TIMEOUT_HELP,
    )(function)
    function = click.option(
        "--socket", metavar="ADDR", envvar="PROCQ_SOCKET", show_envvar=False, expose_value=False,
        callback=_remember(SOCKET_KEY), help=SOCKET_HELP,
    )(function)
    return function


def connection_options(function: Callable) -> Callable:
    """Add --socket and --connect-timeout to a leaf command; its values win over the root's.

    The leaf's --socket reads no environment variable, so PROCQ_SOCKET never overrides a
    --socket given to the root.
    """
    function = click.option(
        "--connect-timeout", type=Duration(), metavar="SECONDS", expose_value=False,
        callback=_remember(CONNECT_TIMEOUT_KEY), help=CONNECT_TIMEOUT_HELP,
    )(function)
    function = click.option(
        "--socket", metavar="ADDR", expose_value=False, callback=_remember(SOCKET_KEY),
        help="Control socket of the supervisor (overrides the one given before the command).",
    )(function)
    return function


def connect_timeout(ctx: click.Context) -> float:
    """Return the connect timeout in seconds chosen for this invocation."""
    return float(ctx.meta.get(CONNECT_TIMEOUT_KEY, DEFAULT_CONNECT_TIMEOUT_S))


def get_client(ctx: click.Context | None = None, *, timeout_s: float | None = None) -> Client:
    """Return a Client for this invocation's socket, closed when the command ends.

    `timeout_s` replaces the connect timeout (`top` uses a shorter one to stay responsive).
    An invalid address (tcp://, a path over the kernel's limit) is a usage error.
    """
    from procq.client import Client
    from procq.errors import ProcqError

    ctx = click.get_current_context() if ctx is None else ctx
    address = ctx.meta.get(SOCKET_KEY)
    try:
        client = Client(address, connect_timeout=connect_timeout(ctx) if timeout_s is None else timeout_s)
    except ProcqError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    return ctx.with_resource(client)
