"""One listener for every link transport and the hub's plain HTTP endpoints (trio).

Each accepted connection (TCP, TLS or Unix socket) is sniffed:

* TLS with ALPN ``h2``, or the HTTP/2 connection preface on cleartext (prior
  knowledge): HTTP/2; a ``POST /link`` stream becomes a link, ``GET`` of a
  route is answered (see :mod:`leapcore.net.http2`);
* otherwise HTTP/1.1: ``GET /link`` with ``Upgrade: websocket`` becomes a
  WebSocket link; ``GET`` of a route (``/healthz``, ``/metrics``) is answered
  and the connection closed; anything else gets 404 or 405.

Every link is handed to ``await on_link(pipe, transport, peer)``: ``transport`` is
``"websocket"`` or ``"h2"``, ``peer`` the peer's address as ``"ip:port"``
(``"[ip]:port"`` for IPv6), ``"unix"`` for a Unix-socket peer (``"local"`` for a stream
that is not a socket, as in tests).

**Nothing a peer sends ends more than its own connection.** Every HTTP/2, WebSocket, TLS
or socket error from one connection ends that connection (or, where HTTP/2 allows, that
stream) with one log line naming the peer, no traceback; a bug met while serving one
connection is logged with its traceback and costs that connection only.

Budgets (:class:`ServerLimits`, ``LinkServer(..., limits=ServerLimits(...))``):

* ``handshake_timeout`` (:data:`HANDSHAKE_TIMEOUT`, 10 s): from accept to a link — the
  TLS handshake, the HTTP/1 head or HTTP/2 preface, and the WebSocket upgrade or the
  HTTP/2 link stream. An HTTP/2 connection that never opens the link stream is closed
  when it runs out; one that only asks for routes is closed once that long has passed
  since its last request or response progress. An HTTP/1 route answer is written within it.
* ``max_connections_per_address`` (:data:`MAX_CONNECTIONS_PER_ADDRESS`, 128): live
  connections from one address, signed in or not: an IPv4 peer by its address, an IPv6
  peer by its /64 prefix (one host's share: a /64 is what one site is given), an
  IPv4-mapped IPv6 peer as its IPv4 address; all Unix-socket peers count as one address,
  ``"unix"``. One more is answered ``503`` (cleartext) and closed at once.
* ``max_pending_connections`` (:data:`MAX_PENDING_CONNECTIONS`, 512): connections from all
  addresses together that are not yet a link — in the TLS handshake, the HTTP/1 head or
  HTTP/2 preface, the WebSocket upgrade or before the HTTP/2 link stream, or serving only
  routes. One more is answered ``503`` (cleartext) and closed at once, with one warning
  per episode; connections that are links already are never affected (so descriptors
  left for links cannot all be taken by peers that never sign in).
* ``max_header_list_size`` (:data:`MAX_HEADER_LIST_SIZE`, 16 KiB): an HTTP/1 request
  head, and the HTTP/2 ``SETTINGS_MAX_HEADER_LIST_SIZE`` advertised and enforced (a
  longer header block, however it is split into CONTINUATION frames, ends the
  connection before it is buffered).
* ``max_concurrent_streams`` (:data:`MAX_CONCURRENT_STREAMS`, 100): HTTP/2
  ``SETTINGS_MAX_CONCURRENT_STREAMS``; opening more ends the connection.
* ``max_pending_output`` (:data:`MAX_PENDING_OUTPUT`, 1 MiB): bytes an HTTP/2
  connection may hold to send (PING and SETTINGS acknowledgements, route answers, link
  data). Link data waits below half of it; a connection whose peer lets it fill (a PING
  or SETTINGS flood from a peer that does not read) is closed. Route answers waiting
  for flow-control window share half of it; one more is refused (``REFUSED_STREAM``).
* ``max_control_frames`` (:data:`MAX_CONTROL_FRAMES`, 100 a second): control frames one
  connection may send — WebSocket pings and pongs; HTTP/2 PING, PING with ACK, SETTINGS,
  SETTINGS with ACK, RST_STREAM, PRIORITY, and DATA frames that carry no data (padded or
  not). WINDOW_UPDATE is not counted: a bulk transfer sends many a second. Each costs
  the hub a parse and often an answer whether or not the peer reads them, so a flood of
  them is CPU taken from every other connection; one more in a second ends that
  connection (WebSocket close 1008, HTTP/2 GOAWAY ENHANCE_YOUR_CALM).
* accept back-off (:data:`ACCEPT_BACKOFF_INITIAL` 5 ms, :data:`ACCEPT_BACKOFF_MAX` 1 s):
  when ``accept`` fails with EMFILE, ENFILE, ENOBUFS or ENOMEM the listener waits,
  doubling the wait while the error persists, back to the start on the next success;
  one log line per episode.

WebSocket pongs owed while the link's writer is blocked are coalesced (at most one, the
latest ping's): see :mod:`leapcore.net.websocket`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import h2.exceptions
import trio
from websockets.exceptions import WebSocketException

from ..errors import LeapcoreError, RemoteProtocolError, Unavailable
from ..proto.limits import (
    ACCEPT_BACKOFF_INITIAL,
    ACCEPT_BACKOFF_MAX,
    HANDSHAKE_TIMEOUT,
    MAX_CONCURRENT_STREAMS,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_CONTROL_FRAMES,
    MAX_HEADER_LIST_SIZE,
    MAX_PENDING_CONNECTIONS,
    MAX_PENDING_OUTPUT,
    ServerLimits,
)
from .accept import accept_connections
from .pipe import LINK_PATH, LinkPipe, PrefixedStream
from .websocket import WebSocketPipe, accept_websocket

__all__ = [
    "ACCEPT_BACKOFF_INITIAL",
    "ACCEPT_BACKOFF_MAX",
    "H2_PREFACE",
    "HANDSHAKE_TIMEOUT",
    "MAX_CONCURRENT_STREAMS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "MAX_CONTROL_FRAMES",
    "MAX_HEADER_LIST_SIZE",
    "MAX_PENDING_CONNECTIONS",
    "MAX_PENDING_OUTPUT",
    "HttpResponse",
    "LinkServer",
    "Route",
    "ServerLimits",
]

log = logging.getLogger(__name__)

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The start of a TLS handshake record (a ClientHello).
TLS_RECORD: Final = b"\x16\x03"

#: Seconds allowed to write the 503 to a connection over its address's cap.
_REFUSE_WRITE: Final = 1.0

#: (status, content type, body)
HttpResponse = tuple[int, str, bytes]
Route = Callable[[], HttpResponse]
#: ``await on_link(pipe, transport, peer)``
LinkHandler = Callable[[LinkPipe, str, str], Awaitable[None]]

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}

#: Exceptions a peer's bytes (or its going away) can cause: one log line, no traceback.
_PEER_ERRORS: Final = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    OSError,
    ssl.SSLError,
    h2.exceptions.ProtocolError,
    WebSocketException,
    RemoteProtocolError,
    Unavailable,
)


def address_key(host: str) -> str:
    """The key an IP address is counted under for the per-address cap: an IPv4 address
    itself, an IPv6 address's /64 prefix (``"2001:db8:1:2::/64"``), an IPv4-mapped IPv6
    address as its IPv4 address. Anything else (not an IP address) is its own key."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])  # without a zone index
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def peer_address(stream: trio.abc.Stream) -> tuple[str, str]:
    """``(address, peer)`` of an accepted stream: the key counted against the per-address
    cap (:func:`address_key`), and the ``peer`` handed to ``on_link`` (``"ip:port"``,
    ``"[ip]:port"``, ``"unix"``; ``"local"`` for a stream that is not a socket).
    ``OSError`` if the peer is already gone."""
    if not isinstance(stream, trio.SocketStream):
        return "local", "local"
    sock = stream.socket
    if sock.family == socket.AF_INET:
        host, port = sock.getpeername()[:2]
        return address_key(host), f"{host}:{port}"
    if sock.family == socket.AF_INET6:
        host, port = sock.getpeername()[:2]
        return address_key(host), f"[{host}]:{port}"
    return "unix", "unix"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LeapcoreError):
        return exc.message
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


