"""The streams of a channel: their kinds, states, and the tables that say what may happen.

Sans-IO data and pure functions. A stream is an RPC, a server stream or a byte
stream; each kind follows one transition table (:data:`RPC_TRANSITIONS`,
:data:`SERVER_STREAM_TRANSITIONS`, :data:`BYTE_STREAM_TRANSITIONS`, keyed by
``(state, event)``). Which side of a stream may send which message, and the
event it is, is :data:`STREAM_EVENTS`. Both ends of a channel use the same
tables and state names, so once nothing is in flight both ends hold every
live stream in the same state; a message or action that is in neither table
is refused. These tables are the single source: the endpoint
(:mod:`leapcore.proto.channel_mux`) applies them and ``docs/protocol.md``
draws its diagrams from them.

:class:`StreamRegistry` keeps one end's streams by correlation id: the live
ones, the last :data:`RECENT_STREAMS` that ended (so that a late message that
crossed this end's last one is told from a violation), and the ids. Each end
opens streams on ids of its own parity (the initiator odd, from 1; the
responder even, from 2), counting up by two and, past 2**64 - 1, wrapping
around to ids no longer in use.
"""

from __future__ import annotations

import collections
import enum
import functools
from typing import Final

import attrs

from ..errors import ConfigError, StreamUsageError, UnexpectedStreamMessage
from .channel_codec import BytesReset, Cancel, ErrorReply, MessageKind
from .channel_windows import ByteWindow

__all__ = [
    "BYTE_STREAM_TRANSITIONS",
    "OPENING_KINDS",
    "RECENT_STREAMS",
    "RPC_TRANSITIONS",
    "SERVER_STREAM_TRANSITIONS",
    "STREAM_EVENTS",
    "STREAM_TABLES",
    "TERMINAL_STATES",
    "EndedStream",
    "Role",
    "Side",
    "Stream",
    "StreamEvent",
    "StreamKind",
    "StreamRegistry",
    "StreamState",
    "late_events",
    "parse_role",
    "sent_by",
]

#: How many ended streams are remembered to tell late messages from violations.
RECENT_STREAMS: Final = 256
_MAX_CID: Final = 2**64 - 1


class _Enum(enum.Enum):
    """An enum hashed by identity: the tables are looked up by tuples of these on every
    message, and ``Enum.__hash__`` (the member's name, in Python) costs more than the
    lookup. Members are singletons and compare by identity, so nothing else changes."""

    __hash__ = object.__hash__


class Role(_Enum):
    """Which end of the channel: the client (initiator) or the worker (responder)."""

    INITIATOR = "initiator"
    RESPONDER = "responder"


def parse_role(value: Role | str) -> Role:
    """``value`` as a :class:`Role` (``"initiator"`` or ``"responder"``)."""
    if isinstance(value, Role):
        return value
    try:
        return Role(value)
    except ValueError:
        raise ConfigError(f"role must be 'initiator' or 'responder', got {value!r}") from None


class Side(_Enum):
    """Which end of one stream: the one that opened it, or the one that answers."""

    OPENER = "opener"
    ACCEPTOR = "acceptor"

    @property
    def other(self) -> Side:
        return Side.ACCEPTOR if self is Side.OPENER else Side.OPENER


class StreamKind(_Enum):
    RPC = "rpc"
    SERVER_STREAM = "server-stream"
    BYTE_STREAM = "byte-stream"


class StreamState(_Enum):
    IDLE = "idle"
    OPEN = "open"
    OPENING = "opening"  # byte stream: opened, not yet accepted
    OPENING_EARLY = "opening-early"  # byte stream: opened with early data, not yet accepted
    OPENER_EOF = "opener-eof"  # byte stream: the opener half-closed
    ACCEPTOR_EOF = "acceptor-eof"  # byte stream: the acceptor half-closed
    ANSWERED = "answered"
    ENDED = "ended"
    FAILED = "failed"  # an ERROR answered the request or ended the server stream
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # an ERROR refused the byte stream
    CLOSED = "closed"  # byte stream: both halves closed
    RESET = "reset"


