"""A link carried by a WebSocket connection: a thin trio driver over ``websockets``' sans-IO
protocol (RFC 6455 framing, masking in C).

The link is a byte pipe, so message boundaries mean nothing: :meth:`WebSocketPipe.receive`
hands over each binary frame's payload as it is parsed (continuation frames included), and
:meth:`WebSocketPipe.send` writes one message per :data:`~leapcore.net.pipe.SEND_CHUNK`. A text
message, a frame or message larger than :data:`~leapcore.net.pipe.MAX_WS_MESSAGE`, or any framing
error ends the link (:class:`~leapcore.errors.LinkClosed`).

There is no reader task: the link's reader calls :meth:`~WebSocketPipe.receive`, the link's one
writer calls :meth:`~WebSocketPipe.send`. Control replies the protocol owes the peer (a pong, a
close answer) are written by whichever of the two gets there first; a lock keeps writes whole.
While the writer is blocked (the peer does not read), pongs owed are coalesced: at most one is
held, the latest ping's, so a ping flood from a peer that does not read holds O(1) memory.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Final

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import CLOSED, OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from ..errors import LinkClosed
from ..proto.limits import FrameBudget
from .trioutil import WriteLock

__all__ = [
    "CLOSE_TIMEOUT",
    "WebSocketPipe",
    "accept_websocket",
    "open_websocket",
]

#: Seconds :meth:`WebSocketPipe.aclose` waits for the peer's answer to its close frame.
CLOSE_TIMEOUT: Final = 5.0
#: Bytes read from the transport at once.
RECEIVE_BUFFER: Final = 256 * 1024
#: Bytes per WebSocket message sent (a pipe carries bytes; message boundaries mean nothing).
#: Above :data:`~leapcore.net.pipe.WRITE_BATCH` plus one frame, so a joined batch is one message.
SEND_CHUNK: Final = 512 * 1024
#: Largest WebSocket frame or message accepted.
MAX_WS_MESSAGE: Final = 512 * 1024

_DATA: Final = (Opcode.BINARY, Opcode.CONT)
#: Frames counted against the peer's control budget.
_CONTROL: Final = (Opcode.PING, Opcode.PONG)
#: First byte of a serialized pong frame (FIN, opcode 0xA), masked or not.
_PONG_HEAD: Final = 0x8A


class WebSocketPipe:
    """A :class:`~leapcore.net.pipe.LinkPipe` over an open WebSocket connection."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: Protocol,
        *,
        max_control_frames: int | None = None,
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        #: Pings and pongs the peer may send per second (``None``: no limit; the server's).
        self._control = None if max_control_frames is None else FrameBudget(max_control_frames)
        self._write_lock = WriteLock()
        self._owed: list[bytes] = []  # protocol output taken by the reader, not yet written
        self._owed_pong = -1  # index in _owed of the one pong held there (-1: none)
        self._chunks: collections.deque[bytes | bytearray] = collections.deque()
        self._reading = False
        self._eof = False
        self._failure: str | None = None
        self._done = trio.Event()  # the peer closed (close frame received, or EOF)
        self._closing = False

    # -- sending (the link's one writer) -------------------------------------------------

    async def send(self, data: bytes) -> None:
        protocol = self._protocol
        if self._closing or protocol.state is not OPEN:
            raise LinkClosed(self._why("sending"))
        try:
            for start in range(0, len(data), SEND_CHUNK):
                protocol.send_binary(data[start : start + SEND_CHUNK])
        except WebSocketException as exc:
            raise LinkClosed(f"link closed while sending: {exc}") from None
        await self._flush()

    async def _flush(self) -> None:
        """Write, in order, whatever the protocol has queued (frames, pongs, a close)."""
        async with self._write_lock:
            writes = [*self._owed, *self._protocol.data_to_send()]
            self._owed.clear()
            self._owed_pong = -1
            try:
                for data in writes:
                    if data:
                        await self._stream.send_all(data)
                    elif isinstance(self._stream, trio.abc.HalfCloseableStream):
                        await self._stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise LinkClosed(f"link closed while sending: {exc}") from None

    # -- receiving (the link's one reader) -------------------------------------------------

    async def receive(self) -> bytes | bytearray:
        """The next chunk of link bytes (never empty); :class:`LinkClosed` once the peer is
        gone, sent a close frame, a text message or a bad frame."""
        while not self._chunks:
            if self._done.is_set():
                raise LinkClosed(self._why("receiving"))
            self._reading = True
            try:
                await self._read_once()
            finally:
                self._reading = False
        return self._chunks.popleft()

    async def _read_once(self) -> None:
        protocol = self._protocol
        try:
            data = await self._stream.receive_some(RECEIVE_BUFFER)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._eof = True
            self._done.set()
            raise LinkClosed(f"link closed: {exc}") from None
        if data:
            protocol.receive_data(data)
        else:
            self._eof = True
            protocol.receive_eof()
        self.take(protocol.events_received())
        # A pong, a close answer, a failure's close frame: written now unless the writer
        # holds the transport (then its next write takes them first): the reader never waits.
        self._owe(protocol.data_to_send())
        if self._owed and not self._write_lock.locked():
            try:
                await self._flush()
            except LinkClosed:
                self._eof = True
        if self._eof or protocol.state is CLOSED or protocol.close_rcvd is not None:
            self._done.set()

    def _owe(self, writes: list[bytes]) -> None:
        """Hold protocol output for the next write; a pong replaces the one already held
        (in its place), so at most one pong waits however many pings arrive."""
        for data in writes:
            if data and data[0] == _PONG_HEAD:
                if self._owed_pong >= 0:
                    self._owed[self._owed_pong] = data
                    continue
                self._owed_pong = len(self._owed)
            self._owed.append(data)

    @property
    def owed_bytes(self) -> int:
        """Bytes of protocol output (pongs, a close) waiting for the transport."""
        return sum(map(len, self._owed))

    def take(self, events: Sequence[object]) -> None:
        """Keep the payload of data frames among ``events``; a text frame fails the link."""
        control = self._control
        if control is not None and self._failure is None:
            frames = sum(1 for e in events if isinstance(e, Frame) and e.opcode in _CONTROL)
            if not control.spend(trio.current_time(), frames):
                self._failure = (
                    f"link closed: the peer sent more than {control.limit} WebSocket pings "
                    "and pongs in a second (max_control_frames)"
                )
                self._protocol.fail(1008, "too many control frames")
                self._done.set()
                return
        for event in events:
            if not isinstance(event, Frame):
                continue
            if event.opcode is Opcode.TEXT:
                self._failure = "link carried a text WebSocket message; only binary is allowed"
                self._protocol.fail(1003, "only binary messages are allowed")
                self._done.set()
            elif event.opcode in _DATA and event.data and self._failure is None:
                # As parsed (bytes, or a fresh bytearray nobody else holds): no extra copy.
                data = event.data
                self._chunks.append(bytes(data) if isinstance(data, memoryview) else data)

    def _why(self, doing: str) -> str:
        if self._failure is not None:
            return self._failure
        protocol = self._protocol
        if protocol.close_rcvd is not None:
            close = protocol.close_rcvd
            reason = f" ({close.reason})" if close.reason else ""
            return f"link closed: the peer closed the WebSocket with code {close.code}{reason}"
        sent = protocol.close_sent
        if sent is not None and not self._closing:  # the protocol refused what came in
            return (
                f"link closed: bad WebSocket data from the peer (code {sent.code}: {sent.reason})"
            )
        if sent is not None:
            return "link closed: this side closed the WebSocket"
        if self._eof:
            return "link closed: the peer went away"
        return f"link closed while {doing}"

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send a close frame, wait (at most :data:`CLOSE_TIMEOUT`) for the peer's answer, then
        close the transport. Safe to call more than once, and while a reader is waiting."""
        if self._closing:
            return
        self._closing = True
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                if self._protocol.state is OPEN:
                    self._protocol.send_close(1000)
                    try:
                        await self._flush()
                    except LinkClosed:
                        return
                if self._reading:
                    await self._done.wait()  # the reader sees the answer
                    return
                while not self._done.is_set():
                    try:
                        await self._read_once()
                    except LinkClosed:
                        return
                    self._chunks.clear()  # data after our close: nobody reads it
        finally:
            await trio.aclose_forcefully(self._stream)


def ws_uri(host: str, port: int, *, tls: bool, path: str) -> str:
    """The ``ws://`` / ``wss://`` URI for ``host`` (an IPv6 literal is bracketed)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    port_part = f":{port}" if port else ""
    return f"{'wss' if tls else 'ws'}://{shown}{port_part}{path}"


