"""SQLiteStore: tasks, attempts and settings in one SQLite file in WAL mode.

The supervisor is the only writer. It changes rows freely during one turn of its event
loop and calls commit() once at the end of the turn, so every change of that turn lands
in one transaction. Timestamps are POSIX seconds (UTC); monotonic times are never stored.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from typing import Any, Iterable

from procq import states
from procq.timeutil import to_iso

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_MIGRATIONS = {
    1: """
    CREATE TABLE tasks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        queue TEXT NOT NULL,
        state TEXT NOT NULL,
        outcome TEXT,
        args TEXT NOT NULL,
        kwargs TEXT NOT NULL,
        result TEXT,
        error TEXT,
        progress TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        runs INTEGER NOT NULL DEFAULT 0,
        max_retry INTEGER NOT NULL,
        timeout_s REAL,
        deadline_at REAL,
        grace_s REAL NOT NULL,
        max_memory INTEGER,
        retention_s REAL NOT NULL,
        enqueued_at REAL NOT NULL,
        scheduled_at REAL,
        started_at REAL,
        finished_at REAL,
        worker_pid INTEGER,
        retry_of TEXT
    );
    CREATE INDEX tasks_state ON tasks (state, queue);
    CREATE INDEX tasks_queue ON tasks (queue, seq);
    CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE attempts (
        task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        counted INTEGER NOT NULL,
        started_at REAL,
        finished_at REAL,
        worker_pid INTEGER,
        outcome TEXT,
        soft_signal_at REAL,
        kill_at REAL,
        reaped_at REAL,
        soft_lateness_s REAL,
        kill_lateness_s REAL,
        exit_signal INTEGER,
        exit_code INTEGER,
        children_killed INTEGER,
        error TEXT,
        PRIMARY KEY (task_id, number)
    ) WITHOUT ROWID;
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
}

TASK_COLUMNS = (
    "id", "name", "queue", "state", "outcome", "args", "kwargs", "result", "error", "progress",
    "attempt", "runs", "max_retry", "timeout_s", "deadline_at", "grace_s", "max_memory",
    "retention_s", "enqueued_at", "scheduled_at", "started_at", "finished_at", "worker_pid",
    "retry_of",
)
ATTEMPT_COLUMNS = (
    "number", "counted", "started_at", "finished_at", "worker_pid", "outcome", "soft_signal_at",
    "kill_at", "reaped_at", "soft_lateness_s", "kill_lateness_s", "exit_signal", "exit_code",
    "children_killed", "error",
)
_ATTEMPT_SIGNAL_FIELDS = (
    "soft_signal_at", "kill_at", "reaped_at", "soft_lateness_s", "kill_lateness_s",
    "exit_signal", "exit_code", "children_killed",
)
_TIME_FIELDS = frozenset({
    "deadline_at", "enqueued_at", "scheduled_at", "started_at", "finished_at",
    "soft_signal_at", "kill_at", "reaped_at",
})


class StoreError(Exception):
    """The database file cannot be opened, read or migrated."""


