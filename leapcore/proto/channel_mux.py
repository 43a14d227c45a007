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
material or an expired key ends the channel
(:class:`~leapcore.proto.channel_events.ChannelClosed`). Anything else the peer gets
wrong affects one correlation id only: the endpoint emits
:class:`~leapcore.proto.channel_events.ProtocolViolation`, tears down that stream if
it is live (and tells the peer with ERROR, CANCEL or BYTES_RESET) and carries on.

The endpoint composes the rooms beside it, each holding one rule: the
stream tables and the registry of streams and ids
(:mod:`leapcore.proto.channel_streams`; a message or action that is in
neither table is refused), the events it returns
(:mod:`leapcore.proto.channel_events`) and what a peer's message on a live stream
becomes (:mod:`leapcore.proto.channel_inbound`), the bounded outbound queue
(:mod:`leapcore.proto.channel_outbox`), the credit windows of byte streams
(:mod:`leapcore.proto.channel_windows`) and the rekey
(:mod:`leapcore.proto.channel_rekey`). What it decides itself: which frame
ends the channel and which fails one correlation id, the ping it answers, and
how many streams the peer may hold open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ..crypto.mode import EncryptionMode, parse_encryption_mode
from ..crypto.primitives import (
    Encapsulator,
    MLKEMPrivateKey,
    RandomSource,
    mlkem_encapsulate,
    system_random,
)
from ..crypto.rekey_policy import DEFAULT_TIMINGS, RekeyTimings
from ..crypto.transport import TransportSession
from ..errors import (
    ChannelClosedError,
    ChannelProtocolError,
    ConfigError,
    DecryptError,
    FlowControlError,
    MessageTooLarge,
    NonceExhausted,
    RekeyError,
    ResourceExhausted,
    StreamUsageError,
    UnexpectedStreamMessage,
)
from .channel_codec import (
    MAX_BYTES_DATA,
    BytesAccept,
    BytesEof,
    BytesOpen,
    BytesOpenEarly,
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
from .channel_events import (
    ByteStreamRequested,
    ChannelClosed,
    Event,
    ProtocolViolation,
    RekeyCompleted,
    RequestReceived,
    StreamRequested,
    WindowInfo,
)
from .channel_inbound import inbound_event
from .channel_outbox import CONTROL_RESERVE, Outbox
from .channel_rekey import ChannelRekey, RekeyExpired, RekeyStart
from .channel_streams import (
    OPENING_KINDS,
    STREAM_EVENTS,
    STREAM_TABLES,
    TERMINAL_STATES,
    Role,
    Side,
    Stream,
    StreamEvent,
    StreamKind,
    StreamRegistry,
    StreamState,
    parse_role,
)
from .channel_windows import DEFAULT_WINDOW, EARLY_WINDOW, ByteWindow, WindowBudget
from .chunking import ChannelFrame, FrameFlag, Reassembled, Reassembler
from .limits import DEFAULT_MAX_INCOMPLETE, DEFAULT_MAX_MESSAGE_SIZE, validate_max_message_size

__all__ = ["CLOSE_CORRELATION_ID", "DEFAULT_MAX_STREAMS", "PING_METHOD", "ChannelEndpoint"]

#: The method the endpoint answers itself with an empty RESPONSE.
PING_METHOD: Final = "ping"
#: Default cap on concurrently open streams the *peer* opened.
DEFAULT_MAX_STREAMS: Final = 1024
#: The correlation id carried by CLOSE frames (receivers ignore it).
CLOSE_CORRELATION_ID: Final = 1
#: The kind byte of a BYTES_DATA message: ``send_bytes`` joins it to each piece itself
#: (one copy of the data instead of a slice copy plus ``encode``'s concatenation).
_BYTES_DATA_KIND: Final = bytes([MessageKind.BYTES_DATA])

_REKEY_KINDS: Final = frozenset(
    {MessageKind.REKEY_REQUEST, MessageKind.REKEY_ACK, MessageKind.REKEY_REJECT}
)


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
    endpoint queues itself (:data:`~leapcore.proto.channel_outbox.CONTROL_RESERVE`).
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
        self.role = parse_role(role)
        self.mode = parse_encryption_mode(mode)
        self.max_message_size = validate_max_message_size(max_message_size)
        if type(max_streams) is not int or max_streams < 1:
            raise ConfigError(f"max_streams must be a positive integer, got {max_streams!r}")
        self.max_streams = max_streams
        if max_outbound_bytes is None:
            max_outbound_bytes = 2 * self.max_message_size
        if type(max_outbound_bytes) is not int or max_outbound_bytes < self.max_message_size:
            raise ConfigError("max_outbound_bytes must be an integer >= max_message_size")
        self._rekey = ChannelRekey(
            session,
            self.role,
            self.mode,
            now,
            timings=rekey_timings,
            worker_mlkem_public=worker_mlkem_public,
            mlkem_private=mlkem_private,
            random=random,
            encapsulate=encapsulate,
        )
        self._now = now

        self._reassembler = Reassembler(
            self.max_message_size, max_incomplete, max_buffered=max_reassembly_bytes
        )
        self._registry = StreamRegistry(self.role)
        #: Window growth this end lends its byte streams (channel_windows).
        self.window_budget = WindowBudget()
        self._streams = self._registry.live  # the hot path reads the live streams directly

        self._outbox = Outbox(max_outbound_bytes)
        self._close_pending = False
        self._closed = False
        self._events: list[Event] = []
        self._dead = False  # fatally closed, or closed by the peer

    # -- inspection -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def max_outbound_bytes(self) -> int:
        """Bytes of application messages that may wait to be sent."""
        return self._outbox.max_app_bytes

    @property
    def streams(self) -> dict[int, StreamState]:
        """Live streams (correlation id -> state)."""
        return {cid: s.state for cid, s in self._streams.items()}

    def stream_kind(self, correlation_id: int) -> StreamKind | None:
        stream = self._streams.get(correlation_id)
        return stream.kind if stream else None

    def window(self, correlation_id: int) -> WindowInfo:
        """Flow-control counters of a live byte stream."""
        return self._registry.byte_stream(correlation_id).byte_window.info()

    @property
    def outbound_bytes(self) -> int:
        """Plaintext bytes waiting in the outbound queue."""
        return self._outbox.queued

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
        return bool(self._outbox) or self._close_pending

    @property
    def rekey_in_flight(self) -> bool:
        return self._rekey.pending_cid is not None

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
        elif kind in OPENING_KINDS:
            self._on_open(cid, message)
        elif cid in self._streams:
            self._on_stream_message(self._streams[cid], message)
        else:
            self._on_unknown(cid, kind)

    def _on_open(self, cid: int, message: Message) -> None:
        kind, registry = kind_of(message), self._registry
        error = registry.open_problem(cid, kind)
        if error is not None:  # on an id of this end's parity, leave this end's stream be
            self._violation(cid, error, reply=False, abort=not registry.is_own(cid))
            return
        registry.ended.pop(cid, None)
        registry.max_peer_cid = max(registry.max_peer_cid, cid)
        if isinstance(message, Request) and message.method == PING_METHOD:
            if message.payload:
                reply: Message = ErrorReply("invalid_argument", "ping takes an empty payload")
            else:
                reply = Response(b"")
            self._enqueue(cid, encode(reply), auto=True)
            return
        if registry.peer_opened >= self.max_streams:
            refused = ResourceExhausted(
                f"{kind.name} {cid} refused: the peer already has {self.max_streams} open streams"
            )
            self._violation(cid, refused, reply=True)
            return
        stream_kind = OPENING_KINDS[kind]
        event = STREAM_EVENTS[(stream_kind, kind, Side.OPENER)]
        stream = registry.open(cid, stream_kind, Side.ACCEPTOR, event)
        match message:
            case Request(method, payload):
                self._events.append(RequestReceived(cid, method, payload))
            case StreamRequest(method, payload):
                self._events.append(StreamRequested(cid, method, payload))
            case BytesOpen(window, method, payload):
                stream.window = ByteWindow(budget=self.window_budget)
                stream.window.on_grant(window)
                early = isinstance(message, BytesOpenEarly)
                if early:  # the opener may send this much before the answer
                    stream.window.grant(EARLY_WINDOW)
                self._events.append(ByteStreamRequested(cid, method, payload, early))

    def _on_stream_message(self, stream: Stream, message: Message) -> None:
        cid, kind = stream.cid, kind_of(message)
        peer = stream.side.other
        event = STREAM_EVENTS.get((stream.kind, kind, peer))
        if event is None:
            error = UnexpectedStreamMessage(
                f"{kind.name} is not valid from the {peer.value} of {stream.kind.value} {cid}"
            )
            self._violation(cid, error, reply=True)
            return
        target = STREAM_TABLES[stream.kind].get((stream.state, event))
        if target is None:
            error = UnexpectedStreamMessage(
                f"{kind.name} is not allowed on {stream.kind.value} {cid} "
                f"in state {stream.state.value!r}"
            )
            self._violation(cid, error, reply=True)
            return
        try:
            out = inbound_event(stream, message)
        except FlowControlError as broken:
            self._violation(cid, broken, reply=True)
            return
        before = stream.state
        stream.state = target
        if out is not None:
            self._events.append(out)
        if target in TERMINAL_STATES:
            self._registry.finish(stream, before, event, by_peer=True)

    def _on_unknown(self, cid: int, kind: MessageKind) -> None:
        error = self._registry.unexpected(cid, kind)
        if error is not None:
            self._violation(cid, error, reply=False)

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
            self._transition_local(stream, stream.teardown(error.code, message), auto=True)
        elif reply and not self._registry.is_own(cid) and cid not in self._registry.ended:
            # A new message from the peer that could not be read: it may await an answer.
            self._enqueue(cid, encode(ErrorReply(error.code, message)), auto=True)

    # -- rekey ----------------------------------------------------------------

    def _on_rekey(self, cid: int, message: Message) -> None:
        try:
            if isinstance(message, RekeyRequest):
                answer = self._rekey.on_request(cid, message, self._now)
                self._enqueue(cid, encode(answer.message), auto=True, after=answer.after)
                completed = answer.completed
            else:
                assert isinstance(message, RekeyAck | RekeyReject)
                completed = self._rekey.on_answer(cid, message, self._now)
        except RekeyError as exc:
            self._fatal(exc.code, str(exc))
            return
        if completed:
            self._events.append(RekeyCompleted())

    def poll(self, now: float) -> list[Event]:
        """Run the timers due at ``now`` (the initiator's rekey policy)."""
        if self._closed or self._rekey.initiator_policy is None:
            return self._take_events()
        self._now = max(self._now, now)
        step = self._rekey.poll(now, self._allocate)
        if isinstance(step, RekeyStart):
            self._enqueue(step.cid, encode(step.request), auto=True)
        elif isinstance(step, RekeyExpired):
            self._fatal("rekey_expired", step.reason)
        return self._take_events()

    def next_deadline(self) -> float | None:
        """When to call :meth:`poll` next (``None``: no timers, as on the responder)."""
        return None if self._closed else self._rekey.next_deadline(self._now)

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
        self,
        method: str,
        payload: bytes = b"",
        *,
        window: int = DEFAULT_WINDOW,
        early: bool = False,
    ) -> int:
        """Open a byte stream granting the peer ``window`` bytes; returns its id. ``early``:
        open it with BYTES_OPEN_EARLY, so that up to
        :data:`~leapcore.proto.channel_windows.EARLY_WINDOW` bytes may be sent on it before
        the peer answers (a refusal discards them)."""
        check_window(window, "window")
        opening = BytesOpenEarly if early else BytesOpen
        cid = self._open(StreamKind.BYTE_STREAM, opening(window, method, payload))
        stream = self._streams[cid]
        stream.window = ByteWindow(budget=self.window_budget)
        stream.window.grant(window)
        if early:
            stream.window.on_grant(EARLY_WINDOW)
        return cid

    def accept_byte_stream(self, correlation_id: int, *, window: int = DEFAULT_WINDOW) -> None:
        """Accept the peer's byte stream granting it ``window`` bytes (on a stream opened with
        early data: at least :data:`~leapcore.proto.channel_windows.EARLY_WINDOW`, counting
        the early data)."""
        check_window(window, "window")
        live = self._streams.get(correlation_id)
        early = live is not None and live.state is StreamState.OPENING_EARLY
        if early:
            window = max(window, EARLY_WINDOW)
        stream = self._act(correlation_id, BytesAccept(window))
        credit = stream.byte_window
        if not early:
            credit.grant(window)
            return
        credit.accept_early(window)
        # Early data consumed before the accept could not be granted back (no update
        # while opening): if that is due now, send it, else the opener might wait forever.
        if credit.pending_update >= max(1, credit.receive_window // 2):
            self._transition_local(stream, WindowUpdate(credit.release()), auto=True)

    def send_bytes(self, correlation_id: int, data: bytes | memoryview) -> int:
        """Send as much of ``data`` as the peer's window (and the outbound budget) allows;
        returns how many bytes were taken -- 0 when the window is closed. What is taken is
        copied before this returns (a ``memoryview`` of bytes may be reused after)."""
        self._check_open()
        stream = self._registry.byte_stream(correlation_id)
        opener = stream.side is Side.OPENER
        event = StreamEvent.OPENER_DATA if opener else StreamEvent.ACCEPTOR_DATA
        self._registry.check_transition(stream, event, "send data")
        if not isinstance(data, bytes) and not (
            isinstance(data, memoryview)
            and data.format == "B"
            and data.ndim == 1
            and data.c_contiguous
        ):
            raise StreamUsageError(f"data must be bytes, got {type(data).__name__}")
        window = stream.byte_window
        limit = window.sendable(len(data))
        outbox = self._outbox  # open (checked above): the queue takes application data
        view = memoryview(data)
        sent = 0
        while sent < limit:
            # each BYTES_DATA message costs its data plus the kind byte
            room = outbox.max_app_bytes - outbox.app_bytes - 1
            size = min(limit - sent, MAX_BYTES_DATA, room)
            if size <= 0:
                break
            outbox.push(correlation_id, _BYTES_DATA_KIND + view[sent : sent + size], auto=False)
            sent += size
        window.spend(sent)
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
        window = stream.byte_window
        if window.consume(correlation_id, n) and stream.may_update_window():
            self._transition_local(stream, WindowUpdate(window.release()), auto=True)

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
            self._rekey.forget()

    # -- frames out -----------------------------------------------------------

    def frames_to_send(self, limit: int | None = None) -> list[ChannelFrame]:
        """Encrypt and return up to ``limit`` queued frames (all of them by default).

        Single-frame messages go first, so window updates, pings and small answers are
        never stuck behind a long chunked message; chunked messages go one at a time, in
        order. Messages on one correlation id keep their order. Frames are encrypted here,
        in the order returned, so send them in that order. Should the send counter run out
        (``nonce_exhausted``), the list ends with a CLOSE frame and the
        :class:`~leapcore.proto.channel_events.ChannelClosed` event comes out of the next
        :meth:`poll` or :meth:`receive_frame`.
        """
        out: list[ChannelFrame] = []
        try:
            self._outbox.drain(out, limit, self.session.encrypt)
        except NonceExhausted as exc:
            self._fatal(exc.code, str(exc))  # drops the queue, leaves the CLOSE frame
        if self._close_pending and not self._outbox and (limit is None or len(out) < limit):
            self._close_pending = False
            self.session.close()
            out.append(ChannelFrame(CLOSE_CORRELATION_ID, FrameFlag.CLOSE, b""))
        return out

    # -- internals --------------------------------------------------------------

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosedError("the channel is closed")

    def _allocate(self) -> int:
        return self._registry.allocate(self._rekey.pending_cid)

    def _open(self, kind: StreamKind, message: Message) -> int:
        self._check_open()
        data = self._encode_app(message)
        event = STREAM_EVENTS[(kind, kind_of(message), Side.OPENER)]
        cid = self._allocate()
        self._registry.open(cid, kind, Side.OPENER, event)
        self._enqueue(cid, data, auto=False)
        return cid

    def _act(self, cid: int, message: Message) -> Stream:
        self._check_open()
        stream = self._registry.get(cid)
        self._registry.local_event(stream, kind_of(message))
        data = self._encode_app(message)
        self._transition_local(stream, message, auto=False, data=data)
        return stream

    def _transition_local(
        self, stream: Stream, message: Message, *, auto: bool, data: bytes | None = None
    ) -> None:
        event = STREAM_EVENTS[(stream.kind, kind_of(message), stream.side)]
        target = STREAM_TABLES[stream.kind][(stream.state, event)]
        before = stream.state
        stream.state = target
        self._enqueue(stream.cid, data if data is not None else encode(message), auto=auto)
        if target in TERMINAL_STATES:
            self._registry.finish(stream, before, event, by_peer=False)

    def _encode_app(self, message: Message) -> bytes:
        data = encode(message)
        if len(data) > self.max_message_size:
            raise MessageTooLarge(
                f"{kind_of(message).name} encodes to {len(data)} bytes; this channel's "
                f"max_message_size is {self.max_message_size}"
            )
        self._outbox.check_room(len(data))
        return data

    def _enqueue(
        self, cid: int, data: bytes, *, auto: bool, after: Callable[[], None] | None = None
    ) -> None:
        if self._dead:
            return  # nothing more is sent
        if not self._outbox.push(cid, data, auto=auto, after=after):
            self._fatal(
                "outbound_overflow",
                f"more than {CONTROL_RESERVE} bytes of control frames are waiting; "
                "frames_to_send is not being drained",
            )

    def _shutdown(self, *, send_close: bool) -> None:
        """Drop everything queued and forget the keys; optionally queue one CLOSE frame."""
        self._closed = self._dead = True
        self._streams.clear()
        self._outbox.clear()
        self._close_pending = send_close
        self._rekey.forget()
        self.session.close()

    def _fatal(self, code: str, reason: str) -> None:
        """End the channel: drop everything queued, queue one CLOSE frame."""
        if self._dead:
            return
        self._shutdown(send_close=True)
        self._events.append(ChannelClosed(code, reason))
