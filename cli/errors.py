"""Exit codes of the `procq` command and the mapping from procq's exceptions to them.

Every error reaches the user as one line on stderr, `Error: ...`. The exit code
depends on the error's class: 1 an operation failed for a task, 2 invalid input,
3 no supervisor reachable (or access denied), 4 a wait timed out.
"""

from __future__ import annotations

import click

from procq import errors

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_TIMEOUT = 4

# Checked in order, so a subclass must come before its base class.
_EXIT_CODES: tuple[tuple[type[errors.ProcqError], int], ...] = (
    (errors.SupervisorUnavailable, EXIT_UNAVAILABLE),  # PermissionDenied is a subclass.
    (errors.WaitTimeout, EXIT_TIMEOUT),
    (errors.InvalidTask, EXIT_USAGE),
    (errors.DuplicateTask, EXIT_USAGE),
    (errors.PayloadTooLarge, EXIT_USAGE),
    (errors.TaskNotFound, EXIT_FAILED),
    (errors.TaskNotFinal, EXIT_FAILED),
)


def exit_code_for(exc: errors.ProcqError) -> int:
    """Return the exit code for a procq exception. Classes not listed get 1 (failed)."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILED


class CommandError(click.ClickException):
    """A one-line error with its own exit code, shown by click as `Error: MESSAGE`."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def from_procq(cls, exc: errors.ProcqError) -> CommandError:
        return cls(str(exc), exit_code_for(exc))


class InvalidValue(click.BadParameter):
    """A bad option or argument value, shown as one line without the usage text.

    click prints a usage line and a help hint before a BadParameter. A wrong value
    needs neither, because the message names the value and what is accepted.
    """

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=file is None)


def report_task_error(exc: errors.ProcqError) -> None:
    """Print a per-task error (one of several IDs) to stderr and go on with the rest."""
    click.echo(f"Error: {exc}", err=True)
