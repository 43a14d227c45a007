"""Change notifications between hubs sharing one database (``HubStore.watch_changes``):
PostgreSQL's LISTEN/NOTIFY carries a revocation, a deregistration or a key revocation made
through one store to every other store watching, once committed; SQLite has none (hubs
poll it)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.helpers import expect
from support.pgserver import PgServer
from support.storekit import StoreMaker
from test_hubstore import T, register

from leapcore.errors import LocalError
from leapcore.store.hubstore import HubStore, SQLiteHubStore


@contextmanager
def watching(store: HubStore) -> Iterator[queue.Queue[str]]:
    """``store.watch_changes`` in a thread; what it hears, in order (after its first ``""``)."""
    heard: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=store.watch_changes, args=(heard.put, stop))
    thread.start()
    try:
        assert heard.get(timeout=30) == ""  # listening: nothing sent from now on is missed
        yield heard
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()


def test_changes_reach_another_hub_at_commit(tmp_path: Path, pg_server: PgServer) -> None:
    stores = StoreMaker("postgresql", tmp_path, pg_server)
    try:
        _changes_reach_another_hub(stores.open(), stores.open())
    finally:
        stores.close()


def test_a_watch_survives_its_connection_being_cut(tmp_path: Path, pg_server: PgServer) -> None:
    """The server ends the listening connection (as a restart would): the watch says ""
    (check everything) once it listens again, and hears what follows."""
    stores = StoreMaker("postgresql", tmp_path, pg_server)
    try:
        hub_a, hub_b = stores.open(), stores.open()
        user, _ = hub_a.create_user("alice", T)
        token_id = hub_a.list_tokens(user.id)[0].id
        with watching(hub_b) as heard:
            (cut,) = stores.raw(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN %'"
            )
            assert cut == (1,)
            assert heard.get(timeout=30) == ""
            hub_a.revoke_token(token_id, T)
            assert heard.get(timeout=30) == f"api_token_revoked:{token_id}"
    finally:
        stores.close()


def _changes_reach_another_hub(hub_a: HubStore, hub_b: HubStore) -> None:
    assert hub_a.announces_changes and hub_b.announces_changes
    user, _ = hub_a.create_user("alice", T)
    worker, _token = register(hub_a, user.id)
    token_id = hub_a.list_tokens(user.id)[0].id
    record, _key = hub_a.mint_registration_key(user.id, T)
    with watching(hub_b) as heard:
        hub_a.revoke_token(token_id, T)
        hub_a.deregister_worker(worker.id, T, requested_by=user.id)
        hub_a.revoke_registration_key(record.id, T)
        got = [heard.get(timeout=30) for _ in range(3)]
    assert got == [
        f"api_token_revoked:{token_id}",
        f"worker_deregistered:{worker.id}",
        f"registration_key_revoked:{record.id}",
    ]


def test_sqlite_has_no_change_notifications(tmp_path: Path) -> None:
    store = SQLiteHubStore(tmp_path / "hub.db")
    assert not store.announces_changes
    expect(LocalError, "no change notifications", store.watch_changes, print, threading.Event())
