"""Token expiry and worker token rotation in the hub's store (schema 5): the migration from
schema 4, expiry of worker and API tokens, a rotation's pending token, its promotion and the
retirement of the old token, and their audit rows."""

from __future__ import annotations

import hashlib
import time

from support.helpers import expect
from support.storekit import StoreMaker

from leapcore.errors import NotFound, TokenExpired, Unauthenticated
from leapcore.proto.audit_events import Origin
from leapcore.proto.limits import DAY_MS
from leapcore.store.hubstore import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    HubStore,
    utc_text,
)

T = 1_700_000_000_000
ORIGIN = Origin("worker:x", "10.0.0.9:5000")


def registered(store: HubStore, at: int = T) -> tuple[str, str]:
    user, _ = store.create_user(f"u{at}", at)
    _, key = store.mint_registration_key(user.id, at)
    worker, token = store.register_worker(key, name="box", version="1.0", labels={}, now_ms=at)
    return worker.id, token


def test_schema_5_is_the_token_migration() -> None:
    assert SCHEMA_VERSION >= 5  # (6: several hubs as one)
    assert "token_expires_at" in _MIGRATIONS[4] and "pending_token_hash" in _MIGRATIONS[4]


def test_a_schema_4_database_gets_expiries_from_the_migration_time(make_store: StoreMaker) -> None:
    """Live tokens made before schema 5 expire the default 90 days after the upgrade (none
    is locked out by it); a deleted worker's and a revoked token's expiry stays NULL."""
    make_store.at_schema(4)
    raw = make_store.raw
    raw("INSERT INTO hub_meta (key, value) VALUES ('hub_id', '0123456789abcdef')")
    raw("INSERT INTO users (id, name, created_at) VALUES ('u', 'alice', ?)", (T,))
    digest = hashlib.sha256(b"old-worker-token").digest()
    for wid, token_hash, status in (
        ("w1", digest, "active"),
        ("w2", hashlib.sha256(b"gone").digest(), "deleted"),
    ):
        raw(
            "INSERT INTO workers (id, owner_id, token_hash, name, version, status, created_at) "
            "VALUES (?, 'u', ?, ?, '1.0', ?, ?)",
            (wid, token_hash, wid, status, T),
        )
    for tid, secret, revoked in (("t1", b"api-live", None), ("t2", b"api-revoked", T)):
        raw(
            "INSERT INTO api_tokens (id, user_id, token_hash, created_at, revoked_at) "
            "VALUES (?, 'u', ?, ?, ?)",
            (tid, hashlib.sha256(secret).digest(), T, revoked),
        )
    before = int(time.time() * 1000)
    store = make_store.open()
    after = int(time.time() * 1000)
    assert store.schema_version == SCHEMA_VERSION
    live = store.get_worker("w1").token_expires_at
    assert live is not None
    # strftime('%s') has whole seconds.
    assert before - 1000 + 90 * DAY_MS <= live <= after + 90 * DAY_MS
    assert store.get_worker("w2").token_expires_at is None
    tokens = {t.id: t for t in store.list_tokens("alice")}
    api_expiry = tokens["t1"].expires_at
    assert api_expiry is not None and abs(api_expiry - live) < 2000
    assert tokens["t2"].expires_at is None
    # The old token still works right after the upgrade.
    assert store.authenticate_worker("old-worker-token", after).id == "w1"
    assert store.authenticate_user("api-live", after).name == "alice"


def test_new_tokens_expire_after_the_configured_lifetime(make_store: StoreMaker) -> None:
    store = make_store.open(worker_token_lifetime_days=30, api_token_lifetime_days=10)
    user, api = store.create_user("alice", T)
    assert store.find_token(api).expires_at == T + 10 * DAY_MS
    _, key = store.mint_registration_key(user.id, T)
    worker, _ = store.register_worker(key, name="box", version="1.0", labels={}, now_ms=T)
    assert worker.token_expires_at == T + 30 * DAY_MS


def test_an_expired_worker_token_is_refused_saying_when(store: HubStore) -> None:
    worker_id, token = registered(store)
    expiry = T + 90 * DAY_MS
    assert store.authenticate_worker(token, expiry - 1).id == worker_id
    exc = expect(
        TokenExpired, "^worker token expired on ", store.authenticate_worker, token, expiry
    )
    assert utc_text(expiry) in str(exc)
    assert isinstance(exc, Unauthenticated)  # who catches Unauthenticated still refuses it
    assert exc.code == "token_expired"


