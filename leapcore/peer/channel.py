"""One open channel, driven by trio: calls, server streams and byte streams over the link.

A :class:`Channel` wraps the sans-IO :class:`~leapcore.proto.channel_mux.ChannelEndpoint` of one
end of a channel. The link's reader hands it frames with :meth:`Channel.feed` (never
blocks: the endpoint's limits bound what it buffers), hub credit with
:meth:`Channel.add_credit` and the hub's ``channel_close`` with :meth:`Channel.hub_closed`.
One pump task per channel (:meth:`Channel.run`) encrypts queued messages and writes them
to the link in order, spending the hub's per-channel credit
(:class:`~leapcore.proto.link_session.SendCredit`) and waiting when it runs out, so a slow
reader at the other end throttles this channel alone. The same task runs the rekey timer
(the client initiates, per :mod:`leapcore.crypto.rekey_policy`).

The client side calls :meth:`Channel.call`, :meth:`Channel.stream` and
:meth:`Channel.open_byte_stream`; the worker side answers with the handlers registered in
a :class:`Services` table, each request in its own task.

**Deadlines.** A call (and :meth:`Channel.ping`), the first item (or end) of a server
stream and the acceptance of a byte stream each wait at most ``timeout`` seconds
(:data:`CALL_TIMEOUT`, 30 s, by default; ``timeout=None`` waits for ever), so a frame lost
or misrouted on the way never hangs the caller: it gets
:class:`~leapcore.errors.DeadlineExceeded` and what it waited for is cancelled (a late
answer is dropped). Later stream items and byte-stream reads have no deadline.

**Worker-side bounds.** ``max_held_bytes`` bounds the request payloads a channel holds for
its running handlers (a request that would pass it, while another is being served, is
answered ``resource_exhausted``); the endpoint's reassembly gets what is left of the
budget (see :class:`~leapcore.proto.channel_mux.ChannelEndpoint`).
"""

from __future__ import annotations

import collections
import functools
import inspect
import logging
import math
import operator
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, Literal, overload

import attrs
import trio

from ..errors import (
    ChannelClosedError,
    ChannelLost,
    ConfigError,
    DeadlineExceeded,
    InvalidMessage,
    LeapcoreError,
    OutboundQueueFull,
    RemoteCallError,
    ServiceError,
    StreamUsageError,
    TunnelDenied,
    TunnelDialFailed,
    remote_call_error,
)
from ..net.pipe import WRITE_BATCH
from ..proto.capabilities import BUSY, busy_message, capability_of
from ..proto.channel_events import (
    BytesReceived,
    ByteStreamAccepted,
    ByteStreamEOF,
    ByteStreamRequested,
    ByteStreamReset,
    Cancelled,
    ChannelClosed,
    ErrorReceived,
    Event,
    ProtocolViolation,
    RekeyCompleted,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamItemReceived,
    StreamRequested,
    WindowOpened,
)
from ..proto.channel_mux import PING_METHOD, ChannelEndpoint
from ..proto.chunking import ChannelFrame, FrameFlag
from ..proto.limits import TUNNEL_OPEN_TIMEOUT
from ..proto.link_codec import ChannelClose, ChannelCredit, ChannelData, LinkMessage
from ..proto.link_session import SendCredit
from ..proto.tunnel_policy import DENIED_BY_POLICY, DIAL_FAILURES, TCP_METHOD, encode_dial_request

__all__ = [
    "CALL_TIMEOUT",
    "MAX_STREAM_BACKLOG",
    "ByteStream",
    "ByteStreamOpening",
    "CallContext",
    "Channel",
    "ChannelTable",
    "Services",
    "call_mapping",
    "reset_byte_stream",
    "wait_byte_stream_broken",
]

log = logging.getLogger(__name__)

#: Seconds a call, a ping, a stream's first item or a byte stream's acceptance waits for the
#: peer by default (``timeout=``; ``None``: no deadline).
CALL_TIMEOUT: Final = 30.0
#: Server-stream items received and not yet consumed before the stream is cancelled.
MAX_STREAM_BACKLOG: Final = 1024
#: Frames encrypted ahead of the link at once (they must then go out in order).
_BATCH: Final = 8

Send = Callable[[LinkMessage], Awaitable[None]]
#: Writes several messages at once, in order (one transport write where the link can).
SendMany = Callable[[Sequence[LinkMessage]], Awaitable[None]]
#: Queues one message for the link's writer if it has room now; False (nothing queued) if not.
SendNowait = Callable[[LinkMessage], bool]


@attrs.frozen
class CallContext:
    """Who is calling, as the worker knows it: the hub-authenticated ``user_id``."""

    channel_id: int
    user_id: str
    owner_id: str
    method: str
    #: What the handler wants its call's report to say besides the facts the channel knows
    #: (``exec``: ``exit_status``, ``exit_signal``); see :class:`CallReport`.
    notes: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def is_owner(self) -> bool:
        return bool(self.user_id) and self.user_id == self.owner_id


@attrs.frozen
class CallReport:
    """One call a worker's channel served or refused, for :attr:`Services.observers` (the
    worker's audit log): who (``user_id``), what (``method``, its request ``payload``),
    ``outcome`` (``"ok"``, or the error code it was answered or reset with, ``"cancelled"``
    when the channel ended first), ``message`` (a refusal's), ``duration`` (seconds),
    ``bytes_in`` / ``bytes_out`` (a byte stream's data each way, a stream's items, an RPC's
    answer) and the handler's ``notes``."""

    channel_id: int
    user_id: str
    method: str
    payload: bytes
    outcome: str
    message: str = ""
    duration: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    notes: Mapping[str, Any] = attrs.Factory(dict)


RpcHandler = Callable[[CallContext, bytes], Awaitable[bytes]]
StreamHandler = Callable[[CallContext, bytes], AsyncIterator[bytes]]
ByteStreamHandler = Callable[[CallContext, bytes, "ByteStream"], Awaitable[None]]
#: A byte-stream handler registered ``accept="manual"``: it accepts or refuses the stream.
ManualByteStreamHandler = Callable[[CallContext, bytes, "ByteStreamOpening"], Awaitable[None]]


