"""The hub store on SQLite and on PostgreSQL (``make_store``, ``store``: tests/store/conftest.py):
real database files, a real server, real processes for the race."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from support.helpers import expect
from support.storekit import StoreMaker

from leapcore.crypto.keys import PublicKeyBundle
from leapcore.crypto.mode import EncryptionMode
from leapcore.errors import (
    AlreadyExists,
    FailedPrecondition,
    LocalError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    StorageError,
    Unauthenticated,
    WorkerDeleted,
)
from leapcore.proto.limits import ID_LENGTH, REG_KEY_EXTEND_WINDOW_MS, REG_KEY_LIFETIME_MS
from leapcore.store.hubstore import (
    ALPHABET,
    HUB_ID_HEX,
    KEY_PREFIX_LENGTH,
    SCHEMA_VERSION,
    HubStore,
    Notification,
    SQLiteHubStore,
    WorkerStatus,
    new_id,
    open_hub_store,
)

T = 1_700_000_000_000
MIN = 60_000


def register(store: HubStore, user_id: str, now: int = T, **kw: object):  # type: ignore[no-untyped-def]
    _, key = store.mint_registration_key(user_id, now)
    name = kw.pop("name", f"box-{key[:8]}")  # names are unique per owner
    return store.register_worker(key, name=name, version="0.1.0", labels={}, now_ms=now, **kw)


def test_ids_are_48_alphanumerics() -> None:
    ids = {new_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == ID_LENGTH and set(i) <= set(ALPHABET) for i in ids)


def test_schema_is_migrated_and_versioned(make_store: StoreMaker) -> None:
    store = make_store.open()
    assert (store.migrated_from, store.schema_version) == (0, SCHEMA_VERSION)
    store.close()
    again = make_store.open()  # reopening migrates nothing
    assert (again.migrated_from, again.schema_version) == (SCHEMA_VERSION, SCHEMA_VERSION)


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    SQLiteHubStore(tmp_path / "hub.db").close()
    mode = sqlite3.connect(tmp_path / "hub.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "hub.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    expect(StorageError, "is newer than this leapcore", SQLiteHubStore, tmp_path / "hub.db")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    path.write_bytes(b"not a database" * 100)
    expect(StorageError, "cannot open the hub database", SQLiteHubStore, path)
    assert path.read_bytes() == b"not a database" * 100


def test_users_and_tokens(store: HubStore) -> None:
    user, token = store.create_user("alice", T)
    assert store.authenticate_user(token, T + 1) == user
    second = store.create_token("alice", T + 2)
    assert store.authenticate_user(second, T + 3).id == user.id
    tokens = store.list_tokens(user.id)
    assert len(tokens) == 2 and tokens[0].last_used_at == T + 1
    store.revoke_token(tokens[0].id, T + 4)
    expect(Unauthenticated, "^invalid API token$", store.authenticate_user, token, T + 5)
    assert store.authenticate_user(second, T + 5).name == "alice"
    expect(NotFound, "no live API token", store.revoke_token, tokens[0].id, T + 6)
    expect(FailedPrecondition, "already exists", store.create_user, "alice", T)
    expect(LocalError, "1-64 printable", store.create_user, " ", T)
    expect(NotFound, "no user 'bob'", store.create_token, "bob", T)


def test_tokens_are_stored_hashed(tmp_path: Path) -> None:
    store = SQLiteHubStore(tmp_path / "hub.db")
    _, token = store.create_user("alice", T)
    _, key = store.mint_registration_key(store.get_user("alice").id, T)
    _, auth = store.register_worker(key, name="n", version="1", labels={}, now_ms=T)
    raw = (tmp_path / "hub.db").read_bytes() + (tmp_path / "hub.db-wal").read_bytes()
    for secret in (token, key, auth):
        assert secret.encode() not in raw


def test_registration_key_lifetime_and_extension(store: HubStore) -> None:
    user, _ = store.create_user("alice", T)
    record, key = store.mint_registration_key(user.id, T)
    assert record.expires_at == T + REG_KEY_LIFETIME_MS == T + 5 * MIN
    # Extension only when less than 2 minutes remain.
    expect(
        FailedPrecondition,
        "^extension not allowed yet$",
        store.extend_registration_key,
        user.id,
        key,
        T + 3 * MIN,
    )
    assert REG_KEY_EXTEND_WINDOW_MS == 2 * MIN
    new_expiry = store.extend_registration_key(user.id, key, T + 3 * MIN + 1)
    assert new_expiry == T + 8 * MIN + 1
    expect(
        FailedPrecondition, "has expired", store.extend_registration_key, user.id, key, new_expiry
    )
    other, _ = store.create_user("mallory", T)
    expect(
        NotFound, "^registration key not found$", store.extend_registration_key, other.id, key, T
    )
    expect(LocalError, "required", store.extend_registration_key, user.id, "", T)


def test_registration_consumes_the_key_once(store: HubStore) -> None:
    user, _ = store.create_user("alice", T)
    _, key = store.mint_registration_key(user.id, T)
    worker, token = store.register_worker(
        key, name="box", version="0.1.0", labels={"os": "linux"}, now_ms=T + 1
    )
    assert worker.owner_id == user.id and worker.status is WorkerStatus.ACTIVE
    assert worker.labels == {"os": "linux"} and len(token) == ID_LENGTH
    assert store.registration_key_state(user.id, key, T + 2) == "consumed"
    expect(
        Unauthenticated,
        "^registration key invalid or already consumed$",
        store.register_worker,
        key,
        name="again",
        version="1",
        labels={},
        now_ms=T + 2,
    )
    # A consumed key cannot be extended back to life.
    expect(FailedPrecondition, "expired", store.extend_registration_key, user.id, key, T + 2)


def test_expired_and_revoked_keys_do_not_register(store: HubStore) -> None:
    user, _ = store.create_user("alice", T)
    record, key = store.mint_registration_key(user.id, T)
    kwargs = {"name": "n", "version": "1", "labels": {}}
    expect(
        Unauthenticated,
        "invalid or already",
        store.register_worker,
        key,
        now_ms=record.expires_at,
        **kwargs,
    )
    assert store.registration_key_state(user.id, key, record.expires_at) == "expired"
    _, key2 = store.mint_registration_key(user.id, T)
    store.revoke_registration_key_by_secret(user.id, key2, T + 1)
    expect(
        Unauthenticated, "invalid or already", store.register_worker, key2, now_ms=T + 2, **kwargs
    )
    expect(
        Unauthenticated,
        "^registration key required$",
        store.register_worker,
        "",
        now_ms=T,
        **kwargs,
    )


def test_worker_cap_refuses_without_consuming(make_store: StoreMaker) -> None:
    store = make_store.open(max_workers_per_user=2)
    user, _ = store.create_user("alice", T)
    register(store, user.id)
    register(store, user.id)
    _, key = store.mint_registration_key(user.id, T)
    expect(
        QuotaExceeded,
        r"^this account already has 2 workers registered, which is the configured maximum",
        store.register_worker,
        key,
        name="third",
        version="1",
        labels={},
        now_ms=T,
    )
    assert store.registration_key_state(user.id, key, T) == "live"  # not consumed
    unlimited = make_store.open(max_workers_per_user=0)
    unlimited.register_worker(key, name="third", version="1", labels={}, now_ms=T)
    assert len(unlimited.list_workers(owner_id=user.id)) == 3


def _race(
    path: str, key: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    store = open_hub_store(path)  # a connection of its own, as another hub's
    start.wait()
    try:
        worker, _ = store.register_worker(key, name="racer", version="1", labels={}, now_ms=T + 1)
        out.put(("won", worker.id))
    except Unauthenticated as exc:
        out.put(("lost", str(exc)))


def test_four_racers_for_one_key_exactly_one_wins(make_store: StoreMaker) -> None:
    """Four processes, each with its own store (as four hubs on one database)."""
    path = make_store.location()
    store = make_store.open()
    user, _ = store.create_user("alice", T)
    _, key = store.mint_registration_key(user.id, T)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, key, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    outcomes = sorted(r[0] for r in results)
    assert outcomes == ["lost", "lost", "lost", "won"]
    assert all(
        r[1] == "registration key invalid or already consumed" for r in results if r[0] == "lost"
    )
    assert [w.id for w in store.list_workers()] == [r[1] for r in results if r[0] == "won"]


def test_worker_authentication_heartbeat_and_keys(store: HubStore) -> None:
    user, _ = store.create_user("alice", T)
    worker, token = register(store, user.id)
    assert store.authenticate_worker(token, T + 5).last_seen_at == T + 5
    keys = PublicKeyBundle(bytes(range(32)), bytes(1568), bytes(64))
    store.record_heartbeat(worker.id, T + 6, keys=keys, mode=EncryptionMode.CLASSIC)
    again = store.get_worker(worker.id)
    assert again.keys == keys and again.encryption_mode is EncryptionMode.CLASSIC
    store.record_heartbeat(worker.id, T + 7)
    assert store.get_worker(worker.id).last_seen_at == T + 7
    assert store.get_worker(worker.id).keys == keys
    expect(Unauthenticated, "^invalid auth token$", store.authenticate_worker, "x" * 48, T)


def test_deregistration_by_owner_then_acknowledged(store: HubStore) -> None:
    user, _ = store.create_user("alice", T)
    worker, token = register(store, user.id)
    note = store.deregister_worker(worker.id, T + 1, requested_by=user.id)
    assert note.reason == "worker deregistered by owner"
    assert store.get_worker(worker.id).status is WorkerStatus.DEREGISTERING
    # A deregistering worker may still connect, to learn that it was deregistered.
    assert store.authenticate_worker(token, T + 2).id == worker.id
    assert store.pending_notifications(worker.id) == [note]
    store.notification_delivered(note.id, T + 3)
    assert store.get_worker(worker.id).status is WorkerStatus.DELETED
    assert store.pending_notifications(worker.id) == []
    # The deleted worker's token is told apart from one this hub never issued.
    expect(
        WorkerDeleted,
        "deregistered or deleted on this hub",
        store.authenticate_worker,
        token,
        T + 4,
    )
    expect(Unauthenticated, "invalid auth token", store.authenticate_worker, "x" * 48, T + 4)
    expect(
        NotFound,
        "not found or not active",
        store.deregister_worker,
        worker.id,
        T,
        requested_by=None,
    )


def test_deregistration_rules(store: HubStore) -> None:
    alice, _ = store.create_user("alice", T)
    mallory, _ = store.create_user("mallory", T)
    worker, _ = register(store, alice.id)
    expect(
        NotFound,
        f"^worker {worker.id} not found or not active$",
        store.deregister_worker,
        worker.id,
        T,
        requested_by=mallory.id,
    )
    solo, _ = register(store, alice.id, auto_registered=True)
    expect(
        FailedPrecondition,
        "bundled local worker cannot be deregistered",
        store.deregister_worker,
        solo.id,
        T,
        requested_by=alice.id,
    )
    # An administrator may.
    note = store.deregister_worker(solo.id, T, requested_by=None)
    assert note.reason == "worker deregistered by administrator"


def _racing(calls: list[Callable[[], object]]) -> list[object]:
    """Run ``calls`` at once in threads (released together); what each returned or raised."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:  # the race's outcome, checked by the caller
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_four_hubs_deregistering_one_worker_queue_one_notification(
    make_store: StoreMaker,
) -> None:
    store = make_store.open()
    user, _ = store.create_user("alice", T)
    worker, _ = register(store, user.id)
    hubs = [make_store.open() for _ in range(4)]  # a connection each, as four hubs
    results = _racing(
        [lambda h=h: h.deregister_worker(worker.id, T, requested_by=None) for h in hubs]
    )
    notes = [r for r in results if isinstance(r, Notification)]
    lost = [r for r in results if isinstance(r, NotFound)]
    assert (len(notes), len(lost)) == (1, 3), results
    assert [n.id for n in store.pending_notifications(worker.id)] == [notes[0].id]


