"""The hub's persistent state: users, API tokens, registration keys, workers, notifications.

:class:`HubStore` holds every query, written once in the SQL that SQLite and PostgreSQL
share; its public methods are the whole interface the hub and the admin CLI use, and
nothing outside the store writes SQL. The backend is a small piece
(:class:`~leapcore.store.sqldb.Database`): :class:`SQLiteHubStore` keeps the state in one
SQLite file, WAL mode (safe for the admin CLI to use while the hub runs;
:mod:`.sqlitedb`), :class:`PostgresHubStore` in a PostgreSQL database that several hubs
may share (:mod:`.pgdb`); :func:`open_hub_store` picks one from a location. A migration is
written in SQLite's spelling and must stay portable: PostgreSQL gets it through
:data:`leapcore.store.pgdb.DIALECT` (types only), so use ``?`` placeholders, no SQLite-only
functions (two-argument ``MIN``/``MAX``: ``CASE``; ``INSERT OR IGNORE``: ``ON CONFLICT DO
NOTHING``) and no ``rowid`` (:attr:`~leapcore.store.sqldb.Database.row_order` instead);
where a check must hold until commit on PostgreSQL, lock the rows it reads
(:attr:`~leapcore.store.sqldb.Database.for_update`).

Rules kept here (``design.md``, ``spec/behavior.md`` §3.1–3.2, §5.2, §7):

* Every id and secret is 48 characters from ``[A-Za-z0-9]``. API tokens,
  worker auth tokens and registration keys are stored as SHA-256 digests only
  (they are high-entropy random strings, so a fast hash is enough); a token is
  shown once, when it is made.
* A registration key lives 5 minutes; it can be extended (to now + 5 min)
  only when less than 2 minutes remain, and never after it expired or was
  used. Registering consumes the key and creates the worker in one
  transaction: of many racers exactly one wins, and a refused registration
  (e.g. the owner is at the worker cap) consumes nothing.
* A database has a random ``hub_id`` (16 hex digits, made once): workers record the hub
  they registered with, and a token rejection counts as "you were deleted" only from it.
* Worker names are unique among an owner's live workers (:class:`AlreadyExists`).
* A registration key's first 6 characters are kept in clear (``key_prefix``) for lists.
* Worker status: ``active`` → ``deregistering`` (owner or admin asked) →
  ``deleted`` (the worker acknowledged, or was told on reconnect). A deleted
  worker's token no longer authenticates.

* A user's live registration keys may be capped (``mint_registration_key(max_live=)``);
  :meth:`SQLiteHubStore.live_token_ids` and :meth:`SQLiteHubStore.worker_statuses` answer,
  in one query per batch, what a running hub polls to make revocation take effect at once.

* The audit trail (``audit_events``, :mod:`leapcore.proto.audit_events`): an operation
  given an ``origin`` records its event in its own transaction (a registration, a
  deregistration, a key or token made or revoked); :meth:`SQLiteHubStore.record_audit` records
  the others (refusals, replaced links). Writing an audit row never fails the operation
  it records: a failed write is logged (and :attr:`SQLiteHubStore.on_audit_failure` called),
  and the operation goes on. Rows are kept until :meth:`SQLiteHubStore.prune_audit`.

Time is passed in as ``now_ms`` (milliseconds since the Unix epoch, UTC); an audit event's
``at`` is in seconds.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import logging
import secrets
import string
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any, Final

import attrs

from ..crypto.keys import PublicKeyBundle
from ..crypto.mode import EncryptionMode, parse_encryption_mode
from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    LocalError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    StorageError,
    TokenExpired,
    Unauthenticated,
    WorkerDeleted,
)
from ..proto.audit_events import (
    AuditEvent,
    Origin,
    decode_detail,
    encode_detail,
    worker_actor,
)
from ..proto.limits import (
    API_TOKEN_LIFETIME_DAYS,
    DAY_MS,
    DEFAULT_MAX_WORKERS_PER_USER,
    ID_LENGTH,
    REG_KEY_EXTEND_WINDOW_MS,
    REG_KEY_LIFETIME_MS,
    WORKER_TOKEN_LIFETIME_DAYS,
)
from .sqldb import DEFAULT_POOL_SIZE, Conn, Database, refuse_newer
from .sqlitedb import SQLiteDatabase

__all__ = [
    "SCHEMA_VERSION",
    "ApiToken",
    "HubStore",
    "PostgresHubStore",
    "RegistrationKey",
    "SQLiteHubStore",
    "User",
    "Worker",
    "WorkerStatus",
    "is_postgres_location",
    "new_id",
    "open_hub_store",
    "utc_text",
]

log = logging.getLogger(__name__)

#: The characters of every id the store mints (:data:`~leapcore.proto.limits.ID_LENGTH` of
#: them; registration keys live :data:`~leapcore.proto.limits.REG_KEY_LIFETIME_MS`).
ALPHABET: Final = string.ascii_letters + string.digits


#: How many leading characters of a registration key the store keeps in clear, so that a
#: list can show which key is which (the rest, ~250 bits, stays secret).
KEY_PREFIX_LENGTH: Final = 6
#: A hub id: this many random lowercase hex digits, made once per database.
HUB_ID_HEX: Final = 16

#: The notification channel (PostgreSQL LISTEN/NOTIFY) of :meth:`HubStore.watch_changes`.
CHANGES_CHANNEL: Final = "leapcore_hub_changes"
#: Ids per query in the batched lookups (well under SQLite's bound-parameter limit).
BATCH: Final = 500


def _chunks(items: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == BATCH:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def new_id() -> str:
    """48 characters drawn uniformly from [A-Za-z0-9] (the OS CSPRNG)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(ID_LENGTH))


