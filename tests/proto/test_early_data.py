"""Early data on byte streams (BYTES_OPEN_EARLY): the opener sends data behind its open,
before the answer, within :data:`EARLY_WINDOW`; the acceptor holds it until it accepts
(then it is the stream's first data) or refuses (then it is dropped). Hostile peers:
data past the early window, a short BYTES_ACCEPT, data on a plain opening stream."""

from __future__ import annotations

import os

import pytest
from support.helpers import expect

from leapcore.crypto.mode import EncryptionMode
from leapcore.crypto.transport import TransportSession
from leapcore.errors import ChannelProtocolError, StreamUsageError
from leapcore.proto import channel_codec as cc
from leapcore.proto.channel_events import (
    BytesReceived,
    ByteStreamAccepted,
    ByteStreamEOF,
    ByteStreamRequested,
    ByteStreamReset,
    ErrorReceived,
    ProtocolViolation,
)
from leapcore.proto.channel_mux import ChannelEndpoint
from leapcore.proto.channel_streams import StreamState
from leapcore.proto.channel_windows import DEFAULT_WINDOW, EARLY_WINDOW
from leapcore.proto.chunking import ChannelFrame, FrameFlag


def pair() -> tuple[ChannelEndpoint, ChannelEndpoint]:
    k1, k2 = os.urandom(32), os.urandom(32)
    mode = EncryptionMode.CLASSIC
    i = ChannelEndpoint(TransportSession(k2, k1), role="initiator", mode=mode, now=0.0)
    r = ChannelEndpoint(TransportSession(k1, k2), role="responder", mode=mode, now=0.0)
    return i, r


def frames(src: ChannelEndpoint) -> list[ChannelFrame]:
    return src.frames_to_send()


def deliver(dst: ChannelEndpoint, sent: list[ChannelFrame]) -> list[object]:
    events: list[object] = []
    for frame in sent:
        events += dst.receive_frame(frame, 0.0)
    return events


def settle(i: ChannelEndpoint, r: ChannelEndpoint) -> tuple[list[object], list[object]]:
    ei: list[object] = []
    er: list[object] = []
    while i.has_outbound or r.has_outbound:
        er += deliver(r, frames(i))
        ei += deliver(i, frames(r))
    return ei, er


def forge(peer: ChannelEndpoint, cid: int, message: cc.Message) -> ChannelFrame:
    """A frame carrying ``message`` as ``peer`` would send it (encrypted in order), without
    ``peer``'s own rules."""
    assert not peer.has_outbound
    return ChannelFrame(cid, FrameFlag.FINAL, peer.session.encrypt(cc.encode(message)))


def violations(events: list[object]) -> list[tuple[int, str]]:
    return [(e.correlation_id, e.code) for e in events if isinstance(e, ProtocolViolation)]


# -- the codec ------------------------------------------------------------------------------


def test_bytes_open_early_on_the_wire() -> None:
    message = cc.BytesOpenEarly(1000, "tcp", b'{"host":"h","port":1}')
    raw = cc.encode(message)
    assert raw[:6] == bytes.fromhex("0e000003e8") + bytes([3])
    decoded = cc.decode(raw)
    assert decoded == message and type(decoded) is cc.BytesOpenEarly
    assert cc.kind_of(decoded) is cc.MessageKind.BYTES_OPEN_EARLY
    assert decoded != cc.BytesOpen(1000, "tcp", message.payload)  # a different message
    expect(ChannelProtocolError, "BYTES_OPEN_EARLY body too short", cc.decode, b"\x0e\x00")


# -- the normal course ----------------------------------------------------------------------


