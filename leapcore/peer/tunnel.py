"""Local tunnel listeners (trio): port forwarding through a worker, and what the SOCKS5
proxy (:mod:`leapcore.peer.socks5`) shares with it.

Both servers are :meth:`trio.Nursery.start`-able and report the address they really bound
(port 0: a free port) through ``task_status``; cancelling them closes the listener and
every connection they own::

    async with channel_pool(session, worker_id) as pool:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(forward_local, pool, ("127.0.0.1", 0), ("db", 5432))
            socks = await nursery.start(serve_socks5, pool, ("127.0.0.1", 1080))

``opener`` is anything with an ``open_tcp(host, port)`` coroutine returning a
:class:`trio.abc.HalfCloseableStream` — a :class:`~leapcore.peer.channel.Channel`, a
:class:`ChannelPool` — or an async callable returning a live channel. Each accepted
connection is one ``open_tcp`` stream; :class:`ChannelPool` keeps **one channel per
worker**, opened on first use and re-opened after it breaks.

The rules (spec §6.1, §6.2):

* the two directions are copied concurrently; a clean EOF either way is passed on as a
  half-close (``send_eof``) and the other direction goes on; an error either way closes
  both ends at once (the local socket with a reset); both ends are closed when both
  directions are done; there is no idle timeout;
* accept errors that mean "out of resources" (``EMFILE``, ``ENFILE``, ``ENOBUFS``,
  ``ENOMEM``) are retried after :data:`ACCEPT_BACKOFF_INITIAL` (5 ms), doubling up to
  :data:`ACCEPT_BACKOFF_MAX` (1 s), never spinning; any other accept error ends the server;
* one tunnel connection's open is bounded (the worker's dial 30 s, the channel's wait a
  little longer);
* the connections a listener carries at once are bounded by the worker: each is one byte
  stream on the channel, and the worker refuses a stream past its per-channel limit
  (128 by default) with ``resource_exhausted``, which resets that connection only;

Where a listener may bind is :mod:`leapcore.proto.bindaddr`'s business (loopback only,
unless the caller allows more): these servers bind what they are given.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from functools import partial
from typing import Any, Final, Protocol

import trio

from ..errors import DeadlineExceeded, LeapcoreError, TunnelDialFailed
from ..net.accept import accept_connections
from ..net.trioutil import single_exception
from ..proto.limits import (
    ACCEPT_BACKOFF_INITIAL,
    ACCEPT_BACKOFF_MAX,
    OPEN_TIMEOUT,
    TUNNEL_OPEN_TIMEOUT,
    TUNNEL_READ_SIZE,
)

__all__ = [
    "ACCEPT_BACKOFF_INITIAL",
    "ACCEPT_BACKOFF_MAX",
    "DIAL_TIMEOUT",
    "ChannelPool",
    "accept_loop",
    "channel_pool",
    "forward_local",
    "pipe",
]

log = logging.getLogger(__name__)

#: Seconds one tunnel connection's open may take here: a safety net behind the channel's
#: own bound (``Channel.open_tcp`` waits :data:`~leapcore.proto.limits.TUNNEL_OPEN_TIMEOUT`,
#: the worker's dial :data:`~leapcore.proto.limits.TUNNEL_DIAL_TIMEOUT`, 30 s).
DIAL_TIMEOUT: Final = TUNNEL_OPEN_TIMEOUT + 5.0
#: Bytes read at once from either side.
COPY_CHUNK: Final = TUNNEL_READ_SIZE  # whole BYTES_DATA messages (limits)

Stream = trio.abc.HalfCloseableStream
Dial = Callable[[str, int], Awaitable[Stream]]


class TcpOpener(Protocol):
    """What a tunnel dials through: a channel, a pool, a test's fake."""

    async def open_tcp(self, host: str, port: int) -> Stream: ...


class _Channel(Protocol):
    @property
    def closed(self) -> bool: ...

    @property
    def finished(self) -> trio.Event: ...

    async def open_tcp(self, host: str, port: int) -> Stream: ...


class _Session(Protocol):
    def open_channel(
        self, worker_id: str, *, timeout: float = ...
    ) -> AbstractAsyncContextManager[Any]: ...


