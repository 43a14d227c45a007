"""Link transports on loopback: WebSocket and HTTP/2, over TCP, TLS and a Unix socket."""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme
from support.hubpeer import wait_until
from support.netkit import echo, healthz
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from leapcore.errors import ConfigError, LinkClosed, TLSCertificateError
from leapcore.net.dial import connect_link
from leapcore.net.listen import LinkServer
from leapcore.net.pipe import LinkPipe, parse_hub_url
from leapcore.net.websocket import MAX_WS_MESSAGE
from leapcore.proto.link_codec import ChannelData, Heartbeat, LinkDecoder, encode, encode_many

TRANSPORTS = ["websocket", "h2"]
CARRIERS = ["tcp", "tls", "unix"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def running_server(
    carrier: str, ca: trustme.CA, handler=echo
) -> AsyncIterator[tuple[str, str | None]]:
    """Start a LinkServer; yield (hub URL, CA file for clients)."""
    ssl_context = None
    ca_file = None
    if carrier == "tls":
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(ssl_context)
        ca_dir = Path(tempfile.mkdtemp())
        ca.cert_pem.write_to_path(str(ca_dir / "ca.pem"))
        ca_file = str(ca_dir / "ca.pem")
    server = LinkServer(handler, routes={"/healthz": healthz}, ssl_context=ssl_context)
    async with trio.open_nursery() as nursery:
        if carrier == "unix":
            path = str(Path(tempfile.mkdtemp()) / "hub.sock")
            await nursery.start(server.serve_unix, path)
            url = f"unix:{path}"
        else:
            host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
            scheme = "https" if carrier == "tls" else "http"
            name = "localhost" if carrier == "tls" else host
            url = f"{scheme}://{name}:{port}"
        yield url, ca_file
        nursery.cancel_scope.cancel()


async def roundtrip(pipe: LinkPipe, messages: list) -> list:
    """Send while receiving (the echo server holds little), bounded in time."""
    decoder, got = LinkDecoder(), []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.send, encode_many(messages))
            while len(got) < len(messages):
                got += decoder.feed(await pipe.receive())
    return got


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_link_roundtrip(transport: str, carrier: str, ca: trustme.CA) -> None:
    messages = [Heartbeat(1), ChannelData(7, 1, 0, bytes(range(256)) * 64), Heartbeat(2)]
    async with (
        running_server(carrier, ca) as (url, ca_file),
        connect_link(url, transport=transport, ca_file=ca_file) as pipe,
    ):
        assert await roundtrip(pipe, messages) == messages
        # A large burst: more than any flow-control window, in one send.
        bulk = [ChannelData(7, 3, 1, bytes(65535)) for _ in range(40)]
        assert await roundtrip(pipe, bulk) == bulk


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_https_is_always_tls_and_verified(transport: str, ca: trustme.CA) -> None:
    async with running_server("tls", ca) as (url, _ca_file):
        # Without the test CA the hub's certificate is not trusted: refused, never cleartext.
        with pytest.raises(TLSCertificateError, match=r"TLS with the hub at .* failed"):
            async with connect_link(url, transport=transport):
                pass
    async with running_server("tcp", ca) as (url, _):
        tls_url = url.replace("http://", "https://")
        with pytest.raises(LinkClosed):
            async with connect_link(tls_url, transport=transport):
                pass


