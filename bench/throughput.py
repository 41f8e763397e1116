"""Throughput and one-task round trip of procq against ProcessPoolExecutor and multiprocessing.Pool.

Throughput: N no-op tasks, enqueued with Client.enqueue_many in batches and collected
with one Client.wait per task, on a supervisor with 2 workers, once with `--sync normal`
and once with `--sync full`. The peers run the same function in the same run with one
submit or apply_async per task. Round trip: sequential enqueue, wait and result of one
task at a time, against submit().result() and apply_async().get().

Every system is warmed up before its clock starts: the supervisor reports its workers
idle, and each peer pool has run a few tasks. The supervisor start and stop are not timed.

    python bench/throughput.py [--tasks 20000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import time

if __package__ in (None, ""):
    # Run as `python bench/throughput.py`: make `bench` importable for the peers' pickling.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil

from bench.apps import noop
from bench.harness import BenchSupervisor, machine_facts, percentile

SYSTEMS = ("procq_normal", "procq_full", "process_pool_executor", "multiprocessing_pool")
LABELS = {
    "procq_normal": "procq --sync normal",
    "procq_full": "procq --sync full",
    "process_pool_executor": "ProcessPoolExecutor",
    "multiprocessing_pool": "multiprocessing.Pool",
}
PEERS = ("process_pool_executor", "multiprocessing_pool")
WARMUP_TASKS = 20


# -- procq ------------------------------------------------------------------------------

def procq_throughput(tasks: int, batch: int, workers: int, sync: str) -> dict:
    with BenchSupervisor(workers=workers, sync=sync) as supervisor, supervisor.client() as client:
        supervisor_cpu = psutil.Process(supervisor.process.pid)
        cpu_before = sum(supervisor_cpu.cpu_times()[:2])
        client_cpu_before = time.process_time()

        started = time.perf_counter()
        task_ids = []
        for first in range(0, tasks, batch):
            count = min(batch, tasks - first)
            task_ids.extend(info.id for info in client.enqueue_many([{"name": "noop"}] * count))
        enqueued = time.perf_counter()
        not_succeeded = 0
        for task_id in task_ids:
            if client.wait(task_id, timeout=120).outcome != "succeeded":
                not_succeeded += 1
        finished = time.perf_counter()

        supervisor_cpu_s = sum(supervisor_cpu.cpu_times()[:2]) - cpu_before
        client_cpu_s = time.process_time() - client_cpu_before
    return {"tasks_per_s": tasks / (finished - started), "elapsed_s": finished - started,
            "enqueue_per_s": tasks / (enqueued - started), "not_succeeded": not_succeeded,
            "supervisor_cpu_s": supervisor_cpu_s, "client_cpu_s": client_cpu_s}


def procq_round_trip(tasks: int, workers: int, sync: str) -> list[float]:
    with BenchSupervisor(workers=workers, sync=sync) as supervisor, supervisor.client() as client:
        durations = []
        for index in range(WARMUP_TASKS + tasks):
            started = time.perf_counter()
            info = client.wait(client.enqueue("noop").id, timeout=60)
            elapsed = time.perf_counter() - started
            if info.outcome != "succeeded":
                raise RuntimeError(f"round-trip task {info.id} ended {info.state}/{info.outcome}: {info.error}")
            if index >= WARMUP_TASKS:
                durations.append(elapsed)
    return durations


# -- peers ------------------------------------------------------------------------------

def executor_throughput(tasks: int, workers: int) -> dict:
    with concurrent.futures.ProcessPoolExecutor(workers) as executor:
        for future in [executor.submit(noop) for _ in range(WARMUP_TASKS)]:
            future.result()
        started = time.perf_counter()
        futures = [executor.submit(noop) for _ in range(tasks)]
        for future in futures:
            future.result()
        finished = time.perf_counter()
    return {"tasks_per_s": tasks / (finished - started), "elapsed_s": finished - started}


def executor_round_trip(tasks: int, workers: int) -> list[float]:
    with concurrent.futures.ProcessPoolExecutor(workers) as executor:
        durations = []
        for index in range(WARMUP_TASKS + tasks):
            started = time.perf_counter()
            executor.submit(noop).result()
            if index >= WARMUP_TASKS:
                durations.append(time.perf_counter() - started)
    return durations


def pool_throughput(tasks: int, workers: int) -> dict:
    with multiprocessing.Pool(workers) as pool:
        for result in [pool.apply_async(noop) for _ in range(WARMUP_TASKS)]:
            result.get()
        started = time.perf_counter()
        results = [pool.apply_async(noop) for _ in range(tasks)]
        for result in results:
            result.get()
        finished = time.perf_counter()
    return {"tasks_per_s": tasks / (finished - started), "elapsed_s": finished - started}


def pool_round_trip(tasks: int, workers: int) -> list[float]:
    with multiprocessing.Pool(workers) as pool:
        durations = []
        for index in range(WARMUP_TASKS + tasks):
            started = time.perf_counter()
            pool.apply_async(noop).get()
            if index >= WARMUP_TASKS:
                durations.append(time.perf_counter() - started)
    return durations


# -- driver -----------------------------------------------------------------------------

def run_throughput(system: str, args) -> dict:
    if system == "procq_normal":
        return procq_throughput(args.tasks, args.batch, args.workers, "normal")
    if system == "procq_full":
        return procq_throughput(args.tasks, args.batch, args.workers, "full")
    if system == "process_pool_executor":
        return executor_throughput(args.tasks, args.workers)
    return pool_throughput(args.tasks, args.workers)


def run_round_trip(system: str, args) -> dict:
    if system == "procq_normal":
        durations = procq_round_trip(args.round_trips, args.workers, "normal")
    elif system == "procq_full":
        durations = procq_round_trip(args.round_trips, args.workers, "full")
    elif system == "process_pool_executor":
        durations = executor_round_trip(args.round_trips, args.workers)
    else:
        durations = pool_round_trip(args.round_trips, args.workers)
    return {"p50_ms": percentile(durations, 0.5) * 1000, "p99_ms": percentile(durations, 0.99) * 1000,
            "max_ms": max(durations) * 1000}


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def measure(args) -> dict:
    machine = machine_facts()
    throughput_runs = {system: [] for system in SYSTEMS}
    round_trip_runs = {system: [] for system in SYSTEMS}
    for repeat in range(args.repeat):
        # Rotate the order each repeat so that no system always runs first or last.
        order = SYSTEMS[repeat % len(SYSTEMS):] + SYSTEMS[:repeat % len(SYSTEMS)]
        for system in order:
            throughput_runs[system].append(run_throughput(system, args))
            log(args, f"repeat {repeat + 1}/{args.repeat} throughput {LABELS[system]}: "
                      f"{throughput_runs[system][-1]['tasks_per_s']:.0f} tasks/s")
        for system in order:
            round_trip_runs[system].append(run_round_trip(system, args))
            log(args, f"repeat {repeat + 1}/{args.repeat} round trip {LABELS[system]}: "
                      f"p50 {round_trip_runs[system][-1]['p50_ms']:.3f} ms")

    throughput = {}
    for system, runs in throughput_runs.items():
        throughput[system] = {"tasks_per_s": median_of(runs, "tasks_per_s"), "runs": runs}
        if system.startswith("procq"):
            throughput[system]["enqueue_per_s"] = median_of(runs, "enqueue_per_s")
            throughput[system]["not_succeeded"] = sum(run["not_succeeded"] for run in runs)
    round_trip = {system: {"p50_ms": median_of(runs, "p50_ms"), "p99_ms": median_of(runs, "p99_ms"),
                           "runs": runs}
                  for system, runs in round_trip_runs.items()}

    ratios = {}
    for procq_system in ("procq_normal", "procq_full"):
        for peer in PEERS:
            ratios[f"{procq_system}/{peer}"] = {
                "throughput": throughput[procq_system]["tasks_per_s"] / throughput[peer]["tasks_per_s"],
                "round_trip_p50": round_trip[procq_system]["p50_ms"] / round_trip[peer]["p50_ms"],
                "round_trip_p99": round_trip[procq_system]["p99_ms"] / round_trip[peer]["p99_ms"],
            }
    machine["load_average_1m_end"] = os.getloadavg()[0]
    return {"machine": machine, "start_method": multiprocessing.get_start_method(),
            "config": {"tasks": args.tasks, "batch": args.batch, "workers": args.workers,
                       "repeat": args.repeat, "round_trips": args.round_trips, "warmup_tasks": WARMUP_TASKS},
            "throughput": throughput, "round_trip": round_trip, "ratios": ratios}


def log(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def print_report(report: dict) -> None:
    config, machine = report["config"], report["machine"]
    print(f"{machine['nproc']} CPUs, {machine['cpu_model']}, Linux {machine['kernel']}, "
          f"Python {machine['python']}, start method {report['start_method']}, {machine['date']}")
    print(f"procq {machine['procq_commit']}, 1-minute load average {machine['load_average_1m']:.2f} at start, "
          f"{machine['load_average_1m_end']:.2f} at end")
    print(f"\nThroughput: {config['tasks']} no-op tasks, {config['workers']} workers, "
          f"median of {config['repeat']}")
    print(f"{'system':<24}{'tasks/s':>10}{'enqueue/s':>12}")
    for system in SYSTEMS:
        row = report["throughput"][system]
        enqueue = f"{row['enqueue_per_s']:.0f}" if "enqueue_per_s" in row else "-"
        print(f"{LABELS[system]:<24}{row['tasks_per_s']:>10.0f}{enqueue:>12}")

    print(f"\nRound trip of one task: {config['round_trips']} sequential tasks, median of "
          f"{config['repeat']} runs' percentiles")
    print(f"{'system':<24}{'p50 ms':>10}{'p99 ms':>10}")
    for system in SYSTEMS:
        row = report["round_trip"][system]
        print(f"{LABELS[system]:<24}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}")

    print("\nRatios procq / peer (throughput: higher is better; round trip: lower is better)")
    print(f"{'pair':<46}{'tasks/s':>9}{'RT p50':>9}{'RT p99':>9}")
    for pair, ratio in report["ratios"].items():
        procq_system, peer = pair.split("/")
        label = f"{LABELS[procq_system]} / {LABELS[peer]}"
        print(f"{label:<46}{ratio['throughput']:>9.3f}{ratio['round_trip_p50']:>9.2f}"
              f"{ratio['round_trip_p99']:>9.2f}")
    lost = sum(report["throughput"][system]["not_succeeded"] for system in ("procq_normal", "procq_full"))
    print(f"\nprocq tasks that did not succeed: {lost}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000, help="no-op tasks per throughput run")
    parser.add_argument("--batch", type=int, default=1000, help="tasks per Client.enqueue_many call")
    parser.add_argument("--round-trips", type=int, default=300, help="sequential tasks per round-trip run")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of every pool")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is reported")
    parser.add_argument("--json", action="store_true", help="print the report as JSON, with every run")
    parser.add_argument("--quiet", action="store_true", help="do not log progress to stderr")
    args = parser.parse_args()
    for option in ("tasks", "batch", "round_trips", "workers", "repeat"):
        if getattr(args, option) < 1:
            parser.error(f"invalid --{option.replace('_', '-')}: {getattr(args, option)}; expected an integer >= 1")

    report = measure(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
