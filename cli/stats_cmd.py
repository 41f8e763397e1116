"""`procq stats`: task counts, throughput, stops and enforcement lateness of a supervisor."""

from __future__ import annotations

from typing import Any

import click

from procq.cli import output
from procq.cli.connection import connection_options, get_client


def format_counts(counts: dict[str, Any] | None) -> str:
    """Format {name: count} as `pending 3, active 1`, leaving out zeros (all zero is `-`)."""
    items = [f"{name} {count}" for name, count in (counts or {}).items() if count]
    return ", ".join(items) or "-"


def format_lateness(lateness_ms: dict[str, Any] | None) -> str:
    """Format {p50, p99, max} in milliseconds as `p50 0.80ms, p99 2.10ms, max 3.00ms`."""
    if not lateness_ms or all(lateness_ms.get(key) is None for key in ("p50", "p99", "max")):
        return "-"
    parts = []
    for key in ("p50", "p99", "max"):
        value = lateness_ms.get(key)
        parts.append(f"{key} {'-' if value is None else f'{value:.2f}ms'}")
    return ", ".join(parts)


def format_workers(workers: Any) -> str:
    """Format the stats' `workers`: a count, or a {state: count} mapping."""
    if isinstance(workers, dict):
        return format_counts(workers)
    return "-" if workers is None else str(workers)


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@connection_options
def stats_command(as_json: bool) -> None:
    """Show task counts by state and outcome, throughput, stops and their lateness.

    Lateness is how long after its target time the soft signal (or SIGKILL) was
    sent, in milliseconds.
    """
    stats = get_client().stats()
    if as_json:
        output.print_json(stats)
        return

    stops = stats.get("stops") or {}
    throughput = stats.get("tasks_per_s_1m")
    output.print_fields([
        ("tasks by state", format_counts(stats.get("by_state"))),
        ("tasks by outcome", format_counts(stats.get("by_outcome"))),
        ("throughput", "-" if throughput is None else f"{throughput:.2f} tasks/s (last minute)"),
        ("stops", f"soft signal {stops.get('soft', 0)}, kill {stops.get('kill', 0)}"),
        ("soft lateness", format_lateness(stats.get("soft_lateness_ms"))),
        ("kill lateness", format_lateness(stats.get("kill_lateness_ms"))),
        ("uptime", output.format_duration(stats.get("uptime_s"))),
        ("workers", format_workers(stats.get("workers"))),
    ])