def test_early_data_is_delivered_then_accepted() -> None:
    i, r = pair()
    b = i.open_byte_stream("cat", b"hello", early=True)
    assert i.streams == {b: StreamState.OPENING_EARLY}
    assert i.window(b).send_credit == EARLY_WINDOW
    assert i.send_bytes(b, b"first bytes") == 11
    expect(StreamUsageError, "cannot send BYTES_EOF .* 'opening-early'", i.send_eof, b)
    _, er = settle(i, r)
    assert er == [
        ByteStreamRequested(b, "cat", b"hello", early=True),
        BytesReceived(b, b"first bytes"),
    ]
    assert r.streams == {b: StreamState.OPENING_EARLY}
    assert r.window(b).receive_credit == EARLY_WINDOW - 11
    # The acceptor's window counts the early data: the opener has what is left of it.
    r.accept_byte_stream(b)
    ei, _ = settle(i, r)
    assert ei == [ByteStreamAccepted(b)]
    assert i.window(b).send_credit == DEFAULT_WINDOW - 11
    assert r.window(b).receive_credit == DEFAULT_WINDOW - 11
    assert r.window(b).receive_window == DEFAULT_WINDOW
    # Consuming the early data grants it back like any other data.
    r.consume(b, 11)
    assert i.send_bytes(b, bytes(DEFAULT_WINDOW)) == DEFAULT_WINDOW - 11
    _, er = settle(i, r)
    assert sum(len(e.data) for e in er if isinstance(e, BytesReceived)) == DEFAULT_WINDOW - 11
    r.consume(b, DEFAULT_WINDOW - 11)
    settle(i, r)
    assert i.window(b).send_credit > 0  # the window update came back
    i.send_eof(b)
    r.send_eof(b)
    ei, er = settle(i, r)
    assert ByteStreamEOF(b) in ei and ByteStreamEOF(b) in er
    assert i.streams == r.streams == {}


def test_a_plain_open_is_unchanged() -> None:
    i, r = pair()
    b = i.open_byte_stream("cat", b"")
    assert i.streams == {b: StreamState.OPENING}
    assert i.window(b).send_credit == 0
    expect(StreamUsageError, "cannot send data .* in state 'opening'", i.send_bytes, b, b"x")
    _, er = settle(i, r)
    assert er == [ByteStreamRequested(b, "cat", b"", early=False)]
    r.accept_byte_stream(b, window=500)  # a small window is allowed without early data
    settle(i, r)
    assert i.window(b).send_credit == 500


def test_the_early_window_bounds_what_is_sent_before_the_answer() -> None:
    i, r = pair()
    b = i.open_byte_stream("cat", early=True)
    assert i.send_bytes(b, bytes(EARLY_WINDOW + 1000)) == EARLY_WINDOW
    assert i.send_bytes(b, b"more") == 0  # nothing more until the answer
    # All of it is in flight when the acceptor answers: it fits in the accepted window.
    opened = frames(i)
    er = deliver(r, opened[:1])
    assert er == [ByteStreamRequested(b, "cat", b"", early=True)]
    r.accept_byte_stream(b, window=EARLY_WINDOW + 10)
    er = deliver(r, opened[1:])
    assert not violations(er)
    assert sum(len(e.data) for e in er if isinstance(e, BytesReceived)) == EARLY_WINDOW
    ei = deliver(i, frames(r))
    assert ei == [ByteStreamAccepted(b)]
    assert i.window(b).send_credit == 10


def test_an_acceptor_never_grants_less_than_the_early_window() -> None:
    i, r = pair()
    b = i.open_byte_stream("cat", early=True)
    assert i.send_bytes(b, bytes(1000)) == 1000
    settle(i, r)
    r.accept_byte_stream(b, window=10)  # raised to EARLY_WINDOW: the data in flight fits
    assert r.window(b).receive_window == EARLY_WINDOW
    settle(i, r)
    assert i.window(b).send_credit == EARLY_WINDOW - 1000


def test_a_refusal_discards_the_early_data_in_flight() -> None:
    i, r = pair()
    b = i.open_byte_stream("tcp", early=True)
    i.send_bytes(b, b"one")
    opened = frames(i)
    er = deliver(r, opened)
    assert BytesReceived(b, b"one") in er
    r.send_error(b, "connection_refused", "no")
    # More early data, sent before the opener heard the refusal: dropped, no violation.
    i.send_bytes(b, b"two")
    er = deliver(r, frames(i))
    assert er == []
    ei = deliver(i, frames(r))
    assert ei == [ErrorReceived(b, "connection_refused", "no")]
    assert i.streams == r.streams == {}
    assert not r.has_outbound


