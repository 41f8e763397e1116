"""The task store: the single source of truth for tasks, attempts and queue settings."""

from procq.store.sqlite import SCHEMA_VERSION, SQLiteStore, StoreError

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "StoreError"]
