"""``leapcore-hub admin info``, run as a real subprocess against a real hub database."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support.procs import script

from leapcore.store.hubstore import SCHEMA_VERSION, SQLiteHubStore

T = 1_700_000_000_123


def admin(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAPCORE_")}
    env["HOME"] = str(home)
    return subprocess.run(
        [script("leapcore-hub"), "admin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=home,
    )


def _populate(db: Path) -> str:
    """Two users; alice has two active workers and one deregistering, bob one deleted."""
    store = SQLiteHubStore(db, create=True)
    try:
        alice, _ = store.create_user("alice", T)
        bob, _ = store.create_user("bob", T)
        for name in ("one", "two", "three"):
            key = store.mint_registration_key(alice.id, T)[1]
            worker, _ = store.register_worker(key, name=name, version="1", labels={}, now_ms=T)
        store.deregister_worker(worker.id, T, requested_by=None)
        key = store.mint_registration_key(bob.id, T)[1]
        gone, _ = store.register_worker(key, name="gone", version="1", labels={}, now_ms=T)
        note = store.deregister_worker(gone.id, T, requested_by=None)
        store.notification_delivered(note.id, T)
        return store.hub_id
    finally:
        store.close()


def test_admin_info_names_the_hub_and_counts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = data / "hub.db"
    hub_id = _populate(db)
    proc = admin(tmp_path, "info", "--data-dir", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout) == {
        "hub_id": hub_id,
        "database": str(db),
        "schema_version": SCHEMA_VERSION,
        "users": 2,
        "active_workers": 2,
        "deregistering_workers": 1,
    }
    # --json before the verb, as for every admin verb; the id is stable across runs.
    again = admin(tmp_path, "--json", "info", "--data-dir", str(data))
    assert again.returncode == 0 and json.loads(again.stdout)["hub_id"] == hub_id

    human = admin(tmp_path, "info", "--data-dir", str(data))
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines() == [
        f"hub id           {hub_id}",
        f"database         {db}",
        f"schema version   {SCHEMA_VERSION}",
        "users            2",
        "active workers   2",
        "deregistering    1",
    ]


def test_admin_info_never_makes_a_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = admin(tmp_path, "info", "--data-dir", str(data))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {data / 'hub.db'}: no hub database here")
    assert not data.exists()
