"""The channel endpoint (leapcore.proto.channel_mux): RPCs, streams, byte streams, rekey, hostility.

Sessions are built from random keys (no handshake, no signing); post-quantum rekeys use the
session-scoped generated keypair (real ML-KEM, ~1 ms).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.helpers import expect

from leapcore.crypto.mode import EncryptionMode
from leapcore.crypto.rekey_policy import RekeyTimings
from leapcore.crypto.transport import TransportSession
from leapcore.errors import (
    ChannelClosedError,
    ConfigError,
    InvalidEncryptionMode,
    InvalidMessage,
    LeapcoreError,
    MessageTooLarge,
    OutboundQueueFull,
    StreamUsageError,
)
from leapcore.proto import channel_codec as cc
from leapcore.proto.channel_events import (
    BytesReceived,
    ByteStreamAccepted,
    ByteStreamEOF,
    ByteStreamRequested,
    ByteStreamReset,
    Cancelled,
    ChannelClosed,
    ErrorReceived,
    ProtocolViolation,
    RekeyCompleted,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamItemReceived,
    StreamRequested,
    WindowOpened,
)
from leapcore.proto.channel_mux import CLOSE_CORRELATION_ID, ChannelEndpoint
from leapcore.proto.channel_outbox import CONTROL_RESERVE
from leapcore.proto.channel_streams import (
    BYTE_STREAM_TRANSITIONS,
    RPC_TRANSITIONS,
    SERVER_STREAM_TRANSITIONS,
    STREAM_EVENTS,
    TERMINAL_STATES,
    Role,
    StreamState,
)
from leapcore.proto.chunking import ChannelFrame, FrameFlag

CLASSIC, PQ = EncryptionMode.CLASSIC, EncryptionMode.POST_QUANTUM
FINAL, MORE, CLOSE = FrameFlag.FINAL, FrameFlag.MORE, FrameFlag.CLOSE


def pair(mode=CLASSIC, keypair=None, *, now=0.0, i_kw=None, r_kw=None, send_n=0):
    k1, k2 = os.urandom(32), os.urandom(32)
    i = ChannelEndpoint(
        TransportSession(k2, k1, send_n=send_n),
        role="initiator",
        mode=mode,
        now=now,
        worker_mlkem_public=keypair.mlkem_public if keypair else None,
        **(i_kw or {}),
    )
    r = ChannelEndpoint(
        TransportSession(k1, k2, recv_n=send_n),
        role=Role.RESPONDER,
        mode=mode,
        now=now,
        mlkem_private=keypair.mlkem_seed if keypair else None,
        **(r_kw or {}),
    )
    return i, r


def pump(src, dst, now=0.0):
    """Deliver everything ``src`` has queued to ``dst``; return ``dst``'s events."""
    events = []
    for frame in src.frames_to_send():
        events += dst.receive_frame(frame, now)
    return events


def settle(i, r, now=0.0):
    """Pump both ways until nothing is queued; return (initiator events, responder events)."""
    ei, er = [], []
    while i.has_outbound or r.has_outbound:
        er += pump(i, r, now)
        ei += pump(r, i, now)
    return ei, er


def forge(peer, cid, plaintext, flags=FINAL):
    """A frame as ``peer`` would send it (encrypted in order by its session)."""
    assert not peer.has_outbound
    return ChannelFrame(cid, flags, peer.session.encrypt(plaintext))


def violations(events):
    return [(e.correlation_id, e.code) for e in events if isinstance(e, ProtocolViolation)]


# -- tables ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "table", [RPC_TRANSITIONS, SERVER_STREAM_TRANSITIONS, BYTE_STREAM_TRANSITIONS]
)
def test_tables_are_consistent(table):
    states = {s for s, _ in table} | set(table.values())
    assert StreamState.IDLE in states
    assert not [(s, e) for s, e in table if s in TERMINAL_STATES]  # terminal means terminal
    events = set(STREAM_EVENTS.values())
    assert {e for _, e in table} <= events
    # every state is reachable from IDLE
    seen, todo = {StreamState.IDLE}, [StreamState.IDLE]
    while todo:
        s = todo.pop()
        for (a, _), b in table.items():
            if a is s and b not in seen:
                seen.add(b)
                todo.append(b)
    assert seen == states


# -- RPC, ping, server streams --------------------------------------------------


