"""``leapcore remote`` naming things as a person does, as real processes against a solo hub:
a worker by its name or a unique start of its id (``--worker``, ``$LEAPCORE_WORKER``), pins
by the start of an id, registration keys listed by id and first characters and revoked by
either the id or the key itself."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time

from support.procs import Env, env_fixture  # noqa: F401 (env_fixture: the fixture)
from support.solokit import start_solo

from leapcore.crypto.keys import PublicKeyBundle
from leapcore.crypto.primitives import (
    MLKEM_PUBLIC_KEY_SIZE,
    SLHDSA_PUBLIC_KEY_SIZE,
    X25519_KEY_SIZE,
)
from leapcore.store.hubstore import SQLiteHubStore
from leapcore.store.pinstore import PinStore


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _register(env: Env, *names: str) -> list[str]:
    """Workers of the solo user registered behind the hub's back (never connected)."""
    store = SQLiteHubStore(env.hub_dir / "hub.db", create=False)
    try:
        owner = store.get_user("solo").id
        ids = []
        for name in names:
            _, key = store.mint_registration_key(owner, _now_ms())
            worker, _ = store.register_worker(
                key, name=name, version="1.0", labels={}, now_ms=_now_ms()
            )
            ids.append(worker.id)
        return ids
    finally:
        store.close()


def _rename_id(env: Env, old: str, new: str) -> None:
    """Give a worker another id, to make two ids share a start (they are random)."""
    db = env.db()
    try:
        with db:
            db.execute("UPDATE workers SET id = ? WHERE id = ?", (new, old))
    finally:
        db.close()


def test_a_worker_by_name_by_the_start_of_its_id_or_from_the_environment(env: Env) -> None:
    url, box, fingerprint = start_solo(env, "solo")

    # By name, and by the start of its id: the output names the whole id.
    doc = env.json("worker", "info", "--worker", "box")
    assert (doc["worker_id"], doc["fingerprint"]) == (box, fingerprint)
    doc = env.json("worker", "ping", "--worker", box[:4], "--count", "1")
    assert doc["worker_id"] == box and doc["count"] == 1
    proc = env.remote("worker", "ping", "--worker-id", "box", "--count", "1")  # the old flag
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ping worker {box}: 1 end-to-end round trips\n")

    # $LEAPCORE_WORKER wins over $LEAPCORE_WORKER_ID; a flag over both.
    def info(*flags: str, **environ: str) -> str:
        proc = env.run("leapcore", "remote", "worker", "info", "--json", *flags,
                       LEAPCORE_HUB=url, **environ)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["worker_id"])

    assert info(LEAPCORE_WORKER="box", LEAPCORE_WORKER_ID="nonsense") == box
    assert info(LEAPCORE_WORKER_ID=box[:5]) == box
    assert info("--worker", "box", LEAPCORE_WORKER="nonsense") == box

    # None matches: not found (exit 3), and the message says what was looked for.
    for ref, hint in (("nobody", "no worker id starts with it"), ("bo", "at least 4 characters")):
        proc = env.remote("worker", "info", "--worker", ref)
        assert proc.returncode == 3, proc.stderr
        assert hint in proc.stderr
    proc = env.remote("worker", "info")
    assert proc.returncode == 2
    assert "--worker is required (or set LEAPCORE_WORKER)" in proc.stderr

    # Two ids that start alike: ambiguous (exit 2), listing both; one more character is enough.
    away, gone = _register(env, "away", "gone")
    _rename_id(env, away, "Samea" + away[5:])
    _rename_id(env, gone, "Sameb" + gone[5:])
    away, gone = "Samea" + away[5:], "Sameb" + gone[5:]
    proc = env.remote("worker", "deregister", "--worker", "Same")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines() == [
        "error: ambiguous worker reference: 2 worker ids start with 'Same':",
        f"  {away}  away",
        f"  {gone}  gone",
        "give the whole id, or more of it",
    ]
    proc = env.remote("worker", "deregister", "--worker", "Same", "--json")
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "ambiguous_reference"
    assert error["candidates"] == [{"id": away, "name": "away"}, {"id": gone, "name": "gone"}]

    # Nothing was deregistered by the refusals; then `away` by name, `gone` by its start.
    assert set(env.workers()) == {"box", "away", "gone"}
    proc = env.remote("worker", "deregister", "--worker", "away")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"worker {away} is deregistering: it is told when it next connects\n"
    assert env.json("worker", "deregister", "--worker", "Sameb")["worker_id"] == gone
    assert set(env.workers()) == {"box"}
    # A deregistering worker is no longer anyone's to name.
    assert env.remote("worker", "deregister", "--worker", "away").returncode == 3


