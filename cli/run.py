"""`procq supervisor run`: start a supervisor in the foreground."""

from __future__ import annotations

import sys

import click


class _ByteSize(click.ParamType):
    name = "bytes"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip()
        multipliers = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        try:
            if text[-1:].upper() in multipliers:
                return int(float(text[:-1]) * multipliers[text[-1].upper()])
            return int(text)
        except ValueError:
            self.fail(f"invalid size {value!r}; use bytes or a number with K, M or G, e.g. 16M", param, ctx)


@click.command("run")
@click.option("--app", envvar="PROCQ_APP", required=True, metavar="MODULE:ATTR",
              help="The application: an importable module and the procq.App in it, e.g. myapp.tasks:app.")
@click.option("--workers", envvar="PROCQ_WORKERS", type=click.IntRange(min=1, max=4096), default=None,
              help="Number of worker processes.  [default: CPU count]")
@click.option("--socket", "socket_", envvar="PROCQ_SOCKET", metavar="ADDR", default=None,
              help="Control socket: a path or ipc:// URL.  [default: /run/procq/procq.sock as root, "
                   "else $XDG_RUNTIME_DIR/procq/procq.sock]")
@click.option("--db", envvar="PROCQ_DB", metavar="PATH", default=None,
              help="SQLite database file.  [default: /var/lib/procq/procq.db as root, "
                   "else $XDG_STATE_HOME/procq/procq.db]")
@click.option("--queues", envvar="PROCQ_QUEUES", metavar="NAME=WEIGHT,...", default=None,
              help="Queue weights, e.g. high=6,default=3,low=1. Other queues get weight 1.")
@click.option("--strict-priority", envvar="PROCQ_STRICT_PRIORITY", is_flag=True,
              help="Serve a queue only when every heavier queue is empty.")
@click.option("--max-tasks-per-worker", envvar="PROCQ_MAX_TASKS_PER_WORKER", type=click.IntRange(min=1),
              default=None, help="Replace a worker after this many tasks.")
@click.option("--max-payload", envvar="PROCQ_MAX_PAYLOAD", type=_ByteSize(), default="16M", show_default=True,
              help="Largest encoded arguments or result of one task, in bytes (K, M, G allowed).")
@click.option("--sync", envvar="PROCQ_SYNC", type=click.Choice(["normal", "full"]), default="normal",
              show_default=True, help="SQLite durability: normal survives crashes of procq, full also power loss.")
@click.option("--max-grace", envvar="PROCQ_MAX_GRACE", type=click.FloatRange(min=0, min_open=True),
              default=60.0, show_default=True, help="Cap on any task's grace period, in seconds.")
@click.option("--shutdown-timeout", envvar="PROCQ_SHUTDOWN_TIMEOUT", type=click.FloatRange(min=0),
              default=10.0, show_default=True,
              help="On SIGTERM, seconds active tasks may still run before the soft signal.")
@click.option("--worker-start-timeout", envvar="PROCQ_WORKER_START_TIMEOUT",
              type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a new worker may take to report ready before it is killed.")
@click.option("--no-cgroup", envvar="PROCQ_NO_CGROUP", is_flag=True,
              help="Do not put workers in cgroups even where cgroup v2 is writable.")
@click.option("--log-level", envvar="PROCQ_LOG_LEVEL", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def run_command(app, workers, socket_, db, queues, strict_priority, max_tasks_per_worker, max_payload,
                sync, max_grace, shutdown_timeout, worker_start_timeout, no_cgroup, log_level) -> None:
    """Run a supervisor in the foreground until SIGTERM or SIGINT.

    Every option also reads the PROCQ_* environment variable shown in its help.
    """
    from procq.supervisor.config import SupervisorConfig, parse_queues
    from procq.supervisor.logsetup import configure_logging
    from procq.supervisor.main import run

    configure_logging(log_level)
    if max_payload < 1024:
        raise click.BadParameter(f"{max_payload} bytes is too small; give at least 1K", param_hint="--max-payload")
    try:
        weights = parse_queues(queues)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--queues") from None
    config = SupervisorConfig(app=app, queues=weights, strict_priority=strict_priority,
                              max_tasks_per_worker=max_tasks_per_worker, max_payload=max_payload,
                              sync=sync, log_level=log_level, max_grace_s=max_grace,
                              shutdown_timeout_s=shutdown_timeout,
                              worker_start_timeout_s=worker_start_timeout, use_cgroups=not no_cgroup)
    if workers is not None:
        config.workers = workers
    # `procq --socket X supervisor run` works too: the root group keeps X in the context.
    socket_ = socket_ or click.get_current_context().meta.get("procq.socket")
    if socket_:
        config.socket = socket_
    if db:
        config.db = db
    sys.exit(run(config))