def test_rpc_round_trip_and_ids():
    i, r = pair()
    c1 = i.send_request("info", b"q")
    c2 = i.send_request("info", b"q2")
    assert (c1, c2) == (1, 3)
    _, er = settle(i, r)
    assert er == [RequestReceived(1, "info", b"q"), RequestReceived(3, "info", b"q2")]
    assert i.streams == r.streams == {1: StreamState.OPEN, 3: StreamState.OPEN}
    r.send_error(3, "not_found", "no such thing")
    r.send_response(1, b"answer")
    ei, _ = settle(i, r)
    assert ei == [ErrorReceived(3, "not_found", "no such thing"), ResponseReceived(1, b"answer")]
    assert i.streams == r.streams == {}
    # the responder originates with even ids
    assert r.send_request("hello") == 2
    assert i.send_request("again") == 5


def test_ping_is_answered_by_the_endpoint():
    i, r = pair()
    c = i.ping()
    assert pump(i, r) == []  # the application never sees it
    assert pump(r, i) == [ResponseReceived(c, b"")]
    # the worker may ping too
    c = r.ping()
    assert pump(r, i) == []
    assert pump(i, r) == [ResponseReceived(c, b"")]
    # a ping with a payload is refused
    c = i.send_request("ping", b"x")
    assert pump(i, r) == []
    assert pump(r, i) == [ErrorReceived(c, "invalid_argument", "ping takes an empty payload")]
    assert i.streams == r.streams == {}


def test_server_stream_and_cancel():
    i, r = pair()
    c = i.start_stream("logs", b"since=1")
    _, er = settle(i, r)
    assert er == [StreamRequested(c, "logs", b"since=1")]
    r.send_stream_item(c, b"a")
    r.send_stream_item(c, b"b")
    r.end_stream(c)
    ei, _ = settle(i, r)
    assert ei == [StreamItemReceived(c, b"a"), StreamItemReceived(c, b"b"), StreamEnded(c)]
    # cancel: late items crossing the cancel are dropped silently
    c = i.start_stream("logs")
    settle(i, r)
    r.send_stream_item(c, b"late")
    i.cancel(c)
    assert i.streams == {}
    er = pump(i, r)
    assert er == [Cancelled(c)]
    assert pump(r, i) == []  # the late item: no event, no violation
    assert i.streams == r.streams == {}
    # a server that answered just as the client cancelled: the cancel is dropped silently
    c = i.send_request("slow")
    settle(i, r)
    r.send_response(c, b"done")
    i.cancel(c)
    assert pump(i, r) == []
    assert pump(r, i) == []


def test_chunked_messages_and_priority_lane():
    i, r = pair()
    big = os.urandom(200_000)
    c = i.send_request("upload", big)
    frames = i.frames_to_send()
    assert [f.flags for f in frames] == [MORE, MORE, MORE, FINAL]
    assert {f.correlation_id for f in frames} == {c}
    events = []
    for f in frames:
        events += r.receive_frame(f, 0.0)
    assert events == [RequestReceived(c, "upload", big)]
    # a long response does not hold up a ping answer or other single-frame messages
    r.send_response(c, big)
    out = r.frames_to_send(limit=1)
    assert out[0].flags == MORE and out[0].correlation_id == c
    p = i.ping()
    assert pump(i, r) == []  # the ping reaches the responder mid-response
    out += r.frames_to_send(limit=1)
    assert out[1].correlation_id == p and out[1].flags == FINAL  # the pong goes between chunks
    out += r.frames_to_send()
    events = [e for f in out for e in i.receive_frame(f, 0.0)]
    assert events == [ResponseReceived(p, b""), ResponseReceived(c, big)]


def test_messages_on_one_id_keep_their_order():
    i, r = pair()
    c = i.start_stream("dump")
    settle(i, r)
    big = bytes(100_000)
    r.send_stream_item(c, big)
    r.send_stream_item(c, b"small")  # single-frame, but must not overtake the big item
    r.end_stream(c)
    r.send_request("other")  # another id: may go first
    ei, _ = settle(i, r)
    assert ei == [
        RequestReceived(2, "other", b""),
        StreamItemReceived(c, big),
        StreamItemReceived(c, b"small"),
        StreamEnded(c),
    ]


def test_one_frame_or_one_byte_chunks_give_the_same_events():
    plaintext = cc.encode(cc.Request("exec", os.urandom(300)))
    i, r = pair()
    whole = r.receive_frame(forge(i, 1, plaintext), 0.0)
    i2, r2 = pair()
    events = []
    for k in range(len(plaintext)):
        events += r2.receive_frame(forge(i2, 1, plaintext[k : k + 1], MORE), 0.0)
    events += r2.receive_frame(forge(i2, 1, b"", FINAL), 0.0)
    assert whole == events == [RequestReceived(1, "exec", plaintext[6:])]


# -- byte streams and flow control -------------------------------------------------


