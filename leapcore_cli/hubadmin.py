"""``leapcore-hub admin …``: users, API tokens, workers and registration keys, offline.

Works directly on the hub's database (``<data dir>/hub.db``, or the ``store`` setting's
SQLite file or PostgreSQL URL) through :func:`~leapcore.store.hubstore.open_hub_store`,
whether or not the hub runs (SQLite is in WAL mode). This module parses, calls the store and
prints; every rule lives in the store. The data dir and the store come from
:func:`leapcore.store.config.hub_settings` (``--data-dir`` / ``--store`` >
``$LEAPCORE_HUB_DATA_DIR`` / ``$LEAPCORE_HUB_STORE`` > the config file > the default).

JSON schema (``--json``; stable, documented in docs/cli.md):

* ``info`` → ``{"hub_id": ID, "database": PATH_OR_URL, "schema_version": N, "users": N,
  "active_workers": N, "deregistering_workers": N}`` (a URL never shows its password)
* ``migrate`` → ``{"database": PATH_OR_URL, "from_version": N, "to_version": N}``
* ``user create`` / ``user token-create`` → ``{"user": USER, "token": SECRET, "token_id": ID}``
* ``user list`` → ``{"users": [USER, …]}``; ``user token-list`` →
  ``{"user": USER, "tokens": [TOKEN, …]}``; ``user token-revoke`` → ``{"revoked": ID}``
* ``worker list`` → ``{"workers": [WORKER, …]}``; ``worker get`` → ``{"worker": WORKER}``;
  ``worker deregister`` → ``{"deregistered": ID}``
* ``reg-key list`` → ``{"keys": [KEY, …]}``; ``reg-key revoke`` → ``{"revoked": ID}``;
  ``reg-key purge-expired`` → ``{"purged": N}``
* ``cluster status`` → ``{"hubs": [HUB, …], "live_hubs": N, "workers_online": N,
  "channels": N}``; HUB is ``{"node_id": ID, "advertise": "HOST:PORT" or "", "started_at":
  TIME, "renewed_at": TIME, "lease_until": TIME, "lease_age_ms": N, "live": BOOL, "workers":
  N, "channels": N}``, live hubs and those whose lease ran out (killed) alike, oldest first
* ``audit list`` → ``{"events": [EVENT, …]}``, newest first; EVENT is ``{"id": N, "at":
  TIME, "kind": KIND, "actor": TEXT, "worker_id": ID or null, "address": TEXT or null,
  "detail": {…}}``

What the admin CLI changes (users, tokens, deregistrations, key revocations) is recorded
in the audit trail with the actor ``admin-cli``.

Times are RFC 3339 UTC with milliseconds and omitted when absent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leapcore.errors import StorageError
from leapcore.proto.audit_events import ADMIN_CLI, KINDS, AuditEvent, Origin
from leapcore.store.config import hub_settings, hub_store_location
from leapcore.store.hubstore import (
    AUDIT_LIST_MAX,
    ApiToken,
    ClusterNode,
    HubStore,
    RegistrationKey,
    User,
    Worker,
    WorkerStatus,
    open_hub_store,
)

from .common import EXIT_OK, Parser, emit_json, print_table

STATUS_CHOICES = ("active", "deregistering", "deleted", "all")
#: What the admin CLI's changes are recorded as, in the audit trail.
ORIGIN = Origin(ADMIN_CLI)

Handler = Callable[[argparse.Namespace], int]


# -- time and text ---------------------------------------------------------------------------


def now_ms() -> int:
    """The real clock, in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def _utc(ms: int) -> dt.datetime:
    seconds, millis = divmod(ms, 1000)
    base = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    return base.replace(microsecond=millis * 1000)


def json_time(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC)."""
    u = _utc(ms)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond // 1000:03d}Z"
    )


def human_time(ms: int | None, absent: str = "-") -> str:
    """``YYYY-MM-DD HH:MM:SSZ`` (UTC), or ``absent``."""
    if ms is None:
        return absent
    return json_time(ms)[:19].replace("T", " ") + "Z"


def safe(text: str) -> str:
    """``text`` with control and other non-printable characters escaped: names and labels
    come from workers, and must not drive the administrator's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


# -- JSON shapes -----------------------------------------------------------------------------


def _put_time(doc: dict[str, Any], key: str, ms: int | None) -> None:
    if ms is not None:
        doc[key] = json_time(ms)


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "is_admin": user.is_admin,
        "created_at": json_time(user.created_at),
    }


