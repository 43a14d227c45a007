"""Channels through the hub on loopback: opening, relaying, credit, closing, cross-worker.

Raw peers speak the link protocol: a fake worker answers ``channel_request`` itself (the hub
never looks at handshake messages, so any bytes do), and a raw client sends
``client_hello`` with a user's API token. Where a destination must *not* read, the hub's
own writer for that link is held at a :class:`Gate`, so the test decides exactly when
frames leave the hub.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from support.hubpeer import (
    KEYS,
    SIZE,
    Env,
    Gate,
    Peer,
    gate_next_link,
    now_ms,
    recv,
    running_hub,
    scrape,
    value,
    wait_until,
)

from leapcore.net.pipe import WRITE_BATCH
from leapcore.proto.limits import CHANNEL_CREDIT, CREDIT_BATCH, MAX_PENDING_OPENS, OPEN_TIMEOUT
from leapcore.proto.link_codec import (
    ChannelAccept,
    ChannelClose,
    ChannelCredit,
    ChannelData,
    ChannelOpened,
    ChannelRefused,
    ChannelReject,
    ChannelRequest,
    ErrorMessage,
    GoAway,
    Heartbeat,
    HeartbeatAck,
    LinkMessage,
    OpenChannel,
    encode,
)

FULL = 65535


async def recv_data(peer: Peer, count: int) -> list[ChannelData]:
    """The next ``count`` data frames (credit records and acks skipped)."""
    out = []
    while len(out) < count:
        message = await recv(peer, (HeartbeatAck, ChannelCredit))
        assert isinstance(message, ChannelData), message
        out.append(message)
    return out


async def credits_until(peer: Peer, channel_id: int, total: int) -> int:
    """Read ``channel_credit`` records for ``channel_id`` until ``total`` bytes came back."""
    got = 0
    while got < total:
        message = await recv(peer)
        assert isinstance(message, ChannelCredit) and message.channel_id == channel_id, message
        assert CREDIT_BATCH <= message.credit <= total - got
        got += message.credit
    return got


async def credits_past(peer: Peer, channel_id: int, minimum: int) -> int:
    """Read ``channel_credit`` records (each at least a batch) until more than ``minimum``
    bytes came back; the total."""
    got = 0
    while got <= minimum:
        message = await recv(peer)
        assert isinstance(message, ChannelCredit) and message.channel_id == channel_id, message
        assert message.credit >= CREDIT_BATCH
        got += message.credit
    return got


async def accept(worker: Peer, size: int | None = None) -> ChannelRequest:
    """Answer the next ``channel_request`` with ``channel_accept`` (message 2: any bytes)."""
    request = await recv(worker)
    assert isinstance(request, ChannelRequest), request
    await worker.send(
        ChannelAccept(
            request.request_id,
            request.channel_id,
            b"m2:" + request.message1,
            size or request.max_message_size,
        )
    )
    return request


async def open_channel(
    client: Peer, worker: Peer, worker_id: str, request_id: int, size: int = SIZE
) -> int:
    await client.send(OpenChannel(request_id, worker_id, b"m1", size))
    request = await accept(worker)
    opened = await recv(client)
    assert opened == ChannelOpened(
        request_id, request.channel_id, b"m2:m1", request.max_message_size
    ), opened
    return request.channel_id


async def heartbeats(peer: Peer, every: float = 3.0) -> None:
    """Keep a worker link alive (the hub drops a worker silent for 10 s)."""
    seq = 100
    while True:
        await trio.sleep(every)
        seq += 1
        await peer.send(Heartbeat(seq))


@asynccontextmanager
async def setup(tmp_path: Path, **kw: object) -> AsyncIterator[tuple[Env, str, str]]:
    """A hub and one registered worker of alice's: (env, worker id, worker token)."""
    async with running_hub(tmp_path, **kw) as env:  # type: ignore[arg-type]
        worker_id, token = await env.register()
        yield env, worker_id, token


# -- opening and relaying --------------------------------------------------------------------


