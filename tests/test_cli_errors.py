"""Unit tests of procq.cli.errors: exit codes and one-line messages for procq's exceptions."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from procq import errors
from procq.cli.errors import exit_code_for
from procq.cli.groups import LazyGroup


@pytest.mark.parametrize("exception, code", [
    (errors.TaskNotFound("task x not found", "x"), 1),
    (errors.TaskNotFinal("task x is active", "x", "active"), 1),
    (errors.ProtocolError("malformed message"), 1),
    (errors.ProcqError("something else"), 1),
    (errors.InvalidTask("invalid name"), 2),
    (errors.DuplicateTask("task x already exists"), 2),
    (errors.PayloadTooLarge("arguments are 20 MiB"), 2),
    (errors.SupervisorUnavailable("no reply on /s.sock", "/s.sock"), 3),
    (errors.PermissionDenied("permission denied on /s.sock; add yourself to group procq", "/s.sock"), 3),
    (errors.WaitTimeout("task x is not final after 1 s"), 4),
])
def test_exit_code_for_each_error(exception, code):
    assert exit_code_for(exception) == code


def _group_raising(exception: Exception) -> click.Group:
    @click.group(cls=LazyGroup)
    def root():
        pass

    @root.command()
    def fail():
        raise exception

    return root


@pytest.mark.parametrize("exception, code", [
    (errors.PermissionDenied("permission denied on /run/procq/procq.sock; add yourself to group procq",
                             "/run/procq/procq.sock"), 3),
    (errors.TaskNotFound("task abc not found", "abc"), 1),
    (errors.WaitTimeout("task abc is not final after 2 s"), 4),
])
def test_group_prints_one_line_and_exit_code(exception, code):
    result = CliRunner().invoke(_group_raising(exception), ["fail"])
    assert result.exit_code == code
    assert result.stdout == ""
    assert result.stderr == f"Error: {exception}\n"