def token_json(token: ApiToken) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": token.id, "user_id": token.user_id}
    _put_time(doc, "created_at", token.created_at)
    _put_time(doc, "last_used_at", token.last_used_at)
    _put_time(doc, "revoked_at", token.revoked_at)
    _put_time(doc, "expires_at", token.expires_at)
    return doc


def worker_json(worker: Worker) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": worker.id,
        "name": worker.name,
        "version": worker.version,
        "owner_id": worker.owner_id,
        "owner_name": worker.owner_name,
        "status": worker.status.value,
        "auto_registered": worker.auto_registered,
        "labels": dict(worker.labels),
    }
    _put_time(doc, "created_at", worker.created_at)
    _put_time(doc, "last_seen_at", worker.last_seen_at)
    _put_time(doc, "token_expires_at", worker.token_expires_at)
    if worker.encryption_mode is not None:
        doc["encryption_mode"] = worker.encryption_mode.value
    if worker.keys is not None:
        doc["fingerprint"] = worker.keys.fingerprint
    return doc


def key_json(key: RegistrationKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "created_by": key.created_by,
        "creator_name": key.creator_name,
        "created_at": json_time(key.created_at),
        "expires_at": json_time(key.expires_at),
    }


# -- the store -------------------------------------------------------------------------------


#: Connections the admin CLI opens to PostgreSQL at most (it makes one call at a time).
ADMIN_POOL_SIZE = 2


def open_store(args: argparse.Namespace, *, create: bool = False) -> HubStore:
    """The hub's database, found exactly as the hub finds it (and migrated); only ``user
    create`` may make a new SQLite file (so a mistyped ``--data-dir`` does not silently start
    an empty hub)."""
    flags = {
        key: value
        for key, value in (("data_dir", args.data_dir), ("store", args.store))
        if value is not None
    }
    settings, _ = hub_settings(
        flags=flags, env=os.environ, home=Path.home(), config_path=args.config
    )
    location = hub_store_location(settings)
    if isinstance(location, Path) and not create and not location.exists():
        raise StorageError(
            f"{location}: no hub database here (check --data-dir / --store / --config; "
            "`leapcore-hub admin user create NAME --admin` creates one)"
        )
    return open_hub_store(
        location,
        pool_size=ADMIN_POOL_SIZE,
        max_workers_per_user=settings["max_workers_per_user"],
        create=create,
        worker_token_lifetime_days=settings["worker_token_lifetime_days"],
        api_token_lifetime_days=settings["api_token_lifetime_days"],
    )


def _require_id(args: argparse.Namespace) -> str:
    value: str | None = args.id
    if not value:
        args.parser_error("--id is required")
    assert value is not None
    return value


# -- the hub --------------------------------------------------------------------------------


def hub_info(args: argparse.Namespace) -> int:
    """``admin info``: which hub this database is (its id, as workers record it), where it
    is, its schema version and how many users and workers it holds."""
    store = open_store(args)
    doc: dict[str, Any] = {
        "hub_id": store.hub_id,
        "database": store.location,
        "schema_version": store.schema_version,
        "users": len(store.list_users()),
        "active_workers": len(store.list_workers(status=WorkerStatus.ACTIVE)),
        "deregistering_workers": len(store.list_workers(status=WorkerStatus.DEREGISTERING)),
    }
    if args.json:
        emit_json(doc)
        return EXIT_OK
    fields = (
        ("hub id", doc["hub_id"]),
        ("database", safe(doc["database"])),
        ("schema version", str(doc["schema_version"])),
        ("users", str(doc["users"])),
        ("active workers", str(doc["active_workers"])),
        ("deregistering", str(doc["deregistering_workers"])),
    )
    for name, value in fields:
        print(f"{name:<16} {value}")
    return EXIT_OK


def hub_migrate(args: argparse.Namespace) -> int:
    """``admin migrate``: bring the database's schema up to this leapcore's (opening it does
    that; a hub does it at start too) and say from which version to which."""
    store = open_store(args)
    doc = {
        "database": store.location,
        "from_version": store.migrated_from,
        "to_version": store.schema_version,
    }
    store.close()
    if args.json:
        emit_json(doc)
    elif doc["from_version"] == doc["to_version"]:
        print(f"{safe(store.location)}: schema {doc['to_version']} is current; nothing to do")
    else:
        print(
            f"{safe(store.location)}: migrated schema {doc['from_version']} -> {doc['to_version']}"
        )
    return EXIT_OK