async def test_open_then_data_both_ways(tmp_path: Path) -> None:
    async with (
        setup(tmp_path, max_message_size=8 * 1024 * 1024) as (env, worker_id, token),
        env.worker(token) as worker,
        env.client() as client,
    ):
        await client.send(OpenChannel(7, worker_id, b"hello", 64 * 1024 * 1024))
        request = await recv(worker)
        assert isinstance(request, ChannelRequest)
        # The hub's own request id, the hub-authenticated user, min(client, hub) size.
        assert (request.user_id, request.message1) == (env.user_id, b"hello")
        assert request.max_message_size == 8 * 1024 * 1024
        assert request.channel_id >= 1
        await worker.send(ChannelAccept(request.request_id, request.channel_id, b"msg2", 65519))
        opened = await recv(client)
        assert opened == ChannelOpened(7, request.channel_id, b"msg2", 65519)
        channel = request.channel_id
        assert env.hub.open_channels == 1

        # Client -> worker: a chunked message and a single frame, intact, in order.
        frames = [
            ChannelData(channel, 5, 1, b"a" * FULL),
            ChannelData(channel, 6, 0, b"b" * 16),  # a single frame between the chunks
            ChannelData(channel, 5, 0, b"c" * 100),
        ]
        for frame in frames:
            await client.send(frame)
        assert await recv_data(worker, 3) == frames
        # Credit comes back once the frames were written to the worker's link, in batches:
        # those 65 651 bytes are less than one, three more full frames make one due.
        more = [ChannelData(channel, 11 + i, 0, bytes([i]) * FULL) for i in range(3)]
        for frame in more:
            await client.send(frame)
        assert await recv_data(worker, 3) == more
        assert await credits_until(client, channel, 4 * FULL + 116) == 4 * FULL + 116
        # Worker -> client.
        back = [
            ChannelData(channel, 9, 0, bytes(range(256)) * 4),
            ChannelData(channel, 10, 0, bytes(16)),
        ]
        for frame in back:
            await worker.send(frame)
        assert await recv_data(client, 2) == back
        # Written (the credit for those few bytes waits for a batch).
        await wait_until(lambda: env.hub.channel_buffered(channel) == 0)

        metrics = await scrape(env)
        assert value(metrics, "channels") == 1
        assert value(metrics, "channel_opens_total", result="opened") == 1
        assert value(metrics, "relayed_bytes_total", direction="to_worker") == 4 * FULL + 116
        assert value(metrics, "relayed_bytes_total", direction="to_client") == 1040

        # A second open gets a fresh id.
        second = await open_channel(client, worker, worker_id, 8)
        assert second > channel


async def test_channel_close_and_close_frames_end_the_channel(tmp_path: Path) -> None:
    async with (
        setup(tmp_path) as (env, worker_id, token),
        env.worker(token) as worker,
        env.client() as client,
    ):
        first = await open_channel(client, worker, worker_id, 1)
        second = await open_channel(client, worker, worker_id, 2)
        # channel_close from the client: forwarded as is, the channel is forgotten.
        await client.send(ChannelClose(first, "closed", "bye"))
        assert await recv(worker) == ChannelClose(first, "closed", "bye")
        # A CLOSE data frame from the worker: forwarded, and the channel ends at the hub.
        await worker.send(ChannelData(second, 1, 2, b""))
        assert await recv(client) == ChannelData(second, 1, 2, b"")
        await wait_until(lambda: env.hub.open_channels == 0)
        # Frames for the closed channels are dropped, never forwarded; the link lives on.
        await client.send(ChannelData(first, 1, 0, b"x" * 16))
        await worker.send(ChannelData(second, 1, 0, b"y" * 16))
        await worker.send(Heartbeat(2))
        assert await worker.recv() == HeartbeatAck(2)
        await client.send(Heartbeat(3))
        assert await client.recv() == HeartbeatAck(3)
        assert value(await scrape(env), "frames_dropped_total") == 2


async def test_frames_for_someone_elses_channel_are_dropped(tmp_path: Path) -> None:
    async with (
        setup(tmp_path) as (env, worker_id, token),
        env.worker(token) as worker,
        env.client() as client,
    ):
        channel = await open_channel(client, worker, worker_id, 1)
        _, bob_token = env.store.create_user("bob", now_ms())
        async with env.client(bob_token) as stranger:
            await stranger.send(ChannelData(channel, 1, 0, b"intruder" * 4))
            await stranger.send(ChannelData(channel, 1, 2, b""))  # not even a CLOSE
            await stranger.send(ChannelClose(channel, "closed", "no"))
            await stranger.send(Heartbeat(1))
            assert await stranger.recv() == HeartbeatAck(1)
        # The channel still works and the worker saw none of it.
        await client.send(ChannelData(channel, 2, 0, b"mine" * 4))
        assert await recv_data(worker, 1) == [ChannelData(channel, 2, 0, b"mine" * 4)]
        assert env.hub.open_channels == 1
        assert value(await scrape(env), "frames_dropped_total") == 2


