"""Token expiry and rotation on a real hub on loopback, its wall clock injected: the offer at
connect and on a live link inside the rotation window, the ack that retires the old token, a
lost ack finished by the next connect, a second offer after a connect with the old token,
expired worker and API tokens refused ``token_expired``, and the audit rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from support.helpers import expect
from support.hubpeer import KEYS, Env, Peer, WallClock, running_hub, until_closed

from leapcore.errors import ConfigError, Unauthenticated
from leapcore.proto.limits import DAY_MS, HubLimits
from leapcore.proto.link_codec import (
    ClientHello,
    Connect,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    LinkMessage,
    RotateToken,
    RotateTokenAck,
    WorkerGreeting,
)
from leapcore.proto.link_state import LinkRole
from leapcore.store.hubstore import utc_text

T = 1_700_000_000_000


@asynccontextmanager
async def hub(tmp_path: Path) -> AsyncIterator[tuple[Env, WallClock]]:
    wall = WallClock(T)
    limits = HubLimits(revocation_check_interval=0.05)
    async with running_hub(tmp_path, wall_clock=wall, limits=limits) as env:
        yield env, wall


@asynccontextmanager
async def worker(env: Env, token: str) -> AsyncIterator[tuple[Peer, list[LinkMessage]]]:
    """A greeted worker link, and what came with the greeting up to the heartbeat's ack (a
    ``rotate_token``, if the hub offered one at connect)."""
    async with env.link(LinkRole.WORKER) as peer:
        await peer.send(Connect(1, token))
        await peer.send(Heartbeat(1, "classic", **KEYS))
        assert isinstance(await peer.recv(), WorkerGreeting)
        extra: list[LinkMessage] = []
        with trio.fail_after(10):
            while (message := await peer.recv()) != HeartbeatAck(1):
                extra.append(message)
        yield peer, extra


async def refused(env: Env, token: str) -> ErrorMessage:
    async with env.link(LinkRole.WORKER) as peer:
        await peer.send(Connect(1, token))
        messages = await until_closed(peer, 10)
    [error] = messages
    assert isinstance(error, ErrorMessage)
    return error


async def test_no_offer_outside_the_window(tmp_path: Path) -> None:
    async with hub(tmp_path) as (env, wall):
        _, token = await env.register()
        wall.ms = T + 82 * DAY_MS  # 8 days left
        async with worker(env, token) as (peer, extra):
            assert extra == []
            await peer.send(Heartbeat(2))
            assert await peer.recv() == HeartbeatAck(2)


async def test_offer_on_a_live_link_then_the_ack_retires_the_old_token(tmp_path: Path) -> None:
    async with hub(tmp_path) as (env, wall):
        worker_id, old = await env.register()
        async with worker(env, old) as (peer, extra):
            assert extra == []
            wall.ms = T + 84 * DAY_MS  # the window opens while the link is up
            with trio.fail_after(10):
                offer = await peer.recv()
            assert isinstance(offer, RotateToken)
            assert offer.expires_at == wall.ms + 90 * DAY_MS
            assert offer.auth_token != old
            assert env.store.pending_token_expiry(worker_id) == offer.expires_at
            # Not offered twice on the same link.
            await peer.send(Heartbeat(2))
            assert await peer.recv() == HeartbeatAck(2)
            await peer.send(RotateTokenAck(offer.request_id))
            await peer.send(Heartbeat(3))
            assert await peer.recv() == HeartbeatAck(3)
        assert env.store.pending_token_expiry(worker_id) is None
        assert env.store.get_worker(worker_id).token_expires_at == offer.expires_at
        try:
            env.store.authenticate_worker(old, wall.ms)
        except Unauthenticated as exc:
            assert str(exc) == "invalid auth token"
        else:  # pragma: no cover
            raise AssertionError("the old token still works")
        async with worker(env, offer.auth_token) as (_, extra):
            assert extra == []  # a fresh token: nothing to offer
        [event] = env.store.list_audit(kind="worker_token_rotated")
        assert event.worker_id == worker_id
        assert event.detail == {"reason": "acknowledged"}
        assert event.address is not None and event.address.startswith("127.0.0.1:")


async def test_a_lost_ack_is_finished_by_connecting_with_the_new_token(tmp_path: Path) -> None:
    async with hub(tmp_path) as (env, wall):
        worker_id, old = await env.register()
        wall.ms = T + 85 * DAY_MS
        async with worker(env, old) as (_, extra):
            [offer] = extra  # offered at connect
            assert isinstance(offer, RotateToken)
        # The worker saved it but its ack never arrived: the next connect uses it.
        async with worker(env, offer.auth_token) as (_, extra):
            assert extra == []
        assert env.store.pending_token_expiry(worker_id) is None
        error = await refused(env, old)
        assert (error.code, error.message) == ("unauthenticated", "invalid auth token")
        [event] = env.store.list_audit(kind="worker_token_rotated")
        assert event.detail == {"reason": "used at connect"}


async def test_a_connect_with_the_old_token_gets_a_fresh_offer(tmp_path: Path) -> None:
    """The worker died before saving: its old token still works, and the new offer replaces
    the first, which no longer signs in."""
    async with hub(tmp_path) as (env, wall):
        worker_id, old = await env.register()
        wall.ms = T + 85 * DAY_MS
        async with worker(env, old) as (_, extra):
            [first] = extra
        async with worker(env, old) as (peer, extra):
            [second] = extra
            assert isinstance(first, RotateToken) and isinstance(second, RotateToken)
            assert second.auth_token != first.auth_token
            await peer.send(RotateTokenAck(second.request_id))
            await peer.send(Heartbeat(2))
            assert await peer.recv() == HeartbeatAck(2)
        error = await refused(env, first.auth_token)
        assert error.code == "unauthenticated"
        async with worker(env, second.auth_token) as (_, extra):
            assert extra == []
        assert env.store.pending_token_expiry(worker_id) is None


async def test_an_ack_for_another_request_is_a_protocol_error(tmp_path: Path) -> None:
    async with hub(tmp_path) as (env, wall):
        _, old = await env.register()
        wall.ms = T + 85 * DAY_MS
        async with worker(env, old) as (peer, extra):
            [offer] = extra
            assert isinstance(offer, RotateToken)
            await peer.send(RotateTokenAck(offer.request_id + 1))
            [error] = await until_closed(peer, 10)
        assert isinstance(error, ErrorMessage)
        assert error.code == "link_protocol_error"
        assert "rotate_token_ack for unknown request" in error.message


async def test_an_expired_worker_token_is_refused_token_expired(tmp_path: Path) -> None:
    async with hub(tmp_path) as (env, wall):
        worker_id, token = await env.register()
        expiry = T + 90 * DAY_MS
        wall.ms = expiry
        error = await refused(env, token)
        assert error.code == "token_expired"
        assert error.message == (
            f"worker token expired on {utc_text(expiry)}; register the worker again "
            "(leapcore-worker --registration-key)"
        )
        assert error.hub_id == env.store.hub_id
        [event] = env.store.list_audit(kind="token_expired")
        assert event.detail["credential"] == "worker_token"
        assert str(event.detail["reason"]).startswith("worker token expired on ")
        assert env.store.get_worker(worker_id).status.value == "active"  # nothing retired


async def test_an_expired_api_token_is_refused_token_expired(tmp_path: Path) -> None:
    async with hub(tmp_path) as (env, wall):
        # The hub's own clock makes the token (lifetime from the setting).
        user = env.store.get_user("alice")
        token = env.store.create_token(user.id, T)
        wall.ms = T + 90 * DAY_MS
        async with env.link(LinkRole.CLIENT) as peer:
            await peer.send(ClientHello(1, token))
            [error] = await until_closed(peer, 10)
        assert isinstance(error, ErrorMessage)
        assert error.code == "token_expired"
        assert error.message.startswith("API token expired on ")
        [event] = env.store.list_audit(kind="token_expired")
        assert event.detail["credential"] == "api_token"


async def test_the_lifetimes_are_hub_settings(tmp_path: Path) -> None:
    wall = WallClock(T)
    limits = HubLimits(worker_token_lifetime_days=30, token_rotation_window_days=3)
    async with running_hub(tmp_path, wall_clock=wall, limits=limits) as env:
        worker_id, token = await env.register()
        assert env.store.get_worker(worker_id).token_expires_at == T + 30 * DAY_MS
        wall.ms = T + 26 * DAY_MS
        async with worker(env, token) as (_, extra):
            assert extra == []
        wall.ms = T + 27 * DAY_MS
        async with worker(env, token) as (_, extra):
            [offer] = extra
            assert isinstance(offer, RotateToken)
            assert offer.expires_at == wall.ms + 30 * DAY_MS


def test_the_window_must_be_shorter_than_the_lifetime() -> None:
    expect(
        ConfigError,
        r"^HubLimits.token_rotation_window_days \(7\) must be less than "
        r"worker_token_lifetime_days \(7\)$",
        HubLimits,
        worker_token_lifetime_days=7,
    )
    expect(ConfigError, "must be between 2 and 3650", HubLimits, worker_token_lifetime_days=1)
    expect(ConfigError, "must be between 1 and 365", HubLimits, token_rotation_window_days=0)
    assert HubLimits(worker_token_lifetime_days=2, token_rotation_window_days=1)
