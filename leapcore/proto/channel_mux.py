"""One end of a channel: RPCs, server streams, byte streams and rekey over one session.

Sans-IO, in the manner of h11/h2: the driver feeds frames in, gets events
out, and drains frames to send. Time is an argument (``now``), randomness and
ML-KEM encapsulation are injected; nothing here touches a socket or a clock::

    ep = ChannelEndpoint(session, role="initiator", mode=mode, now=t0,
                         worker_mlkem_public=bundle.mlkem)
    cid = ep.send_request("info", b"")
    link.send_all(ep.frames_to_send())
    for event in ep.receive_frame(frame, now):   # ResponseReceived(cid, ...) ...
        ...
    ep.poll(now)                                  # at ep.next_deadline(): rekey timers

Every frame is decrypted, in order, by the one
:class:`~leapcore.crypto.transport.TransportSession`; a frame dropped after decrypting
still used its nonce. A decrypt failure, a CLOSE frame from the peer, bad rekey
material or an expired key ends the channel (:class:`ChannelClosed`). Anything
else the peer gets wrong affects one correlation id only: the endpoint emits
:class:`ProtocolViolation`, tears down that stream if it is live (and tells
the peer with ERROR, CANCEL or BYTES_RESET) and carries on.

Streams follow the transition tables :data:`RPC_TRANSITIONS`,
:data:`SERVER_STREAM_TRANSITIONS` and :data:`BYTE_STREAM_TRANSITIONS`. Both
ends use the same tables and state names, so once nothing is in flight both
ends hold every live stream in the same state. Which side may send which
message is :data:`STREAM_EVENTS`; a message or action that is in neither
table is refused.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import Final

import attrs

from ..crypto.mode import EncryptionMode, parse_encryption_mode
from ..crypto.primitives import (
    MLKEM_PUBLIC_KEY_SIZE,
    Encapsulator,
    MLKEMPrivateKey,
    RandomSource,
    mlkem_encapsulate,
    system_random,
)
from ..crypto.rekey import PendingRekey, RekeyAcceptance, accept_rekey, start_rekey
from ..crypto.rekey_policy import (
    DEFAULT_TIMINGS,
    InitiatorRekeyPolicy,
    RekeyAction,
    RekeyState,
    RekeyTimings,
    ResponderRekeyPolicy,
)
from ..crypto.transport import TransportSession
from ..errors import (
    ChannelClosedError,
    ChannelProtocolError,
    ConfigError,
    DecryptError,
    FlowControlError,
    MessageTooLarge,
    NonceExhausted,
    OutboundQueueFull,
    RekeyError,
    ResourceExhausted,
    StreamUsageError,
    UnexpectedStreamMessage,
)
from .channel_codec import (
    MAX_BYTES_DATA,
    MAX_WINDOW,
    BytesAccept,
    BytesData,
    BytesEof,
    BytesOpen,
    BytesReset,
    Cancel,
    ErrorReply,
    Message,
    MessageKind,
    RekeyAck,
    RekeyReject,
    RekeyRequest,
    Request,
    Response,
    StreamEnd,
    StreamItem,
    StreamRequest,
    WindowUpdate,
    check_window,
    decode_chunks,
    encode,
    kind_of,
)
from .chunking import (
    DEFAULT_MAX_INCOMPLETE,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_CHUNK,
    ChannelFrame,
    FrameFlag,
    Reassembled,
    Reassembler,
    validate_max_message_size,
)

__all__ = [
    "BYTE_STREAM_TRANSITIONS",
    "CLOSE_CORRELATION_ID",
    "CONTROL_RESERVE",
    "DEFAULT_MAX_STREAMS",
    "DEFAULT_WINDOW",
    "PING_METHOD",
    "RECENT_STREAMS",
    "RPC_TRANSITIONS",
    "SERVER_STREAM_TRANSITIONS",
    "STREAM_EVENTS",
    "TERMINAL_STATES",
    "ByteStreamAccepted",
    "ByteStreamEOF",
    "ByteStreamRequested",
    "ByteStreamReset",
    "BytesReceived",
    "Cancelled",
    "ChannelClosed",
    "ChannelEndpoint",
    "ErrorReceived",
    "Event",
    "ProtocolViolation",
    "RekeyCompleted",
    "RequestReceived",
    "ResponseReceived",
    "Role",
    "Side",
    "StreamEnded",
    "StreamEvent",
    "StreamItemReceived",
    "StreamKind",
    "StreamRequested",
    "StreamState",
    "WindowInfo",
    "WindowOpened",
]

#: The method the endpoint answers itself with an empty RESPONSE.
PING_METHOD: Final = "ping"
#: Default receive window of a byte stream (bytes the peer may send unasked).
DEFAULT_WINDOW: Final = 256 * 1024
#: Default cap on concurrently open streams the *peer* opened.
DEFAULT_MAX_STREAMS: Final = 1024
#: Plaintext bytes of frames the endpoint queues on its own (ping answers, window updates,
#: error replies, rekey messages) that may wait in the outbound queue; past it the channel
#: closes, because frames_to_send is not being drained.
CONTROL_RESERVE: Final = 256 * 1024
#: How many ended streams are remembered to tell late messages from violations.
RECENT_STREAMS: Final = 256
#: The correlation id carried by CLOSE frames (receivers ignore it).
CLOSE_CORRELATION_ID: Final = 1
_MAX_CID: Final = 2**64 - 1


# ---------------------------------------------------------------------------
# Roles, stream kinds, states and the transition tables


class Role(enum.Enum):
    """Which end of the channel: the client (initiator) or the worker (responder)."""

    INITIATOR = "initiator"
    RESPONDER = "responder"


class Side(enum.Enum):
    """Which end of one stream: the one that opened it, or the one that answers."""

    OPENER = "opener"
    ACCEPTOR = "acceptor"

    @property
    def other(self) -> Side:
        return Side.ACCEPTOR if self is Side.OPENER else Side.OPENER


class StreamKind(enum.Enum):
    RPC = "rpc"
    SERVER_STREAM = "server-stream"
    BYTE_STREAM = "byte-stream"


class StreamState(enum.Enum):
    IDLE = "idle"
    OPEN = "open"
    OPENING = "opening"  # byte stream: opened, not yet accepted
    OPENER_EOF = "opener-eof"  # byte stream: the opener half-closed
    ACCEPTOR_EOF = "acceptor-eof"  # byte stream: the acceptor half-closed
    ANSWERED = "answered"
    ENDED = "ended"
    FAILED = "failed"  # an ERROR answered the request or ended the server stream
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # an ERROR refused the byte stream
    CLOSED = "closed"  # byte stream: both halves closed
    RESET = "reset"


class StreamEvent(enum.Enum):
    """A message on a stream, named after the message (and, where both may send it, the
    side that sends it)."""

    REQUEST = "request"
    STREAM_REQUEST = "stream-request"
    BYTES_OPEN = "bytes-open"
    RESPONSE = "response"
    ITEM = "item"
    END = "end"
    ERROR = "error"
    CANCEL = "cancel"
    ACCEPT = "accept"
    OPENER_DATA = "opener-data"
    ACCEPTOR_DATA = "acceptor-data"
    OPENER_WINDOW = "opener-window"
    ACCEPTOR_WINDOW = "acceptor-window"
    OPENER_EOF = "opener-eof"
    ACCEPTOR_EOF = "acceptor-eof"
    RESET = "reset"


_S = StreamState
_E = StreamEvent

#: RPC: REQUEST, then exactly one RESPONSE or ERROR, unless the opener CANCELs first.
RPC_TRANSITIONS: Final[dict[tuple[StreamState, StreamEvent], StreamState]] = {
    (_S.IDLE, _E.REQUEST): _S.OPEN,
    (_S.OPEN, _E.RESPONSE): _S.ANSWERED,
    (_S.OPEN, _E.ERROR): _S.FAILED,
    (_S.OPEN, _E.CANCEL): _S.CANCELLED,
}

#: Server stream: STREAM_REQUEST, any number of STREAM_ITEMs, then STREAM_END or ERROR,
#: unless the opener CANCELs first.
SERVER_STREAM_TRANSITIONS: Final[dict[tuple[StreamState, StreamEvent], StreamState]] = {
    (_S.IDLE, _E.STREAM_REQUEST): _S.OPEN,
    (_S.OPEN, _E.ITEM): _S.OPEN,
    (_S.OPEN, _E.END): _S.ENDED,
    (_S.OPEN, _E.ERROR): _S.FAILED,
    (_S.OPEN, _E.CANCEL): _S.CANCELLED,
}

#: Byte stream: BYTES_OPEN, then BYTES_ACCEPT (or an ERROR refusal); data both ways under
#: flow control; each side half-closes with BYTES_EOF; either side may BYTES_RESET.
BYTE_STREAM_TRANSITIONS: Final[dict[tuple[StreamState, StreamEvent], StreamState]] = {
    (_S.IDLE, _E.BYTES_OPEN): _S.OPENING,
    (_S.OPENING, _E.ACCEPT): _S.OPEN,
    (_S.OPENING, _E.ERROR): _S.REJECTED,
    (_S.OPENING, _E.RESET): _S.RESET,
    (_S.OPEN, _E.OPENER_DATA): _S.OPEN,
    (_S.OPEN, _E.ACCEPTOR_DATA): _S.OPEN,
    (_S.OPEN, _E.OPENER_WINDOW): _S.OPEN,
    (_S.OPEN, _E.ACCEPTOR_WINDOW): _S.OPEN,
    (_S.OPEN, _E.OPENER_EOF): _S.OPENER_EOF,
    (_S.OPEN, _E.ACCEPTOR_EOF): _S.ACCEPTOR_EOF,
    (_S.OPEN, _E.RESET): _S.RESET,
    (_S.OPENER_EOF, _E.ACCEPTOR_DATA): _S.OPENER_EOF,
    (_S.OPENER_EOF, _E.OPENER_WINDOW): _S.OPENER_EOF,
    (_S.OPENER_EOF, _E.ACCEPTOR_WINDOW): _S.OPENER_EOF,
    (_S.OPENER_EOF, _E.ACCEPTOR_EOF): _S.CLOSED,
    (_S.OPENER_EOF, _E.RESET): _S.RESET,
    (_S.ACCEPTOR_EOF, _E.OPENER_DATA): _S.ACCEPTOR_EOF,
    (_S.ACCEPTOR_EOF, _E.OPENER_WINDOW): _S.ACCEPTOR_EOF,
    (_S.ACCEPTOR_EOF, _E.ACCEPTOR_WINDOW): _S.ACCEPTOR_EOF,
    (_S.ACCEPTOR_EOF, _E.OPENER_EOF): _S.CLOSED,
    (_S.ACCEPTOR_EOF, _E.RESET): _S.RESET,
}

_TABLES: Final[dict[StreamKind, dict[tuple[StreamState, StreamEvent], StreamState]]] = {
    StreamKind.RPC: RPC_TRANSITIONS,
    StreamKind.SERVER_STREAM: SERVER_STREAM_TRANSITIONS,
    StreamKind.BYTE_STREAM: BYTE_STREAM_TRANSITIONS,
}

TERMINAL_STATES: Final = frozenset(
    {_S.ANSWERED, _S.ENDED, _S.FAILED, _S.CANCELLED, _S.REJECTED, _S.CLOSED, _S.RESET}
)

_K = MessageKind
_O, _A = Side.OPENER, Side.ACCEPTOR
_RPC, _SS, _BS = StreamKind.RPC, StreamKind.SERVER_STREAM, StreamKind.BYTE_STREAM

#: (stream kind, message kind, sending side) -> stream event. A combination that is not
#: here (a RESPONSE from the opener, a STREAM_ITEM on an RPC...) is a violation.
STREAM_EVENTS: Final[dict[tuple[StreamKind, MessageKind, Side], StreamEvent]] = {
    (_RPC, _K.REQUEST, _O): _E.REQUEST,
    (_RPC, _K.RESPONSE, _A): _E.RESPONSE,
    (_RPC, _K.ERROR, _A): _E.ERROR,
    (_RPC, _K.CANCEL, _O): _E.CANCEL,
    (_SS, _K.STREAM_REQUEST, _O): _E.STREAM_REQUEST,
    (_SS, _K.STREAM_ITEM, _A): _E.ITEM,
    (_SS, _K.STREAM_END, _A): _E.END,
    (_SS, _K.ERROR, _A): _E.ERROR,
    (_SS, _K.CANCEL, _O): _E.CANCEL,
    (_BS, _K.BYTES_OPEN, _O): _E.BYTES_OPEN,
    (_BS, _K.BYTES_ACCEPT, _A): _E.ACCEPT,
    (_BS, _K.ERROR, _A): _E.ERROR,
    (_BS, _K.BYTES_DATA, _O): _E.OPENER_DATA,
    (_BS, _K.BYTES_DATA, _A): _E.ACCEPTOR_DATA,
    (_BS, _K.WINDOW_UPDATE, _O): _E.OPENER_WINDOW,
    (_BS, _K.WINDOW_UPDATE, _A): _E.ACCEPTOR_WINDOW,
    (_BS, _K.BYTES_EOF, _O): _E.OPENER_EOF,
    (_BS, _K.BYTES_EOF, _A): _E.ACCEPTOR_EOF,
    (_BS, _K.BYTES_RESET, _O): _E.RESET,
    (_BS, _K.BYTES_RESET, _A): _E.RESET,
}

_OPENING: Final = {_K.REQUEST: _RPC, _K.STREAM_REQUEST: _SS, _K.BYTES_OPEN: _BS}
_REKEY_KINDS: Final = frozenset({_K.REKEY_REQUEST, _K.REKEY_ACK, _K.REKEY_REJECT})


def _sent_by(kind: StreamKind, side: Side) -> frozenset[StreamEvent]:
    return frozenset(ev for (k, _m, s), ev in STREAM_EVENTS.items() if k is kind and s is side)


def _late_events(
    kind: StreamKind, before: StreamState, event: StreamEvent, peer: Side, by_peer: bool
) -> frozenset[StreamEvent]:
    """The peer's messages that may legitimately still arrive after a stream ended.

    When this end sent the last message, the peer had not seen it yet: anything the peer
    could send from the state before, and from the states its own messages lead to. When
    the peer sent it, the peer sends nothing more -- except after its own half-close,
    when it may not yet have seen ours: then window updates and a reset.
    """
    table = _TABLES[kind]
    peer_events = _sent_by(kind, peer)
    if by_peer:
        if event in (_E.OPENER_EOF, _E.ACCEPTOR_EOF):
            return peer_events & {_E.OPENER_WINDOW, _E.ACCEPTOR_WINDOW, _E.RESET}
        return frozenset()
    found: set[StreamEvent] = set()
    seen, todo = {before}, [before]
    while todo:
        state = todo.pop()
        for (st, ev), nxt in table.items():
            if st is state and ev in peer_events:
                found.add(ev)
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    return frozenset(found)


# ---------------------------------------------------------------------------
# Events


@attrs.frozen
class RequestReceived:
    """The peer calls ``method``; answer with ``send_response`` or ``send_error``."""

    correlation_id: int
    method: str
    payload: bytes


@attrs.frozen
class ResponseReceived:
    correlation_id: int
    payload: bytes


@attrs.frozen
class ErrorReceived:
    """The peer answered a request, a server stream or a byte-stream open with an error."""

    correlation_id: int
    code: str
    message: str


@attrs.frozen
class StreamRequested:
    """The peer opened a server stream: send items, then ``end_stream`` or ``send_error``."""

    correlation_id: int
    method: str
    payload: bytes


@attrs.frozen
class StreamItemReceived:
    correlation_id: int
    payload: bytes


@attrs.frozen
class StreamEnded:
    correlation_id: int


@attrs.frozen
class Cancelled:
    """The peer cancelled its request or server stream; do not answer it."""

    correlation_id: int


@attrs.frozen
class ByteStreamRequested:
    """The peer opens a byte stream: ``accept_byte_stream`` or ``send_error``."""

    correlation_id: int
    method: str
    payload: bytes


@attrs.frozen
class ByteStreamAccepted:
    correlation_id: int


@attrs.frozen
class BytesReceived:
    """Byte-stream data; call ``consume(cid, n)`` as the application uses it up."""

    correlation_id: int
    data: bytes


@attrs.frozen
class WindowOpened:
    """The peer's window grew: ``send_bytes`` can send more."""

    correlation_id: int


