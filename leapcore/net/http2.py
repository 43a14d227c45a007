"""A link carried by one long-lived HTTP/2 stream (h2 + trio), both sides.

The client opens ``POST /link`` and never ends its request; the server answers
``200`` and never ends its response; link bytes travel as DATA frames both
ways. HTTP/2 flow control is the backpressure: received data is acknowledged
(its window credited back) only when the application takes it, so at most
one window of data is ever buffered either way. One task reads the
connection and never writes; one writer task sends whatever h2 has queued.
(A reader that wrote could deadlock: both ends blocked sending, nobody
reading.)

The server side also answers ``GET`` of the server's routes (``/healthz``,
``/metrics``) on other streams of the same connection, within the peer's
flow-control windows (a body that does not fit waits for window, bounded).

On the server, what a peer can make a connection hold is bounded (the budgets are
:class:`~leapcore.net.listen.ServerLimits`): the bytes h2 has to send
(``max_pending_output``: a peer that lets it fill — a PING or SETTINGS flood it does not
read — has its connection closed; link data waits below half of it), a header block
(``max_header_list_size``, advertised; checked on the frame headers as they arrive, so a
CONTINUATION flood ends the connection before it is buffered), any frame (at most
:data:`MAX_FRAME` bytes, checked before it is buffered) and the streams open at once
(``max_concurrent_streams``, advertised and enforced by h2). Every HTTP/2 violation ends
that connection (h2 sends GOAWAY) and is reported as a
:class:`~leapcore.errors.LinkProtocolError`; nothing raised by h2 escapes a connection.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ..errors import LinkClosed, LinkProtocolError
from ..proto.limits import FrameBudget
from .pipe import LINK_PATH

if TYPE_CHECKING:
    from .listen import LinkServer

__all__ = ["FrameGuard", "H2StreamPipe", "open_h2_link", "serve_h2"]

#: Per-stream receive window we advertise (and the connection's).
WINDOW: Final = 1024 * 1024
_READ: Final = 256 * 1024
#: Largest DATA frame we accept (the peer splits its writes at this).
MAX_FRAME: Final = 512 * 1024

_PREFACE_LENGTH: Final = 24
#: Events of the frames counted against a server connection's control budget (and, see
#: :meth:`_H2Server.dispatch`, SETTINGS ACKs beyond those of our own SETTINGS and DATA
#: frames that carry no data). Every PING ACK counts: the server sends no PING. Not
#: WINDOW_UPDATE: a bulk transfer legitimately sends hundreds a second.
_CONTROL_EVENTS: Final = (
    h2.events.PingReceived,
    h2.events.PingAckReceived,
    h2.events.RemoteSettingsChanged,
    h2.events.StreamReset,
    h2.events.PriorityUpdated,
)
#: The control frames, as the budget's violation names them.
_CONTROL_KINDS: Final = (
    "PING, PING ACK, SETTINGS, SETTINGS ACK, RST_STREAM, PRIORITY, DATA without data"
)
_HEADERS: Final = 0x1
_PUSH_PROMISE: Final = 0x5
_CONTINUATION: Final = 0x9
_END_HEADERS: Final = 0x4


def _headers(raw: Iterable[Any] | None) -> dict[str, str]:
    """Header pairs as text (h2 gives them as bytes; latin-1 never fails)."""
    out = {}
    for name, value in raw or ():
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        out[key] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return out


class FrameGuard:
    """Sans-IO: reads the frame headers of an inbound HTTP/2 byte stream *before* h2
    buffers the frames, and refuses a frame longer than ``max_frame`` or a header block
    (HEADERS or PUSH_PROMISE plus its CONTINUATION frames) longer than
    ``max_header_block`` bytes. (h2 waits for a whole frame before checking its length,
    and keeps up to 64 CONTINUATION frames of any size.)"""

    def __init__(self, *, max_frame: int, max_header_block: int, skip: int = 0) -> None:
        self.max_frame = max_frame
        self.max_header_block = max_header_block
        self._skip = skip  # bytes to pass over: the preface, or the rest of a frame
        self._head = bytearray()
        self._block = -1  # bytes of the open header block; -1: none open

    def feed(self, data: bytes | bytearray | memoryview) -> str | None:
        """Account for ``data``; a description of the violation, or ``None``."""
        view = memoryview(data)
        at, size = 0, len(view)
        while at < size:
            if self._skip:
                step = min(self._skip, size - at)
                self._skip -= step
                at += step
                continue
            take = view[at : at + 9 - len(self._head)]
            self._head += take
            at += len(take)
            if len(self._head) < 9:
                break
            length = int.from_bytes(self._head[:3], "big")
            kind, flags = self._head[3], self._head[4]
            self._head.clear()
            if length > self.max_frame:
                return f"a frame of {length} bytes (at most {self.max_frame})"
            if kind in (_HEADERS, _PUSH_PROMISE, _CONTINUATION):
                block = length + (self._block if kind == _CONTINUATION and self._block > 0 else 0)
                if block > self.max_header_block:
                    return f"a header block of over {self.max_header_block} bytes"
                self._block = -1 if flags & _END_HEADERS else block
            self._skip = length
        return None


class _H2Connection:
    """The parts both sides share: the h2 state, the output buffer and its writer, the
    reader loop. ``max_pending_output`` (server side) bounds the bytes held to send."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client_side: bool,
        max_pending_output: int | None = None,
        guard: FrameGuard | None = None,
    ) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.pipes: dict[int, H2StreamPipe] = {}
        self.window_open = trio.Event()
        self.output_space = trio.Event()
        self._pending = trio.Event()
        self._drained = trio.Event()
        self._out = bytearray()
        self._in_flight = 0
        self.max_pending_output = max_pending_output
        #: Link data waits while this many bytes are pending (``None``: never waits).
        self.send_high_water = None if max_pending_output is None else max_pending_output // 2
        #: Largest DATA frame link data is cut into (``None``: the peer's frame size).
        self.send_chunk = None if max_pending_output is None else max_pending_output // 4
        self._guard = guard
        self.closed = False
        #: Our SETTINGS frames not yet acknowledged by the peer.
        self.settings_unacked = 0
        #: What the peer sent past a budget, found while dispatching (the reader ends
        #: the connection for it after the batch).
        self.violation: str | None = None
        #: Why the connection failed (a protocol violation, a budget), if it did.
        self.failure: LinkProtocolError | LinkClosed | None = None
        #: Cancelled when a budget is exceeded (set by the side that runs the connection).
        self.scope: trio.CancelScope | None = None

    @property
    def pending_output(self) -> int:
        """Bytes queued to send, including the write in progress."""
        return len(self._out) + self._in_flight

    def settings(self) -> dict[int, int]:
        return {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            # Let the peer send a link batch as one DATA frame, not sixteen 16 KiB ones.
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
        }

    def start(self, nursery: trio.Nursery) -> None:
        """Queue the connection preface and settings; start the writer in ``nursery``."""
        self.conn.initiate_connection()
        self.conn.update_settings(self.settings())
        self.settings_unacked = 2  # the two SETTINGS frames just queued
        # Accept frames as large as we advertise at once: h2 raises its frame limit only
        # when the peer's SETTINGS ACK is processed, and checks a whole read against the
        # limit it had before that read, so an ACK and a large DATA frame arriving in one
        # read would otherwise end the connection.
        self.conn.max_inbound_frame_size = MAX_FRAME
        self.conn.increment_flow_control_window(WINDOW)
        nursery.start_soon(self._writer)
        self.flush()

    def flush(self) -> None:
        """Take what h2 has queued and ask the writer to send it (never blocks). Over
        ``max_pending_output``, the connection fails: the peer is not reading."""
        data = self.conn.data_to_send()
        if data:
            self._out += data
        self._pending.set()
        limit = self.max_pending_output
        if limit is not None and self.pending_output > limit and self.failure is None:
            self.fail(
                LinkClosed(f"the peer is not reading: over {limit} bytes of HTTP/2 output pending")
            )

    def fail(self, failure: LinkProtocolError | LinkClosed) -> None:
        """End the connection now for ``failure``."""
        if self.failure is None:
            self.failure = failure
        self._end_all(failure.message)
        if self.scope is not None:
            self.scope.cancel()

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until everything queued so far has been written."""
        self._drained = trio.Event()
        self.flush()
        with trio.move_on_after(timeout):
            await self._drained.wait()

    async def _writer(self) -> None:
        try:
            while True:
                await self._pending.wait()
                self._pending = trio.Event()
                while self._out:
                    data, self._out = self._out, bytearray()
                    self._in_flight = len(data)
                    await self.stream.send_all(data)
                    self._in_flight = 0
                    self.output_space.set()
                    self.output_space = trio.Event()
                self._drained.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end_all("the HTTP/2 connection broke")

    def _end_all(self, reason: str) -> None:
        self.closed = True
        for pipe in list(self.pipes.values()):
            pipe.end(reason)
        self._wake_senders()
        self.output_space.set()
        self._drained.set()

    def _wake_senders(self) -> None:
        self.window_open.set()
        self.window_open = trio.Event()

    async def read_loop(self) -> None:
        """Read until the connection ends; dispatch events. Ends every pipe at the end."""
        try:
            while True:
                data = await self.stream.receive_some(_READ)
                if not data:
                    break
                if self._guard is not None:
                    violation = self._guard.feed(data)
                    if violation is not None:
                        await self._calm_down(violation)
                        break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self.failure = LinkProtocolError(f"HTTP/2 protocol error from the peer: {exc}")
                    await self.drain()  # h2 queued a GOAWAY
                    break
                for event in events:
                    self.dispatch(event)
                if self.violation is not None:
                    await self._calm_down(self.violation)
                    break
                self.after_events()
                self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._end_all("HTTP/2 connection closed")

    async def _calm_down(self, violation: str) -> None:
        """End the connection for ``violation`` (what the peer sent): GOAWAY
        ENHANCE_YOUR_CALM, flushed within the drain timeout."""
        self.conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.failure = LinkProtocolError(f"HTTP/2: the peer sent {violation}")
        await self.drain()

    def after_events(self) -> None:
        """Called after each batch of events (the server sends route bodies here)."""

    def dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            pipe = self.pipes.get(event.stream_id or 0)
            if pipe is None or not event.data:
                # Nothing for the application (no link stream, or a frame without data,
                # perhaps padded): credit its window back now, queue nothing.
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length or 0, event.stream_id or 0
                    )
            else:
                pipe.deliver(event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._wake_senders()
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            pipe = self.pipes.get(event.stream_id or 0)
            if pipe is not None:
                pipe.end("the peer ended the link stream")
        elif isinstance(event, h2.events.ConnectionTerminated):
            for pipe in list(self.pipes.values()):
                pipe.end("the peer closed the HTTP/2 connection")


class H2StreamPipe:
    """One HTTP/2 stream used as a link pipe."""

    def __init__(self, owner: _H2Connection, stream_id: int) -> None:
        self._owner = owner
        self.stream_id = stream_id
        self._inbound: deque[tuple[bytes, int]] = deque()
        self._readable = trio.Event()
        self._ended: str | None = None

    def deliver(self, data: bytes, flow_length: int) -> None:
        self._inbound.append((data, flow_length))
        self._readable.set()

    def end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
        self._readable.set()

    async def receive(self) -> bytes:
        await trio.lowlevel.checkpoint()  # a receive is a checkpoint even with data ready
        owner = self._owner
        while True:  # a loop, never recursion: any number of empty chunks in a row
            while not self._inbound:
                if self._ended is not None:
                    raise LinkClosed(f"link closed: {self._ended}")
                self._readable = trio.Event()
                await self._readable.wait()
            data, flow_length = self._inbound.popleft()
            if not owner.closed:
                # Credit the window back only now that the application took the data.
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    owner.conn.acknowledge_received_data(flow_length, self.stream_id)
                owner.flush()
            if data:
                return data

    async def send(self, data: bytes) -> None:
        owner = self._owner
        view = memoryview(data)
        while view:
            if self._ended is not None or owner.closed:
                raise LinkClosed(f"link closed while sending: {self._ended or 'connection closed'}")
            high_water = owner.send_high_water
            if high_water is not None and owner.pending_output >= high_water:
                await owner.output_space.wait()  # the peer is slow to read: wait for it
                continue
            try:
                window = min(
                    owner.conn.local_flow_control_window(self.stream_id),
                    owner.conn.max_outbound_frame_size,
                    owner.send_chunk or math.inf,
                )
            except h2.exceptions.StreamClosedError:
                raise LinkClosed("link closed while sending: stream closed") from None
            if window <= 0:
                await owner.window_open.wait()
                continue
            chunk, view = view[: int(window)], view[int(window) :]
            try:
                owner.conn.send_data(self.stream_id, bytes(chunk))
            except h2.exceptions.ProtocolError as exc:
                raise LinkClosed(f"link closed while sending: {exc}") from None
            owner.flush()
            # Yield so a long send does not starve the reader (windows are the bound).
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        owner = self._owner
        if self._ended is None and not owner.closed:
            self.end("closed locally")
            with contextlib.suppress(h2.exceptions.ProtocolError):
                owner.conn.end_stream(self.stream_id)
            await owner.drain()
        await trio.aclose_forcefully(owner.stream)


# ---------------------------------------------------------------------------
# Server


class _H2Server(_H2Connection):
    """The server's connection: at most one link stream, plus route answers."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        server: LinkServer,
        peer: str,
        nursery: trio.Nursery,
        on_link_opened: Callable[[], None] | None = None,
    ) -> None:
        limits = server.limits
        super().__init__(
            stream,
            client_side=False,
            max_pending_output=limits.max_pending_output,
            guard=FrameGuard(
                max_frame=MAX_FRAME,
                max_header_block=2 * limits.max_header_list_size,
                skip=_PREFACE_LENGTH,
            ),
        )
        self.server = server
        self.peer = peer
        self.nursery = nursery
        self.max_header_list_size = limits.max_header_list_size
        self.max_concurrent_streams = limits.max_concurrent_streams
        #: Route bodies waiting for flow-control window, by stream id.
        self._bodies: dict[int, memoryview] = {}
        self._body_budget = limits.max_pending_output // 2
        #: Control frames the peer may send per second.
        self.control = FrameBudget(limits.max_control_frames)
        #: Set when a request arrives or a route answer makes progress (the idle clock).
        self.activity = trio.Event()
        self.link_opened = False
        self._on_link_opened = on_link_opened

    def start(self, nursery: trio.Nursery) -> None:
        super().start(nursery)
        # Enforced from the first request, not only once the peer acknowledges the setting.
        self.conn.decoder.max_header_list_size = self.max_header_list_size

    def settings(self) -> dict[int, int]:
        return {
            **super().settings(),
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
        }

    @property
    def routes_in_flight(self) -> int:
        return len(self._bodies)

    def dispatch(self, event: h2.events.Event) -> None:
        control = isinstance(event, _CONTROL_EVENTS) or (
            isinstance(event, h2.events.DataReceived) and not event.data
        )
        if isinstance(event, h2.events.SettingsAcknowledged):
            control = self.settings_unacked <= 0  # unsolicited
            self.settings_unacked -= 1
        if control and self.violation is None and not self.control.spend(trio.current_time()):
            self.violation = (
                f"more than {self.control.limit} control frames ({_CONTROL_KINDS}) "
                "in a second (max_control_frames)"
            )
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        else:
            if isinstance(event, h2.events.StreamReset):
                self._bodies.pop(event.stream_id or 0, None)
            super().dispatch(event)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        self.activity.set()
        headers = _headers(event.headers)
        method, path = headers.get(":method", ""), headers.get(":path", "").split("?")[0]
        stream_id = event.stream_id or 0
        if path == LINK_PATH and method == "POST" and not self.pipes:
            try:
                self.conn.send_headers(stream_id, [(":status", "200")])
            except h2.exceptions.ProtocolError:
                return  # reset by the peer in the same read: no link
            pipe = H2StreamPipe(self, stream_id)
            self.pipes[stream_id] = pipe
            self.link_opened = True
            if self._on_link_opened is not None:
                self._on_link_opened()
            self.nursery.start_soon(self._run_link, pipe)
            return
        status, content_type, body = self.server.route(method, path)
        if body and sum(map(len, self._bodies.values())) + len(body) > self._body_budget:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        try:
            self.conn.send_headers(
                stream_id,
                [
                    (":status", str(status)),
                    ("content-type", content_type),
                    ("content-length", str(len(body))),
                ],
                end_stream=not body,
            )
        except h2.exceptions.ProtocolError:
            return  # the peer reset the stream in the same read
        if body:
            self._bodies[stream_id] = memoryview(body)

    def after_events(self) -> None:
        """Send what fits of the waiting route bodies (windows may have opened)."""
        for stream_id, body in list(self._bodies.items()):
            try:
                while body:
                    room = min(
                        self.conn.local_flow_control_window(stream_id),
                        self.conn.max_outbound_frame_size,
                    )
                    if room <= 0:
                        break
                    chunk, body = body[:room], body[room:]
                    self.conn.send_data(stream_id, bytes(chunk), end_stream=not body)
                    self.activity.set()
            except h2.exceptions.ProtocolError:
                body = memoryview(b"")  # the stream is gone
            if body:
                self._bodies[stream_id] = body
            else:
                del self._bodies[stream_id]

    async def _run_link(self, pipe: H2StreamPipe) -> None:
        on_link = self.server.on_link
        assert on_link is not None  # a server without links never speaks HTTP/2
        try:
            await on_link(pipe, "h2", self.peer)
        finally:
            await pipe.aclose()
            self.nursery.cancel_scope.cancel()