# -- credit ----------------------------------------------------------------------------------


def frames_of(channel: int, total: int, correlation_id: int = 1) -> list[ChannelData]:
    """Single-frame messages carrying ``total`` bytes of ciphertext in all."""
    out = []
    while total:
        size = min(FULL, total)
        out.append(ChannelData(channel, correlation_id, 0, b"\x07" * size))
        total -= size
        correlation_id += 1
    return out


async def test_credit_exactly_spent_then_one_byte_more(tmp_path: Path) -> None:
    async with setup(tmp_path) as (env, worker_id, token):
        held = gate_next_link(env.hub)  # the worker's link
        async with env.worker(token) as worker, env.client() as client:
            first = await open_channel(client, worker, worker_id, 1)
            second = await open_channel(client, worker, worker_id, 2)
            held.hold()  # nothing reaches the worker: no credit back
            burst = frames_of(first, CHANNEL_CREDIT)
            for frame in burst:
                await client.send(frame)
            await wait_until(lambda: env.hub.channel_buffered(first) == CHANNEL_CREDIT)
            # Exactly the credit: nothing closed. One more byte: that channel alone closes.
            await client.send(ChannelData(first, 99, 0, b"!" * 16))
            close = await recv(client)
            assert isinstance(close, ChannelClose) and close.channel_id == first
            assert close.code == "relay_violation"
            assert "exceeds the sender's credit of 0 bytes" in close.message
            # The other channel on the same two links keeps working, both ways.
            await worker.send(ChannelData(second, 1, 0, b"w" * 32))
            assert await recv_data(client, 1) == [ChannelData(second, 1, 0, b"w" * 32)]
            await client.send(ChannelData(second, 2, 0, b"c" * 32))
            held.release()
            # The worker gets the first channel's frames, then its close (channels take turns,
            # so the second channel's frame may come in between).
            got: list[LinkMessage] = []
            while len(got) < len(burst) + 2:
                got.append(await recv(worker, (HeartbeatAck, ChannelCredit)))
            assert [m for m in got if getattr(m, "channel_id", None) == first] == [*burst, close]
            assert [m for m in got if getattr(m, "channel_id", None) == second] == [
                ChannelData(second, 2, 0, b"c" * 32)
            ]
            assert env.hub.open_channels == 1
            metrics = await scrape(env)
            assert value(metrics, "frames_rejected_total", reason="relay_violation") == 1


async def test_a_reader_that_does_not_read_stalls_only_its_channels(tmp_path: Path) -> None:
    async with setup(tmp_path) as (env, worker_id, token), env.worker(token) as worker:
        held = gate_next_link(env.hub)  # the slow client's link
        async with env.client() as slow:
            _, bob_token = env.store.create_user("bob", now_ms())
            channel = await open_channel(slow, worker, worker_id, 1)
            held.hold()
            async with env.client() as other:
                fast = await open_channel(other, worker, worker_id, 1)
                # A well-behaved sender: it sends while it has credit, then waits for more.
                credit, sent = CHANNEL_CREDIT, 0
                while credit:
                    size = min(FULL, credit)
                    await worker.send(ChannelData(channel, sent + 1, 0, bytes(size)))
                    credit -= size
                    sent += 1
                await wait_until(lambda: env.hub.channel_buffered(channel) == CHANNEL_CREDIT)
                # Stalled: the hub holds that channel's credit and no more, and stays responsive.
                async with env.client(bob_token) as bob:
                    assert (await bob.request("workers.list")).result == {"workers": []}
                assert (await other.request("workers.list", 5)).result is not None
                # The same worker's channel to a reading client is not held back.
                await worker.send(ChannelData(fast, 1, 0, b"f" * 64))
                assert await recv_data(other, 1) == [ChannelData(fast, 1, 0, b"f" * 64)]
                assert env.hub.channel_buffered(channel) == CHANNEL_CREDIT
                # The reader catches up: its frames arrive and the credit comes back.
                held.release()
                frames = await recv_data(slow, sent)
                assert sum(len(f.ciphertext) for f in frames) == CHANNEL_CREDIT
                # Everything was written: all but less than a batch is announced back.
                back = await credits_past(worker, channel, CHANNEL_CREDIT - CREDIT_BATCH)
                assert CHANNEL_CREDIT - CREDIT_BATCH < back <= CHANNEL_CREDIT
                assert env.hub.channel_buffered(channel) == 0
                await worker.send(ChannelData(channel, 1000, 0, b"more" * 4))
                assert await recv_data(slow, 1) == [ChannelData(channel, 1000, 0, b"more" * 4)]


