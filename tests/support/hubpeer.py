"""A real hub on loopback and raw worker/client peers speaking the link protocol to it."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from leapcore.crypto.keys import PUBLIC_KEY_FIELDS
from leapcore.errors import LinkClosed
from leapcore.hub.server import Hub
from leapcore.net.dial import connect_link
from leapcore.net.pipe import LinkPipe, parse_hub_url
from leapcore.proto.link_codec import (
    ChannelAccept,
    ChannelOpened,
    ChannelRequest,
    ClientGreeting,
    ClientHello,
    Connect,
    Heartbeat,
    HeartbeatAck,
    HubRequest,
    HubResponse,
    LinkMessage,
    OpenChannel,
    Register,
    Registered,
    WorkerGreeting,
)
from leapcore.proto.link_state import LinkConnection, LinkRole

KEYS = {name: os.urandom(size) for name, (_, size) in PUBLIC_KEY_FIELDS.items()}


def now_ms() -> int:
    return int(time.time() * 1000)


class Peer:
    """A raw worker or client: its own link state machine over a real pipe."""

    def __init__(self, pipe: LinkPipe, role: LinkRole) -> None:
        self.pipe = pipe
        self.conn = LinkConnection(role)
        self.inbox: deque[LinkMessage] = deque()

    async def send(self, message: LinkMessage) -> None:
        await self.pipe.send(self.conn.send(message))

    async def recv(self) -> LinkMessage:
        while not self.inbox:
            self.inbox.extend(self.conn.receive(await self.pipe.receive()))
        return self.inbox.popleft()

    async def until_closed(self) -> list[LinkMessage]:
        """Every message until the hub closes the link."""
        out = list(self.inbox)
        self.inbox.clear()
        with trio.fail_after(30):
            while True:
                try:
                    data = await self.pipe.receive()
                except LinkClosed:
                    return out
                out.extend(self.conn.receive(data))

    async def request(self, method: str, request_id: int = 1, **params: Any) -> HubResponse:
        await self.send(HubRequest(request_id, method, params))
        response = await self.recv()
        assert isinstance(response, HubResponse)
        assert response.request_id == request_id
        return response


class Env:
    def __init__(self, hub: Hub, url: str) -> None:
        self.hub = hub
        self.url = url
        self.store = hub.store
        user, self.token = self.store.create_user("alice", now_ms())
        self.user_id = user.id

    def key(self, user_id: str | None = None, at: int | None = None) -> str:
        return self.store.mint_registration_key(user_id or self.user_id, at or now_ms())[1]

    @asynccontextmanager
    async def link(self, role: LinkRole) -> AsyncIterator[Peer]:
        async with connect_link(self.url) as pipe:
            yield Peer(pipe, role)

    async def register(self, key: str | None = None, **kw: Any) -> tuple[str, str]:
        async with self.link(LinkRole.WORKER) as peer:
            key = key or self.key()
            # Names are unique per owner: by default each registration gets its own.
            name = kw.get("name", f"box-{key[:8]}")
            await peer.send(Register(1, key, name, "1.0"))
            reply = await peer.recv()
            assert isinstance(reply, Registered), reply
            assert await peer.until_closed() == []
            return reply.worker_id, reply.auth_token

    @asynccontextmanager
    async def worker(self, token: str) -> AsyncIterator[Peer]:
        """A connected worker whose keyed first heartbeat was acknowledged."""
        async with self.link(LinkRole.WORKER) as peer:
            await peer.send(Connect(1, token))
            await peer.send(Heartbeat(1, "classic", **KEYS))
            greeting = await peer.recv()
            assert isinstance(greeting, WorkerGreeting)
            assert await peer.recv() == HeartbeatAck(1)
            yield peer

    @asynccontextmanager
    async def client(self, token: str | None = None) -> AsyncIterator[Peer]:
        async with self.link(LinkRole.CLIENT) as peer:
            await peer.send(ClientHello(1, token or self.token))
            assert isinstance(await peer.recv(), ClientGreeting)
            yield peer


class WallClock:
    """A hub's ``wall_clock`` that a test moves: ``ms``, milliseconds since the epoch."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


@asynccontextmanager
async def running_hub(tmp_path: Path, **kw: Any) -> AsyncIterator[Env]:
    hub = Hub(tmp_path / "hub.db", **kw)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(lambda task_status: hub.serve(task_status=task_status))
        try:
            yield Env(hub, f"http://{host}:{port}")
        finally:
            await hub.shutdown()


async def wait_until(predicate: Any) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.001)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(f"leapcore_hub_{name}", tuple(sorted(labels.items())))]


async def get_http1(url: str, path: str = "/metrics") -> tuple[int, dict[str, str], bytes]:
    address = parse_hub_url(url)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    return await http1((address.host, address.port), request)


