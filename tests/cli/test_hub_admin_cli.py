"""``leapcore-hub admin …`` run as real subprocesses against real SQLite files, with HOME
pointed at a temporary directory. State is set up and checked through SQLiteHubStore."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.helpers import expect
from support.procs import script

from leapcore.crypto.keys import PublicKeyBundle
from leapcore.crypto.mode import EncryptionMode
from leapcore.errors import Unauthenticated
from leapcore.store.hubstore import SQLiteHubStore, Worker, WorkerStatus

T = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z
T_JSON = "2023-11-14T22:13:20.123Z"
T_HUMAN = "2023-11-14 22:13:20Z"
JSON_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KEYS = PublicKeyBundle(bytes(range(32)), bytes(1568), bytes(64))


def real_now() -> int:
    return time.time_ns() // 1_000_000


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Hub:
    """A child environment with its own HOME and no LEAPCORE_* variables, and a data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.data = root / "data"
        self.db = self.data / "hub.db"
        self.vars = {k: v for k, v in os.environ.items() if not k.startswith("LEAPCORE_")}
        self.vars["HOME"] = str(self.home)

    def run(
        self, *args: str, env: dict[str, str] | None = None, umask: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``leapcore-hub admin ARGS`` (no --data-dir added)."""
        return subprocess.run(
            [script("leapcore-hub"), "admin", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**self.vars, **(env or {})},
            cwd=self.root,
            preexec_fn=None if umask is None else (lambda: os.umask(umask)),
        )

    def admin(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``leapcore-hub admin ARGS --data-dir <root>/data``."""
        return self.run(*args, "--data-dir", str(self.data), **kw)

    def ok(self, *args: str) -> str:
        """Human output of a successful command (nothing on stderr)."""
        proc = self.admin(*args)
        assert (proc.returncode, proc.stderr) == (0, ""), (proc.stdout, proc.stderr)
        return proc.stdout

    def doc(self, *args: str, code: int = 0) -> Any:
        """The one JSON document of ``ARGS --json``, with the expected exit code."""
        proc = self.admin(*args, "--json")
        assert proc.returncode == code, (proc.stdout, proc.stderr)
        assert proc.stderr == ""
        return json.loads(proc.stdout)

    def store(self) -> SQLiteHubStore:
        return SQLiteHubStore(self.db, create=False)


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return Hub(tmp_path)


def token_from(stdout: str) -> tuple[str, str]:
    token = re.search(r"^API token  ([A-Za-z0-9]{48})$", stdout, re.MULTILINE)
    token_id = re.search(r"^token id   ([A-Za-z0-9]{48})$", stdout, re.MULTILINE)
    assert token and token_id, stdout
    return token.group(1), token_id.group(1)


def error(proc: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The human error line (stderr), checking the exit code and an empty stdout."""
    assert proc.returncode == exit_code, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    return proc.stderr


# -- users and API tokens ----------------------------------------------------------------------


def test_user_create_prints_a_working_token_once(hub: Hub) -> None:
    out = hub.ok("user", "create", "root", "--admin")
    token, token_id = token_from(out)
    assert out.count(token) == 1
    assert "shown only this once" in out
    assert f"leapcore-hub admin user token-revoke --id {token_id}" in out
    store = hub.store()
    (root,) = store.list_users()
    assert out.startswith(f"created administrator root (id {root.id})\n")
    assert store.authenticate_user(token, T) == root and root.is_admin
    assert store.find_token(token).id == token_id
    # The database holds no copy of the token.
    raw = b"".join(p.read_bytes() for p in hub.data.iterdir())
    assert token.encode() not in raw


def test_user_create_json(hub: Hub) -> None:
    doc = hub.doc("user", "create", "alice")
    assert set(doc) == {"user", "token", "token_id"}
    user = doc["user"]
    assert set(user) == {"id", "name", "is_admin", "created_at"}
    assert (user["name"], user["is_admin"]) == ("alice", False)
    assert JSON_TIME.match(user["created_at"])
    store = hub.store()
    assert store.authenticate_user(doc["token"], T).id == user["id"]
    assert store.find_token(doc["token"]).id == doc["token_id"]
    assert abs(store.get_user("alice").created_at - real_now()) < 60_000  # the real clock


def test_user_create_refusals(hub: Hub) -> None:
    hub.ok("user", "create", "alice")
    assert hub.doc("user", "create", "alice", code=8) == {  # refused
        "error": {"code": "failed_precondition", "message": "a user named 'alice' already exists"}
    }
    stderr = error(hub.admin("user", "create", "   "), 1)
    assert stderr == "error: user name must be 1-64 printable characters\n"
    assert [u.name for u in hub.store().list_users()] == ["alice"]


def test_user_list(hub: Hub) -> None:
    hub.ok("user", "create", "root", "--admin")
    hub.ok("user", "create", "bob")
    users = {u.name: u for u in hub.store().list_users()}
    doc = hub.doc("user", "list")
    assert [u["name"] for u in doc["users"]] == ["bob", "root"]
    assert doc["users"][1]["id"] == users["root"].id and doc["users"][1]["is_admin"] is True
    lines = hub.ok("user", "list").splitlines()
    assert lines[0].split() == ["ID", "NAME", "ADMIN", "CREATED"]
    assert lines[1].split()[:3] == [users["bob"].id, "bob", "no"]
    assert lines[2].split()[:3] == [users["root"].id, "root", "yes"]
    assert re.search(r"  \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$", lines[2])


def test_tokens_create_list_revoke(hub: Hub) -> None:
    first = hub.doc("user", "create", "alice")
    alice_id = first["user"]["id"]
    out = hub.ok("user", "token-create", "alice")
    second, second_id = token_from(out)
    assert out.startswith(f"new API token for alice (id {alice_id})\n")
    store = hub.store()
    assert store.authenticate_user(second, T).id == alice_id
    doc = hub.doc("user", "token-create", alice_id)  # by id as well as by name
    third = doc["token"]
    assert doc["user"]["id"] == alice_id and store.find_token(third).id == doc["token_id"]

    listed = hub.doc("user", "token-list", "alice")
    assert [t["id"] for t in listed["tokens"]] == [first["token_id"], second_id, doc["token_id"]]
    assert "last_used_at" in listed["tokens"][1] and "revoked_at" not in listed["tokens"][1]
    assert "last_used_at" not in listed["tokens"][2]

    assert hub.ok("user", "token-revoke", "--id", second_id) == f"revoked API token {second_id}\n"
    expect(Unauthenticated, "^invalid API token$", store.authenticate_user, second, T)
    assert store.authenticate_user(first["token"], T).id == alice_id  # the others still work
    assert hub.doc("user", "token-revoke", "--id", doc["token_id"]) == {"revoked": doc["token_id"]}
    expect(Unauthenticated, "^invalid API token$", store.authenticate_user, third, T)

    table = hub.ok("user", "token-list", "alice").splitlines()
    assert table[0].split() == ["TOKEN", "ID", "CREATED", "LAST", "USED", "REVOKED", "EXPIRES"]
    revoked = next(line for line in table if line.startswith(second_id))
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"
    assert re.search(rf"Z  {stamp}  {stamp}$", revoked)  # a revocation time, an expiry
    # Every token made here expires 90 days (the default lifetime) after it was made.
    for token in listed["tokens"]:
        made = dt.datetime.fromisoformat(token["created_at"])
        assert dt.datetime.fromisoformat(token["expires_at"]) - made == dt.timedelta(days=90)

    # Revoking twice, unknown users, a missing --id.
    assert hub.doc("user", "token-revoke", "--id", second_id, code=3) == {
        "error": {"code": "not_found", "message": f"no live API token with id {second_id!r}"}
    }
    assert error(hub.admin("user", "token-create", "nobody"), 3) == "error: no user 'nobody'\n"
    assert "error: --id is required" in error(hub.admin("user", "token-revoke"), 2)


# -- workers ---------------------------------------------------------------------------------


def register(store: SQLiteHubStore, user_id: str, name: str, now: int = T, **kw: Any) -> Worker:
    _, key = store.mint_registration_key(user_id, now)
    labels = kw.pop("labels", {})
    worker, _ = store.register_worker(
        key, name=name, version="0.1.0", labels=labels, now_ms=now, **kw
    )
    return worker


@pytest.fixture
def fleet(hub: Hub) -> dict[str, Worker]:
    """alice: a1 (keys, labels, seen), a2 (auto-registered, never seen); bob: b1
    (deregistering), b2 (deleted)."""
    hub.ok("user", "create", "alice")
    hub.ok("user", "create", "bob")
    store = hub.store()
    alice, bob = store.get_user("alice"), store.get_user("bob")
    a1 = register(store, alice.id, "a1", labels={"os": "linux", "arch": "arm64"})
    store.record_heartbeat(a1.id, T + 5000, keys=KEYS, mode=EncryptionMode.CLASSIC)
    a2 = register(store, alice.id, "a2", T + 1, auto_registered=True)
    b1 = register(store, bob.id, "b1", T + 2)
    b2 = register(store, bob.id, "b2", T + 3)
    store.deregister_worker(b1.id, T, requested_by=bob.id)
    note = store.deregister_worker(b2.id, T, requested_by=bob.id)
    store.notification_delivered(note.id, T)
    return {w.name: store.get_worker(w.id) for w in (a1, a2, b1, b2)}


def test_worker_json_rows(hub: Hub, fleet: dict[str, Worker]) -> None:
    rows = {r["name"]: r for r in hub.doc("worker", "list")["workers"]}
    assert set(rows) == {"a1", "a2"}
    a1 = fleet["a1"]
    assert rows["a1"] == {
        "id": a1.id,
        "name": "a1",
        "version": "0.1.0",
        "owner_id": a1.owner_id,
        "owner_name": "alice",
        "status": "active",
        "auto_registered": False,
        "created_at": T_JSON,
        "last_seen_at": "2023-11-14T22:13:25.123Z",
        "token_expires_at": "2024-02-12T22:13:20.123Z",  # 90 days after registration
        "encryption_mode": "classic",
        "fingerprint": KEYS.fingerprint,
        "labels": {"arch": "arm64", "os": "linux"},
    }
    # Absent values are omitted, not null.
    assert set(rows["a2"]) == {
        "id",
        "name",
        "version",
        "owner_id",
        "owner_name",
        "status",
        "auto_registered",
        "created_at",
        "token_expires_at",
        "labels",
    }
    assert rows["a2"]["auto_registered"] is True


def test_worker_list_filters(hub: Hub, fleet: dict[str, Worker]) -> None:
    def names(*args: str) -> list[str]:
        return [w["name"] for w in hub.doc("worker", "list", *args)["workers"]]

    assert names() == ["a1", "a2"]
    assert names("--status", "active") == ["a1", "a2"]
    assert names("--status", "deregistering") == ["b1"]
    assert names("--status", "deleted") == ["b2"]
    assert names("--status", "all") == ["a1", "a2", "b1", "b2"]
    assert names("--status", "") == ["a1", "a2", "b1", "b2"]
    assert names("--user", "bob") == []
    assert names("--user", "bob", "--status", "all") == ["b1", "b2"]
    assert names("--user", fleet["a1"].owner_id) == ["a1", "a2"]
    assert hub.doc("worker", "list", "--user", "carol", code=3)["error"]["code"] == "not_found"
    bad = hub.doc("worker", "list", "--status", "gone", code=2)
    assert bad == {
        "error": {
            "code": "usage",
            "message": "unknown worker status: gone (use: active, deregistering, deleted, all)",
        }
    }

    lines = hub.ok("worker", "list", "--status", "all").splitlines()
    assert lines[0].split() == [
        "ID", "NAME", "OWNER", "STATUS", "CREATED", "LAST", "SEEN", "TOKEN", "EXPIRES"
    ]  # fmt: skip
    row = {line.split()[0]: line for line in lines[1:]}
    assert set(row) == {w.id for w in fleet.values()}
    assert row[fleet["a1"].id].split()[1:4] == ["a1", "alice", "active"]
    assert row[fleet["a1"].id].endswith(f"{T_HUMAN}  2023-11-14 22:13:25Z  2024-02-12 22:13:20Z")
    assert row[fleet["a2"].id].split()[1:5] == ["a2", "(auto)", "alice", "active"]
    assert re.search(r"  never +2024-02-12 22:13:20Z$", row[fleet["a2"].id])
    assert row[fleet["b1"].id].split()[3] == "deregistering"
    assert hub.ok("worker", "list", "--user", "bob") == "no active workers owned by bob\n"


def test_worker_get(hub: Hub, fleet: dict[str, Worker]) -> None:
    a1, b2 = fleet["a1"], fleet["b2"]
    assert hub.doc("worker", "get", "--id", b2.id)["worker"]["status"] == "deleted"
    assert hub.doc("worker", "get", "--id", a1.id)["worker"]["fingerprint"] == KEYS.fingerprint
    out = hub.ok("worker", "get", "--id", a1.id)
    table = {line[:16].strip(): line[17:] for line in out.splitlines()}
    assert table == {
        "id": a1.id,
        "name": "a1",
        "version": "0.1.0",
        "owner": f"alice (id {a1.owner_id})",
        "status": "active",
        "auto-registered": "no",
        "created": T_HUMAN,
        "last seen": "2023-11-14 22:13:25Z",
        "token expires": "2024-02-12 22:13:20Z",
        "encryption": "classic",
        "fingerprint": KEYS.fingerprint,
        "labels": "arch=arm64, os=linux",
    }
    a2 = hub.ok("worker", "get", "--id", fleet["a2"].id)
    assert "fingerprint      unknown (no keys reported yet)\n" in a2
    assert "last seen        never\n" in a2 and "labels           none\n" in a2
    assert hub.doc("worker", "get", "--id", "nope", code=3) == {
        "error": {"code": "not_found", "message": "worker nope not found"}
    }
    assert "--id is required" in error(hub.admin("worker", "get", "--id", ""), 2)


def test_worker_deregister(hub: Hub, fleet: dict[str, Worker]) -> None:
    a2 = fleet["a2"]  # the auto-registered worker: an administrator may deregister it
    assert hub.doc("worker", "deregister", "--id", a2.id) == {"deregistered": a2.id}
    store = hub.store()
    assert store.get_worker(a2.id).status is WorkerStatus.DEREGISTERING
    (note,) = store.pending_notifications(a2.id)
    assert (note.kind, note.reason) == ("deregister", "worker deregistered by administrator")
    # Not active any more, deregistering, deleted, unknown: all "not found or not active".
    for worker_id in (a2.id, fleet["b1"].id, fleet["b2"].id, "nope"):
        assert hub.doc("worker", "deregister", "--id", worker_id, code=3) == {
            "error": {"code": "not_found", "message": f"worker {worker_id} not found or not active"}
        }
    assert len(store.pending_notifications(a2.id)) == 1
    a1 = fleet["a1"]
    out = hub.ok("worker", "deregister", "--id", a1.id)
    assert out.startswith(f"worker {a1.id} is now deregistering")
    assert store.get_worker(a1.id).status is WorkerStatus.DEREGISTERING
    stderr = error(hub.admin("worker", "deregister", "--id", a1.id), 3)
    assert stderr == f"error: worker {a1.id} not found or not active\n"


def test_worker_strings_cannot_drive_the_terminal(hub: Hub) -> None:
    hub.ok("user", "create", "alice")
    store = hub.store()
    evil = register(store, store.get_user("alice").id, "box\x1b[2J\x07", labels={"k\n": "v\x1b"})
    for args in (("worker", "list"), ("worker", "get", "--id", evil.id)):
        out = hub.ok(*args)
        assert "\x1b" not in out and "\x07" not in out
        assert "box\\x1b[2J\\x07" in out
    assert "k\\n=v\\x1b" in hub.ok("worker", "get", "--id", evil.id)
    # JSON carries the exact strings (JSON escaping makes them harmless).
    assert hub.doc("worker", "get", "--id", evil.id)["worker"]["name"] == "box\x1b[2J\x07"


# -- registration keys -------------------------------------------------------------------------


def test_reg_keys_list_revoke_purge(hub: Hub) -> None:
    hub.ok("user", "create", "alice")
    store = hub.store()
    alice = store.get_user("alice")
    now = real_now()
    old, _ = store.mint_registration_key(alice.id, T)  # long expired
    first, first_key = store.mint_registration_key(alice.id, now - 2000)
    second, _ = store.mint_registration_key(alice.id, now - 1000)

    keys = hub.doc("reg-key", "list")["keys"]
    assert [k["id"] for k in keys] == [second.id, first.id]  # live only, newest first
    assert keys[0] == {
        "id": second.id,
        "prefix": second.prefix,
        "created_by": alice.id,
        "creator_name": "alice",
        "created_at": keys[0]["created_at"],
        "expires_at": keys[0]["expires_at"],
    }
    assert all(JSON_TIME.match(k[t]) for k in keys for t in ("created_at", "expires_at"))
    every = hub.doc("reg-key", "list", "--include-expired")["keys"]
    assert [k["id"] for k in every] == [second.id, first.id, old.id]
    assert every[2]["created_at"] == T_JSON
    assert every[2]["expires_at"] == "2023-11-14T22:18:20.123Z"

    table = hub.ok("reg-key", "list", "--include-expired").splitlines()
    assert table[0].split() == ["ID", "KEY", "CREATED", "BY", "CREATED", "EXPIRES", "STATE"]
    assert [line.split()[0] for line in table[1:]] == [second.id, first.id, old.id]
    assert [line.split()[1] for line in table[1:]] == [
        f"{k.prefix}\u2026" for k in (second, first, old)
    ]
    assert [line.split()[-1] for line in table[1:]] == ["live", "live", "expired"]
    assert table[3].split()[2] == "alice"

    # By the key itself (a leaked key), which names the same key as its id.
    revoked = f"revoked registration key {first.id}\n"
    assert hub.ok("reg-key", "revoke", "--id", first_key) == revoked
    assert hub.ok("reg-key", "revoke", "--id", first.id) == revoked
    assert [k["id"] for k in hub.doc("reg-key", "list")["keys"]] == [second.id]
    revoked = next(
        k for k in store.list_registration_keys(now, include_expired=True) if k.id == first.id
    )
    assert revoked.expires_at < real_now()
    assert hub.doc("reg-key", "revoke", "--id", "nope", code=3) == {
        "error": {
            "code": "not_found",
            "message": "registration key not found (give its id or the key itself)",
        }
    }
    assert "--id is required" in error(hub.admin("reg-key", "revoke"), 2)

    assert hub.doc("reg-key", "purge-expired") == {"purged": 2}  # the expired and the revoked
    assert [k.id for k in store.list_registration_keys(now, include_expired=True)] == [second.id]
    assert hub.ok("reg-key", "purge-expired") == "purged 0 expired or revoked registration keys\n"
    assert hub.ok("reg-key", "revoke", "--id", second.id)
    assert hub.ok("reg-key", "list") == "no live registration keys\n"


def test_there_is_no_reg_key_create(hub: Hub) -> None:
    hub.ok("user", "create", "alice")
    stderr = error(hub.admin("reg-key", "create"), 2)
    assert "invalid choice: 'create'" in stderr
    doc = hub.doc("reg-key", "create", code=2)
    assert doc["error"]["code"] == "usage" and "invalid choice: 'create'" in doc["error"]["message"]
    assert hub.store().list_registration_keys(0, include_expired=True) == []


# -- settings ----------------------------------------------------------------------------------


def _seed(data_dir: Path, user: str) -> None:
    store = SQLiteHubStore(data_dir / "hub.db")
    store.create_user(user, T)
    store.close()


def test_settings_precedence(hub: Hub) -> None:
    default_dir = hub.home / ".config/leapcore/hub"
    config = hub.root / "etc" / "hub.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "state"\n')
    for where, user in (
        (default_dir, "from-default"),
        (hub.root / "etc" / "state", "from-file"),
        (hub.root / "env", "from-env"),
        (hub.root / "flag", "from-flag"),
    ):
        _seed(where, user)

    def user_seen(*args: str, env: dict[str, str] | None = None) -> str:
        proc = hub.run("user", "list", "--json", *args, env=env)
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
        (user,) = json.loads(proc.stdout)["users"]
        return str(user["name"])

    env = {"LEAPCORE_HUB_DATA_DIR": str(hub.root / "env")}
    flag = ("--data-dir", str(hub.root / "flag"))
    assert user_seen() == "from-default"
    assert user_seen("--config", str(config)) == "from-file"
    assert user_seen("--config", str(config), env=env) == "from-env"
    assert user_seen("--config", str(config), *flag, env=env) == "from-flag"
    # The default config file is read when no --config is given.
    hub_toml = default_dir / "hub.toml"
    hub_toml.write_text(f'data_dir = "{hub.root / "etc" / "state"}"\n')
    assert user_seen() == "from-file"
    assert user_seen(env=env) == "from-env"
    # Flags are accepted before the group too.
    proc = hub.run("--data-dir", str(hub.root / "flag"), "--json", "user", "list")
    assert json.loads(proc.stdout)["users"][0]["name"] == "from-flag"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            'colour = "red"\n',
            "unknown setting 'colour' (known: api_token_lifetime_days, audit_retention_days, ",
        ),
        ("max_workers_per_user = '64'\n", "setting 'max_workers_per_user' must be int, got str"),
        ("data_dir = \n", "not valid TOML: "),
    ],
)
def test_a_bad_config_file_is_a_usage_error_naming_it(hub: Hub, content: str, problem: str) -> None:
    config = hub.root / "hub.toml"
    config.write_text(content)
    stderr = error(hub.run("user", "create", "alice", "--config", str(config)), 2)
    assert stderr.startswith(f"error: {config}: {problem}")
    doc = hub.doc("user", "list", "--config", str(config), code=2)
    assert doc["error"]["code"] == "config_error"
    assert doc["error"]["message"].startswith(f"{config}: {problem}")
    assert not hub.data.exists()


def test_other_configuration_errors(hub: Hub) -> None:
    missing = hub.root / "missing.toml"
    stderr = error(hub.run("user", "list", "--config", str(missing)), 2)
    assert stderr == f"error: {missing}: no such config file\n"
    env = {"LEAPCORE_HUB_MAX_WORKERS_PER_USER": "many"}
    stderr = error(hub.admin("user", "create", "alice", env=env), 2)
    assert stderr == (
        "error: environment: LEAPCORE_HUB_MAX_WORKERS_PER_USER must be an integer, got 'many'\n"
    )
    assert not hub.data.exists()


# -- the database file ---------------------------------------------------------------------------


def test_a_file_that_is_not_sqlite_is_refused_untouched(hub: Hub) -> None:
    hub.data.mkdir()
    hub.db.write_bytes(b"this is not a database\n" * 100)
    before = (hub.db.read_bytes(), hub.db.stat().st_mtime_ns)
    for args in (("user", "create", "alice"), ("user", "list"), ("reg-key", "purge-expired")):
        doc = hub.doc(*args, code=1)
        assert doc["error"]["code"] == "storage_error"
        assert doc["error"]["message"] == (
            f"{hub.db}: cannot open the hub database: file is not a database"
        )
    stderr = error(hub.admin("worker", "list"), 1)
    assert stderr == f"error: {hub.db}: cannot open the hub database: file is not a database\n"
    assert (hub.db.read_bytes(), hub.db.stat().st_mtime_ns) == before
    assert [p.name for p in hub.data.iterdir()] == ["hub.db"]


def test_only_user_create_makes_a_database(hub: Hub) -> None:
    for args in (("user", "list"), ("worker", "list"), ("reg-key", "purge-expired")):
        stderr = error(hub.admin(*args), 1)
        assert stderr.startswith(f"error: {hub.db}: no hub database here (check --data-dir")
    assert not hub.data.exists()
    hub.ok("user", "create", "alice")
    assert hub.db.exists()


def test_new_files_are_private(hub: Hub) -> None:
    proc = hub.admin("user", "create", "alice", umask=0o022)
    assert proc.returncode == 0, proc.stderr
    assert mode(hub.data) == 0o700
    assert mode(hub.db) == 0o600
    # With the database held open (as the hub would), the WAL files persist: check them too.
    holder = hub.store()
    holder.list_users()
    proc = hub.admin("user", "create", "bob", umask=0o022)
    assert proc.returncode == 0, proc.stderr
    for name in ("hub.db", "hub.db-wal", "hub.db-shm"):
        assert mode(hub.data / name) == 0o600, name
    holder.close()


def test_works_while_the_hub_holds_the_database(hub: Hub) -> None:
    hub.ok("user", "create", "alice")
    running = hub.store()  # the "hub": an open connection in WAL mode
    alice = running.get_user("alice")
    worker = register(running, alice.id, "w1")

    reader = sqlite3.connect(hub.db, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM users").fetchone() == (1,)  # a held snapshot
    doc = hub.doc("user", "token-create", "alice")
    assert hub.doc("worker", "deregister", "--id", worker.id) == {"deregistered": worker.id}
    hub.ok("user", "create", "bob")
    assert reader.execute("SELECT COUNT(*) FROM users").fetchone() == (1,)
    reader.execute("COMMIT")
    assert running.authenticate_user(doc["token"], T).id == alice.id
    assert running.get_worker(worker.id).status is WorkerStatus.DEREGISTERING

    # While the hub is inside a write transaction, reading verbs do not wait for it.
    writer = sqlite3.connect(hub.db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE users SET is_admin = 1")
    try:
        started = time.monotonic()
        assert [u["is_admin"] for u in hub.doc("user", "list")["users"]] == [False, False]
        assert hub.doc("worker", "list", "--status", "all")["workers"][0]["id"] == worker.id
        assert time.monotonic() - started < 8  # the store's busy timeout is 10 s
    finally:
        writer.execute("ROLLBACK")


# -- the parser ----------------------------------------------------------------------------------


def test_help_and_usage(hub: Hub) -> None:
    proc = hub.run("--help")
    assert proc.returncode == 0 and "user" in proc.stdout and "reg-key" in proc.stdout
    assert "GROUP" in error(hub.run(), 2)
    assert "VERB" in error(hub.run("worker"), 2)
    doc = json.loads(hub.run("user", "--json").stdout)
    assert doc["error"]["code"] == "usage"
