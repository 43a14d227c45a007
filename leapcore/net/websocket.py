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

**Data frames bypass the library** (the bulk path; the wire is the same RFC 6455 framing).
:meth:`WebSocketPipe.send` frames its binary message itself: one join (and, on the client,
one masking pass that also covers the header, pre-masked) instead of the library's
``BytesIO`` writes and copies. On receipt, complete single-frame binary messages (FIN set, no
reserved bits, masked as the side requires, at most :data:`MAX_WS_MESSAGE`) are cut out of
what was read without passing through the library's buffers: a masked payload is unmasked
straight from the bytes read, an unmasked one handed over as a view of them. The first
frame of any other kind (ping, pong, close, text, a fragment, anything malformed or too
large) hands everything from there on to the library for good, so every rule and limit of
the protocol (control frames, closing, bad framing) is the library's, as before. The
library only ever sees the handshake head, so its parser is at a frame boundary then.
"""

from __future__ import annotations

import collections
import os
import secrets
import struct
from collections.abc import Sequence
from typing import Final

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import CLOSED, OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask
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
#: First byte of a whole binary message in one frame (FIN, opcode 0x2, no reserved bits).
_BINARY_HEAD: Final = 0x82
_MASK_BIT: Final = 0x80
_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")
_HEAD_END: Final = b"\r\n\r\n"
#: Whether writes may go straight to a socket's descriptor (``os.write`` on a socket is POSIX).
_DIRECT_WRITES: Final = os.name == "posix"


def _frame_head(length: int, mask_bit: int) -> bytes:
    """The header of a whole binary message of ``length`` bytes (without a masking key)."""
    if length < 126:
        return bytes((_BINARY_HEAD, mask_bit | length))
    if length < 65536:
        return bytes((_BINARY_HEAD, mask_bit | 126)) + _U16.pack(length)
    return bytes((_BINARY_HEAD, mask_bit | 127)) + _U64.pack(length)


def binary_frame(parts: Sequence[bytes | bytearray | memoryview], *, mask: bool) -> bytes:
    """One whole binary message, the ``parts`` joined, serialized (RFC 6455 5.2); masked
    with a fresh random key when ``mask`` (a client's frames). It costs one join, plus, masked,
    one masking pass: the whole frame is masked with the key rotated by the header's length,
    the header having been masked with it beforehand, so that the pass restores the header
    and masks the payload exactly as the key in the header says."""
    length = sum(map(len, parts))
    if not mask:
        return b"".join((_frame_head(length, 0), *parts))
    key = secrets.token_bytes(4)
    head = _frame_head(length, _MASK_BIT) + key
    shift = len(head) % 4
    rotated = key[-shift:] + key[:-shift] if shift else key
    return apply_mask(b"".join((apply_mask(head, rotated), *parts)), rotated)


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
        self._chunks: collections.deque[bytes | bytearray | memoryview] = collections.deque()
        self._reading = False
        self._eof = False
        self._failure: str | None = None
        self._done = trio.Event()  # the peer closed (close frame received, or EOF)
        self._closing = False
        #: Frames built here, written after what is owed and before the protocol's output.
        self._frames: list[bytes] = []
        #: Whether data frames are still parsed here (see the module docstring).
        self._fast = True
        self._masked = isinstance(protocol, ServerProtocol)  # a server receives masked frames
        #: Bytes read and not yet parsed here (one partial frame, and the read that came
        #: after it), kept as read until the frame is whole, then joined once.
        self._pending: list[bytes | bytearray | memoryview] = []
        self._pending_size = 0
        #: Bytes the partial frame in ``_pending`` needs (0: its header is not whole yet).
        self._need = 0

    # -- sending (the link's one writer) -------------------------------------------------

    async def send(self, data: bytes) -> None:
        protocol = self._protocol
        if self._closing or protocol.state is not OPEN:
            raise LinkClosed(self._why("sending"))
        mask = not self._masked
        if len(data) <= SEND_CHUNK:
            self._frames.append(binary_frame((data,), mask=mask))
        else:
            with memoryview(data) as view:
                for start in range(0, len(data), SEND_CHUNK):
                    chunk = view[start : start + SEND_CHUNK]
                    self._frames.append(binary_frame((chunk,), mask=mask))
                    del chunk
        await self._flush()

    async def send_parts(self, parts: Sequence[bytes]) -> None:
        """:meth:`send` of the ``parts`` joined, joined in the same pass as the framing
        (see :func:`~leapcore.net.pipe.send_joined`)."""
        if sum(map(len, parts)) > SEND_CHUNK:
            await self.send(b"".join(parts))
            return
        if self._closing or self._protocol.state is not OPEN:
            raise LinkClosed(self._why("sending"))
        self._frames.append(binary_frame(parts, mask=not self._masked))
        await self._flush()

    def send_now(self, data: bytes) -> int | None:
        """Write ``data`` as one message now, without waiting, when nothing else is being
        written. ``None`` when it was not (TLS, another stream, a write or protocol output
        under way, the socket full or broken): nothing was written, send it as usual. Else
        the bytes the socket did not take (0: all went out), held to go first in the next
        write: :meth:`flush` writes them."""
        return self.send_parts_now((data,))

    def send_parts_now(self, parts: Sequence[bytes]) -> int | None:
        """:meth:`send_now` of the ``parts`` joined (joined while framing them)."""
        if (
            self._closing
            or self._protocol.state is not OPEN
            or self._write_lock.locked()
            or self._owed
            or self._frames
            or sum(map(len, parts)) > SEND_CHUNK
        ):
            return None
        fd = self._direct_fd()
        if fd < 0:
            return None
        owed = self._protocol.data_to_send()
        if owed:
            self._owe(owed)
            return None
        frame = binary_frame(parts, mask=not self._masked)
        try:
            sent = os.write(fd, frame)
        except OSError:  # full, or broken: the usual path waits, or says so
            return None
        if sent < len(frame):
            self._frames.append(frame[sent:])
        return len(frame) - sent

    @property
    def writes_directly(self) -> bool:
        """Whether :meth:`send_now` can ever write (a plain TCP socket on POSIX)."""
        return self._direct_fd() >= 0

    async def flush(self) -> None:
        """Write what :meth:`send_now` held (and anything owed)."""
        await self._flush()

    async def _flush(self) -> None:
        """Write, in order, whatever is owed, the data frames built by :meth:`send`, then
        whatever the protocol has queued since (pongs, a close).

        On a plain TCP socket, what the kernel takes at once is written straight to the
        descriptor, in one joined write, without trio's send path (a scheduler pass per
        write: most of an idle link's cost, a heartbeat ack each); only a rest the socket
        did not take waits for it through trio."""
        async with self._write_lock:
            writes = [*self._owed, *self._frames, *self._protocol.data_to_send()]
            self._frames.clear()
            self._owed.clear()
            self._owed_pong = -1
            try:
                fd = self._direct_fd()
                if fd >= 0 and writes and all(writes):
                    data = writes[0] if len(writes) == 1 else b"".join(writes)
                    try:
                        sent = os.write(fd, data)
                    except BlockingIOError:
                        sent = 0
                    if sent == len(data):
                        await trio.lowlevel.checkpoint()
                        return
                    writes = [data[sent:]]
                for data in writes:
                    if data:
                        await self._stream.send_all(data)
                    elif isinstance(self._stream, trio.abc.HalfCloseableStream):
                        await self._stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise LinkClosed(f"link closed while sending: {exc}") from None

    def _direct_fd(self) -> int:
        """The descriptor to write to directly, or -1 (TLS, another stream, not POSIX, or
        closed: a closed trio socket's ``fileno()`` is -1, so a reused number is never hit)."""
        stream = self._stream
        if _DIRECT_WRITES and type(stream) is trio.SocketStream:
            return stream.socket.fileno()
        return -1

    # -- receiving (the link's one reader) -------------------------------------------------

    async def receive(self) -> bytes | bytearray | memoryview:
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
        if data and self._fast:
            self._receive_fast(data)
            if self._fast:
                return
        elif data:
            protocol.receive_data(data)
        else:
            self._eof = True
            if self._fast:
                self._slow(b"")
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

    def _receive_fast(self, data: bytes | bytearray) -> None:
        """Cut whole single-frame binary messages out of ``data`` (after what is pending);
        at the first frame of another kind, hand the rest to the protocol (for good)."""
        source: bytes | bytearray
        if self._pending:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._need:
                return  # the frame is not whole yet: nothing copied
            source = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = self._need = 0
        else:
            source = data
        # Payloads of bytes are handed over as views; of a mutable buffer, copied.
        keep_views = type(source) is bytes
        masked = self._masked
        mask_bit = _MASK_BIT if masked else 0
        chunks = self._chunks
        end = len(source)
        pos = 0
        other = False  # a frame the protocol must parse
        with memoryview(source) as view:
            while end - pos >= 2:
                head2 = source[pos + 1]
                if source[pos] != _BINARY_HEAD or head2 & _MASK_BIT != mask_bit:
                    other = True
                    break
                length = head2 & 0x7F
                start = pos + 2
                if length == 126:
                    if end - start < 2:
                        break
                    (length,) = _U16.unpack_from(source, start)
                    start += 2
                elif length == 127:
                    if end - start < 8:
                        break
                    (length,) = _U64.unpack_from(source, start)
                    start += 8
                if length > MAX_WS_MESSAGE:
                    other = True  # the protocol refuses it (1009)
                    break
                if masked:
                    start += 4
                stop = start + length
                if stop > end:
                    self._need = stop - pos  # the rest of this frame is still coming
                    break
                if not length:
                    pass
                elif masked:
                    chunks.append(apply_mask(view[start:stop], source[start - 4 : start]))
                elif keep_views:
                    chunks.append(view[start:stop])
                else:
                    chunks.append(bytes(view[start:stop]))
                pos = stop
            if pos < end:
                rest = view[pos:] if keep_views else bytes(view[pos:])
                if other:
                    self._slow(bytes(rest))
                else:
                    self._pending.append(rest)  # one partial frame
                    self._pending_size = end - pos

    def feed(self, data: bytes) -> None:
        """Link bytes read with the handshake's head (parsed as if just read)."""
        protocol = self._protocol
        if self._fast:
            self._receive_fast(data)
            if self._fast:
                return
        else:
            protocol.receive_data(data)
        self.take(protocol.events_received())
        self._owe(protocol.data_to_send())
        if protocol.state is CLOSED or protocol.close_rcvd is not None:
            self._done.set()

    def _slow(self, rest: bytes) -> None:
        """Hand ``rest`` (what was read and not parsed here) to the protocol, which parses
        everything from now on."""
        self._fast = False
        pending = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = self._need = 0
        if pending or rest:
            self._protocol.receive_data(pending + rest)

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
        tail = b""  # the last bytes of the head so far (its end may straddle two reads)
        after = b""  # what came after the response head: link data, for the pipe
        while protocol.state is not OPEN:
            data = await stream.receive_some(RECEIVE_BUFFER)
            if data:
                end = (tail + data).find(_HEAD_END)
                if end >= 0:  # the protocol gets the head alone: its parser stops there
                    cut = end + len(_HEAD_END) - len(tail)
                    after = bytes(data[cut:])
                    data = data[:cut]
                tail = (tail + data)[-3:]
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            events = protocol.events_received()
            if protocol.handshake_exc is not None:
                raise LinkClosed(f"WebSocket handshake failed: {protocol.handshake_exc}")
            if protocol.state is OPEN:
                pipe.take(events)
                if after:
                    pipe.feed(after)
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
    end = head.find(_HEAD_END)
    after = b""
    if end >= 0:  # the protocol gets the head alone: its parser stops there
        after = bytes(head[end + len(_HEAD_END) :])
        head = head[: end + len(_HEAD_END)]
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
    pipe.take(events)
    if after:
        pipe.feed(after)  # frames that came with the request head
    return pipe