# -- refusals --------------------------------------------------------------------------------


async def test_open_refusals(tmp_path: Path) -> None:
    async with (
        setup(tmp_path) as (env, worker_id, token),
        env.worker(token) as worker,
        env.client() as client,
    ):
        offline, _ = await env.register(name="offline")
        bob, bob_token = env.store.create_user("bob", now_ms())
        bobs, bobs_token = await env.register(env.key(bob.id), name="bobs")
        async with env.worker(bobs_token):
            # A stranger's worker (online) reads exactly like one that does not exist.
            await client.send(OpenChannel(1, bobs, b"m1", SIZE))
            stranger = await recv(client)
            await client.send(OpenChannel(2, "no-such-worker", b"m1", SIZE))
            unknown = await recv(client)
        assert stranger == ChannelRefused(1, "not_found", "worker not found")
        assert unknown == ChannelRefused(2, "not_found", "worker not found")
        async with env.client(bob_token) as bob_client:
            await bob_client.send(OpenChannel(1, worker_id, b"m1", SIZE))
            assert await recv(bob_client) == ChannelRefused(1, "not_found", "worker not found")

        await client.send(OpenChannel(3, offline, b"m1", SIZE))
        assert await recv(client) == ChannelRefused(3, "worker_offline", "worker is offline")
        for i, size in enumerate((65518, 64 * 1024 * 1024 + 1, 0), start=4):
            await client.send(OpenChannel(i, worker_id, b"m1", size))
            refused = await recv(client)
            assert isinstance(refused, ChannelRefused)
            assert (refused.request_id, refused.code) == (i, "invalid_max_message_size")

        # The worker rejects: its code, its message after the hub's prefix.
        await client.send(OpenChannel(10, worker_id, b"m1", SIZE))
        request = await recv(worker)
        assert isinstance(request, ChannelRequest)
        await worker.send(
            ChannelReject(request.request_id, request.channel_id, "handshake_failed", "bad m1")
        )
        assert await recv(client) == ChannelRefused(
            10, "handshake_failed", "worker rejected channel: bad m1"
        )
        # A second answer to the same request, or one to an unknown request: ignored.
        await worker.send(ChannelAccept(request.request_id, request.channel_id, b"m2", SIZE))
        await worker.send(ChannelAccept(424242, 1, b"m2", SIZE))

        # The worker accepts with a size above what the hub asked for, or below the minimum.
        for i, bad in ((11, SIZE + 1), (12, 65518)):
            await client.send(OpenChannel(i, worker_id, b"m1", SIZE))
            request = await accept(worker, bad)
            assert await recv(client) == ChannelRefused(
                i, "handshake_failed", "worker answered an invalid max_message_size"
            )
            close = await recv(worker)
            assert isinstance(close, ChannelClose) and close.channel_id == request.channel_id
        assert env.hub.open_channels == 0

        metrics = await scrape(env)
        assert value(metrics, "channel_opens_total", result="not_found") == 1
        assert value(metrics, "channel_opens_total", result="not_owner") == 2
        assert value(metrics, "channel_opens_total", result="worker_offline") == 1
        assert value(metrics, "channel_opens_total", result="invalid_max_message_size") == 3
        assert value(metrics, "channel_opens_total", result="rejected") == 1
        assert value(metrics, "channel_opens_total", result="invalid_accept") == 2
        assert value(metrics, "channel_opens_total", result="opened") == 0
        # Nothing above cost the client its link.
        await client.send(Heartbeat(9))
        assert await client.recv() == HeartbeatAck(9)


