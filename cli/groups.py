"""LazyGroup: a click group that imports a subcommand's module only when it is needed.

A subcommand is imported when it is invoked, completed, or listed by `--help`, so
`procq task ls` never imports the modules of `top` or `supervisor run`. Every group of
the `procq` command is a LazyGroup, and each one turns procq's exceptions into one-line
errors with the exit codes of procq.cli.errors.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from procq.errors import ProcqError


class LazyGroup(click.Group):
    """A group whose `lazy_commands` map a command name to `"module:attribute"`.

    A lazy command whose module does not exist (yet) is left out of the group, as if
    it were not registered. Any other import error is raised.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(name for name in self.lazy_commands if self.get_command(ctx, name) is not None)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.lazy_commands:
            return command
        command = self._load(self.lazy_commands[cmd_name])
        if command is not None:
            # Registered under the name looked up, so an alias (task enqueue) keeps its name.
            self.commands[cmd_name] = command
        return command

    @staticmethod
    def _load(import_path: str) -> click.Command | None:
        module_name, _, attribute = import_path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return getattr(module, attribute)

    def invoke(self, ctx: click.Context) -> Any:
        from procq.cli.errors import CommandError

        try:
            return super().invoke(ctx)
        except ProcqError as exc:
            raise CommandError.from_procq(exc) from None
