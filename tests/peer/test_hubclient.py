"""``leapcore.peer.hubsession`` against an in-process hub on loopback."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from leapcore.errors import (
    FailedPrecondition,
    HubRequestFailed,
    LinkClosed,
    NotFound,
    Unauthenticated,
)
from leapcore.hub.server import Hub
from leapcore.peer.hubsession import hub_error, hub_session


def now_ms() -> int:
    return int(time.time() * 1000)


@asynccontextmanager
async def running_hub(tmp_path: Path) -> AsyncIterator[tuple[Hub, str, str]]:
    hub = Hub(tmp_path / "hub.db")
    _, token = hub.store.create_user("alice", now_ms())
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(lambda task_status: hub.serve(task_status=task_status))
        try:
            yield hub, f"http://{host}:{port}", token
        finally:
            await hub.shutdown()


async def test_calls_and_error_mapping(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as (_, url, token), hub_session(url, token) as hub:
        assert hub.user_name == "alice"
        assert await hub.list_workers() == []
        minted = await hub.create_registration_key()
        key = minted["registration_key"]
        assert minted["expires_at"] > now_ms()
        assert await hub.registration_key_state(key) == "live"
        with pytest.raises(FailedPrecondition, match="extension not allowed yet"):
            await hub.extend_registration_key(key)
        await hub.revoke_registration_key(key)
        assert await hub.registration_key_state(key) == "expired"
        with pytest.raises(NotFound):
            await hub.deregister_worker("nobody")
        with pytest.raises(HubRequestFailed) as info:
            await hub.call("no.such.method")
        assert info.value.hub_code == "invalid_argument"
        # Several tasks at once: each gets its own answer.
        states: list[str] = []
        async with trio.open_nursery() as nursery:
            for _ in range(10):

                async def one() -> None:
                    states.append(await hub.registration_key_state(key))

                nursery.start_soon(one)
        assert states == ["expired"] * 10


async def test_bad_token_unreachable_hub_and_go_away(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as (server, url, token):
        with pytest.raises(Unauthenticated):
            async with hub_session(url, "wrong"):
                pass  # pragma: no cover
        async with hub_session(url, token) as hub:
            await server.shutdown()
            with pytest.raises(LinkClosed):
                await hub.list_workers()
    with pytest.raises(LinkClosed):
        async with hub_session(url, token):
            pass  # pragma: no cover


def test_hub_error_classes() -> None:
    assert isinstance(hub_error("not_found", "x"), NotFound)
    error = hub_error("internal", "hub storage error")
    assert isinstance(error, HubRequestFailed)
    assert error.hub_code == "internal" and error.code == "hub_request_failed"