async def _http_get(url: str, path: str) -> bytes:
    address = parse_hub_url(url)
    stream = await trio.open_tcp_stream(address.host, address.port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    out = b""
    while chunk := await stream.receive_some(4096):
        out += chunk
    return out


async def test_healthz_and_unknown_paths_over_http1(ca: trustme.CA) -> None:
    async with running_server("tcp", ca) as (url, _):
        ok = await _http_get(url, "/healthz")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nok\n")
        missing = await _http_get(url, "/nope")
        assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n")
        # The link path without a WebSocket upgrade is not a link.
        assert (await _http_get(url, "/link")).startswith(b"HTTP/1.1 404")


async def test_garbage_connection_does_not_disturb_a_live_link(ca: trustme.CA) -> None:
    async with running_server("tcp", ca) as (url, _), connect_link(url) as pipe:
        address = parse_hub_url(url)
        junk = await trio.open_tcp_stream(address.host, address.port)
        await junk.send_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert (await junk.receive_some(4096)).startswith(b"HTTP/1.1 400")
        await junk.aclose()
        assert await roundtrip(pipe, [Heartbeat(9)]) == [Heartbeat(9)]


async def test_the_server_ending_a_link_is_seen_by_the_client(ca: trustme.CA) -> None:
    async def close_after_one(pipe: LinkPipe, transport: str, peer: str) -> None:
        await pipe.send(encode(Heartbeat(1)))

    for transport in TRANSPORTS:
        async with (
            running_server("tcp", ca, handler=close_after_one) as (url, _),
            connect_link(url, transport=transport) as pipe,
        ):
            assert LinkDecoder().feed(await pipe.receive()) == [Heartbeat(1)]
            with pytest.raises(LinkClosed), trio.fail_after(10):
                while True:
                    await pipe.receive()


async def test_unreachable_hub() -> None:
    with pytest.raises(LinkClosed, match="cannot reach the hub"):
        async with connect_link("unix:/nonexistent/leapcore.sock"):
            pass


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://x", "must start with http://, https:// or unix:"),
        ("http://", "has no host"),
        ("unix:", "names no socket path"),
        ("http://h:99999", "malformed"),
        ("http://h/path", "must not have a path"),
    ],
)
def test_bad_hub_urls(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_hub_url(url)


def test_default_ports() -> None:
    assert parse_hub_url("http://hub").port == 80
    assert parse_hub_url("https://hub").port == 443
    assert parse_hub_url("https://hub").tls and not parse_hub_url("http://hub:4327").tls


async def test_unknown_transport() -> None:
    with pytest.raises(ConfigError, match="unknown transport 'quic'"):
        async with connect_link("http://127.0.0.1:1", transport="quic"):
            pass


# -- WebSocket framing from a hand-driven peer -------------------------------------------------


class RawWebSocket:
    """A WebSocket client driven by hand (``websockets``' sans-IO protocol over a trio
    stream), so a test can send what leapcore's own client never would."""

    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol

    @classmethod
    async def open(cls, url: str) -> RawWebSocket:
        address = parse_hub_url(url)
        stream = await trio.open_tcp_stream(address.host, address.port)
        protocol = ClientProtocol(
            parse_uri(f"ws://{address.host}:{address.port}/link"), max_size=None
        )
        protocol.send_request(protocol.connect())
        raw = cls(stream, protocol)
        await raw.flush()
        while protocol.state is not OPEN:
            protocol.receive_data(await stream.receive_some(65536))
            protocol.events_received()
        return raw

    async def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await self.stream.send_all(data)

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames from the server until the connection ends."""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                self.protocol.receive_eof()
                return
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                assert isinstance(event, Frame)
                yield event
            await self.flush()


async def _server_sees(url: str, ending: list[str], send: Callable[[ClientProtocol], None]) -> int:
    """Open a raw WebSocket, let ``send`` queue frames, return the server's close code."""
    raw = await RawWebSocket.open(url)
    send(raw.protocol)
    await raw.flush()
    with trio.fail_after(10):
        async for frame in raw.frames():
            if frame.opcode is Opcode.CLOSE:
                code = Close.parse(frame.data).code
                await raw.stream.aclose()
                return code
    raise AssertionError(f"the server never sent a close frame (saw {ending})")


@asynccontextmanager
async def recording_server(ca: trustme.CA) -> AsyncIterator[tuple[str, list[bytes], list[str]]]:
    """A server whose links record the bytes they receive and how they ended."""
    got: list[bytes] = []
    ending: list[str] = []

    async def record(pipe: LinkPipe, transport: str, peer: str) -> None:
        try:
            while True:
                got.append(await pipe.receive())
        except LinkClosed as exc:
            ending.append(str(exc))

    async with running_server("tcp", ca, handler=record) as (url, _):
        yield url, got, ending


async def test_websocket_fragments_are_bytes_and_pings_are_answered(ca: trustme.CA) -> None:
    async with recording_server(ca) as (url, got, ending):
        raw = await RawWebSocket.open(url)
        raw.protocol.send_binary(b"one-", fin=False)
        raw.protocol.send_continuation(b"two-", fin=False)
        raw.protocol.send_ping(b"are you there")
        raw.protocol.send_continuation(b"three", fin=True)
        await raw.flush()
        with trio.fail_after(10):
            async for frame in raw.frames():
                if frame.opcode is Opcode.PONG:
                    assert frame.data == b"are you there"
                    break
        await wait_until(lambda: b"".join(got) == b"one-two-three")
        raw.protocol.send_close(1000)
        await raw.flush()
        with trio.fail_after(10):
            async for _frame in raw.frames():
                pass
        await wait_until(lambda: ending)
        assert ending == ["link closed: the peer closed the WebSocket with code 1000"]


@pytest.mark.parametrize(
    ("send", "code", "why"),
    [
        (lambda p: p.send_text(b"hello"), 1003, "only binary is allowed"),
        (lambda p: p.send_binary(bytes(MAX_WS_MESSAGE + 1)), 1009, "bad WebSocket data"),
        (
            lambda p: (
                p.send_binary(bytes(MAX_WS_MESSAGE // 2), fin=False),
                p.send_continuation(bytes(MAX_WS_MESSAGE // 2 + 1), fin=True),
            ),
            1009,
            "bad WebSocket data",
        ),
    ],
    ids=["text", "oversized-frame", "oversized-message"],
)
async def test_bad_websocket_input_ends_only_that_link(
    ca: trustme.CA, send: Callable[[ClientProtocol], None], code: int, why: str
) -> None:
    async with recording_server(ca) as (url, got, ending), connect_link(url) as live:
        assert await _server_sees(url, ending, send) == code
        await wait_until(lambda: ending)
        assert why in ending[0]
        # Nothing past the limit reached the link (a byte pipe: an earlier fragment may have).
        assert sum(map(len, got)) <= MAX_WS_MESSAGE // 2
        # Another link on the same server is unaffected.
        before = len(got)
        await live.send(encode(Heartbeat(5)))
        await wait_until(lambda: len(got) > before)
        assert LinkDecoder().feed(got[before]) == [Heartbeat(5)]


async def test_a_bad_websocket_handshake_is_refused(ca: trustme.CA) -> None:
    async with running_server("tcp", ca) as (url, _):
        address = parse_hub_url(url)
        stream = await trio.open_tcp_stream(address.host, address.port)
        await stream.send_all(
            b"GET /link HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        answer = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"Sec-WebSocket-Key" in answer


async def test_a_websocket_client_reaching_a_plain_http_server(ca: trustme.CA) -> None:
    async def not_a_hub(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, not_a_hub, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(LinkClosed, match=r"WebSocket handshake with .* failed: .*404"):
            async with connect_link(f"http://127.0.0.1:{port}"):
                pass
        nursery.cancel_scope.cancel()