def test_two_hubs_registering_one_name_for_one_owner_make_one_worker(
    make_store: StoreMaker,
) -> None:
    """Two keys of one owner, the same worker name, two hubs at once: the owner's row is
    locked for the name check, so one registers and the other is told the name is taken."""
    store = make_store.open()
    user, _ = store.create_user("alice", T)
    keys = [store.mint_registration_key(user.id, T)[1] for _ in range(2)]
    hubs = [make_store.open() for _ in range(2)]
    results = _racing(
        [
            lambda h=h, k=k: h.register_worker(k, name="box", version="1", labels={}, now_ms=T)
            for h, k in zip(hubs, keys, strict=True)
        ]
    )
    assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "tuple"], results
    assert [w.name for w in store.list_workers(owner_id=user.id)] == ["box"]


def test_notification_gives_up_after_five_attempts(store: HubStore) -> None:
    user, _ = store.create_user("alice", T)
    worker, _ = register(store, user.id)
    note = store.deregister_worker(worker.id, T, requested_by=user.id)
    for _ in range(4):
        store.notification_attempted(note.id)
    assert store.pending_notifications(worker.id)[0].attempts == 4
    store.notification_attempted(note.id)
    assert store.pending_notifications(worker.id) == []


def test_admin_key_listing_revoke_and_purge(store: HubStore) -> None:
    user, _ = store.create_user("alice", T)
    first, _ = store.mint_registration_key(user.id, T)
    second, _ = store.mint_registration_key(user.id, T + 1)
    assert [k.id for k in store.list_registration_keys(T + 2)] == [second.id, first.id]
    store.revoke_registration_key(first.id, T + 2)
    assert [k.id for k in store.list_registration_keys(T + 2)] == [second.id]
    assert len(store.list_registration_keys(T + 2, include_expired=True)) == 2
    expect(NotFound, "^registration key not found: nope$", store.revoke_registration_key, "nope", T)
    assert store.purge_expired_registration_keys(T + 3) == 1
    assert store.purge_expired_registration_keys(T + 3) == 0
    assert store.list_registration_keys(T + 3)[0].creator_name == "alice"


