"""The hub/worker link end to end: real ``leapcore-hub``, ``leapcore-worker`` and ``leapcore``
processes on loopback (harness in ``procs.py``).

``test_link_survives_hub_restart`` runs once per setup — WebSocket and HTTP/2 over TCP, TLS
(a ``trustme`` CA; HTTP/2 chosen by ALPN, plus one WebSocket client) and a Unix socket: three
workers register, the hub is killed (the workers back off with growing, jittered delays), restarted
on the same address (the workers come back under the same ids, without registering again),
then stopped gracefully (the workers wait the hub's go-away delay). The other tests run once,
over WebSocket on TCP: a killed worker goes offline, and how the daemon treats registration
keys, deregistration and a deleted worker's credentials.

No fixed sleeps: every wait is a bounded poll on a condition, or a process exit.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from support.procs import (  # noqa: F401 (env_fixture: the fixture)
    H2,
    TLS_H2,
    UNIX,
    WEBSOCKET,
    Env,
    Proc,
    Setup,
    env_fixture,
    wait_for,
)

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.net.trioutil import single_exception
from leapcore.proto.link_codec import Connect, WorkerGreeting
from leapcore.proto.link_state import LinkConnection, LinkRole
from leapcore.store.workerstate import ALREADY_REGISTERED, STATE_FILE, WorkerState, save_state
from leapcore.worker.daemon import Worker

#: What a worker prints when the hub refuses its registration key (expired, consumed, unknown).
KEY_REFUSED = (
    "error: registration rejected: unauthenticated: registration key invalid or already consumed\n"
)
GO_AWAY = "hub going away (hub is shutting down); reconnect in 10s"
DEREGISTERED = "leapcore-worker: deregistered by the hub; identity retired, kept as {kept}"
WIPED = (
    "leapcore-worker: the hub this worker registered with deleted it; identity retired, "
    "kept as {kept}"
)
#: Real seconds within which the hub must list a killed worker as offline.
OFFLINE_WITHIN = 10.0


def _registered_as(worker: Proc) -> list[str]:
    return re.findall(r"registered as (\S+); credentials saved to ", worker.stderr())


def _refused(worker: Proc) -> str:
    """The worker exits 8 (refused) with the key refusal; its stderr.

    Only the message is checked here: the exact output is ``test_refused_key_output``'s.
    """
    assert worker.wait() == 8, worker.stderr()
    err = worker.stderr()
    assert KEY_REFUSED.removeprefix("error: ") in err
    return err


def _expire(env: Env, key: str) -> None:
    """Move ``key``'s expiry to the past, in the hub's database."""
    db = env.db()
    with db:
        moved = db.execute(
            "UPDATE registration_keys SET expires_at = ? WHERE key_hash = ?",
            (time.time_ns() // 1_000_000 - 1000, hashlib.sha256(key.encode()).digest()),
        ).rowcount
    db.close()
    assert moved == 1


SETUPS = [WEBSOCKET, H2, TLS_H2, UNIX]


@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: s.name)
def test_link_survives_hub_restart(env: Env, setup: Setup) -> None:
    env.setup = setup
    _link_survives_hub_restart(env)


def _link_survives_hub_restart(env: Env) -> None:
    setup = env.setup
    env.start_hub()
    env.login()
    names = ("w0", "w1", "w2")
    workers = {name: env.start_worker(name, env.reg_key()) for name in names}
    listed = env.wait_online(*names)
    ids = {name: listed[name]["id"] for name in names}
    assert len(set(ids.values())) == 3
    if setup.tls:
        # The same TLS port also speaks WebSocket (ALPN http/1.1) to a client that asks.
        over_ws = env.run("leapcore", "remote", "worker", "list", "--json", "--hub", env.url,
                          "--transport", "websocket", "--ca-file", str(env.ca_file))  # fmt: skip
        assert over_ws.returncode == 0, over_ws.stderr
        assert {w["name"]: w["online"] for w in json.loads(over_ws.stdout)["workers"]} == {
            name: True for name in names
        }
    states = {}
    for name, worker in workers.items():
        assert _registered_as(worker) == [ids[name]]
        worker.logged(f"connected as {ids[name]} (owner alice)")
        states[name] = (env.worker_dir(name) / STATE_FILE).read_bytes()
        assert worker.delays() == []

    # The hub dies without a word: every worker backs off, 1 s then 2 s (each ±20 %).
    env.kill_hub()
    for worker in workers.values():
        wait_for(lambda w=worker: len(w.delays()) >= 2, "two reconnect delays", timeout=10)
    delays = {name: tuple(w.delays()[:2]) for name, w in workers.items()}
    print(f"\n{setup.name}: reconnect delays after SIGKILL: {delays}")
    for first, second in delays.values():
        assert 0.8 <= first <= 1.2
        assert 1.6 <= second <= 2.4
    assert len(set(delays.values())) == 3, f"no jitter: {delays}"

    # The same address again: the same workers come back, with their saved credentials.
    env.start_hub()
    listed = env.wait_online(*names)
    assert {name: listed[name]["id"] for name in names} == ids
    for name, worker in workers.items():
        worker.logged(f"connected as {ids[name]} (owner alice)", count=2)
        assert _registered_as(worker) == [ids[name]]
        assert (env.worker_dir(name) / STATE_FILE).read_bytes() == states[name]
        assert worker.delays()[:2] == list(delays[name])

    # A graceful stop: go-away, and every worker waits exactly the hub's delay.
    seen = {name: len(w.delays()) for name, w in workers.items()}
    assert env.hub is not None
    env.hub.signal(signal.SIGTERM)
    assert env.hub.wait() == 0, env.hub.stderr()
    for name, worker in workers.items():
        worker.logged(GO_AWAY)
        wait_for(lambda w=worker, n=name: len(w.delays()) > seen[n], "the go-away delay")
        assert worker.delays()[seen[name] :] == [10.0]
        assert worker.popen.poll() is None


def test_killed_worker_goes_offline_quickly(env: Env) -> None:
    env.start_hub()
    env.login()
    worker = env.start_worker("box", env.reg_key())
    env.wait_online("box")
    killed = time.monotonic()
    worker.kill()
    wait_for(lambda: not env.workers()["box"]["online"], "the worker to be offline", OFFLINE_WITHIN)
    elapsed = time.monotonic() - killed
    print(f"\nSIGKILLed worker listed offline after {elapsed:.3f}s")
    assert elapsed < OFFLINE_WITHIN


def test_registration_keys_are_used_once(env: Env) -> None:
    env.start_hub()
    env.login()
    # Four workers race for one key: exactly one wins and stays online.
    key = env.reg_key()
    racers = {f"r{i}": env.start_worker(f"r{i}", key) for i in range(4)}
    winner = wait_for(
        lambda: [n for n, w in racers.items() if _registered_as(w)], "one racer to register"
    )
    assert len(winner) == 1, winner
    (name,) = winner
    for other, worker in racers.items():
        if other != name:
            _refused(worker)
    listed = env.wait_online(name)
    assert set(listed) == {name}
    assert racers[name].popen.poll() is None

    # The consumed key, once more: the same refusal.
    _refused(env.start_worker("late", key))

    # A key that expired (its expiry moved to the past in hub.db) is refused the same way.
    expired = env.reg_key()
    _expire(env, expired)
    assert env.admin("reg-key", "list") == {"keys": []}
    _refused(env.start_worker("stale", expired))

    # A registered worker given a key refuses to start (exit 2) and leaves the key live...
    fresh = env.reg_key()
    live = env.admin("reg-key", "list")["keys"]
    assert len(live) == 1
    again = env.start_worker("again", fresh, data=name)
    assert again.wait() == 2
    assert again.stderr() == f"error: {ALREADY_REGISTERED}\n"
    assert env.admin("reg-key", "list")["keys"] == live
    # ...so the key still registers a new worker.
    env.start_worker("newcomer", fresh)
    assert set(env.wait_online(name, "newcomer")) == {name, "newcomer"}


def test_deregistered_offline_worker_and_deleted_worker_credentials(env: Env) -> None:
    env.start_hub()
    env.login()
    worker = env.start_worker("box", env.reg_key())
    box = env.wait_online("box")["box"]
    state = env.worker_dir("box") / STATE_FILE
    saved = env.tmp / "state-copy.json"
    shutil.copy(state, saved)

    # Stopped, then deregistered while offline: the hub tells it when it next connects.
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.stderr()
    wait_for(lambda: not env.workers()["box"]["online"], "the worker to be offline")
    gone = env.json("worker", "deregister", "--worker-id", box["id"])
    assert gone == {"worker_id": box["id"], "status": "deregistering", "notified": False}
    worker = env.start_worker("box")
    assert worker.wait() == 0, worker.stderr()
    assert "deregistered by the hub: worker deregistered by owner" in worker.stderr()
    (kept_state,) = state.parent.glob("state.json.deregistered-*")
    (kept_hub,) = state.parent.glob("hub.json.deregistered-*")
    assert worker.stderr().endswith(DEREGISTERED.format(kept=f"{kept_state}, {kept_hub}") + "\n")
    assert not state.exists()
    assert kept_state.read_bytes() == saved.read_bytes()  # retired, not destroyed
    assert env.json("worker", "list") == {"workers": []}

    # The deleted worker's credentials, restored (without hub.json: the hub is not recorded):
    # only a database that issued the token says worker_deleted; the identity is retired.
    shutil.copy(saved, state)
    worker = env.start_worker("box")
    assert worker.wait() == 0, worker.stderr()
    err = worker.stderr()
    assert "hub error: worker_deleted: this worker was deregistered or deleted on this hub" in err
    (again,) = set(state.parent.glob("state.json.deregistered-*")) - {kept_state}
    assert err.endswith(WIPED.format(kept=again) + "\n")
    assert "registered as" not in err
    assert not state.exists()
    assert json.loads(saved.read_text())["worker_id"] == box["id"]


def test_refused_key_output(env: Env) -> None:
    """docs/cli.md: a key the hub refuses for good exits 8 with exactly
    ``error: registration rejected: <code>: <message>``."""
    env.start_hub()
    env.login()
    key = env.reg_key()
    _expire(env, key)
    worker = env.start_worker("late", key)
    assert worker.wait() == 8
    assert worker.stderr() == KEY_REFUSED


class BufferedPipe:
    """A link pipe like ``net_h2``'s stream: ``receive`` returns buffered data without a
    checkpoint. The hub's side answers ``connect`` with a greeting at once."""

    def __init__(self) -> None:
        self.hub = LinkConnection(LinkRole.HUB)
        self.inbound: list[bytes] = []
        self.readable = trio.Event()

    async def send(self, data: bytes) -> None:
        self.hub.receive_data(data)
        while (message := self.hub.next_message()) is not None:
            if isinstance(message, Connect):
                self.inbound.append(self.hub.send(WorkerGreeting("w-1", "u-1", "alice")))
                self.readable.set()

    async def receive(self) -> bytes:
        while not self.inbound:
            self.readable = trio.Event()
            await self.readable.wait()
        return self.inbound.pop(0)

    async def aclose(self) -> None:
        pass


def test_greeting_buffered_before_the_watchdog_starts(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    """The greeting is already waiting when the link's tasks start; trio runs them in either
    order, so 20 connects put the reader first with probability 1 - 2**-20. (A plain
    ``trio.run``: under pytest-trio the error would reach pytest inside a group.)"""
    save_state(tmp_path, WorkerState("w-1", "tok-1", generated_keypair))

    @asynccontextmanager
    async def dial() -> AsyncIterator[BufferedPipe]:
        yield BufferedPipe()

    async def connect_20_times() -> None:
        for _ in range(20):
            worker = Worker(
                tmp_path, hub_url="http://hub", name="w", encryption_mode="classic", dial=dial
            )
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(worker.run)
                    await worker.wait_online()
                    worker.stop()

    with single_exception():
        trio.run(connect_20_times)