class StreamEvent(_Enum):
    """A message on a stream, named after the message (and, where both may send it, the
    side that sends it)."""

    REQUEST = "request"
    STREAM_REQUEST = "stream-request"
    BYTES_OPEN = "bytes-open"
    BYTES_OPEN_EARLY = "bytes-open-early"
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
#: flow control; each side half-closes with BYTES_EOF; either side may BYTES_RESET. Opened
#: with BYTES_OPEN_EARLY, the opener may send data (within the early window) before the
#: answer; a refusal discards it.
BYTE_STREAM_TRANSITIONS: Final[dict[tuple[StreamState, StreamEvent], StreamState]] = {
    (_S.IDLE, _E.BYTES_OPEN): _S.OPENING,
    (_S.IDLE, _E.BYTES_OPEN_EARLY): _S.OPENING_EARLY,
    (_S.OPENING, _E.ACCEPT): _S.OPEN,
    (_S.OPENING, _E.ERROR): _S.REJECTED,
    (_S.OPENING, _E.RESET): _S.RESET,
    (_S.OPENING_EARLY, _E.OPENER_DATA): _S.OPENING_EARLY,
    (_S.OPENING_EARLY, _E.ACCEPT): _S.OPEN,
    (_S.OPENING_EARLY, _E.ERROR): _S.REJECTED,
    (_S.OPENING_EARLY, _E.RESET): _S.RESET,
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

#: Stream kind -> its transition table.
STREAM_TABLES: Final[dict[StreamKind, dict[tuple[StreamState, StreamEvent], StreamState]]] = {
    StreamKind.RPC: RPC_TRANSITIONS,
    StreamKind.SERVER_STREAM: SERVER_STREAM_TRANSITIONS,
    StreamKind.BYTE_STREAM: BYTE_STREAM_TRANSITIONS,
}

#: States a stream ends in: nothing more is sent on it.
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
    (_BS, _K.BYTES_OPEN_EARLY, _O): _E.BYTES_OPEN_EARLY,
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

#: The messages that open a stream -> the kind of stream they open.
OPENING_KINDS: Final[dict[MessageKind, StreamKind]] = {
    _K.REQUEST: _RPC,
    _K.STREAM_REQUEST: _SS,
    _K.BYTES_OPEN: _BS,
    _K.BYTES_OPEN_EARLY: _BS,
}


def sent_by(kind: StreamKind, side: Side) -> frozenset[StreamEvent]:
    """The events ``side`` may cause on a stream of ``kind`` (:data:`STREAM_EVENTS`)."""
    return frozenset(ev for (k, _m, s), ev in STREAM_EVENTS.items() if k is kind and s is side)


@functools.cache  # a pure function of a few enums, asked once per stream that ends
def late_events(
    kind: StreamKind, before: StreamState, event: StreamEvent, peer: Side, by_peer: bool
) -> frozenset[StreamEvent]:
    """The peer's messages that may legitimately still arrive after a stream ended.

    When this end sent the last message, the peer had not seen it yet: anything the peer
    could send from the state before, and from the states its own messages lead to. When
    the peer sent it, the peer sends nothing more -- except after its own half-close,
    when it may not yet have seen ours: then window updates and a reset.
    """
    table = STREAM_TABLES[kind]
    peer_events = sent_by(kind, peer)
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
# The streams of one end


@attrs.define
class Stream:
    """A live stream, as this end sees it."""

    cid: int
    kind: StreamKind
    side: Side  # this end's side
    state: StreamState
    window: ByteWindow | None = None  # byte streams only

    @property
    def byte_window(self) -> ByteWindow:
        """The window of a byte stream (other kinds have none)."""
        assert self.window is not None, f"{self.kind.value} {self.cid} has no window"
        return self.window

    def may_update_window(self) -> bool:
        """Whether a WINDOW_UPDATE from this end still matters: the table allows it, and
        the peer has not half-closed (after its BYTES_EOF it sends no more data)."""
        opener = self.side is Side.OPENER
        event = StreamEvent.OPENER_WINDOW if opener else StreamEvent.ACCEPTOR_WINDOW
        peer_eof = StreamState.ACCEPTOR_EOF if opener else StreamState.OPENER_EOF
        return self.state is not peer_eof and (self.state, event) in BYTE_STREAM_TRANSITIONS

    def teardown(self, code: str, message: str) -> BytesReset | ErrorReply | Cancel:
        """The message that ends this stream at once, from this end: a byte stream is
        reset; a request or server stream is answered with ERROR by its acceptor and
        cancelled by its opener."""
        if self.kind is StreamKind.BYTE_STREAM:
            return BytesReset(code, message)
        if self.side is Side.ACCEPTOR:
            return ErrorReply(code, message)
        return Cancel()


@attrs.define
class EndedStream:
    """A stream that ended recently, and the peer's messages that may still arrive on it."""

    kind: StreamKind
    side: Side
    state: StreamState
    late: frozenset[StreamEvent]


class StreamRegistry:
    """The streams of one end of a channel, by correlation id (see the module docstring)."""

    def __init__(self, role: Role) -> None:
        self.live: dict[int, Stream] = {}
        self.ended: collections.OrderedDict[int, EndedStream] = collections.OrderedDict()
        self.peer_opened = 0  # live streams the peer opened
        self.own_parity = 1 if role is Role.INITIATOR else 2
        self.next_cid = self.own_parity
        self.wrapped = False  # this end's ids went past 2**64 - 1
        self.max_peer_cid = 0
        self._peer_role = "responder" if role is Role.INITIATOR else "initiator"

    def is_own(self, cid: int) -> bool:
        """Whether ``cid`` has this end's parity (a stream this end opens)."""
        return cid % 2 == self.own_parity % 2

    def allocate(self, reserved: int | None = None) -> int:
        """The next id of this end's parity that is not live (nor ``reserved``)."""
        cid = self.next_cid
        while cid in self.live or cid == reserved:
            cid = self._after(cid)
        self.next_cid = self._after(cid)
        return cid

    def _after(self, cid: int) -> int:
        if cid + 2 > _MAX_CID:
            self.wrapped = True
            return self.own_parity
        return cid + 2

    def open(self, cid: int, kind: StreamKind, side: Side, event: StreamEvent) -> Stream:
        """Add the stream that ``event`` (a REQUEST, STREAM_REQUEST or BYTES_OPEN) opens."""
        stream = Stream(cid, kind, side, STREAM_TABLES[kind][(StreamState.IDLE, event)])
        self.live[cid] = stream
        self.ended.pop(cid, None)
        if side is Side.ACCEPTOR:
            self.peer_opened += 1
        return stream

    def open_problem(self, cid: int, kind: MessageKind) -> UnexpectedStreamMessage | None:
        """What is wrong with the peer opening a stream on ``cid`` (with a ``kind``
        message), if anything: an id of this end's parity, or one still live."""
        if self.is_own(cid):
            parity = "odd" if self.own_parity == 2 else "even"
            return UnexpectedStreamMessage(
                f"{kind.name} with correlation id {cid}: the {self._peer_role} opens "
                f"streams with {parity} ids"
            )
        if cid in self.live:
            return UnexpectedStreamMessage(
                f"{kind.name} reuses correlation id {cid}, which is still open"
            )
        return None

    def get(self, cid: int) -> Stream:
        """The live stream ``cid``, for an action of this end."""
        stream = self.live.get(cid)
        if stream is not None:
            return stream
        ended = self.ended.get(cid)
        if ended is not None:
            raise StreamUsageError(
                f"{ended.kind.value} {cid} has ended ({ended.state.value}); nothing more "
                "can be sent on it"
            )
        raise StreamUsageError(f"no open stream has correlation id {cid}")

    def byte_stream(self, cid: int) -> Stream:
        """The live byte stream ``cid``, for an action of this end."""
        stream = self.get(cid)
        if stream.kind is not StreamKind.BYTE_STREAM:
            raise StreamUsageError(f"{cid} is a {stream.kind.value}, not a byte stream")
        return stream

    @staticmethod
    def local_event(stream: Stream, kind: MessageKind) -> StreamEvent:
        """The event of this end sending a ``kind`` message on ``stream``, if it may."""
        event = STREAM_EVENTS.get((stream.kind, kind, stream.side))
        if event is None:
            raise StreamUsageError(
                f"the {stream.side.value} of {stream.kind.value} {stream.cid} cannot send "
                f"{kind.name}"
            )
        StreamRegistry.check_transition(stream, event, f"send {kind.name}")
        return event

    @staticmethod
    def check_transition(stream: Stream, event: StreamEvent, what: str) -> StreamState:
        """The state ``event`` leads ``stream`` to, if this end may cause it."""
        target = STREAM_TABLES[stream.kind].get((stream.state, event))
        if target is None:
            raise StreamUsageError(
                f"cannot {what} on {stream.kind.value} {stream.cid} as its {stream.side.value} "
                f"in state {stream.state.value!r}"
            )
        return target

    def finish(
        self, stream: Stream, before: StreamState, event: StreamEvent, *, by_peer: bool
    ) -> None:
        """``event`` ended ``stream`` (from state ``before``): remember it for a while."""
        del self.live[stream.cid]
        if stream.window is not None:
            stream.window.retire()
        if stream.side is Side.ACCEPTOR:
            self.peer_opened -= 1
        late = late_events(stream.kind, before, event, stream.side.other, by_peer)
        self.ended[stream.cid] = EndedStream(stream.kind, stream.side, stream.state, late)
        while len(self.ended) > RECENT_STREAMS:
            self.ended.popitem(last=False)

    def unexpected(self, cid: int, kind: MessageKind) -> UnexpectedStreamMessage | None:
        """What is wrong with a ``kind`` message from the peer on ``cid``, which is not live
        and which the message does not open; ``None``: a late message, to drop."""
        ended = self.ended.get(cid)
        if ended is not None:
            if STREAM_EVENTS.get((ended.kind, kind, ended.side.other)) in ended.late:
                return None  # crossed this end's last message: expected
            return UnexpectedStreamMessage(
                f"{kind.name} for {ended.kind.value} {cid}, which already ended "
                f"({ended.state.value})"
            )
        if self._may_have_existed(cid):
            return None  # ended too long ago to tell
        return UnexpectedStreamMessage(f"{kind.name} for unknown correlation id {cid}")

    def _may_have_existed(self, cid: int) -> bool:
        if self.is_own(cid):
            return self.wrapped or cid < self.next_cid
        return cid <= self.max_peer_cid