# -- the cluster ----------------------------------------------------------------------------


def node_json(node: ClusterNode, now: int) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "advertise": node.advertise,
        "started_at": json_time(node.started_at),
        "renewed_at": json_time(node.renewed_at),
        "lease_until": json_time(node.lease_until),
        "lease_age_ms": max(0, now - node.renewed_at),
        "live": node.lease_until > now,
        "workers": node.workers,
        "channels": node.channels,
    }


def cluster_status(args: argparse.Namespace) -> int:
    """``admin cluster status``: the hubs, live ones first counted in the totals."""
    store = open_store(args)
    now = now_ms()
    nodes = store.cluster_nodes(now, include_expired=True)
    hubs = [node_json(n, now) for n in nodes]
    live = [h for h in hubs if h["live"]]
    doc = {
        "hubs": hubs,
        "live_hubs": len(live),
        "workers_online": sum(h["workers"] for h in live),
        "channels": sum(h["channels"] for h in live),
    }
    if args.json:
        emit_json(doc)
        return EXIT_OK
    if not hubs:
        print("no hub has joined a cluster on this database")
        return EXIT_OK
    print_table(
        ("NODE", "ADVERTISE", "STARTED", "LEASE AGE", "STATE", "WORKERS", "CHANNELS"),
        [
            (
                safe(n.node_id),
                safe(n.advertise) or "-",
                human_time(n.started_at),
                f"{h['lease_age_ms'] / 1000:.1f}s",
                "live" if h["live"] else "expired",
                str(n.workers),
                str(n.channels),
            )
            for n, h in zip(nodes, hubs, strict=True)
        ],
    )
    print(
        f"{doc['live_hubs']} live hubs, {doc['workers_online']} workers online, "
        f"{doc['channels']} channels"
    )
    return EXIT_OK


# -- users and tokens ------------------------------------------------------------------------

_TOKEN_ONCE = """\
The token is shown only this once: the hub keeps nothing but a digest of it, so
store it now (e.g. in a password manager). If it is lost, make another and revoke
this one:
  leapcore-hub admin user token-create {name}
  leapcore-hub admin user token-revoke --id {token_id}"""


def _print_token(user: User, token: str, token_id: str) -> None:
    print(f"API token  {token}")
    print(f"token id   {token_id}")
    print()
    print(_TOKEN_ONCE.format(name=shlex.quote(safe(user.name)), token_id=token_id))


def user_create(args: argparse.Namespace) -> int:
    store = open_store(args, create=True)
    user, token = store.create_user(args.name, now_ms(), is_admin=args.admin, origin=ORIGIN)
    token_id = store.find_token(token).id
    if args.json:
        emit_json({"user": user_json(user), "token": token, "token_id": token_id})
        return EXIT_OK
    role = "administrator" if user.is_admin else "user"
    print(f"created {role} {safe(user.name)} (id {user.id})")
    _print_token(user, token, token_id)
    return EXIT_OK


def user_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    users = store.list_users()
    if args.json:
        emit_json({"users": [user_json(u) for u in users]})
    elif not users:
        print(f"no users in {store.location}")
    else:
        print_table(
            ("ID", "NAME", "ADMIN", "CREATED"),
            [
                (u.id, safe(u.name), "yes" if u.is_admin else "no", human_time(u.created_at))
                for u in users
            ],
        )
    return EXIT_OK


def token_create(args: argparse.Namespace) -> int:
    store = open_store(args)
    user = store.get_user(args.user)
    token = store.create_token(user.id, now_ms(), origin=ORIGIN)
    token_id = store.find_token(token).id
    if args.json:
        emit_json({"user": user_json(user), "token": token, "token_id": token_id})
        return EXIT_OK
    print(f"new API token for {safe(user.name)} (id {user.id})")
    _print_token(user, token, token_id)
    return EXIT_OK


def token_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    user = store.get_user(args.user)
    tokens = store.list_tokens(user.id)
    if args.json:
        emit_json({"user": user_json(user), "tokens": [token_json(t) for t in tokens]})
    elif not tokens:
        print(f"{safe(user.name)} has no API tokens")
    else:
        print_table(
            ("TOKEN ID", "CREATED", "LAST USED", "REVOKED", "EXPIRES"),
            [
                (
                    t.id,
                    human_time(t.created_at),
                    human_time(t.last_used_at, "never"),
                    human_time(t.revoked_at),
                    human_time(t.expires_at, "never"),
                )
                for t in tokens
            ],
        )
    return EXIT_OK


