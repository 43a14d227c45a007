"""Tunnel test kit: a real channel pair (real handshake and ciphers, classic mode, the hub
played by an in-memory relay that returns credit) whose worker end serves ``tcp``, and
loopback TCP servers to dial."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from leapcore.crypto.handshake import Initiator, Responder
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.peer.channel import Channel, Services
from leapcore.proto.channel_mux import ChannelEndpoint
from leapcore.proto.link_codec import ChannelData, LinkMessage
from leapcore.proto.tunnel_policy import ALLOW_ALL, TunnelPolicy
from leapcore.worker.tunnel import add_tcp_service

OWNER = "u-owner"


class TunnelPair:
    """A client channel and a worker channel joined in memory; ``policy`` is read per open."""

    def __init__(self) -> None:
        self.client: Channel
        self.worker: Channel
        self.policy: TunnelPolicy = ALLOW_ALL

    async def to_worker(self, message: LinkMessage) -> None:
        assert isinstance(message, ChannelData)
        await trio.lowlevel.checkpoint()
        self.worker.feed(message)
        self.client.add_credit(len(message.ciphertext))

    async def to_client(self, message: LinkMessage) -> None:
        assert isinstance(message, ChannelData)
        await trio.lowlevel.checkpoint()
        self.client.feed(message)
        self.worker.add_credit(len(message.ciphertext))


def make_pair(
    keypair: WorkerKeyPair, *, user_id: str = OWNER, dial_timeout: float = 30.0
) -> TunnelPair:
    initiator = Initiator(keypair.public, "classic")
    responder = Responder(keypair, "classic")
    responder.read_message1(initiator.write_message1())
    initiator.read_message2(responder.write_message2())
    now = trio.current_time()
    pair = TunnelPair()
    services = Services()
    add_tcp_service(services, lambda: pair.policy, dial_timeout=dial_timeout)
    pair.client = Channel(
        ChannelEndpoint(initiator.session(), role="initiator", mode="classic", now=now),
        channel_id=3,
        send=pair.to_worker,
    )
    pair.worker = Channel(
        ChannelEndpoint(responder.session(), role="responder", mode="classic", now=now),
        channel_id=3,
        send=pair.to_client,
        services=services,
        user_id=user_id,
        owner_id=OWNER,
    )
    return pair


@asynccontextmanager
async def running_pair(
    keypair: WorkerKeyPair, *, user_id: str = OWNER, dial_timeout: float = 30.0
) -> AsyncIterator[TunnelPair]:
    pair = make_pair(keypair, user_id=user_id, dial_timeout=dial_timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(pair.client.run)
        await nursery.start(pair.worker.run)
        yield pair
        nursery.cancel_scope.cancel()


class EchoServer:
    """A loopback TCP server: echoes each connection until EOF, then half-closes. Counts
    connections; ``conns`` holds the open server-side streams."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self.conns: list[trio.SocketStream] = []
        self.closed = 0
        self.changed = trio.Event()

    def _kick(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        self.conns.append(stream)
        self._kick()
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass
        finally:
            self.closed += 1
            self._kick()
            await stream.aclose()


@asynccontextmanager
async def echo_server(host: str = "127.0.0.1") -> AsyncIterator[EchoServer]:
    server = EchoServer()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server.handle, 0, host=host)
        )
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()