def utc_text(ms: int) -> str:
    """A time in ms since the epoch as messages write it: ``2026-12-05 08:15 UTC``."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class WorkerStatus(enum.Enum):
    ACTIVE = "active"
    DEREGISTERING = "deregistering"
    DELETED = "deleted"


@attrs.frozen
class User:
    id: str
    name: str
    created_at: int
    is_admin: bool = False


@attrs.frozen
class ApiToken:
    id: str
    user_id: str
    created_at: int
    revoked_at: int | None
    last_used_at: int | None
    #: When the token expires (ms since the epoch; None: never, a token revoked before
    #: the database was migrated to schema 5).
    expires_at: int | None = None


@attrs.frozen
class RegistrationKey:
    id: str
    created_by: str
    creator_name: str
    created_at: int
    expires_at: int
    #: The key's first :data:`KEY_PREFIX_LENGTH` characters, to recognise it in a list
    #: (``""`` for a key minted before schema 2).
    prefix: str = ""


@attrs.frozen
class Worker:
    id: str
    owner_id: str
    owner_name: str
    name: str
    version: str
    labels: dict[str, str]
    status: WorkerStatus
    auto_registered: bool
    created_at: int
    last_seen_at: int | None
    keys: PublicKeyBundle | None
    encryption_mode: EncryptionMode | None
    #: What the worker advertised at its latest connect (empty and None until a worker
    #: that sends them connects).
    capabilities: tuple[str, ...] = ()
    os: str | None = None
    arch: str | None = None
    #: When the worker's auth token expires (ms since the epoch; None: never, a token
    #: of a deleted worker when the database was migrated to schema 5).
    token_expires_at: int | None = None


@attrs.frozen
class Notification:
    id: str
    worker_id: str
    kind: str
    reason: str
    attempts: int


# ---------------------------------------------------------------------------
# The schema: SQLite's spelling (PostgreSQL's is made by leapcore.store.pgdb.DIALECT)

_MIGRATIONS: Final[Sequence[str]] = (
    # 1: the initial schema.
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        is_admin INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        deleted_at INTEGER
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        token_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        last_used_at INTEGER
    );
    CREATE TABLE registration_keys (
        id TEXT PRIMARY KEY,
        key_hash BLOB NOT NULL UNIQUE,
        created_by TEXT NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        owner_id TEXT NOT NULL REFERENCES users(id),
        token_hash BLOB NOT NULL UNIQUE,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        auto_registered INTEGER NOT NULL DEFAULT 0,
        registered_with TEXT,
        x25519 BLOB,
        mlkem BLOB,
        slhdsa BLOB,
        encryption_mode TEXT,
        created_at INTEGER NOT NULL,
        last_seen_at INTEGER,
        deleted_at INTEGER
    );
    CREATE INDEX workers_owner ON workers(owner_id, status);
    CREATE TABLE notifications (
        id TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL REFERENCES workers(id),
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX notifications_pending ON notifications(worker_id, status);
    """,
    # 2: the hub's identity; a recognisable prefix of each registration key.
    """
    CREATE TABLE hub_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE registration_keys ADD COLUMN key_prefix TEXT NOT NULL DEFAULT '';
    CREATE INDEX workers_owner_name ON workers(owner_id, name)
    """,
    # 3: what a worker advertises at each connect: its capabilities, os and arch.
    """
    ALTER TABLE workers ADD COLUMN capabilities TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE workers ADD COLUMN os TEXT;
    ALTER TABLE workers ADD COLUMN arch TEXT
    """,
    # 4: the audit trail of security events (leapcore.proto.audit_events).
    """
    CREATE TABLE audit_events (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        worker_id TEXT,
        address TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_events_at ON audit_events(at);
    CREATE INDEX audit_events_worker ON audit_events(worker_id, at)
    """,
    # 5: token expiry and worker token rotation. Tokens that exist when the database is
    # migrated get the default lifetime from the migration's time (never NULL: an upgrade
    # must neither lock every worker out at once nor leave old tokens valid for ever);
    # connected workers are offered their successors in the rotation window as usual.
    f"""
    ALTER TABLE workers ADD COLUMN token_expires_at INTEGER;
    ALTER TABLE workers ADD COLUMN pending_token_hash BLOB;
    ALTER TABLE workers ADD COLUMN pending_expires_at INTEGER;
    ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
    UPDATE workers SET token_expires_at =
        CAST(strftime('%s', 'now') AS INTEGER) * 1000 + {WORKER_TOKEN_LIFETIME_DAYS * DAY_MS}
        WHERE status != 'deleted';
    UPDATE api_tokens SET expires_at =
        CAST(strftime('%s', 'now') AS INTEGER) * 1000 + {API_TOKEN_LIFETIME_DAYS * DAY_MS}
        WHERE revoked_at IS NULL;
    CREATE UNIQUE INDEX workers_pending_token ON workers(pending_token_hash)
    """,
    # 6: several hubs as one (leapcore.hub.cluster): each hub process's lease, and which
    # hub holds each online worker's link, with a lease its hub renews in batches.
    """
    CREATE TABLE hub_nodes (
        node_id TEXT PRIMARY KEY,
        advertise TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        renewed_at BIGINT NOT NULL,
        lease_until BIGINT NOT NULL,
        workers BIGINT NOT NULL DEFAULT 0,
        channels BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE worker_presence (
        worker_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        owner_id TEXT NOT NULL,
        linked_at BIGINT NOT NULL,
        lease_until BIGINT NOT NULL
    );
    CREATE INDEX worker_presence_node ON worker_presence(node_id)
    """,
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)
#: Audit events a listing returns when no ``limit`` is given (and the most it may ask).
AUDIT_LIST_LIMIT: Final = 1000
AUDIT_LIST_MAX: Final = 100_000
#: A queued notification is given up after this many delivery attempts.
MAX_NOTIFICATION_ATTEMPTS: Final = 5

_WORKER_COLUMNS: Final = (
    "w.id, w.owner_id, u.name, w.name, w.version, w.labels, w.status, w.auto_registered, "
    "w.created_at, w.last_seen_at, w.x25519, w.mlkem, w.slhdsa, w.encryption_mode, "
    "w.capabilities, w.os, w.arch, w.token_expires_at"
)


