"""The link codec: framing, strict control records, binary data frames."""

from __future__ import annotations

import json
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.helpers import expect
from support.linkgen import MESSAGES

from leapcore.errors import ConfigError, FrameTooLarge, LinkProtocolError, LocalError
from leapcore.proto.link_codec import (
    CONTROL_TYPES,
    MAX_CONTROL_BODY,
    ChannelAccept,
    ChannelClose,
    ChannelData,
    ChannelReject,
    Heartbeat,
    HubRequest,
    HubResponse,
    LinkDecoder,
    LinkMessage,
    Register,
    encode,
    encode_many,
)
from leapcore.proto.link_fields import (
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_NAME,
    MAX_PARAMS,
    MAX_SECRET,
    MAX_TEXT,
    MAX_VERSION,
    check_fields,
)


def frame(body: bytes, kind: int = 1) -> bytes:
    return struct.pack(">I", len(body) + 1) + bytes([kind]) + body


def control(record: dict[str, object]) -> bytes:
    return frame(json.dumps(record).encode())


def decode_all(data: bytes) -> list[LinkMessage]:
    return LinkDecoder().feed(data)


@settings(max_examples=300)
@given(st.lists(MESSAGES, max_size=8))
def test_roundtrip(messages: list[LinkMessage]) -> None:
    assert decode_all(encode_many(messages)) == messages


@settings(max_examples=150)
@given(st.lists(MESSAGES, max_size=6), st.data())
def test_whole_or_byte_by_byte_or_any_split_gives_the_same_messages(
    messages: list[LinkMessage], data: st.DataObject
) -> None:
    wire = encode_many(messages)
    one_by_one = LinkDecoder()
    got = []
    for i in range(len(wire)):
        got += one_by_one.feed(wire[i : i + 1])
    assert got == messages
    assert one_by_one.buffered == 0
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    chunked, got = LinkDecoder(), []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += chunked.feed(wire[a:b])
    assert got == messages


def test_wire_layout_of_a_data_frame() -> None:
    wire = encode(ChannelData(channel_id=7, correlation_id=9, flags=1, ciphertext=b"ab"))
    assert wire == (
        b"\x00\x00\x00\x14"  # length: kind + 17-byte header + 2
        + b"\x02"
        + (7).to_bytes(8, "big")
        + (9).to_bytes(8, "big")
        + b"\x01ab"
    )


def test_wire_layout_of_a_control_record() -> None:
    wire = encode(Heartbeat(seq=4))
    body = b'{"type":"heartbeat","seq":4}'
    assert wire == struct.pack(">I", len(body) + 1) + b"\x01" + body


def test_bytes_fields_are_standard_base64() -> None:
    wire = encode(ChannelAccept(1, 2, b"\xfb\xff", 65519))
    assert b'"message2":"+/8="' in wire


def test_largest_real_record_fits() -> None:
    message = ChannelAccept(2**64 - 1, 2**64 - 1, bytes(49904), 2**26)
    assert decode_all(encode(message)) == [message]


def test_messages_before_a_bad_frame_come_out_first() -> None:
    decoder = LinkDecoder()
    decoder.receive_data(encode(Heartbeat(1)) + frame(b"", kind=9) + encode(Heartbeat(2)))
    assert decoder.next_message() == Heartbeat(1)
    expect(LinkProtocolError, r"^unknown frame kind 0x09$", decoder.next_message)
    # Broken for good: the same error, even with fresh good bytes.
    expect(LinkProtocolError, "unknown frame kind", decoder.receive_data, encode(Heartbeat(3)))
    expect(LinkProtocolError, "unknown frame kind", decoder.next_message)
    assert decoder.buffered == 0


@pytest.mark.parametrize("length", [0, 131074, 2**32 - 1])
def test_length_prefix_out_of_range_is_refused_before_buffering(length: int) -> None:
    decoder = LinkDecoder()
    expect(
        FrameTooLarge,
        rf"^frame length {length} is outside 1\.\.131073$",
        decoder.feed,
        struct.pack(">I", length),
    )


def test_oversized_control_and_data_bodies() -> None:
    expect(FrameTooLarge, "frame length 131074 is outside", decode_all, frame(b" " * 131073))
    # The largest control record allowed is decoded (here: valid JSON padded with spaces).
    body = b'{"type":"heartbeat","seq":1}'
    assert decode_all(frame(body.ljust(131072))) == [Heartbeat(1)]
    header = bytes(17)
    expect(
        FrameTooLarge,
        "data frame ciphertext of 65536 bytes exceeds 65535",
        decode_all,
        frame(header + bytes(65536), kind=2),
    )
    assert decode_all(frame(header + bytes(65535), kind=2))[0].ciphertext == bytes(65535)


