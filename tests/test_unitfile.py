"""Tests for contrib/systemd: the unit passes `systemd-analyze verify` and has the settings procq relies on."""

from __future__ import annotations

import dataclasses
import logging
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from procq.supervisor.config import SupervisorConfig

log = logging.getLogger(__name__)

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
UNIT_PATH = CONTRIB / "procq.service"
ENV_PATH = CONTRIB / "procq.env"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
TIME_UNITS_S = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "ms": 0.001}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse unit file text into {section: {key: [values in order]}}. Comments and blank lines are skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"line without '=': {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_timespan_s(value: str) -> float:
    """Parse a systemd time span such as `90`, `90s` or `1min 30s` into seconds."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, f"invalid time span {value!r}"
    for number, unit in parts:
        assert unit in TIME_UNITS_S, f"unknown time unit {unit!r} in {value!r}"
        total += float(number) * TIME_UNITS_S[unit]
    return total


def config_default(name: str):
    for field in dataclasses.fields(SupervisorConfig):
        if field.name == name:
            return field.default
    raise KeyError(name)


def procq_executable() -> str | None:
    found = shutil.which("procq")
    if found:
        return found
    candidate = Path(sys.executable).parent / "procq"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def account_exists(user: str, group: str) -> bool:
    try:
        pwd.getpwnam(user)
        grp.getgrnam(group)
    except KeyError:
        return False
    return True


def unit_for_this_machine(text: str, executable: str) -> str:
    """Point ExecStart= at this environment's procq and drop User=/Group= when the account is missing."""
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={executable}", text)
    if not account_exists("procq", "procq"):
        text = re.sub(r"(?m)^(User|Group)=.*\n", "", text)
    return text


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return parse_unit(UNIT_PATH.read_text(encoding="utf-8"))["Service"]


def test_unit_passes_systemd_analyze_verify():
    try:
        version = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        log.warning("skipping systemd-analyze verify: %s cannot run: %s", SYSTEMD_ANALYZE, exc)
        pytest.skip(f"{SYSTEMD_ANALYZE} cannot run: {exc}")
    if version.returncode != 0:
        log.warning("skipping systemd-analyze verify: --version exited %d: %s", version.returncode, version.stderr)
        pytest.skip(f"{SYSTEMD_ANALYZE} --version exited {version.returncode}: {version.stderr.strip()}")

    executable = procq_executable()
    assert executable, "no procq executable on PATH or next to sys.executable; run `pip install -e .`"

    directory = tempfile.mkdtemp(prefix="pq", dir="/tmp")
    try:
        unit_path = Path(directory) / "procq.service"
        unit_path.write_text(unit_for_this_machine(UNIT_PATH.read_text(encoding="utf-8"), executable),
                             encoding="utf-8")
        result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit_path)],
                                capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(directory)

    output = result.stdout + result.stderr
    # systemd-analyze also reports problems of the host's own units; keep the lines about ours.
    about_unit = [line for line in output.splitlines() if "procq.service" in line or directory in line]
    assert result.returncode == 0, output
    assert about_unit == [], "\n".join(about_unit)


def test_unit_rewrite_for_machine():
    text = "[Service]\nExecStart=/opt/procq/venv/bin/procq supervisor run\nUser=procq\nGroup=procq\n"

    rewritten = parse_unit(unit_for_this_machine(text, "/usr/local/bin/procq"))["Service"]

    assert rewritten["ExecStart"] == ["/usr/local/bin/procq supervisor run"]
    if not account_exists("procq", "procq"):
        assert "User" not in rewritten
        assert "Group" not in rewritten


@pytest.mark.parametrize("key, value", [
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("ExecStart", "/opt/procq/venv/bin/procq supervisor run"),
    ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ("KillMode", "mixed"),
    ("Delegate", "yes"),
    ("RuntimeDirectory", "procq"),
    ("RuntimeDirectoryMode", "0750"),
    ("StateDirectory", "procq"),
    ("UMask", "0007"),
    ("Restart", "on-failure"),
    ("OOMPolicy", "continue"),
    ("User", "procq"),
    ("Group", "procq"),
    ("EnvironmentFile", "-/etc/procq/procq.env"),
    ("NoNewPrivileges", "yes"),
])
def test_unit_required_setting(unit, key, value):
    assert unit.get(key) == [value]


@pytest.mark.parametrize("key", ["MemoryDenyWriteExecute", "ProcSubset", "ProtectControlGroups"])
def test_unit_omits_breaking_setting(unit, key):
    assert key not in unit


def test_unit_stop_timeout_covers_shutdown_and_grace(unit):
    shutdown_timeout_s = config_default("shutdown_timeout_s")
    max_grace_s = config_default("max_grace_s")
    assert (shutdown_timeout_s, max_grace_s) == (10.0, 60.0), \
        "the defaults changed: update TimeoutStopSec= and the comments in procq.service and procq.env"

    [value] = unit["TimeoutStopSec"]
    assert parse_timespan_s(value) > shutdown_timeout_s + max_grace_s


def test_unit_watchdog_is_set(unit):
    [value] = unit["WatchdogSec"]

    assert parse_timespan_s(value) > 0


@pytest.mark.parametrize("value, seconds", [("90", 90), ("90s", 90), ("1min 30s", 90), ("2m", 120)])
def test_parse_timespan(value, seconds):
    assert parse_timespan_s(value) == seconds


def env_blocks(text: str) -> dict[str, str]:
    """Map each PROCQ_* variable in an env file, set or commented out, to the comment block above it.

    Variables on consecutive lines share the block above the first of them.
    """
    blocks: dict[str, str] = {}
    comments: list[str] = []
    block = ""
    for line in text.splitlines():
        match = re.match(r"^#?\s*(PROCQ_[A-Z0-9_]+)=", line)
        if match:
            if comments:
                block = "\n".join(comments)
            blocks[match.group(1)] = block
            comments = []
        elif line.startswith("#"):
            comments.append(line)
        else:
            comments = []
            block = ""
    return blocks


def test_env_file_documents_variables():
    blocks = env_blocks(ENV_PATH.read_text(encoding="utf-8"))

    for name in ["PROCQ_APP", "PROCQ_WORKERS", "PROCQ_QUEUES", "PROCQ_SHUTDOWN_TIMEOUT",
                 "PROCQ_MAX_GRACE", "PROCQ_LOG_LEVEL"]:
        assert name in blocks, f"{name} is missing from {ENV_PATH.name}"
    for name, comment in blocks.items():
        assert comment, f"{name} has no comment"
        assert "Default:" in comment or "Required" in comment, f"{name} documents no default"


def test_env_file_sets_only_app():
    text = ENV_PATH.read_text(encoding="utf-8")

    set_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert [line.split("=", 1)[0] for line in set_lines] == ["PROCQ_APP"]
