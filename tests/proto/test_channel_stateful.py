"""A hypothesis state machine driving two channel endpoints over a lossless, in-order pipe.

The initiator ("I") and the responder ("R") both open RPCs, server streams and byte
streams, answer, cancel, send and consume bytes, half-close and reset, while the test
decides when frames are delivered (a random prefix of what is in flight, sometimes one
frame at a time) and moves a fake clock so rekeys happen (and are sometimes rejected)
with traffic in flight. A model of what each application sent and saw checks:

* byte-stream bytes arrive complete and in order; windows never go negative and no
  receiver ever holds more unconsumed bytes than the window it granted;
* every RPC is answered exactly once (unless its caller cancelled it), every stream's
  items arrive in order before its end;
* once nothing is in flight, both ends hold the same live streams in the same states,
  and each side's send credit equals the other side's receive credit;
* nothing but the documented events comes out, and never a violation or a close.
"""

from __future__ import annotations

import functools
import os

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from support.vectorkit import load_vector

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.crypto.mode import EncryptionMode
from leapcore.crypto.rekey_policy import RekeyTimings
from leapcore.crypto.transport import TransportSession
from leapcore.proto.channel_events import (
    BytesReceived,
    ByteStreamAccepted,
    ByteStreamEOF,
    ByteStreamRequested,
    ByteStreamReset,
    Cancelled,
    ErrorReceived,
    Event,
    RekeyCompleted,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamItemReceived,
    StreamRequested,
    WindowOpened,
)
from leapcore.proto.channel_mux import ChannelEndpoint
from leapcore.proto.channel_streams import StreamKind, StreamState
from leapcore.proto.channel_windows import EARLY_WINDOW, MAX_STREAM_WINDOW

SIDES = ("I", "R")
sides = st.sampled_from(SIDES)
windows = st.one_of(
    st.integers(1, 200_000), st.integers(1, 4000), st.sampled_from([1, 7, 65518, 65519])
)
sizes = st.one_of(
    st.integers(0, 64),
    st.integers(0, 3000),
    st.sampled_from([65513, 65514, 65519, 70_000, 140_000]),
)
#: The initiator asks after 60 s of key age; the responder refuses age-only requests for
#: 75 s, so the first request of an epoch is usually rejected and retried.
I_TIMINGS = RekeyTimings(max_age=60, min_interval=30, hard_ceiling=10**9)
R_TIMINGS = RekeyTimings(max_age=80, min_interval=75, hard_ceiling=10**9)
SENDING_STATES = {StreamState.OPEN, StreamState.OPENER_EOF, StreamState.ACCEPTOR_EOF}


@functools.cache
def worker_keys() -> WorkerKeyPair:
    return load_vector("pq_seed1").keypair


def other(side: str) -> str:
    return "R" if side == "I" else "I"


def opener_of(cid: int) -> str:
    return "I" if cid % 2 else "R"


@attrs.define
class Call:
    """An RPC or a server stream, as the two applications saw it."""

    kind: StreamKind
    opener: str
    payload: bytes
    known: bool = False  # the acceptor's application got the request
    answer: tuple[object, ...] | None = None  # what the acceptor answered with
    cancelled: bool = False
    answers: int = 0  # final answers the opener received
    items_sent: list[bytes] = attrs.Factory(list)
    items_received: list[bytes] = attrs.Factory(list)


@attrs.define
class Pipe:
    """A byte stream, as the two applications saw it (keyed by the sending side)."""

    opener: str
    payload: bytes
    early: bool = False  # opened with BYTES_OPEN_EARLY: the opener sends before the answer
    known: bool = False
    accepted: bool = False
    rejected: bool = False
    resets: set[str] = attrs.Factory(set)
    window: dict[str, int] = attrs.Factory(dict)  # receive window granted by each side
    sent: dict[str, bytearray] = attrs.Factory(lambda: {"I": bytearray(), "R": bytearray()})
    received: dict[str, bytearray] = attrs.Factory(lambda: {"I": bytearray(), "R": bytearray()})
    consumed: dict[str, int] = attrs.Factory(lambda: {"I": 0, "R": 0})
    eof: set[str] = attrs.Factory(set)


class ChannelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.ep: dict[str, ChannelEndpoint] = {}
        self.pipe: dict[str, list] = {"I": [], "R": []}
        self.calls: dict[int, Call] = {}
        self.pipes: dict[int, Pipe] = {}
        self.rekeys = {"I": 0, "R": 0}
        self.counter = 0

    @initialize(post_quantum=st.booleans())
    def connect(self, post_quantum):
        """Both ends of one channel, from random session keys; in post-quantum mode rekeys
        use real ML-KEM-1024 with a worker key from the vectors."""
        k1, k2 = os.urandom(32), os.urandom(32)
        mode = EncryptionMode.POST_QUANTUM if post_quantum else EncryptionMode.CLASSIC
        keys = worker_keys() if post_quantum else None
        self.ep = {
            "I": ChannelEndpoint(
                TransportSession(k2, k1),
                role="initiator",
                mode=mode,
                now=0.0,
                rekey_timings=I_TIMINGS,
                worker_mlkem_public=keys.mlkem_public if keys else None,
            ),
            "R": ChannelEndpoint(
                TransportSession(k1, k2),
                role="responder",
                mode=mode,
                now=0.0,
                rekey_timings=R_TIMINGS,
                mlkem_private=keys.mlkem_seed if keys else None,
            ),
        }

    # -- helpers ------------------------------------------------------------------

    def payload(self, size: int) -> bytes:
        self.counter += 1
        stamp = self.counter.to_bytes(4, "big")
        return (stamp * (size // 4 + 1))[:size]

    def live(self, side: str, kind: StreamKind, *, opened_by: str | None = None, states=None):
        ep = self.ep[side]
        return sorted(
            cid
            for cid, state in ep.streams.items()
            if ep.stream_kind(cid) is kind
            and (opened_by is None or opener_of(cid) == opened_by)
            and (states is None or state in states)
        )

    def quiet(self) -> bool:
        return not (
            self.pipe["I"]
            or self.pipe["R"]
            or self.ep["I"].has_outbound
            or self.ep["R"].has_outbound
        )

    def deliver_from(self, side: str, k: int | None, limit: int | None = None) -> None:
        self.pipe[side] += self.ep[side].frames_to_send(limit)
        if k is None:
            batch, self.pipe[side] = self.pipe[side], []
        else:
            batch, self.pipe[side] = self.pipe[side][:k], self.pipe[side][k:]
        receiver = other(side)
        for frame in batch:
            self.handle(receiver, self.ep[receiver].receive_frame(frame, self.now))

    def drain(self) -> None:
        while not self.quiet():
            self.deliver_from("I", None)
            self.deliver_from("R", None)

    def handle(self, side: str, events: list[Event]) -> None:
        peer = other(side)
        for event in events:
            if isinstance(event, RekeyCompleted):
                self.rekeys[side] += 1
                continue
            match event:
                case RequestReceived(cid, method, payload) | StreamRequested(cid, method, payload):
                    call = self.calls[cid]
                    assert call.opener == peer and not call.known and payload == call.payload
                    assert method == "call"
                    assert (call.kind is StreamKind.RPC) == isinstance(event, RequestReceived)
                    call.known = True
                case ResponseReceived(cid, payload):
                    call = self.calls[cid]
                    assert call.opener == side and not call.cancelled
                    assert call.answer == ("response", payload)
                    call.answers += 1
                    assert call.answers == 1
                case ErrorReceived(cid, code, message) if cid in self.calls:
                    call = self.calls[cid]
                    assert call.opener == side and not call.cancelled
                    assert call.answer == ("error", code, message)
                    assert call.items_received == call.items_sent
                    call.answers += 1
                    assert call.answers == 1
                case ErrorReceived(cid, code, message):
                    pipe = self.pipes[cid]
                    assert pipe.opener == side and side not in pipe.resets
                    assert (code, message) == ("refused", "no")
                    pipe.rejected = True
                case StreamItemReceived(cid, payload):
                    call = self.calls[cid]
                    assert call.opener == side and not call.cancelled
                    call.items_received.append(payload)
                    assert call.items_received == call.items_sent[: len(call.items_received)]
                case StreamEnded(cid):
                    call = self.calls[cid]
                    assert call.opener == side and not call.cancelled and call.answer == ("end",)
                    assert call.items_received == call.items_sent
                    call.answers += 1
                    assert call.answers == 1
                case Cancelled(cid):
                    call = self.calls[cid]
                    assert call.opener == peer and call.cancelled and call.known
                case ByteStreamRequested(cid, method, payload, early):
                    pipe = self.pipes[cid]
                    assert pipe.opener == peer and not pipe.known and payload == pipe.payload
                    assert method == "pipe" and early == pipe.early
                    pipe.known = True
                case ByteStreamAccepted(cid):
                    pipe = self.pipes[cid]
                    assert pipe.opener == side and pipe.accepted and side not in pipe.resets
                case BytesReceived(cid, data):
                    pipe = self.pipes[cid]
                    assert side not in pipe.resets  # late data after a local reset is dropped
                    got = pipe.received[peer]
                    got += data
                    assert pipe.sent[peer][: len(got)] == got, "bytes out of order or corrupted"
                    unconsumed = len(got) - pipe.consumed[side]
                    # the window may have grown (channel_windows), never past its cap; early
                    # data before the answer is within the early window
                    granted = self.ep[side].window(cid).receive_window
                    expected = pipe.window.get(side, EARLY_WINDOW)
                    assert pipe.early or side in pipe.window, "data before the answer"
                    assert expected <= granted <= max(expected, MAX_STREAM_WINDOW)
                    assert 0 < unconsumed <= granted, "receiver holds more than its window"
                case ByteStreamEOF(cid):
                    pipe = self.pipes[cid]
                    assert peer in pipe.eof and side not in pipe.resets
                    assert pipe.received[peer] == pipe.sent[peer], "bytes missing at EOF"
                case ByteStreamReset(cid, code, message):
                    pipe = self.pipes[cid]
                    assert peer in pipe.resets and side not in pipe.resets
                    assert (code, message) == ("reset", "bye")
                case WindowOpened(cid):
                    assert cid in self.pipes
                case _:
                    raise AssertionError(f"unexpected event at {side}: {event!r}")

    # -- rules: RPCs and server streams -----------------------------------------------

    @rule(side=sides, size=sizes)
    def send_request(self, side, size):
        payload = self.payload(size)
        cid = self.ep[side].send_request("call", payload)
        assert cid % 2 == (1 if side == "I" else 0) and cid not in self.calls
        self.calls[cid] = Call(StreamKind.RPC, side, payload)

    @rule(side=sides, size=sizes)
    def start_stream(self, side, size):
        payload = self.payload(size)
        cid = self.ep[side].start_stream("call", payload)
        assert cid not in self.calls
        self.calls[cid] = Call(StreamKind.SERVER_STREAM, side, payload)

    @rule(side=sides)
    def ping(self, side):
        cid = self.ep[side].ping()
        self.calls[cid] = Call(StreamKind.RPC, side, b"", known=True, answer=("response", b""))

    def _answerable(self, side: str, kind: StreamKind) -> list[int]:
        return self.live(side, kind, opened_by=other(side))

    @precondition(
        lambda self: self._answerable("I", StreamKind.RPC) or self._answerable("R", StreamKind.RPC)
    )
    @rule(data=st.data(), size=sizes, error=st.booleans())
    def answer(self, data, size, error):
        side = data.draw(st.sampled_from([s for s in SIDES if self._answerable(s, StreamKind.RPC)]))
        cid = data.draw(st.sampled_from(self._answerable(side, StreamKind.RPC)))
        call = self.calls[cid]
        if error:
            call.answer = ("error", "failed", f"call {cid} failed")
            self.ep[side].send_error(cid, "failed", f"call {cid} failed")
        else:
            call.answer = ("response", self.payload(size))
            self.ep[side].send_response(cid, call.answer[1])

    @precondition(
        lambda self: (
            self._answerable("I", StreamKind.SERVER_STREAM)
            or self._answerable("R", StreamKind.SERVER_STREAM)
        )
    )
    @rule(data=st.data(), size=sizes, action=st.sampled_from(["item", "item", "end", "error"]))
    def serve_stream(self, data, size, action):
        kind = StreamKind.SERVER_STREAM
        side = data.draw(st.sampled_from([s for s in SIDES if self._answerable(s, kind)]))
        cid = data.draw(st.sampled_from(self._answerable(side, kind)))
        call = self.calls[cid]
        if action == "item":
            payload = self.payload(size)
            call.items_sent.append(payload)
            self.ep[side].send_stream_item(cid, payload)
        elif action == "end":
            call.answer = ("end",)
            self.ep[side].end_stream(cid)
        else:
            call.answer = ("error", "gone", "stream failed")
            self.ep[side].send_error(cid, "gone", "stream failed")

    def _cancellable(self, side: str) -> list[int]:
        return self.live(side, StreamKind.RPC, opened_by=side) + self.live(
            side, StreamKind.SERVER_STREAM, opened_by=side
        )

    @precondition(lambda self: self._cancellable("I") or self._cancellable("R"))
    @rule(data=st.data())
    def cancel(self, data):
        side = data.draw(st.sampled_from([s for s in SIDES if self._cancellable(s)]))
        cid = data.draw(st.sampled_from(self._cancellable(side)))
        self.calls[cid].cancelled = True
        self.ep[side].cancel(cid)

    # -- rules: byte streams ------------------------------------------------------------

    @rule(side=sides, window=windows, early=st.booleans())
    def open_byte_stream(self, side: str, window: int, early: bool = False) -> None:
        payload = self.payload(8)
        cid = self.ep[side].open_byte_stream("pipe", payload, window=window, early=early)
        self.pipes[cid] = Pipe(side, payload, early=early, window={side: window})

    @staticmethod
    def _accept_window(pipe: Pipe, window: int) -> int:
        """The window an accept grants: on an early stream, at least the early window."""
        return max(window, EARLY_WINDOW) if pipe.early else window

    @rule(side=sides, w1=windows, w2=windows, early=st.booleans())
    def open_accepted_byte_stream(self, side, w1, w2, early):
        """Open, deliver, accept and deliver at once: byte streams need a chain of rules that
        swarm testing often breaks, and most of their interesting life starts here."""
        self.open_byte_stream(side, w1, early)
        cid = max(self.live(side, StreamKind.BYTE_STREAM, opened_by=side))
        self.drain()
        pipe = self.pipes[cid]
        pipe.accepted = True
        pipe.window[other(side)] = self._accept_window(pipe, w2)
        self.ep[other(side)].accept_byte_stream(cid, window=w2)
        self.drain()

    def _opening(self, side: str) -> list[int]:
        return self.live(
            side,
            StreamKind.BYTE_STREAM,
            opened_by=other(side),
            states={StreamState.OPENING, StreamState.OPENING_EARLY},
        )

    @precondition(lambda self: self._opening("I") or self._opening("R"))
    @rule(data=st.data(), window=windows, refuse=st.integers(0, 5))
    def accept_byte_stream(self, data, window, refuse):
        side = data.draw(st.sampled_from([s for s in SIDES if self._opening(s)]))
        cid = data.draw(st.sampled_from(self._opening(side)))
        pipe = self.pipes[cid]
        if refuse == 0:
            self.ep[side].send_error(cid, "refused", "no")
            return
        pipe.accepted = True
        pipe.window[side] = self._accept_window(pipe, window)
        self.ep[side].accept_byte_stream(cid, window=window)

    def _senders(self, side: str, *, eof: bool = False) -> list[int]:
        """Live byte streams on which ``side`` may still send data (``eof``: EOF, which an
        opener may not send before the answer)."""
        ep = self.ep[side]
        out = []
        for cid, state in ep.streams.items():
            if ep.stream_kind(cid) is not StreamKind.BYTE_STREAM:
                continue
            opener = opener_of(cid) == side
            my_eof = StreamState.OPENER_EOF if opener else StreamState.ACCEPTOR_EOF
            early = opener and not eof and state is StreamState.OPENING_EARLY
            if (state in SENDING_STATES and state is not my_eof) or early:
                out.append(cid)
        return sorted(out)

    @precondition(lambda self: self._senders("I") or self._senders("R"))
    @rule(data=st.data(), size=sizes)
    def send_bytes(self, data, size):
        side = data.draw(st.sampled_from([s for s in SIDES if self._senders(s)]))
        cid = data.draw(st.sampled_from(self._senders(side)))
        chunk = self.payload(size)
        credit = self.ep[side].window(cid).send_credit
        n = self.ep[side].send_bytes(cid, chunk)
        assert n == min(size, credit)
        self.pipes[cid].sent[side] += chunk[:n]

    def _unconsumed(self, side: str) -> list[int]:
        ep = self.ep[side]
        return [c for c in self.live(side, StreamKind.BYTE_STREAM) if ep.window(c).unconsumed > 0]

    @precondition(lambda self: self._unconsumed("I") or self._unconsumed("R"))
    @rule(data=st.data())
    def consume(self, data):
        side = data.draw(st.sampled_from([s for s in SIDES if self._unconsumed(s)]))
        cid = data.draw(st.sampled_from(self._unconsumed(side)))
        unconsumed = self.ep[side].window(cid).unconsumed
        n = data.draw(st.integers(1, unconsumed) | st.just(unconsumed))
        self.ep[side].consume(cid, n)
        self.pipes[cid].consumed[side] += n

    @precondition(lambda self: self._senders("I", eof=True) or self._senders("R", eof=True))
    @rule(data=st.data())
    def send_eof(self, data):
        side = data.draw(st.sampled_from([s for s in SIDES if self._senders(s, eof=True)]))
        cid = data.draw(st.sampled_from(self._senders(side, eof=True)))
        self.pipes[cid].eof.add(side)
        self.ep[side].send_eof(cid)

    def _resettable(self, side: str) -> list[int]:
        return self.live(side, StreamKind.BYTE_STREAM)

    @precondition(lambda self: self._resettable("I") or self._resettable("R"))
    @rule(data=st.data())
    def reset(self, data):
        side = data.draw(st.sampled_from([s for s in SIDES if self._resettable(s)]))
        cid = data.draw(st.sampled_from(self._resettable(side)))
        self.pipes[cid].resets.add(side)
        self.ep[side].reset(cid, "reset", "bye")

    # -- rules: the network and the clock -------------------------------------------

    @rule(side=sides, k=st.integers(1, 6), limit=st.sampled_from([None, None, 1, 2]))
    def deliver(self, side, k, limit):
        self.deliver_from(side, k, limit)

    @rule()
    def deliver_everything(self):
        self.drain()

    @rule(dt=st.sampled_from([1.0, 5.0, 20.0, 45.0]))
    def advance_clock(self, dt):
        # Old-key frames must arrive within the 10 s grace window: time moves only when
        # nothing is in flight (a rekey can still be mid-way: requested, not yet sent).
        self.drain()
        self.now += dt
        for side in SIDES:
            self.handle(side, self.ep[side].poll(self.now))
            deadline = self.ep[side].next_deadline()
            assert deadline is None if side == "R" else deadline is not None

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def windows_are_sane(self):
        for side in SIDES:
            ep = self.ep[side]
            for cid in self.live(side, StreamKind.BYTE_STREAM):
                w = ep.window(cid)
                assert min(w.send_credit, w.receive_credit, w.unconsumed, w.pending_update) >= 0
                if w.receive_window:
                    assert w.unconsumed + w.receive_credit + w.pending_update == w.receive_window
                    assert w.unconsumed <= w.receive_window
                    # liveness: once everything is consumed, the peer may send again
                    peer_eof = (
                        StreamState.ACCEPTOR_EOF
                        if opener_of(cid) == side
                        else StreamState.OPENER_EOF
                    )
                    # (before the answer no update can go out: the accept sends what is due)
                    state = ep.streams[cid]
                    if w.unconsumed == 0 and state not in (peer_eof, StreamState.OPENING_EARLY):
                        assert w.receive_credit > 0, "window stuck shut after consuming everything"

    @invariant()
    def ends_agree_when_quiet(self):
        if not self.quiet():
            return
        i, r = self.ep["I"], self.ep["R"]
        assert i.streams == r.streams
        for cid in self.live("I", StreamKind.BYTE_STREAM):
            wi, wr = i.window(cid), r.window(cid)
            if i.streams[cid] is not StreamState.OPENING:
                assert wi.send_credit == wr.receive_credit
                assert wr.send_credit == wi.receive_credit
        for pipe in self.pipes.values():
            if not pipe.resets and not pipe.rejected:
                assert pipe.received == pipe.sent
        for cid, call in self.calls.items():
            if call.answer is not None and not call.cancelled:
                assert call.answers == 1, (cid, call)
                assert call.items_received == call.items_sent
            if call.answers:
                assert call.answer is not None

    def teardown(self):
        # Answer everything still open, let it all arrive: every call got exactly one answer.
        self.drain()
        for side in SIDES:
            ep = self.ep[side]
            for cid in self._answerable(side, StreamKind.RPC):
                self.calls[cid].answer = ("response", b"late")
                ep.send_response(cid, b"late")
            for cid in self._answerable(side, StreamKind.SERVER_STREAM):
                self.calls[cid].answer = ("end",)
                ep.end_stream(cid)
        self.drain()
        for call in self.calls.values():
            assert call.answers == (0 if call.cancelled else 1), call


ChannelMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=100, deadline=None
)
TestChannelStateful = ChannelMachine.TestCase