def test_byte_stream_lifecycle():
    i, r = pair()
    b = i.open_byte_stream("tty", b"cols=80", window=1000)
    _, er = settle(i, r)
    assert er == [ByteStreamRequested(b, "tty", b"cols=80")]
    assert r.streams == {b: StreamState.OPENING}
    expect(
        StreamUsageError, r"cannot send data on byte-stream 1 as its opener", i.send_bytes, b, b"x"
    )
    r.accept_byte_stream(b, window=500)
    ei, _ = settle(i, r)
    assert ei == [ByteStreamAccepted(b)]
    assert i.window(b).send_credit == 500 and r.window(b).send_credit == 1000
    assert i.send_bytes(b, bytes(800)) == 500  # capped by the peer's window
    assert i.send_bytes(b, b"more") == 0  # window closed
    _, er = settle(i, r)
    assert er == [BytesReceived(b, bytes(500))]
    assert r.window(b).unconsumed == 500 and r.window(b).receive_credit == 0
    r.consume(b, 200)  # below half the window: batched, nothing sent
    assert not r.has_outbound
    r.consume(b, 100)
    ei, _ = settle(i, r)
    assert ei == [WindowOpened(b)]
    assert i.window(b).send_credit == 300
    i.send_eof(b)
    expect(StreamUsageError, r"cannot send data .* in state 'opener-eof'", i.send_bytes, b, b"x")
    _, er = settle(i, r)
    assert er == [ByteStreamEOF(b)]
    assert r.send_bytes(b, b"output") == 6
    r.send_eof(b)
    ei, _ = settle(i, r)
    assert ei == [BytesReceived(b, b"output"), ByteStreamEOF(b)]
    assert i.streams == r.streams == {}
    i.consume(b, 6)  # ignored once the stream is gone


def test_byte_stream_reject_and_reset():
    i, r = pair()
    b = r.open_byte_stream("tunnel", b"host:22")
    assert b == 2
    settle(i, r)
    i.send_error(b, "permission_denied", "only the owner")
    _, er = settle(i, r)
    assert er == [ErrorReceived(b, "permission_denied", "only the owner")]
    b = i.open_byte_stream("tunnel")
    settle(i, r)
    r.accept_byte_stream(b)
    r.send_bytes(b, b"in flight")
    i.reset(b, "cancelled", "user hit ^C")
    _, er = settle(i, r)
    assert er == [ByteStreamReset(b, "cancelled", "user hit ^C")]
    assert i.streams == r.streams == {}


def test_large_writes_are_split_into_single_frame_messages():
    i, r = pair()
    b = i.open_byte_stream("cat", window=10**6)
    settle(i, r)
    r.accept_byte_stream(b, window=10**6)
    settle(i, r)
    data = os.urandom(300_000)
    assert i.send_bytes(b, data) == 300_000
    frames = i.frames_to_send()
    assert all(f.flags == FINAL for f in frames) and len(frames) == 5
    got = b"".join(e.data for f in frames for e in r.receive_frame(f, 0.0))
    assert got == data


# -- rekey ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [CLASSIC, PQ], ids=str)
def test_rekey_with_traffic_in_flight(mode, generated_keypair):
    i, r = pair(mode, generated_keypair)
    c = i.send_request("before")
    settle(i, r)
    assert i.next_deadline() == 60.0  # the idle check
    assert i.poll(3599.0) == [] and not i.has_outbound
    assert i.poll(3600.0) == []
    assert i.rekey_in_flight
    i.send_request("sent-under-old-key-after-request")
    r.send_response(c, b"queued-before-ack")
    old = (i.session._send.key, i.session._recv.key)
    request_frames = i.frames_to_send()
    events = [e for f in request_frames for e in r.receive_frame(f, 3600.0)]
    assert events[0] == RekeyCompleted()
    i.send_request("sent-under-old-key-before-ack")  # the initiator has not seen the ack yet
    ei = pump(r, i, 3601.0)
    assert ResponseReceived(c, b"queued-before-ack") in ei and RekeyCompleted() in ei
    assert (i.session._send.key, i.session._recv.key) != old
    assert i.session._send.key == r.session._recv.key and i.session._recv.key == r.session._send.key
    _, er = settle(i, r, 3605.0)  # old-key frames arrive inside the 10 s grace window
    assert [e.method for e in er if isinstance(e, RequestReceived)] == [
        "sent-under-old-key-before-ack"
    ]
    assert not i.rekey_in_flight and i._rekey.initiator_policy.key_since == 3601.0
    # and traffic goes on under the new keys, both ways
    c2 = i.send_request("after")
    settle(i, r, 3606.0)
    r.send_response(c2, b"ok")
    ei, _ = settle(i, r, 3606.0)
    assert ResponseReceived(c2, b"ok") in ei


