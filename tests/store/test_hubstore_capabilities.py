"""The hub store keeps what a worker advertises at each connect: its capabilities, ``os`` and
``arch`` (a schema migration adds them to a database made before them)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from support.storekit import StoreMaker

from leapcore.store.hubstore import _MIGRATIONS, SCHEMA_VERSION, HubStore, SQLiteHubStore

T = 1_700_000_000_000


def _register(store: HubStore, name: str = "box") -> str:
    user, _ = store.create_user("alice", T)
    _, key = store.mint_registration_key(user.id, T)
    worker, _ = store.register_worker(key, name=name, version="0.1.0", labels={}, now_ms=T)
    return worker.id


def test_a_new_worker_has_no_capabilities_os_or_arch(store: HubStore) -> None:
    worker = store.get_worker(_register(store))
    assert (worker.capabilities, worker.os, worker.arch) == ((), None, None)


def test_each_connect_records_what_it_carries_and_keeps_what_it_leaves_out(
    make_store: StoreMaker,
) -> None:
    store = make_store.open()
    worker_id = _register(store)
    updated = store.update_worker_profile(
        worker_id,
        name="box",
        labels={"env": "prod"},
        capabilities=["pty", "exec", "pty"],
        os="linux",
        arch="x86_64",
    )
    assert updated.capabilities == ("exec", "pty")  # sorted, without repeats
    assert (updated.os, updated.arch, updated.labels) == ("linux", "x86_64", {"env": "prod"})
    # A connect without them (an old worker's) changes the name and labels only.
    again = store.update_worker_profile(worker_id, name="box", labels={})
    assert (again.capabilities, again.os, again.arch) == (("exec", "pty"), "linux", "x86_64")
    # The next connect says what it serves now: fewer capabilities, another machine.
    later = store.update_worker_profile(
        worker_id, name="box", labels={}, capabilities=["exec"], os="darwin", arch="arm64"
    )
    assert (later.capabilities, later.os, later.arch) == (("exec",), "darwin", "arm64")
    none = store.update_worker_profile(worker_id, name="box", labels={}, capabilities=[])
    assert none.capabilities == ()
    # Listed with them, and kept across a reopen.
    reopened = make_store.open()
    [listed] = reopened.list_workers()
    assert (listed.capabilities, listed.os, listed.arch) == ((), "darwin", "arm64")


def test_a_database_from_before_capabilities_is_migrated(tmp_path: Path) -> None:
    """A database at the schema just before the capabilities migration, with a worker in
    it, opens migrated: the worker is kept, with no capabilities, os or arch, until it
    connects again."""
    path = tmp_path / "hub.db"
    before = next(i for i, sql in enumerate(_MIGRATIONS) if "capabilities" in sql)
    db = sqlite3.connect(path)
    for sql in _MIGRATIONS[:before]:
        db.executescript(sql)
    db.execute(
        "INSERT INTO users (id, name, is_admin, created_at) VALUES ('u1', 'alice', 1, ?)", (T,)
    )
    db.execute(
        "INSERT INTO workers (id, owner_id, token_hash, name, version, labels, status, "
        "created_at) VALUES ('w1', 'u1', x'00', 'old-box', '0.1.0', '{\"env\": \"prod\"}', "
        "'active', ?)",
        (T,),
    )
    db.execute(f"PRAGMA user_version = {before}")
    db.commit()
    db.close()

    store = SQLiteHubStore(path)
    assert store.schema_version == SCHEMA_VERSION
    old = store.get_worker("w1")
    assert (old.name, old.labels) == ("old-box", {"env": "prod"})
    assert (old.capabilities, old.os, old.arch) == ((), None, None)
    updated = store.update_worker_profile(
        "w1",
        name="old-box",
        labels={"env": "prod"},
        capabilities=["tcp"],
        os="linux",
        arch="riscv64",
    )
    assert (updated.capabilities, updated.os, updated.arch) == (("tcp",), "linux", "riscv64")
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(workers)")}
    assert {"capabilities", "os", "arch"} <= columns
