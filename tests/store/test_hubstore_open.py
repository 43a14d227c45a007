"""Opening the hub's SQLite store: file modes, what is refused untouched, concurrent use, and
the small additions the admin CLI needs (``find_token``, id-first user lookup)."""

from __future__ import annotations

import concurrent.futures
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.helpers import expect

from leapcore.errors import LocalError, NotFound, StorageError
from leapcore.store.hubstore import SCHEMA_VERSION, HubStore, SQLiteHubStore

T = 1_700_000_000_000


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file in ``directory``: content, mode and mtime."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
        for p in sorted(directory.iterdir())
    }


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable (0644) if nothing tightened them."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_database_is_private(tmp_path: Path, loose_umask: None) -> None:
    data_dir = tmp_path / "a" / "hub"
    store = SQLiteHubStore(data_dir / "hub.db")
    store.create_user("alice", T)  # something in the WAL
    assert mode(data_dir) == 0o700
    for name in ("hub.db", "hub.db-wal", "hub.db-shm"):
        assert mode(data_dir / name) == 0o600, name
    store.close()


def test_an_existing_directory_keeps_its_mode(tmp_path: Path, loose_umask: None) -> None:
    tmp_path.chmod(0o755)
    SQLiteHubStore(tmp_path / "hub.db").close()
    assert mode(tmp_path) == 0o755
    assert mode(tmp_path / "hub.db") == 0o600


def test_without_create_a_missing_database_is_an_error_and_nothing_is_made(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "hub.db"
    expect(StorageError, f"^{path}: no hub database$", SQLiteHubStore, path, create=False)
    assert not (tmp_path / "data").exists()
    SQLiteHubStore(path).close()
    reopened = SQLiteHubStore(path, create=False)
    assert reopened.schema_version == SCHEMA_VERSION


def test_a_path_with_uri_characters(tmp_path: Path) -> None:
    path = tmp_path / "odd ?#% dir" / "hub.db"
    store = SQLiteHubStore(path)
    store.create_user("alice", T)
    store.close()
    assert SQLiteHubStore(path, create=False).get_user("alice").name == "alice"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd ?#% dir"]


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    expect(
        StorageError,
        "cannot create the hub database: .*Not a directory",
        SQLiteHubStore,
        blocker / "hub.db",
    )


def test_not_sqlite_is_refused_untouched_and_leaves_no_side_files(tmp_path: Path) -> None:
    (tmp_path / "hub.db").write_bytes(b"SQLite format 2\x00 but not really" * 64)
    before = snapshot(tmp_path)
    for create in (True, False):
        expect(
            StorageError,
            "cannot open the hub database: file is not a database",
            SQLiteHubStore,
            tmp_path / "hub.db",
            create=create,
        )
    assert snapshot(tmp_path) == before


def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE recipes (name TEXT)")
    other.commit()
    other.close()
    before = snapshot(tmp_path)
    expect(
        StorageError, "an SQLite database, but not a leapcore hub database", SQLiteHubStore, path
    )
    assert snapshot(tmp_path) == before
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = snapshot(tmp_path)
    expect(StorageError, "is newer than this leapcore", SQLiteHubStore, path)
    assert snapshot(tmp_path) == before  # not even switched to WAL


def test_opening_does_not_wait_for_another_writer(tmp_path: Path) -> None:
    """The running hub may be mid-transaction: opening an up-to-date database and reading
    must not need the write lock (if it did, this would fail after the 10 s busy timeout)."""
    path = tmp_path / "hub.db"
    first = SQLiteHubStore(path)
    first.create_user("alice", T)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE users SET is_admin = 1")
    try:
        second = SQLiteHubStore(path, create=False)
        user = second.get_user("alice")
        assert not user.is_admin  # the uncommitted write is not visible
    finally:
        writer.execute("ROLLBACK")
    second.create_user("bob", T)  # and writes work once the writer is done
    assert [u.name for u in first.list_users()] == ["alice", "bob"]


def test_find_token(store: HubStore) -> None:
    user, token = store.create_user("alice", T)
    second = store.create_token("alice", T + 1)
    first_record = store.find_token(token)
    assert first_record.user_id == user.id and first_record.created_at == T
    assert store.find_token(second).created_at == T + 1
    assert [t.id for t in store.list_tokens("alice")] == [
        first_record.id,
        store.find_token(second).id,
    ]
    assert first_record.last_used_at is None  # looking a token up is not using it
    store.revoke_token(first_record.id, T + 2)
    assert store.find_token(token).revoked_at == T + 2
    expect(NotFound, "^no API token matches$", store.find_token, "x" * 48)


def test_a_user_id_wins_over_a_user_named_like_it(tmp_path: Path) -> None:
    """A name may be any 1-64 printable characters, so a user can be named like another
    user's id: lookups by that string must reach the user whose id it is."""
    path = tmp_path / "hub.db"
    store = SQLiteHubStore(path)
    alice, _ = store.create_user("alice", T)
    impostor, _ = store.create_user(alice.id, T)
    # Put alice's row after the impostor's, so a scan in row order would meet the impostor.
    raw = sqlite3.connect(path)
    raw.execute("UPDATE users SET rowid = 1000 WHERE id = ?", (alice.id,))
    raw.commit()
    raw.close()
    assert store.get_user(alice.id) == alice
    assert store.get_user(impostor.id) == impostor
    token = store.create_token(alice.id, T)
    assert store.authenticate_user(token, T).name == "alice"


def test_a_locked_database_is_a_storage_error_and_the_store_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    store = SQLiteHubStore(path, timeout=0.05)
    store.create_user("alice", T)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        expect(
            StorageError,
            f"^{re.escape(str(path))}: hub database error: database is locked$",
            store.create_user,
            "bob",
            T,
        )
        assert store.get_user("alice").name == "alice"  # reading does not need the lock
    finally:
        writer.execute("ROLLBACK")
    store.create_user("bob", T)  # no transaction was left behind
    assert [u.name for u in store.list_users()] == ["alice", "bob"]


def test_sqlite_failures_on_reads_are_storage_errors(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    store = SQLiteHubStore(path)
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE notifications")
    raw.commit()
    raw.close()
    user, _ = store.create_user("alice", T)
    worker, _ = store.register_worker(
        store.mint_registration_key(user.id, T)[1], name="w", version="1", labels={}, now_ms=T
    )
    expect(
        StorageError,
        f"^{re.escape(str(path))}: hub database error: no such table: notifications$",
        store.pending_notifications,
        worker.id,
    )
    expect(
        StorageError,
        "no such table: notifications",
        store.deregister_worker,
        worker.id,
        T,
        requested_by=None,
    )
    # The failed deregistration was rolled back as a whole.
    assert store.get_worker(worker.id).status.value == "active"


def test_the_store_may_be_called_from_other_threads(tmp_path: Path) -> None:
    """One SQLite connection, used from worker threads (calls serialised by the store)."""
    store = SQLiteHubStore(tmp_path / "hub.db")
    assert store.max_concurrent_calls == 1
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        users = list(pool.map(lambda n: store.create_user(f"u{n}", T)[0].name, range(8)))
    assert sorted(users) == sorted(u.name for u in store.list_users())


def test_a_negative_worker_cap_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    path = tmp_path / "data" / "hub.db"
    expect(
        LocalError,
        "max_workers_per_user must be >= 0",
        SQLiteHubStore,
        path,
        max_workers_per_user=-1,
    )
    assert not path.parent.exists()
