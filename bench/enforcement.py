"""How late procq and pebble stop tasks that overrun their timeouts, on loaded CPUs.

Every task overruns: pure-Python loops (the soft signal's TaskCancelled ends them), C
loops that never return to the interpreter, and loops that swallow BaseException (only
SIGKILL ends those two). Timeouts are drawn uniformly between --min-timeout and
--max-timeout with a fixed seed, and the same plan runs on procq and on
pebble.ProcessPool, one after the other, while busy-loop processes keep every CPU loaded.

procq figures come from each task's record: soft_lateness_s, kill_lateness_s,
reaped_at - kill_at, and reaped_at - (started_at + timeout + grace). pebble has no soft
step: at the timeout it sends SIGTERM, joins the worker and then fails the future with
TimeoutError. Its lateness is the time the future completes minus (the start the task
wrote itself + timeout). An exit watcher polls /proc every millisecond for the time
each killed worker is gone, as a cross-check of procq's reaped_at and as pebble's figure.

    python bench/enforcement.py [--tasks 200] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time

if __package__ in (None, ""):
    # Run as `python bench/enforcement.py`: make `bench` importable for pebble's pickling.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pebble

from bench import apps
from bench.harness import BenchSupervisor, machine_facts, summary_ms
from bench.probes import CpuLoad, ExitWatcher, PoolSampler, child_pool_sample, procq_pool_sample

KINDS = ("py_loop", "c_loop", "swallow")
# Kinds that only SIGKILL stops under procq, so their worker exits and is replaced.
KILLED_KINDS = ("c_loop", "swallow")
PEER_FUNCTIONS = {"py_loop": apps.py_loop, "c_loop": apps.c_loop, "swallow": apps.swallow}


def make_plan(tasks: int, seed: int, min_timeout: float, max_timeout: float) -> list[dict]:
    rng = random.Random(seed)
    return [{"index": index, "kind": rng.choice(KINDS), "timeout": rng.uniform(min_timeout, max_timeout)}
            for index in range(tasks)]


def start_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"{index}.start")


# -- procq ------------------------------------------------------------------------------

def run_procq(plan: list[dict], args, observe: bool) -> dict:
    """Run the plan on a supervisor and return per-task figures and pool-size figures.

    With `observe`, a thread samples Client.workers() every --sample-interval and another
    polls /proc for killed workers. Both load the CPUs and the supervisor a little, so a
    run without them shows how much they cost.
    """
    starts_dir = tempfile.mkdtemp(prefix="pqe", dir="/tmp")
    watcher = ExitWatcher(starts_dir, lambda index: plan[index]["kind"] in KILLED_KINDS)
    supervisor = BenchSupervisor(workers=args.workers)
    try:
        supervisor.start()
        sampler_client = supervisor.client()
        sampler = None
        if observe:
            sampler = PoolSampler(procq_pool_sample(sampler_client), args.workers, args.sample_interval)
            watcher.start()
        with supervisor.client() as client:
            items = [{"name": task["kind"], "kwargs": {"start_path": start_path(starts_dir, task["index"])},
                      "timeout": task["timeout"], "grace": args.grace} for task in plan]
            if sampler is not None:
                sampler.start()
            started = time.monotonic()
            infos = client.enqueue_many(items)
            finals = [client.wait(info.id, timeout=120) for info in infos]
            elapsed = time.monotonic() - started
            pool = sampler.stop() if sampler is not None else None
            stats = client.stats()
        watcher.stop()
        sampler_client.close()
    finally:
        log_text = supervisor.stop()
        shutil.rmtree(starts_dir, ignore_errors=True)

    rows = []
    for task, info in zip(plan, finals):
        rows.append(procq_row(task, info, args.grace, watcher))
    return {"rows": rows, "elapsed_s": elapsed, "pool": pool, "stats": stats,
            "load_average_1m_end": os.getloadavg()[0],
            "log_errors": log_errors(log_text),
            "start_failures_logged": log_text.count("worker failed to start")}


def log_errors(log_text: str, limit: int = 10) -> list[str]:
    """Return the supervisor log's ERROR lines and tracebacks, each traceback as one entry."""
    entries: list[str] = []
    block: list[str] | None = None
    for line in log_text.splitlines():
        if block is not None:
            block.append(line)
            if line and not line.startswith(" "):
                entries.append("\n".join(block))  # The exception line ends a traceback.
                block = None
        elif line.startswith("Traceback"):
            block = [line]
        elif " ERROR " in line:
            entries.append(line)
    if block:
        entries.append("\n".join(block))
    return entries[:limit]


