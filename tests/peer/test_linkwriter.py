"""``leapcore.peer.linkwriter``: the one writer of a peer's link (client and worker alike)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from leapcore.errors import LinkClosed
from leapcore.net.pipe import WRITE_BATCH
from leapcore.peer.linkwriter import QUEUE_SIZE, LinkWriter
from leapcore.proto.link_codec import (
    ChannelData,
    ClientGreeting,
    ClientHello,
    Heartbeat,
    LinkMessage,
    encode,
)
from leapcore.proto.link_state import LinkConnection, LinkRole


class GatedPipe:
    """Records each transport write; a write waits until :attr:`open` is set."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.open = trio.Event()
        self.open.set()
        self.fail_next = False

    async def send(self, data: bytes) -> None:
        await self.open.wait()
        if self.fail_next:
            raise LinkClosed("the pipe broke")
        self.writes.append(data)

    async def receive(self) -> bytes:  # pragma: no cover - never read
        raise LinkClosed("write-only")

    async def aclose(self) -> None:  # pragma: no cover
        pass


def client_conn() -> LinkConnection:
    """A client connection past its greeting (so that it may send anything a client may)."""
    conn = LinkConnection(LinkRole.CLIENT)
    conn.send(ClientHello(1, "tok"))
    conn.receive_data(encode(ClientGreeting("u", "alice")))
    assert conn.next_message() is not None
    return conn


def data(n: int, size: int = 100) -> ChannelData:
    return ChannelData(1, n + 1, 0, bytes(size))


def encoded(messages: list[LinkMessage]) -> bytes:
    reference = client_conn()
    return b"".join(reference.send(m) for m in messages)


async def test_what_is_queued_goes_out_in_order_joined_into_batches() -> None:
    pipe = GatedPipe()
    pipe.open = trio.Event()  # held: everything queues up
    writer = LinkWriter(pipe, client_conn())
    # Items of ~64 KiB: a batch takes items until it reaches WRITE_BATCH.
    big = [data(i, 65535) for i in range(10)]
    for message in big[:4]:
        await writer.send(message)
    await writer.send_many(big[4:6])
    assert writer.send_nowait(big[6])
    writer.push(big[7])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        pipe.open.set()
        await trio.testing.wait_all_tasks_blocked()
        writer.close()
    assert b"".join(pipe.writes) == encoded(big[:8])
    # Four items reach WRITE_BATCH; the other four (one of two messages) make the next write.
    assert len(pipe.writes) == 2 and len(pipe.writes[0]) >= WRITE_BATCH
    assert writer.done.is_set() and writer.closed


async def test_a_full_queue_makes_senders_wait_but_push_always_queues() -> None:
    pipe = GatedPipe()
    pipe.open = trio.Event()
    queued = 0

    def count() -> None:
        nonlocal queued
        queued += 1

    writer = LinkWriter(pipe, client_conn(), queue_size=2, on_queued=count)
    await writer.send(Heartbeat(1))
    await writer.send(Heartbeat(2))
    assert not writer.send_nowait(Heartbeat(3))  # full: nothing queued
    writer.push(Heartbeat(3))  # room or not
    assert writer.queued == 3 and queued == 3
    done = []

    async def blocked_sender() -> None:
        await writer.send(Heartbeat(4))
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_sender)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # waits for room
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()  # the writer took the queue: room
        assert len(done) == 1
        pipe.open.set()
        await trio.testing.wait_all_tasks_blocked()
        writer.close()
    assert b"".join(pipe.writes) == encoded([Heartbeat(i) for i in (1, 2, 3, 4)])
    assert queued == 4
    assert LinkWriter(pipe, client_conn()).queue_size == QUEUE_SIZE


async def test_close_writes_what_is_queued_then_refuses_everything() -> None:
    pipe = GatedPipe()
    writer = LinkWriter(pipe, client_conn())
    await writer.send(Heartbeat(1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await writer.send(Heartbeat(2))
        await writer.drain(5)
    assert b"".join(pipe.writes) == encoded([Heartbeat(1), Heartbeat(2)])
    with pytest.raises(LinkClosed):
        await writer.send(Heartbeat(3))
    with pytest.raises(LinkClosed):
        writer.send_nowait(Heartbeat(3))
    with pytest.raises(LinkClosed):
        writer.push(Heartbeat(3))


async def test_drain_waits_a_bounded_time(autojump_clock: trio.testing.MockClock) -> None:
    pipe = GatedPipe()
    pipe.open = trio.Event()  # the peer never reads
    writer = LinkWriter(pipe, client_conn())
    await writer.send(Heartbeat(1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        start = trio.current_time()
        await writer.drain(5)
        assert trio.current_time() - start == pytest.approx(5)
        nursery.cancel_scope.cancel()
    assert writer.done.is_set() and pipe.writes == []


async def test_a_failed_write_ends_the_writer_and_every_sender() -> None:
    pipe = GatedPipe()
    pipe.open = trio.Event()
    writer = LinkWriter(pipe, client_conn(), queue_size=1)
    await writer.send(Heartbeat(1))
    errors: list[Exception] = []

    async def waiting_sender() -> None:
        try:
            await writer.send(Heartbeat(2))
            await writer.send(Heartbeat(3))  # the queue is full again: waits
        except LinkClosed as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiting_sender)

        async def run() -> None:
            with pytest.raises(LinkClosed, match="the pipe broke"):
                await writer.run()

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        pipe.fail_next = True
        pipe.open.set()
    assert len(errors) == 1 and "the pipe broke" in str(errors[0])
    assert writer.closed and writer.queued == 0
    with pytest.raises(LinkClosed, match="the pipe broke"):
        await writer.send(Heartbeat(4))