class SQLiteStore:
    """The task store in one SQLite file. Not thread-safe: the supervisor's loop owns it."""

    def __init__(self, path: str, sync: str = "normal"):
        if sync not in ("normal", "full"):
            raise ValueError(f"invalid sync mode {sync!r}; expected normal or full")
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level="DEFERRED", check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL").fetchone()
            # NORMAL in WAL mode survives any crash of this process; FULL also survives power loss.
            self._db.execute(f"PRAGMA synchronous={sync.upper()}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
            stat = os.stat(self.path)
            self._identity = (stat.st_dev, stat.st_ino)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot use database {self.path}: {exc}. The file is left untouched; move it "
                "away to start with an empty store, or point --db at another file"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None

    def file_problem(self) -> str | None:
        """Return a message if the database file was deleted or replaced since it was opened."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == self._identity:
            return None
        descriptor = self._open_descriptor()
        where = f" (still open as /proc/{os.getpid()}/fd/{descriptor})" if descriptor else ""
        return (f"database {self.path} was deleted or replaced while in use: new tasks go to the "
                f"old file{where}, which is lost when the supervisor stops. Copy it back to "
                f"{self.path} before stopping the supervisor")

    def _open_descriptor(self) -> int | None:
        try:
            for name in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{name}")
                except OSError:
                    continue
                if target.startswith(self.path) and target.endswith("(deleted)"):
                    return int(name)
        except OSError:
            pass
        return None

    # -- schema -----------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this procq's "
                f"{SCHEMA_VERSION}; upgrade procq or use another --db"
            )
        if version == 0:
            existing = self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
            if existing:
                raise StoreError(
                    f"database {self.path} has tables but no procq schema version; "
                    "it is not a procq database, point --db at another file"
                )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            log.info("migrating database %s to schema version %d", self.path, target)
            self._db.executescript("BEGIN;" + _MIGRATIONS[target] + f"PRAGMA user_version={target}; COMMIT;")

    def commit(self) -> None:
        if self._db.in_transaction:
            self._db.commit()

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.rollback()

    def close(self) -> None:
        self.commit()
        self._db.close()

    # -- tasks ------------------------------------------------------------------------

    def ids_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Return up to `limit` task ids that start with `prefix`, for short ids typed by people."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._db.execute("SELECT id FROM tasks WHERE id LIKE ? ESCAPE '\\' LIMIT ?",
                                (escaped + "%", limit)).fetchall()
        return [row[0] for row in rows]

    def task_exists(self, task_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM tasks WHERE id=?", (task_id,)).fetchone() is not None

    def insert_tasks(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert new task rows: dicts with TASK_COLUMNS keys, `args` and `kwargs` as JSON text."""
        for row in rows:
            keys = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            self._db.execute(f"INSERT INTO tasks ({keys}) VALUES ({marks})", tuple(row.values()))

    def insert_tasks_atomically(self, rows: list[dict[str, Any]]) -> None:
        """Insert rows inside a savepoint, so a failure stores none of them."""
        if not self._db.in_transaction:
            self._db.execute("BEGIN")  # Else RELEASE of an outermost savepoint would commit.
        self._db.execute("SAVEPOINT enqueue")
        try:
            self.insert_tasks(rows)
        except BaseException:
            self._db.execute("ROLLBACK TO enqueue")
            self._db.execute("RELEASE enqueue")
            raise
        self._db.execute("RELEASE enqueue")

    def update_task(self, task_id: str, **fields: Any) -> None:
        for key in ("result", "progress"):
            if key in fields and fields[key] is not None:
                fields[key] = fields[key] if isinstance(fields[key], str) else json.dumps(fields[key])
        assignments = ", ".join(f"{key}=?" for key in fields)
        self._db.execute(f"UPDATE tasks SET {assignments} WHERE id=?", (*fields.values(), task_id))

    def task_row(self, task_id: str) -> sqlite3.Row | None:
        return self._db.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()

    def delete_tasks(self, task_ids: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM tasks WHERE id=?", [(task_id,) for task_id in task_ids])

    def list_rows(self, *, queue: str | None = None, states_: list[str] | None = None,
                  name: str | None = None, limit: int = 100, offset: int = 0) -> list[sqlite3.Row]:
        clauses, params = [], []
        if queue is not None:
            clauses.append("queue=?")
            params.append(queue)
        if states_:
            clauses.append(f"state IN ({', '.join('?' for _ in states_)})")
            params.extend(states_)
        if name is not None:
            clauses.append("name=?")
            params.append(name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._db.execute(
            f"SELECT * FROM tasks {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()

    def waiting_rows(self) -> list[sqlite3.Row]:
        """Return pending, scheduled and retry tasks in enqueue order, to rebuild the queues."""
        return self._db.execute(
            "SELECT id, queue, state, scheduled_at, deadline_at FROM tasks "
            "WHERE state IN ('pending', 'scheduled', 'retry') ORDER BY seq"
        ).fetchall()

    def active_rows(self) -> list[sqlite3.Row]:
        return self._db.execute("SELECT * FROM tasks WHERE state='active' ORDER BY seq").fetchall()

    def dispatch_row(self, task_id: str) -> sqlite3.Row | None:
        return self._db.execute(
            "SELECT id, name, queue, state, args, kwargs, attempt, runs, max_retry, timeout_s, "
            "deadline_at, grace_s, max_memory FROM tasks WHERE id=?", (task_id,)
        ).fetchone()

    def purge_finished(self, now: float) -> int:
        """Delete final tasks whose retention has passed; return how many."""
        cursor = self._db.execute(
            "DELETE FROM tasks WHERE finished_at IS NOT NULL AND state IN "
            "('completed', 'failed', 'cancelled') AND finished_at + retention_s < ?", (now,)
        )
        return cursor.rowcount

    def count_by_state(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall()
        return {row[0]: row[1] for row in rows}

    def count_by_outcome(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT outcome, count(*) FROM tasks WHERE outcome IS NOT NULL GROUP BY outcome"
        ).fetchall()
        return {row[0]: row[1] for row in rows}

    def queue_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for queue, state, count in self._db.execute(
                "SELECT queue, state, count(*) FROM tasks GROUP BY queue, state"):
            counts.setdefault(queue, {})[state] = count
        return counts

    def oldest_pending(self) -> dict[str, float]:
        rows = self._db.execute(
            "SELECT queue, min(enqueued_at) FROM tasks WHERE state='pending' GROUP BY queue"
        ).fetchall()
        return {row[0]: row[1] for row in rows}

    def lateness_samples(self, since: float) -> list[sqlite3.Row]:
        return self._db.execute(
            "SELECT soft_lateness_s, kill_lateness_s FROM attempts "
            "WHERE soft_signal_at IS NOT NULL AND soft_signal_at >= ?", (since,)
        ).fetchall()

    # -- attempts ---------------------------------------------------------------------

    def insert_attempt(self, task_id: str, number: int, **fields: Any) -> None:
        keys = ", ".join(("task_id", "number", *fields))
        marks = ", ".join("?" for _ in range(len(fields) + 2))
        self._db.execute(f"INSERT INTO attempts ({keys}) VALUES ({marks})",
                         (task_id, number, *fields.values()))

    def update_attempt(self, task_id: str, number: int, **fields: Any) -> None:
        assignments = ", ".join(f"{key}=?" for key in fields)
        self._db.execute(f"UPDATE attempts SET {assignments} WHERE task_id=? AND number=?",
                         (*fields.values(), task_id, number))

    def attempt_rows(self, task_id: str) -> list[sqlite3.Row]:
        return self._db.execute(
            "SELECT * FROM attempts WHERE task_id=? ORDER BY number", (task_id,)).fetchall()

    # -- settings ---------------------------------------------------------------------

    def paused_queues(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT name FROM queues WHERE paused=1")}

    def set_queue_paused(self, name: str, paused: bool) -> None:
        self._db.execute(
            "INSERT INTO queues (name, paused) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET paused=excluded.paused", (name, int(paused)))

    def setting(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_setting(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value=excluded.value", (key, value))

    # -- conversion -------------------------------------------------------------------

    def task_dict(self, task_id: str) -> dict[str, Any] | None:
        """Return the task as TaskInfo.to_dict() data, or None if it does not exist."""
        row = self.task_row(task_id)
        return None if row is None else self.row_to_dict(row)

    def row_to_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        attempts = [self._attempt_dict(item) for item in self.attempt_rows(row["id"])]
        return task_dict_from_row(row, attempts)

    @staticmethod
    def _attempt_dict(row: sqlite3.Row) -> dict[str, Any]:
        data = {key: row[key] for key in ATTEMPT_COLUMNS}
        data["counted"] = bool(data["counted"])
        for key in _TIME_FIELDS.intersection(data):
            data[key] = to_iso(data[key])
        return data


def task_dict_from_row(row: sqlite3.Row, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """Build TaskInfo.to_dict() data from a task row and its attempts (already converted)."""
    data: dict[str, Any] = {}
    for key in TASK_COLUMNS:
        if key != "runs":
            data[key] = row[key]
    data["args"] = json.loads(row["args"])
    data["kwargs"] = json.loads(row["kwargs"])
    data["result"] = None if row["result"] is None else json.loads(row["result"])
    data["progress"] = None if row["progress"] is None else json.loads(row["progress"])
    for key in _TIME_FIELDS.intersection(data):
        data[key] = to_iso(data[key])
    latest = attempts[-1] if attempts else {}
    for key in _ATTEMPT_SIGNAL_FIELDS:
        data[key] = latest.get(key)
    data["attempts"] = attempts
    return data