def test_rekey_reject_then_retry():
    i_t = RekeyTimings(max_age=60, min_interval=30, hard_ceiling=1000)
    r_t = RekeyTimings(max_age=90, min_interval=80, hard_ceiling=1000)
    i, r = pair(i_kw={"rekey_timings": i_t}, r_kw={"rekey_timings": r_t})
    i.poll(60.0)
    settle(i, r, 60.0)
    assert not i.rekey_in_flight and i.next_deadline() == 80.0  # retry_after_ms = 20000
    assert i.poll(79.0) == [] and not i.has_outbound
    i.poll(80.0)
    ei, er = settle(i, r, 80.0)
    assert ei == er == [RekeyCompleted()]


def test_rekey_timeout_closes_the_channel():
    i, _ = pair()
    i.poll(3600.0)
    i.frames_to_send()  # the request is lost in the network
    assert i.next_deadline() == 3610.0
    events = i.poll(3610.0)
    assert events == [
        ChannelClosed("rekey_expired", "no answer to the rekey request within 10 s; re-handshake")
    ]
    assert i.frames_to_send() == [ChannelFrame(CLOSE_CORRELATION_ID, CLOSE, b"")]
    assert i.closed and i.next_deadline() is None
    expect(ChannelClosedError, "the channel is closed", i.send_request, "x")


def test_hard_ceiling_closes_the_channel():
    t = RekeyTimings(max_age=60, min_interval=30, hard_ceiling=100)
    r_t = RekeyTimings(max_age=5000, min_interval=5000, hard_ceiling=6000)
    i, r = pair(i_kw={"rekey_timings": t}, r_kw={"rekey_timings": r_t})
    i.poll(60.0)
    settle(i, r, 60.0)  # rejected: retry at 5060 s, far past the ceiling
    events = i.poll(100.0)
    assert [e.code for e in events] == ["rekey_expired"]
    assert "hard ceiling" in events[0].reason


def test_soft_limit_rekeys_at_once():
    i, r = pair(send_n=2**31)
    assert i.session.rekey_wanted
    assert i.next_deadline() == 0.0
    i.poll(0.0)
    ei, er = settle(i, r)
    assert ei == er == [RekeyCompleted()]  # soft requests are never rejected
    assert i.session.send_nonce == 0 and not i.session.rekey_wanted


# -- hostile peers -----------------------------------------------------------------


def test_corrupted_ciphertext_closes_the_channel_with_one_close_frame():
    i, r = pair()
    c = r.send_request("pending")
    good = forge(i, 1, cc.encode(cc.Request("x")))
    bad = ChannelFrame(1, FINAL, good.ciphertext[:-1] + bytes([good.ciphertext[-1] ^ 1]))
    events = r.receive_frame(bad, 0.0)
    assert len(events) == 1 and events[0].code == "decrypt_failed"
    assert "failed authentication" in events[0].reason
    # the queued request is dropped; exactly one CLOSE goes out
    assert r.frames_to_send() == [ChannelFrame(CLOSE_CORRELATION_ID, CLOSE, b"")]
    assert r.frames_to_send() == []
    assert r.receive_frame(good, 0.0) == []  # ignored from now on
    expect(ChannelClosedError, "the channel is closed", r.send_response, c, b"")
    assert r.session.closed and r.streams == {}


def test_close_frame_from_the_peer():
    _, r = pair()
    r.send_request("x")
    events = r.receive_frame(ChannelFrame(7, CLOSE, b"ignored"), 0.0)
    assert events == [ChannelClosed("closed_by_peer", "the peer closed the channel")]
    assert r.frames_to_send() == []  # nothing is sent back, not even the queued request
    assert r.session.closed and r.next_deadline() is None


def test_local_close_flushes_what_was_queued():
    i, r = pair()
    c = i.send_request("last-words")
    i.close()
    frames = i.frames_to_send()
    assert [f.flags for f in frames] == [FINAL, CLOSE]
    events = [e for f in frames for e in r.receive_frame(f, 0.0)]
    assert events == [
        RequestReceived(c, "last-words", b""),
        ChannelClosed("closed_by_peer", "the peer closed the channel"),
    ]


def test_unknown_flags_are_dropped_after_decrypting():
    i, r = pair()
    events = r.receive_frame(forge(i, 1, cc.encode(cc.Request("x")), 3), 0.0)
    assert violations(events) == [(1, "channel_protocol_error")]
    assert events[0].message == "unknown frame flags 3; frame dropped"
    # the nonce advanced: the next frame decrypts
    assert r.receive_frame(forge(i, 3, cc.encode(cc.Request("y"))), 0.0) == [
        RequestReceived(3, "y", b"")
    ]