def test_an_expired_api_token_is_refused_saying_so(store: HubStore) -> None:
    _, token = store.create_user("alice", T)
    expiry = T + 90 * DAY_MS
    assert store.authenticate_user(token, expiry - 1).name == "alice"
    expect(
        TokenExpired,
        rf"^API token expired on {utc_text(expiry)}; ask an administrator for a new one",
        store.authenticate_client,
        token,
        expiry,
    )


def test_rotation_keeps_both_tokens_until_the_ack_then_retires_the_old(
    store: HubStore,
) -> None:
    worker_id, old = registered(store)
    now = T + 85 * DAY_MS
    new, expires_at = store.offer_worker_token(worker_id, now)
    assert expires_at == now + 90 * DAY_MS
    assert new != old and len(new) == 48
    assert store.pending_token_expiry(worker_id) == expires_at
    # The old token still works (the worker may not have saved the new one).
    assert store.authenticate_worker(old, now).id == worker_id
    assert store.get_worker(worker_id).token_expires_at == T + 90 * DAY_MS
    assert store.promote_worker_token(worker_id, new, now, origin=ORIGIN)
    assert store.pending_token_expiry(worker_id) is None
    assert store.get_worker(worker_id).token_expires_at == expires_at
    expect(Unauthenticated, "^invalid auth token$", store.authenticate_worker, old, now)
    assert store.authenticate_worker(new, now).id == worker_id
    # Promoting again, or another token, changes nothing.
    assert not store.promote_worker_token(worker_id, new, now)
    assert not store.promote_worker_token(worker_id, old, now)
    [event] = store.list_audit(kind="worker_token_rotated")
    assert (event.actor, event.worker_id, event.detail) == (
        f"worker:{worker_id}",
        worker_id,
        {"reason": "acknowledged"},
    )


def test_connecting_with_the_pending_token_completes_the_rotation(
    store: HubStore,
) -> None:
    """A lost ack (or a crash after the save): the pending token signs in and is promoted."""
    worker_id, old = registered(store)
    now = T + 85 * DAY_MS
    new, expires_at = store.offer_worker_token(worker_id, now)
    assert store.authenticate_worker(new, now, origin=ORIGIN).token_expires_at == expires_at
    expect(Unauthenticated, "^invalid auth token$", store.authenticate_worker, old, now)
    assert store.pending_token_expiry(worker_id) is None
    [event] = store.list_audit(kind="worker_token_rotated")
    assert event.detail == {"reason": "used at connect"}


def test_a_second_offer_replaces_the_first(store: HubStore) -> None:
    """The worker did not save the first (it connected with the old token again)."""
    worker_id, old = registered(store)
    now = T + 85 * DAY_MS
    first, _ = store.offer_worker_token(worker_id, now)
    second, _ = store.offer_worker_token(worker_id, now + 1)
    expect(Unauthenticated, "^invalid auth token$", store.authenticate_worker, first, now)
    assert not store.promote_worker_token(worker_id, first, now)
    assert store.promote_worker_token(worker_id, second, now)
    expect(Unauthenticated, "^invalid auth token$", store.authenticate_worker, old, now)


def test_the_pending_token_works_even_when_the_old_one_expired(store: HubStore) -> None:
    worker_id, old = registered(store)
    offered_at = T + 85 * DAY_MS
    new, _ = store.offer_worker_token(worker_id, offered_at)
    late = T + 91 * DAY_MS
    expect(TokenExpired, "^worker token expired", store.authenticate_worker, old, late)
    assert store.authenticate_worker(new, late).id == worker_id


def test_only_an_active_worker_is_offered_a_token(store: HubStore) -> None:
    worker_id, _ = registered(store)
    store.deregister_worker(worker_id, T, requested_by=None)
    expect(NotFound, "not found", store.offer_worker_token, worker_id, T)
    expect(NotFound, "not found", store.offer_worker_token, "nope", T)


def test_a_deregistering_workers_expired_token_still_signs_in(store: HubStore) -> None:
    """So that it can be sent its deregister and retire its identity (freeing its name)."""
    worker_id, token = registered(store)
    late = T + 100 * DAY_MS
    expect(TokenExpired, "^worker token expired", store.authenticate_worker, token, late)
    store.deregister_worker(worker_id, late, requested_by=None)
    assert store.authenticate_worker(token, late).status.value == "deregistering"