class Services:
    """The worker's method table. Handlers are owner-only unless registered ``public=True``.

    ::

        services = Services()

        @services.rpc("echo")
        async def echo(ctx: CallContext, payload: bytes) -> bytes:
            return payload
    """

    def __init__(self) -> None:
        self.rpcs: dict[str, RpcHandler] = {}
        self.streams: dict[str, StreamHandler] = {}
        self.byte_streams: dict[str, ByteStreamHandler | ManualByteStreamHandler] = {}
        self.public: set[str] = set()
        #: Byte-stream methods whose handler accepts or refuses the stream itself.
        self.manual_accept: set[str] = set()
        #: Checks every call passes before its handler runs (after the owner check):
        #: each takes the method's name and returns None, or the ``(code, message)`` to
        #: refuse it with (the worker's ``services.disabled`` policy is one).
        self.gates: list[Callable[[str], tuple[str, str] | None]] = []
        #: Calls in progress at once, at most, per capability (``{"exec": 8}``: the part of
        #: a method's name before its first ``.``); a capability not named has no limit.
        #: One call more is refused ``busy`` (never queued).
        self.limits: dict[str, int] = {}
        #: Calls in progress now, per capability (every capability, limited or not).
        self.active: dict[str, int] = {}
        #: Methods that never count toward their capability's limit: those that serve
        #: something already counted (``exec.wait`` of a running ``exec``) or that a service
        #: limits itself (``pty.*``: live sessions, not calls).
        self.uncounted: set[str] = set()
        #: Called with a :class:`CallReport` for every call served or refused (after it
        #: ends); an observer that raises is logged, never the call's problem.
        self.observers: list[Callable[[CallReport], None]] = []

    def report(self, report: CallReport) -> None:
        """Hand ``report`` to every observer."""
        for observe in self.observers:
            try:
                observe(report)
            except Exception:
                log.exception("a call observer failed on %s", report.method)

    def refusal(self, method: str) -> tuple[str, str] | None:
        """The first of :attr:`gates` that refuses ``method``: its ``(code, message)``."""
        for gate in self.gates:
            refused = gate(method)
            if refused is not None:
                return refused
        return None

    def enter(self, method: str) -> tuple[str, str] | None:
        """Count a call of ``method`` as in progress, or the ``("busy", message)`` to refuse
        it with when its capability is at its limit; every call entered is :meth:`leave`-d."""
        if method in self.uncounted:
            return None
        capability = capability_of(method)
        now = self.active.get(capability, 0)
        limit = self.limits.get(capability)
        if limit is not None and now >= limit:
            return BUSY, busy_message(capability, now, limit)
        self.active[capability] = now + 1
        return None

    def leave(self, method: str) -> None:
        """A call :meth:`enter` counted has ended."""
        if method in self.uncounted:
            return
        capability = capability_of(method)
        left = self.active.get(capability, 0) - 1
        if left > 0:
            self.active[capability] = left
        else:
            self.active.pop(capability, None)

    def served(self) -> list[str]:
        """The methods a caller may use, sorted: every one registered, ``ping`` included,
        less those a gate refuses."""
        methods = {PING_METHOD, *self.rpcs, *self.streams, *self.byte_streams}
        return sorted(m for m in methods if m == PING_METHOD or self.refusal(m) is None)

    def _name(self, name: str, public: bool) -> None:
        if not name or name == PING_METHOD:
            raise StreamUsageError(f"{name!r} cannot be registered as a method")
        if name in self.rpcs or name in self.streams or name in self.byte_streams:
            raise StreamUsageError(f"method {name!r} is already registered")
        if public:
            self.public.add(name)

    def add_rpc(self, name: str, handler: RpcHandler, *, public: bool = False) -> None:
        self._name(name, public)
        self.rpcs[name] = handler

    def add_stream(self, name: str, handler: StreamHandler, *, public: bool = False) -> None:
        self._name(name, public)
        self.streams[name] = handler

    @overload
    def add_byte_stream(
        self,
        name: str,
        handler: ByteStreamHandler,
        *,
        public: bool = False,
        accept: Literal["auto"] = "auto",
    ) -> None: ...

    @overload
    def add_byte_stream(
        self,
        name: str,
        handler: ManualByteStreamHandler,
        *,
        public: bool = False,
        accept: Literal["manual"],
    ) -> None: ...

    def add_byte_stream(
        self,
        name: str,
        handler: ByteStreamHandler | ManualByteStreamHandler,
        *,
        public: bool = False,
        accept: Literal["auto", "manual"] = "auto",
    ) -> None:
        """Serve byte streams opened to ``name``. With ``accept="auto"`` the stream is
        accepted before ``handler(ctx, payload, stream)`` runs; with ``accept="manual"`` the
        handler gets a :class:`ByteStreamOpening` and decides: ``await opening.accept()``
        (the :class:`ByteStream`) or ``await opening.refuse(code, message)`` -- the opener's
        ``open_byte_stream`` returns only once it accepted, or raises
        :class:`RemoteCallError` with that code."""
        if accept not in ("auto", "manual"):
            raise StreamUsageError(f"accept must be 'auto' or 'manual', got {accept!r}")
        self._name(name, public)
        self.byte_streams[name] = handler
        if accept == "manual":
            self.manual_accept.add(name)

    def rpc(self, name: str, *, public: bool = False) -> Callable[[RpcHandler], RpcHandler]:
        def register(handler: RpcHandler) -> RpcHandler:
            self.add_rpc(name, handler, public=public)
            return handler

        return register

    def stream(
        self, name: str, *, public: bool = False
    ) -> Callable[[StreamHandler], StreamHandler]:
        def register(handler: StreamHandler) -> StreamHandler:
            self.add_stream(name, handler, public=public)
            return handler

        return register

    def byte_stream(
        self, name: str, *, public: bool = False
    ) -> Callable[[ByteStreamHandler], ByteStreamHandler]:
        def register(handler: ByteStreamHandler) -> ByteStreamHandler:
            self.add_byte_stream(name, handler, public=public)
            return handler

        return register


