"""Hub stores of either backend for tests (``make_store`` in tests/store/conftest.py)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leapcore.store.hubstore import _MIGRATIONS, HubStore, open_hub_store
from leapcore.store.pgdb import pg_migration
from leapcore.store.sqldb import statements
from support.pgserver import PgServer

BACKENDS = ["sqlite", "postgresql"]


class StoreMaker:
    """Opens hub stores of one backend; ``name`` picks the database (an SQLite file in the
    test's directory, or a PostgreSQL database made on first use). Closes them all."""

    def __init__(self, backend: str, tmp_path: Path, server: PgServer | None) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.server = server
        self._urls: dict[str, str] = {}
        self._opened: list[HubStore] = []

    @property
    def postgres(self) -> bool:
        return self.backend == "postgresql"

    def location(self, name: str = "hub") -> str:
        if self.server is None:
            return str(self.tmp_path / f"{name}.db")
        if name not in self._urls:
            self._urls[name] = self.server.create_database()
        return self._urls[name]

    def open(self, name: str = "hub", **opts: Any) -> HubStore:
        if self.postgres:
            opts.pop("create", None)
        store = open_hub_store(self.location(name), **opts)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()
        if self.server is not None:
            for url in self._urls.values():
                self.server.release_database(url)

    def raw(self, sql: str, args: Sequence[Any] = (), name: str = "hub") -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) on a connection of its own, behind the
        store's back; the rows it returns (none for a statement that returns none)."""
        location = self.location(name)
        if self.server is None:
            with contextlib.closing(sqlite3.connect(location, isolation_level=None)) as db:
                return db.execute(sql, args).fetchall()
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            query = sql.replace("?", "%s") if args else sql
            cursor = conn.execute(query, list(args) or None)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def at_schema(self, version: int, name: str = "hub") -> None:
        """Make the database as an older leapcore left it: migrations 1..``version``."""
        for migration in _MIGRATIONS[:version]:
            text = migration if self.server is None else pg_migration(migration)
            for statement in statements(text):
                self.raw(statement, name=name)
        if self.server is None:
            self.raw(f"PRAGMA user_version = {version}", name=name)
        else:
            self.raw("CREATE TABLE leapcore_schema (version INTEGER NOT NULL)", name=name)
            self.raw(f"INSERT INTO leapcore_schema VALUES ({version})", name=name)
