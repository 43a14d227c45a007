"""The hub store's SQLite backend: one file, WAL mode (the admin CLI may use it while the
hub runs), the schema version in ``PRAGMA user_version``.

One connection, usable from any thread (``check_same_thread=False``): every call holds a
lock, so calls run one at a time (:attr:`SQLiteDatabase.max_concurrent_calls` is 1). A write
transaction takes the write lock up front (``BEGIN IMMEDIATE``), so of several processes
writing the same file one goes at a time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..errors import LocalError, StorageError
from .atomicfile import ensure_private_dir
from .sqldb import CheckedRows, refuse_newer, statements

__all__ = ["SQLiteDatabase"]


class _Conn:
    """The SQLite connection, raising :class:`StorageError` naming the file instead of
    ``sqlite3`` errors (a locked, read-only, full or damaged database), so callers handle
    one hierarchy. Programming errors (bad SQL, wrong bindings) are not converted."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self.context = "cannot open the hub database"

    def error(self, exc: sqlite3.DatabaseError) -> StorageError:
        if isinstance(exc, sqlite3.ProgrammingError):
            raise exc
        return StorageError(f"{self.path}: {self.context}: {exc}")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> CheckedRows:
        try:
            return CheckedRows(self._conn.execute(sql, args), sqlite3.DatabaseError, self.error)
        except sqlite3.DatabaseError as exc:
            raise self.error(exc) from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.DatabaseError as exc:
            raise self.error(exc) from None

    def notify(self, channel: str, payload: str) -> None:
        """Nothing: hubs sharing one SQLite file find changes by polling."""

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def close(self) -> None:
        self._conn.close()


class SQLiteDatabase:
    """An SQLite hub database (see the module's docstring)."""

    max_concurrent_calls = 1
    row_order = "rowid"
    for_update = ""
    announces_changes = False

    def __init__(self, path: Path | str, *, create: bool = True, timeout: float = 10.0) -> None:
        """Open the file at ``path``: with ``create``, made when missing (its directory with
        mode 0700, the file with mode 0600; SQLite gives ``-wal`` and ``-shm`` the file's
        mode); without, a missing file is a :class:`StorageError`. A file that is not SQLite,
        an SQLite database of another application, or one a newer leapcore migrated, is
        refused untouched. ``timeout``: how long a write waits for another connection's
        write lock (then :class:`StorageError`, "database is locked")."""
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.RLock()
        if create:
            self._create_private_file()
        elif not self.path.exists():
            raise StorageError(f"{self.path}: no hub database")
        try:
            # mode=rw: never let SQLite create the file (with its default 0644) itself.
            uri = self.path.absolute().as_uri() + "?mode=rw"
            conn = sqlite3.connect(
                uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: cannot open the hub database: {exc}") from None
        self._conn = _Conn(conn, self.path)

    def opened(self, latest: int) -> None:
        """Check what the file is and set its pragmas (before any migration)."""
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        refuse_newer(self.location, version, latest)
        if version == 0:
            (tables,) = self._conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            if tables:
                raise StorageError(
                    f"{self.path}: an SQLite database, but not a leapcore hub database"
                )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA synchronous=NORMAL")

    def ready(self) -> None:
        """Opening is done: errors from now on are "hub database error"."""
        self._conn.context = "hub database error"

    def _create_private_file(self) -> None:
        try:
            ensure_private_dir(self.path.parent)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise StorageError(
                f"{self.path}: cannot create the hub database: {exc.strerror or exc}"
            ) from None
        try:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        finally:
            os.close(fd)

    @contextmanager
    def transaction(self) -> Iterator[_Conn]:
        """One write transaction, taken with the write lock up front (BEGIN IMMEDIATE).

        Whatever fails (the body, or COMMIT itself), the transaction is rolled back so the
        connection stays usable; a failing rollback never hides the original error.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may already have rolled back
                    with suppress(StorageError):
                        self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def reading(self) -> Iterator[_Conn]:
        with self._lock:
            yield self._conn

    def schema_version(self) -> int:
        with self._lock:
            (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        return int(version)

    def migrate(self, migrations: Sequence[str]) -> tuple[int, int]:
        latest = len(migrations)
        with self.transaction() as db:
            (before,) = db.execute("PRAGMA user_version").fetchone()
            refuse_newer(self.location, before, latest)
            for number in range(before, latest):
                for statement in statements(migrations[number]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")
        return before, latest

    def watch(self, channel: str, on_message: Callable[[str], None], stop: threading.Event) -> None:
        raise LocalError("an SQLite hub store has no change notifications (hubs poll it)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