Opener = TcpOpener | Callable[[], Awaitable[TcpOpener]]


def dialer(opener: Opener) -> Dial:
    if hasattr(opener, "open_tcp"):
        dial: Dial = opener.open_tcp
        return dial
    if not callable(opener):
        raise TypeError(f"opener must have open_tcp() or be an async callable, got {opener!r}")
    get = opener

    async def via(host: str, port: int) -> Stream:
        channel = await get()
        return await channel.open_tcp(host, port)

    return via


# -- the channel pool -------------------------------------------------------------------------


class ChannelPool:
    """One channel to one worker, opened on first use and re-opened after it breaks; made
    by :func:`channel_pool`. ``open_tcp`` opens one tunnel connection on it."""

    def __init__(
        self, session: _Session, worker_id: str, nursery: trio.Nursery, *, timeout: float
    ) -> None:
        self._session = session
        self.worker_id = worker_id
        self._nursery = nursery
        self._timeout = timeout
        self._channel: _Channel | None = None
        self._lock = trio.Lock()
        #: Channels opened so far (a re-open after a break counts).
        self.opened = 0

    async def _hold(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with self._session.open_channel(self.worker_id, timeout=self._timeout) as ch:
                self.opened += 1
                log.info("channel to %s open (%d opened so far)", self.worker_id, self.opened)
                task_status.started(ch)
                started = True
                await ch.finished.wait()
        except LeapcoreError as exc:
            if not started:
                raise  # to the connection that asked for it
            log.info("channel to %s ended: %s", self.worker_id, exc)

    async def channel(self) -> _Channel:
        """The live channel, opened (or re-opened) if need be."""
        async with self._lock:
            current = self._channel
            if current is None or current.closed:
                if current is not None:
                    log.info("channel to %s broke; opening another", self.worker_id)
                self._channel = None
                current = await self._nursery.start(self._hold)
                self._channel = current
            return current

    async def open_tcp(self, host: str, port: int) -> Stream:
        channel = await self.channel()
        try:
            return await channel.open_tcp(host, port)
        except LeapcoreError:
            if not channel.closed:
                raise
        # The channel broke under this open: once more on a new one.
        return await (await self.channel()).open_tcp(host, port)


@asynccontextmanager
async def channel_pool(
    session: _Session, worker_id: str, *, timeout: float = OPEN_TIMEOUT
) -> AsyncIterator[ChannelPool]:
    """``async with channel_pool(session, worker_id) as pool:`` a :class:`ChannelPool`; its
    channel is closed when the block ends. ``timeout`` bounds each channel open."""
    async with trio.open_nursery() as nursery:
        try:
            yield ChannelPool(session, worker_id, nursery, timeout=timeout)
        finally:
            nursery.cancel_scope.cancel()


# -- copying ----------------------------------------------------------------------------------


def _reset(stream: trio.abc.Stream) -> None:
    """Make closing a local TCP stream send a reset (SO_LINGER 0): the client learns the
    tunnel failed instead of seeing a clean end."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def pipe(local: Stream, remote: Stream, first: bytes = b"") -> BaseException | None:
    """Copy both ways until both directions are done, then close both (see the module
    docstring for half-close and errors); returns the error that ended the connection
    (None: both directions ended cleanly). ``first``: bytes already read from ``local``."""
    failed: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:

            async def copy(src: Stream, dst: Stream, data: bytes | bytearray = b"") -> None:
                try:
                    if data:
                        await dst.send_all(data)
                    while data := await src.receive_some(COPY_CHUNK):
                        await dst.send_all(data)
                    await dst.send_eof()
                except (
                    OSError,
                    LeapcoreError,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                ) as exc:
                    failed.append(exc)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(copy, remote, local)
            await copy(local, remote, first)  # this task copies one way: a task less
    finally:
        if failed:
            log.debug("tunnel connection failed: %s", failed[0])
            _reset(local)
        await trio.aclose_forcefully(remote)
        await trio.aclose_forcefully(local)
    return failed[0] if failed else None


# -- accepting --------------------------------------------------------------------------------


async def _guarded(handler: Callable[[Any], Awaitable[object]], name: str, stream: Any) -> None:
    """One connection's handler: a failure of its own ends that connection only."""
    try:
        await handler(stream)
    except Exception:
        log.exception("%s: a connection failed unexpectedly", name)
        await trio.aclose_forcefully(stream)


async def accept_loop(
    listener: trio.abc.Listener[Any],
    handler: Callable[[Any], Awaitable[object]],
    *,
    name: str = "tunnel",
) -> None:
    """Accept connections and run ``handler(stream)`` for each in a nursery of their own;
    transient accept errors back off (5 ms doubling to 1 s); cancelling closes the listener
    and every connection."""
    try:
        with single_exception():
            async with trio.open_nursery() as nursery:
                await accept_connections(
                    listener, nursery, partial(_guarded, handler, name), name=name
                )
    finally:
        await trio.aclose_forcefully(listener)


async def listen(bind: tuple[str, int]) -> tuple[trio.SocketListener, tuple[str, int]]:
    host, port = bind
    listeners = await trio.open_tcp_listeners(port, host=host)
    for extra in listeners[1:]:
        await extra.aclose()
    listener = listeners[0]
    name = listener.socket.getsockname()
    return listener, (str(name[0]), int(name[1]))


def peer_name(stream: Any) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except (AttributeError, OSError):
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def dial_bounded(dial: Dial, host: str, port: int, *, early: bool = False) -> Stream:
    """``dial(host, port)``, bounded. ``early``: through a channel (or a pool's), open with
    early data (``Channel.open_tcp(early=True)``): the stream is returned before the dial's
    outcome, which then shows on the stream (a refusal fails its reads and writes)."""
    if early:
        from .channel import Channel  # here: tunnels need no channel otherwise

        owner = getattr(dial, "__self__", None)
        if isinstance(owner, ChannelPool):
            with trio.fail_after(DIAL_TIMEOUT):
                owner = await owner.channel()
        if isinstance(owner, Channel):
            return await owner.open_tcp(host, port, early=True)
    with trio.fail_after(DIAL_TIMEOUT):
        return await dial(host, port)


async def forward_local(
    opener: Opener,
    bind: tuple[str, int],
    target: tuple[str, int],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``bind`` and connect each accepted connection to ``target`` (host, port)
    from the worker; ``task_status.started((host, port))`` with the bound address. Runs
    until cancelled (or a permanent accept error, raised)."""
    dial = dialer(opener)
    listener, bound = await listen(bind)
    name = f"forward {where(*bound)} -> {where(*target)}"

    async def handle(stream: trio.SocketStream) -> None:
        # The peer's address only for the log (a system call per connection otherwise).
        peer = peer_name(stream) if log.isEnabledFor(logging.INFO) else "?"
        piped = False
        try:
            # What the client already sent (without waiting) goes out with the open, in
            # the same write to the hub.
            try:
                first = os.read(stream.socket.fileno(), COPY_CHUNK)
            except (BlockingIOError, InterruptedError, AttributeError):
                first = b""
            except OSError as exc:
                log.info("%s: connection from %s failed: %s", name, peer, exc)
                return
            try:
                # Early: the client's first bytes go out behind the open, one hub round
                # trip sooner; a refused dial then fails the stream (below).
                remote = await dial_bounded(dial, *target, early=True)
            except (LeapcoreError, trio.TooSlowError) as exc:
                log.info("%s: connection from %s failed: %s", name, peer, exc)
                _reset(stream)
                return
            log.info("%s: connection from %s", name, peer)
            piped = True  # pipe closes both ends, whatever happens
            failure = await pipe(stream, remote, first)  # resets the local end on a failure
            cause = None if failure is None else failure.__cause__
            if isinstance(cause, (TunnelDialFailed, DeadlineExceeded)):
                log.info("%s: connection from %s failed: %s", name, peer, cause)
            else:
                log.info("%s: connection from %s closed", name, peer)
        finally:
            if not piped:
                await trio.aclose_forcefully(stream)

    task_status.started(bound)
    await accept_loop(listener, handle, name=name)