def test_list_workers_filters(store: HubStore) -> None:
    alice, _ = store.create_user("alice", T)
    bob, _ = store.create_user("bob", T)
    a1, _ = register(store, alice.id)
    b1, _ = register(store, bob.id, now=T + 1)
    store.deregister_worker(b1.id, T, requested_by=bob.id)
    assert [w.id for w in store.list_workers()] == [a1.id]
    assert [w.id for w in store.list_workers(status=None)] == [a1.id, b1.id]
    assert [
        w.id for w in store.list_workers(owner_id=bob.id, status=WorkerStatus.DEREGISTERING)
    ] == [b1.id]
    assert store.is_owner(a1.id, alice.id) and not store.is_owner(a1.id, bob.id)


def test_admin_check(store: HubStore) -> None:
    admin, _ = store.create_user("root", T, is_admin=True)
    user, _ = store.create_user("alice", T)
    store.require_admin(admin)
    expect(PermissionDenied, "administrators only", store.require_admin, user)


def test_hub_id_is_random_stable_and_per_database(make_store: StoreMaker) -> None:
    first = make_store.open("a")
    hub_id = first.hub_id
    assert len(hub_id) == HUB_ID_HEX and set(hub_id) <= set("0123456789abcdef")
    first.close()
    again = make_store.open("a")
    assert again.hub_id == hub_id  # kept across restarts
    other = make_store.open("b")
    assert other.hub_id != hub_id  # a fresh database is a different hub


