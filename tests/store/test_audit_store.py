"""The hub store's audit trail on SQLite and PostgreSQL: the migration that adds it, recording,
listing, filtering and pruning, the event vocabulary's rules, and no secret in the table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support.storekit import StoreMaker

from leapcore.errors import LocalError
from leapcore.proto.audit_events import (
    ADMIN_CLI,
    ANONYMOUS,
    DETAIL_FIELDS,
    MAX_DETAIL_BYTES,
    MAX_DETAIL_TEXT,
    AuditEvent,
    Origin,
    encode_detail,
)
from leapcore.store.hubstore import _MIGRATIONS, SCHEMA_VERSION, HubStore, SQLiteHubStore

T = 1_700_000_000_000
#: The migration that adds the audit trail (found by what it makes, not by its number).
AUDIT_MIGRATION = next(i for i, sql in enumerate(_MIGRATIONS) if "audit_events" in sql)


def rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM audit_events").fetchall()


def test_a_database_of_the_previous_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    db = sqlite3.connect(path, isolation_level=None)
    for sql in _MIGRATIONS[:AUDIT_MIGRATION]:
        db.executescript(sql)
    db.execute("INSERT INTO hub_meta (key, value) VALUES ('hub_id', '0123456789abcdef')")
    db.execute(
        "INSERT INTO users (id, name, is_admin, created_at) VALUES ('u' , 'alice', 1, ?)", (T,)
    )
    db.execute(f"PRAGMA user_version = {AUDIT_MIGRATION}")
    db.close()
    store = SQLiteHubStore(path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.hub_id == "0123456789abcdef"
    assert [u.name for u in store.list_users()] == ["alice"]  # kept
    assert store.list_audit() == []
    assert store.record_audit(AuditEvent(T / 1000, "token_refused", ANONYMOUS))
    with sqlite3.connect(path) as check:
        indexes = {
            r[0]
            for r in check.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_events'"
            )
        }
    assert indexes == {"audit_events_at", "audit_events_worker"}


def test_record_list_filter_and_prune(store: HubStore) -> None:
    at = T / 1000
    recorded = [
        AuditEvent(at, "worker_registered", "worker:w1", "w1", "10.0.0.1:5000", {"name": "a"}),
        AuditEvent(at + 10, "token_refused", ANONYMOUS, None, "10.0.0.2:1", {"reason": "x"}),
        AuditEvent(at + 20, "worker_replaced", "worker:w1", "w1", None),
        AuditEvent(at + 20, "worker_registered", "worker:w2", "w2"),
    ]
    for event in recorded:
        assert store.record_audit(event)
    listed = store.list_audit()
    # Newest first; equal times, the later recorded first.
    assert [(e.kind, e.worker_id) for e in listed] == [
        ("worker_registered", "w2"),
        ("worker_replaced", "w1"),
        ("token_refused", None),
        ("worker_registered", "w1"),
    ]
    assert [e.id for e in listed] == [4, 3, 2, 1]
    assert listed[3] == AuditEvent(
        at, "worker_registered", "worker:w1", "w1", "10.0.0.1:5000", {"name": "a"}, id=1
    )
    assert [e.id for e in store.list_audit(worker_id="w1")] == [3, 1]
    assert [e.id for e in store.list_audit(since=at + 10)] == [4, 3, 2]  # inclusive
    assert [e.id for e in store.list_audit(kind="worker_registered")] == [4, 1]
    assert [e.id for e in store.list_audit(worker_id="w1", since=at + 1)] == [3]
    assert [e.id for e in store.list_audit(limit=2)] == [4, 3]
    with pytest.raises(LocalError):
        store.list_audit(limit=0)
    assert store.prune_audit(at + 10) == 1  # strictly before
    assert [e.id for e in store.list_audit()] == [4, 3, 2]
    assert store.prune_audit(at + 10) == 0


def test_no_credential_reaches_the_audit_table(make_store: StoreMaker) -> None:
    store = make_store.open()
    origin = Origin(ADMIN_CLI)
    user, first = store.create_user("alice", T, origin=origin)
    second = store.create_token(user.id, T, origin=origin)
    store.revoke_token(store.find_token(second).id, T, origin=origin)
    record, key = store.mint_registration_key(user.id, T, origin=Origin("user:alice", "a:1"))
    worker, auth = store.register_worker(
        key, name="box", version="1.0", labels={}, now_ms=T, origin=Origin(ANONYMOUS, "b:2")
    )
    _, other = store.mint_registration_key(user.id, T, origin=origin)
    store.revoke_registration_key_by_ref(other, T, origin=origin)  # named by the key itself
    store.deregister_worker(worker.id, T, requested_by=None, origin=origin)
    kinds = [e.kind for e in reversed(store.list_audit())]
    assert kinds == [
        "api_token_created",
        "api_token_created",
        "api_token_revoked",
        "registration_key_created",
        "worker_registered",
        "registration_key_created",
        "registration_key_revoked",
        "worker_deregistered",
    ]
    [registered] = store.list_audit(kind="worker_registered")
    assert registered.detail["registration_key_id"] == record.id
    assert registered.address == "b:2"
    text = "\n".join(
        repr(cell) for row in make_store.raw("SELECT * FROM audit_events") for cell in row
    )
    for secret in (first, second, key, other, auth):
        assert secret not in text


def test_an_operation_without_origin_is_not_audited(store: HubStore) -> None:
    user, _ = store.create_user("alice", T)
    store.mint_registration_key(user.id, T)
    assert store.list_audit() == []


def test_a_failed_audit_insert_keeps_the_operation(make_store: StoreMaker) -> None:
    store = make_store.open()
    failures: list[None] = []
    store.on_audit_failure = lambda: failures.append(None)
    make_store.raw("DROP TABLE audit_events")
    user, token = store.create_user("alice", T, origin=Origin(ADMIN_CLI))
    assert store.authenticate_user(token, T) == user  # committed all the same
    assert not store.record_audit(AuditEvent(T / 1000, "token_refused", ANONYMOUS))
    assert len(failures) == 2


def test_the_vocabulary_is_closed_and_the_detail_bounded() -> None:
    with pytest.raises(ValueError, match="kind"):
        AuditEvent(0.0, "user_deleted", ANONYMOUS)
    for secret_field in ("token", "key", "registration_key", "auth_token"):
        with pytest.raises(ValueError, match="unknown field"):
            AuditEvent(0.0, "token_refused", ANONYMOUS, detail={secret_field: "x"})
    with pytest.raises(ValueError):
        AuditEvent(0.0, "token_refused", ANONYMOUS, detail={"reason": 1.5})  # type: ignore[dict-item]
    long = AuditEvent(0.0, "token_refused", "x" * 1000, address="", detail={"reason": "r" * 999})
    assert len(str(long.detail["reason"])) == MAX_DETAIL_TEXT
    assert long.address is None and len(long.actor) < 1000
    # The worst detail (every field, every character escaped) still fits the bound.
    worst = {name: "\x00" * 10_000 for name in DETAIL_FIELDS}
    event = AuditEvent(0.0, "token_refused", ANONYMOUS, detail=worst)
    assert len(encode_detail(event.detail).encode()) <= MAX_DETAIL_BYTES
