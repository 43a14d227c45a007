"""One listener for every link transport and the hub's plain HTTP endpoints (trio).

Each accepted connection (TCP, TLS or Unix socket) is sniffed:

* TLS with ALPN ``h2``, or the HTTP/2 connection preface on cleartext (prior
  knowledge): HTTP/2; a ``POST /link`` stream becomes a link, ``GET`` of a
  route is answered (see :mod:`leapcore.net_h2`);
* otherwise HTTP/1.1: ``GET /link`` with ``Upgrade: websocket`` becomes a
  WebSocket link; ``GET`` of a route (``/healthz``, ``/metrics``) is answered
  and the connection closed; anything else gets 404 or 405.

Reading the request head is bounded (16 KiB, 10 s); a connection that
misbehaves is dropped without affecting any other.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import trio

from .net_ws import accept_websocket
from .netpipe import HANDSHAKE_TIMEOUT, LINK_PATH, LinkPipe, PrefixedStream

__all__ = ["H2_PREFACE", "HttpResponse", "LinkServer", "Route"]

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The start of a TLS handshake record (a ClientHello).
TLS_RECORD: Final = b"\x16\x03"
MAX_HEAD: Final = 16 * 1024
HEAD_TIMEOUT: Final = 10.0

#: (status, content type, body)
HttpResponse = tuple[int, str, bytes]
Route = Callable[[], HttpResponse]
LinkHandler = Callable[[LinkPipe, str], Awaitable[None]]

_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class LinkServer:
    """Accepts connections and hands each link to ``on_link(pipe, transport_name)``.

    ``routes`` maps a path to a function producing a plain HTTP response.
    """

    def __init__(
        self,
        on_link: LinkHandler,
        *,
        routes: Mapping[str, Route] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.on_link = on_link
        self.routes = dict(routes or {})
        self.ssl_context = ssl_context
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])

    def route(self, method: str, path: str) -> HttpResponse:
        handler = self.routes.get(path)
        if handler is None:
            return 404, "text/plain; charset=utf-8", b"not found\n"
        if method != "GET":
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        return handler()

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection until it ends. Never raises for a bad client."""
        try:
            await self._handle(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        if self.ssl_context is not None:
            tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
            stream = tls
            if tls.selected_alpn_protocol() == "h2":
                await self._serve_h2(stream, b"")
                return
        with trio.fail_after(HEAD_TIMEOUT):
            head = await _read_head(stream)
        if head.startswith(H2_PREFACE):
            await self._serve_h2(stream, head)
            return
        request = _parse_head(head)
        if request is None:
            await _respond_http1(stream, 400, "text/plain; charset=utf-8", b"bad request\n")
            return
        method, path, headers = request
        upgrade = headers.get("upgrade", "").lower() == "websocket"
        if path == LINK_PATH and upgrade:
            await self._serve_websocket(stream, head)
            return
        status, content_type, body = self.route(method, path)
        await _respond_http1(stream, status, content_type, body)

    async def _serve_websocket(self, stream: trio.abc.Stream, head: bytes) -> None:
        pipe = await accept_websocket(stream, head)
        if pipe is None:
            return  # refused: the handshake's error response was written
        try:
            await self.on_link(pipe, "websocket")
        finally:
            await pipe.aclose()

    async def _serve_h2(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        from .net_h2 import serve_h2

        await serve_h2(PrefixedStream(stream, prefix), self)

    # -- listeners ------------------------------------------------------------------

    async def serve_tcp(
        self, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on TCP; ``task_status.started`` gets the bound (host, port)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[:2]
        task_status.started(bound)
        await trio.serve_listeners(self.handle, listeners)

    async def serve_unix(self, path: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a Unix socket at ``path`` (mode 0600)."""
        import os

        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        await sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(128)
        task_status.started(path)
        await trio.serve_listeners(self.handle, [trio.SocketListener(sock)])


async def _read_head(stream: trio.abc.Stream) -> bytes:
    """Bytes up to the end of an HTTP/1 head, or the HTTP/2 preface, whichever comes first."""
    buf = b""
    while True:
        if len(buf) >= len(H2_PREFACE) and buf.startswith(H2_PREFACE):
            return buf
        if buf.startswith(TLS_RECORD):
            return buf  # a TLS client on a cleartext listener: refuse at once
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return buf
        if len(buf) > MAX_HEAD:
            return b""
        chunk = await stream.receive_some(4096)
        if not chunk:
            return buf
        buf += chunk


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return None
    try:
        text = head[:end].decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return None
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    path = target.split("?", 1)[0]
    return method, path, headers


async def _respond_http1(
    stream: trio.abc.Stream, status: int, content_type: str, body: bytes
) -> None:
    reason = _REASONS.get(status, "")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    await stream.send_all(head.encode("latin-1") + body)