def test_short_data_frame() -> None:
    expect(
        LinkProtocolError,
        "data frame body of 16 bytes is shorter than its 17-byte header",
        decode_all,
        frame(bytes(16), kind=2),
    )


BAD_RECORDS = [
    (b"\xff", "not valid UTF-8 JSON"),
    (b"{", "not valid UTF-8 JSON"),
    (b"[1]", "must be a JSON object, got list"),
    (b"{}", "no string 'type' field"),
    (b'{"type": 5}', "no string 'type' field"),
    (b'{"type": "nope"}', "unknown control record type 'nope'"),
    (b'{"type": "heartbeat"}', "missing field 'seq'"),
    (b'{"type": "heartbeat", "seq": 1, "x": 2}', "unknown field(s) 'x'"),
    (b'{"type": "heartbeat", "seq": true}', "field 'seq': expected int, got bool"),
    (b'{"type": "heartbeat", "seq": "1"}', "field 'seq': expected int, got str"),
    (b'{"type": "heartbeat", "seq": 1.0}', "field 'seq': expected int, got float"),
    (b'{"type": "heartbeat", "seq": -1}', "heartbeat.seq is out of range: -1"),
    (b'{"type": "heartbeat", "seq": 18446744073709551616}', "out of range"),
    (b'{"type": "heartbeat", "seq": 1, "public_key": 5}', "must be a base64 string"),
    (b'{"type": "heartbeat", "seq": 1, "public_key": "a"}', "not valid standard base64"),
    (b'{"type": "hub_request", "request_id": 1, "method": "m", "params": []}', "expected dict"),
    (b"[" * 5000, "not valid UTF-8 JSON"),
    (b"1" * 5000, "not valid UTF-8 JSON"),
]


@pytest.mark.parametrize(("body", "problem"), BAD_RECORDS, ids=[p for _, p in BAD_RECORDS])
def test_bad_control_records(body: bytes, problem: str) -> None:
    exc = expect(LinkProtocolError, "", decode_all, frame(body))
    assert problem in str(exc)


def test_register_labels_must_be_strings() -> None:
    record = {
        "type": "register",
        "protocol_version": 1,
        "registration_key": "k",
        "name": "n",
        "version": "v",
        "labels": {"a": 1},
    }
    exc = expect(LinkProtocolError, "", decode_all, control(record))
    assert str(exc) == "invalid register record: field 'labels': key 'a': expected str, got int"


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Register(1, "SECRETKEY", "n", "v"))
    assert "SECRETKEY" not in text


def test_encode_refuses_what_cannot_be_sent() -> None:
    expect(LocalError, "exceeds 65535", encode, ChannelData(1, 1, 0, bytes(65536)))
    expect(LocalError, "64 bits", encode, ChannelData(2**64, 1, 0, b""))
    expect(LocalError, "one byte", encode, ChannelData(1, 1, 256, b""))
    big = HubResponse(1, {"x": "y" * MAX_CONTROL_BODY})
    expect(LocalError, "exceeds 131072", encode, big)
    expect(LocalError, "not a link message", encode, object())  # type: ignore[arg-type]


def test_every_record_type_is_distinct() -> None:
    assert len(CONTROL_TYPES) == len({c.__name__ for c in CONTROL_TYPES.values()}) == 24


# ---------------------------------------------------------------------------
# Field limits on untrusted strings


def _register(**fields: object) -> dict[str, object]:
    record: dict[str, object] = {
        "type": "register",
        "protocol_version": 1,
        "registration_key": "k" * 48,
        "name": "box",
        "version": "1.0",
        "labels": {"site": "lab"},
    }
    record.update(fields)
    return record


