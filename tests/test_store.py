"""The SQLite store on its own: schema versions, purge and atomic inserts."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from procq.store import SCHEMA_VERSION, SQLiteStore, StoreError


def _row(task_id: str, **overrides):
    row = {"id": task_id, "name": "echo", "queue": "default", "state": "pending", "args": "[]",
           "kwargs": "{}", "max_retry": 0, "timeout_s": 10.0, "deadline_at": None, "grace_s": 1.0,
           "max_memory": None, "retention_s": 60.0, "enqueued_at": 1000.0, "scheduled_at": None,
           "attempt": 0, "runs": 0}
    row.update(overrides)
    return row


def test_new_store_has_current_schema(tmp_path):
    store = SQLiteStore(str(tmp_path / "q.db"))
    store.close()
    with sqlite3.connect(tmp_path / "q.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_rejected(tmp_path):
    path = tmp_path / "q.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(str(path))


def test_foreign_database_rejected(tmp_path):
    path = tmp_path / "q.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="not a procq database"):
        SQLiteStore(str(path))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM customers").fetchone()[0] == 0


def test_insert_is_atomic_on_failure(tmp_path):
    store = SQLiteStore(str(tmp_path / "q.db"))
    store.insert_tasks_atomically([_row("a")])
    store.commit()
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_tasks_atomically([_row("b"), _row("a")])
    store.commit()
    assert store.task_exists("a")
    assert not store.task_exists("b")


def test_purge_respects_retention(tmp_path):
    store = SQLiteStore(str(tmp_path / "q.db"))
    store.insert_tasks_atomically([_row("old"), _row("fresh"), _row("waiting")])
    store.update_task("old", state="completed", finished_at=1000.0)
    store.update_task("fresh", state="failed", finished_at=1100.0)
    store.commit()
    assert store.purge_finished(now=1061.0) == 1
    store.commit()
    assert not store.task_exists("old")
    assert store.task_exists("fresh")
    assert store.task_exists("waiting")


def test_task_dict_uses_latest_attempt(tmp_path):
    store = SQLiteStore(str(tmp_path / "q.db"))
    store.insert_tasks_atomically([_row("t", args=json.dumps([1, 2]))])
    store.insert_attempt("t", 1, counted=1, started_at=1001.0, outcome="timeout", soft_signal_at=1002.0)
    store.insert_attempt("t", 2, counted=1, started_at=1010.0, outcome="succeeded")
    data = store.task_dict("t")
    assert data["args"] == [1, 2]
    assert data["soft_signal_at"] is None
    assert [item["number"] for item in data["attempts"]] == [1, 2]
    assert data["attempts"][0]["soft_signal_at"] == "1970-01-01T00:16:42.000000Z"


def test_unwritable_directory_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=str(blocker)):
        SQLiteStore(os.path.join(str(blocker), "q.db"))
