"""What the hub store asks of a database backend (:mod:`.sqlitedb`, :mod:`.pgdb`).

:class:`~leapcore.store.hubstore.HubStore` holds every query, written once in the SQL that
SQLite and PostgreSQL share (``?`` placeholders; a backend translates them); a backend
gives it connections (:meth:`Database.transaction`, :meth:`Database.reading`), runs the
versioned migrations and turns its driver's errors into
:class:`~leapcore.errors.StorageError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol

from ..errors import StorageError
from ..proto.limits import DEFAULT_STORE_POOL_SIZE, MAX_STORE_POOL_SIZE

__all__ = [
    "DEFAULT_POOL_SIZE",
    "MAX_POOL_SIZE",
    "CheckedRows",
    "Conn",
    "Database",
    "Rows",
    "refuse_newer",
    "statements",
]

#: Connections a hub keeps to PostgreSQL at most (the hub setting ``store_pool_size``),
#: and the most that setting may say (constants of :mod:`leapcore.proto.limits`).
DEFAULT_POOL_SIZE: Final = DEFAULT_STORE_POOL_SIZE
MAX_POOL_SIZE: Final = MAX_STORE_POOL_SIZE


class Rows(Protocol):
    """A statement's result."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn(Protocol):
    """One connection, inside a transaction or a read."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Rows: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def notify(self, channel: str, payload: str) -> None:
        """Tell every process watching ``channel`` (:meth:`Database.watch`) once this
        transaction commits; nothing where the backend has no notifications."""
        ...


class Database(Protocol):
    """A backend. Every failure of the database is a :class:`StorageError` naming
    :attr:`location` (never a password)."""

    #: Where the data is, fit for messages and logs: a file path, or a connection URL
    #: without its password.
    location: str
    #: How many store calls may usefully run at once (SQLite 1, PostgreSQL its pool size).
    max_concurrent_calls: int
    #: Appended to a ``SELECT`` that locks the rows it reads until the transaction ends
    #: (``" FOR UPDATE"`` on PostgreSQL; empty on SQLite, whose write transactions are
    #: serialised whole).
    for_update: str
    #: A column of every table that orders rows of equal time (SQLite's ``rowid``, the
    #: order of insertion; ``id`` on PostgreSQL).
    row_order: str

    #: Whether :meth:`watch` works (PostgreSQL's LISTEN/NOTIFY; not SQLite).
    announces_changes: bool

    def watch(self, channel: str, on_message: Callable[[str], None], stop: threading.Event) -> None:
        """Call ``on_message(payload)`` for every :meth:`Conn.notify` on ``channel``, from
        any process, until ``stop`` is set; blocking (run it in a thread). After each
        (re)connection it calls ``on_message("")``: what was sent while no connection
        listened is lost, so the caller checks everything again."""
        ...

    def transaction(self) -> AbstractContextManager[Conn]:
        """One write transaction: committed when the block ends, rolled back when it
        raises."""
        ...

    def reading(self) -> AbstractContextManager[Conn]:
        """A connection for reads, each statement on its own."""
        ...

    def opened(self, latest: int) -> None:
        """Check, before any migration, that this is a hub database (or an empty one)."""
        ...

    def ready(self) -> None:
        """Opening is over (errors from now on are "hub database error")."""
        ...

    def schema_version(self) -> int: ...

    def migrate(self, migrations: Sequence[str]) -> tuple[int, int]:
        """Apply the migrations the database lacks, all in one transaction that first reads
        the version again (of several processes starting at once, one migrates); the
        versions before and after. The caller checked that the database is behind."""
        ...

    def close(self) -> None: ...


class CheckedRows:
    """A driver's cursor whose ``errors`` become what ``convert`` makes of them (a
    :class:`StorageError`; ``convert`` may re-raise what is a programming error)."""

    def __init__(
        self,
        cursor: Any,
        errors: type[Exception],
        convert: Callable[[Any], StorageError],
    ) -> None:
        self._cursor = cursor
        self._errors = errors
        self._convert = convert

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        try:
            return self._cursor.fetchone()
        except self._errors as exc:
            raise self._convert(exc) from None

    def fetchall(self) -> list[Any]:
        try:
            return list(self._cursor.fetchall())
        except self._errors as exc:
            raise self._convert(exc) from None


def refuse_newer(location: str, version: int, latest: int) -> None:
    """:class:`StorageError` for a database migrated by a newer leapcore."""
    if version > latest:
        raise StorageError(
            f"{location}: database schema {version} is newer than this leapcore "
            f"({latest}); upgrade leapcore"
        )


def statements(migration: str) -> list[str]:
    """A migration's statements (``;``-separated; none holds a ``;`` of its own)."""
    return [s for s in migration.split(";") if s.strip()]
