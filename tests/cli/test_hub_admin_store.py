"""``leapcore-hub admin … --store`` and ``admin migrate``, as real subprocesses, on an
SQLite file and on a real PostgreSQL server (``pg_url``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psycopg
from support.procs import Env, script

from leapcore.errors import StorageError
from leapcore.store.hubstore import _MIGRATIONS, SCHEMA_VERSION
from leapcore_cli.common import EXIT_OK, exit_code_for


def admin(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEAPCORE_")}
    return subprocess.run(
        [script("leapcore-hub"), "admin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, "HOME": str(home), **(env or {})},
        cwd=tmp_path,
    )


def test_migrate_an_sqlite_file_named_by_store(tmp_path: Path) -> None:
    """An SQLite file at schema 4 (``--store PATH``): migrate says 4 -> now, then nothing."""
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for sql in _MIGRATIONS[:4]:
        db.executescript(sql)
    db.execute("PRAGMA user_version = 4")
    db.close()
    first = admin(tmp_path, "migrate", "--store", str(path))
    assert (first.returncode, first.stderr) == (EXIT_OK, "")
    assert first.stdout == f"{path}: migrated schema 4 -> {SCHEMA_VERSION}\n"
    again = admin(tmp_path, "migrate", "--json", "--store", str(path))
    assert json.loads(again.stdout) == {
        "database": str(path),
        "from_version": SCHEMA_VERSION,
        "to_version": SCHEMA_VERSION,
    }


def test_store_from_the_environment_on_postgresql_then_migrate_refuses_a_newer_schema(
    tmp_path: Path, pg_url: str
) -> None:
    env = {"LEAPCORE_HUB_STORE": pg_url}
    made = admin(tmp_path, "user", "create", "alice", "--admin", "--json", env=env)
    assert made.returncode == EXIT_OK, made.stderr
    info = admin(tmp_path, "info", "--json", env=env)
    doc = json.loads(info.stdout)
    assert doc["users"] == 1 and doc["database"].startswith("postgresql://")
    migrated = admin(tmp_path, "migrate", "--store", pg_url)  # the flag wins; same database
    assert migrated.stdout.endswith(f"schema {SCHEMA_VERSION} is current; nothing to do\n")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE leapcore_schema SET version = %s", (SCHEMA_VERSION + 1,))
    newer = admin(tmp_path, "migrate", "--json", env=env)
    assert newer.returncode == exit_code_for(StorageError("x"))
    assert "is newer than this leapcore" in json.loads(newer.stdout)["error"]["message"]


def test_an_unreachable_server_names_it_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://hub:pw-not-shown@/hubdb?host={tmp_path}"
    proc = admin(tmp_path, "info", "--store", url)
    assert proc.returncode == exit_code_for(StorageError("x"))
    assert f"postgresql://hub@{tmp_path}/hubdb: cannot connect" in proc.stderr
    assert "pw-not-shown" not in proc.stderr + proc.stdout


def test_a_hub_on_postgresql_serves_a_worker_end_to_end(tmp_path: Path, pg_url: str) -> None:
    """``leapcore-hub serve`` with ``LEAPCORE_HUB_STORE``: the admin commands and the hub
    share the PostgreSQL database, a worker registers and comes online, and no SQLite file
    is made in the data directory."""
    env = Env(tmp_path)
    env.env["LEAPCORE_HUB_STORE"] = pg_url
    try:
        env.start_hub()
        env.login()
        env.start_worker("box", env.reg_key())
        env.wait_online("box")
        [worker] = env.admin("worker", "list")["workers"]
        assert worker["name"] == "box"
        assert env.admin("info")["database"].startswith("postgresql://")
        assert not (env.hub_dir / "hub.db").exists()
    finally:
        env.cleanup()