def test_registration_key_keeps_a_prefix_and_is_revocable_by_id_or_value(
    store: HubStore,
) -> None:
    user, _ = store.create_user("alice", T)
    by_id, key1 = store.mint_registration_key(user.id, T)
    by_value, key2 = store.mint_registration_key(user.id, T)
    assert by_id.prefix == key1[:KEY_PREFIX_LENGTH] and len(by_id.prefix) == 6
    listed = {k.id: k.prefix for k in store.list_registration_keys(T)}
    assert listed == {by_id.id: key1[:6], by_value.id: key2[:6]}
    assert store.revoke_registration_key_by_ref(by_id.id, T, owner=user.id) == by_id.id
    assert store.revoke_registration_key_by_ref(key2, T, owner=user.id) == by_value.id
    assert store.list_registration_keys(T) == []
    expect(
        NotFound, "give its id or the key itself", store.revoke_registration_key_by_ref, "nope", T
    )
    bob, _ = store.create_user("bob", T)
    _, bobs = store.mint_registration_key(bob.id, T)
    expect(
        NotFound,
        "give its id or the key itself",
        store.revoke_registration_key_by_ref,
        bobs,
        T,
        owner=user.id,
    )


def test_worker_names_are_unique_per_owner(store: HubStore) -> None:
    alice, _ = store.create_user("alice", T)
    bob, _ = store.create_user("bob", T)
    first, _ = register(store, alice.id, name="box")
    register(store, bob.id, name="box")  # another owner may use the name
    _, key = store.mint_registration_key(alice.id, T)
    expect(
        AlreadyExists,
        "already called 'box'",
        store.register_worker,
        key,
        name="box",
        version="1",
        labels={},
        now_ms=T,
    )
    assert store.registration_key_state(alice.id, key, T) == "live"  # nothing consumed
    second, _ = register(store, alice.id, name="other")
    expect(
        AlreadyExists,
        "already called 'box'",
        store.update_worker_profile,
        second.id,
        name="box",
        labels={},
    )
    assert store.get_worker(second.id).name == "other"
    renamed = store.update_worker_profile(second.id, name="renamed", labels={"a": "b"})
    assert (renamed.name, renamed.labels) == ("renamed", {"a": "b"})
    # A deleted worker's name is free again.
    note = store.deregister_worker(first.id, T, requested_by=alice.id)
    store.notification_delivered(note.id, T)
    register(store, alice.id, name="box")