LIMIT_BREACHES = [
    ("register.name", _register(name="n" * (MAX_NAME + 1))),
    ("register.name", _register(name="n" * 70_000)),
    ("register.name", _register(name="box\x1b[2J")),
    ("register.version", _register(version="v" * (MAX_VERSION + 1))),
    ("register.version", _register(version="1.0\n")),
    ("register.registration_key", _register(registration_key="k" * (MAX_SECRET + 1))),
    ("register.labels", _register(labels={f"k{i}": "v" for i in range(MAX_LABELS + 1)})),
    ("register.labels", _register(labels={"k" * (MAX_LABEL_KEY + 1): "v"})),
    ("register.labels", _register(labels={"": "v"})),
    ("register.labels", _register(labels={"k": "v" * (MAX_LABEL_VALUE + 1)})),
    ("register.labels", _register(labels={"k": "a\tb"})),
    (
        "worker_greeting.owner_name",
        {"type": "worker_greeting", "worker_id": "w", "owner_id": "u", "owner_name": "a" * 129},
    ),
    (
        "worker_greeting.worker_id",
        {"type": "worker_greeting", "worker_id": "w" * 129, "owner_id": "u", "owner_name": "a"},
    ),
    (
        "client_greeting.user_name",
        {"type": "client_greeting", "user_id": "u", "user_name": "a\x00"},
    ),
    (
        "channel_reject.code",
        {
            "type": "channel_reject",
            "request_id": 1,
            "channel_id": 1,
            "code": "c" * 65,
            "message": "",
        },
    ),
    (
        "channel_close.message",
        {"type": "channel_close", "channel_id": 1, "code": "closed", "message": "m" * 1025},
    ),
    ("go_away.reason", {"type": "go_away", "reconnect_delay": 1, "reason": "r" * 1025}),
    ("error.message", {"type": "error", "code": "internal", "message": "m" * 5000}),
    (
        "hub_response.error_code",
        {"type": "hub_response", "request_id": 1, "error_code": "e" * 65, "error_message": ""},
    ),
    ("hub_request.method", {"type": "hub_request", "request_id": 1, "method": "m" * 129}),
    (
        "hub_request.params",
        {"type": "hub_request", "request_id": 1, "method": "m", "params": {"x": "y" * MAX_PARAMS}},
    ),
    (
        "heartbeat.encryption_mode",
        {"type": "heartbeat", "seq": 1, "encryption_mode": "p" * 65},
    ),
]


@pytest.mark.parametrize(("where", "record"), LIMIT_BREACHES)
def test_a_field_over_its_limit_is_a_link_protocol_error_naming_it(
    where: str, record: dict[str, object]
) -> None:
    exc = expect(LinkProtocolError, re.escape(where), decode_all, control(record))
    assert len(str(exc)) < 300  # the message names the field, it does not echo the value


def test_fields_at_their_limits_are_accepted() -> None:
    record = _register(
        name="n" * MAX_NAME,
        version="v" * MAX_VERSION,
        registration_key="k" * MAX_SECRET,
        labels={f"{i:0{MAX_LABEL_KEY}d}": "v" * MAX_LABEL_VALUE for i in range(MAX_LABELS)},
    )
    (message,) = decode_all(control(record))
    assert isinstance(message, Register) and len(message.labels) == MAX_LABELS
    params = {"x": "y" * (MAX_PARAMS - len('{"x":""}'))}
    (request,) = decode_all(
        control({"type": "hub_request", "request_id": 1, "method": "m" * 128, "params": params})
    )
    assert isinstance(request, HubRequest) and request.params == params
    assert decode_all(encode(message)) == [message]


def test_encode_refuses_identifiers_over_their_limits_and_clips_free_text() -> None:
    expect(LocalError, "register.name", encode, Register(1, "k", "n" * 129, "1", {}))
    expect(LocalError, "register.labels", encode, Register(1, "k", "n", "1", {"": "v"}))
    expect(LocalError, "hub_request.params", encode, HubRequest(1, "m", {"x": "y" * MAX_PARAMS}))
    expect(LocalError, "channel_reject.code", encode, ChannelReject(1, 1, "c" * 65, ""))
    # Free text is cut to MAX_TEXT characters, never refused: an error about a peer's
    # input can always be sent.
    (close,) = decode_all(encode(ChannelClose(1, "closed", "m" * 5000)))
    assert isinstance(close, ChannelClose) and close.message == "m" * MAX_TEXT
    (answer,) = decode_all(encode(HubResponse(1, None, "internal", "é" * 3000)))
    assert isinstance(answer, HubResponse) and answer.error_message == "é" * MAX_TEXT


def test_check_fields_takes_the_error_class() -> None:
    message = Register(1, "k", "n" * 129, "1", {})
    expect(ConfigError, "register.name", check_fields, message, error=ConfigError)
    check_fields(Register(1, "k", "box", "1", {"site": "lab"}))