def token_revoke(args: argparse.Namespace) -> int:
    token_id = _require_id(args)
    open_store(args).revoke_token(token_id, now_ms(), origin=ORIGIN)
    if args.json:
        emit_json({"revoked": token_id})
    else:
        print(f"revoked API token {token_id}")
    return EXIT_OK


# -- workers ---------------------------------------------------------------------------------


def _status_filter(args: argparse.Namespace) -> WorkerStatus | None:
    text = args.status.strip().lower()
    if text in ("", "all"):
        return None
    try:
        return WorkerStatus(text)
    except ValueError:
        args.parser_error(
            f"unknown worker status: {args.status} (use: {', '.join(STATUS_CHOICES)})"
        )
        raise  # pragma: no cover - parser_error exits


def worker_list(args: argparse.Namespace) -> int:
    status = _status_filter(args)
    store = open_store(args)
    owner_id = store.get_user(args.user).id if args.user else None
    workers = store.list_workers(owner_id=owner_id, status=status)
    if args.json:
        emit_json({"workers": [worker_json(w) for w in workers]})
    elif not workers:
        which = status.value if status is not None else "known"
        print(f"no {which} workers" + (f" owned by {safe(args.user)}" if args.user else ""))
    else:
        print_table(
            ("ID", "NAME", "OWNER", "STATUS", "CREATED", "LAST SEEN", "TOKEN EXPIRES"),
            [
                (
                    w.id,
                    safe(w.name) + (" (auto)" if w.auto_registered else ""),
                    safe(w.owner_name),
                    w.status.value,
                    human_time(w.created_at),
                    human_time(w.last_seen_at, "never"),
                    human_time(w.token_expires_at, "never"),
                )
                for w in workers
            ],
        )
    return EXIT_OK


def worker_get(args: argparse.Namespace) -> int:
    worker_id = _require_id(args)
    w = open_store(args).get_worker(worker_id)
    if args.json:
        emit_json({"worker": worker_json(w)})
        return EXIT_OK
    labels = ", ".join(f"{safe(k)}={safe(v)}" for k, v in sorted(w.labels.items()))
    fields = (
        ("id", w.id),
        ("name", safe(w.name)),
        ("version", safe(w.version)),
        ("owner", f"{safe(w.owner_name)} (id {w.owner_id})"),
        ("status", w.status.value),
        ("auto-registered", "yes" if w.auto_registered else "no"),
        ("created", human_time(w.created_at)),
        ("last seen", human_time(w.last_seen_at, "never")),
        ("token expires", human_time(w.token_expires_at, "never")),
        ("encryption", w.encryption_mode.value if w.encryption_mode else "unknown"),
        ("fingerprint", w.keys.fingerprint if w.keys else "unknown (no keys reported yet)"),
        ("labels", labels or "none"),
    )
    for name, value in fields:
        print(f"{name:<16} {value}")
    return EXIT_OK


def worker_deregister(args: argparse.Namespace) -> int:
    worker_id = _require_id(args)
    open_store(args).deregister_worker(worker_id, now_ms(), requested_by=None, origin=ORIGIN)
    if args.json:
        emit_json({"deregistered": worker_id})
    else:
        print(
            f"worker {worker_id} is now deregistering: it is told when it next connects, "
            "and deleted once it acknowledges"
        )
    return EXIT_OK


# -- registration keys -----------------------------------------------------------------------


def key_list(args: argparse.Namespace) -> int:
    now = now_ms()
    keys = open_store(args).list_registration_keys(now, include_expired=args.include_expired)
    if args.json:
        emit_json({"keys": [key_json(k) for k in keys]})
    elif not keys:
        print("no registration keys" if args.include_expired else "no live registration keys")
    else:
        print_table(
            ("ID", "KEY", "CREATED BY", "CREATED", "EXPIRES", "STATE"),
            [
                (
                    k.id,
                    f"{k.prefix}\u2026" if k.prefix else "-",
                    safe(k.creator_name) or k.created_by,
                    human_time(k.created_at),
                    human_time(k.expires_at),
                    "live" if k.expires_at > now else "expired",
                )
                for k in keys
            ],
        )
    return EXIT_OK