class HubStore:
    """Every query of the hub's state, on a :class:`~leapcore.store.sqldb.Database`
    backend (:class:`SQLiteHubStore`, :class:`PostgresHubStore`; :func:`open_hub_store`
    picks one from a location). Its methods may be called from several threads at once:
    each takes a connection of its own (SQLite serialises them; see
    :attr:`max_concurrent_calls`)."""

    def __init__(
        self,
        db: Database,
        *,
        max_workers_per_user: int = DEFAULT_MAX_WORKERS_PER_USER,
        worker_token_lifetime_days: int = WORKER_TOKEN_LIFETIME_DAYS,
        api_token_lifetime_days: int = API_TOKEN_LIFETIME_DAYS,
    ) -> None:
        """Migrate ``db`` to :data:`SCHEMA_VERSION` (:attr:`migrated_from` says from which
        version) and make its hub id. A worker token, or an API token, made from now on
        lives ``worker_token_lifetime_days``, or ``api_token_lifetime_days`` (the hub
        settings of those names; the attributes :attr:`worker_token_lifetime_ms` and
        :attr:`api_token_lifetime_ms` may be changed). ``db`` is closed when this fails."""
        try:
            _check_worker_cap(max_workers_per_user)
        except LocalError:
            db.close()
            raise
        self._db = db
        #: Where the data is, for messages (a path, or a URL without its password).
        self.location = db.location
        self.max_workers_per_user = max_workers_per_user
        self.worker_token_lifetime_ms = worker_token_lifetime_days * DAY_MS
        self.api_token_lifetime_ms = api_token_lifetime_days * DAY_MS
        #: Called (no arguments) when an audit row could not be written (the hub counts it).
        self.on_audit_failure: Callable[[], None] | None = None
        try:
            db.opened(SCHEMA_VERSION)
            self.migrated_from = self._migrate()
            self.hub_id = self._ensure_hub_id()
        except BaseException:
            db.close()
            raise
        db.ready()

    @property
    def max_concurrent_calls(self) -> int:
        """How many calls may usefully run at once (SQLite 1, PostgreSQL its pool size)."""
        return self._db.max_concurrent_calls

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> AbstractContextManager[Conn]:
        """One write transaction (rolled back when the block raises)."""
        return self._db.transaction()

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with self._db.reading() as db:
            return db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._db.reading() as db:
            return db.execute(sql, args).fetchall()

    def _migrate(self) -> int:
        """Migrate to :data:`SCHEMA_VERSION`; the version found. Opening an up-to-date
        database takes no lock (a running hub may hold SQLite's write lock)."""
        version = self._db.schema_version()
        refuse_newer(self._db.location, version, SCHEMA_VERSION)
        if version < SCHEMA_VERSION:
            version, _ = self._db.migrate(_MIGRATIONS)
        return version

    def _ensure_hub_id(self) -> str:
        """The database's hub id, made (random, once) on first use and never changed."""
        row = self._one("SELECT value FROM hub_meta WHERE key = 'hub_id'")
        if row is not None:
            return str(row[0])
        with self._tx() as db:
            db.execute(
                "INSERT INTO hub_meta (key, value) VALUES ('hub_id', ?) "
                "ON CONFLICT (key) DO NOTHING",
                (secrets.token_hex(HUB_ID_HEX // 2),),
            )
            (value,) = db.execute("SELECT value FROM hub_meta WHERE key = 'hub_id'").fetchone()
        return str(value)

    def _lock_user(self, db: Conn, user_id: str) -> None:
        """Lock a user's row until the transaction ends (PostgreSQL; SQLite's write
        transactions are serialised whole): checks over the user's workers or keys then
        hold until commit."""
        if self._db.for_update:
            db.execute(f"SELECT id FROM users WHERE id = ?{self._db.for_update}", (user_id,))

    @property
    def schema_version(self) -> int:
        return self._db.schema_version()

    # -- the audit trail -------------------------------------------------------------

    def _audit_failed(self, event: AuditEvent, exc: Exception) -> None:
        log.error("audit event %s (%s) not recorded: %s", event.kind, event.actor, exc)
        if self.on_audit_failure is not None:
            self.on_audit_failure()

    @staticmethod
    def _insert_audit(db: Conn, event: AuditEvent) -> None:
        db.execute(
            "INSERT INTO audit_events (at, kind, actor, worker_id, address, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                event.at,
                event.kind,
                event.actor,
                event.worker_id,
                event.address,
                encode_detail(event.detail),
            ),
        )

    def _audit(self, db: Conn, event: AuditEvent) -> None:
        """Insert ``event`` inside the caller's transaction, in a savepoint: if the insert
        fails, only it is undone (logged), and the operation it records still commits."""
        db.execute("SAVEPOINT audit")
        try:
            self._insert_audit(db, event)
        except StorageError as exc:
            with suppress(StorageError):
                db.execute("ROLLBACK TO audit")
            self._audit_failed(event, exc)
        with suppress(StorageError):
            db.execute("RELEASE audit")

    def record_audit(self, event: AuditEvent) -> bool:
        """Record ``event`` on its own (a refusal, a replaced link: nothing else is written).
        Never raises for a database failure: it is logged, and the answer is False."""
        try:
            with self._tx() as db:
                self._insert_audit(db, event)
        except StorageError as exc:
            self._audit_failed(event, exc)
            return False
        return True

    def list_audit(
        self,
        *,
        since: float | None = None,
        worker_id: str | None = None,
        kind: str | None = None,
        limit: int = AUDIT_LIST_LIMIT,
    ) -> list[AuditEvent]:
        """Recorded events, **newest first** (then by id, descending): those at or after
        ``since`` (seconds since the epoch), about ``worker_id``, of ``kind``; at most
        ``limit`` (1 to :data:`AUDIT_LIST_MAX`)."""
        if not 1 <= limit <= AUDIT_LIST_MAX:
            raise LocalError(f"limit must be between 1 and {AUDIT_LIST_MAX}")
        query = "SELECT id, at, kind, actor, worker_id, address, detail FROM audit_events"
        clauses: list[str] = []
        args: list[Any] = []
        if since is not None:
            clauses.append("at >= ?")
            args.append(since)
        if worker_id is not None:
            clauses.append("worker_id = ?")
            args.append(worker_id)
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY at DESC, id DESC LIMIT ?"
        args.append(limit)
        rows = self._all(query, args)
        # A kind of a newer release is listed as it is (and its unknown detail fields left
        # out by decode_detail): a listing never fails on one row.
        with attrs.validators.disabled():
            return [
                AuditEvent(r[1], r[2], r[3], r[4], r[5], decode_detail(r[6]), id=r[0]) for r in rows
            ]

    def prune_audit(self, before: float) -> int:
        """Delete the events recorded before ``before`` (seconds since the epoch); how many.
        The hub passes its wall clock minus ``audit_retention_days``."""
        with self._tx() as db:
            return int(db.execute("DELETE FROM audit_events WHERE at < ?", (before,)).rowcount)

    # -- users and API tokens -------------------------------------------------------

    def create_user(
        self, name: str, now_ms: int, *, is_admin: bool = False, origin: Origin | None = None
    ) -> tuple[User, str]:
        """A new user and its first API token (returned once, stored hashed); with
        ``origin``, audited (``api_token_created``)."""
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise LocalError("user name must be 1-64 printable characters")
        user = User(new_id(), name, now_ms, is_admin)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise FailedPrecondition(f"a user named {name!r} already exists")
            db.execute(
                "INSERT INTO users (id, name, is_admin, created_at) VALUES (?, ?, ?, ?)",
                (user.id, name, int(is_admin), now_ms),
            )
            token = self._insert_token(db, user, now_ms, origin)
        return user, token

    def _insert_token(self, db: Conn, user: User, now_ms: int, origin: Origin | None) -> str:
        token = new_id()
        token_id = new_id()
        db.execute(
            "INSERT INTO api_tokens (id, user_id, token_hash, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (token_id, user.id, _digest(token), now_ms, now_ms + self.api_token_lifetime_ms),
        )
        if origin is not None:
            self._audit(
                db,
                AuditEvent(
                    now_ms / 1000,
                    "api_token_created",
                    origin.actor,
                    address=origin.address,
                    detail={"user": user.name, "token_id": token_id},
                ),
            )
        return token

    def _user_by_ref(self, db: Conn, ref: str) -> User:
        # An id wins over a name: a user may be named like another user's id.
        row = db.execute(
            "SELECT id, name, created_at, is_admin FROM users "
            "WHERE (id = ? OR name = ?) AND deleted_at IS NULL ORDER BY id = ? DESC LIMIT 1",
            (ref, ref, ref),
        ).fetchone()
        if row is None:
            raise NotFound(f"no user {ref!r}")
        return User(row[0], row[1], row[2], bool(row[3]))

    def get_user(self, ref: str) -> User:
        """A user by id or name."""
        with self._db.reading() as db:
            return self._user_by_ref(db, ref)

    def list_users(self) -> list[User]:
        rows = self._all(
            "SELECT id, name, created_at, is_admin FROM users WHERE deleted_at IS NULL "
            "ORDER BY name"
        )
        return [User(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def create_token(self, user_ref: str, now_ms: int, *, origin: Origin | None = None) -> str:
        """Another API token for a user (returned once); with ``origin``, audited."""
        with self._tx() as db:
            user = self._user_by_ref(db, user_ref)
            return self._insert_token(db, user, now_ms, origin)

    def list_tokens(self, user_ref: str) -> list[ApiToken]:
        user = self.get_user(user_ref)
        rows = self._all(
            "SELECT id, user_id, created_at, revoked_at, last_used_at, expires_at FROM api_tokens "
            "WHERE user_id = ? ORDER BY created_at, id",
            (user.id,),
        )
        return [ApiToken(*r) for r in rows]

    def find_token(self, token: str) -> ApiToken:
        """The record of an API token, given the token itself (revoked ones included);
        touches nothing (unlike :meth:`authenticate_user`)."""
        row = self._one(
            "SELECT id, user_id, created_at, revoked_at, last_used_at, expires_at FROM api_tokens "
            "WHERE token_hash = ?",
            (_digest(token),),
        )
        if row is None:
            raise NotFound("no API token matches")
        return ApiToken(*row)

    def revoke_token(self, token_id: str, now_ms: int, *, origin: Origin | None = None) -> None:
        """Revoke a live API token; with ``origin``, audited (``api_token_revoked``)."""
        with self._tx() as db:
            changed = db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now_ms, token_id),
            ).rowcount
            if not changed:
                raise NotFound(f"no live API token with id {token_id!r}")
            db.notify(CHANGES_CHANNEL, f"api_token_revoked:{token_id}")
            if origin is not None:
                row = db.execute(
                    "SELECT u.name FROM api_tokens t JOIN users u ON u.id = t.user_id "
                    "WHERE t.id = ?",
                    (token_id,),
                ).fetchone()
                self._audit(
                    db,
                    AuditEvent(
                        now_ms / 1000,
                        "api_token_revoked",
                        origin.actor,
                        address=origin.address,
                        detail={"user": row[0] if row else None, "token_id": token_id},
                    ),
                )

    def authenticate_user(self, token: str, now_ms: int) -> User:
        """The user an API token belongs to; :class:`Unauthenticated` otherwise."""
        return self.authenticate_client(token, now_ms)[0]

    def authenticate_client(self, token: str, now_ms: int) -> tuple[User, str, int | None]:
        """:meth:`authenticate_user`, the token's id (for :meth:`live_token_ids`) and its
        expiry (ms; None: never). A token past its expiry is :class:`TokenExpired` (naming the
        day, UTC)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT u.id, u.name, u.created_at, u.is_admin, t.id, t.expires_at "
                "FROM api_tokens t JOIN users u ON u.id = t.user_id "
                "WHERE t.token_hash = ? AND t.revoked_at IS NULL AND u.deleted_at IS NULL",
                (_digest(token),),
            ).fetchone()
            if row is None:
                raise Unauthenticated("invalid API token")
            if row[5] is not None and row[5] <= now_ms:
                raise TokenExpired(
                    f"API token expired on {utc_text(row[5])}; ask an administrator for a new "
                    "one (leapcore-hub admin user token-create)"
                )
            db.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now_ms, row[4]))
        return User(row[0], row[1], row[2], bool(row[3])), row[4], row[5]

    def live_token_ids(self, token_ids: Iterable[str]) -> set[str]:
        """Those of ``token_ids`` that still authenticate: not revoked, user not deleted.

        One query per :data:`BATCH` ids (a hub asks about all its client links at once)."""
        live: set[str] = set()
        for chunk in _chunks(token_ids):
            marks = ", ".join("?" * len(chunk))
            rows = self._all(
                f"SELECT t.id FROM api_tokens t JOIN users u ON u.id = t.user_id "
                f"WHERE t.id IN ({marks}) AND t.revoked_at IS NULL AND u.deleted_at IS NULL",
                chunk,
            )
            live.update(r[0] for r in rows)
        return live

    # -- registration keys ----------------------------------------------------------------

    def mint_registration_key(
        self, user_id: str, now_ms: int, *, max_live: int = 0, origin: Origin | None = None
    ) -> tuple[RegistrationKey, str]:
        """A new key for ``user_id``, valid 5 minutes; the key itself is returned once (with
        ``origin``, audited by the key's id: ``registration_key_created``).

        ``max_live`` (0: no cap) caps the user's unexpired keys: one more is
        :class:`QuotaExceeded` and nothing is written."""
        key = new_id()
        with self._tx() as db:
            user = self._user_by_ref(db, user_id)
            if max_live:
                self._lock_user(db, user.id)
                (live,) = db.execute(
                    "SELECT COUNT(*) FROM registration_keys "
                    "WHERE created_by = ? AND expires_at > ?",
                    (user.id, now_ms),
                ).fetchone()
                if live >= max_live:
                    raise QuotaExceeded(
                        f"this account already has {live} live registration keys, which is the "
                        "configured maximum (max_live_registration_keys); use or revoke one, or "
                        "wait until one expires"
                    )
            record = RegistrationKey(
                new_id(),
                user.id,
                user.name,
                now_ms,
                now_ms + REG_KEY_LIFETIME_MS,
                key[:KEY_PREFIX_LENGTH],
            )
            db.execute(
                "INSERT INTO registration_keys "
                "(id, key_hash, created_by, created_at, expires_at, key_prefix) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, _digest(key), user.id, now_ms, record.expires_at, record.prefix),
            )
            if origin is not None:
                self._audit(
                    db,
                    AuditEvent(
                        now_ms / 1000,
                        "registration_key_created",
                        origin.actor,
                        address=origin.address,
                        detail={"user": user.name, "registration_key_id": record.id},
                    ),
                )
        return record, key

    def extend_registration_key(self, user_id: str, key: str, now_ms: int) -> int:
        """Extend the caller's live key to now + 5 min; allowed only when < 2 min remain."""
        if not key:
            raise LocalError("registration key is required")
        with self._tx() as db:
            row = db.execute(
                "SELECT id, expires_at FROM registration_keys "
                "WHERE key_hash = ? AND created_by = ?",
                (_digest(key), user_id),
            ).fetchone()
            if row is None:
                raise NotFound("registration key not found")
            key_id, expires_at = row
            if expires_at <= now_ms:
                raise FailedPrecondition("registration key has expired")
            if expires_at - now_ms >= REG_KEY_EXTEND_WINDOW_MS:
                raise FailedPrecondition("extension not allowed yet")
            new_expiry = now_ms + REG_KEY_LIFETIME_MS
            db.execute(
                "UPDATE registration_keys SET expires_at = ? WHERE id = ? AND expires_at > ?",
                (new_expiry, key_id, now_ms),
            )
        return new_expiry

    def revoke_registration_key(
        self, key_id: str, now_ms: int, *, owner: str | None = None, origin: Origin | None = None
    ) -> None:
        """Expire a key now (idempotent on a dead key); ``owner`` restricts to that user's keys.
        With ``origin``, audited (``registration_key_revoked``, by the key's id)."""
        query = (
            "UPDATE registration_keys SET expires_at = "
            "CASE WHEN expires_at < ? THEN expires_at ELSE ? END WHERE id = ?"
        )
        args: tuple[Any, ...] = (now_ms - 1000, now_ms - 1000, key_id)
        if owner is not None:
            query += " AND created_by = ?"
            args += (owner,)
        with self._tx() as db:
            if not db.execute(query, args).rowcount:
                raise NotFound(f"registration key not found: {key_id}")
            db.notify(CHANGES_CHANNEL, f"registration_key_revoked:{key_id}")
            if origin is not None:
                self._audit(
                    db,
                    AuditEvent(
                        now_ms / 1000,
                        "registration_key_revoked",
                        origin.actor,
                        address=origin.address,
                        detail={
                            "registration_key_id": key_id,
                            "by": "owner" if owner is not None else "administrator",
                        },
                    ),
                )

    def revoke_registration_key_by_ref(
        self, ref: str, now_ms: int, *, owner: str | None = None, origin: Origin | None = None
    ) -> str:
        """Expire a key named by its id or by the key itself (a leaked key can be revoked by
        its value); returns the key's id. ``owner`` restricts to that user's keys."""
        row = self._one(
            "SELECT id FROM registration_keys WHERE id = ? OR key_hash = ?", (ref, _digest(ref))
        )
        if row is None:
            raise NotFound("registration key not found (give its id or the key itself)")
        try:
            self.revoke_registration_key(row[0], now_ms, owner=owner, origin=origin)
        except NotFound:
            raise NotFound("registration key not found (give its id or the key itself)") from None
        return str(row[0])

    def revoke_registration_key_by_secret(
        self, user_id: str, key: str, now_ms: int, *, origin: Origin | None = None
    ) -> None:
        """The owner revokes a key it holds (e.g. the CLI that minted it is interrupted)."""
        row = self._one(
            "SELECT id FROM registration_keys WHERE key_hash = ? AND created_by = ?",
            (_digest(key), user_id),
        )
        if row is None:
            raise NotFound("registration key not found")
        self.revoke_registration_key(row[0], now_ms, owner=user_id, origin=origin)

    def registration_key_state(self, user_id: str, key: str, now_ms: int) -> str:
        """``live``, ``expired`` or ``consumed`` (used by a worker) for the caller's key."""
        row = self._one(
            "SELECT id, expires_at FROM registration_keys WHERE key_hash = ? AND created_by = ?",
            (_digest(key), user_id),
        )
        if row is None:
            raise NotFound("registration key not found")
        if row[1] > now_ms:
            return "live"
        used = self._one("SELECT 1 FROM workers WHERE registered_with = ?", (row[0],))
        return "consumed" if used else "expired"

    def list_registration_keys(
        self, now_ms: int, *, include_expired: bool = False
    ) -> list[RegistrationKey]:
        query = (
            "SELECT k.id, k.created_by, COALESCE(u.name, ''), k.created_at, k.expires_at, "
            "k.key_prefix "
            "FROM registration_keys k LEFT JOIN users u ON u.id = k.created_by"
        )
        args: tuple[Any, ...] = ()
        if not include_expired:
            query += " WHERE k.expires_at > ?"
            args = (now_ms,)
        # Newest first; keys made in the same millisecond: the later first on SQLite (rowid),
        # in a fixed order on PostgreSQL (which keeps no insertion order).
        query += f" ORDER BY k.created_at DESC, k.{self._db.row_order} DESC"
        return [RegistrationKey(*r) for r in self._all(query, args)]

    def purge_expired_registration_keys(self, now_ms: int) -> int:
        """Delete the keys expired (used or revoked) at ``now_ms``; how many were deleted.
        The hub passes ``now`` minus its retention, so recent ones stay visible a while."""
        with self._tx() as db:
            return int(
                db.execute(
                    "DELETE FROM registration_keys WHERE expires_at <= ?", (now_ms,)
                ).rowcount
            )

    # -- workers --------------------------------------------------------------------------

    def register_worker(
        self,
        key: str,
        *,
        name: str,
        version: str,
        labels: dict[str, str],
        now_ms: int,
        auto_registered: bool = False,
        origin: Origin | None = None,
    ) -> tuple[Worker, str]:
        """Consume ``key`` and create the worker, atomically; returns it and its auth token.

        With ``origin`` the registration is audited in the same transaction
        (``worker_registered``; its actor is the new worker, ``origin`` gives the address)."""
        if not key:
            raise Unauthenticated("registration key required")
        if not any((c.isalnum() and c.isascii()) or c in "._-" for c in version):
            raise LocalError(f"invalid worker version {version!r}")
        token = new_id()
        worker_id = new_id()
        with self._tx() as db:
            # The key's row is locked (PostgreSQL): a racer waits here, then finds it used.
            row = db.execute(
                "SELECT id, created_by FROM registration_keys "
                f"WHERE key_hash = ? AND expires_at > ?{self._db.for_update}",
                (_digest(key), now_ms),
            ).fetchone()
            if row is None:
                raise Unauthenticated("registration key invalid or already consumed")
            key_id, owner_id = row
            self._lock_user(db, owner_id)  # the cap and the name checks hold until commit
            cap = self.max_workers_per_user
            if cap:
                (count,) = db.execute(
                    "SELECT COUNT(*) FROM workers WHERE owner_id = ? AND status = ?",
                    (owner_id, WorkerStatus.ACTIVE.value),
                ).fetchone()
                if count >= cap:
                    raise QuotaExceeded(
                        f"this account already has {count} workers registered, which is the "
                        "configured maximum (max_workers_per_user); deregister one first"
                    )
            self._check_name_free(db, owner_id, name)
            consumed = db.execute(
                "UPDATE registration_keys SET expires_at = ? WHERE id = ? AND expires_at > ?",
                (now_ms - 1000, key_id, now_ms),
            ).rowcount
            if not consumed:  # pragma: no cover - the lock above serialises racers
                raise Unauthenticated("registration key invalid or already consumed")
            db.execute(
                "INSERT INTO workers (id, owner_id, token_hash, name, version, labels, status, "
                "auto_registered, registered_with, created_at, token_expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    worker_id,
                    owner_id,
                    _digest(token),
                    name,
                    version,
                    json.dumps(labels, sort_keys=True),
                    WorkerStatus.ACTIVE.value,
                    int(auto_registered),
                    key_id,
                    now_ms,
                    now_ms + self.worker_token_lifetime_ms,
                ),
            )
            if origin is not None:
                owner = db.execute("SELECT name FROM users WHERE id = ?", (owner_id,)).fetchone()
                self._audit(
                    db,
                    AuditEvent(
                        now_ms / 1000,
                        "worker_registered",
                        worker_actor(worker_id),
                        worker_id,
                        origin.address,
                        {
                            "user": owner[0] if owner else None,
                            "name": name,
                            "registration_key_id": key_id,
                            "auto_registered": auto_registered,
                        },
                    ),
                )
        return self.get_worker(worker_id), token

    def _check_name_free(
        self, db: Conn, owner_id: str, name: str, *, worker_id: str | None = None
    ) -> None:
        """:class:`AlreadyExists` when another live worker of ``owner_id`` is called ``name``
        (names are unique per owner, so a person can address a worker by its name)."""
        if not name:
            return
        row = db.execute(
            "SELECT id FROM workers WHERE owner_id = ? AND name = ? AND status != ? AND id != ?",
            (owner_id, name, WorkerStatus.DELETED.value, worker_id or ""),
        ).fetchone()
        if row is not None:
            raise AlreadyExists(
                f"another of this owner's workers is already called {name!r} ({row[0]}); "
                "choose another name (--name) or deregister that worker first"
            )

    def update_worker_profile(
        self,
        worker_id: str,
        *,
        name: str,
        labels: dict[str, str],
        capabilities: Sequence[str] | None = None,
        os: str | None = None,
        arch: str | None = None,
    ) -> Worker:
        """Set a worker's name and labels (what its configuration says on each connect), and
        its capabilities, ``os`` and ``arch`` when given (None: each stays as it was);
        :class:`AlreadyExists` when another of the owner's live workers has that name, and
        nothing is changed."""
        caps = None if capabilities is None else json.dumps(sorted(set(capabilities)))
        with self._tx() as db:
            row = db.execute("SELECT owner_id FROM workers WHERE id = ?", (worker_id,)).fetchone()
            if row is None:
                raise NotFound(f"worker {worker_id} not found")
            self._lock_user(db, row[0])
            self._check_name_free(db, row[0], name, worker_id=worker_id)
            db.execute(
                "UPDATE workers SET name = ?, labels = ?, capabilities = COALESCE(?, capabilities),"
                " os = COALESCE(?, os), arch = COALESCE(?, arch) WHERE id = ?",
                (name, json.dumps(labels, sort_keys=True), caps, os, arch, worker_id),
            )
        return self.get_worker(worker_id)

    def _worker(self, row: Sequence[Any]) -> Worker:
        keys = None
        if row[10]:
            keys = PublicKeyBundle(row[10], row[11], row[12])
        return Worker(
            id=row[0],
            owner_id=row[1],
            owner_name=row[2] or "",
            name=row[3],
            version=row[4],
            labels=json.loads(row[5]),
            status=WorkerStatus(row[6]),
            auto_registered=bool(row[7]),
            created_at=row[8],
            last_seen_at=row[9],
            keys=keys,
            encryption_mode=parse_encryption_mode(row[13]) if row[13] else None,
            capabilities=tuple(json.loads(row[14])),
            os=row[15],
            arch=row[16],
            token_expires_at=row[17],
        )

    def get_worker(self, worker_id: str) -> Worker:
        row = self._one(
            f"SELECT {_WORKER_COLUMNS} FROM workers w LEFT JOIN users u ON u.id = w.owner_id "
            "WHERE w.id = ?",
            (worker_id,),
        )
        if row is None:
            raise NotFound(f"worker {worker_id} not found")
        return self._worker(row)

    def list_workers(
        self, *, owner_id: str | None = None, status: WorkerStatus | None = WorkerStatus.ACTIVE
    ) -> list[Worker]:
        query = f"SELECT {_WORKER_COLUMNS} FROM workers w LEFT JOIN users u ON u.id = w.owner_id"
        clauses, args = [], []
        if owner_id is not None:
            clauses.append("w.owner_id = ?")
            args.append(owner_id)
        if status is not None:
            clauses.append("w.status = ?")
            args.append(status.value)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY w.created_at, w.id"
        return [self._worker(r) for r in self._all(query, args)]

    def authenticate_worker(
        self, token: str, now_ms: int, *, origin: Origin | None = None
    ) -> Worker:
        """The worker an auth token belongs to. A token this database never issued (or one
        retired by a rotation) is :class:`Unauthenticated`; a deleted worker's token is
        :class:`WorkerDeleted` (the only answer on which a worker retires its identity); an
        active worker's token past its expiry is :class:`TokenExpired` (a *deregistering*
        worker's still signs in, so that it can be told and retire its identity). The
        *pending* token of a rotation (:meth:`offer_worker_token`) authenticates too, and
        using it completes the rotation (:meth:`promote_worker_token`, audited with
        ``origin``)."""
        digest = _digest(token)
        with self._tx() as db:
            row = db.execute(
                "SELECT id, status, token_expires_at, token_hash = ? FROM workers "
                "WHERE token_hash = ? OR pending_token_hash = ?",
                (digest, digest, digest),
            ).fetchone()
            if row is None:
                raise Unauthenticated("invalid auth token")
            worker_id, status, expires_at, current = row
            if status == WorkerStatus.DELETED.value:
                raise WorkerDeleted(f"worker {worker_id} was deregistered or deleted on this hub")
            if not current:
                self._promote(db, worker_id, digest, now_ms, "used at connect", origin)
            elif (
                expires_at is not None
                and expires_at <= now_ms
                and status == WorkerStatus.ACTIVE.value
            ):
                raise TokenExpired(
                    f"worker token expired on {utc_text(expires_at)}; register the worker "
                    "again (leapcore-worker --registration-key)"
                )
            db.execute("UPDATE workers SET last_seen_at = ? WHERE id = ?", (now_ms, worker_id))
        return self.get_worker(worker_id)

    def offer_worker_token(self, worker_id: str, now_ms: int) -> tuple[str, int]:
        """Make a successor of a worker's token: returns it (once) and its expiry; only its
        digest is kept, as the worker's *pending* token (any earlier pending one is
        replaced). Until :meth:`promote_worker_token`, the current and the pending token both
        authenticate. :class:`NotFound` for a worker that is not active."""
        token = new_id()
        expires_at = now_ms + self.worker_token_lifetime_ms
        with self._tx() as db:
            changed = db.execute(
                "UPDATE workers SET pending_token_hash = ?, pending_expires_at = ? "
                "WHERE id = ? AND status = ?",
                (_digest(token), expires_at, worker_id, WorkerStatus.ACTIVE.value),
            ).rowcount
            if not changed:
                raise NotFound(f"worker {worker_id} not found")
        return token, expires_at

    def promote_worker_token(
        self, worker_id: str, token: str, now_ms: int, *, origin: Origin | None = None
    ) -> bool:
        """The worker saved its pending ``token`` (it acknowledged it): make it the worker's
        token and retire the old one, which no longer authenticates. False, changing nothing,
        when ``token`` is not the worker's pending token (already promoted, or replaced)."""
        with self._tx() as db:
            return self._promote(db, worker_id, _digest(token), now_ms, "acknowledged", origin)

    def _promote(
        self,
        db: Conn,
        worker_id: str,
        digest: bytes,
        now_ms: int,
        how: str,
        origin: Origin | None,
    ) -> bool:
        changed = db.execute(
            "UPDATE workers SET token_hash = pending_token_hash, "
            "token_expires_at = pending_expires_at, pending_token_hash = NULL, "
            "pending_expires_at = NULL WHERE id = ? AND pending_token_hash = ?",
            (worker_id, digest),
        ).rowcount
        if changed and origin is not None:
            self._audit(
                db,
                AuditEvent(
                    now_ms / 1000,
                    "worker_token_rotated",
                    worker_actor(worker_id),
                    worker_id,
                    origin.address,
                    {"reason": how},
                ),
            )
        return bool(changed)

    def pending_token_expiry(self, worker_id: str) -> int | None:
        """The expiry of a worker's pending token (None: no rotation under way)."""
        row = self._one("SELECT pending_expires_at FROM workers WHERE id = ?", (worker_id,))
        return None if row is None else row[0]

    def record_heartbeat(
        self,
        worker_id: str,
        now_ms: int,
        *,
        keys: PublicKeyBundle | None = None,
        mode: EncryptionMode | None = None,
    ) -> None:
        """``last_seen_at`` = now; the keys and mode when the heartbeat carried them."""
        with self._tx() as db:
            if keys is not None:
                db.execute(
                    "UPDATE workers SET last_seen_at = ?, x25519 = ?, mlkem = ?, slhdsa = ?, "
                    "encryption_mode = ? WHERE id = ?",
                    (
                        now_ms,
                        keys.x25519,
                        keys.mlkem,
                        keys.slhdsa,
                        (mode or EncryptionMode.POST_QUANTUM).value,
                        worker_id,
                    ),
                )
            else:
                db.execute("UPDATE workers SET last_seen_at = ? WHERE id = ?", (now_ms, worker_id))

    def record_last_seen(self, seen: Mapping[str, int]) -> None:
        """``last_seen_at`` of many workers (worker id -> ms) in one transaction; a time never
        moves back (two hubs, or a late batch)."""
        if not seen:
            return
        with self._tx() as db:
            db.executemany(
                "UPDATE workers SET last_seen_at = CASE WHEN COALESCE(last_seen_at, 0) > ? "
                "THEN last_seen_at ELSE ? END WHERE id = ?",
                [(at, at, worker_id) for worker_id, at in seen.items()],
            )

    @property
    def announces_changes(self) -> bool:
        """Whether :meth:`watch_changes` works (PostgreSQL: yes; SQLite: no, hubs poll)."""
        return self._db.announces_changes

    def watch_changes(self, on_change: Callable[[str], None], stop: threading.Event) -> None:
        """Call ``on_change(what)`` when any process using this database revokes an API
        token (``"api_token_revoked:ID"``), deregisters a worker (``"worker_deregistered:ID"``)
        or revokes a registration key (``"registration_key_revoked:ID"``), and with ``""``
        after each (re)connection (changes may have been missed: check everything). Blocks
        until ``stop`` is set (run it in a thread); :class:`LocalError` on SQLite."""
        self._db.watch(CHANGES_CHANNEL, on_change, stop)

    def deregister_worker(
        self,
        worker_id: str,
        now_ms: int,
        *,
        requested_by: str | None,
        origin: Origin | None = None,
    ) -> Notification:
        """``active`` → ``deregistering`` and queue the notification for the worker.

        ``requested_by`` is the owner's user id, or ``None`` for an administrator (who may
        deregister any worker, including the auto-registered one). With ``origin``, audited
        in the same transaction (``worker_deregistered``).
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT owner_id, status, auto_registered FROM workers "
                f"WHERE id = ?{self._db.for_update}",
                (worker_id,),
            ).fetchone()
            if (
                row is None
                or row[1] != WorkerStatus.ACTIVE.value
                or (requested_by is not None and row[0] != requested_by)
            ):
                raise NotFound(f"worker {worker_id} not found or not active")
            if requested_by is not None and row[2]:
                raise FailedPrecondition("the bundled local worker cannot be deregistered")
            db.execute(
                "UPDATE workers SET status = ? WHERE id = ?",
                (WorkerStatus.DEREGISTERING.value, worker_id),
            )
            reason = "worker deregistered by " + ("owner" if requested_by else "administrator")
            note = Notification(new_id(), worker_id, "deregister", reason, 0)
            db.execute(
                "INSERT INTO notifications (id, worker_id, kind, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (note.id, worker_id, note.kind, reason, now_ms),
            )
            db.notify(CHANGES_CHANNEL, f"worker_deregistered:{worker_id}")
            if origin is not None:
                self._audit(
                    db,
                    AuditEvent(
                        now_ms / 1000,
                        "worker_deregistered",
                        origin.actor,
                        worker_id,
                        origin.address,
                        {"by": "owner" if requested_by else "administrator"},
                    ),
                )
        return note

    def pending_notifications(self, worker_id: str) -> list[Notification]:
        rows = self._all(
            "SELECT id, worker_id, kind, reason, attempts FROM notifications "
            "WHERE worker_id = ? AND status = 'pending' ORDER BY created_at, id",
            (worker_id,),
        )
        return [Notification(*r) for r in rows]

    def notification_attempted(self, notification_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE notifications SET attempts = attempts + 1, status = CASE "
                "WHEN attempts + 1 >= ? THEN 'failed' ELSE status END WHERE id = ?",
                (MAX_NOTIFICATION_ATTEMPTS, notification_id),
            )

    def notification_delivered(self, notification_id: str, now_ms: int) -> None:
        """The worker acknowledged: a deregister notification marks the worker deleted."""
        with self._tx() as db:
            row = db.execute(
                f"SELECT worker_id, kind FROM notifications WHERE id = ?{self._db.for_update}",
                (notification_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"notification {notification_id} not found")
            db.execute(
                "UPDATE notifications SET status = 'delivered' WHERE id = ?", (notification_id,)
            )
            if row[1] == "deregister":
                db.execute(
                    "UPDATE workers SET status = ?, deleted_at = ? WHERE id = ?",
                    (WorkerStatus.DELETED.value, now_ms, row[0]),
                )

    def worker_statuses(self, worker_ids: Iterable[str]) -> dict[str, WorkerStatus]:
        """The status of each of ``worker_ids`` that exists (a missing id is left out).

        One query per :data:`BATCH` ids (a hub asks about all its worker links at once)."""
        out: dict[str, WorkerStatus] = {}
        for chunk in _chunks(worker_ids):
            marks = ", ".join("?" * len(chunk))
            rows = self._all(f"SELECT id, status FROM workers WHERE id IN ({marks})", chunk)
            out.update((r[0], WorkerStatus(r[1])) for r in rows)
        return out

    def deregistration_notice(self, worker_id: str, now_ms: int) -> Notification:
        """The deregister notification a DEREGISTERING worker is still to acknowledge.

        Whatever its attempt count (a notification marked ``failed`` after
        :data:`MAX_NOTIFICATION_ATTEMPTS` is still the one to deliver): the latest one not
        delivered, or a new one when there is none (a worker deregistered by an older
        release). :class:`FailedPrecondition` when the worker is not deregistering."""
        with self._tx() as db:
            row = db.execute(
                f"SELECT status FROM workers WHERE id = ?{self._db.for_update}", (worker_id,)
            ).fetchone()
            if row is None or row[0] != WorkerStatus.DEREGISTERING.value:
                raise FailedPrecondition(f"worker {worker_id} is not deregistering")
            found = db.execute(
                "SELECT id, worker_id, kind, reason, attempts FROM notifications "
                "WHERE worker_id = ? AND kind = 'deregister' AND status != 'delivered' "
                "ORDER BY created_at DESC, id LIMIT 1",
                (worker_id,),
            ).fetchone()
            if found is not None:
                return Notification(*found)
            note = Notification(new_id(), worker_id, "deregister", "worker deregistered", 0)
            db.execute(
                "INSERT INTO notifications (id, worker_id, kind, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (note.id, worker_id, note.kind, note.reason, now_ms),
            )
        return note

    def is_owner(self, worker_id: str, user_id: str) -> bool:
        row = self._one(
            "SELECT 1 FROM workers WHERE id = ? AND owner_id = ? AND status = ?",
            (worker_id, user_id, WorkerStatus.ACTIVE.value),
        )
        return row is not None

    def require_admin(self, user: User) -> None:
        if not user.is_admin:
            raise PermissionDenied("administrators only")

    # -- several hubs as one (leapcore.hub.cluster) -------------------------------------------
    # Portable SQL only (the PostgreSQL store runs the same statements): ``?`` placeholders,
    # ON CONFLICT upserts, no SQLite-only functions.

    def cluster_join(self, node_id: str, advertise: str, now_ms: int, lease_ms: int) -> None:
        """A hub process starts as ``node_id``: its lease row (re)made, and every presence
        row a previous run under the same name left dropped (it holds no link yet)."""
        with self._tx() as db:
            db.execute("DELETE FROM worker_presence WHERE node_id = ?", (node_id,))
            db.execute(
                "INSERT INTO hub_nodes (node_id, advertise, started_at, renewed_at, lease_until) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                "advertise = excluded.advertise, started_at = excluded.started_at, "
                "renewed_at = excluded.renewed_at, lease_until = excluded.lease_until, "
                "workers = 0, channels = 0",
                (node_id, advertise, now_ms, now_ms, now_ms + lease_ms),
            )

    def cluster_renew(
        self,
        node_id: str,
        now_ms: int,
        lease_ms: int,
        *,
        up: Mapping[str, tuple[int, str]] | None = None,
        down: Iterable[str] = (),
        channels: int = 0,
    ) -> ClusterTick:
        """One renewal tick of ``node_id``, in one transaction: the presence of the workers
        whose link came up (``up``: worker id -> (when, its owner's id); the latest link
        wins, whichever hub holds it) and went down
        (``down``: only rows this node still holds), every lease it holds renewed to
        ``now_ms + lease_ms``, its own row with its counts; then what it needs to know: the
        workers it still holds (one missing from it was taken over by another hub), the
        other live hubs and the workers online on them. Presence and hub rows expired for
        more than :data:`PRESENCE_RETENTION_MS` are deleted."""
        until = now_ms + lease_ms
        with self._tx() as db:
            db.executemany(
                "INSERT INTO worker_presence (worker_id, node_id, owner_id, linked_at, "
                "lease_until) VALUES (?, ?, ?, ?, ?) ON CONFLICT (worker_id) DO UPDATE SET "
                "node_id = excluded.node_id, owner_id = excluded.owner_id, "
                "linked_at = excluded.linked_at, lease_until = excluded.lease_until "
                "WHERE worker_presence.linked_at <= excluded.linked_at",
                [
                    (worker_id, node_id, owner_id, at, until)
                    for worker_id, (at, owner_id) in (up or {}).items()
                ],
            )
            db.executemany(
                "DELETE FROM worker_presence WHERE worker_id = ? AND node_id = ?",
                [(worker_id, node_id) for worker_id in down],
            )
            db.execute(
                "UPDATE worker_presence SET lease_until = ? WHERE node_id = ?", (until, node_id)
            )
            for table in ("worker_presence", "hub_nodes"):
                db.execute(
                    f"DELETE FROM {table} WHERE lease_until < ?",
                    (now_ms - PRESENCE_RETENTION_MS,),
                )
            held = {
                str(r[0])
                for r in db.execute(
                    "SELECT worker_id FROM worker_presence WHERE node_id = ?", (node_id,)
                ).fetchall()
            }
            db.execute(
                "UPDATE hub_nodes SET renewed_at = ?, lease_until = ?, workers = ?, channels = ? "
                "WHERE node_id = ?",
                (now_ms, until, len(held), channels, node_id),
            )
            remote = {
                str(r[0]): str(r[1])
                for r in db.execute(
                    "SELECT worker_id, owner_id FROM worker_presence "
                    "WHERE node_id != ? AND lease_until > ?",
                    (node_id, now_ms),
                ).fetchall()
            }
        peers = {n.node_id: n for n in self.cluster_nodes(now_ms) if n.node_id != node_id}
        return ClusterTick(held, remote, peers)

    def cluster_leave(self, node_id: str) -> None:
        """A hub process stops: its presence rows and its lease row are deleted."""
        with self._tx() as db:
            db.execute("DELETE FROM worker_presence WHERE node_id = ?", (node_id,))
            db.execute("DELETE FROM hub_nodes WHERE node_id = ?", (node_id,))

    def cluster_nodes(self, now_ms: int, *, include_expired: bool = False) -> list[ClusterNode]:
        """The hubs with a live lease (with ``include_expired``, every hub row), oldest
        first, each with how many workers it holds a live lease for."""
        rows = self._all(
            "SELECT n.node_id, n.advertise, n.started_at, n.renewed_at, n.lease_until, "
            "(SELECT COUNT(*) FROM worker_presence p "
            "WHERE p.node_id = n.node_id AND p.lease_until > ?), n.channels "
            "FROM hub_nodes n WHERE n.lease_until > ? ORDER BY n.started_at, n.node_id",
            (now_ms, -1 if include_expired else now_ms),
        )
        return [ClusterNode(str(r[0]), str(r[1]), *(int(v) for v in r[2:])) for r in rows]

    def worker_node(self, worker_id: str, now_ms: int) -> ClusterNode | None:
        """The live hub holding a live presence lease for ``worker_id``, or None."""
        row = self._one(
            "SELECT n.node_id, n.advertise, n.started_at, n.renewed_at, n.lease_until, "
            "n.workers, n.channels "
            "FROM worker_presence p JOIN hub_nodes n ON n.node_id = p.node_id "
            "WHERE p.worker_id = ? AND p.lease_until > ? AND n.lease_until > ?",
            (worker_id, now_ms, now_ms),
        )
        if row is None:
            return None
        return ClusterNode(str(row[0]), str(row[1]), *(int(v) for v in row[2:]))


#: Presence rows whose lease ended longer ago than this are deleted at a renewal (ms).
PRESENCE_RETENTION_MS: Final = 3_600_000


@attrs.frozen
class ClusterNode:
    """One hub process sharing this database (``hub_nodes``)."""

    node_id: str
    #: The HOST:PORT other hubs dial for hub-to-hub links ("" when it listens for none).
    advertise: str
    started_at: int
    #: When it last renewed its lease, and until when that lease runs (ms).
    renewed_at: int
    lease_until: int
    workers: int
    channels: int


@attrs.frozen
class ClusterTick:
    """What a renewal tick tells its hub (:meth:`HubStore.cluster_renew`)."""

    #: The workers this hub holds the presence of.
    held: set[str]
    #: The workers online (a live lease) on other hubs -> their owners' ids.
    remote: dict[str, str]
    #: The other hubs with a live lease, by node id.
    peers: dict[str, ClusterNode]


def _check_worker_cap(max_workers_per_user: int) -> None:
    if max_workers_per_user < 0:
        raise LocalError("max_workers_per_user must be >= 0 (0 = unlimited)")


class SQLiteHubStore(HubStore):
    """The hub's state in one SQLite file (WAL; :mod:`leapcore.store.sqlitedb`)."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_workers_per_user: int = DEFAULT_MAX_WORKERS_PER_USER,
        create: bool = True,
        timeout: float = 10.0,
        worker_token_lifetime_days: int = WORKER_TOKEN_LIFETIME_DAYS,
        api_token_lifetime_days: int = API_TOKEN_LIFETIME_DAYS,
    ) -> None:
        """Open (and migrate) the database at ``path``.

        With ``create`` (the default) a missing database is made: its directory with mode
        0700 when missing, the file itself with mode 0600. Without it, a missing file is a
        :class:`StorageError` and nothing is created. A file that is not SQLite, or an
        SQLite database of another application, is refused untouched. ``timeout`` is how
        long a write waits for another connection's write lock; every SQLite failure is a
        :class:`StorageError`. The rest: :class:`HubStore`."""
        _check_worker_cap(max_workers_per_user)  # before anything is opened or created
        self.path = Path(path)
        super().__init__(
            SQLiteDatabase(self.path, create=create, timeout=timeout),
            max_workers_per_user=max_workers_per_user,
            worker_token_lifetime_days=worker_token_lifetime_days,
            api_token_lifetime_days=api_token_lifetime_days,
        )


class PostgresHubStore(HubStore):
    """The hub's state in a PostgreSQL database (:mod:`leapcore.store.pgdb`), which
    several hubs may share."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_workers_per_user: int = DEFAULT_MAX_WORKERS_PER_USER,
        connect_timeout: float = 10.0,
        worker_token_lifetime_days: int = WORKER_TOKEN_LIFETIME_DAYS,
        api_token_lifetime_days: int = API_TOKEN_LIFETIME_DAYS,
    ) -> None:
        """Connect to ``url`` (``postgresql://…``) with at most ``pool_size`` connections,
        and migrate. The database must exist; it must be empty or a leapcore hub database.
        The rest: :class:`HubStore`."""
        _check_worker_cap(max_workers_per_user)  # before anything is opened or created
        from .pgdb import PostgresDatabase  # psycopg is loaded only when it is used

        super().__init__(
            PostgresDatabase(url, pool_size=pool_size, connect_timeout=connect_timeout),
            max_workers_per_user=max_workers_per_user,
            worker_token_lifetime_days=worker_token_lifetime_days,
            api_token_lifetime_days=api_token_lifetime_days,
        )


def is_postgres_location(location: str | Path) -> bool:
    """Whether a store location names PostgreSQL (``postgresql://``, ``postgres://``)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def open_hub_store(
    location: str | Path,
    *,
    create: bool = True,
    pool_size: int = DEFAULT_POOL_SIZE,
    **opts: Any,
) -> HubStore:
    """The hub store at ``location``: a ``postgresql://`` (or ``postgres://``) URL is
    PostgreSQL (``pool_size`` connections at most), anything else the path of an SQLite
    file (``create``: made when missing). ``opts``: those of :class:`HubStore`."""
    if is_postgres_location(location):
        return PostgresHubStore(str(location), pool_size=pool_size, **opts)
    return SQLiteHubStore(location, create=create, **opts)
