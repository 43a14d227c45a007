"""Hostile peers against a real LinkServer on loopback: no peer's bytes end the server, and
what one peer makes it hold is bounded (leapcore.net.listen.ServerLimits).

Each case drives one hostile sequence, checks how that connection ended, then
:func:`assert_serving`: a healthy client still GETs ``/healthz`` (HTTP/1.1 and HTTP/2) and
opens links over both transports. Attacker frames come from h2's client side or hyperframe.
Timeouts run on trio's MockClock (``autojump_clock``), never on real waiting.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
import trio
import trio.testing
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame
from support.hubpeer import wait_until
from support.netkit import echo, healthz
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from leapcore.errors import LinkClosed
from leapcore.net.dial import connect_link
from leapcore.net.http2 import FrameGuard
from leapcore.net.listen import H2_PREFACE, LinkServer, ServerLimits, address_key
from leapcore.net.pipe import LinkPipe
from leapcore.net.trioutil import single_exception
from leapcore.net.websocket import WebSocketPipe, accept_websocket
from leapcore.proto.limits import FrameBudget
from leapcore.proto.link_codec import Heartbeat, LinkDecoder, encode

LOG = "leapcore.net.listen"
#: Limits whose control-frame rate budget never interferes (for the memory-bound cases).
UNMETERED = ServerLimits(max_control_frames=10**9)


@dataclass
class Served:
    server: LinkServer
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@asynccontextmanager
async def serving(
    limits: ServerLimits | None = None, handler=echo, *, sndbuf: int | None = None
) -> AsyncIterator[Served]:
    """A LinkServer on loopback TCP; ``sndbuf`` shrinks its sockets' send buffers (so a
    peer that does not read is felt at once)."""
    server = LinkServer(handler, routes={"/healthz": healthz}, limits=limits)
    async with trio.open_nursery() as nursery:
        if sndbuf is None:
            host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        else:
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            await sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            host, port = sock.getsockname()[:2]
            nursery.start_soon(server.serve_listeners, [trio.SocketListener(sock)])
        yield Served(server, host, port)
        nursery.cancel_scope.cancel()


async def http1_get(served: Served, path: str = "/healthz") -> bytes:
    stream = await trio.open_tcp_stream(served.host, served.port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    out = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(4096):
            out += chunk
    await stream.aclose()
    return out


async def dial(served: Served, rcvbuf: int | None = None) -> trio.SocketStream:
    """A TCP connection to ``served``; ``rcvbuf`` shrinks its receive buffer (so a peer
    that does not read is felt at once)."""
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect((served.host, served.port))
    return trio.SocketStream(sock)


class H2Peer:
    """An HTTP/2 client driven by hand: h2's client side plus raw bytes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.eof = False

    @classmethod
    async def open(cls, served: Served, *, rcvbuf: int | None = None) -> H2Peer:
        return cls(await dial(served, rcvbuf))

    async def send(self, extra: bytes = b"") -> None:
        await self.stream.send_all(self.conn.data_to_send() + extra)

    def get(self, stream_id: int, path: str = "/healthz", **kw: object) -> None:
        self.conn.send_headers(
            stream_id,
            [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
            end_stream=True,
            **kw,
        )

    async def read_until(self, done) -> list[h2.events.Event]:
        """Read (answering what h2 answers) until ``done(events)`` or EOF, in 10 s."""
        with trio.fail_after(10):
            while not done(self.events) and not self.eof:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    self.eof = True
                    break
                with contextlib.suppress(h2.exceptions.ProtocolError):  # e.g. after GOAWAY
                    self.events += self.conn.receive_data(data)
                data = self.conn.data_to_send()
                if data:
                    try:
                        await self.stream.send_all(data)
                    except trio.BrokenResourceError:
                        self.eof = True
        return self.events

    def body(self, stream_id: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )

    def ended(self, stream_id: int) -> bool:
        return any(
            isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id for e in self.events
        )

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)), None)


