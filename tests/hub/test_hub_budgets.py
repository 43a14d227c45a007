"""The hub's budgets (:class:`leapcore.proto.limits.HubLimits`), each exceeded by a hostile peer.

Every test exceeds one budget, checks the refusal or the close, and checks that a
bystander (another link, or the same link for a refused channel) still works. Timeouts
run on trio's MockClock (``autojump_clock``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from support.hubpeer import (
    SIZE,
    Env,
    Peer,
    alive,
    gate_next_link,
    now_ms,
    open_ok,
    recv,
    running_hub,
    scrape,
    serve_worker,
    until_closed,
    value,
    wait_until,
    workers,
)

from leapcore.errors import ConfigError
from leapcore.hub.server import SEND_QUEUE, Hub
from leapcore.net.dial import connect_link
from leapcore.proto.limits import MAX_LINK_QUEUE_BYTES, REG_KEY_LIFETIME_MS, HubLimits
from leapcore.proto.link_codec import (
    ChannelClose,
    ChannelRefused,
    ChannelRequest,
    ClientGreeting,
    ClientHello,
    Connect,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    HubRequest,
    HubResponse,
    OpenChannel,
    encode,
)
from leapcore.proto.link_state import LinkRole


async def refused_sign_in(env: Env, token: str, url: str | None = None) -> ErrorMessage:
    async with connect_link(url or env.url) as pipe:
        peer = Peer(pipe, LinkRole.CLIENT)
        await peer.send(ClientHello(1, token))
        [error] = await peer.until_closed()
        assert isinstance(error, ErrorMessage)
        return error


async def open_refused(client: Peer, request_id: int, worker_id: str) -> ChannelRefused:
    await client.send(OpenChannel(request_id, worker_id, b"m1", SIZE))
    refused = await recv(client)
    assert isinstance(refused, ChannelRefused) and refused.request_id == request_id, refused
    return refused


# -- the limits value and its settings ------------------------------------------------------


def test_limits_have_documented_defaults_and_ranges() -> None:
    limits = HubLimits()
    assert (limits.client_idle_timeout, limits.max_links_per_user) == (600.0, 32)
    assert (limits.max_links_per_address, limits.max_channels_per_link) == (256, 256)
    assert (limits.max_channels_per_user, limits.max_channels_per_worker) == (1024, 256)
    assert limits.max_pending_opens_per_worker == 64
    assert limits.max_link_queue_bytes == MAX_LINK_QUEUE_BYTES == 4 * 1024 * 1024
    assert limits.max_live_registration_keys == 16
    assert limits.revocation_check_interval == 0.5
    with pytest.raises(ConfigError, match="client_idle_timeout must be between 60 and"):
        HubLimits(client_idle_timeout=59)
    with pytest.raises(ConfigError, match="max_links_per_user must be an integer"):
        HubLimits(max_links_per_user=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_channels_per_worker must be between 1 and"):
        HubLimits(max_channels_per_worker=0)


# -- idle client links ----------------------------------------------------------------------


async def test_an_idle_client_link_is_closed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        running_hub(tmp_path, limits=HubLimits(client_idle_timeout=60)) as env,
        env.client() as busy,
        env.client() as idle,
    ):
        start = trio.current_time()
        closed: list[float] = []

        async def watch_idle() -> None:
            assert await until_closed(idle, 120) == [
                ErrorMessage(
                    "unavailable", "the link was idle for 60 s and is closed", env.store.hub_id
                )
            ]
            closed.append(trio.current_time() - start)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_idle)
            for seq in range(1, 4):  # heartbeats keep a link alive past the idle time
                await trio.sleep(50)
                await alive(busy, seq)
        assert closed == [pytest.approx(60, abs=0.1)]
        await alive(busy, 9)  # the busy one is still served
        assert value(await scrape(env), "links_closed_total", reason="idle") == 1


# -- links per user and per address --------------------------------------------------------


async def test_links_per_user_are_capped(tmp_path: Path) -> None:
    async with running_hub(tmp_path, limits=HubLimits(max_links_per_user=2)) as env:
        _, bob_token = env.store.create_user("bob", now_ms())
        async with env.client() as first, env.client():
            error = await refused_sign_in(env, env.token)
            assert error.code == "quota_exceeded"
            assert "2 client links" in error.message and "max_links_per_user" in error.message
            async with env.client(bob_token) as bob:  # another user is not affected
                await alive(bob)
            await alive(first)
        # The slots are given back when the links end.
        async with env.client(), env.client() as again:
            await alive(again)
        assert value(await scrape(env), "sign_ins_refused_total", reason="links_per_user") == 1


async def test_links_per_address_are_capped(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub.db", limits=HubLimits(max_links_per_address=2))
    sock = str(tmp_path / "hub.sock")
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(
            lambda task_status: hub.serve(unix_path=sock, task_status=task_status)
        )
        env = Env(hub, f"http://{host}:{port}")
        _, bob_token = env.store.create_user("bob", now_ms())
        worker_id, token = await env.register()  # registering does not sign in: not counted
        async with env.worker(token) as worker, env.client(bob_token) as bob:
            # A worker and a client from 127.0.0.1: the address is full, for anyone.
            error = await refused_sign_in(env, env.token)
            assert error.code == "quota_exceeded"
            assert "max_links_per_address" in error.message
            async with env.link(LinkRole.WORKER) as peer:
                await peer.send(Connect(1, token))
                [error] = await peer.until_closed()
                assert isinstance(error, ErrorMessage) and error.code == "quota_exceeded"
            assert hub.is_online(worker_id)  # the refused reconnect did not replace it
            # A local (Unix-socket) peer is not counted per address.
            async with connect_link(f"unix:{sock}") as pipe:
                local = Peer(pipe, LinkRole.CLIENT)
                await local.send(ClientHello(1, env.token))
                assert isinstance(await local.recv(), ClientGreeting)
                await alive(local)
            await alive(worker)
            await alive(bob)
        await wait_until(lambda: not hub._address_links)
        async with env.client() as again:
            await alive(again)
        await hub.shutdown()


# -- channels -------------------------------------------------------------------------------


async def test_channels_per_link_are_capped(tmp_path: Path) -> None:
    async with (
        running_hub(tmp_path, limits=HubLimits(max_channels_per_link=2)) as env,
        workers(env, 1) as [(worker_id, _worker)],
        env.client() as client,
        env.client() as other,
    ):
        first = await open_ok(client, 1, worker_id)
        await open_ok(client, 2, worker_id)
        refused = await open_refused(client, 3, worker_id)
        assert refused.code == "quota_exceeded"
        assert "2 channels" in refused.message and "max_channels_per_link" in refused.message
        await open_ok(other, 1, worker_id)  # another link of the same user may open
        # Closing one gives its slot back.
        await client.send(ChannelClose(first.channel_id, "closed", "done"))
        await wait_until(lambda: env.hub.open_channels == 2)  # first's slot is free
        await open_ok(client, 4, worker_id)
        await alive(client)
        assert value(await scrape(env), "channel_opens_total", result="quota_exceeded") == 1


async def test_channels_per_user_are_capped(tmp_path: Path) -> None:
    async with running_hub(tmp_path, limits=HubLimits(max_channels_per_user=3)) as env:
        bob, bob_token = env.store.create_user("bob", now_ms())
        _, bob_key = env.store.mint_registration_key(bob.id, now_ms())
        bob_worker, bob_worker_token = await env.register(bob_key)
        async with (
            workers(env, 2) as [(w1, _), (w2, _)],
            env.client() as a,
            env.client() as b,
            env.worker(bob_worker_token) as bob_worker_peer,
            env.client(bob_token) as bob_client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(serve_worker, bob_worker_peer)
            await open_ok(a, 1, w1)
            await open_ok(a, 2, w2)
            await open_ok(b, 1, w1)
            refused = await open_refused(b, 2, w2)
            assert refused.code == "quota_exceeded" and "max_channels_per_user" in refused.message
            refused = await open_refused(a, 3, w1)
            assert refused.code == "quota_exceeded"
            # Bob has his own budget.
            for i in range(3):
                await open_ok(bob_client, i + 1, bob_worker)
            await alive(a)
            nursery.cancel_scope.cancel()


async def test_channels_per_worker_are_capped(tmp_path: Path) -> None:
    async with (
        running_hub(tmp_path, limits=HubLimits(max_channels_per_worker=2)) as env,
        workers(env, 2) as [(w1, _), (w2, _)],
        env.client() as client,
    ):
        await open_ok(client, 1, w1)
        await open_ok(client, 2, w1)
        refused = await open_refused(client, 3, w1)
        assert refused.code == "quota_exceeded"
        assert "serves 2 channels" in refused.message
        assert "max_channels_per_worker" in refused.message
        await open_ok(client, 4, w2)  # a bystander worker still takes channels
        await alive(client)


async def test_pending_opens_per_worker_are_capped(tmp_path: Path) -> None:
    async with (
        running_hub(tmp_path, limits=HubLimits(max_pending_opens_per_worker=2)) as env,
        workers(env, 1) as [(w2, _)],
    ):
        slow_id, slow_token = await env.register(name="slow")
        async with env.worker(slow_token) as slow, env.client() as a, env.client() as b:
            # Two different links ask the slow worker; it never answers.
            await a.send(OpenChannel(1, slow_id, b"m1", SIZE))
            await b.send(OpenChannel(1, slow_id, b"m1", SIZE))
            for _ in range(2):
                assert isinstance(await recv(slow), ChannelRequest)
            refused = await open_refused(a, 2, slow_id)
            assert refused.code == "unavailable"
            assert "too many channel opens pending (at most 2)" in refused.message
            await open_ok(b, 2, w2)  # the other worker is not affected
            await alive(slow)


# -- the control queue, in bytes ------------------------------------------------------------


async def test_the_control_queue_is_bounded_in_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="leapcore.hub.server")

    def cut_off() -> bool:
        return any("peer is not reading" in r.getMessage() for r in caplog.records)

    limit = 256 * 1024
    async with running_hub(tmp_path, limits=HubLimits(max_link_queue_bytes=limit)) as env:
        for i in range(12):  # a workers.list answer of a few KiB
            await env.register(name=f"worker-with-a-longish-name-{i:04d}")
        async with env.client() as bystander:
            response = await bystander.request("workers.list")
            assert response.result is not None and len(response.result["workers"]) == 12
            held = gate_next_link(env.hub)
            async with env.client() as hog:
                # The hog's hub-side writer takes one ack and is stuck: nothing more leaves.
                held.hold()
                await hog.send(Heartbeat(1))
                await wait_until(lambda: held.waiting)
                before = len(held.writes)
                asks = (HubRequest(i, "workers.list", {}) for i in range(1, SEND_QUEUE))
                await hog.pipe.send(b"".join(hog.conn.send(ask) for ask in asks))
                await wait_until(cut_off)
                held.release()
                got = await hog.until_closed()
                assert got[0] == HeartbeatAck(1)
                answers = got[1:]
                assert answers and all(isinstance(m, HubResponse) for m in answers)
                assert len(answers) < SEND_QUEUE // 2  # bytes, not the record count, ended it
                queued = sum(len(w) for w in held.writes[before:]) - len(encode(HeartbeatAck(1)))
                assert queued <= limit
            response = await bystander.request("workers.list", 2)
            assert len(response.result["workers"]) == 12  # type: ignore[index]


# -- registration keys ----------------------------------------------------------------------


async def test_live_registration_keys_are_capped(tmp_path: Path) -> None:
    async with running_hub(tmp_path, limits=HubLimits(max_live_registration_keys=3)) as env:
        _, bob_token = env.store.create_user("bob", now_ms())
        # A key that expired long ago does not count.
        env.store.mint_registration_key(env.user_id, now_ms() - 2 * REG_KEY_LIFETIME_MS)
        async with env.client() as client, env.client(bob_token) as bob_client:
            keys = []
            for i in range(3):
                response = await client.request("regkey.create", i + 1)
                assert response.result is not None
                keys.append(response.result["registration_key"])
            response = await client.request("regkey.create", 4)
            assert response.error_code == "quota_exceeded"
            assert "3 live registration keys" in (response.error_message or "")
            assert "max_live_registration_keys" in (response.error_message or "")
            assert (await bob_client.request("regkey.create", 1)).result is not None
            # Using (or revoking) a key frees its place.
            await env.register(keys[0])
            response = await client.request("regkey.create", 5)
            assert response.result is not None
            await alive(client)
        assert len(env.store.list_registration_keys(now_ms())) == 4  # 3 alice + 1 bob


async def test_long_expired_registration_keys_are_purged(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    base = now_ms() / 1000

    def wall() -> float:
        return base + trio.current_time()

    limits = HubLimits(registration_key_retention=3600, purge_interval=600)
    hub = Hub(tmp_path / "hub.db", limits=limits, wall_clock=wall)
    user, _ = hub.store.create_user("alice", now_ms())
    hour = 3600 * 1000
    hub.store.mint_registration_key(user.id, hub.now_ms() - 3 * hour)
    recent, _ = hub.store.mint_registration_key(user.id, hub.now_ms() - hour // 2)
    live, _ = hub.store.mint_registration_key(user.id, hub.now_ms())

    def ids() -> set[str]:
        return {k.id for k in hub.store.list_registration_keys(0, include_expired=True)}

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: hub.serve(task_status=task_status))
        assert ids() == {recent.id, live.id}  # purged at start: expired more than an hour ago
        await trio.sleep(3600 + 601)  # a purge runs every 10 min
        assert ids() == set()  # both expired more than an hour ago by now
        await hub.shutdown()


# -- worker sign-ins are not changed by client budgets --------------------------------------


async def test_a_worker_link_is_never_idle_timed_out_as_a_client(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_hub(tmp_path, limits=HubLimits(client_idle_timeout=60)) as env:
        worker_id, token = await env.register()
        async with env.worker(token) as peer:
            for seq in range(2, 11):  # a heartbeating worker stays well past 60 s
                await trio.sleep(8)
                await alive(peer, seq)
            assert env.hub.is_online(worker_id)


async def test_hub_response_budget_refusals_do_not_close_the_link(tmp_path: Path) -> None:
    """A refused mint is an answer, not a close: the same link goes on working."""
    async with (
        running_hub(tmp_path, limits=HubLimits(max_live_registration_keys=1)) as env,
        env.client() as client,
    ):
        assert (await client.request("regkey.create", 1)).result is not None
        for i in range(2, 6):
            response = await client.request("regkey.create", i)
            assert isinstance(response, HubResponse) and response.error_code == "quota_exceeded"
        assert (await client.request("workers.list", 9)).result == {"workers": []}


async def test_an_answer_too_large_for_one_record_is_an_error_not_silence(
    tmp_path: Path,
) -> None:
    """Forty workers with the longest labels make a ``workers.list`` answer larger than one
    control record may be: the caller gets ``resource_exhausted``, never a silent drop (that
    would leave it waiting for its deadline), and the link goes on working."""
    labels = {f"k{i:02d}".ljust(64, "k"): "v" * 256 for i in range(16)}
    async with running_hub(tmp_path) as env, env.client() as client:
        for i in range(40):  # names are unique per owner: the longest, each its own
            env.store.register_worker(
                env.key(),
                name=f"{i:02d}".rjust(128, "w"),
                version="1.0",
                labels=labels,
                now_ms=now_ms(),
            )
        response = await client.request("workers.list", 1)
        assert isinstance(response, HubResponse)
        assert response.error_code == "resource_exhausted"
        assert "too large" in (response.error_message or "")
        await alive(client)


async def test_the_sign_in_time_is_a_setting(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A link that sends no first record within ``signin_timeout`` is closed; one that
    signs in within it is not."""
    async with running_hub(tmp_path, limits=HubLimits(signin_timeout=3)) as env:
        async with connect_link(env.url) as pipe:
            silent = Peer(pipe, LinkRole.CLIENT)
            start = trio.current_time()
            assert await silent.until_closed() == []
            assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
        async with env.client() as client:  # signed in well within it
            await trio.sleep(5)
            await alive(client)
