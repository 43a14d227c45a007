"""``leapcore-hub admin audit list`` run as a real subprocess on a real hub database (HOME
pointed at a temporary directory); the events are recorded through SQLiteHubStore."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.procs import script

from leapcore.proto.audit_events import ADMIN_CLI, ANONYMOUS, AuditEvent
from leapcore.store.hubstore import SQLiteHubStore

HOUR = 3600.0


class Admin:
    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.vars = {k: v for k, v in os.environ.items() if not k.startswith("LEAPCORE_")}
        self.vars["HOME"] = str(root)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script("leapcore-hub"), "admin", *args, "--data-dir", str(self.data)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=self.vars,
        )

    def doc(self, *args: str) -> Any:
        proc = self.run(*args, "--json")
        assert (proc.returncode, proc.stderr) == (0, ""), (proc.stdout, proc.stderr)
        return json.loads(proc.stdout)


@pytest.fixture
def admin(tmp_path: Path) -> Admin:
    return Admin(tmp_path)


@pytest.fixture
def recorded(admin: Admin) -> None:
    """A database with events about two workers W1 and W2, some of them old."""
    now = time.time()
    store = SQLiteHubStore(admin.data / "hub.db")
    events = (
        AuditEvent(now - 5 * HOUR, "worker_registered", "worker:W1", "W1", "10.0.0.1:1"),
        AuditEvent(now - HOUR, "worker_replaced", "worker:W1", "W1", "10.0.0.1:2"),
        AuditEvent(now - HOUR / 2, "worker_registered", "worker:W2", "W2", "10.0.0.2:1"),
        AuditEvent(
            now - 60,
            "worker_deregistered",
            "user:alice",
            "W1",
            "10.0.0.3:7",
            {"by": "owner"},
        ),
        AuditEvent(now - 30, "token_refused", ANONYMOUS, None, "10.9.9.9:9", {"reason": "x"}),
    )
    for event in events:
        assert store.record_audit(event)
    store.close()


def test_list_json_by_worker_and_since(admin: Admin, recorded: None) -> None:
    doc = admin.doc("audit", "list", "--worker", "W1", "--since", "2h")
    assert set(doc) == {"events"}
    assert [(e["kind"], e["id"]) for e in doc["events"]] == [
        ("worker_deregistered", 4),
        ("worker_replaced", 2),
    ]
    event = doc["events"][0]
    assert set(event) == {"id", "at", "kind", "actor", "worker_id", "address", "detail"}
    assert event["actor"] == "user:alice"
    assert event["worker_id"] == "W1"
    assert event["address"] == "10.0.0.3:7"
    assert event["detail"] == {"by": "owner"}
    assert event["at"].endswith("Z") and len(event["at"]) == len("2026-01-31T12:00:00.000Z")
    everything = admin.doc("audit", "list")["events"]
    assert [e["id"] for e in everything] == [5, 4, 3, 2, 1]
    assert everything[0]["worker_id"] is None
    assert [e["id"] for e in admin.doc("audit", "list", "--limit", "2")["events"]] == [5, 4]
    kind = admin.doc("audit", "list", "--kind", "worker_registered")["events"]
    assert [e["worker_id"] for e in kind] == ["W2", "W1"]


def test_since_takes_an_iso_time(admin: Admin, recorded: None) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2 * HOUR))
    assert [e["id"] for e in admin.doc("audit", "list", "--since", since)["events"]] == [
        5,
        4,
        3,
        2,
    ]
    assert admin.doc("audit", "list", "--since", "2999-01-01")["events"] == []


def test_human_lines(admin: Admin, recorded: None) -> None:
    proc = admin.run("audit", "list", "--worker", "W1")
    assert (proc.returncode, proc.stderr) == (0, "")
    header, *lines = proc.stdout.splitlines()
    assert header.split() == ["TIME", "KIND", "ACTOR", "WORKER", "ADDRESS", "DETAIL"]
    assert [line.split()[1:] for line in lines] == [
        ["worker_deregistered", "user:alice", "W1", "10.0.0.3:7", "by=owner"],
        ["worker_replaced", "worker:W1", "W1", "10.0.0.1:2", "-"],
        ["worker_registered", "worker:W1", "W1", "10.0.0.1:1", "-"],
    ]
    proc = admin.run("audit", "list", "--worker", "nobody")
    assert (proc.returncode, proc.stdout) == (0, "no matching audit events\n")


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (("--since", "yesterday"), "--since: 'yesterday' is neither a duration"),
        (("--since", "2h30"), "--since: '2h30' is neither a duration"),
        (("--kind", "worker_eaten"), "--kind: unknown event kind 'worker_eaten'"),
        (("--limit", "0"), "--limit must be between 1 and"),
    ],
)
def test_bad_flags_are_usage_errors(
    admin: Admin, recorded: None, flags: tuple[str, ...], problem: str
) -> None:
    proc = admin.run("audit", "list", *flags)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert problem in proc.stderr


def test_a_missing_database_is_not_created(admin: Admin) -> None:
    proc = admin.run("audit", "list")
    assert proc.returncode != 0
    assert "no hub database here" in proc.stderr
    assert not (admin.data / "hub.db").exists()


def test_the_admin_clis_own_changes_are_audited(admin: Admin) -> None:
    created = admin.doc("user", "create", "alice")
    admin.doc("user", "token-revoke", "--id", created["token_id"])
    events = admin.doc("audit", "list")["events"]
    assert [(e["kind"], e["actor"]) for e in events] == [
        ("api_token_revoked", "admin-cli"),
        ("api_token_created", "admin-cli"),
    ]
    assert events[1]["detail"] == {"user": "alice", "token_id": created["token_id"]}
    assert created["token"] not in json.dumps(events)
    store = SQLiteHubStore(admin.data / "hub.db", create=False)
    user_id = created["user"]["id"]
    _, used = store.mint_registration_key(user_id, int(time.time() * 1000))
    worker, _ = store.register_worker(
        used, name="box", version="1.0", labels={}, now_ms=int(time.time() * 1000)
    )
    _, spare = store.mint_registration_key(user_id, int(time.time() * 1000))
    store.close()
    admin.doc("worker", "deregister", "--id", worker.id)
    revoked = admin.doc("reg-key", "revoke", "--id", spare)["revoked"]  # by the key itself
    events = admin.doc("audit", "list", "--limit", "2")["events"]
    assert [(e["kind"], e["actor"], e["worker_id"], e["detail"]) for e in events] == [
        (
            "registration_key_revoked",
            ADMIN_CLI,
            None,
            {"registration_key_id": revoked, "by": "administrator"},
        ),
        ("worker_deregistered", ADMIN_CLI, worker.id, {"by": "administrator"}),
    ]
    assert spare not in json.dumps(events)
