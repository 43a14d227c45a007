"""The floor under any Python tunnel through a relay: three bare trio processes, no crypto.

``tunnel_bench.py`` runs this as the side ``py floor`` of its benchmarks (``--floor``). It
has leapcore's shape and nothing else: a forwarder process accepts local connections and
multiplexes them over one TCP link to a relay process, which copies every frame to a dialer
process over a second link; the dialer connects to the target and copies back. Frames are
``conn id (4 bytes) | kind (1) | length (4) | payload``: no encryption, no authentication,
no flow control, no limits, no validation. It is not a product and must never be: it only
says how fast the three processes' event loops and system calls alone can be, so that a
target below it is known to be out of reach for any design with a relay hop written in
Python on trio.

The data rides with the open (like leapcore's ``BYTES_OPEN_EARLY``), and for SOCKS5 the
forwarder answers the CONNECT only after the dialer's connect succeeded (as leapcore and
``ssh -D`` do).
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
from functools import partial
from multiprocessing.connection import Connection

import trio

_HEAD = struct.Struct(">IBI")
OPEN, DATA, EOF, OPENED = 0, 1, 2, 3
CHUNK = 256 * 1024


async def _frames(link: trio.SocketStream):  # type: ignore[no-untyped-def]
    """Yield ``(conn id, kind, payload)`` from a link."""
    buf = bytearray()
    while True:
        data = await link.receive_some(CHUNK)
        if not data:
            return
        buf += data
        while len(buf) >= _HEAD.size:
            cid, kind, size = _HEAD.unpack_from(buf)
            end = _HEAD.size + size
            if len(buf) < end:
                break
            payload = bytes(buf[_HEAD.size : end])
            del buf[:end]
            yield cid, kind, payload


def _frame(cid: int, kind: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(cid, kind, len(payload)) + payload


class _Link:
    """A link's send side: one sender at a time (a lock, no queue)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._lock = trio.Lock()

    async def send_all(self, data: bytes) -> None:
        async with self._lock:
            await self.stream.send_all(data)


async def _copy_out(local: trio.SocketStream, link: _Link, cid: int) -> None:
    """Local socket -> frames on the link, then EOF."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while data := await local.receive_some(CHUNK):
            await link.send_all(_frame(cid, DATA, data))
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await link.send_all(_frame(cid, EOF))


# -- relay: copies every frame from one link to the other --------------------------------------


async def _relay(conn: Connection) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    conn.send(listener.getsockname()[1])
    first = trio.SocketStream((await listener.accept())[0])
    second = trio.SocketStream((await listener.accept())[0])

    async def copy(a: trio.SocketStream, b: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while data := await a.receive_some(CHUNK):
                await b.send_all(data)
        nursery.cancel_scope.cancel()  # one side gone: the other goes too

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, first, second)
        nursery.start_soon(copy, second, first)


def relay_main(conn: Connection) -> None:
    trio.run(_relay, conn)


# -- dialer: opens the target for each new conn id ---------------------------------------------


async def _dialer(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    link = _Link(stream)
    conns: dict[int, trio.SocketStream] = {}
    async with trio.open_nursery() as nursery:

        async def back(cid: int, local: trio.SocketStream) -> None:
            await _copy_out(local, link, cid)
            with contextlib.suppress(OSError):
                await local.aclose()

        async for cid, kind, payload in _frames(stream):
            if kind == OPEN:
                # connected here, in the reader: data behind the open finds its socket
                (target,) = struct.unpack_from(">H", payload)
                sock = trio.socket.socket()
                await sock.connect(("127.0.0.1", target))
                local = conns[cid] = trio.SocketStream(sock)
                await link.send_all(_frame(cid, OPENED))
                if len(payload) > 2:
                    await local.send_all(payload[2:])
                nursery.start_soon(back, cid, local)
            elif kind == DATA and cid in conns:
                await conns[cid].send_all(payload)
            elif kind == EOF and cid in conns:
                with contextlib.suppress(OSError):
                    await conns.pop(cid).send_eof()
        nursery.cancel_scope.cancel()


def dialer_main(port: int) -> None:
    trio.run(_dialer, port)


# -- forwarder: a local forward and a SOCKS5 server --------------------------------------------


async def _forwarder(conn: Connection, port: int, targets: dict[str, int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    link = _Link(stream)
    conns: dict[int, trio.SocketStream] = {}
    opened: dict[int, trio.Event] = {}
    ids = itertools.count(1)

    async def forward(target: int, local: trio.SocketStream) -> None:
        cid = next(ids)
        conns[cid] = local
        early = b""
        with contextlib.suppress(BlockingIOError):
            early = local.socket._sock.recv(CHUNK)  # type: ignore[attr-defined]
        await link.send_all(_frame(cid, OPEN, struct.pack(">H", target) + early))
        await _copy_out(local, link, cid)

    async def socks(local: trio.SocketStream) -> None:
        cid = next(ids)
        greeting = await local.receive_some(3)
        assert greeting == b"\x05\x01\x00"
        await local.send_all(b"\x05\x00")
        request = await local.receive_some(10)
        (dest,) = struct.unpack_from(">H", request, 8)
        conns[cid] = local
        event = opened[cid] = trio.Event()
        await link.send_all(_frame(cid, OPEN, struct.pack(">H", dest)))
        await event.wait()
        await local.send_all(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + b"\0\0")
        await _copy_out(local, link, cid)

    async with trio.open_nursery() as nursery:
        ports = {}
        for name, target in targets.items():
            listeners = await nursery.start(trio.serve_tcp, partial(forward, target), 0)
            ports[name] = listeners[0].socket.getsockname()[1]
        listeners = await nursery.start(trio.serve_tcp, socks, 0)
        ports["socks"] = listeners[0].socket.getsockname()[1]
        conn.send(ports)

        async def stop() -> None:
            with contextlib.suppress(EOFError, OSError):
                await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop)
        async for cid, kind, payload in _frames(stream):
            local = conns.get(cid)
            if kind == OPENED:
                event = opened.pop(cid, None)
                if event is not None:
                    event.set()
            elif kind == DATA and local is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await local.send_all(payload)
            elif kind == EOF and local is not None:
                conns.pop(cid)
                with contextlib.suppress(OSError):
                    await local.aclose()
        nursery.cancel_scope.cancel()


def forwarder_main(conn: Connection, port: int, targets: dict[str, int]) -> None:
    """A local forward per ``targets`` entry (name -> target port; the ports it bound are
    sent back under the same names) and a SOCKS5 server (``"socks"``)."""
    with contextlib.suppress(EOFError, OSError, trio.BrokenResourceError):
        trio.run(_forwarder, conn, port, targets)
