"""The `procq` root group: help, version, lazy subcommands, imports at startup, completion."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

import procq
from procq.cli.groups import LazyGroup
from procq.cli.main import main

# Prints the names of all imported modules to stderr when the command exits.
MODULES_SCRIPT = textwrap.dedent("""
    import atexit, sys
    atexit.register(lambda: sys.__stderr__.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n"))
    from procq.cli.main import main
    main(sys.argv[1:], prog_name="procq")
""")


def imported_modules(*args: str) -> set[str]:
    """Run `procq ARGS...` in a fresh interpreter and return the modules it imported."""
    completed = subprocess.run([sys.executable, "-c", MODULES_SCRIPT, *args],
                               capture_output=True, text=True, timeout=30)
    lines = [line for line in completed.stderr.splitlines() if line.startswith("MODULES ")]
    assert lines, completed.stderr
    return set(lines[-1].split()[1:])


def test_version_option():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"procq {procq.__version__}\n"


@pytest.mark.parametrize("argv", [
    [], ["task"], ["task", "ls"], ["task", "cancel"], ["task", "enqueue"], ["enqueue"], ["queue"],
    ["queue", "pause"], ["worker", "ls"], ["stats"], ["supervisor"], ["supervisor", "wait-idle"],
    ["supervisor", "run"], ["top"],
])
def test_help_on_every_level(argv):
    result = CliRunner().invoke(main, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: procq {' '.join(argv)}".rstrip())


def test_help_lists_every_subcommand():
    result = CliRunner().invoke(main, ["--help"])
    for name in ("enqueue", "task", "queue", "worker", "stats", "top", "supervisor"):
        assert f"\n  {name} " in result.stdout
    task_help = CliRunner().invoke(main, ["task", "--help"])
    for name in ("ls", "inspect", "cancel", "wait", "delete", "retry", "enqueue"):
        assert f"\n  {name} " in task_help.stdout


def test_leaf_commands_accept_connection_options():
    for argv in (["task", "ls"], ["queue", "ls"], ["worker", "ls"], ["stats"],
                 ["supervisor", "status"], ["enqueue"], ["task", "wait"], ["top"]):
        result = CliRunner().invoke(main, [*argv, "--help"])
        assert "--socket ADDR" in result.stdout, argv
        assert "--connect-timeout SECONDS" in result.stdout, argv


def test_unknown_command_exits_2():
    result = CliRunner().invoke(main, ["tasks"])
    assert result.exit_code == 2
    assert "No such command 'tasks'" in result.stderr


def test_lazy_group_skips_missing_module():
    group = LazyGroup("g", lazy_commands={"gone": "procq.cli.no_such_module:command",
                                          "ls": "procq.cli.worker_cmds:ls_command"})
    ctx = click.Context(group)
    assert group.list_commands(ctx) == ["ls"]
    assert group.get_command(ctx, "gone") is None
    assert group.get_command(ctx, "ls").name == "ls"


def test_lazy_group_raises_broken_import(tmp_path, monkeypatch):
    (tmp_path / "broken_cli_module.py").write_text("import no_such_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = LazyGroup("g", lazy_commands={"broken": "broken_cli_module:command"})
    with pytest.raises(ModuleNotFoundError) as info:
        group.get_command(click.Context(group), "broken")
    assert info.value.name == "no_such_dependency_of_it"


def test_help_imports_no_client_transport():
    modules = imported_modules("--help")
    assert "zmq" not in modules
    assert "curses" not in modules
    assert "procq.cli.run" not in modules
    assert not any(name.startswith("procq.supervisor") for name in modules)


def test_task_ls_imports_only_its_modules(tmp_path):
    modules = imported_modules("task", "ls", "--socket", str(tmp_path / "none.sock"),
                               "--connect-timeout", "0.1")
    assert "zmq" in modules
    for name in ("curses", "procq.cli.top", "procq.cli.demo", "procq.cli.run",
                 "procq.cli.enqueue_cmd", "procq.cli.cancel_cmd", "procq.cli.task_view",
                 "procq.cli.queue_cmds", "sqlite3"):
        assert name not in modules, name
    assert not any(name.startswith("procq.supervisor") for name in modules)


def test_shell_completion_of_states():
    env = {**os.environ, "_PROCQ_COMPLETE": "bash_complete", "COMP_WORDS": "procq task ls --state ac",
           "COMP_CWORD": "4"}
    completed = subprocess.run([sys.executable, "-m", "procq.cli.main"], env=env,
                               capture_output=True, text=True, timeout=30)
    assert completed.stdout.split() == ["plain,active"]


def test_shell_completion_of_commands():
    env = {**os.environ, "_PROCQ_COMPLETE": "bash_complete", "COMP_WORDS": "procq task c",
           "COMP_CWORD": "2"}
    completed = subprocess.run([sys.executable, "-m", "procq.cli.main"], env=env,
                               capture_output=True, text=True, timeout=30)
    assert completed.stdout.split() == ["plain,cancel"]
