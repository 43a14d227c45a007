"""``HubSession`` deadlines and keepalive against a scripted fake hub, under MockClock.

The fake hub is a :class:`LinkConnection` in the hub role on an in-memory pipe
(``hub_session(dial=...)``), so ``autojump_clock`` runs the timers without waiting. It greets
the client, answers heartbeats, and does with each request what the test says: answer it,
or lose it.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from support.fakehub import MemoryPipe, pipe_pair

from leapcore.errors import ConfigError, DeadlineExceeded, LinkClosed, LinkProtocolError
from leapcore.peer.hubsession import KEEPALIVE_INTERVAL, HubSession, hub_session
from leapcore.proto.link_codec import (
    ChannelClose,
    ChannelOpened,
    ClientGreeting,
    ClientHello,
    Heartbeat,
    HeartbeatAck,
    HubRequest,
    HubResponse,
    LinkMessage,
    OpenChannel,
)
from leapcore.proto.link_state import LinkConnection, LinkRole


class FakeHub:
    def __init__(self, pipe: MemoryPipe) -> None:
        self.pipe = pipe
        self.conn = LinkConnection(LinkRole.HUB)
        self.received: list[tuple[float, LinkMessage]] = []
        #: Requests lost on the way (never answered) until answered by hand.
        self.lose = False
        self.lost: list[LinkMessage] = []

    async def send(self, message: LinkMessage) -> None:
        await self.pipe.send(self.conn.send(message))

    def of_type(self, kind: type) -> list[tuple[float, LinkMessage]]:
        return [(t, m) for t, m in self.received if isinstance(m, kind)]

    async def serve(self) -> None:
        try:
            while True:
                while (message := self.conn.next_message()) is not None:
                    self.received.append((trio.current_time(), message))
                    await self.handle(message)
                self.conn.receive_data(await self.pipe.receive())
        except LinkClosed:
            pass

    async def handle(self, message: LinkMessage) -> None:
        if isinstance(message, ClientHello):
            await self.send(ClientGreeting("u-1", "alice"))
        elif isinstance(message, Heartbeat):
            await self.send(HeartbeatAck(message.seq))
        elif isinstance(message, (HubRequest, OpenChannel)):
            if self.lose:
                self.lost.append(message)
            elif isinstance(message, HubRequest):
                await self.send(HubResponse(message.request_id, {"echo": message.method}))


@asynccontextmanager
async def session(**kw: object) -> AsyncIterator[tuple[HubSession, FakeHub]]:
    client_end, hub_end = pipe_pair()
    hub = FakeHub(hub_end)

    @asynccontextmanager
    async def dial() -> AsyncIterator[MemoryPipe]:
        yield client_end

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.serve)
        async with hub_session(
            "http://fake.invalid",
            "tok",
            dial=dial,
            **kw,  # type: ignore[arg-type]
        ) as signed_in:
            yield signed_in, hub
        nursery.cancel_scope.cancel()


async def test_a_call_the_hub_never_answers_times_out_and_a_late_answer_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session() as (hub, fake):
        fake.lose = True
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded, match=r"did not answer workers\.list within 5s"):
            await hub.call("workers.list", timeout=5)
        assert trio.current_time() - start == pytest.approx(5)
        (request,) = fake.lost
        assert isinstance(request, HubRequest)
        fake.lose = False
        await fake.send(HubResponse(request.request_id, {"late": True}))  # ignored
        assert await hub.call("workers.list") == {"echo": "workers.list"}
        start = trio.current_time()
        fake.lose = True
        with pytest.raises(DeadlineExceeded):
            await hub.call("workers.list")  # the default deadline
        assert trio.current_time() - start == pytest.approx(30)


async def test_an_open_the_hub_never_answers_times_out_and_a_late_opened_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session() as (hub, fake):
        fake.lose = True
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded, match="channel to w-1 within 4s"):
            await hub.request_open("w-1", b"m1", 65519, timeout=4)
        assert trio.current_time() - start == pytest.approx(4)
        (request,) = fake.lost
        assert isinstance(request, OpenChannel)
        await fake.send(ChannelOpened(request.request_id, 77, b"m2", 65519))
        await trio.testing.wait_all_tasks_blocked()
        closes = [m for _, m in fake.of_type(ChannelClose)]
        assert closes == [ChannelClose(77, "closed", "the open was abandoned")]
        assert not hub.busy


async def test_an_idle_session_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with session() as (hub, fake):
        await trio.sleep(20 * 60)
        assert [type(m) for _, m in fake.received] == [ClientHello]
        assert hub.heartbeats_sent == 0


async def _pending_call(hub: HubSession, seconds: float) -> None:
    with pytest.raises(DeadlineExceeded):
        await hub.call("slow", timeout=seconds)


@pytest.mark.parametrize("interval", [KEEPALIVE_INTERVAL, 7.0])
async def test_a_busy_silent_session_sends_a_heartbeat_every_interval(
    interval: float, autojump_clock: trio.testing.MockClock
) -> None:
    async with session(keepalive=interval) as (hub, fake):
        fake.lose = True
        busy = 20 * 60 + 1  # busy for 20 min, nothing else sent
        await _pending_call(hub, busy)
        beats = fake.of_type(Heartbeat)
        assert hub.heartbeats_sent == len(beats) == busy // interval
        sends = [t for t, m in fake.received if not isinstance(m, ClientHello)]
        gaps = [b - a for a, b in itertools.pairwise(sends)]
        assert all(gap == pytest.approx(interval) for gap in gaps)
        assert [m.seq for _, m in beats] == list(range(1, len(beats) + 1))  # type: ignore[attr-defined]
        # Idle again: no more heartbeats.
        before = hub.heartbeats_sent
        await trio.sleep(20 * 60)
        assert hub.heartbeats_sent == before


async def test_other_traffic_makes_heartbeats_unnecessary(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session() as (hub, fake):

        async def chatty() -> None:
            for _ in range(30):
                await trio.sleep(KEEPALIVE_INTERVAL - 5)
                fake.lose = False
                assert await hub.call("workers.list")
                fake.lose = True

        fake.lose = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(chatty)
            await _pending_call(hub, 30 * (KEEPALIVE_INTERVAL - 5))
        assert fake.of_type(Heartbeat) == []


async def test_keepalive_none_sends_nothing_and_a_bad_interval_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session(keepalive=None) as (hub, fake):
        fake.lose = True
        await _pending_call(hub, 600)
        assert fake.of_type(Heartbeat) == []
    for bad in (0, -1.0):
        with pytest.raises(ConfigError, match="keepalive"):  # before any dial
            async with hub_session("http://fake.invalid", "tok", keepalive=bad):
                raise AssertionError("not reached")


async def test_an_open_whose_caller_was_cancelled_is_closed_once_when_opened_late(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session() as (hub, fake):
        fake.lose = True
        with trio.move_on_after(3) as gave_up:
            await hub.request_open("w-1", b"m1", 65519)
        assert gave_up.cancelled_caught
        assert not hub.busy  # nobody waits for it any more
        (request,) = fake.lost
        assert isinstance(request, OpenChannel)
        opened = ChannelOpened(request.request_id, 78, b"m2", 65519)
        await fake.send(opened)
        await fake.send(opened)  # a duplicate: no second close
        await trio.testing.wait_all_tasks_blocked()
        closes = [m for _, m in fake.of_type(ChannelClose)]
        assert closes == [ChannelClose(78, "closed", "the open was abandoned")]
        fake.lose = False
        assert await hub.call("workers.list") == {"echo": "workers.list"}  # the link lives on


async def test_an_answer_to_a_request_never_made_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session() as (hub, fake):
        await fake.send(HubResponse(99, {"forged": True}))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(LinkProtocolError, match="unknown request 99"):
            await hub.call("workers.list")


async def test_what_is_queued_when_the_block_ends_is_still_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_end, hub_end = pipe_pair()
    fake = FakeHub(hub_end)

    @asynccontextmanager
    async def dial() -> AsyncIterator[MemoryPipe]:
        yield client_end

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.serve)
        async with hub_session("http://fake.invalid", "tok", dial=dial) as hub:
            for seq in range(1, 4):
                await hub.send(Heartbeat(seq))  # queued: the block ends at once
        await trio.testing.wait_all_tasks_blocked()
        beats = [m for _, m in fake.of_type(Heartbeat) if isinstance(m, Heartbeat)]
        assert [m.seq for m in beats] == [1, 2, 3]
        nursery.cancel_scope.cancel()
