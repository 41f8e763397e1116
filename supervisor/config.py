"""SupervisorConfig: every setting of `procq supervisor run`, with defaults and default paths."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from procq import addresses

DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024


def default_socket_path(environ=os.environ) -> str:
    """Return where the control socket goes: systemd's RuntimeDirectory, /run/procq as root, or per user."""
    runtime = environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return os.path.join(runtime.split(":")[0], "procq.sock")
    if os.geteuid() == 0:
        return addresses.SYSTEM_SOCKET
    return os.path.join(addresses.user_runtime_dir(), "procq.sock")


def default_db_path(environ=os.environ) -> str:
    """Return where the database goes: systemd's StateDirectory, /var/lib/procq as root, or per user."""
    state = environ.get("STATE_DIRECTORY")
    if state:
        return os.path.join(state.split(":")[0], "procq.db")
    if os.geteuid() == 0:
        return "/var/lib/procq/procq.db"
    state_home = environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state_home, "procq", "procq.db")


def parse_queues(text: str | None) -> dict[str, int]:
    """Parse `high=6,default=3,low=1` into {queue: weight}; a bare name gets weight 1."""
    queues: dict[str, int] = {}
    if not text:
        return queues
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, weight = item.partition("=")
        name = name.strip()
        try:
            value = int(weight) if weight else 1
        except ValueError:
            raise ValueError(f"invalid queue weight in {item!r}: expected NAME=INTEGER, e.g. high=6") from None
        if not name or value < 1:
            raise ValueError(f"invalid queue weight in {item!r}: expected NAME=INTEGER with INTEGER >= 1")
        queues[name] = value
    return queues


@dataclass
class SupervisorConfig:
    """Settings of one supervisor. Durations are seconds and sizes are bytes."""

    app: str
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    socket: str = field(default_factory=default_socket_path)
    db: str = field(default_factory=default_db_path)
    queues: dict[str, int] = field(default_factory=dict)
    strict_priority: bool = False
    max_tasks_per_worker: int | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD
    sync: str = "normal"
    log_level: str = "INFO"
    max_grace_s: float = 60.0
    shutdown_timeout_s: float = 10.0
    worker_start_timeout_s: float = 30.0
    # Where cgroup v2 is usable, each worker gets its own group; False forces the fallback.
    use_cgroups: bool = True
    purge_interval_s: float = 60.0