def key_revoke(args: argparse.Namespace) -> int:
    # Its id (from list) or the key itself (a leaked key is revoked by its value).
    key_id = open_store(args).revoke_registration_key_by_ref(
        _require_id(args), now_ms(), origin=ORIGIN
    )
    if args.json:
        emit_json({"revoked": key_id})
    else:
        print(f"revoked registration key {key_id}")
    return EXIT_OK


def key_purge(args: argparse.Namespace) -> int:
    purged = open_store(args).purge_expired_registration_keys(now_ms())
    if args.json:
        emit_json({"purged": purged})
    else:
        print(f"purged {purged} expired or revoked registration key{'s' if purged != 1 else ''}")
    return EXIT_OK


# -- the audit trail -------------------------------------------------------------------------

#: A relative ``--since``: a count and a unit (seconds, minutes, hours, days, weeks).
_RELATIVE = re.compile(r"(\d{1,9})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Events ``audit list`` shows when no ``--limit`` is given.
AUDIT_LIMIT_DEFAULT = 100


def parse_since(text: str, now: float) -> float | None:
    """``--since`` as seconds since the epoch: a duration back from ``now`` (``90s``,
    ``15m``, ``2h``, ``7d``, ``1w``) or an ISO-8601 date or time (UTC unless it names an
    offset); None when it is neither."""
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative is not None:
        return now - int(relative[1]) * _UNIT_SECONDS[relative[2]]
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def audit_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": json_time(round(event.at * 1000)),
        "kind": event.kind,
        "actor": event.actor,
        "worker_id": event.worker_id,
        "address": event.address,
        "detail": dict(event.detail),
    }


def _detail_text(event: AuditEvent) -> str:
    """``key=value …``, sorted; a text as it is (escaped), a number or flag as in JSON."""
    return " ".join(
        f"{key}={safe(value) if isinstance(value, str) else json.dumps(value)}"
        for key, value in sorted(event.detail.items())
    )


def audit_list(args: argparse.Namespace) -> int:
    since = None
    if args.since is not None:
        since = parse_since(args.since, time.time())
        if since is None:
            args.parser_error(
                f"--since: {args.since!r} is neither a duration (e.g. 90s, 15m, 2h, 7d, 1w) "
                "nor an ISO-8601 time (e.g. 2026-01-31 or 2026-01-31T12:00:00Z)"
            )
    if args.kind is not None and args.kind not in KINDS:
        args.parser_error(f"--kind: unknown event kind {args.kind!r} (one of {', '.join(KINDS)})")
    if not 1 <= args.limit <= AUDIT_LIST_MAX:
        args.parser_error(f"--limit must be between 1 and {AUDIT_LIST_MAX}")
    events = open_store(args).list_audit(
        since=since, worker_id=args.worker, kind=args.kind, limit=args.limit
    )
    if args.json:
        emit_json({"events": [audit_json(e) for e in events]})
    elif not events:
        filtered = args.since or args.worker or args.kind
        print("no matching audit events" if filtered else "no audit events")
    else:
        print_table(
            ("TIME", "KIND", "ACTOR", "WORKER", "ADDRESS", "DETAIL"),
            [
                (
                    json_time(round(e.at * 1000)),
                    e.kind,
                    safe(e.actor),
                    e.worker_id or "-",
                    safe(e.address or "-"),
                    _detail_text(e) or "-",
                )
                for e in events
            ],
        )
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------


def _common_flags(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``, ``--config`` and ``--json``, accepted at every level (``admin --json
    user list`` and ``admin user list --json`` alike): SUPPRESS keeps a level that was not
    given from overwriting one that was."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the hub's data directory, holding hub.db (default: $LEAPCORE_HUB_DATA_DIR, then "
        "the config file's data_dir, then ~/.config/leapcore/hub)",
    )
    parser.add_argument(
        "--store",
        metavar="PATH_OR_URL",
        default=argparse.SUPPRESS,
        help="the hub's database: postgresql://USER@HOST/DB, or an SQLite file (default: "
        "$LEAPCORE_HUB_STORE, then the config file's store, then hub.db in the data directory)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=argparse.SUPPRESS,
        help="hub config file (default: ~/.config/leapcore/hub/hub.toml if it exists)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document on stdout (for scripts)",
    )


def _verb(
    group: Any,
    name: str,
    text: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=text, description=text)
    _common_flags(parser)
    parser.set_defaults(handler=handler, parser_error=parser.error)
    return parser


