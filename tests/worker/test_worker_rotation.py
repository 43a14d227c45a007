"""The worker's half of a token rotation, in process against a real hub on loopback (the
hub's wall clock injected): it saves the offered token to ``state.json`` and then
acknowledges it; a token it cannot save is not acknowledged, and the old one stays its own.
(Crashes between the steps, with real processes: tests/e2e/test_token_rotation_e2e.py.)"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from support.hubpeer import Env, WallClock, running_hub, wait_until

from leapcore.errors import StorageError
from leapcore.proto.limits import DAY_MS, HubLimits
from leapcore.store.workerstate import STATE_FILE, WorkerState
from leapcore.worker import daemon
from leapcore.worker.daemon import Worker

T = 1_700_000_000_000


def _file_token(data: Path) -> str:
    return str(json.loads((data / STATE_FILE).read_text())["auth_token"])


def _hashes(store: object, worker_id: str) -> tuple[bytes, bytes | None]:
    row = store._one(  # type: ignore[attr-defined]
        "SELECT token_hash, pending_token_hash FROM workers WHERE id = ?", (worker_id,)
    )
    return row[0], row[1]


@asynccontextmanager
async def online(tmp_path: Path) -> AsyncIterator[tuple[Env, WallClock, Worker]]:
    """A hub (its wall clock at ``T``) and a classic worker registered and online."""
    wall = WallClock(T)
    limits = HubLimits(revocation_check_interval=0.05)
    async with running_hub(tmp_path / "hub", wall_clock=wall, limits=limits) as env:
        worker = Worker(tmp_path / "w", hub_url=env.url, name="box", encryption_mode="classic",
                        registration_key=env.key())  # fmt: skip
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.serve)
            with trio.fail_after(10):
                await worker.wait_online()
            yield env, wall, worker
            worker.stop()


async def test_the_worker_saves_then_acknowledges(tmp_path: Path) -> None:
    data = tmp_path / "w"
    async with online(tmp_path) as (env, wall, worker):
        assert worker.state is not None
        worker_id, old = worker.state.worker_id, _file_token(data)
        wall.ms = T + 84 * DAY_MS  # the window opens while the link is up

        def rotated() -> bool:
            current, pending = _hashes(env.store, worker_id)
            return pending is None and current != hashlib.sha256(old.encode()).digest()

        with trio.fail_after(10):
            await wait_until(rotated)
        new = _file_token(data)
        assert new != old
        assert _hashes(env.store, worker_id)[0] == hashlib.sha256(new.encode()).digest()
        assert worker.state.auth_token == new  # the next connect uses it
        assert worker.online  # the link carried on
        [event] = env.store.list_audit(kind="worker_token_rotated")
        assert event.detail == {"reason": "acknowledged"}


async def test_a_token_that_cannot_be_saved_is_not_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "leapcore.worker")
    data = tmp_path / "w"
    async with online(tmp_path) as (env, wall, worker):
        assert worker.state is not None
        worker_id, before = worker.state.worker_id, (data / STATE_FILE).read_bytes()

        def refuse(data_dir: Path, state: WorkerState) -> Path:
            raise StorageError(f"{data_dir / STATE_FILE}: cannot write: No space left")

        monkeypatch.setattr(daemon, "save_state", refuse)
        wall.ms = T + 84 * DAY_MS
        with trio.fail_after(10):
            await wait_until(lambda: "could not save the new auth token" in caplog.text)
        assert (data / STATE_FILE).read_bytes() == before
        current, pending = _hashes(env.store, worker_id)
        assert pending is not None  # offered, never acknowledged
        token = json.loads(before)["auth_token"]
        assert current == hashlib.sha256(token.encode()).digest()
        assert worker.online and worker.state.auth_token == token
    assert "No space left" in caplog.text
