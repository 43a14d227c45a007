"""A scripted fake hub for driving a real worker daemon, and in-memory pipes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from leapcore.errors import LinkClosed
from leapcore.net.pipe import LinkPipe
from leapcore.proto.link_codec import (
    Connect,
    Heartbeat,
    HeartbeatAck,
    LinkMessage,
    WorkerGreeting,
)
from leapcore.proto.link_state import LinkConnection, LinkRole
from leapcore.worker.daemon import Worker
from leapcore.worker.signpool import InlineSigner


class MemoryPipe:
    """One end of an in-memory link pipe."""

    def __init__(
        self, send: trio.MemorySendChannel[bytes], receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        self._send = send
        self._receive = receive

    async def send(self, data: bytes) -> None:
        try:
            await self._send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise LinkClosed("peer closed") from None

    async def receive(self) -> bytes:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise LinkClosed("peer closed") from None

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def pipe_pair() -> tuple[MemoryPipe, MemoryPipe]:
    a_send, b_receive = trio.open_memory_channel[bytes](1000)
    b_send, a_receive = trio.open_memory_channel[bytes](1000)
    return MemoryPipe(a_send, a_receive), MemoryPipe(b_send, b_receive)


class HubLink:
    """The fake hub's side of one link."""

    def __init__(self, pipe: LinkPipe, hub: FakeHub) -> None:
        self.pipe = pipe
        self.conn = LinkConnection(LinkRole.HUB)
        self.hub = hub
        self.received: list[tuple[float, LinkMessage]] = []

    async def recv(self) -> LinkMessage:
        while True:
            message = self.conn.next_message()
            if message is not None:
                self.received.append((trio.current_time(), message))
                self.hub.log.append((trio.current_time(), message))
                return message
            self.conn.receive_data(await self.pipe.receive())

    async def send(self, message: LinkMessage) -> None:
        await self.pipe.send(self.conn.send(message))

    async def handshake(self) -> tuple[Connect, Heartbeat]:
        connect = await self.recv()
        beat = await self.recv()
        assert isinstance(connect, Connect) and isinstance(beat, Heartbeat)
        await self.send(WorkerGreeting("w-1", "u-1", "alice"))
        return connect, beat

    async def drain(self) -> None:
        """Answer heartbeats until the worker goes away."""
        try:
            while True:
                message = await self.recv()
                if isinstance(message, Heartbeat):
                    await self.send(HeartbeatAck(message.seq))
        except LinkClosed:
            pass


Script = Callable[[HubLink, int], Awaitable[None]]


class FakeHub:
    """Runs ``script(link, n)`` for the n-th link (0-based) a worker opens."""

    def __init__(self, nursery: trio.Nursery, script: Script) -> None:
        self.nursery = nursery
        self.script = script
        self.links: list[HubLink] = []
        self.dial_times: list[float] = []
        self.log: list[tuple[float, LinkMessage]] = []

    async def on_link(self, pipe: LinkPipe, transport: str = "memory", peer: str = "") -> None:
        link = HubLink(pipe, self)
        n = len(self.links)
        self.links.append(link)
        try:
            await self.script(link, n)
        except LinkClosed:
            pass
        finally:
            await pipe.aclose()

    @asynccontextmanager
    async def dial(self) -> AsyncIterator[LinkPipe]:
        self.dial_times.append(trio.current_time())
        worker_end, hub_end = pipe_pair()
        self.nursery.start_soon(self.on_link, hub_end)
        try:
            yield worker_end
        finally:
            await worker_end.aclose()


class Recorder:
    """An injected ``uniform`` that records how often it was drawn (returns 0.5: no jitter)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return 0.5


def make_worker(data_dir: Path, hub: FakeHub, **kw: object) -> Worker:
    return Worker(
        data_dir,
        hub_url="http://unused.invalid",
        name="box",
        version="9.9",
        labels={"site": "lab"},
        uniform=kw.pop("uniform", Recorder()),  # type: ignore[arg-type]
        signer=kw.pop("signer", InlineSigner()),  # no process pool under a MockClock
        dial=hub.dial,
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def hub_running(script: Script) -> AsyncIterator[FakeHub]:
    async with trio.open_nursery() as nursery:
        yield FakeHub(nursery, script)
        nursery.cancel_scope.cancel()