async def assert_serving(served: Served) -> None:
    """A healthy client is still served: /healthz over HTTP/1.1 and HTTP/2, and a link
    over each transport round-trips."""
    ok = await http1_get(served)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"ok\n"), ok
    peer = await H2Peer.open(served)
    peer.get(1)
    await peer.send()
    await peer.read_until(lambda _: peer.ended(1))
    assert peer.body(1) == b"ok\n"
    await peer.stream.aclose()
    for transport in ("websocket", "h2"):
        async with connect_link(served.url, transport=transport) as pipe:
            await pipe.send(encode(Heartbeat(7)))
            with trio.fail_after(10):
                assert LinkDecoder().feed(await pipe.receive()) == [Heartbeat(7)]


def closed_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOG and "closed:" in r.getMessage()]


def assert_one_quiet_line(caplog: pytest.LogCaptureFixture, *needles: str) -> None:
    """Exactly one line about the hostile connection, naming the peer, without traceback."""
    lines = [r for r in closed_lines(caplog) if all(n in r.getMessage() for n in needles)]
    assert len(lines) == 1, [r.getMessage() for r in closed_lines(caplog)]
    assert "connection from 127.0.0.1:" in lines[0].getMessage()
    assert lines[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- HTTP/2 ----------------------------------------------------------------------------------

LINK_REQUEST = [(":method", "POST"), (":path", "/link"), (":scheme", "http"), (":authority", "x")]


@pytest.mark.parametrize("limits", [UNMETERED, None], ids=["unmetered", "default-budget"])
async def test_h2_empty_data_frames_on_the_link_stream(
    limits: ServerLimits | None, caplog: pytest.LogCaptureFixture
) -> None:
    """5000 empty DATA frames on the link stream, then link bytes: the link echoes them
    (unmetered) or the control budget ends the connection with one quiet line. (Each empty
    frame used to cost the link's reader one level of recursion: RecursionError, logged
    as an internal error with its traceback.)"""
    caplog.set_level(logging.INFO)
    async with serving(limits) as served:
        peer = await H2Peer.open(served)
        peer.conn.send_headers(1, LINK_REQUEST)
        for _ in range(5000):
            peer.conn.send_data(1, b"")
        payload = encode(Heartbeat(9))
        peer.conn.send_data(1, payload)
        await peer.send()
        if limits is UNMETERED:
            await peer.read_until(lambda _: len(peer.body(1)) >= len(payload))
            assert peer.body(1) == payload and peer.goaway() is None
        else:
            await peer.read_until(lambda _: peer.goaway() is not None)
            goaway = peer.goaway()
            assert goaway is not None
            assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            await wait_until(lambda: not served.server.connections)
            assert_one_quiet_line(caplog, "max_control_frames")
        await peer.stream.aclose()
        await assert_serving(served)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_h2_preface_split_after_its_blank_line_is_http2() -> None:
    """The preface's first 18 bytes ("PRI * HTTP/2.0\r\n\r\n") end like an HTTP/1 head:
    sent alone, the listener must wait for the rest (it used to answer 400)."""
    async with serving() as served:
        peer = await H2Peer.open(served)
        peer.get(1)
        data = peer.conn.data_to_send()
        cut = H2_PREFACE.index(b"\r\n\r\n") + 4
        await peer.stream.send_all(data[:cut])
        # The server has read the first part and waits for more (nothing else can run).
        await trio.testing.wait_all_tasks_blocked()
        await peer.stream.send_all(data[cut:])
        await peer.read_until(lambda _: peer.ended(1))
        assert peer.body(1) == b"ok\n"
        await peer.stream.aclose()


async def test_h2_window_zero_then_get_waits_for_window(caplog: pytest.LogCaptureFixture) -> None:
    # Used to raise h2's FlowControlError out of the handler and end the server.
    caplog.set_level(logging.INFO)
    async with serving() as served:
        peer = await H2Peer.open(served)
        peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        peer.get(1)
        await peer.send()
        await peer.read_until(lambda ev: any(isinstance(e, h2.events.ResponseReceived) for e in ev))
        assert peer.body(1) == b"" and not peer.ended(1)
        # Opening the window lets the queued body through.
        peer.conn.increment_flow_control_window(2, stream_id=1)
        await peer.send()
        await peer.read_until(lambda _: len(peer.body(1)) == 2)
        assert peer.body(1) == b"ok" and not peer.ended(1)
        peer.conn.increment_flow_control_window(10, stream_id=1)
        await peer.send()
        await peer.read_until(lambda _: peer.ended(1))
        assert peer.body(1) == b"ok\n"
        await peer.stream.aclose()
        await assert_serving(served)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("path", ["/healthz", "/link"])
async def test_h2_request_and_reset_in_one_write(path: str) -> None:
    # Used to raise StreamClosedError out of the handler and end the server.
    async with serving() as served:
        peer = await H2Peer.open(served)
        if path == "/link":
            peer.conn.send_headers(
                1, [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "x")]
            )
        else:
            peer.get(1)
        peer.conn.reset_stream(1)
        peer.get(3)  # the connection goes on: the next request is answered
        await peer.send()
        await peer.read_until(lambda _: peer.ended(3))
        assert peer.body(3) == b"ok\n"
        await peer.stream.aclose()
        await assert_serving(served)


