"""The sans-IO SOCKS5 server codec (spec §6.2): the subset, the replies, and garbage."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leapcore.errors import Socks5Error
from leapcore.proto.socks5 import (
    AddressType,
    ConnectRequest,
    Phase,
    Reply,
    Socks5Server,
    encode_reply,
    reply_for_dial_failure,
)

GREETING = b"\x05\x01\x00"
SUCCESS = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"


def request(cmd: int, atyp: int, address: bytes, port: int) -> bytes:
    return bytes([5, cmd, 0, atyp]) + address + struct.pack("!H", port)


def domain(name: bytes) -> bytes:
    return bytes([len(name)]) + name


def run(data: bytes, *, eof: bool = False) -> tuple[Socks5Server, ConnectRequest | None, bytes]:
    server = Socks5Server()
    server.receive_data(data)
    if eof:
        server.receive_data(b"")
    event = server.next_event()
    return server, event, server.data_to_send()


def test_connect_ipv4() -> None:
    server, event, out = run(GREETING + request(1, 1, bytes([10, 1, 2, 3]), 5432))
    assert event == ConnectRequest("10.1.2.3", 5432, AddressType.IPV4)
    assert out == b"\x05\x00"
    assert server.phase is Phase.REPLY
    assert server.next_event() is None  # the caller owes the reply
    server.reply(Reply.SUCCEEDED)
    assert server.data_to_send() == SUCCESS
    assert server.phase is Phase.OPEN


def test_connect_ipv6_and_domain() -> None:
    ip6 = bytes(15) + b"\x01"
    _, event, _ = run(GREETING + request(1, 4, ip6, 22))
    assert event == ConnectRequest("::1", 22, AddressType.IPV6)
    _, event, _ = run(GREETING + request(1, 3, domain(b"db.internal"), 80))
    assert event == ConnectRequest("db.internal", 80, AddressType.DOMAIN)


def test_no_auth_is_chosen_among_several_methods() -> None:
    _, event, out = run(b"\x05\x03\x02\x01\x00" + request(1, 3, domain(b"x"), 1))
    assert out == b"\x05\x00" and event is not None


def test_early_data_is_kept_for_the_tunnel() -> None:
    server, event, _ = run(GREETING + request(1, 3, domain(b"h"), 80) + b"GET / HTTP/1.0\r\n")
    assert event is not None
    assert server.leftover == b"GET / HTTP/1.0\r\n"


def test_a_failure_reply_closes() -> None:
    server, _, _ = run(GREETING + request(1, 1, bytes(4), 1))
    server.reply(Reply.CONNECTION_REFUSED)
    assert server.data_to_send() == b"\x05\x05\x00\x01" + bytes(6)
    assert server.phase is Phase.CLOSED
    with pytest.raises(Socks5Error):
        server.next_event()


def test_reply_out_of_turn_is_a_local_mistake() -> None:
    with pytest.raises(RuntimeError):
        Socks5Server().reply(Reply.SUCCEEDED)


def test_encode_reply_ipv6() -> None:
    assert encode_reply(Reply.SUCCEEDED, "::1", 80) == (
        b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x00\x50"
    )


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("connection_refused", 0x05),
        ("network_unreachable", 0x03),
        ("host_unreachable", 0x04),
        ("timed_out", 0x04),
        ("name_not_found", 0x04),
        ("denied_by_policy", 0x02),
        ("something_new", 0x04),
    ],
)
def test_dial_failure_replies(reason: str, code: int) -> None:
    assert reply_for_dial_failure(reason) == code


# -- refusals: the documented error, the reply owed ------------------------------------------

REFUSALS = [
    # (bytes, eof, reason, reply owed after the method choice)
    (b"\x04\x01\x00", False, "bad_version", b""),
    (b"GET / HTTP/1.1\r\n", False, "bad_version", b""),
    (b"\x05\x01\x02", False, "no_acceptable_method", b"\x05\xff"),
    (b"\x05\x00", False, "no_acceptable_method", b"\x05\xff"),
    (GREETING + request(2, 1, bytes(4), 1), False, "command_not_supported", b"\x07"),
    (GREETING + request(3, 1, bytes(4), 1), False, "command_not_supported", b"\x07"),
    (GREETING + request(9, 1, bytes(4), 1), False, "command_not_supported", b"\x07"),
    (GREETING + request(1, 2, bytes(4), 1), False, "address_type_not_supported", b"\x08"),
    (GREETING + b"\x05\x01\x01\x01" + bytes(6), False, "bad_request", b""),
    (GREETING + b"\x04\x01\x00\x01" + bytes(6), False, "bad_version", b""),
    (GREETING + request(1, 3, domain(b""), 1), False, "bad_domain", b"\x04"),
    (GREETING + request(1, 3, domain(b"\xff\xfe"), 1), False, "bad_domain", b"\x04"),
    (GREETING + request(1, 3, domain(b"a b"), 1), False, "bad_domain", b"\x04"),
    (b"\x05", True, "truncated", b""),
    (b"\x05\x02\x00", True, "truncated", b""),
    (b"", True, "truncated", b""),
    (GREETING + b"\x05\x01\x00", True, "truncated", b""),
    # A domain length of 4 with 3 bytes, then EOF.
    (GREETING + b"\x05\x01\x00\x03\x04abc", True, "truncated", b""),
]


@pytest.mark.parametrize(("data", "eof", "reason", "owed"), REFUSALS)
def test_refusals(data: bytes, eof: bool, reason: str, owed: bytes) -> None:
    server = Socks5Server()
    server.receive_data(data)
    if eof:
        server.receive_data(b"")
    with pytest.raises(Socks5Error) as caught:
        server.next_event()
    assert caught.value.reason == reason
    assert caught.value.code == "socks5_error"
    out = server.data_to_send()
    if owed.startswith(b"\x05"):
        assert out == owed
    elif owed:
        method = b"\x05\x00"
        assert out == method + b"\x05" + owed + b"\x00\x01" + bytes(6)
    assert server.phase is Phase.CLOSED
    server.receive_data(b"more")  # ignored once closed
    with pytest.raises(Socks5Error):
        server.next_event()


@pytest.mark.parametrize(
    "data",
    [
        b"\x05",  # a truncated greeting
        b"\x05\x02\x00",
        GREETING + b"\x05\x01\x00",
        GREETING + b"\x05\x01\x00\x03\x04abc",  # a domain length of 4 with 3 bytes
    ],
)
def test_an_unfinished_message_waits_then_eof_is_truncated(data: bytes) -> None:
    """Without EOF an unfinished greeting or request only waits (the listener's handshake
    timeout ends it); the EOF that follows fails it ``truncated``, nothing more owed."""
    server = Socks5Server()
    server.receive_data(data)
    assert server.next_event() is None
    sent = server.data_to_send()
    assert sent in (b"", b"\x05\x00")
    assert server.next_event() is None  # asking again changes nothing
    assert server.data_to_send() == b""
    server.receive_data(b"")
    with pytest.raises(Socks5Error) as caught:
        server.next_event()
    assert caught.value.reason == "truncated"
    assert server.data_to_send() == b""
    assert server.phase is Phase.CLOSED


def test_the_buffer_is_bounded() -> None:
    server = Socks5Server()
    server.receive_data(GREETING)
    assert server.next_event() is None
    with pytest.raises(Socks5Error) as caught:
        server.receive_data(b"\x05" * (64 * 1024 + 1))
    assert caught.value.reason == "too_much_data"


def test_bytes_after_the_exchange_belong_to_the_caller() -> None:
    server, _, _ = run(GREETING + request(1, 1, bytes(4), 1))
    server.reply(Reply.SUCCEEDED)
    with pytest.raises(RuntimeError):
        server.receive_data(b"x")


# -- any split parses the same; garbage never escapes as another exception ----------------------

hosts = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: (1, ip.packed, str(ip))),
    st.ip_addresses(v=6).map(lambda ip: (4, ip.packed, str(ip))),
    st.from_regex(r"[a-z0-9][a-z0-9.\-]{0,60}", fullmatch=True).map(
        lambda n: (3, domain(n.encode()), n)
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    host=hosts,
    port=st.integers(0, 65535),
    methods=st.lists(st.integers(1, 255), max_size=5),
    extra=st.binary(max_size=40),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_any_split_of_a_valid_request_parses_the_same(
    host: tuple[int, bytes, str],
    port: int,
    methods: list[int],
    extra: bytes,
    cuts: list[int],
) -> None:
    atyp, raw, text = host
    offered = [*methods, 0]
    data = bytes([5, len(offered), *offered]) + request(1, atyp, raw, port) + extra
    # Cuts inside the greeting and request; what follows arrives with the last piece.
    points = sorted({c for c in cuts if c < len(data) - len(extra)} | {0, len(data)})
    server = Socks5Server()
    event = None
    out = b""
    for start, end in itertools.pairwise(points):
        assert event is None
        server.receive_data(data[start:end])
        event = server.next_event()
        out += server.data_to_send()
    assert event == ConnectRequest(text, port, AddressType(atyp))
    assert out == b"\x05\x00"
    assert server.leftover == extra


@settings(max_examples=500, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=6), eof=st.booleans())
def test_garbage_raises_only_socks5_error(chunks: list[bytes], eof: bool) -> None:
    server = Socks5Server()
    try:
        for chunk in chunks:
            server.receive_data(chunk)
            if server.next_event() is not None:
                return
            server.data_to_send()
        if eof:
            server.receive_data(b"")
            server.next_event()
    except Socks5Error as exc:
        assert exc.reason in {
            "bad_version",
            "no_acceptable_method",
            "command_not_supported",
            "address_type_not_supported",
            "bad_request",
            "bad_domain",
            "truncated",
            "too_much_data",
            "closed",
        }
        assert server.phase is Phase.CLOSED
