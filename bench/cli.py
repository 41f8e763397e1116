"""Whole-process wall time of `procq task ls` and `procq task cancel` beside the Celery and RQ CLIs.

Each timed run is one fresh process, from spawn to exit, as a shell user waits for it:
interpreter start, imports, one request to the server and the output. The script starts
every server itself and stops it at the end, errors included:

- procq: a supervisor with 1 worker on tests.apps.basic:app, busy with one `sleep`
  task of 1000 s. `procq task cancel ID` cancels a task that is pending behind it. Before
  each cancel run a new task is enqueued, and after it the cancelled task is checked
  and deleted, both outside the timing, so `procq task ls` always lists one task.
- floor: `python -c pass` with the same interpreter.
- peers: a redis-server on 127.0.0.1, one Celery worker (prefork, concurrency 1) busy
  with one sleep task, and one RQ worker busy with one job. Without `-d`, `celery
  inspect active` waits for replies until its 1 s timeout because it cannot know how
  many workers exist, so it is also timed with `-d NODE`, which returns on the first
  reply. A peer that is not installed or does not start is skipped with the reason.

Every command runs once untimed as a warm-up. The timed runs go round-robin over the
commands, so a slow spell of the machine hits them all alike.

    python bench/cli.py [--runs 10] [--json] [--redis-port N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import procq

ROOT = Path(__file__).resolve().parent.parent
# Console scripts of the interpreter that runs this file (the venv's bin). Not resolved,
# because a venv's python is a symlink to the base interpreter.
BIN = Path(sys.executable).parent
PROCQ_APP = "tests.apps.basic:app"
# The procq `sleep` task and the peers' sleep jobs run this long, so they stay active.
SLEEP_S = 1000
# Every process this script starts inherits this variable, so a final scan of /proc
# finds any that survived the regular shutdown.
MARKER_VARIABLE = "PROCQ_BENCH_CLI_MARKER"
MARKER = uuid.uuid4().hex
TARGET_MS = 150.0
CELERY_NODE = "benchcli@bench"
CELERY_MODULE = "pqbench_celery_app"


class ServiceUnavailable(Exception):
    """A server or worker that is not installed or does not start. For a peer, the message is why it is skipped."""


class CommandFailed(RuntimeError):
    """A timed command exited with a non-zero status."""


def log(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, MARKER_VARIABLE: MARKER, **(extra or {})}


def tail(path: Path, characters: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-characters:]
    except OSError:
        return ""


# -- processes ----------------------------------------------------------------------------

class Service:
    """A long-running subprocess in its own session, with its output in a log file.

    For each (signal, seconds) pair of `stop_signals`, `stop()` sends the signal to the leader
    and waits up to that many seconds for it to exit. Then it SIGKILLs whatever is left of
    the process group.
    """

    def __init__(self, name: str, command: list[str], *, cwd: Path, log_path: Path,
                 stop_signals: tuple[tuple[int, float], ...], env: dict[str, str] | None = None):
        self.name = name
        self.command = command
        self.log_path = log_path
        self.stop_signals = stop_signals
        self._log_file = open(log_path, "ab")
        try:
            self.process = subprocess.Popen(command, cwd=str(cwd), env=command_env(env), stdin=subprocess.DEVNULL,
                                            stdout=self._log_file, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        except OSError:
            self._log_file.close()
            raise

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        return tail(self.log_path)

    def stop(self) -> None:
        try:
            for signum, wait_s in self.stop_signals:
                if not self.running():
                    break
                self.process.send_signal(signum)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(wait_s)
            if self.running():
                print(f"{self.name} (pid {self.process.pid}) did not stop after its stop signals, sending SIGKILL",
                      file=sys.stderr)
            # The leader's pid is also its process group id (start_new_session).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        finally:
            self._log_file.close()


def marked_processes() -> list[int]:
    """Return the pids of live processes, other than this one, that carry this run's marker."""
    needle = f"{MARKER_VARIABLE}={MARKER}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                if file.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as file:
                if needle in file.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def kill_survivors() -> None:
    """SIGKILL every process of this run that outlived its server's shutdown, by pid."""
    for pid in marked_processes():
        print(f"process {pid} outlived its server's shutdown, sending SIGKILL", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(condition, timeout_s: float, what: str, service: Service | None = None,
               interval_s: float = 0.1):
    """Poll `condition` until it returns a truthy value, and raise ServiceUnavailable after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if service is not None and not service.running():
            raise ServiceUnavailable(f"{service.name} exited with {service.process.returncode} while "
                                  f"waiting for {what}:\n{service.log_tail()}")
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            log_text = f":\n{service.log_tail()}" if service is not None else ""
            raise ServiceUnavailable(f"timed out after {timeout_s:g} s waiting for {what}{log_text}")
        time.sleep(interval_s)


def run_timed(argv: list[str], cwd: Path) -> float:
    """Run `argv` to completion and return its wall time in seconds. Raise CommandFailed on a non-zero exit."""
    env = command_env()
    started = time.perf_counter()
    completed = subprocess.run(argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} exited with {completed.returncode}:\n"
                            f"{completed.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


# -- timed commands -----------------------------------------------------------------------

@dataclass
class Command:
    """One timed command. `before_run` returns the argv of the next run, and `after_run` checks its
    effect. Both run outside the timing.
    """

    key: str
    label: str
    system: str
    cwd: Path
    argv: list[str] | None = None
    before_run: Callable[[], list[str]] | None = None
    after_run: Callable[[], None] | None = None
    samples_s: list[float] = field(default_factory=list)

    def next_argv(self) -> list[str]:
        return self.before_run() if self.before_run is not None else self.argv

    def measure_once(self) -> float:
        argv = self.next_argv()
        self.argv = argv
        elapsed = run_timed(argv, self.cwd)
        if self.after_run is not None:
            self.after_run()
        return elapsed


# -- procq ----------------------------------------------------------------------------------

class ProcqSetup:
    """A supervisor with 1 worker busy with a long `sleep` task, in a short /tmp directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = str(directory / "s")
        self.procq_bin = BIN / "procq"
        self.service: Service | None = None
        self.client = None
        self.active_id: str | None = None
        self.pending_id: str | None = None

    def start(self) -> None:
        if not self.procq_bin.exists():
            raise RuntimeError(f"console script not found: {self.procq_bin}. Install procq into the "
                               f"environment of {sys.executable} with pip install -e .")
        command = [sys.executable, "-m", "procq.cli.main", "supervisor", "run", "--app", PROCQ_APP,
                   "--socket", self.socket, "--db", str(self.directory / "procq.db"), "--workers", "1",
                   "--log-level", "WARNING"]
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": pythonpath}
        self.service = Service("procq supervisor", command, cwd=ROOT, log_path=self.directory / "supervisor.log",
                               stop_signals=((signal.SIGTERM, 30.0),), env=env)
        self.client = procq.Client(self.socket, connect_timeout=1.0)

        def ready():
            try:
                return self.client.status()["idle"] >= 1
            except procq.SupervisorUnavailable:
                return False

        wait_until(ready, 30.0, "the procq supervisor to report an idle worker", self.service)
        active = self.client.enqueue("sleep", [SLEEP_S], timeout=SLEEP_S + 600)
        wait_until(lambda: self.client.get(active.id).state == "active", 30.0,
                   f"procq task {active.id} to become active", self.service)
        self.active_id = active.id

    def cancel_argv(self) -> list[str]:
        """Enqueue a task that stays pending behind the busy worker and return the argv that cancels it."""
        task = self.client.enqueue("sleep", [SLEEP_S], timeout=SLEEP_S + 600)
        if task.state != "pending":
            raise RuntimeError(f"procq task {task.id} is {task.state}, expected pending behind the busy worker")
        self.pending_id = task.id
        return [str(self.procq_bin), "task", "cancel", task.id, "--socket", self.socket]

    def delete_cancelled(self) -> None:
        """Check that the last cancel took effect, then delete the task so `task ls` lists only the active one."""
        state = self.client.get(self.pending_id).state
        if state != "cancelled":
            raise RuntimeError(f"procq task {self.pending_id} is {state} after `procq task cancel`, "
                               f"expected cancelled")
        self.client.delete([self.pending_id])

    def commands(self) -> list[Command]:
        return [
            Command("procq_task_ls", "procq task ls", "procq", ROOT,
                    argv=[str(self.procq_bin), "task", "ls", "--socket", self.socket]),
            Command("procq_task_cancel", "procq task cancel ID", "procq", ROOT, before_run=self.cancel_argv,
                    after_run=self.delete_cancelled),
        ]

    def stop(self) -> None:
        if self.client is not None:
            # The supervisor waits up to 10 s for active tasks on SIGTERM, so the sleep task
            # goes first. If the cancel fails, the SIGTERM still stops it after that wait.
            if self.active_id is not None and self.service is not None and self.service.running():
                with contextlib.suppress(procq.ProcqError):
                    self.client.cancel(self.active_id, wait=True)
            self.client.close()
        if self.service is not None:
            self.service.stop()


# -- peers: Redis, Celery, RQ -------------------------------------------------------------

def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_replies(port: int) -> bool:
    """Return whether a Redis server on 127.0.0.1:`port` replies to PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(directory: Path, port: int) -> Service:
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceUnavailable("redis-server not found on PATH. Install it with apt-get install redis-server")
    if redis_replies(port):
        raise ServiceUnavailable(f"port {port} on 127.0.0.1 is already in use by a Redis server that this "
                              f"script did not start. Pick another port with --redis-port")
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--daemonize", "no", "--dir", str(directory)]
    service = Service("redis-server", command, cwd=directory, log_path=directory / "redis.log",
                      stop_signals=((signal.SIGTERM, 10.0),))
    try:
        wait_until(lambda: redis_replies(port), 15.0, f"redis-server on 127.0.0.1:{port}", service)
    except ServiceUnavailable:
        service.stop()
        raise
    return service


CELERY_APP_SOURCE = '''\
"""The Celery app of bench/cli.py: one sleep task on the benchmark's Redis server."""

import time

from celery import Celery

app = Celery("pqbench", broker="{broker}")
app.conf.broker_connection_retry_on_startup = True


@app.task(name="sleep")
def sleep(seconds):
    time.sleep(seconds)
'''


def start_celery(directory: Path, port: int, stack: contextlib.ExitStack) -> list[Command]:
    """Start a Celery worker busy with one sleep task and return the timed `inspect active` commands."""
    celery_bin = BIN / "celery"
    if not celery_bin.exists():
        raise ServiceUnavailable(f"{celery_bin} not found. Install it with pip install celery redis")
    try:
        import redis  # noqa: F401 - Celery's Redis transport needs it
    except ImportError:
        raise ServiceUnavailable("the redis package is missing. Install it with pip install redis") from None

    app_directory = directory / "celery"
    app_directory.mkdir()
    (app_directory / f"{CELERY_MODULE}.py").write_text(
        CELERY_APP_SOURCE.format(broker=f"redis://127.0.0.1:{port}/0"))
    base = [str(celery_bin), "-A", CELERY_MODULE]
    worker = Service("celery worker", [*base, "worker", "--concurrency", "1", "--loglevel", "WARNING",
                                       "-n", CELERY_NODE],
                     cwd=app_directory, log_path=directory / "celery-worker.log",
                     # SIGQUIT is Celery's cold shutdown: it does not wait for the active task.
                     stop_signals=((signal.SIGQUIT, 15.0),))
    stack.callback(worker.stop)

    call = subprocess.run([*base, "call", "sleep", "--args", json.dumps([SLEEP_S])], cwd=str(app_directory),
                          env=command_env(), capture_output=True, text=True, timeout=60)
    if call.returncode != 0:
        raise ServiceUnavailable(f"`celery call sleep` exited with {call.returncode}:\n{call.stderr[-2000:]}")

    def one_active_task() -> bool:
        reply = subprocess.run([*base, "inspect", "active", "-d", CELERY_NODE, "--json"], cwd=str(app_directory),
                               env=command_env(), capture_output=True, text=True, timeout=60)
        if reply.returncode != 0:
            return False
        try:
            return len(json.loads(reply.stdout.strip().splitlines()[-1]).get(CELERY_NODE, [])) == 1
        except (ValueError, IndexError, AttributeError):
            return False

    wait_until(one_active_task, 60.0, "the Celery worker to report its sleep task active", worker, interval_s=0.5)
    return [
        Command("celery_inspect_active", "celery inspect active", "celery", app_directory,
                argv=[*base, "inspect", "active"]),
        Command("celery_inspect_active_d", "celery inspect active -d NODE", "celery", app_directory,
                argv=[*base, "inspect", "active", "-d", CELERY_NODE]),
    ]


def start_rq(directory: Path, port: int, stack: contextlib.ExitStack) -> list[Command]:
    """Start an RQ worker busy with one sleep job and return the timed `rq info` command."""
    rq_bin = BIN / "rq"
    if not rq_bin.exists():
        raise ServiceUnavailable(f"{rq_bin} not found. Install it with pip install rq")
    try:
        from redis import Redis
        from rq import Queue
    except ImportError as exc:
        raise ServiceUnavailable(f"cannot import {exc.name}. Install it with pip install rq redis") from None

    # Database 1, so RQ's keys and Celery's (database 0) stay apart.
    url = f"redis://127.0.0.1:{port}/1"
    connection = Redis.from_url(url)
    stack.callback(connection.close)
    job = Queue("default", connection=connection).enqueue("time.sleep", SLEEP_S, job_timeout=SLEEP_S + 600)
    worker = Service("rq worker", [str(rq_bin), "worker", "--url", url, "--name", "benchcli", "default"],
                     cwd=directory, log_path=directory / "rq-worker.log",
                     # The first SIGTERM is a warm shutdown that waits for the job. RQ ignores a
                     # second signal within 1 s of handling the first, and a later one is a cold
                     # shutdown. The third SIGTERM covers a first handler that ran late.
                     stop_signals=((signal.SIGTERM, 2.0), (signal.SIGTERM, 3.0), (signal.SIGTERM, 10.0)))
    stack.callback(worker.stop)
    wait_until(lambda: job.get_status(refresh=True) == "started", 30.0,
               f"RQ job {job.id} to start", worker)
    return [Command("rq_info", "rq info", "rq", directory, argv=[str(rq_bin), "info", "--url", url])]


# -- measurement --------------------------------------------------------------------------

def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of non-empty `values` (fraction in 0..1)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def redis_server_version() -> str | None:
    server = shutil.which("redis-server")
    if server is None:
        return None
    output = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    for word in output.split():
        if word.startswith("v="):
            return word[2:]
    return output.strip() or None


def machine_facts() -> dict[str, str | int | list[float]]:
    """Return nproc, the CPU model name, the kernel release, the Python version, the date and the load average."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count() or 0, "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "load_average": [round(load, 2) for load in os.getloadavg()]}


def run_rounds(commands: list[Command], runs: int) -> None:
    """Warm each command up once, then time `runs` rounds that each run every command once."""
    for command in commands:
        command.measure_once()
    for _ in range(runs):
        for command in commands:
            command.samples_s.append(command.measure_once())


def summarize(commands: list[Command], skipped: dict[str, str], args: argparse.Namespace) -> dict:
    rows = {}
    for command in commands:
        samples_ms = [sample * 1000 for sample in command.samples_s]
        rows[command.key] = {
            "label": command.label, "system": command.system, "argv": command.argv,
            "runs": len(samples_ms), "median_ms": statistics.median(samples_ms),
            "p90_ms": percentile(samples_ms, 0.9), "min_ms": min(samples_ms), "samples_ms": samples_ms,
        }
    floor = rows["floor"]["median_ms"]
    for row in rows.values():
        row["over_floor_ms"] = row["median_ms"] - floor

    procq_keys = [key for key, row in rows.items() if row["system"] == "procq"]
    peer_keys = [key for key, row in rows.items() if row["system"] in ("celery", "rq")]
    ratios = {f"{procq_key}/{peer_key}": rows[procq_key]["median_ms"] / rows[peer_key]["median_ms"]
              for procq_key in procq_keys for peer_key in peer_keys}

    task_ls = rows["procq_task_ls"]["median_ms"]
    target = {"target_ms": TARGET_MS, "procq_task_ls_median_ms": task_ls, "under_target": task_ls < TARGET_MS,
              "ahead_of": {key: task_ls < rows[key]["median_ms"] for key in peer_keys}}
    return {
        "machine": machine_facts(),
        "command_line": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {"runs": args.runs, "redis_port": args.redis_port, "procq_app": PROCQ_APP,
                   "versions": {"procq": package_version("procq"), "click": package_version("click"),
                                "pyzmq": package_version("pyzmq"), "celery": package_version("celery"),
                                "rq": package_version("rq"), "redis-py": package_version("redis"),
                                "redis-server": redis_server_version()}},
        "commands": rows, "skipped": skipped, "ratios": ratios, "target": target,
    }


def print_report(report: dict) -> None:
    machine = report["machine"]
    print(f"{machine['nproc']} CPUs, {machine['cpu_model']}, Linux {machine['kernel']}, "
          f"Python {machine['python']}, {machine['date']}, load average {machine['load_average']}")
    versions = ", ".join(f"{name} {version}" for name, version in report["config"]["versions"].items() if version)
    print(versions)
    runs = report["config"]["runs"]
    print(f"\nWhole-process wall time, {runs} run{'s' if runs != 1 else ''} of each command after 1 warm-up run")
    print(f"{'command':<32}{'median ms':>11}{'p90 ms':>9}{'min ms':>9}{'over floor':>12}")
    for row in report["commands"].values():
        print(f"{row['label']:<32}{row['median_ms']:>11.1f}{row['p90_ms']:>9.1f}{row['min_ms']:>9.1f}"
              f"{row['over_floor_ms']:>12.1f}")
    for peer, reason in report["skipped"].items():
        print(f"skipped {peer}: {reason}")

    if report["ratios"]:
        print("\nRatios of medians, procq / peer (below 1: procq is faster)")
        for pair, ratio in report["ratios"].items():
            procq_key, peer_key = pair.split("/")
            label = f"{report['commands'][procq_key]['label']} / {report['commands'][peer_key]['label']}"
            print(f"{label:<60}{ratio:>7.2f}")

    target = report["target"]
    verdict = "met" if target["under_target"] else "missed"
    print(f"\nTarget: procq task ls under {target['target_ms']:g} ms: {verdict} "
          f"(median {target['procq_task_ls_median_ms']:.1f} ms)")
    if not target["ahead_of"]:
        print("  no peer was timed")
    for key, ahead in target["ahead_of"].items():
        print(f"  ahead of {report['commands'][key]['label']}: {'yes' if ahead else 'no'}")


def measure(args: argparse.Namespace) -> dict:
    skipped: dict[str, str] = {}
    directory = Path(tempfile.mkdtemp(prefix="pqcli", dir="/tmp"))
    try:
        with contextlib.ExitStack() as stack:
            log(args, f"starting a procq supervisor in {directory}")
            procq_setup = ProcqSetup(directory)
            stack.callback(procq_setup.stop)
            procq_setup.start()
            commands = [Command("floor", "python -c pass", "floor", ROOT, argv=[sys.executable, "-c", "pass"]),
                        *procq_setup.commands()]

            try:
                log(args, f"starting redis-server on 127.0.0.1:{args.redis_port}")
                redis_service = start_redis(directory, args.redis_port)
                stack.callback(redis_service.stop)
            except ServiceUnavailable as exc:
                skipped["celery"] = skipped["rq"] = str(exc)
            else:
                for peer, start in (("celery", start_celery), ("rq", start_rq)):
                    log(args, f"starting the {peer} worker")
                    try:
                        commands.extend(start(directory, args.redis_port, stack))
                    except (ServiceUnavailable, subprocess.TimeoutExpired, OSError) as exc:
                        skipped[peer] = str(exc)
                        log(args, f"skipping {peer}: {exc}")

            log(args, f"timing {len(commands)} commands, {args.runs} runs each")
            run_rounds(commands, args.runs)
            return summarize(commands, skipped, args)
    finally:
        kill_survivors()
        shutil.rmtree(directory, ignore_errors=True)


def exit_on_signal(signum: int, frame) -> None:
    # SystemExit unwinds through measure()'s cleanup, which a default SIGTERM would skip.
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each command (default: 10)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON, with every sample")
    parser.add_argument("--redis-port", type=int, default=None,
                        help="port of the redis-server this script starts on 127.0.0.1 (default: a free port)")
    parser.add_argument("--quiet", action="store_true", help="do not log progress to stderr")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"invalid --runs: {args.runs}; expected an integer >= 1")
    if args.redis_port is None:
        args.redis_port = free_loopback_port()
    elif not 1 <= args.redis_port <= 65535:
        parser.error(f"invalid --redis-port: {args.redis_port}; expected 1..65535")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, exit_on_signal)
    report = measure(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