async def test_h2_settings_ack_and_a_large_frame_in_one_read_are_accepted() -> None:
    """A frame as large as the server advertises, in the same write as the SETTINGS ACK that
    makes it legal, is taken (h2 alone checks a whole read against the older limit)."""
    async with serving() as served:
        peer = await H2Peer.open(served)
        await peer.send()
        with trio.fail_after(10):  # the server's settings, not yet acknowledged
            while peer.conn.max_outbound_frame_size <= 65536:
                peer.events += peer.conn.receive_data(await peer.stream.receive_some(65536))
        peer.conn.send_headers(
            1, [(":method", "POST"), (":path", "/link"), (":scheme", "http"), (":authority", "x")]
        )
        payload = encode(Heartbeat(1)) * 1500  # one DATA frame of ~48 KiB, over 16 KiB
        peer.conn.send_data(1, payload)
        await peer.send()  # the ACK, HEADERS and DATA in one write
        await peer.read_until(lambda _: len(peer.body(1)) >= len(payload))
        assert peer.body(1) == payload  # echoed: the link took it
        assert peer.goaway() is None
        await peer.stream.aclose()


@pytest.mark.parametrize("size", [20_000, 60_000], ids=["hpack-limit", "frame-guard"])
async def test_h2_oversized_headers_end_the_connection(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving() as served:
        peer = await H2Peer.open(served)
        peer.get(1, path="/healthz?" + "a" * size)
        await peer.send()
        await peer.read_until(lambda _: False)  # until the server closes
        assert peer.eof and peer.goaway() is not None
        assert not peer.body(1)
        assert_one_quiet_line(caplog, "HTTP/2")
        await assert_serving(served)


async def test_h2_continuation_flood_ends_the_connection_early(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with serving() as served:
        peer = await H2Peer.open(served)
        headers = HeadersFrame(1)
        headers.data = b"\x82"  # :method GET, then never END_HEADERS
        await peer.send(headers.serialize())
        sent = 0
        with trio.fail_after(10):
            try:
                for _ in range(200):  # 3.2 MiB if nothing stopped it
                    continuation = ContinuationFrame(1)
                    continuation.data = b"\x00" * 16384
                    await peer.stream.send_all(continuation.serialize())
                    sent += 1
            except trio.BrokenResourceError:
                pass
        await peer.read_until(lambda _: False)
        terminated = peer.goaway()
        assert terminated is not None
        assert terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert_one_quiet_line(caplog, "header block of over 32768 bytes")
        await assert_serving(served)


@pytest.mark.parametrize("kind", ["ping", "settings"])
async def test_h2_control_flood_from_a_non_reader_is_closed(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Every PING and SETTINGS frame makes h2 queue an acknowledgement: a peer that never
    # reads must not make the server hold them without limit.
    caplog.set_level(logging.INFO)
    # The control-frame rate budget would end this sooner: this case is about memory.
    async with serving(UNMETERED, sndbuf=4096) as served:
        peer = await H2Peer.open(served, rcvbuf=4096)
        await peer.send()
        frame = PingFrame(0) if kind == "ping" else SettingsFrame(0)
        if kind == "ping":
            frame.opaque_data = b"12345678"
        batch = frame.serialize() * 1000
        sent = 0
        with trio.fail_after(30):
            try:
                while sent < 64 * 1024 * 1024:  # far beyond every buffer: it must be closed
                    await peer.stream.send_all(batch)
                    sent += len(batch)
            except trio.BrokenResourceError:
                pass
        assert sent < 64 * 1024 * 1024, "the server never closed the flooding connection"
        await wait_until(lambda: not served.server.connections)
        assert_one_quiet_line(caplog, "not reading", "1048576 bytes")
        await peer.stream.aclose()
        await assert_serving(served)


async def test_h2_streams_over_the_concurrent_limit_end_the_connection() -> None:
    limits = ServerLimits(max_concurrent_streams=2)
    async with serving(limits) as served:
        peer = await H2Peer.open(served)
        await peer.send()
        await peer.read_until(  # our ACK of its settings goes back: the limit is in force
            lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev)
        )
        request = [
            (":method", "GET"),
            (":path", "/healthz"),
            (":scheme", "http"),
            (":authority", "x"),
        ]
        for stream_id in (1, 3):  # never ended: each stays open
            peer.conn.send_headers(stream_id, request)
        # h2 would not open a third: a raw HEADERS frame does (same HPACK context).
        third = HeadersFrame(5, data=peer.conn.encoder.encode(request), flags=["END_HEADERS"])
        await peer.send(third.serialize())
        await peer.read_until(lambda _: False)
        terminated = peer.goaway()
        assert terminated is not None and terminated.error_code != h2.errors.ErrorCodes.NO_ERROR
        await assert_serving(served)


async def test_h2_advertises_its_limits() -> None:
    async with serving() as served:
        peer = await H2Peer.open(served)
        await peer.send()
        await peer.read_until(
            lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev)
        )
        settings = peer.conn.remote_settings
        assert settings.max_header_list_size == 16 * 1024
        assert settings.max_concurrent_streams == 100
        await peer.stream.aclose()


def test_frame_guard_counts_header_blocks_across_chunks() -> None:
    def frame(kind: int, flags: int, length: int) -> bytes:
        return length.to_bytes(3, "big") + bytes([kind, flags]) + bytes(4) + bytes(length)

    guard = FrameGuard(max_frame=100, max_header_block=150, skip=len(H2_PREFACE))
    data = H2_PREFACE + frame(0x0, 0, 100) + frame(0x1, 0, 60) + frame(0x9, 0, 60)
    for i in range(len(data)):  # byte by byte: the same answers
        assert guard.feed(data[i : i + 1]) is None
    assert guard.feed(frame(0x9, 0, 30)) is None  # 150: at the limit
    assert guard.feed(frame(0x9, 0x4, 1)) == "a header block of over 150 bytes"
    guard = FrameGuard(max_frame=100, max_header_block=150)
    assert guard.feed(frame(0x1, 0x4, 100) + frame(0x1, 0x4, 100)) is None  # ended blocks
    assert guard.feed(frame(0x0, 0, 101)[:9]) == "a frame of 101 bytes (at most 100)"


# -- timeouts (MockClock) --------------------------------------------------------------------


async def _closed_after(stream: trio.SocketStream) -> float:
    """Read until the server closes; the (mock) time it took."""
    start = trio.current_time()
    with trio.fail_after(60):
        while True:
            try:
                if not await stream.receive_some(65536):
                    break
            except trio.BrokenResourceError:
                break
    return trio.current_time() - start


async def test_h2_preface_only_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(ServerLimits(handshake_timeout=7)) as served:
        stream = await trio.open_tcp_stream(served.host, served.port)
        await stream.send_all(H2_PREFACE)
        assert 7 <= await _closed_after(stream) < 7.5
        await wait_until(lambda: not served.server.connections)
        await assert_serving(served)


async def test_h2_connection_without_a_link_is_closed_when_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(ServerLimits(handshake_timeout=7)) as served:
        peer = await H2Peer.open(served)
        for stream_id in (1, 3):
            await trio.sleep(5)  # requests keep it open past the first deadline...
            peer.get(stream_id)
            await peer.send()
            await peer.read_until(lambda _, s=stream_id: peer.ended(s))
        start = trio.current_time()
        await peer.read_until(lambda _: False)  # ...then it is idle, and closed
        assert peer.eof and 6.9 <= trio.current_time() - start < 7.5
        await assert_serving(served)


@pytest.mark.parametrize(
    "prefix", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET /link HTTP/1.1\r\n"]
)
async def test_slow_head_times_out(autojump_clock: trio.testing.MockClock, prefix: bytes) -> None:
    async with serving(ServerLimits(handshake_timeout=3)) as served:
        stream = await trio.open_tcp_stream(served.host, served.port)
        await stream.send_all(prefix)
        assert 3 <= await _closed_after(stream) < 3.5
        await assert_serving(served)


async def test_link_connections_are_not_timed_out(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(ServerLimits(handshake_timeout=3)) as served:
        for transport in ("websocket", "h2"):
            async with connect_link(served.url, transport=transport) as pipe:
                await trio.sleep(30)
                await pipe.send(encode(Heartbeat(1)))
                assert LinkDecoder().feed(await pipe.receive()) == [Heartbeat(1)]


# -- WebSocket -------------------------------------------------------------------------------


class RawWebSocket:
    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol

    @classmethod
    async def open(cls, served: Served, *, rcvbuf: int | None = None) -> RawWebSocket:
        stream = await dial(served, rcvbuf)
        protocol = ClientProtocol(parse_uri(f"ws://{served.host}:{served.port}/link"))
        protocol.send_request(protocol.connect())
        raw = cls(stream, protocol)
        await stream.send_all(b"".join(protocol.data_to_send()))
        with trio.fail_after(10):
            while protocol.state is not OPEN:
                protocol.receive_data(await stream.receive_some(65536))
                protocol.events_received()
        return raw

    async def close_code(self) -> int | None:
        """Read until EOF; the code of the server's close frame."""
        code = None
        with trio.fail_after(10):
            while data := await self.stream.receive_some(65536):
                self.protocol.receive_data(data)
                for event in self.protocol.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                        code = Close.parse(event.data).code
        return code


def _frame(first: int, payload: bytes, *, masked: bool = True) -> bytes:
    """A hand-built frame (first byte: FIN, RSV and opcode), masked with a zero key."""
    assert len(payload) < 126
    return (
        bytes([first, (0x80 if masked else 0) | len(payload)])
        + (bytes(4) if masked else b"")
        + payload
    )


@pytest.mark.parametrize(
    "frame",
    [
        _frame(0x83, b"x"),  # reserved opcode
        _frame(0xC2, b"x"),  # RSV1 without an extension
        _frame(0x82, b"x", masked=False),  # an unmasked client frame
        _frame(0x09, b"x"),  # a fragmented ping
        _frame(0x80, b"x"),  # a continuation with nothing to continue
        _frame(0x88, b"\x03\xe7"),  # close code 999
        bytes([0x89, 0x80 | 126]) + (200).to_bytes(2, "big") + bytes(4) + b"p" * 200,  # long ping
    ],
    ids=["opcode", "rsv1", "unmasked", "fragmented-ping", "orphan-cont", "close-999", "long-ping"],
)
async def test_invalid_websocket_frames_end_that_link_only(
    frame: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving() as served, connect_link(served.url) as live:
        raw = await RawWebSocket.open(served)
        await raw.stream.send_all(frame)
        assert await raw.close_code() == 1002
        await live.send(encode(Heartbeat(3)))
        with trio.fail_after(10):
            assert LinkDecoder().feed(await live.receive()) == [Heartbeat(3)]
        await assert_serving(served)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_websocket_ping_flood_from_a_non_reader(caplog: pytest.LogCaptureFixture) -> None:
    # The server's link writer is blocked on a peer that never reads, while the peer sends
    # pings (and now and then a data frame, when the server samples what it owes).
    caplog.set_level(logging.INFO)
    owed: list[tuple[int, int]] = []  # (pongs, bytes) held when a data frame arrived

    links: list[LinkPipe] = []

    async def push_and_watch(pipe: LinkPipe, transport: str, peer: str) -> None:
        links.append(pipe)
        if len(links) > 1:  # assert_serving's links
            await echo(pipe, transport, peer)
            return
        assert isinstance(pipe, WebSocketPipe)

        async def push() -> None:
            while True:
                await pipe.send(bytes(65536))

        with contextlib.suppress(LinkClosed), single_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(push)
                while True:
                    await pipe.receive()
                    pongs = sum(1 for data in pipe._owed if data[:1] == b"\x8a")
                    owed.append((pongs, pipe.owed_bytes))

    async with serving(UNMETERED, handler=push_and_watch, sndbuf=4096) as served:
        raw = await RawWebSocket.open(served, rcvbuf=4096)
        for n in range(20_000):  # ~2.6 MB of pongs owed to a peer that never reads
            raw.protocol.send_ping(n.to_bytes(4, "big") * 30)
            if n % 500 == 499:
                raw.protocol.send_binary(b"mark")
        flood = b"".join(raw.protocol.data_to_send())
        # The flood is bounded in time (the server may stop reading a peer that stops reading).
        with trio.move_on_after(5):
            await raw.stream.send_all(flood)
        assert owed, "the server read none of the flood"
        # At most one pong held, plus at most one of the writer's own sends.
        assert max(p for p, _ in owed) <= 1
        assert max(b for _, b in owed) <= 65536 + 10 + 122
        await raw.stream.aclose()
        await wait_until(lambda: not served.server.connections)
        await assert_serving(served)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_websocket_pongs_owed_while_the_writer_is_blocked_are_coalesced() -> None:
    # A lockstep stream: the server's writes block until this peer reads, which it never does.
    server_end, client_end = trio.testing.lockstep_stream_pair()
    protocol = ClientProtocol(parse_uri("ws://x/link"))
    protocol.send_request(protocol.connect())
    head = b"".join(protocol.data_to_send())
    async with trio.open_nursery() as nursery:
        accepted: list[WebSocketPipe | None] = []

        async def accept() -> None:
            accepted.append(await accept_websocket(server_end, head))

        nursery.start_soon(accept)
        while protocol.state is not OPEN:
            protocol.receive_data(await client_end.receive_some())
            protocol.events_received()
        await wait_until(lambda: accepted)
        pipe = accepted[0]
        assert pipe is not None
        nursery.start_soon(pipe.send, b"blocked for ever")
        await wait_until(pipe._write_lock.locked)
        got: list[bytes | bytearray] = []

        async def read() -> None:
            while True:
                got.append(await pipe.receive())

        nursery.start_soon(read)
        for n in range(1000):
            protocol.send_ping(b"%d" % n)
        protocol.send_binary(b"marker")
        await client_end.send_all(b"".join(protocol.data_to_send()))
        await wait_until(lambda: got == [b"marker"])
        assert len(pipe._owed) == 1  # one pong, the latest ping's
        assert pipe._owed[0] == Frame(Opcode.PONG, b"999").serialize(mask=False)
        nursery.cancel_scope.cancel()


# -- connections per address, accept back-off -------------------------------------------------


async def test_one_connection_over_the_per_address_cap_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(ServerLimits(max_connections_per_address=3)) as served:
        idle = [await trio.open_tcp_stream(served.host, served.port) for _ in range(3)]
        await wait_until(lambda: served.server.connections.get("127.0.0.1") == 3)
        for _ in range(5):
            refused = await trio.open_tcp_stream(served.host, served.port)
            answer = b""
            with trio.fail_after(10):
                while chunk := await refused.receive_some(4096):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
            await refused.aclose()
        warnings = [r for r in caplog.records if "max_connections_per_address" in r.getMessage()]
        assert len(warnings) == 1 and "127.0.0.1:" in warnings[0].getMessage()
        await idle[0].aclose()
        await wait_until(lambda: served.server.connections.get("127.0.0.1") == 2)
        ok = await http1_get(served)
        assert ok.startswith(b"HTTP/1.1 200 OK")
        for stream in idle[1:]:
            await stream.aclose()
        await wait_until(lambda: not served.server.connections)
        await assert_serving(served)


def test_address_key_groups_ipv6_by_its_64_prefix() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.8") == "192.0.2.8"  # IPv4: each address its own
    one = address_key("2001:db8:1:2::1")
    assert one == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == one
    assert address_key("2001:DB8:1:2:0:0:0:abcd") == one
    assert address_key("2001:db8:1:3::1") != one  # the next /64
    assert address_key("fe80::1%eth0") == address_key("fe80::2") == "fe80::/64"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4-mapped: as IPv4
    assert address_key("unix") == "unix"


async def _refused(served: Served) -> bytes:
    """Connect and read until the server closes: what it answered."""
    stream = await trio.open_tcp_stream(served.host, served.port)
    answer = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(4096):
            answer += chunk
    await stream.aclose()
    return answer


async def test_connections_not_yet_links_past_the_pending_cap_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(ServerLimits(max_pending_connections=3)) as served:
        server = served.server
        async with (
            connect_link(served.url, transport="h2") as h2_link,
            connect_link(served.url, transport="websocket") as ws_link,
        ):
            await wait_until(lambda: server.pending == 0)  # links are not pending
            idle = []
            for _ in range(3):
                stream = await trio.open_tcp_stream(served.host, served.port)
                await stream.send_all(H2_PREFACE)  # and never a link stream
                idle.append(stream)
            await wait_until(lambda: server.pending == 3)
            for _ in range(3):
                answer = await _refused(served)
                assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
            warnings = [r for r in caplog.records if "max_pending_connections" in r.getMessage()]
            assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
            assert server.pending == 3 and server.connections["127.0.0.1"] == 5
            for n, link in enumerate((h2_link, ws_link)):  # the links go on
                await link.send(encode(Heartbeat(n)))
                with trio.fail_after(10):
                    assert LinkDecoder().feed(await link.receive()) == [Heartbeat(n)]
            for stream in idle:
                await stream.aclose()
            await wait_until(lambda: server.pending == 0)
            ok = await http1_get(served)
            assert ok.startswith(b"HTTP/1.1 200 OK")
        await assert_serving(served)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class ScriptedListener(trio.abc.Listener[trio.abc.Stream]):
    """accept() follows a script: ``"emfile"`` raises EMFILE, ``"ok"`` returns a stream
    (closed at once); then it waits for ever. Records the (mock) time of every call."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.calls: list[float] = []

    async def accept(self) -> trio.abc.Stream:
        self.calls.append(trio.current_time())
        if not self.script:
            await trio.sleep_forever()
        step = self.script.pop(0)
        if step == "emfile":
            raise OSError(errno.EMFILE, "Too many open files")
        server_end, client_end = trio.testing.memory_stream_pair()
        await client_end.aclose()
        return server_end

    async def aclose(self) -> None:
        pass


async def test_accept_backs_off_on_emfile(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    listener = ScriptedListener(["emfile"] * 10 + ["ok"] + ["emfile"] * 3 + ["ok"])
    server = LinkServer(echo)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_listeners, [listener])
        await wait_until(lambda: len(listener.calls) == 16)
        nursery.cancel_scope.cancel()
    waits = [round(b - a, 6) for a, b in zip(listener.calls, listener.calls[1:], strict=False)]
    first = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
    assert waits == [*first, 0.0, 0.005, 0.01, 0.02, 0.0]
    episodes = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(episodes) == 2 and all("EMFILE" in r.getMessage() for r in episodes)
    assert all(r.exc_info is None for r in caplog.records)


async def test_other_accept_errors_still_propagate() -> None:
    class Broken(ScriptedListener):
        async def accept(self) -> trio.abc.Stream:
            raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(BaseExceptionGroup) as info:
        await LinkServer(echo).serve_listeners([Broken([])])
    assert info.group_contains(OSError)


def test_limits_are_validated() -> None:
    assert ServerLimits().handshake_timeout == 10.0
    assert ServerLimits().max_connections_per_address == 128
    assert ServerLimits().max_pending_output == 1024 * 1024
    assert ServerLimits().max_pending_connections == 512
    for bad in (
        {"handshake_timeout": 0},
        {"max_connections_per_address": 0},
        {"max_pending_connections": 0},
        {"max_pending_output": 1000},
        {"max_header_list_size": 10},
    ):
        with pytest.raises(ValueError):
            ServerLimits(**bad)


@pytest.mark.parametrize(
    "kind", ["ping", "settings", "rst_stream", "ping_ack", "settings_ack", "empty_data"]
)
async def test_h2_control_frames_past_the_rate_budget_end_the_connection(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that reads everything but sends control frames faster than
    ``max_control_frames`` a second is told ENHANCE_YOUR_CALM and cut off."""
    caplog.set_level(logging.INFO)
    async with serving(ServerLimits(max_control_frames=50)) as served:
        peer = await H2Peer.open(served)
        raw = b""  # frames h2's client side would not send: unsolicited acknowledgements
        if kind == "empty_data":
            peer.conn.send_headers(1, LINK_REQUEST)
        for n in range(51):
            if kind == "ping":
                peer.conn.ping(n.to_bytes(8, "big"))
            elif kind == "settings":
                peer.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
            elif kind == "rst_stream":
                peer.get(2 * n + 1)
                peer.conn.reset_stream(2 * n + 1)
            elif kind == "ping_ack":
                raw += PingFrame(0, opaque_data=n.to_bytes(8, "big"), flags=["ACK"]).serialize()
            elif kind == "settings_ack":
                raw += SettingsFrame(0, flags=["ACK"]).serialize()
            else:
                peer.conn.send_data(1, b"")
        await peer.send(raw)
        await peer.read_until(lambda _: peer.goaway() is not None)
        goaway = peer.goaway()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        await wait_until(lambda: not served.server.connections)
        assert_one_quiet_line(caplog, "max_control_frames")
        await peer.stream.aclose()
        await assert_serving(served)


async def test_h2_control_frames_within_the_rate_budget_are_answered(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The budget is per second: the client's SETTINGS and 49 PINGs (50 control frames),
    then 49 PINGs a second for four more seconds, are all answered."""
    # Time moves only by the jumps below, or after a second of real idleness (so a lost
    # answer fails the case's deadline instead of hanging it).
    mock_clock.autojump_threshold = 1.0
    async with serving(ServerLimits(max_control_frames=50)) as served:
        peer = await H2Peer.open(served)
        for second in range(5):
            for n in range(49):
                peer.conn.ping((second * 100 + n).to_bytes(8, "big"))
            await peer.send()
            acks = 49 * (second + 1)
            await peer.read_until(
                lambda events, acks=acks: (
                    sum(isinstance(e, h2.events.PingAckReceived) for e in events) >= acks
                )
            )
            mock_clock.jump(1.0)
        assert peer.goaway() is None
        await peer.stream.aclose()


async def test_websocket_control_frames_past_the_rate_budget_close_the_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pings past ``max_control_frames`` in a second close that link with 1008; others go on."""
    caplog.set_level(logging.INFO)
    async with (
        serving(ServerLimits(max_control_frames=50)) as served,
        connect_link(served.url) as live,
    ):
        raw = await RawWebSocket.open(served)
        for n in range(51):
            raw.protocol.send_ping(n.to_bytes(4, "big"))
        await raw.stream.send_all(b"".join(raw.protocol.data_to_send()))
        assert await raw.close_code() == 1008
        await live.send(encode(Heartbeat(4)))
        with trio.fail_after(10):
            assert LinkDecoder().feed(await live.receive()) == [Heartbeat(4)]
        await assert_serving(served)


async def test_websocket_pings_within_the_rate_budget_are_answered(
    mock_clock: trio.testing.MockClock,
) -> None:
    """50 pings a second for five seconds: each second's last ping is answered (pongs owed
    together may be coalesced, as RFC 6455 allows) and the link stays open."""
    # Time moves only by the jumps below, or after a second of real idleness (so a lost
    # answer fails the case's deadline instead of hanging it).
    mock_clock.autojump_threshold = 1.0
    async with serving(ServerLimits(max_control_frames=50)) as served:
        raw = await RawWebSocket.open(served)
        for second in range(5):
            for n in range(50):
                raw.protocol.send_ping((second * 100 + n).to_bytes(4, "big"))
            await raw.stream.send_all(b"".join(raw.protocol.data_to_send()))
            last = (second * 100 + 49).to_bytes(4, "big")
            answered = False
            with trio.fail_after(10):
                while not answered:
                    data = await raw.stream.receive_some(65536)
                    assert data, "the server closed the link"
                    raw.protocol.receive_data(data)
                    answered = any(
                        isinstance(e, Frame) and e.opcode is Opcode.PONG and e.data == last
                        for e in raw.protocol.events_received()
                    )
            mock_clock.jump(1.0)
        assert raw.protocol.state is OPEN
        await raw.stream.aclose()


def test_frame_budget_counts_per_window() -> None:
    budget = FrameBudget(3, window=1.0)
    assert [budget.spend(10.0) for _ in range(4)] == [True, True, True, False]
    assert budget.spend(11.0, 3) and not budget.spend(11.5)
    assert budget.spend(12.0, 0) and budget.spend(12.0)
    with pytest.raises(ValueError):
        FrameBudget(0)