def _bundle(n: int) -> PublicKeyBundle:
    def key(label: str, size: int) -> bytes:
        return hashlib.shake_256(f"{label}{n}".encode()).digest(size)

    return PublicKeyBundle(
        key("x", X25519_KEY_SIZE), key("m", MLKEM_PUBLIC_KEY_SIZE), key("s", SLHDSA_PUBLIC_KEY_SIZE)
    )


def test_pins_by_the_start_of_a_worker_id(env: Env) -> None:
    hub = "https://pins.example:8443"
    path = env.config / "pins.example_8443" / "pins.json"
    store = PinStore(path)
    for n, worker_id in enumerate(("alpha-one", "alpha-two", "beta-worker")):
        store.verify(worker_id, _bundle(n))

    def pins(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
        return env.run("leapcore", "remote", "worker", "pins", *args, "--hub", hub, **environ)

    doc = json.loads(pins("show", "--worker", "beta", "--json").stdout)
    assert doc["pin"]["worker_id"] == "beta-worker"
    doc = json.loads(pins("show", "--json", LEAPCORE_WORKER="alpha-t").stdout)
    assert doc["pin"]["worker_id"] == "alpha-two"
    proc = pins("remove", "--worker", "alph")
    assert proc.returncode == 2, proc.stderr
    assert "2 pinned worker ids start with 'alph'" in proc.stderr
    assert sorted(store.load()) == ["alpha-one", "alpha-two", "beta-worker"]
    # Whole ids still work, and a start that matches nothing is taken as a whole id.
    assert pins("remove", "--worker-id", "alpha-one").returncode == 0
    proc = pins("remove", "--worker", "gamma")
    assert proc.returncode == 0 and proc.stdout.endswith("; nothing removed\n")
    assert pins("show", "--worker", "gamma").returncode == 3
    assert pins("remove", "--worker", "alph").returncode == 0  # unique now
    assert sorted(store.load()) == ["beta-worker"]


KEY_ROW = re.compile(r"^(\S+)  +(\S+\u2026)  +(\S+ \S+Z)  +(\S+ \S+Z)  +(live|expired)$")


def test_registration_keys_list_and_revoke_by_id_or_key(env: Env) -> None:
    start_solo(env, "solo")
    assert env.remote("worker", "reg-key", "list").stdout == "no live registration keys\n"
    first = env.reg_key()
    second = env.reg_key()

    listed = env.json("worker", "reg-key", "list")["keys"]
    assert [k["prefix"] for k in listed] == [second[:6], first[:6]]  # newest first
    assert set(listed[0]) == {"id", "prefix", "created_at", "expires_at", "state"}
    assert {k["state"] for k in listed} == {"live"}
    second_id, first_id = listed[0]["id"], listed[1]["id"]
    assert first_id != first and second_id != second  # an id is not the key

    proc = env.remote("worker", "reg-key", "list")
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["ID", "KEY", "CREATED", "EXPIRES", "STATE"]
    rows = [KEY_ROW.match(line) for line in lines[1:]]
    assert all(rows), lines
    assert [(m[1], m[2], m[5]) for m in rows if m] == [
        (second_id, f"{second[:6]}\u2026", "live"),
        (first_id, f"{first[:6]}\u2026", "live"),
    ]
    assert first not in proc.stdout and second not in proc.stdout

    # By the key itself (as `reg-key create` printed it), then by an id.
    proc = env.remote("worker", "reg-key", "revoke", first)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"revoked registration key {first_id}\n"
    assert env.json("worker", "reg-key", "revoke", second_id) == {"revoked": second_id}
    assert env.json("worker", "reg-key", "revoke", first_id) == {"revoked": first_id}  # again
    assert env.json("worker", "reg-key", "list") == {"keys": []}
    every = env.json("worker", "reg-key", "list", "--include-expired")["keys"]
    states = {k["id"]: k["state"] for k in every}  # with the solo worker's (used) key
    assert (len(states), states[first_id], states[second_id]) == (3, "expired", "expired")

    proc = env.remote("worker", "reg-key", "revoke", "no-such-key", "--json")
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["error"]["code"] == "not_found"
    assert env.remote("worker", "reg-key", "revoke").returncode == 2