class LinkServer:
    """Accepts connections and hands each link to ``on_link(pipe, transport, peer)``.

    ``routes`` maps a path to a function producing a plain HTTP response; ``limits``
    bounds what one peer can make the server hold (:class:`ServerLimits`). With
    ``on_link=None`` the server takes no links and speaks HTTP/1.1 only: ``/link`` is a
    path like any other (404 unless routed) and an HTTP/2 preface is answered ``400`` (the
    worker's metrics listener). ``name`` names the listener in accept-error logs.
    """

    def __init__(
        self,
        on_link: LinkHandler | None,
        *,
        routes: Mapping[str, Route] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: ServerLimits | None = None,
        name: str = "hub listener",
    ) -> None:
        self.on_link = on_link
        self.routes = dict(routes or {})
        self.ssl_context = ssl_context
        self.limits = limits or ServerLimits()
        self.name = name
        if ssl_context is not None:
            protocols = ["h2", "http/1.1"] if on_link is not None else ["http/1.1"]
            ssl_context.set_alpn_protocols(protocols)
        #: Live connections per address (the per-address cap).
        self.connections: dict[str, int] = {}
        self._capped: set[str] = set()  # addresses at the cap, logged once per episode
        #: Connections accepted that are not yet a link (the pending cap).
        self.pending = 0
        self._pending_capped = False  # at the pending cap: logged once per episode

    def route(self, method: str, path: str) -> HttpResponse:
        handler = self.routes.get(path)
        if handler is None:
            return 404, "text/plain; charset=utf-8", b"not found\n"
        if method != "GET":
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        return handler()

    # -- one connection -----------------------------------------------------------------

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection until it ends. Never raises (but Cancelled)."""
        try:
            address, peer = peer_address(stream)
        except OSError:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            return
        limits = self.limits
        count = self.connections.get(address, 0)
        if count >= limits.max_connections_per_address:
            if address not in self._capped:
                self._capped.add(address)
                log.warning(
                    "connection from %s refused: %d connections from %s already "
                    "(max_connections_per_address); further refusals are not logged until "
                    "one ends",
                    peer,
                    limits.max_connections_per_address,
                    address,
                )
            await self._refuse(stream)
            return
        if self.pending >= limits.max_pending_connections:
            if not self._pending_capped:
                self._pending_capped = True
                log.warning(
                    "connection from %s refused: %d connections not yet links already "
                    "(max_pending_connections); further refusals are not logged until one "
                    "becomes a link or ends",
                    peer,
                    limits.max_pending_connections,
                )
            await self._refuse(stream)
            return
        self.connections[address] = count + 1
        self.pending += 1
        pending = True

        def linked() -> None:  # this connection is a link now: no longer pending
            nonlocal pending
            if pending:
                pending = False
                self.pending -= 1
                if self.pending < limits.max_pending_connections:
                    self._pending_capped = False

        try:
            await self._handle_guarded(stream, peer, linked)
        finally:
            linked()
            left = self.connections[address] - 1
            if left:
                self.connections[address] = left
            else:
                del self.connections[address]
            if left < limits.max_connections_per_address:
                self._capped.discard(address)

    async def _handle_guarded(
        self, stream: trio.abc.Stream, peer: str, linked: Callable[[], None]
    ) -> None:
        try:
            await self._handle(stream, peer, linked)
        except Exception as exc:
            leaves = _leaves(exc)
            if all(isinstance(leaf, _PEER_ERRORS) for leaf in leaves):
                log.info("connection from %s closed: %s", peer, _describe(leaves[0]))
            else:  # a bug must cost one connection, never the server
                log.exception("connection from %s: internal error", peer)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        """Answer ``503`` (cleartext; bounded) and close: a connection over a cap."""
        try:
            if self.ssl_context is None:
                with trio.move_on_after(_REFUSE_WRITE):
                    await _respond_http1(
                        stream, 503, "text/plain; charset=utf-8", b"too many connections\n"
                    )
        except _PEER_ERRORS:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.abc.Stream, peer: str, linked: Callable[[], None]) -> None:
        deadline = trio.current_time() + self.limits.handshake_timeout
        with trio.CancelScope(deadline=deadline) as scope:
            link = await self._until_link(stream, deadline)
        if scope.cancelled_caught:
            raise trio.TooSlowError(
                f"no link within {self.limits.handshake_timeout:g} s (handshake_timeout)"
            )
        if link is None:
            return
        kind, carrier, head = link
        if kind == "h2":
            from .http2 import serve_h2

            await serve_h2(
                PrefixedStream(carrier, head),
                self,
                peer=peer,
                deadline=deadline,
                on_link_opened=linked,
            )
            return
        pipe = await self._upgrade(carrier, head, deadline)
        if pipe is None:
            return
        linked()
        assert self.on_link is not None  # no upgrade without a link handler
        try:
            await self.on_link(pipe, "websocket", peer)
        finally:
            await pipe.aclose()

    async def _upgrade(
        self, stream: trio.abc.Stream, head: bytes, deadline: float
    ) -> WebSocketPipe | None:
        pipe = None
        with trio.CancelScope(deadline=deadline) as scope:
            pipe = await accept_websocket(
                stream, head, max_control_frames=self.limits.max_control_frames
            )
        if scope.cancelled_caught:
            raise trio.TooSlowError(
                f"WebSocket upgrade not done within {self.limits.handshake_timeout:g} s "
                "(handshake_timeout)"
            )
        return pipe

    async def _until_link(
        self, stream: trio.abc.Stream, deadline: float
    ) -> tuple[str, trio.abc.Stream, bytes] | None:
        """TLS and the request head: ``("h2", stream, prefix)``, ``("websocket", stream,
        head)``, or ``None`` when a plain request was answered."""
        if self.ssl_context is not None:
            tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
            await tls.do_handshake()
            stream = tls
            if tls.selected_alpn_protocol() == "h2":
                return "h2", stream, b""
        head = await _read_head(stream, self.limits.max_header_list_size)
        links = self.on_link is not None
        if links and head.startswith(H2_PREFACE):
            return "h2", stream, head
        request = _parse_head(head)
        if request is None:
            await _respond_http1(stream, 400, "text/plain; charset=utf-8", b"bad request\n")
            return None
        method, path, headers = request
        upgrade = headers.get("upgrade", "").lower() == "websocket"
        if links and path == LINK_PATH and upgrade:
            return "websocket", stream, head
        status, content_type, body = self.route(method, path)
        await _respond_http1(stream, status, content_type, body)
        return None

    # -- listeners ------------------------------------------------------------------

    async def serve_tcp(
        self, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on TCP; ``task_status.started`` gets the bound (host, port)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[:2]
        task_status.started(bound)
        await self.serve_listeners(listeners)

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
        await self.serve_listeners([trio.SocketListener(sock)])

    async def serve_listeners(self, listeners: Sequence[trio.abc.Listener[Any]]) -> None:
        """Accept on every listener until cancelled; each connection runs in its own task."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)

    async def _accept_loop(self, listener: trio.abc.Listener[Any], nursery: trio.Nursery) -> None:
        async with listener:
            await accept_connections(
                listener,
                nursery,
                self.handle,
                name=self.name,
                initial=self.limits.accept_backoff_initial,
                maximum=self.limits.accept_backoff_max,
            )


async def _read_head(stream: trio.abc.Stream, limit: int) -> bytes:
    """Bytes up to the end of an HTTP/1 head, or the HTTP/2 preface, whichever comes first."""
    buf = b""
    while True:
        if len(buf) >= len(H2_PREFACE) and buf.startswith(H2_PREFACE):
            return buf
        if buf and len(buf) < len(H2_PREFACE) and H2_PREFACE.startswith(buf):
            # A preface cut short (its first part, "PRI * HTTP/2.0\r\n\r\n", ends like an
            # HTTP/1 head): wait for the rest.
            chunk = await stream.receive_some(4096)
            if not chunk:
                return buf
            buf += chunk
            continue
        if buf.startswith(TLS_RECORD):
            return buf  # a TLS client on a cleartext listener: refuse at once
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return buf
        if len(buf) > limit:
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
