"""Channel message encoding (leapcore.proto.channel_codec): round trips and every decoder error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.helpers import expect

from leapcore.errors import ChannelProtocolError, InvalidMessage
from leapcore.proto import channel_codec as cc

methods = st.from_regex(r"[a-z][a-z0-9_.-]{0,63}", fullmatch=True)
codes = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
texts = st.text(max_size=300).filter(lambda t: len(t.encode("utf-8")) <= cc.MAX_ERROR_MESSAGE)
payloads = st.binary(max_size=2000)
windows = st.integers(1, cc.MAX_WINDOW)

messages = st.one_of(
    st.builds(cc.Request, methods, payloads),
    st.builds(cc.Response, payloads),
    st.builds(cc.ErrorReply, codes, texts),
    st.builds(cc.StreamRequest, methods, payloads),
    st.builds(cc.StreamItem, payloads),
    st.just(cc.StreamEnd()),
    st.just(cc.Cancel()),
    st.builds(cc.BytesOpen, windows, methods, payloads),
    st.builds(cc.BytesAccept, windows),
    st.builds(cc.BytesData, st.binary(min_size=1, max_size=2000)),
    st.builds(cc.WindowUpdate, windows),
    st.just(cc.BytesEof()),
    st.builds(cc.BytesReset, codes, texts),
    st.builds(
        cc.RekeyRequest,
        st.binary(min_size=32, max_size=32),
        st.sampled_from([b"", bytes(1568), bytes(range(256)) * 6 + bytes(32)]),
    ),
    st.builds(cc.RekeyAck, st.binary(min_size=32, max_size=32)),
    st.builds(cc.RekeyReject, st.integers(0, 2**32 - 1)),
)


@given(messages)
def test_round_trip(message):
    data = cc.encode(message)
    assert data[0] == cc.kind_of(message)
    assert cc.decode(data) == message


def test_every_kind_is_covered():
    assert {m.value for m in cc.MessageKind} == {*range(0x01, 0x0F), 0x10, 0x11, 0x12}


@given(
    st.binary(max_size=80)
    | st.builds(lambda k, b: bytes([k]) + b, st.integers(0, 0x13), st.binary(max_size=80))
)
def test_decode_is_strict_and_canonical(data):
    """Any input either fails with ChannelProtocolError or is the one encoding of its message."""
    try:
        message = cc.decode(data)
    except ChannelProtocolError as exc:
        assert type(exc) is ChannelProtocolError and exc.code == "channel_protocol_error"
        return
    assert cc.encode(message) == data


# -- exact layouts -------------------------------------------------------------


def test_layouts():
    assert cc.encode(cc.Request("ping", b"")) == b"\x01\x04ping"
    assert cc.encode(cc.Request("a.b", b"xy")) == b"\x01\x03a.bxy"
    assert cc.encode(cc.Response(b"ok")) == b"\x02ok"
    assert cc.encode(cc.ErrorReply("not_found", "nö")) == b"\x03\x09not_found\x00\x03n\xc3\xb6"
    assert cc.encode(cc.StreamRequest("logs", b"\x00")) == b"\x04\x04logs\x00"
    assert cc.encode(cc.StreamItem(b"")) == b"\x05"
    assert cc.encode(cc.StreamEnd()) == b"\x06"
    assert cc.encode(cc.Cancel()) == b"\x07"
    assert cc.encode(cc.BytesOpen(65536, "tty", b"p")) == b"\x08\x00\x01\x00\x00\x03ttyp"
    assert cc.encode(cc.BytesAccept(2**32 - 1)) == b"\x09\xff\xff\xff\xff"
    assert cc.encode(cc.BytesData(b"abc")) == b"\x0aabc"
    assert cc.encode(cc.WindowUpdate(258)) == b"\x0b\x00\x00\x01\x02"
    assert cc.encode(cc.BytesEof()) == b"\x0c"
    assert cc.encode(cc.BytesReset("x", "")) == b"\x0d\x01x\x00\x00"
    assert cc.encode(cc.RekeyRequest(bytes(32))) == b"\x10" + bytes(32)
    assert (
        cc.encode(cc.RekeyRequest(bytes(32), b"\x01" * 1568))
        == b"\x10" + bytes(32) + b"\x01" * 1568
    )
    assert cc.encode(cc.RekeyAck(b"\x02" * 32)) == b"\x11" + b"\x02" * 32
    assert cc.encode(cc.RekeyReject(60000)) == b"\x12\x00\x00\xea\x60"


def test_limits_are_inclusive():
    longest = "a" * 64
    assert cc.decode(cc.encode(cc.Request(longest))) == cc.Request(longest)
    big = "é" * 2048  # 4096 bytes of UTF-8
    assert cc.decode(cc.encode(cc.ErrorReply("c" * 64, big))) == cc.ErrorReply("c" * 64, big)
    data = bytes(cc.MAX_BYTES_DATA)
    assert cc.decode(cc.encode(cc.BytesData(data))) == cc.BytesData(data)
    assert len(cc.encode(cc.BytesData(data))) == 65519


# -- decoder errors: class, code and message ----------------------------------

U32 = struct.Struct(">I").pack
BAD = ChannelProtocolError

DECODE_ERRORS = [
    (b"", "empty channel message: the kind byte is missing"),
    (b"\x00", r"unknown channel message kind 0x00"),
    (b"\x0f", r"unknown channel message kind 0x0f"),
    (b"\x13rest", r"unknown channel message kind 0x13"),
    (b"\xff", r"unknown channel message kind 0xff"),
    (b"\x01", r"REQUEST body too short: method length needs 1 bytes at offset 0, 0 left"),
    (b"\x01\x05pin", r"REQUEST body too short: method needs 5 bytes at offset 1, 3 left"),
    (b"\x01\x00", r"method '' does not match"),
    (b"\x01\x04Ping", r"method 'Ping' does not match \^\[a-z\]"),
    (b"\x01\x041abc", r"method '1abc' does not match"),
    (b"\x01\x04a bc", r"method 'a bc' does not match"),
    (b"\x01\x41" + b"a" * 65, r"method 'a{65}' does not match"),
    (b"\x01\x02\xc3\x28", r"REQUEST: method is not valid UTF-8 \(byte 0\)"),
    (b"\x01\x02\xc3\xa9", r"method 'é' does not match"),
    (b"\x04\x02ab\xff" * 1, None),  # payload may be anything: valid
    (b"\x04", r"STREAM_REQUEST body too short: method length"),
    (b"\x03", r"ERROR body too short: code length needs 1 bytes"),
    (b"\x03\x00\x00\x00", r"error code '' must be 1..64 characters"),
    (b"\x03\x03a b\x00\x00", r"error code 'a b' must be 1..64 characters of \[A-Za-z0-9_.-\]"),
    (b"\x03\x41" + b"c" * 65 + b"\x00\x00", r"error code 'c{65}' must be 1..64"),
    (b"\x03\x02\xff\xfe\x00\x00", r"ERROR: code is not valid UTF-8 \(byte 0\)"),
    (b"\x03\x01c", r"ERROR body too short: message length needs 2 bytes at offset 2, 0 left"),
    (b"\x03\x01c\x10\x01", r"ERROR: message length 4097 exceeds 4096"),
    (b"\x03\x01c\x00\x05abc", r"ERROR body too short: message needs 5 bytes at offset 4, 3 left"),
    (b"\x03\x01c\x00\x02\xc3\x28", r"ERROR: message is not valid UTF-8 \(byte 0\)"),
    (b"\x03\x01c\x00\x00!", r"ERROR body too long: 1 unexpected trailing byte\(s\)"),
    (b"\x0d\x01c\x00\x00!!", r"BYTES_RESET body too long: 2 unexpected trailing byte\(s\)"),
    (
        b"\x0d\x01c\x00\x02x",
        r"BYTES_RESET body too short: message needs 2 bytes at offset 4, 1 left",
    ),
    (b"\x0d\x01c\x00\x03\xed\xa0\x80", r"BYTES_RESET: message is not valid UTF-8 \(byte 0\)"),
    (b"\x06\x00", r"STREAM_END body too long: 1 unexpected trailing byte\(s\)"),
    (b"\x07x", r"CANCEL body too long: 1 unexpected"),
    (b"\x0cxy", r"BYTES_EOF body too long: 2 unexpected"),
    (b"\x08\x00\x00\x00", r"BYTES_OPEN body too short: initial_window needs 4 bytes"),
    (b"\x08" + U32(0) + b"\x03tty", r"initial_window must be an integer in 1..4294967295, got 0"),
    (b"\x08" + U32(1), r"BYTES_OPEN body too short: method length"),
    (b"\x08" + U32(1) + b"\x03TTY", r"method 'TTY' does not match"),
    (b"\x09" + U32(0), r"initial_window must be an integer in 1..4294967295, got 0"),
    (
        b"\x09\x00\x01",
        r"BYTES_ACCEPT body too short: initial_window needs 4 bytes at offset 0, 2 left",
    ),
    (b"\x09" + U32(5) + b"\x00", r"BYTES_ACCEPT body too long: 1 unexpected"),
    (b"\x0a", r"BYTES_DATA body too short: it carries no data"),
    (b"\x0b" + U32(0), r"increment must be an integer in 1..4294967295, got 0"),
    (b"\x0b\x00", r"WINDOW_UPDATE body too short: increment needs 4 bytes"),
    (b"\x0b" + U32(1) + b"\x00", r"WINDOW_UPDATE body too long"),
    (
        b"\x10" + bytes(31),
        r"REKEY_REQUEST body too short: dh_pub needs 32 bytes at offset 0, 31 left",
    ),
    (b"\x10" + bytes(33), r"REKEY_REQUEST mlkem_ct must be 0 or 1568 bytes, got 1"),
    (b"\x10" + bytes(32 + 1567), r"mlkem_ct must be 0 or 1568 bytes, got 1567"),
    (b"\x10" + bytes(32 + 1569), r"mlkem_ct must be 0 or 1568 bytes, got 1569"),
    (b"\x11" + bytes(31), r"REKEY_ACK body too short: dh_pub needs 32 bytes"),
    (b"\x11" + bytes(33), r"REKEY_ACK body too long: 1 unexpected"),
    (b"\x12\x00\x00\x00", r"REKEY_REJECT body too short: retry_after_ms needs 4 bytes"),
    (b"\x12" + U32(1) + b"\x00", r"REKEY_REJECT body too long"),
]


@pytest.mark.parametrize(("data", "pattern"), DECODE_ERRORS, ids=lambda v: repr(v)[:40])
def test_decode_errors(data, pattern):
    if pattern is None:
        cc.decode(data)
        return
    expect(BAD, pattern, cc.decode, data)


# -- encoder: local input is checked with the same rules -------------------------


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        (cc.Request("Bad"), r"method 'Bad' does not match"),
        (cc.Request("a" * 65), r"does not match"),
        (cc.Request(b"ping"), r"method b'ping' does not match"),  # type: ignore[arg-type]
        (cc.Request("ping", "text"), r"payload must be bytes, got str"),  # type: ignore[arg-type]
        (cc.StreamRequest(""), r"method '' does not match"),
        (cc.BytesOpen(0, "tty"), r"initial_window must be an integer in 1..4294967295, got 0"),
        (cc.BytesOpen(2**32, "tty"), r"initial_window must be an integer"),
        (cc.BytesOpen(True, "tty"), r"initial_window must be an integer"),  # type: ignore[arg-type]
        (cc.BytesAccept(-1), r"initial_window must be an integer"),
        (cc.WindowUpdate(0), r"window increment must be an integer in 1..4294967295, got 0"),
        (cc.BytesData(b""), r"BYTES_DATA carries 1..65518 bytes, got 0"),
        (cc.BytesData(bytes(65519)), r"BYTES_DATA carries 1..65518 bytes, got 65519"),
        (cc.ErrorReply("", "x"), r"error code '' must be 1..64"),
        (cc.ErrorReply("a/b"), r"error code 'a/b' must be"),
        (
            cc.ErrorReply("c", "x" * 4097),
            r"error message is 4097 bytes of UTF-8; the limit is 4096",
        ),
        (cc.BytesReset("c", "\ud800"), r"error message is not encodable as UTF-8 \(character 0\)"),
        (cc.ErrorReply("c", 5), r"error message must be a string, got int"),  # type: ignore[arg-type]
        (cc.RekeyRequest(bytes(31)), r"rekey dh_pub must be 32 bytes, got 31"),
        (cc.RekeyRequest(bytes(32), bytes(10)), r"rekey mlkem_ct must be 0 or 1568 bytes, got 10"),
        (cc.RekeyAck(bytes(33)), r"rekey dh_pub must be 32 bytes, got 33"),
        (cc.RekeyReject(-1), r"retry_after_ms must be an integer in 0..4294967295"),
        (cc.RekeyReject(2**32), r"retry_after_ms must be an integer"),
    ],
    ids=repr,
)
def test_encode_errors(message, pattern):
    expect(InvalidMessage, pattern, cc.encode, message)


def test_encode_refuses_other_objects():
    expect(InvalidMessage, r"not a channel message: str", cc.encode, "hello")  # type: ignore[arg-type]


def _outcome(decode_fn, arg):
    try:
        return decode_fn(arg)
    except ChannelProtocolError as exc:
        return ("error", str(exc))


@given(
    st.one_of(
        messages.map(cc.encode),
        st.builds(lambda k, b: bytes([k]) + b, st.integers(0, 0x13), st.binary(max_size=600)),
    ),
    st.lists(st.integers(0, 2100), max_size=6),
)
def test_decoding_the_chunks_equals_decoding_the_joined_message(data, cuts):
    """Any split — empty chunks, a header cut in two, a hostile first chunk of one byte —
    decodes exactly as the joined message does: the same message or the same error."""
    points = sorted(min(c, len(data)) for c in cuts)
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert _outcome(cc.decode_chunks, chunks) == _outcome(cc.decode, data)
