"""Worker token rotation survives a crash at every step: real ``leapcore-hub`` and
``leapcore-worker`` processes on loopback (harness in ``support/procs.py``).

A token is brought inside the rotation window by moving its expiry in the hub's database
(the hub reads it at each connect). The worker is then made to SIGKILL itself at a step of
the rotation through the test-only hook ``LEAPCORE_TEST_ROTATION_CRASH``: right before it
writes the new token (``before-save``), or right after writing it and before acknowledging
it (``after-save``). Restarted, it connects, and in the end the hub holds exactly one token
for it — the one in its ``state.json`` — with no rotation pending. An expired token makes
the worker exit 10, its files untouched.

No fixed sleeps: every wait is a bounded poll on a condition, or a process exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import time
from pathlib import Path

from support.procs import Env, Proc, env_fixture, wait_for  # noqa: F401 (env_fixture)
from support.secretlog import record_secret

from leapcore.proto.limits import DAY_MS
from leapcore.store.workerstate import HUB_FILE, STATE_FILE
from leapcore.worker.daemon import ROTATION_CRASH_ENV

CLASSIC = ("--encryption-mode", "classic")


def _token(data: Path) -> str:
    return record_secret(str(json.loads((data / STATE_FILE).read_text())["auth_token"]))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _row(env: Env, worker_id: str) -> tuple[bytes, bytes | None, int | None]:
    """(token_hash, pending_token_hash, token_expires_at) of the worker in the hub's db."""
    db = env.db()
    try:
        row = db.execute(
            "SELECT token_hash, pending_token_hash, token_expires_at FROM workers WHERE id = ?",
            (worker_id,),
        ).fetchone()
    finally:
        db.close()
    return row[0], row[1], row[2]


def _expire_in(env: Env, worker_id: str, ms: int) -> None:
    db = env.db()
    try:
        with db:
            db.execute(
                "UPDATE workers SET token_expires_at = ? WHERE id = ?",
                (int(time.time() * 1000) + ms, worker_id),
            )
    finally:
        db.close()


def _registered(env: Env, name: str) -> str:
    """A classic worker NAME, registered, online and then stopped; its id."""
    env.start_hub()
    env.login()
    worker = env.start_worker(name, env.reg_key(), flags=CLASSIC)
    worker_id = str(env.wait_online(name)[name]["id"])
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.stderr()
    return worker_id


def _crashed(env: Env, name: str, step: str) -> Proc:
    worker = env.start_worker(name, flags=CLASSIC, **{ROTATION_CRASH_ENV: step})
    assert worker.wait() == -signal.SIGKILL, worker.stderr()
    return worker


def _rotations(env: Env) -> list[dict[str, object]]:
    events = env.admin("audit", "list", "--kind", "worker_token_rotated")["events"]
    return list(events)


def _settled(env: Env, worker_id: str, data: Path) -> str:
    """The hub's one token for the worker is the one in state.json, nothing pending, and it
    expires the default 90 days from now; that token."""
    token = _token(data)

    def done() -> bool:
        current, pending, expires = _row(env, worker_id)
        return current == _digest(token) and pending is None and expires is not None

    wait_for(done, "the rotation to settle")
    expires = _row(env, worker_id)[2]
    assert expires is not None
    assert abs(expires - (int(time.time() * 1000) + 90 * DAY_MS)) < 120_000
    assert stat.S_IMODE(os.stat(data / STATE_FILE).st_mode) == 0o600
    return token


def test_killed_after_saving_before_the_ack(env: Env) -> None:
    """The new token is on disk, the hub never heard the ack: the restarted worker connects
    with the new token, which completes the rotation; the old token is gone."""
    worker_id = _registered(env, "box")
    data = env.worker_dir("box")
    old = _token(data)
    _expire_in(env, worker_id, 2 * DAY_MS)

    crashed = _crashed(env, "box", "after-save")
    assert "new auth token saved to" in crashed.stderr()
    new = _token(data)
    assert new != old
    current, pending, _ = _row(env, worker_id)
    assert (current, pending) == (_digest(old), _digest(new))  # both valid at the hub

    env.start_worker("box", flags=CLASSIC)
    env.wait_online("box")
    assert _settled(env, worker_id, data) == new
    [event] = _rotations(env)
    assert event["worker_id"] == worker_id
    assert event["detail"] == {"reason": "used at connect"}
    assert old not in (data / STATE_FILE).read_text()


def test_killed_before_saving(env: Env) -> None:
    """The worker dies before writing: state.json is byte for byte the old one, which still
    works; the restarted worker is offered a new token again, saves and acknowledges it."""
    worker_id = _registered(env, "box")
    data = env.worker_dir("box")
    before = (data / STATE_FILE).read_bytes()
    hub_before = (data / HUB_FILE).read_bytes()
    old = _token(data)
    _expire_in(env, worker_id, 2 * DAY_MS)

    _crashed(env, "box", "before-save")
    assert (data / STATE_FILE).read_bytes() == before
    current, pending, _ = _row(env, worker_id)
    assert current == _digest(old) and pending is not None

    worker = env.start_worker("box", flags=CLASSIC)
    env.wait_online("box")
    worker.logged("new auth token saved to")
    new = _settled(env, worker_id, data)
    assert new != old
    [event] = _rotations(env)
    assert event["detail"] == {"reason": "acknowledged"}
    assert (data / HUB_FILE).read_bytes() == hub_before
    # Still online on the new token, and it survives another restart.
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.stderr()
    env.start_worker("box", flags=CLASSIC)
    env.wait_online("box")
    assert _token(data) == new


def test_an_expired_token_exits_10_and_changes_nothing(env: Env) -> None:
    worker_id = _registered(env, "box")
    data = env.worker_dir("box")
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    _expire_in(env, worker_id, -1000)
    worker = env.start_worker("box", flags=CLASSIC)
    assert worker.wait() == 10, worker.stderr()
    line = worker.stderr().splitlines()[-1]
    assert line.startswith(f"error: hub at {env.url} refused this worker's token: worker token "
                           "expired on ")  # fmt: skip
    assert "register the worker again" in line
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before
    assert "identity retired" not in worker.stderr()


def test_an_expired_worker_is_deregistered_then_registered_again(env: Env) -> None:
    """The recovery of team-hub.md section 9: deregister the expired record, start the worker
    once (it is told, retires its files and exits 0), register it again under its name."""
    worker_id = _registered(env, "box")
    data = env.worker_dir("box")
    _expire_in(env, worker_id, -1000)
    env.admin("worker", "deregister", "--id", worker_id)
    worker = env.start_worker("box", flags=CLASSIC)
    assert worker.wait() == 0, worker.stderr()
    assert not (data / STATE_FILE).exists()
    assert any(p.name.startswith(f"{STATE_FILE}.deregistered-") for p in data.iterdir())
    assert env.admin("worker", "get", "--id", worker_id)["worker"]["status"] == "deleted"
    env.start_worker("box", env.reg_key(), flags=CLASSIC)
    listed = env.wait_online("box")
    assert listed["box"]["id"] != worker_id
