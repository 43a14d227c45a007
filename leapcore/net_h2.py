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
``/metrics``) on other streams of the same connection.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from .errors import LinkClosed
from .netpipe import LINK_PATH

if TYPE_CHECKING:
    from .netserver import LinkServer

__all__ = ["H2StreamPipe", "open_h2_link", "serve_h2"]

#: Per-stream receive window we advertise (and the connection's).
WINDOW: Final = 1024 * 1024
_READ: Final = 256 * 1024
#: Largest DATA frame we accept (the peer splits its writes at this).
MAX_FRAME: Final = 512 * 1024


def _headers(raw: Iterable[Any] | None) -> dict[str, str]:
    """Header pairs as text (h2 types them as bytes; with header_encoding they are str)."""
    out = {}
    for name, value in raw or ():
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        out[key] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return out


class _H2Connection:
    """The parts both sides share: the h2 state, one writer lock, the reader loop."""

    def __init__(self, stream: trio.abc.Stream, *, client_side: bool) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.pipes: dict[int, H2StreamPipe] = {}
        self.window_open = trio.Event()
        self._pending = trio.Event()
        self._drained = trio.Event()
        self.closed = False

    def start(self, nursery: trio.Nursery) -> None:
        """Queue the connection preface and settings; start the writer in ``nursery``."""
        self.conn.initiate_connection()
        self.conn.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                # Let the peer send a link batch as one DATA frame, not sixteen 16 KiB ones.
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            }
        )
        self.conn.increment_flow_control_window(WINDOW)
        nursery.start_soon(self._writer)
        self.flush()

    def flush(self) -> None:
        """Ask the writer to send what h2 has queued (never blocks)."""
        self._pending.set()

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
                data = self.conn.data_to_send()
                if data:
                    await self.stream.send_all(data)
                if not self._pending.is_set():
                    self._drained.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end_all("the HTTP/2 connection broke")

    def _end_all(self, reason: str) -> None:
        self.closed = True
        for pipe in list(self.pipes.values()):
            pipe.end(reason)
        self._wake_senders()
        self._drained.set()

    def _wake_senders(self) -> None:
        self.window_open.set()
        self.window_open = trio.Event()

    async def read_loop(self, on_event: object = None) -> None:
        """Read until the connection ends; dispatch events. Ends every pipe at the end."""
        try:
            while True:
                data = await self.stream.receive_some(_READ)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    await self.drain()
                    break
                for event in events:
                    await self.dispatch(event)
                self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._end_all("HTTP/2 connection closed")

    async def dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            pipe = self.pipes.get(event.stream_id or 0)
            if pipe is None:
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id or 0
                )
            else:
                pipe.deliver(event.data or b"", event.flow_controlled_length)
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
        while not self._inbound:
            if self._ended is not None:
                raise LinkClosed(f"link closed: {self._ended}")
            self._readable = trio.Event()
            await self._readable.wait()
        data, flow_length = self._inbound.popleft()
        owner = self._owner
        if not owner.closed:
            # Credit the window back only now that the application took the data.
            owner.conn.acknowledge_received_data(flow_length, self.stream_id)
            owner.flush()
        if not data:
            return await self.receive()
        return data

    async def send(self, data: bytes) -> None:
        owner = self._owner
        view = memoryview(data)
        while view:
            if self._ended is not None or owner.closed:
                raise LinkClosed(f"link closed while sending: {self._ended or 'connection closed'}")
            try:
                window = min(
                    owner.conn.local_flow_control_window(self.stream_id),
                    owner.conn.max_outbound_frame_size,
                )
            except h2.exceptions.StreamClosedError:
                raise LinkClosed("link closed while sending: stream closed") from None
            if window <= 0:
                await owner.window_open.wait()
                continue
            chunk, view = view[:window], view[window:]
            owner.conn.send_data(self.stream_id, bytes(chunk))
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


async def serve_h2(stream: trio.abc.Stream, server: LinkServer) -> None:
    """Serve one HTTP/2 connection: at most one link stream, plus plain GET routes."""
    h2c = _H2Connection(stream, client_side=False)

    async with trio.open_nursery() as nursery:
        h2c.start(nursery)

        async def on_request(event: h2.events.RequestReceived) -> None:
            headers = _headers(event.headers)
            method, path = headers.get(":method", ""), headers.get(":path", "").split("?")[0]
            stream_id = event.stream_id or 0
            if path == LINK_PATH and method == "POST" and not h2c.pipes:
                h2c.conn.send_headers(stream_id, [(":status", "200")])
                h2c.flush()
                pipe = H2StreamPipe(h2c, stream_id)
                h2c.pipes[stream_id] = pipe

                async def run_link() -> None:
                    try:
                        await server.on_link(pipe, "h2")
                    finally:
                        await pipe.aclose()
                        nursery.cancel_scope.cancel()

                nursery.start_soon(run_link)
                return
            status, content_type, body = server.route(method, path)
            h2c.conn.send_headers(
                stream_id,
                [
                    (":status", str(status)),
                    ("content-type", content_type),
                    ("content-length", str(len(body))),
                ],
                end_stream=not body,
            )
            if body:
                h2c.conn.send_data(stream_id, body, end_stream=True)
            h2c.flush()

        dispatch = h2c.dispatch

        async def server_dispatch(event: h2.events.Event) -> None:
            if isinstance(event, h2.events.RequestReceived):
                await on_request(event)
            else:
                await dispatch(event)

        h2c.dispatch = server_dispatch  # type: ignore[method-assign]
        await h2c.read_loop()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# Client


async def open_h2_link(
    stream: trio.abc.Stream, nursery: trio.Nursery, *, authority: str, scheme: str
) -> H2StreamPipe:
    """Open the link stream on a fresh connection; the reader runs in ``nursery``."""
    h2c = _H2Connection(stream, client_side=True)
    h2c.start(nursery)
    stream_id = h2c.conn.get_next_available_stream_id()
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
    response = trio.Event()
    status: list[str] = []
    dispatch = h2c.dispatch

    async def client_dispatch(event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
            status.append(_headers(event.headers).get(":status", ""))
            response.set()
        else:
            await dispatch(event)

    h2c.dispatch = client_dispatch  # type: ignore[method-assign]

    async def reader() -> None:
        try:
            await h2c.read_loop()
        finally:
            response.set()

    nursery.start_soon(reader)
    with trio.fail_after(30):
        await response.wait()
    if status != ["200"]:
        await trio.aclose_forcefully(stream)
        raise LinkClosed(f"the hub refused the HTTP/2 link stream (status {status or 'none'})")
    return pipe
