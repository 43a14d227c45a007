"""Link transports on loopback: WebSocket and HTTP/2, over TCP, TLS and a Unix socket."""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme

from leapcore.errors import ConfigError, LinkClosed
from leapcore.link_codec import ChannelData, Heartbeat, LinkDecoder, encode, encode_many
from leapcore.netclient import connect_link
from leapcore.netpipe import LinkPipe, parse_hub_url
from leapcore.netserver import LinkServer

TRANSPORTS = ["websocket", "h2"]
CARRIERS = ["tcp", "tls", "unix"]


async def echo(pipe: LinkPipe, transport: str) -> None:
    """Echo every chunk back; prefix nothing, so the client sees its own frames."""
    try:
        while True:
            await pipe.send(await pipe.receive())
    except LinkClosed:
        pass


def healthz() -> tuple[int, str, bytes]:
    return 200, "text/plain; charset=utf-8", b"ok\n"


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
        with pytest.raises(LinkClosed, match=r"TLS with the hub at .* failed"):
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
    async def close_after_one(pipe: LinkPipe, transport: str) -> None:
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
