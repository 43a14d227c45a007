"""The worker's ``tcp`` service: a TCP connection dialled for the owner, relayed over a
byte stream of the channel (port forwarding and SOCKS5 on the client side build on it).

A client opens a byte stream to ``tcp`` with ``{"host": str, "port": int}``
(:func:`~leapcore.proto.tunnel_policy.decode_dial_request`). The worker

1. checks the destination against its rules (``tunnel_allow`` / ``tunnel_deny``,
   :class:`~leapcore.proto.tunnel_policy.TunnelPolicy`) -- a name or literal a deny rule
   matches is refused before any lookup;
2. resolves the name itself (IPv4 and IPv6), drops the addresses the rules refuse, and
   connects to the others, trying them staggered as trio's happy eyeballs does;
3. accepts the byte stream only once connected. Any failure refuses the open instead, with a
   code of :data:`~leapcore.proto.tunnel_policy.DIAL_FAILURES` (:func:`dial_failure`),
   the whole of steps 2-3 bounded by :data:`~leapcore.proto.limits.TUNNEL_DIAL_TIMEOUT`;
4. relays (:func:`relay`) both directions at once, one read buffer each way, so memory is
   bounded by the channel's windows and the sockets' buffers: an EOF from either end is
   passed on as a half-close and the other direction carries on (no idle timeout); an
   error in either direction aborts both ends at once (the socket with a TCP reset, the
   byte stream with a reset). Closing the channel cancels the relay and closes the socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio

from ..errors import InvalidMessage, TunnelDenied, TunnelDialFailed
from ..peer.channel import (
    ByteStream,
    ByteStreamOpening,
    CallContext,
    Services,
    reset_byte_stream,
)
from ..proto.limits import TUNNEL_DIAL_TIMEOUT, TUNNEL_READ_SIZE
from ..proto.tunnel_policy import (
    ALLOW_ALL,
    DENIED_BY_POLICY,
    DIAL_FAILURES,
    TCP_METHOD,
    TunnelPolicy,
    decode_dial_request,
)

__all__ = [
    "HAPPY_EYEBALLS_DELAY",
    "READ_SIZE",
    "TcpTunnels",
    "add_tcp_service",
    "connect_any",
    "dial",
    "dial_failure",
    "relay",
]

log = logging.getLogger(__name__)

#: Bytes read from either end at once by :func:`relay`.
READ_SIZE: Final = TUNNEL_READ_SIZE  # whole BYTES_DATA messages (limits)
#: Seconds between starting connection attempts to successive addresses.
HAPPY_EYEBALLS_DELAY: Final = 0.25

#: A resolved address as getaddrinfo gives it: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[Any, Any, int, str, Any]


#: Errors whose reason says it all (any other keeps its description in the message).
_PLAIN_ERRNOS: Final = frozenset(
    {errno.ECONNREFUSED, errno.ENETUNREACH, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.EHOSTDOWN}
)


def dial_failure(exc: BaseException) -> tuple[str, str]:
    """The reason code and a short description for a failed dial's exception: a lookup
    failure is ``name_not_found``; ECONNREFUSED ``connection_refused``; ENETUNREACH
    ``network_unreachable``; ETIMEDOUT (or :class:`trio.TooSlowError`) ``timed_out``;
    any other error ``host_unreachable``."""
    if isinstance(exc, socket.gaierror):
        detail = exc.strerror or str(exc)
        return "name_not_found", f"{DIAL_FAILURES['name_not_found']} ({detail})"
    if isinstance(exc, trio.TooSlowError):
        return "timed_out", DIAL_FAILURES["timed_out"]
    if isinstance(exc, OSError):
        code = {
            errno.ECONNREFUSED: "connection_refused",
            errno.ENETUNREACH: "network_unreachable",
            errno.ETIMEDOUT: "timed_out",
        }.get(exc.errno or 0, "host_unreachable")
        if exc.errno in _PLAIN_ERRNOS or not exc.strerror:
            return code, DIAL_FAILURES[code]
        return code, f"{DIAL_FAILURES[code]} ({exc.strerror})"
    return "host_unreachable", f"{DIAL_FAILURES['host_unreachable']} ({type(exc).__name__})"


async def connect_any(
    targets: Sequence[AddrInfo], *, delay: float = HAPPY_EYEBALLS_DELAY
) -> trio.SocketStream:
    """Connect to the first of ``targets`` that answers, starting one attempt every
    ``delay`` seconds (sooner when the previous one failed); the others are cancelled.
    All failing raises the first target's error."""
    if not targets:
        raise OSError(errno.EHOSTUNREACH, "no address to connect to")
    if len(targets) == 1:  # nothing to race: no nursery, task or timer
        family, type_, proto, _canon, sockaddr = targets[0]
        sock = trio.socket.socket(family, type_, proto)
        try:
            await sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)
    winner: trio.socket.SocketType | None = None
    errors: dict[int, OSError] = {}

    async def attempt(index: int, target: AddrInfo, failed: trio.Event) -> None:
        nonlocal winner
        family, type_, proto, _canon, sockaddr = target
        sock = trio.socket.socket(family, type_, proto)
        try:
            await sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            errors[index] = exc
            failed.set()
            return
        except BaseException:
            sock.close()
            raise
        if winner is None:
            winner = sock
            nursery.cancel_scope.cancel()
        else:
            sock.close()

    try:
        async with trio.open_nursery() as nursery:
            for index, target in enumerate(targets):
                failed = trio.Event()
                nursery.start_soon(attempt, index, target, failed)
                with trio.move_on_after(delay):
                    await failed.wait()
    except BaseException:
        if winner is not None:
            winner.close()
        raise
    if winner is None:
        raise errors[min(errors)]
    return trio.SocketStream(winner)