def test_correlation_id_zero():
    i, r = pair()
    events = r.receive_frame(forge(i, 0, cc.encode(cc.Request("x"))), 0.0)
    assert events == [
        ProtocolViolation(
            0, "channel_protocol_error", "correlation id 0 is reserved; frame dropped"
        )
    ]
    assert not r.has_outbound


def test_answers_for_unknown_or_finished_requests():
    i, r = pair()
    c = i.send_request("q")
    settle(i, r)
    events = i.receive_frame(forge(r, 101, cc.encode(cc.Response(b"?"))), 0.0)
    assert events == [
        ProtocolViolation(
            101, "unexpected_stream_message", "RESPONSE for unknown correlation id 101"
        )
    ]
    r.send_response(c, b"one")
    settle(i, r)
    events = i.receive_frame(forge(r, c, cc.encode(cc.Response(b"two"))), 0.0)
    assert violations(events) == [(c, "unexpected_stream_message")]
    assert events[0].message == "RESPONSE for rpc 1, which already ended (answered)"
    assert not i.has_outbound  # no answer to an answer


def test_wrong_message_for_the_stream_affects_that_stream_only():
    i, r = pair()
    c1 = i.send_request("one")
    c2 = i.send_request("two")
    settle(i, r)
    events = i.receive_frame(forge(r, c1, cc.encode(cc.StreamItem(b"?"))), 0.0)
    assert events == [
        ProtocolViolation(
            c1, "unexpected_stream_message", "STREAM_ITEM is not valid from the acceptor of rpc 1"
        )
    ]
    assert i.streams == {c2: StreamState.OPEN}
    _, er = settle(i, r)
    assert er == [Cancelled(c1)]  # the client told the server
    r.send_response(c2, b"fine")
    ei, _ = settle(i, r)
    assert ei == [ResponseReceived(c2, b"fine")]


def test_a_request_from_the_wrong_side_or_reusing_an_id():
    i, r = pair()
    events = r.receive_frame(forge(i, 2, cc.encode(cc.Request("x"))), 0.0)
    assert violations(events) == [(2, "unexpected_stream_message")]
    assert "the initiator opens streams with odd ids" in events[0].message
    assert not r.has_outbound
    c = i.send_request("first")
    settle(i, r)
    events = r.receive_frame(forge(i, c, cc.encode(cc.Request("again"))), 0.0)
    assert violations(events) == [(c, "unexpected_stream_message")]
    assert "reuses correlation id 1, which is still open" in events[0].message
    ei, _ = settle(i, r)
    assert ei == [ErrorReceived(c, "unexpected_stream_message", events[0].message)]


def test_flow_control_violations_reset_only_that_stream():
    i, r = pair()
    b1 = i.open_byte_stream("a", window=10)
    b2 = i.open_byte_stream("b", window=10)
    settle(i, r)
    r.accept_byte_stream(b1)
    r.accept_byte_stream(b2)
    settle(i, r)
    events = i.receive_frame(forge(r, b1, cc.encode(cc.BytesData(bytes(11)))), 0.0)
    assert events == [
        ProtocolViolation(
            b1,
            "flow_control_error",
            "byte stream 1: 11 bytes of data with only 10 bytes of window left",
        )
    ]
    _, er = settle(i, r)
    assert er == [ByteStreamReset(b1, "flow_control_error", events[0].message)]
    assert i.streams == r.streams == {b2: StreamState.OPEN}
    # a window update that overflows 2^32 - 1
    events = r.receive_frame(forge(i, b2, cc.encode(cc.WindowUpdate(2**32 - 1))), 0.0)
    assert violations(events) == [(b2, "flow_control_error")]
    assert "overflows the window" in events[0].message


def test_data_after_eof_is_a_violation():
    i, r = pair()
    b = i.open_byte_stream("a")
    settle(i, r)
    r.accept_byte_stream(b)
    r.send_eof(b)
    settle(i, r)
    events = i.receive_frame(forge(r, b, cc.encode(cc.BytesData(b"x"))), 0.0)
    assert violations(events) == [(b, "unexpected_stream_message")]
    assert events[0].message == "BYTES_DATA is not allowed on byte-stream 1 in state 'acceptor-eof'"
    _, er = settle(i, r)
    assert [type(e) for e in er] == [ByteStreamReset]