def test_the_opener_may_reset_before_the_answer() -> None:
    i, r = pair()
    b = i.open_byte_stream("tcp", early=True)
    i.send_bytes(b, b"x")
    settle(i, r)
    r.accept_byte_stream(b)  # crosses the reset
    accepted = frames(r)
    i.reset(b, "cancelled", "gave up")
    er = deliver(r, frames(i))
    assert er == [ByteStreamReset(b, "cancelled", "gave up")]
    assert deliver(i, accepted) == []  # the late accept is dropped
    assert i.streams == r.streams == {}


# -- hostile peers ----------------------------------------------------------------------------


def test_early_data_past_the_early_window_is_a_violation() -> None:
    i, r = pair()
    b = i.open_byte_stream("tcp", early=True)
    assert i.send_bytes(b, bytes(EARLY_WINDOW)) == EARLY_WINDOW
    settle(i, r)
    er = r.receive_frame(forge(i, b, cc.BytesData(b"!")), 0.0)
    assert violations(er) == [(b, "flow_control_error")]
    assert r.streams == {}  # the stream was reset: the opener hears it
    ei, _ = settle(i, r)
    assert [type(e) for e in ei] == [ByteStreamReset]
    assert i.streams == {}


def test_data_on_a_plain_opening_stream_is_a_violation() -> None:
    i, r = pair()
    b = i.open_byte_stream("tcp")
    settle(i, r)
    er = r.receive_frame(forge(i, b, cc.BytesData(b"sneaky")), 0.0)
    assert violations(er) == [(b, "unexpected_stream_message")]
    assert not any(isinstance(e, BytesReceived) for e in er)
    assert r.streams == {}


def test_a_short_accept_of_an_early_stream_is_a_violation() -> None:
    i, r = pair()
    b = i.open_byte_stream("tcp", early=True)
    i.send_bytes(b, bytes(5000))
    settle(i, r)
    ei = i.receive_frame(forge(r, b, cc.BytesAccept(100)), 0.0)
    assert violations(ei) == [(b, "flow_control_error")]
    assert i.streams == {}  # reset: the acceptor hears it


@pytest.mark.parametrize("message", [cc.BytesEof(), cc.WindowUpdate(10)])
def test_the_opener_sends_only_data_before_the_answer(message: cc.Message) -> None:
    i, r = pair()
    b = i.open_byte_stream("tcp", early=True)
    settle(i, r)
    er = r.receive_frame(forge(i, b, message), 0.0)
    assert violations(er) == [(b, "unexpected_stream_message")]


def test_an_early_open_on_the_wrong_parity_is_refused() -> None:
    i, r = pair()
    er = i.receive_frame(forge(r, 1, cc.BytesOpenEarly(100, "tcp", b"")), 0.0)
    assert violations(er) == [(1, "unexpected_stream_message")]
    assert i.streams == {}


def test_early_data_consumed_before_the_accept_is_granted_back_with_it() -> None:
    """The acceptor read all the early data before accepting (no update may go out while
    opening) and grants just the early window: the accept must bring an update, else the
    opener, out of credit, would wait for ever."""
    i, r = pair()
    b = i.open_byte_stream("cat", early=True)
    assert i.send_bytes(b, bytes(EARLY_WINDOW)) == EARLY_WINDOW
    settle(i, r)
    r.consume(b, EARLY_WINDOW)
    assert not r.has_outbound
    r.accept_byte_stream(b, window=1)  # raised to EARLY_WINDOW, all of it spent
    ei, _ = settle(i, r)
    assert ei[0] == ByteStreamAccepted(b)
    assert i.window(b).send_credit > 0
    assert i.send_bytes(b, b"more") == 4