@attrs.frozen
class ByteStreamEOF:
    """The peer sends no more data on this byte stream."""

    correlation_id: int


@attrs.frozen
class ByteStreamReset:
    correlation_id: int
    code: str
    message: str


@attrs.frozen
class RekeyCompleted:
    """Both directions now use new keys."""


@attrs.frozen
class ProtocolViolation:
    """The peer broke the protocol on one correlation id (or a limit was hit). The message
    was dropped; if the id was a live stream, this end tore it down and told the peer."""

    correlation_id: int
    code: str
    message: str


@attrs.frozen
class ChannelClosed:
    """The channel is over. ``code`` is ``closed_by_peer``, ``decrypt_failed``,
    ``rekey_failed``, ``rekey_expired``, ``nonce_exhausted`` or ``outbound_overflow``."""

    code: str
    reason: str


Event = (
    RequestReceived
    | ResponseReceived
    | ErrorReceived
    | StreamRequested
    | StreamItemReceived
    | StreamEnded
    | Cancelled
    | ByteStreamRequested
    | ByteStreamAccepted
    | BytesReceived
    | WindowOpened
    | ByteStreamEOF
    | ByteStreamReset
    | RekeyCompleted
    | ProtocolViolation
    | ChannelClosed
)


@attrs.frozen
class WindowInfo:
    """Flow-control counters of one byte stream, as this end sees them."""

    send_credit: int  # bytes this end may still send
    receive_window: int  # the window this end granted
    receive_credit: int  # bytes the peer may still send
    unconsumed: int  # received, not yet consumed by the application
    pending_update: int  # consumed, not yet granted back with WINDOW_UPDATE