def test_malformed_messages():
    i, r = pair()
    c = i.send_request("live")
    settle(i, r)
    # unknown kind on a live stream: that stream is failed, with an ERROR to the requester
    events = r.receive_frame(forge(i, c, b"\x0f"), 0.0)
    assert events == [
        ProtocolViolation(c, "channel_protocol_error", "unknown channel message kind 0x0f")
    ]
    ei, _ = settle(i, r)
    assert ei == [ErrorReceived(c, "channel_protocol_error", "unknown channel message kind 0x0f")]
    # a malformed new request gets an ERROR answer too
    events = r.receive_frame(forge(i, 99, b"\x01\x04Ping"), 0.0)
    assert violations(events) == [(99, "channel_protocol_error")]
    ei, _ = settle(i, r)  # the initiator never sent 99 (it was forged): it flags the answer
    assert ei == [
        ProtocolViolation(99, "unexpected_stream_message", "ERROR for unknown correlation id 99")
    ]
    # still working
    c = i.send_request("ok")
    _, er = settle(i, r)
    assert er == [RequestReceived(c, "ok", b"")]


def test_oversized_message_fails_its_id_only():
    i, r = pair(r_kw={"max_message_size": 65519})  # the peers disagree on the limit
    c_big = i.send_request("big", bytes(70_000))
    c = i.send_request("small")
    frames = i.frames_to_send()
    assert [(f.correlation_id, f.flags) for f in frames] == [
        (c, FINAL),
        (c_big, MORE),
        (c_big, FINAL),
    ]
    events = [e for f in frames for e in r.receive_frame(f, 0.0)]
    assert events == [
        RequestReceived(c, "small", b""),
        ProtocolViolation(
            c_big,
            "resource_exhausted",
            "correlation id 1: chunked message reached 70005 bytes; the limit is 65519",
        ),
    ]
    ei, _ = settle(i, r)
    assert ei == [ErrorReceived(c_big, "resource_exhausted", events[1].message)]
    assert r.streams == {c: StreamState.OPEN}


def test_fifth_incomplete_message_at_the_endpoint():
    i, r = pair()
    for cid in (1, 3, 5, 7):
        assert r.receive_frame(forge(i, cid, b"\x02", MORE), 0.0) == []
    events = r.receive_frame(forge(i, 9, b"\x02", MORE), 0.0)
    assert violations(events) == [(9, "resource_exhausted")]


def test_too_many_streams_from_the_peer():
    i, r = pair(r_kw={"max_streams": 2})
    for _ in range(3):
        i.send_request("work")
    ei, er = settle(i, r)
    assert [type(e) for e in er] == [RequestReceived, RequestReceived, ProtocolViolation]
    assert ei == [
        ErrorReceived(
            5, "resource_exhausted", "REQUEST 5 refused: the peer already has 2 open streams"
        )
    ]
    r.send_response(1, b"")
    settle(i, r)
    i.send_request("work")
    _, er = settle(i, r)
    assert er == [RequestReceived(7, "work", b"")]


@pytest.mark.parametrize(
    ("at", "plaintext", "reason"),
    [
        ("initiator", b"\x10" + bytes(32), "REKEY_REQUEST sent to the initiator"),
        ("initiator", b"\x11" + bytes(32), "REKEY_ACK 1 does not answer a rekey request"),
        ("initiator", b"\x12" + bytes(4), "REKEY_REJECT 1 does not answer a rekey request"),
        ("responder", b"\x11" + bytes(32), "REKEY_ACK sent to the responder"),
        ("responder", b"\x10" + bytes(33), "malformed rekey message: REKEY_REQUEST mlkem_ct"),
        ("responder", b"\x11" + bytes(3), "malformed rekey message: REKEY_ACK body too short"),
        ("responder", b"\x10" + bytes(32), "low-order|all-zero"),
    ],
)
def test_bad_rekey_messages_close_the_channel(at, plaintext, reason):
    i, r = pair()
    me, peer = (i, r) if at == "initiator" else (r, i)
    events = me.receive_frame(forge(peer, 1, plaintext), 3600.0)  # old enough to be accepted
    assert len(events) == 1 and isinstance(events[0], ChannelClosed)
    assert events[0].code == "rekey_failed"
    import re

    assert re.search(reason, events[0].reason), events[0].reason
    assert me.frames_to_send() == [ChannelFrame(CLOSE_CORRELATION_ID, CLOSE, b"")]


def test_post_quantum_rekey_without_a_ciphertext_closes(generated_keypair):
    i, r = pair(PQ, generated_keypair)
    events = r.receive_frame(forge(i, 1, b"\x10" + os.urandom(32)), 3600.0)
    assert [(type(e), e.code) for e in events] == [(ChannelClosed, "rekey_failed")]
    assert "mlkem_ct must be 1568 bytes" in events[0].reason