async def dial(
    host: str,
    port: int,
    *,
    policy: TunnelPolicy = ALLOW_ALL,
    timeout: float = TUNNEL_DIAL_TIMEOUT,
    delay: float = HAPPY_EYEBALLS_DELAY,
) -> trio.SocketStream:
    """Resolve ``host`` (here), keep the addresses ``policy`` allows, connect; within
    ``timeout`` seconds. Every failure is :class:`TunnelDialFailed` (the policy's:
    :class:`TunnelDenied`)."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    refusal = policy.precheck(host, port)
    if refusal is not None:
        raise TunnelDenied(DENIED_BY_POLICY, refusal.message)
    try:
        # A bare scope, not trio.fail_after (a generator-based context manager per dial).
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            infos = _numeric(host, port)
            if infos is None:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [str(info[4][0]) for info in infos]
            allowed, refusal = policy.filter(host, port, addresses)
            if refusal is not None:
                raise TunnelDenied(DENIED_BY_POLICY, refusal.message)
            keep = set(allowed)
            targets = [info for info in infos if str(info[4][0]) in keep]
            return await connect_any(targets, delay=delay)
        assert scope.cancelled_caught
        raise trio.TooSlowError
    except (OSError, trio.TooSlowError) as exc:
        reason, text = dial_failure(exc)
        if reason == "timed_out" and isinstance(exc, trio.TooSlowError):
            text = f"{text} after {timeout:g}s"
        raise TunnelDialFailed(reason, f"dial {target}: {text}") from exc


def _numeric(host: str, port: int) -> list[AddrInfo] | None:
    """``host:port`` resolved at once if ``host`` is an address literal (no lookup, no
    scheduling pass); None for a name."""
    try:
        return socket.getaddrinfo(
            host,
            port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        )
    except (socket.gaierror, UnicodeError):
        return None


def _abort_socket(sock: trio.SocketStream) -> None:
    """Make the socket's close a TCP reset (no lingering)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def relay(stream: ByteStream, sock: trio.SocketStream) -> str | None:
    """Copy ``stream`` <-> ``sock`` until both directions ended; closes both. Returns
    ``None`` when both ended cleanly, else which side broke first (``"stream"`` or
    ``"socket"``), after aborting both ends at once. A reset of the byte stream before the
    peer's EOF aborts the relay even while both copies wait on the socket; a reset after it
    (the peer closed its end) is a close: the data still goes out, then a FIN."""
    broken: list[tuple[str, BaseException]] = []
    running = 2

    async def one_way(
        src: trio.abc.HalfCloseableStream,
        dst: trio.abc.HalfCloseableStream,
        src_side: str,
        dst_side: str,
    ) -> None:
        side = src_side
        try:
            while True:
                side = src_side
                data = await src.receive_some(READ_SIZE)
                if not data:
                    break
                side = dst_side
                await dst.send_all(data)
            side = dst_side
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            broken.append((side, exc))
            nursery.cancel_scope.cancel()
            return
        nonlocal running
        running -= 1

    def on_broken() -> None:
        # Called when the stream is reset, lost with its channel, or closed (instead of a
        # watcher task, which every frame received would wake).
        if stream._eof_received or not running:
            # The peer closed after its EOF (ByteStream.aclose): like a TCP close, what it
            # sent is still delivered, then a FIN; the target's next send aborts the relay.
            return
        broken.append(("stream", trio.BrokenResourceError("the byte stream was reset")))
        nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            if stream._error is not None or stream._closed:
                on_broken()
            else:
                stream._on_broken = on_broken
            nursery.start_soon(one_way, sock, stream, "socket", "stream")
            await one_way(stream, sock, "stream", "socket")
    finally:
        stream._on_broken = None
        if broken or not (stream._eof_sent and stream._eof_received):
            _abort_socket(sock)
        with trio.CancelScope(shield=True):
            if broken and broken[0][0] == "socket":
                detail = broken[0][1].__cause__ or broken[0][1]
                await reset_byte_stream(stream, "connection_reset", f"target connection: {detail}")
            await stream.aclose()
            await sock.aclose()
    return broken[0][0] if broken else None


