"""Tunnel test kit: a real channel pair (real handshake and ciphers, classic mode, the hub
played by an in-memory relay that returns credit) whose worker end serves ``tcp``, and
loopback TCP servers to dial."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.peer.channel import Services
from leapcore.proto.channel_mux import DEFAULT_MAX_STREAMS
from leapcore.proto.tunnel_policy import ALLOW_ALL, TunnelPolicy
from leapcore.worker.tcp import add_tcp_service
from support.channelpair import OWNER, MemoryPair, running


class TunnelPair(MemoryPair):
    """A client channel and a worker channel joined in memory; ``policy`` is read per open."""

    def __init__(self) -> None:
        super().__init__()
        self.policy: TunnelPolicy = ALLOW_ALL


def make_pair(
    keypair: WorkerKeyPair,
    *,
    user_id: str = OWNER,
    dial_timeout: float = 30.0,
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> TunnelPair:
    """``max_streams``: the streams the worker end lets the client have open at once (a
    real worker's channels allow 128)."""
    pair = TunnelPair()
    services = Services()
    add_tcp_service(services, lambda: pair.policy, dial_timeout=dial_timeout)
    pair.join(keypair, services, user_id=user_id, max_streams=max_streams)
    return pair


@asynccontextmanager
async def running_pair(
    keypair: WorkerKeyPair,
    *,
    user_id: str = OWNER,
    dial_timeout: float = 30.0,
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> AsyncIterator[TunnelPair]:
    pair = make_pair(keypair, user_id=user_id, dial_timeout=dial_timeout, max_streams=max_streams)
    async with running(pair):
        yield pair


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