def test_a_bad_rekey_ack_closes_the_initiator():
    i, r = pair()
    i.poll(3600.0)
    (frame,) = i.frames_to_send()
    events = i.receive_frame(forge(r, frame.correlation_id, b"\x11" + bytes(32)), 3600.0)
    assert [e.code for e in events] == ["rekey_failed"]


def test_unanswered_frames_do_not_grow_the_queue_forever():
    i, r = pair()
    bad_ping = cc.encode(cc.Request("ping", b"x"))  # each is answered with a 47-byte ERROR
    closed = []
    cid = 1
    while not closed:
        closed = [
            e for e in r.receive_frame(forge(i, cid, bad_ping), 0.0) if isinstance(e, ChannelClosed)
        ]
        cid += 2
        assert r.outbound_bytes <= CONTROL_RESERVE
    assert closed[0].code == "outbound_overflow"
    assert r.frames_to_send() == [ChannelFrame(CLOSE_CORRELATION_ID, CLOSE, b"")]


def test_nonce_exhaustion_while_sending_closes():
    k1, k2 = os.urandom(32), os.urandom(32)
    ep = ChannelEndpoint(
        TransportSession(k1, k2, send_n=2**32), role="responder", mode=CLASSIC, now=0.0
    )
    ep.send_request("x")
    assert ep.frames_to_send() == [ChannelFrame(CLOSE_CORRELATION_ID, CLOSE, b"")]
    events = ep.poll(1.0)
    assert [e.code for e in events] == ["nonce_exhausted"]


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 12),
            st.sampled_from([0, 0, 0, 1, 1, 2, 3, 255]),
            st.binary(max_size=40)
            | st.builds(lambda k, b: bytes([k]) + b, st.integers(1, 0x13), st.binary(max_size=40)),
        ),
        max_size=25,
    )
)
def test_garbage_yields_only_documented_events(frames):
    """Whatever a hostile peer sends, the endpoint only emits events -- never raises."""
    i, r = pair()
    i.send_request("mine")
    b = i.open_byte_stream("t", window=16)
    settle(i, r)
    r.accept_byte_stream(b)
    pump(r, i)
    for target, peer in ((r, i), (i, r)):
        for cid, flags, data in frames:
            if target.closed or peer.closed:
                break
            frame = ChannelFrame(cid, flags, b"" if flags == 2 else peer.session.encrypt(data))
            events = target.receive_frame(frame, 0.0)
            # the answers go back to the peer, which must cope with them as well
            for out in target.frames_to_send():
                events += peer.receive_frame(out, 0.0)
            for event in events:
                if isinstance(event, ProtocolViolation):
                    assert event.code in {
                        "channel_protocol_error",
                        "unexpected_stream_message",
                        "flow_control_error",
                        "resource_exhausted",
                    }
                if isinstance(event, ChannelClosed):
                    assert event.code in {"closed_by_peer", "rekey_failed"}


def test_correlation_ids_wrap_and_skip_ids_in_use():
    i, r = pair()
    first = i.send_request("long")
    i._registry.next_cid = 2**64 - 1
    assert i.send_request("x") == 2**64 - 1
    assert i.send_request("y") == 3  # wrapped; 1 is still in use
    settle(i, r)
    assert set(r.streams) == {1, 3, 2**64 - 1}
    r.send_response(first, b"")
    ei, _ = settle(i, r)
    assert ei == [ResponseReceived(first, b"")]


def test_closing_forgets_streams():
    i, r = pair()
    i.send_request("x")
    b = i.open_byte_stream("y")
    settle(i, r)
    assert r.streams
    i.close()
    assert i.streams == {} and i.next_deadline() is None
    i.consume(b, 0)  # ignored
    expect(ChannelClosedError, r"the channel is closed", i.send_bytes, b, b"x")
    _, er = settle(i, r)
    assert er == [ChannelClosed("closed_by_peer", "the peer closed the channel")]
    assert r.streams == {} and r.closed and r.session.closed


# -- local misuse -------------------------------------------------------------------