async def test_a_silent_worker_times_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        setup(tmp_path) as (env, worker_id, token),
        env.worker(token) as worker,
        env.client() as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(heartbeats, worker)
        start = trio.current_time()
        await client.send(OpenChannel(1, worker_id, b"m1", SIZE))
        request = await recv(worker)
        assert isinstance(request, ChannelRequest)
        with trio.fail_after(60):
            refused = await client.recv()
        assert refused == ChannelRefused(1, "timeout", "worker did not answer the open within 30 s")
        assert trio.current_time() - start == pytest.approx(OPEN_TIMEOUT, abs=0.1)
        assert await recv(worker) == ChannelClose(
            request.channel_id, "closed", "channel open timed out"
        )
        # A late accept is ignored: no channel, nothing sent to the client.
        await worker.send(ChannelAccept(request.request_id, request.channel_id, b"m2", SIZE))
        await client.send(Heartbeat(5))
        assert await client.recv() == HeartbeatAck(5)
        assert env.hub.open_channels == 0
        assert value(await scrape(env), "channel_opens_total", result="timeout") == 1
        nursery.cancel_scope.cancel()


async def test_pending_opens_are_capped_per_link(tmp_path: Path) -> None:
    async with (
        setup(tmp_path) as (env, worker_id, token),
        env.worker(token) as worker,
        env.client() as client,
    ):
        for i in range(MAX_PENDING_OPENS + 1):
            await client.send(OpenChannel(i + 1, worker_id, b"m1", SIZE))
        refused = await recv(client)
        assert isinstance(refused, ChannelRefused)
        assert (refused.request_id, refused.code) == (MAX_PENDING_OPENS + 1, "unavailable")
        for _ in range(MAX_PENDING_OPENS):
            assert isinstance(await recv(worker), ChannelRequest)


# -- relay violations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "text"),
    [
        ([(1, 1, FULL), (2, 1, 16)], "chunk interleaving"),
        ([(0, 0, 16)], "correlation id 0 is reserved"),
        ([(3, 1, FULL)] * 3, "chunked message 3 exceeds 131055 bytes"),
        ([(1, 3, 16)], "unknown flags value 3"),
        ([(1, 2, 16)], "a CLOSE frame carries no data"),
    ],
    ids=["interleaved-more", "correlation-id-0", "oversized-message", "flags", "close-data"],
)
async def test_relay_violation_closes_one_channel(
    tmp_path: Path, frames: list[tuple[int, int, int]], text: str
) -> None:
    async with (
        setup(tmp_path) as (env, worker_id, token),
        env.worker(token) as worker,
        env.client() as client,
    ):
        bad = await open_channel(client, worker, worker_id, 1, size=65519)  # ceiling 131055
        good = await open_channel(client, worker, worker_id, 2)
        for correlation_id, flags, size in frames:
            await worker.send(ChannelData(bad, correlation_id, flags, bytes(size)))
        # Both ends are told; frames forwarded before the violation come first.
        for peer in (client, worker):
            while True:
                message = await recv(peer, (HeartbeatAck, ChannelCredit, ChannelData))
                if isinstance(message, ChannelClose):
                    break
            assert message.channel_id == bad and message.code == "relay_violation"
            assert text in message.message
        await client.send(ChannelData(good, 1, 0, b"still here" * 2))
        assert await recv_data(worker, 1) == [ChannelData(good, 1, 0, b"still here" * 2)]
        assert env.hub.open_channels == 1


# -- links ending ----------------------------------------------------------------------------


async def closes(peer: Peer, channels: Iterable[int]) -> dict[int, ChannelClose]:
    out = {}
    for _ in channels:
        message = await recv(peer, (HeartbeatAck, ChannelCredit))
        assert isinstance(message, ChannelClose), message
        out[message.channel_id] = message
    assert set(out) == set(channels)
    return out


async def test_link_loss_closes_channels_towards_the_other_end(tmp_path: Path) -> None:
    async with setup(tmp_path) as (env, worker_id, token), env.worker(token) as worker:
        async with env.client() as client:
            a = await open_channel(client, worker, worker_id, 1)
            b = await open_channel(client, worker, worker_id, 2)
            await client.send(OpenChannel(3, worker_id, b"m1", SIZE))
            pending = await recv(worker)
            assert isinstance(pending, ChannelRequest)
        # The client went away: its channels and its pending open close at the worker.
        got = await closes(worker, [a, b, pending.channel_id])
        assert {m.code for m in got.values()} == {"link_lost"}
        await wait_until(lambda: env.hub.open_channels == 0)

        async with env.client() as client:
            async with env.worker(token) as second:
                c = await open_channel(client, second, worker_id, 1)
                await client.send(OpenChannel(2, worker_id, b"m1", SIZE))
                assert isinstance(await recv(second), ChannelRequest)
            # The worker went away: its channel closes and its pending open is refused.
            close = await recv(client)
            assert close == ChannelClose(c, "link_lost", "the other end's link to the hub was lost")
            assert await recv(client) == ChannelRefused(2, "worker_offline", "worker went offline")