async def http1(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` raw and read the whole answer (the server closes after it):
    ``(status, headers, body)``."""
    stream = await trio.open_tcp_stream(*address)
    with trio.fail_after(10):
        await stream.send_all(request)
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    await stream.aclose()
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split(" ")[1]), headers, body


async def scrape(env: Env) -> Samples:
    status, headers, body = await get_http1(env.url)
    assert status == 200 and headers["content-type"] == CONTENT_TYPE
    return parse(body.decode())


SIZE = 16 * 1024 * 1024


#: Skipped by :func:`recv` unless asked for.
NOISE: tuple[type, ...] = (HeartbeatAck,)


async def recv(peer: Peer, skip: tuple[type, ...] = NOISE) -> LinkMessage:
    with trio.fail_after(10):
        while True:
            message = await peer.recv()
            if not isinstance(message, skip):
                return message


class Gate:
    """The hub's end of one link, wrapped before the hub sees it (:func:`gate_next_link`):
    while :meth:`hold` is in force the hub's writer for that link waits at the gate, so a
    test decides exactly when frames leave the hub. Every write is recorded."""

    def __init__(self) -> None:
        self.pipe: LinkPipe | None = None
        #: Set once the link arrived (:attr:`pipe` is the hub's end).
        self.linked = trio.Event()
        self._open = trio.Event()
        self._open.set()
        #: Whether the hub's writer is waiting at the gate now.
        self.waiting = False
        #: Each transport write the hub made through the gate, in order.
        self.writes: list[bytes] = []

    def hold(self) -> None:
        """From now on the hub's writes wait (one already past the gate completes)."""
        if self._open.is_set():
            self._open = trio.Event()

    def release(self) -> None:
        self._open.set()

    async def send(self, data: bytes) -> None:
        assert self.pipe is not None
        self.waiting = True
        try:
            await self._open.wait()
        finally:
            self.waiting = False
        self.writes.append(bytes(data))
        await self.pipe.send(data)

    async def receive(self) -> bytes | bytearray:
        assert self.pipe is not None
        return await self.pipe.receive()

    async def aclose(self) -> None:
        assert self.pipe is not None
        await self.pipe.aclose()


def gate_next_link(hub: Hub) -> Gate:
    """Wrap the next link ``hub`` accepts in a :class:`Gate` (open until held). Only the
    hub's public listener is touched: its ``on_link`` handler, for one link."""
    gate = Gate()
    server = hub.server
    inner = server.on_link

    async def on_link(pipe: LinkPipe, transport: str, peer: str) -> None:
        server.on_link = inner
        gate.pipe = pipe
        gate.linked.set()
        await inner(gate, transport, peer)

    server.on_link = on_link
    return gate


async def alive(peer: Peer, seq: int = 77) -> None:
    """``peer``'s link still answers."""
    await peer.send(Heartbeat(seq))
    assert await recv(peer, ()) == HeartbeatAck(seq)


async def until_closed(peer: Peer, seconds: float) -> list[LinkMessage]:
    """Every message until the hub closes the link, waiting at most ``seconds``."""
    out = list(peer.inbox)
    peer.inbox.clear()
    with trio.fail_after(seconds):
        while True:
            try:
                data = await peer.pipe.receive()
            except LinkClosed:
                return out
            out.extend(peer.conn.receive(data))


async def serve_worker(peer: Peer, accept: bool = True) -> None:
    """A fake worker that accepts every open (or leaves it waiting)."""
    while True:
        message = await peer.recv()
        if isinstance(message, ChannelRequest) and accept:
            await peer.send(
                ChannelAccept(
                    message.request_id, message.channel_id, b"m2", message.max_message_size
                )
            )


async def open_ok(client: Peer, request_id: int, worker_id: str) -> ChannelOpened:
    await client.send(OpenChannel(request_id, worker_id, b"m1", SIZE))
    opened = await recv(client)
    assert isinstance(opened, ChannelOpened), opened
    return opened


@asynccontextmanager
async def workers(env: Env, count: int) -> AsyncIterator[list[tuple[str, Peer]]]:
    """``count`` connected fake workers of alice that accept every open."""
    out: list[tuple[str, Peer]] = []
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        for i in range(count):
            worker_id, token = await env.register(name=f"w{i}")
            peer = await stack.enter_async_context(env.worker(token))
            out.append((worker_id, peer))
            nursery.start_soon(serve_worker, peer)
        yield out
        nursery.cancel_scope.cancel()


def registered_worker(hub: Hub, data: Path, keypair: Any, name: str = "box") -> tuple[str, str]:
    """User alice and her worker ``name`` registered at ``hub``, its state saved in ``data``
    (with ``keypair``): ``(worker id, alice's token)``."""
    from leapcore.store.workerstate import WorkerState, save_state

    user, token = hub.store.create_user("alice", now_ms())
    _, key = hub.store.mint_registration_key(user.id, now_ms())
    worker, auth = hub.store.register_worker(
        key, name=name, version="1", labels={}, now_ms=now_ms()
    )
    save_state(data, WorkerState(worker.id, auth, keypair))
    return worker.id, token


async def serve_hub(hub: Hub, nursery: trio.Nursery) -> tuple[str, trio.CancelScope]:
    """Serve ``hub`` in ``nursery`` on a free loopback port: ``(its URL, a scope whose
    cancelling stops the hub alone)``."""
    scope = trio.CancelScope()

    async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await hub.serve(task_status=task_status)

    host, port = await nursery.start(serve)
    return f"http://{host}:{port}", scope