def procq_row(task: dict, info, grace: float, watcher: ExitWatcher) -> dict:
    """Return one task's figures, in seconds, from its final record."""

    def seconds(value):
        return None if value is None else value.timestamp()

    started, soft, kill, reaped = (seconds(info.started_at), seconds(info.soft_signal_at),
                                   seconds(info.kill_at), seconds(info.reaped_at))
    handler_start = watcher.starts.get(task["index"], (None, None))[0]
    gone_at = watcher.gone_at.get(task["index"])
    exited_at = watcher.exited_at.get(task["index"])
    row = {"kind": task["kind"], "timeout": task["timeout"], "state": info.state, "outcome": info.outcome,
           "attempts": len(info.attempts), "soft_lateness": info.soft_lateness_s,
           "kill_lateness": info.kill_lateness_s, "killed": kill is not None,
           "dispatch_to_handler": None if handler_start is None or started is None else handler_start - started,
           "kill_to_reaped": None, "limit_grace_to_reaped": None, "soft_to_finished": None,
           "limit_grace_to_gone_observed": None, "kill_to_exited_observed": None,
           "soft_lateness_from_handler_start": None}
    if soft is not None and handler_start is not None:
        row["soft_lateness_from_handler_start"] = soft - (handler_start + task["timeout"])
    if kill is not None and reaped is not None:
        row["kill_to_reaped"] = reaped - kill
        row["limit_grace_to_reaped"] = reaped - (started + task["timeout"] + grace)
    if kill is not None and gone_at is not None:
        row["limit_grace_to_gone_observed"] = gone_at - (started + task["timeout"] + grace)
    if kill is not None and exited_at is not None:
        row["kill_to_exited_observed"] = exited_at - kill
    if kill is None and soft is not None and info.finished_at is not None:
        row["soft_to_finished"] = seconds(info.finished_at) - soft
    return row


# -- pebble -----------------------------------------------------------------------------

def run_pebble(plan: list[dict], args, excluded_pids: set[int]) -> dict:
    """Run the plan on pebble.ProcessPool and return per-task figures and pool-size figures."""
    starts_dir = tempfile.mkdtemp(prefix="pqp", dir="/tmp")
    watcher = ExitWatcher(starts_dir, lambda index: True)
    done_at: dict[int, float] = {}
    done_lock = threading.Lock()

    def record_done(index: int):
        def callback(future):
            now = time.time()
            with done_lock:
                done_at[index] = now
        return callback

    try:
        pool = pebble.ProcessPool(max_workers=args.workers)
        try:
            for future in [pool.schedule(apps.noop) for _ in range(args.workers * 2)]:
                future.result(timeout=30)
            timeouts = {task["index"]: task["timeout"] for task in plan}

            def overdue() -> set[int]:
                # Every task overruns, so each pebble worker runs one task and is stopped.
                now = time.time()
                return {pid for index, (started, pid) in list(watcher.starts.items())
                        if now > started + timeouts[index]}

            sampler = PoolSampler(child_pool_sample(excluded_pids, overdue), args.workers,
                                  args.sample_interval)
            watcher.start()
            sampler.start()
            started = time.monotonic()
            futures = []
            for task in plan:
                future = pool.schedule(PEER_FUNCTIONS[task["kind"]],
                                       kwargs={"start_path": start_path(starts_dir, task["index"])},
                                       timeout=task["timeout"])
                future.add_done_callback(record_done(task["index"]))
                futures.append(future)
            concurrent.futures.wait(futures, timeout=300)
            elapsed = time.monotonic() - started
            pool_figures = sampler.stop()
            # Give the watcher time to see the last worker go before it stops.
            time.sleep(0.2)
            watcher.stop()
        finally:
            pool.stop()
            pool.join(timeout=30)
    finally:
        shutil.rmtree(starts_dir, ignore_errors=True)

    rows = []
    for task, future in zip(plan, futures):
        index = task["index"]
        start = watcher.starts.get(index)
        error = future.exception(timeout=0) if future.done() else None
        row = {"kind": task["kind"], "timeout": task["timeout"], "done": future.done(),
               "timed_out": isinstance(error, TimeoutError), "error": None if error is None else repr(error),
               "lateness": None, "limit_to_gone_observed": None}
        if start is not None and index in done_at:
            row["lateness"] = done_at[index] - (start[0] + task["timeout"])
        if start is not None and index in watcher.gone_at:
            row["limit_to_gone_observed"] = watcher.gone_at[index] - (start[0] + task["timeout"])
        rows.append(row)
    return {"rows": rows, "elapsed_s": elapsed, "pool": pool_figures,
            "load_average_1m_end": os.getloadavg()[0],
            "replacements": len([row for row in rows if row["timed_out"]])}