def _group(groups: Any, name: str, text: str) -> Any:
    """A group of verbs under ``admin`` (``user``, ``worker``, …); returns its subparsers."""
    group = groups.add_parser(name, help=text)
    _common_flags(group)
    return group.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)


def add_parser(sub: Any) -> None:
    """Add ``admin`` and its verbs under ``leapcore-hub``'s subcommands."""
    admin = sub.add_parser(
        "admin",
        help="manage users, API tokens, workers and registration keys; read the audit trail "
        "(offline)",
        description="Manage the hub's users, API tokens, workers and registration keys. "
        "Works directly on the hub's database, whether or not the hub is running.",
    )
    _common_flags(admin)
    admin.set_defaults(data_dir=None, store=None, config=None, json=False)
    groups = admin.add_subparsers(dest="group", metavar="GROUP", required=True, parser_class=Parser)

    _verb(
        groups,
        "info",
        "show this hub's id, database, schema version and counts of users and workers",
        hub_info,
    )
    _verb(
        groups,
        "migrate",
        "bring the database's schema up to this leapcore's (a hub does it at start too)",
        hub_migrate,
    )

    verbs = _group(groups, "user", "users and their API tokens")
    p = _verb(
        verbs, "create", "create a user and print its first API token (shown once)", user_create
    )
    p.add_argument("name", metavar="NAME", help="the user's name (1-64 printable characters)")
    p.add_argument("--admin", action="store_true", help="make the user an administrator")
    _verb(verbs, "list", "list the users", user_list)
    p = _verb(verbs, "token-create", "make another API token for a user (shown once)", token_create)
    p.add_argument("user", metavar="NAME_OR_ID", help="the user's name or id")
    p = _verb(
        verbs, "token-list", "list a user's API tokens (ids and times; never secrets)", token_list
    )
    p.add_argument("user", metavar="NAME_OR_ID", help="the user's name or id")
    p = _verb(verbs, "token-revoke", "revoke an API token", token_revoke)
    p.add_argument("--id", metavar="TOKEN_ID", help="the token's id (from token-list)")

    verbs = _group(groups, "worker", "registered workers")
    p = _verb(verbs, "list", "list workers (oldest first)", worker_list)
    p.add_argument(
        "--status",
        default="active",
        metavar="STATUS",
        help=f"one of {', '.join(STATUS_CHOICES)} (default: active)",
    )
    p.add_argument("--user", metavar="NAME_OR_ID", help="only this user's workers")
    p = _verb(verbs, "get", "show one worker, whatever its status", worker_get)
    p.add_argument("--id", metavar="ID", help="the worker's id")
    p = _verb(
        verbs,
        "deregister",
        "deregister an active worker (any owner's, the auto-registered one included)",
        worker_deregister,
    )
    p.add_argument("--id", metavar="ID", help="the worker's id")

    verbs = _group(
        groups, "reg-key", "registration keys (there is no create: a signed-in user mints them)"
    )
    p = _verb(verbs, "list", "list registration keys, newest first", key_list)
    p.add_argument(
        "--include-expired",
        action="store_true",
        help="also list expired, consumed and revoked keys (default: live keys only)",
    )
    p = _verb(verbs, "revoke", "expire a registration key now", key_revoke)
    p.add_argument("--id", metavar="ID", help="the key's id (from list), or the key itself")
    _verb(verbs, "purge-expired", "delete expired, consumed and revoked keys", key_purge)

    verbs = _group(groups, "cluster", "the hubs sharing this database")
    _verb(
        verbs,
        "status",
        "list the hubs: node id, advertised address, started, lease age, workers, channels",
        cluster_status,
    )

    verbs = _group(groups, "audit", "the hub's audit trail of security events")
    p = _verb(verbs, "list", "list recorded security events, newest first", audit_list)
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only events at or after WHEN: a duration back from now (90s, 15m, 2h, 7d, 1w) "
        "or an ISO-8601 time (UTC unless it names an offset)",
    )
    p.add_argument("--worker", metavar="ID", help="only events about this worker")
    p.add_argument("--kind", metavar="KIND", help=f"only events of this kind ({', '.join(KINDS)})")
    p.add_argument(
        "--limit",
        type=int,
        default=AUDIT_LIMIT_DEFAULT,
        metavar="N",
        help=f"at most N events, the newest (default: {AUDIT_LIMIT_DEFAULT})",
    )