async def test_a_replaced_worker_link_closes_its_channels_as_replaced(tmp_path: Path) -> None:
    async with (
        setup(tmp_path) as (env, worker_id, token),
        env.worker(token) as first,
        env.client() as client,
    ):
        channel = await open_channel(client, first, worker_id, 1)
        async with env.worker(token) as second:
            close = await recv(client)
            assert isinstance(close, ChannelClose) and close.channel_id == channel
            assert close.code == "replaced"
            assert await first.until_closed() == []
            # The new link serves new channels.
            again = await open_channel(client, second, worker_id, 2)
            assert again > channel


async def test_shutdown_closes_channels_both_ways(tmp_path: Path) -> None:
    async with (
        setup(tmp_path) as (env, worker_id, token),
        env.worker(token) as worker,
        env.client() as client,
    ):
        channel = await open_channel(client, worker, worker_id, 1)
        await env.hub.shutdown()
        close = ChannelClose(channel, "shutdown", "hub is shutting down")
        go_away = GoAway(10, "hub is shutting down")
        assert [m for m in await worker.until_closed() if m != HeartbeatAck(1)] == [close, go_away]
        assert await client.until_closed() == [close, go_away]


# -- worker links: sibling channels and hub requests ------------------------------------------


async def test_cross_worker_channels_between_siblings(tmp_path: Path) -> None:
    async with setup(tmp_path) as (env, worker_id, token):
        sibling_id, sibling_token = await env.register(name="sibling")
        bob, _ = env.store.create_user("bob", now_ms())
        bobs, bobs_token = await env.register(env.key(bob.id), name="bobs")
        async with (
            env.worker(token) as worker,
            env.worker(sibling_token) as sibling,
            env.worker(bobs_token),
        ):
            # The initiating worker is a client of its sibling: same records, same rules.
            await worker.send(OpenChannel(1, sibling_id, b"m1", SIZE))
            request = await accept(sibling)
            assert request.user_id == env.user_id  # the owner's id
            opened = await recv(worker)
            assert opened == ChannelOpened(1, request.channel_id, b"m2:m1", SIZE)
            channel = request.channel_id
            await worker.send(ChannelData(channel, 1, 0, b"ping" * 8))
            assert await recv_data(sibling, 1) == [ChannelData(channel, 1, 0, b"ping" * 8)]
            await sibling.send(ChannelData(channel, 1, 0, b"pong" * 8))
            assert await recv_data(worker, 1) == [ChannelData(channel, 1, 0, b"pong" * 8)]
            # Another owner's worker, or itself: not found.
            for i, target in ((2, bobs), (3, worker_id), (4, "nope")):
                await worker.send(OpenChannel(i, target, b"m1", SIZE))
                assert await recv(worker, (HeartbeatAck, ChannelCredit)) == ChannelRefused(
                    i, "not_found", "worker not found"
                )
            # Hub requests from a worker: only its siblings' list and keys, as its owner.
            listed = await worker.request("workers.list", 10)
            assert listed.result is not None
            assert {w["id"] for w in listed.result["workers"]} == {worker_id, sibling_id}
            keys = await worker.request("worker.keys", 11, worker_id=sibling_id)
            assert keys.result is not None and keys.result["worker_id"] == sibling_id
            denied = await worker.request("regkey.create", 12)
            assert denied.error_code == "permission_denied"


async def test_worker_keys(tmp_path: Path) -> None:
    async with setup(tmp_path) as (env, worker_id, token), env.worker(token):
        never, _ = await env.register(name="never-connected")
        _, bob_token = env.store.create_user("bob", now_ms())
        async with env.client() as client:
            response = await client.request("worker.keys", worker_id=worker_id)
            assert response.result == {
                "worker_id": worker_id,
                "encryption_mode": "classic",
                **{name: base64.b64encode(key).decode() for name, key in KEYS.items()},
            }
            no_keys = await client.request("worker.keys", 2, worker_id=never)
            assert (no_keys.error_code, no_keys.error_message) == (
                "failed_precondition",
                "worker has not reported its keys yet",
            )
            unknown = await client.request("worker.keys", 3, worker_id="nope")
            bad = await client.request("worker.keys", 4)
            assert bad.error_code == "invalid_argument"
        async with env.client(bob_token) as stranger:
            theirs = await stranger.request("worker.keys", worker_id=worker_id)
        for refused in (unknown, theirs):
            assert (refused.error_code, refused.error_message) == ("not_found", "worker not found")