# -- report -----------------------------------------------------------------------------

def column(rows: list[dict], key: str, predicate=lambda row: True) -> list[float]:
    return [row[key] for row in rows if row.get(key) is not None and predicate(row)]


def of_kind(kind: str):
    return lambda row: row["kind"] == kind


def summarize_procq(result: dict) -> dict:
    rows = result["rows"]
    killed = [row for row in rows if row["killed"]]
    outcomes: dict[str, int] = {}
    for row in rows:
        key = f"{row['state']}/{row['outcome']}"
        outcomes[key] = outcomes.get(key, 0) + 1
    return {
        "tasks": len(rows), "outcomes": outcomes, "killed": len(killed),
        "elapsed_s": result["elapsed_s"], "load_average_1m_end": result["load_average_1m_end"],
        "soft_lateness_ms": summary_ms(column(rows, "soft_lateness")),
        "soft_lateness_from_handler_start_ms": summary_ms(column(rows, "soft_lateness_from_handler_start")),
        "dispatch_to_handler_ms": summary_ms(column(rows, "dispatch_to_handler")),
        "soft_to_finished_ms": summary_ms(column(rows, "soft_to_finished")),
        "kill_lateness_ms": summary_ms(column(rows, "kill_lateness")),
        "kill_to_reaped_ms": summary_ms(column(rows, "kill_to_reaped")),
        "limit_grace_to_reaped_ms": summary_ms(column(rows, "limit_grace_to_reaped")),
        "limit_grace_to_gone_observed_ms": summary_ms(column(rows, "limit_grace_to_gone_observed")),
        "kill_to_exited_observed_ms": summary_ms(column(rows, "kill_to_exited_observed")),
        "killed_by_kind": {kind: sum(1 for row in killed if row["kind"] == kind) for kind in KINDS},
        "by_kind": {kind: {"tasks": sum(1 for row in rows if row["kind"] == kind),
                           "soft_lateness_ms": summary_ms(column(rows, "soft_lateness", of_kind(kind))),
                           "limit_grace_to_reaped_ms": summary_ms(column(rows, "limit_grace_to_reaped",
                                                                         of_kind(kind)))}
                    for kind in KINDS},
        "pool": result["pool"],
        "supervisor_stats": {key: result["stats"].get(key) for key in ("stops", "by_outcome", "workers")},
        "log_errors": result["log_errors"], "start_failures_logged": result["start_failures_logged"],
    }