# ---------------------------------------------------------------------------
# Internals


@attrs.define
class _Stream:
    cid: int
    kind: StreamKind
    side: Side
    state: StreamState
    send_credit: int = 0
    receive_window: int = 0
    receive_credit: int = 0
    unconsumed: int = 0
    pending_update: int = 0


@attrs.define
class _Ended:
    kind: StreamKind
    side: Side
    state: StreamState
    late: frozenset[StreamEvent]


@attrs.define
class _Out:
    cid: int
    data: bytes
    auto: bool
    after: Callable[[], None] | None = None
    offset: int = 0


def _role(value: Role | str) -> Role:
    if isinstance(value, Role):
        return value
    try:
        return Role(value)
    except ValueError:
        raise ConfigError(f"role must be 'initiator' or 'responder', got {value!r}") from None


def _clip(text: str, limit: int = 4096) -> str:
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


class ChannelEndpoint:
    """One end of one channel (see the module docstring).

    ``worker_mlkem_public`` (initiator) and ``mlkem_private`` (responder: the 64-byte seed
    or the key object) are the rekey material; both are needed in post-quantum mode only.
    Bounds: reassembly (``max_message_size``, ``max_incomplete``, and
    ``max_reassembly_bytes`` for all incomplete messages together, default
    ``max_message_size``; :attr:`reassembly_budget` changes it), streams the peer may
    have open at once (``max_streams``), bytes of application messages waiting to be sent
    (``max_outbound_bytes``, default twice ``max_message_size``) and of frames the
    endpoint queues itself (:data:`CONTROL_RESERVE`).
    """

    def __init__(
        self,
        session: TransportSession,
        *,
        role: Role | str,
        mode: EncryptionMode | str,
        now: float,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_incomplete: int = DEFAULT_MAX_INCOMPLETE,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_outbound_bytes: int | None = None,
        max_reassembly_bytes: int | None = None,
        worker_mlkem_public: bytes | None = None,
        mlkem_private: bytes | MLKEMPrivateKey | None = None,
        rekey_timings: RekeyTimings = DEFAULT_TIMINGS,
        random: RandomSource = system_random,
        encapsulate: Encapsulator = mlkem_encapsulate,
    ) -> None:
        self.session = session
        self.role = _role(role)
        self.mode = parse_encryption_mode(mode)
        self.max_message_size = validate_max_message_size(max_message_size)
        if type(max_streams) is not int or max_streams < 1:
            raise ConfigError(f"max_streams must be a positive integer, got {max_streams!r}")
        self.max_streams = max_streams
        if max_outbound_bytes is None:
            max_outbound_bytes = 2 * self.max_message_size
        if type(max_outbound_bytes) is not int or max_outbound_bytes < self.max_message_size:
            raise ConfigError("max_outbound_bytes must be an integer >= max_message_size")
        self.max_outbound_bytes = max_outbound_bytes
        pq = mode is EncryptionMode.POST_QUANTUM
        if (
            self.role is Role.INITIATOR
            and pq
            and not (
                isinstance(worker_mlkem_public, bytes)
                and len(worker_mlkem_public) == MLKEM_PUBLIC_KEY_SIZE
            )
        ):
            raise ConfigError(
                "a post-quantum initiator needs the worker's 1568-byte ML-KEM public key"
            )
        if self.role is Role.RESPONDER and pq and mlkem_private is None:
            raise ConfigError("a post-quantum responder needs its ML-KEM private key")
        self._worker_mlkem_public = worker_mlkem_public or b""
        self._mlkem_private = mlkem_private
        self._random = random
        self._encapsulate = encapsulate
        self._now = now

        self._reassembler = Reassembler(
            self.max_message_size, max_incomplete, max_buffered=max_reassembly_bytes
        )
        self._streams: dict[int, _Stream] = {}
        self._ended: collections.OrderedDict[int, _Ended] = collections.OrderedDict()
        self._peer_streams = 0
        own_first = 1 if self.role is Role.INITIATOR else 2
        self._own_parity = own_first
        self._next_cid = own_first
        self._wrapped = False
        self._max_peer_cid = 0

        self._priority: collections.deque[_Out] = collections.deque()
        self._bulk: collections.deque[_Out] = collections.deque()
        self._bulk_cids: collections.Counter[int] = collections.Counter()
        self._app_bytes = 0
        self._auto_bytes = 0
        self._close_pending = False
        self._closed = False
        self._events: list[Event] = []
        self._dead = False  # fatally closed, or closed by the peer

        self._initiator_policy: InitiatorRekeyPolicy | None = None
        self._responder_policy: ResponderRekeyPolicy | None = None
        if self.role is Role.INITIATOR:
            self._initiator_policy = InitiatorRekeyPolicy(now, rekey_timings)
        else:
            self._responder_policy = ResponderRekeyPolicy(now, rekey_timings)
        self._rekey: tuple[int, PendingRekey] | None = None

    # -- inspection -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def streams(self) -> dict[int, StreamState]:
        """Live streams (correlation id -> state)."""
        return {cid: s.state for cid, s in self._streams.items()}

    def stream_kind(self, correlation_id: int) -> StreamKind | None:
        stream = self._streams.get(correlation_id)
        return stream.kind if stream else None

    def window(self, correlation_id: int) -> WindowInfo:
        """Flow-control counters of a live byte stream."""
        stream = self._byte_stream(correlation_id)
        return WindowInfo(
            stream.send_credit,
            stream.receive_window,
            stream.receive_credit,
            stream.unconsumed,
            stream.pending_update,
        )

    @property
    def outbound_bytes(self) -> int:
        """Plaintext bytes waiting in the outbound queue."""
        return self._app_bytes + self._auto_bytes

    @property
    def reassembly_buffered(self) -> int:
        """Plaintext bytes held for the peer's incomplete chunked messages."""
        return self._reassembler.buffered

    @property
    def reassembly_budget(self) -> int:
        """Bytes the peer's incomplete chunked messages may hold together (settable: a
        chunk that would pass it fails its correlation id with ``resource_exhausted``)."""
        return self._reassembler.budget

    @reassembly_budget.setter
    def reassembly_budget(self, value: int) -> None:
        self._reassembler.budget = max(0, value)

    @property
    def has_outbound(self) -> bool:
        return bool(self._priority or self._bulk or self._close_pending)

    @property
    def rekey_in_flight(self) -> bool:
        return self._rekey is not None

    # -- frames in ------------------------------------------------------------

    def receive_frame(self, frame: ChannelFrame, now: float) -> list[Event]:
        """Decrypt and process one frame from the peer; return what happened."""
        if not self._closed:
            self._now = max(self._now, now)
            self._receive(frame, now)
        return self._take_events()

    def _receive(self, frame: ChannelFrame, now: float) -> None:
        cid, flags = frame.correlation_id, frame.flags
        if flags == FrameFlag.CLOSE:
            self._shutdown(send_close=False)
            self._events.append(ChannelClosed("closed_by_peer", "the peer closed the channel"))
            return
        try:
            plaintext = self.session.decrypt(frame.ciphertext, now)
        except (DecryptError, NonceExhausted) as exc:
            self._fatal(exc.code, str(exc))
            return
        if flags not in (FrameFlag.FINAL, FrameFlag.MORE):
            error = ChannelProtocolError(f"unknown frame flags {flags!r}; frame dropped")
            self._events.append(ProtocolViolation(cid, error.code, str(error)))
            return
        result = self._reassembler.feed(cid, flags, plaintext)
        if isinstance(result, Reassembled):
            self._dispatch(cid, result.chunks)
        elif result is not None:
            self._violation(cid, result.error, reply=cid != 0)

    def _dispatch(self, cid: int, chunks: tuple[bytes, ...]) -> None:
        try:
            message = decode_chunks(chunks)
        except ChannelProtocolError as exc:
            first = next((chunk[0] for chunk in chunks if chunk), None)
            if first in _REKEY_KINDS:
                self._fatal(RekeyError.code, f"malformed rekey message: {exc}")
            else:
                self._violation(cid, exc, reply=True)
            return
        kind = kind_of(message)
        if kind in _REKEY_KINDS:
            self._on_rekey(cid, message)
        elif kind in _OPENING:
            self._on_open(cid, message)
        elif cid in self._streams:
            self._on_stream_message(self._streams[cid], message)
        else:
            self._on_unknown(cid, kind)

    def _on_open(self, cid: int, message: Message) -> None:
        kind = kind_of(message)
        if cid % 2 == self._own_parity % 2:
            parity = "odd" if self._own_parity == 2 else "even"
            error = UnexpectedStreamMessage(
                f"{kind.name} with correlation id {cid}: the {self._peer_role} opens "
                f"streams with {parity} ids"
            )
            self._violation(cid, error, reply=False, abort=False)
            return
        if cid in self._streams:
            error = UnexpectedStreamMessage(
                f"{kind.name} reuses correlation id {cid}, which is still open"
            )
            self._violation(cid, error, reply=False)
            return
        self._ended.pop(cid, None)
        self._max_peer_cid = max(self._max_peer_cid, cid)
        if isinstance(message, Request) and message.method == PING_METHOD:
            if message.payload:
                reply: Message = ErrorReply("invalid_argument", "ping takes an empty payload")
            else:
                reply = Response(b"")
            self._enqueue(cid, encode(reply), auto=True)
            return
        if self._peer_streams >= self.max_streams:
            refused = ResourceExhausted(
                f"{kind.name} {cid} refused: the peer already has {self.max_streams} open streams"
            )
            self._violation(cid, refused, reply=True)
            return
        stream_kind = _OPENING[kind]
        event = STREAM_EVENTS[(stream_kind, kind, Side.OPENER)]
        stream = _Stream(cid, stream_kind, Side.ACCEPTOR, _TABLES[stream_kind][(_S.IDLE, event)])
        self._streams[cid] = stream
        self._peer_streams += 1
        match message:
            case Request(method, payload):
                self._events.append(RequestReceived(cid, method, payload))
            case StreamRequest(method, payload):
                self._events.append(StreamRequested(cid, method, payload))
            case BytesOpen(window, method, payload):
                stream.send_credit = window
                self._events.append(ByteStreamRequested(cid, method, payload))

    def _on_stream_message(self, stream: _Stream, message: Message) -> None:
        cid, kind = stream.cid, kind_of(message)
        peer = stream.side.other
        event = STREAM_EVENTS.get((stream.kind, kind, peer))
        if event is None:
            error = UnexpectedStreamMessage(
                f"{kind.name} is not valid from the {peer.value} of {stream.kind.value} {cid}"
            )
            self._violation(cid, error, reply=True)
            return
        target = _TABLES[stream.kind].get((stream.state, event))
        if target is None:
            error = UnexpectedStreamMessage(
                f"{kind.name} is not allowed on {stream.kind.value} {cid} "
                f"in state {stream.state.value!r}"
            )
            self._violation(cid, error, reply=True)
            return
        out: Event | None = None
        match message:
            case Response(payload):
                out = ResponseReceived(cid, payload)
            case ErrorReply(code, text):
                out = ErrorReceived(cid, code, text)
            case Cancel():
                out = Cancelled(cid)
            case StreamItem(payload):
                out = StreamItemReceived(cid, payload)
            case StreamEnd():
                out = StreamEnded(cid)
            case BytesAccept(window):
                stream.send_credit = window
                out = ByteStreamAccepted(cid)
            case BytesData(data):
                if len(data) > stream.receive_credit:
                    overrun = FlowControlError(
                        f"byte stream {cid}: {len(data)} bytes of data with only "
                        f"{stream.receive_credit} bytes of window left"
                    )
                    self._violation(cid, overrun, reply=True)
                    return
                stream.receive_credit -= len(data)
                stream.unconsumed += len(data)
                out = BytesReceived(cid, data)
            case WindowUpdate(increment):
                if stream.send_credit + increment > MAX_WINDOW:
                    overflow = FlowControlError(
                        f"byte stream {cid}: window update of {increment} overflows the "
                        f"window ({stream.send_credit} + {increment} > {MAX_WINDOW})"
                    )
                    self._violation(cid, overflow, reply=True)
                    return
                stream.send_credit += increment
                out = WindowOpened(cid)
            case BytesEof():
                out = ByteStreamEOF(cid)
            case BytesReset(code, text):
                out = ByteStreamReset(cid, code, text)
        before = stream.state
        stream.state = target
        if out is not None:
            self._events.append(out)
        if target in TERMINAL_STATES:
            self._finish(stream, before, event, by_peer=True)

    def _on_unknown(self, cid: int, kind: MessageKind) -> None:
        ended = self._ended.get(cid)
        if ended is not None:
            event = STREAM_EVENTS.get((ended.kind, kind, ended.side.other))
            if event in ended.late:
                return  # crossed this end's last message: expected, dropped
            error = UnexpectedStreamMessage(
                f"{kind.name} for {ended.kind.value} {cid}, which already ended "
                f"({ended.state.value})"
            )
        elif self._may_have_existed(cid):
            return  # ended too long ago to tell: dropped
        else:
            error = UnexpectedStreamMessage(f"{kind.name} for unknown correlation id {cid}")
        self._violation(cid, error, reply=False)

    def _may_have_existed(self, cid: int) -> bool:
        if cid % 2 == self._own_parity % 2:
            return self._wrapped or cid < self._next_cid
        return cid <= self._max_peer_cid

    def _violation(
        self,
        cid: int,
        error: ChannelProtocolError,
        *,
        reply: bool,
        abort: bool = True,
    ) -> None:
        """Report ``error`` for ``cid``; tear down its stream if live; tell the peer."""
        message = _clip(str(error))
        self._events.append(ProtocolViolation(cid, error.code, message))
        stream = self._streams.get(cid) if abort else None
        if stream is not None:
            answer: Message
            if stream.kind is StreamKind.BYTE_STREAM:
                answer = BytesReset(error.code, message)
            elif stream.side is Side.ACCEPTOR:
                answer = ErrorReply(error.code, message)
            else:
                answer = Cancel()
            self._transition_local(stream, answer, auto=True)
        elif reply and cid % 2 != self._own_parity % 2 and cid not in self._ended:
            # A new message from the peer that could not be read: it may await an answer.
            self._enqueue(cid, encode(ErrorReply(error.code, message)), auto=True)

    def _finish(
        self, stream: _Stream, before: StreamState, event: StreamEvent, *, by_peer: bool
    ) -> None:
        del self._streams[stream.cid]
        if stream.side is Side.ACCEPTOR:
            self._peer_streams -= 1
        late = _late_events(stream.kind, before, event, stream.side.other, by_peer)
        self._ended[stream.cid] = _Ended(stream.kind, stream.side, stream.state, late)
        while len(self._ended) > RECENT_STREAMS:
            self._ended.popitem(last=False)

    # -- rekey ----------------------------------------------------------------

    def _on_rekey(self, cid: int, message: Message) -> None:
        now = self._now
        if isinstance(message, RekeyRequest):
            policy = self._responder_policy
            if policy is None:
                self._fatal(RekeyError.code, "REKEY_REQUEST sent to the initiator")
                return
            if cid % 2 != 1:
                self._fatal(RekeyError.code, f"REKEY_REQUEST with even id {cid}")
                return
            decision = policy.on_request(now, soft=self.session.rekey_wanted)
            if not decision.accept:
                self._enqueue(cid, encode(RekeyReject(decision.retry_after_ms)), auto=True)
                return
            try:
                acceptance = accept_rekey(
                    self.session,
                    message,
                    self.mode,
                    self._mlkem_private or b"",
                    now=now,
                    random=self._random,
                )
            except RekeyError as exc:
                self._fatal(exc.code, str(exc))
                return
            self._enqueue(
                cid,
                encode(RekeyAck(acceptance.dh_pub)),
                auto=True,
                after=self._rotate_after_ack(acceptance),
            )
            self._events.append(RekeyCompleted())
            return
        policy_i = self._initiator_policy
        name = kind_of(message).name
        if policy_i is None:
            self._fatal(RekeyError.code, f"{name} sent to the responder")
            return
        if self._rekey is None or self._rekey[0] != cid:
            self._fatal(RekeyError.code, f"{name} {cid} does not answer a rekey request")
            return
        pending = self._rekey[1]
        self._rekey = None
        if isinstance(message, RekeyAck):
            try:
                pending.finish(self.session, message.dh_pub, now=now)
            except RekeyError as exc:
                self._fatal(exc.code, str(exc))
                return
            policy_i.on_ack(now)
            self._events.append(RekeyCompleted())
        elif isinstance(message, RekeyReject):
            policy_i.on_reject(now, message.retry_after_ms)

    def _rotate_after_ack(self, acceptance: RekeyAcceptance) -> Callable[[], None]:
        def rotate() -> None:
            acceptance.rotate_send(self.session)

        return rotate

    def poll(self, now: float) -> list[Event]:
        """Run the timers due at ``now`` (the initiator's rekey policy)."""
        policy = self._initiator_policy
        if self._closed or policy is None:
            return self._take_events()
        self._now = max(self._now, now)
        awaiting = self._rekey is not None
        action = policy.poll(now, soft=self.session.rekey_wanted)
        if action is RekeyAction.START:
            pending, request = start_rekey(
                self.mode,
                self._worker_mlkem_public,
                random=self._random,
                encapsulate=self._encapsulate,
            )
            cid = self._allocate()
            self._rekey = (cid, pending)
            self._enqueue(cid, encode(request), auto=True)
        elif action is RekeyAction.CLOSE:
            if awaiting:
                why = f"no answer to the rekey request within {policy.timings.timeout:g} s"
            else:
                why = f"session keys reached the {policy.timings.hard_ceiling:g} s hard ceiling"
            self._fatal("rekey_expired", why + "; re-handshake")
        return self._take_events()

    def next_deadline(self) -> float | None:
        """When to call :meth:`poll` next (``None``: no timers, as on the responder)."""
        policy = self._initiator_policy
        if self._closed or policy is None:
            return None
        if policy.state is RekeyState.IDLE and self.session.rekey_wanted:
            return self._now
        return policy.next_deadline(self._now)

    # -- local actions: RPC and server streams -------------------------------

    def send_request(self, method: str, payload: bytes = b"") -> int:
        """Call ``method``; returns the correlation id its answer will carry."""
        return self._open(StreamKind.RPC, Request(method, payload))

    def ping(self) -> int:
        """Send a ping (an RPC the peer's endpoint answers with an empty RESPONSE)."""
        return self.send_request(PING_METHOD)

    def send_response(self, correlation_id: int, payload: bytes = b"") -> None:
        self._act(correlation_id, Response(payload))

    def send_error(self, correlation_id: int, code: str, message: str = "") -> None:
        """Answer a request, end a server stream, or refuse a byte stream, with an error."""
        self._act(correlation_id, ErrorReply(code, message))

    def start_stream(self, method: str, payload: bytes = b"") -> int:
        """Open a server stream; returns its correlation id."""
        return self._open(StreamKind.SERVER_STREAM, StreamRequest(method, payload))

    def send_stream_item(self, correlation_id: int, payload: bytes) -> None:
        self._act(correlation_id, StreamItem(payload))

    def end_stream(self, correlation_id: int) -> None:
        self._act(correlation_id, StreamEnd())

    def cancel(self, correlation_id: int) -> None:
        """Give up on a request or server stream this end opened; late answers are dropped."""
        self._act(correlation_id, Cancel())

    # -- local actions: byte streams -----------------------------------------

    def open_byte_stream(
        self, method: str, payload: bytes = b"", *, window: int = DEFAULT_WINDOW
    ) -> int:
        """Open a byte stream granting the peer ``window`` bytes; returns its id."""
        check_window(window, "window")
        cid = self._open(StreamKind.BYTE_STREAM, BytesOpen(window, method, payload))
        stream = self._streams[cid]
        stream.receive_window = stream.receive_credit = window
        return cid

    def accept_byte_stream(self, correlation_id: int, *, window: int = DEFAULT_WINDOW) -> None:
        check_window(window, "window")
        stream = self._act(correlation_id, BytesAccept(window))
        stream.receive_window = stream.receive_credit = window

    def send_bytes(self, correlation_id: int, data: bytes) -> int:
        """Send as much of ``data`` as the peer's window (and the outbound budget) allows;
        returns how many bytes were taken -- 0 when the window is closed."""
        self._check_open()
        stream = self._byte_stream(correlation_id)
        event = _E.OPENER_DATA if stream.side is Side.OPENER else _E.ACCEPTOR_DATA
        self._check_transition(stream, event, "send data")
        if not isinstance(data, bytes):
            raise StreamUsageError(f"data must be bytes, got {type(data).__name__}")
        limit = min(len(data), stream.send_credit)
        view = memoryview(data)
        sent = 0
        while sent < limit:
            # each BYTES_DATA message costs its data plus the kind byte
            size = min(limit - sent, MAX_BYTES_DATA, self.max_outbound_bytes - self._app_bytes - 1)
            if size <= 0:
                break
            piece = bytes(view[sent : sent + size])
            self._enqueue(correlation_id, encode(BytesData(piece)), auto=False)
            sent += size
        stream.send_credit -= sent
        return sent

    def consume(self, correlation_id: int, n: int) -> None:
        """The application used up ``n`` received bytes: this reopens the peer's window
        (a WINDOW_UPDATE once at least half the window is waiting to be granted back).
        Ignored for a stream that is no longer live."""
        if type(n) is not int or n < 0:
            raise StreamUsageError(f"consume needs a non-negative integer, got {n!r}")
        stream = self._streams.get(correlation_id)
        if self._closed or stream is None:
            return
        if stream.kind is not StreamKind.BYTE_STREAM:
            raise StreamUsageError(f"{correlation_id} is a {stream.kind.value}, not a byte stream")
        if n > stream.unconsumed:
            raise StreamUsageError(
                f"byte stream {correlation_id}: consume({n}) but only {stream.unconsumed} "
                "bytes were received and not yet consumed"
            )
        stream.unconsumed -= n
        stream.pending_update += n
        event = _E.OPENER_WINDOW if stream.side is Side.OPENER else _E.ACCEPTOR_WINDOW
        peer_eof = _S.ACCEPTOR_EOF if stream.side is Side.OPENER else _S.OPENER_EOF
        if (
            stream.pending_update >= max(1, stream.receive_window // 2)
            and stream.state is not peer_eof
            and (stream.state, event) in BYTE_STREAM_TRANSITIONS
        ):
            increment = stream.pending_update
            stream.pending_update = 0
            stream.receive_credit += increment
            self._transition_local(stream, WindowUpdate(increment), auto=True)

    def send_eof(self, correlation_id: int) -> None:
        """Half-close: this end sends no more data on the byte stream."""
        self._act(correlation_id, BytesEof())

    def reset(self, correlation_id: int, code: str, message: str = "") -> None:
        """Abort a byte stream in both directions; late data from the peer is dropped."""
        self._act(correlation_id, BytesReset(code, message))

    def close(self) -> None:
        """Close the channel: frames already queued are still sent, then one CLOSE frame.
        No events are delivered after this."""
        if not self._closed:
            self._closed = True
            self._close_pending = True
            self._streams.clear()
            self._rekey = None

    # -- frames out -----------------------------------------------------------

    def frames_to_send(self, limit: int | None = None) -> list[ChannelFrame]:
        """Encrypt and return up to ``limit`` queued frames (all of them by default).

        Single-frame messages go first, so window updates, pings and small answers are
        never stuck behind a long chunked message; chunked messages go one at a time, in
        order. Messages on one correlation id keep their order. Frames are encrypted here,
        in the order returned, so send them in that order. Should the send counter run out
        (``nonce_exhausted``), the list ends with a CLOSE frame and the
        :class:`ChannelClosed` event comes out of the next :meth:`poll` or
        :meth:`receive_frame`.
        """
        out: list[ChannelFrame] = []
        while limit is None or len(out) < limit:
            if self._priority:
                entry = self._priority[0]
            elif self._bulk:
                entry = self._bulk[0]
            elif self._close_pending:
                self._close_pending = False
                self.session.close()
                out.append(ChannelFrame(CLOSE_CORRELATION_ID, FrameFlag.CLOSE, b""))
                break
            else:
                break
            if entry.offset == 0 and len(entry.data) <= MAX_CHUNK:
                piece: bytes | memoryview = entry.data
            else:  # a chunk of a long message: no copy, the cipher reads the view
                piece = memoryview(entry.data)[entry.offset : entry.offset + MAX_CHUNK]
            entry.offset += len(piece)
            final = entry.offset >= len(entry.data)
            try:
                ciphertext = self.session.encrypt(piece)
            except NonceExhausted as exc:
                self._fatal(exc.code, str(exc))
                continue
            out.append(
                ChannelFrame(entry.cid, FrameFlag.FINAL if final else FrameFlag.MORE, ciphertext)
            )
            if entry.auto:
                self._auto_bytes -= len(piece)
            else:
                self._app_bytes -= len(piece)
            if final:
                if self._priority and self._priority[0] is entry:
                    self._priority.popleft()
                else:
                    self._bulk.popleft()
                    self._bulk_cids[entry.cid] -= 1
                    if not self._bulk_cids[entry.cid]:
                        del self._bulk_cids[entry.cid]
                if entry.after is not None:
                    entry.after()
        return out

    # -- internals --------------------------------------------------------------

    @property
    def _peer_role(self) -> str:
        return "responder" if self.role is Role.INITIATOR else "initiator"

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosedError("the channel is closed")

    def _byte_stream(self, cid: int) -> _Stream:
        stream = self._live(cid)
        if stream.kind is not StreamKind.BYTE_STREAM:
            raise StreamUsageError(f"{cid} is a {stream.kind.value}, not a byte stream")
        return stream

    def _live(self, cid: int) -> _Stream:
        stream = self._streams.get(cid)
        if stream is not None:
            return stream
        ended = self._ended.get(cid)
        if ended is not None:
            raise StreamUsageError(
                f"{ended.kind.value} {cid} has ended ({ended.state.value}); nothing more "
                "can be sent on it"
            )
        raise StreamUsageError(f"no open stream has correlation id {cid}")

    def _check_transition(self, stream: _Stream, event: StreamEvent, what: str) -> StreamState:
        target = _TABLES[stream.kind].get((stream.state, event))
        if target is None:
            raise StreamUsageError(
                f"cannot {what} on {stream.kind.value} {stream.cid} as its {stream.side.value} "
                f"in state {stream.state.value!r}"
            )
        return target

    def _allocate(self) -> int:
        cid = self._next_cid
        while cid in self._streams or (self._rekey is not None and self._rekey[0] == cid):
            cid = self._after(cid)
        self._next_cid = self._after(cid)
        return cid

    def _after(self, cid: int) -> int:
        if cid + 2 > _MAX_CID:
            self._wrapped = True
            return self._own_parity
        return cid + 2

    def _open(self, kind: StreamKind, message: Message) -> int:
        self._check_open()
        data = self._encode_app(message)
        event = STREAM_EVENTS[(kind, kind_of(message), Side.OPENER)]
        cid = self._allocate()
        self._streams[cid] = _Stream(cid, kind, Side.OPENER, _TABLES[kind][(_S.IDLE, event)])
        self._ended.pop(cid, None)
        self._enqueue(cid, data, auto=False)
        return cid

    def _act(self, cid: int, message: Message) -> _Stream:
        self._check_open()
        stream = self._live(cid)
        kind = kind_of(message)
        event = STREAM_EVENTS.get((stream.kind, kind, stream.side))
        if event is None:
            raise StreamUsageError(
                f"the {stream.side.value} of {stream.kind.value} {cid} cannot send {kind.name}"
            )
        self._check_transition(stream, event, f"send {kind.name}")
        data = self._encode_app(message)
        self._transition_local(stream, message, auto=False, data=data)
        return stream

    def _transition_local(
        self, stream: _Stream, message: Message, *, auto: bool, data: bytes | None = None
    ) -> None:
        event = STREAM_EVENTS[(stream.kind, kind_of(message), stream.side)]
        target = _TABLES[stream.kind][(stream.state, event)]
        before = stream.state
        stream.state = target
        self._enqueue(stream.cid, data if data is not None else encode(message), auto=auto)
        if target in TERMINAL_STATES:
            self._finish(stream, before, event, by_peer=False)

    def _encode_app(self, message: Message) -> bytes:
        data = encode(message)
        if len(data) > self.max_message_size:
            raise MessageTooLarge(
                f"{kind_of(message).name} encodes to {len(data)} bytes; this channel's "
                f"max_message_size is {self.max_message_size}"
            )
        if self._app_bytes + len(data) > self.max_outbound_bytes:
            raise OutboundQueueFull(
                f"{self._app_bytes} bytes are already queued (budget {self.max_outbound_bytes}); "
                "send the queued frames first"
            )
        return data

    def _enqueue(
        self, cid: int, data: bytes, *, auto: bool, after: Callable[[], None] | None = None
    ) -> None:
        if self._dead:
            return  # nothing more is sent
        if auto:
            if self._auto_bytes + len(data) > CONTROL_RESERVE:
                self._fatal(
                    "outbound_overflow",
                    f"more than {CONTROL_RESERVE} bytes of control frames are waiting; "
                    "frames_to_send is not being drained",
                )
                return
            self._auto_bytes += len(data)
        else:
            self._app_bytes += len(data)
        entry = _Out(cid, data, auto, after)
        if len(data) <= MAX_CHUNK and not self._bulk_cids[cid]:
            self._priority.append(entry)
        else:
            self._bulk.append(entry)
            self._bulk_cids[cid] += 1

    def _shutdown(self, *, send_close: bool) -> None:
        """Drop everything queued and forget the keys; optionally queue one CLOSE frame."""
        self._closed = self._dead = True
        self._streams.clear()
        self._priority.clear()
        self._bulk.clear()
        self._bulk_cids.clear()
        self._app_bytes = self._auto_bytes = 0
        self._close_pending = send_close
        self._rekey = None
        self.session.close()

    def _fatal(self, code: str, reason: str) -> None:
        """End the channel: drop everything queued, queue one CLOSE frame."""
        if self._dead:
            return
        self._shutdown(send_close=True)
        self._events.append(ChannelClosed(code, reason))