async def open_websocket(
    stream: trio.abc.Stream, *, host: str, port: int, tls: bool, path: str, timeout: float
) -> WebSocketPipe:
    """The client's opening handshake on ``stream``; :class:`LinkClosed` if it fails."""
    try:
        uri = parse_uri(ws_uri(host, port, tls=tls, path=path))
    except InvalidURI as exc:
        raise LinkClosed(f"WebSocket handshake failed: {exc}") from None
    protocol = ClientProtocol(uri, max_size=MAX_WS_MESSAGE)
    protocol.send_request(protocol.connect())
    pipe = WebSocketPipe(stream, protocol)
    with trio.move_on_after(timeout) as waited:
        await pipe._flush()
        while protocol.state is not OPEN:
            data = await stream.receive_some(RECEIVE_BUFFER)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            events = protocol.events_received()
            if protocol.handshake_exc is not None:
                raise LinkClosed(f"WebSocket handshake failed: {protocol.handshake_exc}")
            if protocol.state is OPEN:
                pipe.take(events)  # frames that came with the response
            elif not data:
                raise LinkClosed("WebSocket handshake failed: the server closed the connection")
    if waited.cancelled_caught:
        raise LinkClosed(f"WebSocket handshake timed out after {timeout:g}s")
    return pipe


async def accept_websocket(
    stream: trio.abc.Stream, head: bytes, *, max_control_frames: int | None = None
) -> WebSocketPipe | None:
    """The server's side of the handshake, given the request ``head`` already read from
    ``stream``: the open pipe, or ``None`` when the request was refused (the refusal, e.g.
    400 for a missing ``Sec-WebSocket-Key``, was written). ``max_control_frames``: pings
    and pongs the peer may send per second before its link is closed (1008)."""
    protocol = ServerProtocol(max_size=MAX_WS_MESSAGE)
    protocol.receive_data(head)
    events = protocol.events_received()
    requests = [e for e in events if isinstance(e, Request)]
    pipe = WebSocketPipe(stream, protocol, max_control_frames=max_control_frames)
    if not requests:
        await pipe._flush()
        return None
    protocol.send_response(protocol.accept(requests[0]))
    await pipe._flush()
    if protocol.state is not OPEN:
        return None
    pipe.take(events)  # frames that came with the request head
    return pipe