async def serve_h2(
    stream: trio.abc.Stream,
    server: LinkServer,
    *,
    peer: str = "local",
    deadline: float = math.inf,
    on_link_opened: Callable[[], None] | None = None,
) -> None:
    """Serve one HTTP/2 connection: at most one link stream, plus plain GET routes.

    ``on_link_opened()`` is called when the link stream opens. Until then, the connection
    must make progress by ``deadline``; each route request (or answer progress) moves it
    to ``handshake_timeout`` from then. Raises
    :class:`~leapcore.errors.LinkProtocolError` for an HTTP/2 violation,
    :class:`~leapcore.errors.LinkClosed` for a peer that does not read and
    :class:`trio.TooSlowError` when the deadline passes.
    """
    timeout = server.limits.handshake_timeout
    timed_out = False
    async with trio.open_nursery() as nursery:
        h2c = _H2Server(stream, server, peer, nursery, on_link_opened)
        h2c.scope = nursery.cancel_scope
        h2c.start(nursery)

        async def idle_clock() -> None:
            nonlocal timed_out
            current = deadline
            while not h2c.link_opened:
                with trio.move_on_at(current):
                    await h2c.activity.wait()
                    h2c.activity = trio.Event()
                    current = trio.current_time() + timeout
                    continue
                if h2c.link_opened:
                    return
                timed_out = True
                nursery.cancel_scope.cancel()
                return

        nursery.start_soon(idle_clock)
        await h2c.read_loop()
        if h2c.failure is None and not h2c.link_opened:
            await h2c.drain()  # the peer half-closed: its answers still go out (bounded)
        nursery.cancel_scope.cancel()
    if h2c.failure is not None:
        raise h2c.failure
    if timed_out:
        raise trio.TooSlowError(
            f"HTTP/2 connection without a link idle for {timeout:g} s (handshake_timeout)"
        )