class TcpTunnels:
    """The ``tcp`` method's count of relays open now (what the worker's metrics read)."""

    def __init__(self) -> None:
        self.open = 0


def add_tcp_service(
    services: Services,
    policy: Callable[[], TunnelPolicy] = lambda: ALLOW_ALL,
    *,
    dial_timeout: float = TUNNEL_DIAL_TIMEOUT,
    name: str = TCP_METHOD,
) -> TcpTunnels:
    """Register the ``tcp`` byte-stream method (owner-only) on ``services``; ``policy`` is
    called for each open, so a worker's current rules always apply. Returns its count of
    open relays."""
    tunnels = TcpTunnels()

    async def tcp(ctx: CallContext, payload: bytes, opening: ByteStreamOpening) -> None:
        try:
            request = decode_dial_request(payload)
        except InvalidMessage as exc:
            await opening.refuse(InvalidMessage.code, str(exc))
            return
        try:
            sock = await dial(request.host, request.port, policy=policy(), timeout=dial_timeout)
        except TunnelDialFailed as exc:
            log.info("channel %d: tcp %s: %s", ctx.channel_id, exc.reason, exc.detail)
            await opening.refuse(exc.reason, exc.detail)
            return
        try:
            stream = await opening.accept()
        except BaseException:
            with trio.CancelScope(shield=True):
                _abort_socket(sock)
                await sock.aclose()
            raise
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("channel %d: tcp to %s open", ctx.channel_id, request.target)
        tunnels.open += 1
        try:
            outcome = await relay(stream, sock)
        finally:
            tunnels.open -= 1
        if debug:
            log.debug("channel %d: tcp to %s done (%s)", ctx.channel_id, request.target, outcome)

    services.add_byte_stream(name, tcp, accept="manual")
    return tunnels