def summarize_pebble(result: dict) -> dict:
    rows = result["rows"]
    return {
        "tasks": len(rows), "timed_out": sum(1 for row in rows if row["timed_out"]),
        "not_done": sum(1 for row in rows if not row["done"]),
        "other_errors": sorted({row["error"] for row in rows if row["error"] and not row["timed_out"]}),
        "elapsed_s": result["elapsed_s"], "load_average_1m_end": result["load_average_1m_end"],
        "lateness_ms": summary_ms(column(rows, "lateness")),
        "limit_to_gone_observed_ms": summary_ms(column(rows, "limit_to_gone_observed")),
        "pool": result["pool"], "replacements": result["replacements"],
        "by_kind": {kind: {"tasks": sum(1 for row in rows if row["kind"] == kind),
                           "lateness_ms": summary_ms(column(rows, "lateness", of_kind(kind))),
                           "limit_to_gone_observed_ms": summary_ms(column(rows, "limit_to_gone_observed",
                                                                          of_kind(kind)))}
                    for kind in KINDS},
    }


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(report: dict) -> None:
    machine, config = report["machine"], report["config"]
    print(f"{machine['nproc']} CPUs, {machine['cpu_model']}, Linux {machine['kernel']}, "
          f"Python {machine['python']}, {machine['date']}")
    print(f"procq {machine['procq_commit']}, 1-minute load average at start {machine['load_average_1m']:.2f}")
    print(f"{config['tasks']} tasks (seed {config['seed']}), timeouts {config['min_timeout'] * 1000:.0f}-"
          f"{config['max_timeout'] * 1000:.0f} ms, grace {config['grace'] * 1000:.0f} ms, "
          f"{config['workers']} workers, {config['load']} busy-loop processes\n")

    procq_runs = [(name, report[name]) for name in ("procq", "procq_unobserved") if name in report]
    pebble_summary = report.get("pebble")
    width = 26
    print(f"{'ms: p50 / p99 / max':<46}" + "".join(f"{name:>{width}}" for name, _ in procq_runs)
          + (f"{'pebble':>{width}}" if pebble_summary else ""))

    def line(label: str, procq_key: str | None, pebble_key: str | None) -> None:
        cells = [triple(summary[procq_key]) if procq_key else "" for _, summary in procq_runs]
        if pebble_summary:
            cells.append(triple(pebble_summary[pebble_key]) if pebble_key else "")
        print(f"{label:<46}" + "".join(f"{cell:>{width}}" for cell in cells))

    line("soft lateness | pebble: TimeoutError late", "soft_lateness_ms", "lateness_ms")
    line("soft lateness from handler's own start", "soft_lateness_from_handler_start_ms", None)
    line("dispatch to handler start", "dispatch_to_handler_ms", None)
    line("soft signal to finished (not killed)", "soft_to_finished_ms", None)
    line("kill lateness", "kill_lateness_ms", None)
    line("kill to reaped", "kill_to_reaped_ms", None)
    line("limit+grace to reaped | pebble: limit to gone", "limit_grace_to_reaped_ms",
         "limit_to_gone_observed_ms")
    line("limit+grace to gone (exit watcher)", "limit_grace_to_gone_observed_ms", None)
    line("kill to exited, zombie or gone (exit watcher)", "kill_to_exited_observed_ms", None)

    print(f"\n{'by kind, ms: p50 / p99 / max':<46}" + "".join(f"{name:>{width}}" for name, _ in procq_runs)
          + (f"{'pebble':>{width}}" if pebble_summary else ""))
    for kind in KINDS:
        cells = [triple(summary["by_kind"][kind]["soft_lateness_ms"]) for _, summary in procq_runs]
        if pebble_summary:
            cells.append(triple(pebble_summary["by_kind"][kind]["lateness_ms"]))
        print(f"{kind + ' soft lateness | pebble late':<46}" + "".join(f"{cell:>{width}}" for cell in cells))
        if kind in KILLED_KINDS:
            cells = [triple(summary["by_kind"][kind]["limit_grace_to_reaped_ms"]) for _, summary in procq_runs]
            if pebble_summary:
                cells.append(triple(pebble_summary["by_kind"][kind]["limit_to_gone_observed_ms"]))
            print(f"{kind + ' limit+grace to reaped | to gone':<46}"
                  + "".join(f"{cell:>{width}}" for cell in cells))

    print()
    for name, summary in procq_runs:
        print(f"{name}: {summary['tasks']} tasks, outcomes {summary['outcomes']}, killed {summary['killed']} "
              f"{summary['killed_by_kind']}, elapsed {summary['elapsed_s']:.1f} s, "
              f"1-minute load average at end {summary['load_average_1m_end']:.2f}")
        print_pool(summary["pool"], config["workers"], "idle or busy workers")
        print(f"  'worker failed to start' errors in the supervisor log: {summary['start_failures_logged']}")
        for entry in summary["log_errors"]:
            print("  supervisor log: " + entry.replace("\n", "\n    "))
    if pebble_summary:
        print(f"pebble: {pebble_summary['tasks']} tasks, timed out {pebble_summary['timed_out']}, "
              f"not done {pebble_summary['not_done']}, other errors {pebble_summary['other_errors']}, "
              f"replacements {pebble_summary['replacements']}, elapsed {pebble_summary['elapsed_s']:.1f} s, "
              f"1-minute load average at end {pebble_summary['load_average_1m_end']:.2f}")
        print_pool(pebble_summary["pool"], config["workers"], "live workers not past their task's timeout")

    targets = report["targets"]
    print(f"\ntargets: p99 soft lateness < {targets['soft_lateness_p99_ms']} ms, "
          f"p99 limit+grace to reaped < {targets['limit_grace_to_reaped_p99_ms']} ms")
    for name, summary in procq_runs:
        soft_p99 = summary["soft_lateness_ms"]["p99"]
        reaped_p99 = summary["limit_grace_to_reaped_ms"]["p99"]
        print(f"  {name}: soft p99 {fmt(soft_p99)} ms "
              f"({verdict(soft_p99, targets['soft_lateness_p99_ms'])}), limit+grace to reaped p99 "
              f"{fmt(reaped_p99)} ms ({verdict(reaped_p99, targets['limit_grace_to_reaped_p99_ms'])})")