# ---------------------------------------------------------------------------
# Client


async def open_h2_link(
    stream: trio.abc.Stream, nursery: trio.Nursery, *, authority: str, scheme: str
) -> H2StreamPipe:
    """Open the link stream on a fresh connection; the reader runs in ``nursery``."""
    h2c = _H2Client(stream)
    h2c.start(nursery)
    stream_id = h2c.conn.get_next_available_stream_id()
    h2c.link_stream = stream_id
    h2c.conn.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":path", LINK_PATH),
            (":scheme", scheme),
            (":authority", authority),
            ("content-type", "application/octet-stream"),
        ],
    )
    h2c.flush()
    pipe = H2StreamPipe(h2c, stream_id)
    h2c.pipes[stream_id] = pipe

    async def reader() -> None:
        try:
            await h2c.read_loop()
        finally:
            h2c.response.set()

    nursery.start_soon(reader)
    with trio.fail_after(30):
        await h2c.response.wait()
    if h2c.status != ["200"]:
        await trio.aclose_forcefully(stream)
        raise LinkClosed(f"the hub refused the HTTP/2 link stream (status {h2c.status or 'none'})")
    return pipe


class _H2Client(_H2Connection):
    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__(stream, client_side=True)
        self.link_stream = 0
        self.response = trio.Event()
        self.status: list[str] = []

    def dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id == self.link_stream:
            self.status.append(_headers(event.headers).get(":status", ""))
            self.response.set()
        else:
            super().dispatch(event)