class _Call:
    """The answer to one call this end made."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.payload = b""
        self.error: LeapcoreError | None = None

    def finish(self, payload: bytes = b"", error: LeapcoreError | None = None) -> None:
        if not self.done.is_set():
            self.payload, self.error = payload, error
            self.done.set()


class _StreamInbox:
    def __init__(self) -> None:
        self.items: collections.deque[bytes] = collections.deque()
        self.ended = False
        self.error: LeapcoreError | None = None
        self.changed = trio.Event()

    def kick(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """``data`` as a flat ``memoryview`` of bytes (copied only if it is not contiguous)."""
    view = memoryview(data)
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


#: ``ByteStream.receive_some()`` without ``max_bytes`` joins buffered messages up to this.
RECEIVE_JOIN_MAX: Final = 256 * 1024


class ByteStream(trio.abc.HalfCloseableStream):
    """A byte stream inside a channel (a tunnel, a terminal): ordered, flow-controlled.

    ``receive_some`` returns ``b""`` once the peer sent EOF; ``send_eof`` half-closes;
    ``aclose`` resets the stream if it is not finished both ways. A reset by the peer or a
    lost channel raises :class:`trio.BrokenResourceError` (its ``__cause__`` says why).
    """

    def __init__(self, channel: Channel, correlation_id: int) -> None:
        self._channel = channel
        self.correlation_id = correlation_id
        self._buffer: collections.deque[bytes] = collections.deque()
        self._eof_received = False
        self._eof_sent = False
        self._closed = False
        self._error: LeapcoreError | None = None
        self._changed = trio.Event()
        self._sending = False
        self._receiving = False
        #: Opener of an early stream (:meth:`Channel.open_byte_stream` ``early=True``) not
        #: yet accepted: when to give up waiting for the answer (else None).
        self._open_deadline: float | None = None
        #: What that opening was ("method", timeout), for the deadline's error.
        self._open_what: tuple[str, float | None] = ("", None)
        #: Maps the error of a refused early open (the ERROR answering it).
        self._refusal_map: Callable[[LeapcoreError], LeapcoreError] | None = None
        #: Acceptor of an early stream not yet accepted: early data is buffered meanwhile.
        self._pending = False
        #: Called (once per break) when the stream fails or is closed here: lets a relay
        #: notice a reset without a task waiting on every change.
        self._on_broken: Callable[[], None] | None = None
        #: Data bytes sent and received on this stream so far (for call reports).
        self.bytes_sent = 0
        self.bytes_received = 0
        #: The code this side reset the stream with (None: it did not).
        self.reset_code: str | None = None

    def _kick(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait(self) -> None:
        """Wait for a change; while an early open is unanswered, at most until its deadline
        (then the stream is reset and fails with :class:`DeadlineExceeded`)."""
        deadline = self._open_deadline
        if deadline is None:
            await self._changed.wait()
            return
        with trio.move_on_at(deadline):
            await self._changed.wait()
            return
        self._channel._early_open_timed_out(self)

    def _fail(self, error: LeapcoreError) -> None:
        if self._error is None:
            self._error = error
        self._kick()
        self._broke()

    def _broke(self) -> None:
        hook, self._on_broken = self._on_broken, None
        if hook is not None:
            hook()

    def _broken(self) -> trio.BrokenResourceError:
        error = trio.BrokenResourceError(f"byte stream {self.correlation_id}: {self._error}")
        error.__cause__ = self._error
        return error

    def _check_closed(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("byte stream is closed")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this byte stream")
        self._sending = True
        try:
            self._check_closed()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_eof was called")
            view = _byte_view(data)  # no copy: send_bytes copies what it takes
            await trio.lowlevel.checkpoint_if_cancelled()
            while view:
                self._check_closed()
                if self._error is not None:
                    raise self._broken()
                try:
                    taken = self._channel.endpoint.send_bytes(self.correlation_id, view)
                except LeapcoreError as exc:
                    self._fail(exc)
                    raise self._broken() from exc
                if taken:
                    view = view[taken:]
                    self.bytes_sent += taken
                    self._channel._kick()
                    continue
                await self._wait()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this byte stream")
        self._sending = True
        try:
            self._check_closed()
            while self._error is None and not self._closed and not self._eof_sent:
                try:
                    if self._channel.endpoint.window(self.correlation_id).send_credit > 0:
                        break
                except LeapcoreError:
                    break
                await self._wait()
            else:
                self._check_closed()
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this byte stream")
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        self._receiving = True
        try:
            self._check_closed()
            await trio.lowlevel.checkpoint_if_cancelled()
            while not self._buffer:
                if self._eof_received:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                if self._error is not None:
                    raise self._broken()
                await self._wait()
                self._check_closed()
            chunk = self._take(RECEIVE_JOIN_MAX if max_bytes is None else max_bytes)
            self.bytes_received += len(chunk)
            endpoint = self._channel.endpoint
            endpoint.consume(self.correlation_id, len(chunk))
            if endpoint.has_outbound:  # a WINDOW_UPDATE (or other frames) to send
                self._channel._kick()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return chunk
        finally:
            self._receiving = False

    def _take(self, limit: int) -> bytes:
        """Up to ``limit`` buffered bytes: several received messages joined into one
        (fewer, larger writes for whoever forwards them), or part of one."""
        buffer = self._buffer
        chunk = buffer.popleft()
        if len(chunk) > limit:
            buffer.appendleft(chunk[limit:])
            return chunk[:limit]
        if not buffer or len(chunk) + len(buffer[0]) > limit:
            return chunk
        parts, size = [chunk], len(chunk)
        while buffer and size + len(buffer[0]) <= limit:
            part = buffer.popleft()
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this byte stream")
        self._check_closed()
        await trio.lowlevel.checkpoint()
        if self._eof_sent:
            return
        if self._open_deadline is not None:  # EOF only once the early open is accepted
            self._sending = True
            try:
                while self._open_deadline is not None and self._error is None:
                    await self._wait()
                    self._check_closed()
            finally:
                self._sending = False
            if self._eof_sent:
                return
        self._eof_sent = True
        if self._error is None:
            try:
                self._channel.endpoint.send_eof(self.correlation_id)
            except LeapcoreError as exc:
                self._fail(exc)
            self._channel._kick()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # Like closing a TCP socket: what was sent still arrives, then EOF; if the peer
            # is still sending, it hears a reset (nobody will read its data).
            endpoint = self._channel.endpoint
            if self._error is None and self._open_deadline is not None:
                self._open_deadline = None
                with suppress(LeapcoreError):
                    endpoint.reset(self.correlation_id, "cancelled", "the opener gave up")
                self._channel._kick()
            elif self._error is None:
                with suppress(LeapcoreError):
                    if not self._eof_sent:
                        self._eof_sent = True
                        endpoint.send_eof(self.correlation_id)
                    if not self._eof_received:
                        endpoint.reset(self.correlation_id, "cancelled", "the reader closed")
                self._channel._kick()
            self._channel._byte_streams.pop(self.correlation_id, None)
            self._kick()
            self._broke()
        await trio.lowlevel.checkpoint()


async def call_mapping(
    channel: Channel,
    method: str,
    payload: bytes,
    timeout: float | None,
    mapped: Callable[[RemoteCallError], Exception],
) -> bytes:
    """``channel.call(method, payload)``; a :class:`RemoteCallError` is raised as
    ``mapped(exc)`` instead (a service's own error class), or as itself when ``mapped``
    returns it unchanged."""
    try:
        return await channel.call(method, payload, timeout=timeout)
    except RemoteCallError as exc:
        error = mapped(exc)
        if error is exc:
            raise
        raise error from None


async def reset_byte_stream(stream: ByteStream, code: str, message: str) -> None:
    """Abort ``stream`` both ways at once (like a TCP RST): the peer's reads and writes fail
    with ``code`` (a :class:`trio.BrokenResourceError` caused by :class:`RemoteCallError`)."""
    if not stream._closed:
        stream._closed = True
        stream.reset_code = code
        channel = stream._channel
        if stream._error is None:
            with suppress(LeapcoreError):
                channel.endpoint.reset(stream.correlation_id, code, message)
            channel._kick()
        channel._byte_streams.pop(stream.correlation_id, None)
        stream._kick()
        stream._broke()
    await trio.lowlevel.checkpoint()


async def wait_byte_stream_broken(stream: ByteStream) -> None:
    """Return once ``stream`` is reset (by the peer), lost with its channel, or closed here;
    a relay uses it to notice a reset while it is blocked elsewhere."""
    while stream._error is None and not stream._closed:
        await stream._changed.wait()


class ByteStreamOpening:
    """A byte stream the peer asked to open, not answered yet (handlers registered
    ``accept="manual"``): :meth:`accept` it or :meth:`refuse` it, once. A handler that
    returns (or raises) without doing either refuses it (``internal``, or the
    :class:`~leapcore.errors.ServiceError`'s code)."""

    def __init__(self, channel: Channel, correlation_id: int) -> None:
        self._channel = channel
        self.correlation_id = correlation_id
        #: The accepted stream (None until :meth:`accept`).
        self.stream: ByteStream | None = None
        self.refused = False
        #: The code and message it was refused with (None: not refused by :meth:`refuse`).
        self.refused_code: str | None = None
        self.refused_message = ""

    @property
    def answered(self) -> bool:
        return self.stream is not None or self.refused

    def _check(self) -> None:
        if self.answered:
            raise StreamUsageError(f"byte stream {self.correlation_id} was already answered")

    async def accept(self) -> ByteStream:
        """Accept the stream: the opener's ``open_byte_stream`` returns; data may flow."""
        self._check()
        channel, cid = self._channel, self.correlation_id
        await channel._submit(lambda: channel.endpoint.accept_byte_stream(cid))
        stream = channel._accepted_stream(cid)
        self.stream = stream
        return stream

    async def refuse(self, code: str, message: str = "") -> None:
        """Refuse the stream: the opener gets :class:`RemoteCallError` with ``code``
        (1..64 characters of ``[A-Za-z0-9_.-]``) and ``message``."""
        self._check()
        channel, cid = self._channel, self.correlation_id
        self.refused = True
        self.refused_code, self.refused_message = code, message
        channel._drop_pending(cid)  # early data, if any, is discarded
        await channel._submit(lambda: channel.endpoint.send_error(cid, code, message))


class Channel:
    """One end of one open channel (see the module docstring)."""

    def __init__(
        self,
        endpoint: ChannelEndpoint,
        *,
        channel_id: int,
        send: Send,
        send_many: SendMany | None = None,
        send_nowait: SendNowait | None = None,
        clock: Callable[[], float] = trio.current_time,
        services: Services | None = None,
        user_id: str = "",
        owner_id: str = "",
        worker_id: str = "",
        max_held_bytes: int | None = None,
    ) -> None:
        if max_held_bytes is not None:
            if type(max_held_bytes) is not int or max_held_bytes < endpoint.max_message_size:
                raise ConfigError(
                    "max_held_bytes must be an integer >= the channel's max_message_size "
                    f"({endpoint.max_message_size}), got {max_held_bytes!r}"
                )
            endpoint.reassembly_budget = max_held_bytes
        #: Bytes of reassembly and request payloads this channel may hold (None: unbounded
        #: here; the endpoint's own limits still apply).
        self.max_held_bytes = max_held_bytes
        #: Request payloads held by running handlers, by correlation id.
        self._held: dict[int, int] = {}
        self.endpoint = endpoint
        self.channel_id = channel_id
        self.worker_id = worker_id
        self.user_id = user_id
        self.owner_id = owner_id
        self._send = send
        self._send_many = send_many or self._send_each
        self._send_nowait = send_nowait
        self._pump_sending = False
        self._clock = clock
        self._services = services
        self._credit = SendCredit()
        self._frames: collections.deque[ChannelFrame] = collections.deque()
        self._wakeup = trio.Event()
        self._room = trio.Event()
        self._deadline_moved = trio.Event()
        self._timer_deadline: float | None = None
        self._calls: dict[int, _Call] = {}
        self._streams: dict[int, _StreamInbox] = {}
        self._byte_streams: dict[int, ByteStream] = {}
        self._opening: dict[int, _Call] = {}
        self._handlers: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._error: LeapcoreError | None = None
        self._stop_sending = False
        self.finished = trio.Event()
        #: Completed rekeys (both directions on new keys).
        self.rekeys = 0

    # -- state ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._error is not None

    def _kick(self) -> None:
        self._wakeup.set()

    # -- from the link reader (never blocks) -------------------------------------------------

    def feed(self, frame: ChannelData) -> None:
        """A data frame from the hub for this channel."""
        if self._error is not None:
            return
        endpoint = self.endpoint
        events = endpoint.receive_frame(
            ChannelFrame(frame.correlation_id, frame.flags, frame.ciphertext), self._clock()
        )
        self._handle(events)
        if endpoint.has_outbound and self._send_nowait is not None:
            self._send_without_waiting(self._send_nowait)
        # Wake the pump only when it has work: an answer to send, an end, a deadline sooner
        # than the timer's (a received answer, e.g. a pong, usually leaves it nothing to do).
        if (
            endpoint.has_outbound
            or self._frames
            or endpoint.closed
            or self._error is not None
            or self._deadline_sooner()
        ):
            self._kick()

    def _deadline_sooner(self) -> bool:
        """Whether the endpoint's next deadline is before the one the timer waits for. A
        later one needs no wake-up: the timer polls at its own deadline and re-reads it
        (the initiator's deadline moves later with every frame: its idle check)."""
        deadline = self.endpoint.next_deadline()
        armed = self._timer_deadline
        return deadline is not None and (armed is None or deadline < armed)

    def _send_without_waiting(self, send_nowait: SendNowait) -> None:
        """Hand what the endpoint has to send (a pong, an answer, a window update) straight
        to the link's queue when it has room, sparing a pass through the pump. Only when
        the pump holds no frames and is not sending: frames must leave in order."""
        if self._frames or self._pump_sending or self._stop_sending:
            return
        self._refill()
        while self._frames:
            head = self._head()
            if head is None or head[0].flags == FrameFlag.CLOSE:
                return  # no credit yet, or the last frame: the pump sends it and ends
            message, cost = head
            if not send_nowait(message):
                return
            self._pop(cost)

    def _refill(self) -> None:
        """Seal the next frames to send (in nonce order); blocked submitters get room."""
        self._frames.extend(self.endpoint.frames_to_send(_BATCH))
        if self._frames:
            self._room.set()
            self._room = trio.Event()

    def _head(self) -> tuple[ChannelData, int] | None:
        """The next frame as a link message and its credit cost, if the credit allows it."""
        frame = self._frames[0]
        cost = SendCredit.cost(frame.flags, len(frame.ciphertext))
        if not self._credit.allows(cost):
            return None
        message = ChannelData(self.channel_id, frame.correlation_id, frame.flags, frame.ciphertext)
        return message, cost

    def _pop(self, cost: int) -> None:
        self._frames.popleft()
        self._credit.spend(cost)

    def add_credit(self, credit: int) -> None:
        self._credit.grant(credit)
        self._kick()

    def hub_closed(self, code: str, message: str) -> None:
        """The hub closed the channel (``channel_close``) or the link is gone."""
        self._stop_sending = True
        self._fail(ChannelLost(code, message))
        self._kick()

    # -- events ----------------------------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            # The most frequent first: data and window updates of byte streams.
            if type(event) is BytesReceived:
                stream = self._byte_streams.get(event.correlation_id)
                if stream is not None:
                    stream._buffer.append(event.data)
                    stream._kick()
                else:  # closed locally: keep the peer's window open
                    self.endpoint.consume(event.correlation_id, len(event.data))
            elif type(event) is WindowOpened:
                stream = self._byte_streams.get(event.correlation_id)
                if stream is not None:
                    stream._kick()
            elif isinstance(event, ResponseReceived):
                call = self._calls.pop(event.correlation_id, None)
                if call is not None:
                    call.finish(event.payload)
            elif isinstance(event, ErrorReceived):
                self._remote_error(event)
            elif isinstance(event, StreamItemReceived):
                inbox = self._streams.get(event.correlation_id)
                if inbox is not None:
                    if len(inbox.items) >= MAX_STREAM_BACKLOG:
                        self.endpoint.cancel(event.correlation_id)
                        inbox.error = StreamUsageError(
                            f"more than {MAX_STREAM_BACKLOG} stream items were not consumed; "
                            "the stream was cancelled"
                        )
                        del self._streams[event.correlation_id]
                    else:
                        inbox.items.append(event.payload)
                    inbox.kick()
            elif isinstance(event, StreamEnded):
                inbox = self._streams.pop(event.correlation_id, None)
                if inbox is not None:
                    inbox.ended = True
                    inbox.kick()
            elif isinstance(event, ByteStreamAccepted):
                opening = self._opening.pop(event.correlation_id, None)
                if opening is not None:
                    opening.finish()
                else:
                    stream = self._byte_streams.get(event.correlation_id)
                    if stream is not None and stream._open_deadline is not None:
                        stream._open_deadline = None  # an early open: its waits go on
                        stream._kick()
            elif isinstance(event, ByteStreamEOF):
                stream = self._byte_streams.get(event.correlation_id)
                if stream is not None:
                    stream._eof_received = True
                    stream._kick()
            elif isinstance(event, ByteStreamReset):
                stream = self._byte_streams.pop(event.correlation_id, None)
                if stream is not None:
                    stream._fail(remote_call_error(event.code, event.message))
                if stream is None or stream._pending:
                    # The opener gave up before the answer: stop its handler (a dial).
                    scope = self._handlers.get(event.correlation_id)
                    if scope is not None:
                        scope.cancel()
            elif isinstance(event, (RequestReceived, StreamRequested, ByteStreamRequested)):
                self._serve(event)
            elif isinstance(event, Cancelled):
                scope = self._handlers.get(event.correlation_id)
                if scope is not None:
                    scope.cancel()
            elif isinstance(event, RekeyCompleted):
                self.rekeys += 1
                log.debug("channel %d: rekeyed", self.channel_id)
            elif isinstance(event, ProtocolViolation):
                log.info(
                    "channel %d: peer violation on %d: %s: %s",
                    self.channel_id,
                    event.correlation_id,
                    event.code,
                    event.message,
                )
                self._remote_error(ErrorReceived(event.correlation_id, event.code, event.message))
            elif isinstance(event, ChannelClosed):
                self._fail(ChannelLost(event.code, event.reason))

    def _remote_error(self, event: ErrorReceived) -> None:
        error = remote_call_error(event.code, event.message)
        cid = event.correlation_id
        if (call := self._calls.pop(cid, None)) is not None:
            call.finish(error=error)
        if (opening := self._opening.pop(cid, None)) is not None:
            opening.finish(error=error)
        if (inbox := self._streams.pop(cid, None)) is not None:
            inbox.error = error
            inbox.kick()
        if (stream := self._byte_streams.pop(cid, None)) is not None:
            if stream._open_deadline is not None:  # an early open, refused
                stream._open_deadline = None
                if stream._refusal_map is not None:
                    stream._fail(stream._refusal_map(error))
                    return
            stream._fail(error)

    def _early_open_timed_out(self, stream: ByteStream) -> None:
        """An early open got no answer in time: reset it; the stream fails."""
        if stream._open_deadline is None or stream._error is not None:
            return
        stream._open_deadline = None
        cid = stream.correlation_id
        if self._byte_streams.pop(cid, None) is not None and self._error is None:
            with suppress(LeapcoreError):
                self.endpoint.reset(cid, "cancelled", "the opener gave up")
            self._kick()
        stream._fail(self._timed_out(*stream._open_what))

    def _accepted_stream(self, cid: int) -> ByteStream:
        """The stream this end just accepted: the one holding early data, or a new one."""
        stream = self._byte_streams.get(cid)
        if stream is None:
            stream = self._byte_streams[cid] = ByteStream(self, cid)
        stream._pending = False
        return stream

    def _drop_pending(self, cid: int) -> None:
        """Forget an early stream this end did not accept (and its early data)."""
        stream = self._byte_streams.get(cid)
        if stream is not None and stream._pending:
            del self._byte_streams[cid]

    def _fail(self, error: LeapcoreError) -> None:
        if self._error is None:
            self._error = error
        for call in [*self._calls.values(), *self._opening.values()]:
            call.finish(error=self._error)
        self._calls.clear()
        self._opening.clear()
        for inbox in self._streams.values():
            inbox.error = self._error
            inbox.kick()
        self._streams.clear()
        for stream in self._byte_streams.values():
            stream._fail(self._error)
        for scope in self._handlers.values():
            scope.cancel()
        self._room.set()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the pump ----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Pump frames out, run the rekey timer and the handlers; returns when the channel
        is over (closed locally and flushed, closed by the peer or the hub)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timer)
                task_status.started()
                await self._pump()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if self._error is None:
                self._fail(ChannelClosedError("the channel is closed"))
            self.finished.set()

    async def _pump(self) -> None:
        endpoint = self.endpoint
        while True:
            if self._stop_sending:
                return
            if not self._frames:
                self._refill()
            if self._frames:
                # The frames the credit allows go out in one write (one transport message),
                # up to about WRITE_BATCH bytes.
                batch: list[LinkMessage] = []
                closing = False
                size = 0
                while self._frames and not closing and size < WRITE_BATCH:
                    head = self._head()
                    if head is None:
                        break
                    message, cost = head
                    closing = message.flags == FrameFlag.CLOSE
                    self._pop(cost)
                    size += cost
                    batch.append(message)
                if batch:
                    self._pump_sending = True
                    try:
                        await self._send_many(batch)
                    finally:
                        self._pump_sending = False
                    if closing:
                        return
                    continue
            elif endpoint.closed and self._error is not None:
                return
            if self._deadline_sooner():
                self._deadline_moved.set()
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def _timer(self) -> None:
        """Runs the endpoint's timers (rekey). A task of its own, so that the pump waits on
        nothing but its wakeup: no cancel scope per message sent. The pump tells it when
        the deadline moved; a deadline that passes is polled, and the pump kicked."""
        endpoint = self.endpoint
        while True:
            deadline = self._timer_deadline = endpoint.next_deadline()
            self._deadline_moved = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._deadline_moved.wait()
            if deadline is not None and self._clock() >= deadline:
                self._handle(endpoint.poll(self._clock()))
                self._kick()

    async def _send_each(self, messages: Sequence[LinkMessage]) -> None:
        for message in messages:
            await self._send(message)

    async def _submit(self, action: Callable[[], int | None]) -> Any:
        """Run an endpoint action, waiting for outbound room while its queue is full."""
        while True:
            self._check()
            try:
                result = action()
            except OutboundQueueFull:
                self._kick()
                await self._room.wait()
                continue
            except ChannelClosedError:
                self._check()
                raise
            self._kick()
            return result

    # -- the caller's side ---------------------------------------------------------------------

    def _timed_out(self, what: str, timeout: float | None) -> DeadlineExceeded:
        peer = f"worker {self.worker_id}" if self.worker_id else f"channel {self.channel_id}"
        return DeadlineExceeded(f"{what}: no answer from {peer} within {timeout:g}s")

    async def call(
        self, method: str, payload: bytes = b"", *, timeout: float | None = CALL_TIMEOUT
    ) -> bytes:
        """Call ``method`` and return its answer; :class:`RemoteCallError` if the worker
        answered with an error, :class:`ChannelLost` if the channel ended meanwhile,
        :class:`DeadlineExceeded` (the call cancelled) if no answer came within ``timeout``
        seconds (``None``: no deadline)."""
        call = _Call()
        with _deadline(timeout) as waited:
            cid: int = await self._submit(lambda: self.endpoint.send_request(method, payload))
            self._calls[cid] = call
            try:
                await call.done.wait()
            except trio.Cancelled:
                if self._calls.pop(cid, None) is not None and self._error is None:
                    self.endpoint.cancel(cid)
                    self._kick()
                raise
        if not call.done.is_set():
            assert waited.cancelled_caught
            raise self._timed_out(method, timeout)
        if call.error is not None:
            raise call.error
        return call.payload

    async def ping(self, *, timeout: float | None = CALL_TIMEOUT) -> None:
        """One end-to-end round trip (the worker's endpoint answers it itself), within
        ``timeout`` seconds (:class:`DeadlineExceeded`)."""
        await self.call(PING_METHOD, timeout=timeout)

    @asynccontextmanager
    async def stream(
        self, method: str, payload: bytes = b"", *, timeout: float | None = CALL_TIMEOUT
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a server stream: ``async with ch.stream("logs") as items: async for item in
        items: ...``. Leaving the block early cancels the stream. The first item (or the
        end) must come within ``timeout`` seconds, else :class:`DeadlineExceeded` and the
        stream is cancelled; later items have no deadline."""
        inbox = _StreamInbox()
        with _deadline(timeout) as waited:
            cid: int = await self._submit(lambda: self.endpoint.start_stream(method, payload))
        if waited.cancelled_caught:
            raise self._timed_out(method, timeout)
        self._streams[cid] = inbox

        async def items() -> AsyncIterator[bytes]:
            first = True
            while True:
                while inbox.items:
                    first = False
                    yield inbox.items.popleft()
                if inbox.error is not None:
                    raise inbox.error
                if inbox.ended:
                    return
                if first:
                    with _deadline(timeout) as first_wait:
                        await inbox.changed.wait()
                    if first_wait.cancelled_caught and not (
                        inbox.items or inbox.ended or inbox.error
                    ):
                        self._give_up_stream(cid)
                        raise self._timed_out(method, timeout)
                else:
                    await inbox.changed.wait()

        try:
            yield items()
        finally:
            self._give_up_stream(cid)

    def _give_up_stream(self, cid: int) -> None:
        if self._streams.pop(cid, None) is not None and self._error is None:
            with suppress(LeapcoreError):
                self.endpoint.cancel(cid)
            self._kick()

    async def open_byte_stream(
        self,
        method: str,
        payload: bytes = b"",
        *,
        timeout: float | None = CALL_TIMEOUT,
        early: bool = False,
    ) -> ByteStream:
        """Open a byte stream to ``method``; returns once the worker accepted it (within
        ``timeout`` seconds, else :class:`DeadlineExceeded` and the stream is reset).

        ``early=True`` returns at once: data may be sent right away (up to
        :data:`~leapcore.proto.channel_windows.EARLY_WINDOW` bytes before the answer; a
        half-close waits for it). A refusal then fails the stream's reads and writes
        (:class:`trio.BrokenResourceError` caused by the :class:`RemoteCallError`), and so
        does no answer within ``timeout`` (caused by :class:`DeadlineExceeded`; the stream
        is reset)."""
        if early:
            return await self._open_early(method, payload, timeout, None)
        opening = _Call()
        with _deadline(timeout) as waited:
            cid: int = await self._submit(lambda: self.endpoint.open_byte_stream(method, payload))
            stream = ByteStream(self, cid)
            self._byte_streams[cid] = stream
            self._opening[cid] = opening
            try:
                await opening.done.wait()
            except trio.Cancelled:
                if self._opening.pop(cid, None) is not None and self._error is None:
                    with suppress(LeapcoreError):
                        self.endpoint.reset(cid, "cancelled", "the opener gave up")
                    self._kick()
                self._byte_streams.pop(cid, None)
                raise
        if not opening.done.is_set():
            assert waited.cancelled_caught
            raise self._timed_out(method, timeout)
        if opening.error is not None:
            self._byte_streams.pop(cid, None)
            raise opening.error
        return stream

    async def _open_early(
        self,
        method: str,
        payload: bytes,
        timeout: float | None,
        refusal_map: Callable[[LeapcoreError], LeapcoreError] | None,
    ) -> ByteStream:
        if timeout is not None and not timeout >= 0:
            raise StreamUsageError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        cid: int = await self._submit(
            lambda: self.endpoint.open_byte_stream(method, payload, early=True)
        )
        stream = ByteStream(self, cid)
        stream._open_deadline = math.inf if timeout is None else trio.current_time() + timeout
        stream._open_what = (method, timeout)
        stream._refusal_map = refusal_map
        self._byte_streams[cid] = stream
        return stream

    async def open_tcp(
        self,
        host: str,
        port: int,
        *,
        timeout: float | None = TUNNEL_OPEN_TIMEOUT,
        early: bool = False,
    ) -> ByteStream:
        """A TCP connection the worker dials to ``host:port`` (the name resolved on the
        worker, IPv4 or IPv6), as a half-closeable byte stream: returns once connected.

        A failed dial raises :class:`TunnelDialFailed` (``reason``: ``connection_refused``,
        ``network_unreachable``, ``host_unreachable``, ``timed_out``, ``name_not_found``)
        or :class:`TunnelDenied` (``denied_by_policy``: the worker's destination rules);
        a bad ``host``/``port`` here is :class:`InvalidMessage`; no answer within
        ``timeout`` seconds (default 35: the worker's own dial timeout is 30) is
        :class:`DeadlineExceeded`.

        ``early=True`` returns at once, before the dial (see :meth:`open_byte_stream`): what
        is written goes out behind the open and reaches the target once connected. The
        failures above then fail the stream instead (:class:`trio.BrokenResourceError`
        whose ``__cause__`` is that error)."""
        payload = encode_dial_request(host, port)
        if early:
            return await self._open_early(TCP_METHOD, payload, timeout, _dial_error)
        try:
            return await self.open_byte_stream(TCP_METHOD, payload, timeout=timeout)
        except RemoteCallError as exc:
            mapped = _dial_error(exc)
            if mapped is exc:
                raise
            raise mapped from None

    async def run_command(self, command: str | Sequence[str], **options: Any) -> Any:
        """Run a process on the worker to its end (:func:`leapcore.peer.process.run`)."""
        from .process import run

        return await run(self, command, **options)

    def create_process(self, command: str | Sequence[str], **options: Any) -> Any:
        """Start a process on the worker (:func:`leapcore.peer.process.create_process`)."""
        from .process import create_process

        return create_process(self, command, **options)

    async def put(self, local_path: Any, remote_path: str, **options: Any) -> Any:
        """Copy a local file or tree to the worker (:func:`leapcore.peer.files.put`)."""
        from .files import put

        return await put(self, local_path, remote_path, **options)

    async def get(self, remote_path: str, local_path: Any, **options: Any) -> Any:
        """Copy a file or tree from the worker here (:func:`leapcore.peer.files.get`)."""
        from .files import get

        return await get(self, remote_path, local_path, **options)

    # Workspaces on the worker (:mod:`leapcore.peer.workspaces`, which documents them).

    async def workspace(self, repo: str, branch: str, **options: Any) -> Any:
        """Get or create the worker's checkout of ``branch`` of ``repo``
        (:func:`leapcore.peer.workspaces.open_workspace`)."""
        from .workspaces import open_workspace

        return await open_workspace(self, repo, branch, **options)

    async def workspaces(self, **options: Any) -> Any:
        """The worker's workspaces (:func:`leapcore.peer.workspaces.list_workspaces`)."""
        from .workspaces import list_workspaces

        return await list_workspaces(self, **options)

    async def remove_workspace(self, workspace_id: str, **options: Any) -> Any:
        """Remove a workspace (:func:`leapcore.peer.workspaces.remove_workspace`)."""
        from .workspaces import remove_workspace

        return await remove_workspace(self, workspace_id, **options)

    # Terminal sessions on the worker (:mod:`leapcore.peer.terminal`, which documents them).

    async def spawn_terminal(self, command: Any = None, **options: Any) -> Any:
        from .terminal import spawn_terminal

        return await spawn_terminal(self, command, **options)

    async def terminals(self) -> Any:
        from .terminal import list_terminals

        return await list_terminals(self)

    async def send_keys(self, session_id: str, data: str | bytes) -> None:
        from .terminal import send_keys

        await send_keys(self, session_id, data)

    async def capture(self, session_id: str, **options: Any) -> Any:
        from .terminal import capture

        return await capture(self, session_id, **options)

    async def resize(self, session_id: str, cols: int, rows: int) -> None:
        from .terminal import resize_terminal

        await resize_terminal(self, session_id, cols, rows)

    async def kill_terminal(self, session_id: str) -> Any:
        from .terminal import kill_terminal

        return await kill_terminal(self, session_id)

    async def wait_terminal(self, session_id: str, **options: Any) -> Any:
        from .terminal import wait_terminal

        return await wait_terminal(self, session_id, **options)

    async def attach(self, session_id: str, **options: Any) -> ByteStream:
        from .terminal import attach

        return await attach(self, session_id, **options)

    async def aclose(self) -> None:
        """Close the channel: queued frames are sent, then a CLOSE frame; waits until the
        pump is done (bounded by the link)."""
        if self._error is None:
            self.endpoint.close()
            self._fail(ChannelClosedError("the channel is closed"))
        self._kick()
        await self.finished.wait()

    # -- the worker's side ---------------------------------------------------------------------

    @property
    def held_bytes(self) -> int:
        """Bytes this channel holds for the peer: incomplete chunked messages and the
        request payloads of running handlers."""
        return sum(self._held.values()) + self.endpoint.reassembly_buffered

    def _hold(self, cid: int, size: int) -> bool:
        """Count a request payload against :attr:`max_held_bytes`; False if it does not fit
        (one request always fits when nothing else is held)."""
        if self.max_held_bytes is None:
            return True
        held = sum(self._held.values())
        if held and held + self.endpoint.reassembly_buffered + size > self.max_held_bytes:
            return False
        self._held[cid] = size
        self.endpoint.reassembly_budget = self.max_held_bytes - held - size
        return True

    def _release(self, cid: int) -> None:
        if self._held.pop(cid, None) is not None and self.max_held_bytes is not None:
            self.endpoint.reassembly_budget = self.max_held_bytes - sum(self._held.values())

    def _serve(self, event: RequestReceived | StreamRequested | ByteStreamRequested) -> None:
        cid, method = event.correlation_id, event.method
        services = self._services
        table: dict[str, Any] | None = None
        if services is not None:
            if isinstance(event, RequestReceived):
                table = services.rpcs
            elif isinstance(event, StreamRequested):
                table = services.streams
            else:
                table = services.byte_streams
        handler = None if table is None else table.get(method)
        if handler is None or self._nursery is None:
            self.endpoint.send_error(cid, "unimplemented", f"no method {method!r}")
            return
        ctx = CallContext(self.channel_id, self.user_id, self.owner_id, method)
        assert services is not None
        if not ctx.is_owner and method not in services.public:
            self._refuse_call(
                services,
                ctx,
                cid,
                event.payload,
                "permission_denied",
                "only the worker owner may use this",
            )
            return
        refused = services.refusal(method) or services.enter(method)
        if refused is not None:
            log.info("channel %d: %s refused: %s: %s", self.channel_id, method, *refused)
            self._refuse_call(services, ctx, cid, event.payload, *refused)
            return
        if not self._hold(cid, len(event.payload)):
            services.leave(method)
            services.report(
                CallReport(
                    self.channel_id, self.user_id, method, event.payload, "resource_exhausted"
                )
            )
            log.info(
                "channel %d: %s refused: the channel holds %d bytes, its budget is %d",
                self.channel_id,
                method,
                self.held_bytes,
                self.max_held_bytes,
            )
            self.endpoint.send_error(
                cid,
                "resource_exhausted",
                f"the channel's memory budget ({self.max_held_bytes} bytes) is in use; "
                "retry when earlier requests have finished",
            )
            return
        if isinstance(event, ByteStreamRequested) and event.early:
            stream = self._byte_streams[cid] = ByteStream(self, cid)  # holds early data
            stream._pending = True
        scope = trio.CancelScope()
        self._handlers[cid] = scope
        self._nursery.start_soon(self._run_handler, scope, event, handler, ctx)

    def _refuse_call(
        self,
        services: Services,
        ctx: CallContext,
        cid: int,
        payload: bytes,
        code: str,
        message: str,
    ) -> None:
        """Answer a call with ERROR before any handler runs, and report it."""
        self.endpoint.send_error(cid, code, message)
        services.report(
            CallReport(self.channel_id, self.user_id, ctx.method, payload, code, message)
        )

    async def _run_handler(
        self,
        scope: trio.CancelScope,
        event: RequestReceived | StreamRequested | ByteStreamRequested,
        handler: Any,
        ctx: CallContext,
    ) -> None:
        cid = event.correlation_id
        started = time.monotonic()
        outcome, message, sent = "cancelled", "", 0
        stream: ByteStream | None = None
        try:
            with scope:
                try:
                    if isinstance(event, RequestReceived):
                        result = await handler(ctx, event.payload)
                        if not isinstance(result, bytes):
                            raise TypeError(f"handler {ctx.method!r} returned {type(result)}")
                        await self._submit(lambda: self.endpoint.send_response(cid, result))
                        sent = len(result)
                    elif isinstance(event, StreamRequested):
                        agen = handler(ctx, event.payload)
                        if not inspect.isasyncgen(agen):
                            raise TypeError(f"stream handler {ctx.method!r} is not async gen")
                        async with _closing(agen):
                            async for item in agen:
                                if not isinstance(item, bytes):
                                    raise TypeError(f"stream {ctx.method!r} yielded {type(item)}")
                                await self._submit(
                                    functools.partial(self.endpoint.send_stream_item, cid, item)
                                )
                                sent += len(item)
                        await self._submit(lambda: self.endpoint.end_stream(cid))
                    elif ctx.method in self._manual_accept():
                        opening = ByteStreamOpening(self, cid)
                        try:
                            await self._run_manual(handler, ctx, event.payload, opening)
                        finally:
                            stream = opening.stream
                            if opening.refused_code is not None:
                                outcome = opening.refused_code
                                message = opening.refused_message
                    else:
                        await self._submit(lambda: self.endpoint.accept_byte_stream(cid))
                        stream = self._accepted_stream(cid)
                        try:
                            await handler(ctx, event.payload, stream)
                        finally:
                            if not (stream._eof_sent or stream._closed or stream._error):
                                await stream.send_eof()
                    if outcome == "cancelled":
                        outcome = "ok"
                except ServiceError as exc:
                    outcome, message = exc.error_code, exc.error_message
                    self._answer_error(cid, exc.error_code, exc.error_message)
                except (ChannelLost, ChannelClosedError):
                    outcome = "channel_lost"
                except LeapcoreError as exc:
                    outcome, message = exc.code, str(exc)
                    if self._error is None:
                        log.info("channel %d: %s: %s", self.channel_id, ctx.method, exc)
                        self._answer_error(cid, exc.code, str(exc))
                except Exception:
                    outcome = "internal"
                    log.exception("channel %d: handler %r failed", self.channel_id, ctx.method)
                    self._answer_error(cid, "internal", "internal error")
        finally:
            self._handlers.pop(cid, None)
            self._release(cid)
            self._drop_pending(cid)
            services = self._services
            if services is not None:
                services.leave(ctx.method)
                received = 0
                if stream is not None:
                    sent, received = stream.bytes_sent, stream.bytes_received
                    if outcome == "ok" and stream.reset_code is not None:
                        outcome = stream.reset_code
                services.report(
                    CallReport(
                        self.channel_id,
                        self.user_id,
                        ctx.method,
                        event.payload,
                        outcome,
                        message,
                        time.monotonic() - started,
                        received,
                        sent,
                        dict(ctx.notes),
                    )
                )

    def _manual_accept(self) -> set[str]:
        return set() if self._services is None else self._services.manual_accept

    async def _run_manual(
        self, handler: Any, ctx: CallContext, payload: bytes, opening: ByteStreamOpening
    ) -> None:
        """A byte-stream handler that accepts or refuses the stream itself."""
        cid = opening.correlation_id
        # An exception (ServiceError's code, else internal) refuses an unanswered stream,
        # resets an accepted one (see _answer_error).
        await handler(ctx, payload, opening)
        stream = opening.stream
        if stream is None:
            if not opening.refused:
                log.warning(
                    "channel %d: %s neither accepted nor refused its byte stream",
                    self.channel_id,
                    ctx.method,
                )
                opening.refused = True
                await self._submit(
                    lambda: self.endpoint.send_error(
                        cid, "internal", "the handler neither accepted nor refused the stream"
                    )
                )
            return
        if not (stream._eof_sent or stream._closed or stream._error):
            await stream.send_eof()

    def _answer_error(self, cid: int, code: str, message: str) -> None:
        if self._error is not None:
            return
        try:
            self.endpoint.send_error(cid, code, message)
        except LeapcoreError:
            try:
                self.endpoint.reset(cid, code, message)
            except LeapcoreError:
                return
        self._kick()


def _dial_error(exc: LeapcoreError) -> LeapcoreError:
    """The worker's refusal of a ``tcp`` open as the error :meth:`Channel.open_tcp` raises."""
    if not isinstance(exc, RemoteCallError):
        return exc
    if exc.remote_code == DENIED_BY_POLICY:
        return TunnelDenied(DENIED_BY_POLICY, exc.remote_message)
    if exc.remote_code in DIAL_FAILURES:
        return TunnelDialFailed(exc.remote_code, exc.remote_message)
    if exc.remote_code == InvalidMessage.code:
        return InvalidMessage(f"the worker refused the request: {exc.remote_message}")
    return exc


def _deadline(timeout: float | None) -> trio.CancelScope:
    """A scope that gives up after ``timeout`` seconds (``None``: never)."""
    if timeout is None:
        return trio.CancelScope()
    if not timeout >= 0:
        raise StreamUsageError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    return trio.move_on_after(timeout)


@asynccontextmanager
async def _closing(agen: Any) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await agen.aclose()


class ChannelTable:
    """The channels of one link, by hub-assigned id: routes what the link reader gets."""

    def __init__(self) -> None:
        self.channels: dict[int, Channel] = {}

    def __len__(self) -> int:
        return len(self.channels)

    def add(self, channel: Channel) -> None:
        self.channels[channel.channel_id] = channel

    def discard(self, channel: Channel) -> None:
        if self.channels.get(channel.channel_id) is channel:
            del self.channels[channel.channel_id]

    def deliver(self, message: LinkMessage) -> bool:
        """Route channel traffic (data, credit, close); False for any other message."""
        if isinstance(message, ChannelData):
            channel = self.channels.get(message.channel_id)
            if channel is not None:
                channel.feed(message)
            return True
        if isinstance(message, ChannelCredit):
            channel = self.channels.get(message.channel_id)
            if channel is not None:
                channel.add_credit(message.credit)
            return True
        if isinstance(message, ChannelClose):
            channel = self.channels.pop(message.channel_id, None)
            if channel is not None:
                channel.hub_closed(message.code, message.message)
            return True
        return False

    def close_all(self, code: str, message: str) -> None:
        """The link is gone: every channel is lost."""
        channels, self.channels = self.channels, {}
        for channel in channels.values():
            channel.hub_closed(code, message)