def print_pool(pool: dict | None, size: int, counted: str) -> None:
    if not pool:
        return
    print(f"  below full size (fewer than {size} {counted}): {pool['below_full_s'] * 1000:.0f} ms in "
          f"{pool['spells_below_full_ms']['n']} spells (p50 {fmt(pool['spells_below_full_ms']['p50'])} ms, "
          f"max {fmt(pool['spells_below_full_ms']['max'])} ms) of {pool['sampled_s']:.1f} s sampled")
    if pool["below_full_alive_s"] != pool["below_full_s"]:
        print(f"  counting workers that are being stopped as present: {pool['below_full_alive_s'] * 1000:.0f} ms in "
              f"{pool['spells_below_full_alive_ms']['n']} spells "
              f"(p50 {fmt(pool['spells_below_full_alive_ms']['p50'])} ms, "
              f"max {fmt(pool['spells_below_full_alive_ms']['max'])} ms)")
    print(f"  {pool['samples']} samples taking {triple(pool['sample_call_ms'])} ms each, max gap between "
          f"samples {fmt(pool['max_sample_gap_ms'])} ms, {pool['distinct_pids']} worker pids seen, "
          f"at most {pool['max_alive']} alive at once")


def triple(summary: dict) -> str:
    return f"{fmt(summary['p50'])} / {fmt(summary['p99'])} / {fmt(summary['max'])}"


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "no data"
    return "met" if value < target else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks in the plan")
    parser.add_argument("--seed", type=int, default=1, help="seed for the kinds and timeouts")
    parser.add_argument("--min-timeout", type=float, default=0.05, help="minimum timeout, in seconds")
    parser.add_argument("--max-timeout", type=float, default=0.5, help="maximum timeout, in seconds")
    parser.add_argument("--grace", type=float, default=0.1, help="procq grace period, in seconds")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each pool")
    parser.add_argument("--load", type=int, default=2, help="busy-loop processes running throughout")
    parser.add_argument("--sample-interval", type=float, default=0.02,
                        help="seconds between pool-size samples (Client.workers() for procq)")
    parser.add_argument("--no-unobserved", action="store_true",
                        help="skip the second procq run without pool sampling and exit watcher")
    parser.add_argument("--no-pebble", action="store_true", help="skip the pebble run")
    parser.add_argument("--json", action="store_true", help="print the report as JSON, with every task")
    args = parser.parse_args()
    if args.tasks < 1 or args.workers < 1 or args.load < 0:
        parser.error("invalid --tasks, --workers or --load; expected --tasks, --workers >= 1 and --load >= 0")
    if not 0 < args.min_timeout <= args.max_timeout:
        parser.error(f"invalid timeouts {args.min_timeout}-{args.max_timeout}; expected 0 < min <= max")
    if args.grace <= 0 or args.sample_interval <= 0:
        parser.error("invalid --grace or --sample-interval; expected seconds > 0")

    plan = make_plan(args.tasks, args.seed, args.min_timeout, args.max_timeout)
    report = {"machine": machine_facts(),
              "config": {key: getattr(args, key) for key in ("tasks", "seed", "min_timeout", "max_timeout",
                                                              "grace", "workers", "load", "sample_interval")},
              "targets": {"soft_lateness_p99_ms": 5, "limit_grace_to_reaped_p99_ms": 20}}
    raw = {}
    load = CpuLoad(args.load).start()
    try:
        print("running procq with pool sampling and exit watcher", file=sys.stderr, flush=True)
        raw["procq"] = run_procq(plan, args, observe=True)
        report["procq"] = summarize_procq(raw["procq"])
        if not args.no_unobserved:
            print("running procq without pool sampling and exit watcher", file=sys.stderr, flush=True)
            raw["procq_unobserved"] = run_procq(plan, args, observe=False)
            report["procq_unobserved"] = summarize_procq(raw["procq_unobserved"])
        if not args.no_pebble:
            print("running pebble", file=sys.stderr, flush=True)
            raw["pebble"] = run_pebble(plan, args, load.pids)
            report["pebble"] = summarize_pebble(raw["pebble"])
    finally:
        load.stop()

    if args.json:
        report["tasks"] = {name: result["rows"] for name, result in raw.items()}
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