async def test_error_records_still_end_links(tmp_path: Path) -> None:
    """An ``error`` from a peer ends its link; its channels close at the other end."""
    async with (
        setup(tmp_path) as (env, worker_id, token),
        env.worker(token) as worker,
        env.client() as client,
    ):
        channel = await open_channel(client, worker, worker_id, 1)
        await client.send(ErrorMessage("internal", "client crashed"))
        close = await recv(worker)
        assert close == ChannelClose(
            channel, "link_lost", "the other end's link to the hub was lost"
        )


# -- the writer: what the hub hands its transport, seen at a gate ----------------------------


async def writer_held(gate: Gate, client: Peer) -> int:
    """Hold ``gate`` with the hub's writer for that link waiting in it, holding one
    ``heartbeat_ack``; the number of writes that went through before."""
    gate.hold()
    await client.send(Heartbeat(1))
    await wait_until(lambda: gate.waiting)
    return len(gate.writes)


async def test_writer_sends_control_first_then_channels_in_turn(tmp_path: Path) -> None:
    async with setup(tmp_path) as (env, worker_id, token), env.worker(token) as worker:
        held = gate_next_link(env.hub)
        async with env.client() as client:
            a = await open_channel(client, worker, worker_id, 1)
            b = await open_channel(client, worker, worker_id, 2)
            before = await writer_held(held, client)
            on_a = [ChannelData(a, i, 0, b"a" * (16 + i)) for i in (1, 2, 3)]
            on_b = ChannelData(b, 1, 0, b"b" * 26)
            close = ChannelClose(b, "closed", "bye")
            for message in (*on_a, on_b, close):  # the close follows b's frame
                await worker.send(message)
            await wait_until(lambda: env.hub.open_channels == 1)
            # A control record queued after them: the answer to a third open.
            await client.send(OpenChannel(3, worker_id, b"m1", SIZE))
            request = await accept(worker)
            await wait_until(lambda: env.hub.open_channels == 2)
            held.release()
            opened = ChannelOpened(3, request.channel_id, b"m2:m1", SIZE)
            # Control first; then the channels take turns, b's close behind b's frame.
            expected = [opened, on_a[0], on_b, on_a[1], close, on_a[2]]
            assert [await client.recv() for _ in range(7)] == [HeartbeatAck(1), *expected]
            # The ack alone (the writer took it before the rest was queued), then the rest
            # in one transport write.
            assert held.writes[before:] == [
                encode(HeartbeatAck(1)),
                b"".join(encode(m) for m in expected),
            ]
            relayed = sum(len(f.ciphertext) for f in (*on_a, on_b))
            metrics = await scrape(env)
            assert value(metrics, "relayed_bytes_total", direction="to_client") == relayed


async def test_writer_joins_queued_frames_up_to_a_batch(tmp_path: Path) -> None:
    """Queued frames go out in as few writes as the batch size allows, each frame whole and
    in order, and every frame's credit is counted once it was written."""
    async with setup(tmp_path) as (env, worker_id, token), env.worker(token) as worker:
        held = gate_next_link(env.hub)
        async with env.client() as client:
            channel = await open_channel(client, worker, worker_id, 1)
            before = await writer_held(held, client)
            frames = [ChannelData(channel, i + 1, 0, bytes([i]) * FULL) for i in range(6)]
            for frame in frames:
                await worker.send(frame)
            await wait_until(lambda: env.hub.channel_buffered(channel) == 6 * FULL)
            held.release()
            assert await recv(client, ()) == HeartbeatAck(1)
            assert await recv_data(client, 6) == frames
            encoded = [encode(frame) for frame in frames]
            per_write = -(-WRITE_BATCH // len(encoded[0]))  # frames until a write reaches it
            assert per_write == 4
            assert held.writes[before:] == [
                encode(HeartbeatAck(1)),
                b"".join(encoded[:per_write]),
                b"".join(encoded[per_write:]),
            ]
            # Five frames written make a batch of credit due (four are just short of one);
            # the sixth waits for the next batch. The hub holds nothing any more.
            assert 4 * FULL < CREDIT_BATCH <= 5 * FULL
            assert await recv(worker) == ChannelCredit(channel, 5 * FULL)
            await wait_until(lambda: env.hub.channel_buffered(channel) == 0)
