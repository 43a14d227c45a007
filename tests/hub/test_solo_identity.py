"""Solo mode and the worker's record of its hub (``hub.json``): a solo database that is
reset registers the worker again, and the record follows, so the worker does not take its
own new hub for a stranger."""

from __future__ import annotations

import time
from pathlib import Path

from support.helpers import expect

from leapcore.errors import Unauthenticated
from leapcore.solo import SOLO_WORKER_DIR, prepare_solo
from leapcore.store.hubstore import SQLiteHubStore
from leapcore.store.paths import hub_database_path
from leapcore.store.workerstate import HubRecord, load_hub, load_state, save_hub


def test_a_reset_solo_database_moves_the_hub_record_to_the_new_hub(tmp_path: Path) -> None:
    first = SQLiteHubStore(hub_database_path(tmp_path))
    identity = prepare_solo(first, tmp_path, name="solo-box")
    worker_dir = tmp_path / SOLO_WORKER_DIR
    # The greeting would write this; pretend the worker connected once.
    save_hub(worker_dir, HubRecord(first.hub_id, "http://127.0.0.1:4327", None))
    first.close()

    # Same database: nothing registers again, the record is untouched.
    again = SQLiteHubStore(hub_database_path(tmp_path))
    before = (worker_dir / "hub.json").read_bytes()
    assert prepare_solo(again, tmp_path, name="solo-box").registered is False
    assert (worker_dir / "hub.json").read_bytes() == before
    again.close()

    # The database is lost: a new hub id, a new registration, and the record follows it.
    for suffix in ("", "-wal", "-shm"):
        Path(str(hub_database_path(tmp_path)) + suffix).unlink(missing_ok=True)
    fresh = SQLiteHubStore(hub_database_path(tmp_path))
    assert fresh.hub_id != first.hub_id
    renewed = prepare_solo(fresh, tmp_path, name="solo-box")
    assert renewed.registered and renewed.worker_id != identity.worker_id
    record = load_hub(worker_dir)
    assert record is not None
    assert (record.hub_id, record.hub_url) == (fresh.hub_id, "http://127.0.0.1:4327")
    assert record.registered_at is not None
    assert load_state(worker_dir).worker_id == renewed.worker_id


def test_an_expired_solo_worker_token_is_renewed_at_start(tmp_path: Path) -> None:
    """The solo hub was not run for longer than the token lived: the next start renews the
    worker's token through the store (same worker, new token), never exits on it."""
    store = SQLiteHubStore(hub_database_path(tmp_path))
    identity = prepare_solo(store, tmp_path, name="solo-box")
    worker_dir = tmp_path / SOLO_WORKER_DIR
    old = load_state(worker_dir).auth_token
    with store._tx() as db:  # the token expired long ago
        db.execute("UPDATE workers SET token_expires_at = 1 WHERE id = ?", (identity.worker_id,))
    again = prepare_solo(store, tmp_path, name="solo-box")
    assert (again.registered, again.worker_id) == (False, identity.worker_id)
    new = load_state(worker_dir).auth_token
    assert new != old
    now = int(time.time() * 1000)
    assert store.authenticate_worker(new, now).id == identity.worker_id
    expect(Unauthenticated, "^invalid auth token$", store.authenticate_worker, old, now)
    store.close()