def test_local_misuse_raises_documented_errors():
    i, r = pair()
    c = i.send_request("q")
    expect(StreamUsageError, r"no open stream has correlation id 99", i.send_response, 99, b"")
    expect(StreamUsageError, r"the opener of rpc 1 cannot send RESPONSE", i.send_response, c, b"")
    expect(StreamUsageError, r"1 is a rpc, not a byte stream", i.send_bytes, c, b"x")
    expect(
        StreamUsageError, r"the opener of rpc 1 cannot send STREAM_ITEM", i.send_stream_item, c, b""
    )
    expect(StreamUsageError, r"the opener of rpc 1 cannot send BYTES_RESET", i.reset, c, "x")
    expect(InvalidMessage, r"method 'Bad' does not match", i.send_request, "Bad")
    expect(InvalidMessage, r"window must be an integer", i.open_byte_stream, "t", window=0)
    settle(i, r)
    r.send_response(c, b"")
    expect(StreamUsageError, r"rpc 1 has ended \(answered\)", r.send_response, c, b"")
    expect(StreamUsageError, r"no open stream has correlation id 99", r.send_error, 99, "c")
    c2 = i.send_request("q")
    settle(i, r)
    expect(InvalidMessage, r"error code 'bad code'", r.send_error, c2, "bad code")
    assert r.streams == {c2: StreamState.OPEN}  # nothing changed
    b = i.open_byte_stream("t")
    settle(i, r)
    r.accept_byte_stream(b)
    settle(i, r)
    expect(StreamUsageError, r"consume\(5\) but only 0 bytes", i.consume, b, 5)
    expect(StreamUsageError, r"non-negative integer", i.consume, b, -1)
    expect(StreamUsageError, r"cannot send CANCEL|cannot send", i.cancel, b)


def test_size_and_budget_limits():
    i, r = pair(i_kw={"max_message_size": 65519, "max_outbound_bytes": 100_000})
    expect(
        MessageTooLarge,
        r"REQUEST encodes to 65520 bytes; this channel's max_message_size is 65519",
        i.send_request,
        "abc",
        bytes(65515),
    )
    i.send_request("abc", bytes(60000))
    expect(
        OutboundQueueFull,
        r"60005 bytes are already queued \(budget 100000\)",
        i.send_request,
        "abc",
        bytes(60000),
    )
    b = i.open_byte_stream("t", window=10)
    settle(i, r)
    r.accept_byte_stream(b, window=10**6)
    settle(i, r)
    i.send_request("abc", bytes(60000))
    assert i.send_bytes(b, bytes(50000)) < 50000  # capped by the budget, not an error
    settle(i, r)
    assert i.outbound_bytes == 0


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"role": "client"}, r"role must be 'initiator' or 'responder'"),
        ({"max_message_size": 10}, r"max_message_size must be an integer in 65519..67108864"),
        ({"max_streams": 0}, r"max_streams must be a positive integer"),
        ({"max_outbound_bytes": 100}, r"max_outbound_bytes must be an integer >= max_message_size"),
        ({"max_incomplete": 0}, r"max_incomplete must be a positive integer"),
        ({"mode": PQ}, r"a post-quantum initiator needs the worker's 1568-byte ML-KEM public key"),
        (
            {"mode": PQ, "role": "responder"},
            r"a post-quantum responder needs its ML-KEM private key",
        ),
    ],
)
def test_configuration_is_validated(kw, pattern):
    args = {"role": "initiator", "mode": CLASSIC, "now": 0.0, **kw}
    session = TransportSession(os.urandom(32), os.urandom(32))
    expect(ConfigError, pattern, ChannelEndpoint, session, **args)


def test_mode_names_are_accepted_like_everywhere_else():
    session = TransportSession(os.urandom(32), os.urandom(32))
    endpoint = ChannelEndpoint(session, role="initiator", mode=" Classic ", now=0.0)
    assert endpoint.mode is CLASSIC
    expect(
        InvalidEncryptionMode,
        "unknown encryption mode 'quantum'",
        ChannelEndpoint,
        session,
        role="initiator",
        mode="quantum",
        now=0.0,
    )


def test_only_leapcore_errors_escape_local_calls():
    """A broad sweep of nonsense calls: each one raises a LeapcoreError or succeeds."""
    i, _ = pair()
    calls = [
        lambda: i.send_response(1, b""),
        lambda: i.send_error(1, "c"),
        lambda: i.end_stream(5),
        lambda: i.cancel(7),
        lambda: i.accept_byte_stream(9),
        lambda: i.send_bytes(9, b"x"),
        lambda: i.send_eof(9),
        lambda: i.reset(9, "c"),
        lambda: i.window(9),
        lambda: i.send_request("x", "str"),
    ]
    for call in calls:
        with pytest.raises(LeapcoreError):
            call()


# -- sans-IO ----------------------------------------------------------------------


def test_channel_modules_do_not_import_io_frameworks():
    code = (
        "import json, sys\n"
        "import leapcore.proto.channel_mux, leapcore.proto.channel_codec, leapcore.proto.chunking\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"trio", "anyio", "websockets", "h2", "sniffio", "socket", "asyncio"}
