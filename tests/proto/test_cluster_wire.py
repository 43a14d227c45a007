"""The hub-to-hub link's sans-IO core (leapcore.proto.cluster_wire): strict records, the
framing that carries link frames beside them, and the cluster secret's proofs."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leapcore.errors import FrameTooLarge, LinkProtocolError
from leapcore.proto.cluster_wire import (
    KIND_CLUSTER,
    MAX_SEALED_PLAINTEXT,
    ClusterDecoder,
    ClusterHello,
    ClusterOpen,
    ClusterPing,
    SealedRecords,
    encode_cluster,
    proof,
    proof_ok,
    session_keys,
    with_channel_id,
)
from leapcore.proto.link_codec import ChannelClose, ChannelData, ChannelOpened, encode

SECRET = b"k" * 32
NONCES = (b"d" * 32, b"l" * 32)
NODES = ("a", "b")


def raw(record: dict[str, object]) -> bytes:
    body = json.dumps(record).encode()
    return struct.pack(">I", 1 + len(body)) + bytes((KIND_CLUSTER,)) + body


def decode(data: bytes, link_types: frozenset[str] = frozenset()) -> list[object]:
    decoder = ClusterDecoder(link_types)
    out = []
    for i in range(len(data)):  # byte by byte: framing never depends on how bytes arrive
        decoder.receive_data(data[i : i + 1])
        while (message := decoder.next()) is not None:
            out.append(message)
    return out


def test_records_and_link_frames_round_trip_in_any_split() -> None:
    hello = ClusterHello(1, "node-a", b"n" * 32)
    opening = ClusterOpen(7, "user", "worker", b"m1", 65519)
    data = ChannelData(9, 1, 0, b"c" * 40)
    close = ChannelClose(9, "closed", "bye")
    stream = encode_cluster(hello) + encode_cluster(opening) + encode(data) + encode(close)
    got = decode(stream, frozenset({"data", "channel_close"}))
    assert got[:2] == [hello, opening] and got[3] == close
    relayed = got[2]
    assert relayed.decoded() == data  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"type": "cluster_nope"}, "unknown cluster record type"),
        ({"type": "cluster_ping"}, "seq"),
        ({"type": "cluster_ping", "seq": 1, "extra": 2}, "extra"),
        ({"type": "cluster_ping", "seq": "1"}, "seq"),
        ({"type": "cluster_ping", "seq": 2**64}, "out of range"),
        ({"type": "cluster_hello", "version": 1, "node_id": "a", "nonce": "!!"}, "base64"),
        (
            {"type": "cluster_hello", "version": 1, "node_id": "a", "nonce": "AAAA"},
            "must be 32 bytes",
        ),
        (
            {
                "type": "cluster_hello",
                "version": 1,
                "node_id": "a" * 129,
                "nonce": base64.b64encode(bytes(32)).decode(),
            },
            "longer than 128",
        ),
    ],
)
def test_bad_records_break_the_decoder(record: dict[str, object], problem: str) -> None:
    decoder = ClusterDecoder(frozenset())
    decoder.receive_data(raw(record) + encode_cluster(ClusterPing(1)))
    with pytest.raises(LinkProtocolError, match=problem):
        decoder.next()
    with pytest.raises(LinkProtocolError):  # and it stays broken
        decoder.next()


def test_link_records_a_side_may_not_send_are_refused() -> None:
    opened = encode(ChannelOpened(1, 2, b"m2", 65519))
    with pytest.raises(LinkProtocolError, match="channel_opened is not allowed"):
        decode(opened, frozenset({"channel_close"}))
    with pytest.raises(LinkProtocolError, match="unexpected data frame"):
        decode(encode(ChannelData(1, 1, 0, b"x" * 16)))
    with pytest.raises(FrameTooLarge):
        decode(b"\x7f\xff\xff\xff\x03")
    with pytest.raises(LinkProtocolError, match="unknown frame kind"):
        decode(b"\x00\x00\x00\x01\x09")


def test_a_data_frame_gets_another_channel_id_and_nothing_else() -> None:
    frame = encode(ChannelData(1, 77, 1, b"secret ciphertext"))
    moved = with_channel_id(frame, 2**40 + 5)
    assert len(moved) == len(frame)
    (got,) = decode(moved, frozenset({"data"}))
    assert got.decoded() == ChannelData(2**40 + 5, 77, 1, b"secret ciphertext")  # type: ignore[attr-defined]


def test_proofs_are_bound_to_role_nonces_nodes_and_secret() -> None:
    dialler = proof(SECRET, dialler=True, nonces=NONCES, nodes=NODES)
    listener = proof(SECRET, dialler=False, nonces=NONCES, nodes=NODES)
    assert len(dialler) == 32 and dialler != listener
    assert proof_ok(SECRET, dialler, dialler=True, nonces=NONCES, nodes=NODES)
    assert not proof_ok(SECRET, listener, dialler=True, nonces=NONCES, nodes=NODES)
    assert not proof_ok(SECRET, dialler, dialler=True, nonces=NONCES[::-1], nodes=NODES)
    assert not proof_ok(SECRET, dialler, dialler=True, nonces=NONCES, nodes=("a", "c"))
    assert not proof_ok(b"x" * 32, dialler, dialler=True, nonces=NONCES, nodes=NODES)
    # Lengths are framed: moving a byte from one field to the next changes the proof.
    shifted = proof(SECRET, dialler=True, nonces=NONCES, nodes=("ab", ""))
    assert shifted != proof(SECRET, dialler=True, nonces=NONCES, nodes=("a", "b"))


# -- sealed records after sign-in ------------------------------------------------------------

_NONCES = (b"d" * 32, b"l" * 32)
_NODES = ("hub-a", "hub-b")


def _pair() -> tuple[SealedRecords, SealedRecords]:
    """(dialler's side, listener's side) of one link."""
    d2l, l2d = session_keys(b"s" * 32, nonces=_NONCES, nodes=_NODES)
    assert d2l != l2d
    return SealedRecords(d2l, l2d), SealedRecords(l2d, d2l)


@given(
    sends=st.lists(st.binary(max_size=3000), max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=30),
)
def test_sealed_records_round_trip_however_the_bytes_are_cut(
    sends: list[bytes], cuts: list[int]
) -> None:
    dialler, listener = _pair()
    wire = b"".join(dialler.seal(s) for s in sends)
    got, at = [], 0
    for cut in [*cuts, len(wire)]:
        got.append(listener.open(wire[at : at + cut]))
        at += cut
    assert b"".join(got) == b"".join(sends)


def test_a_long_send_is_cut_into_records_and_comes_back_whole() -> None:
    dialler, listener = _pair()
    data = bytes(range(256)) * (MAX_SEALED_PLAINTEXT // 256 * 2 + 3)
    wire = dialler.seal(data)
    assert len(wire) == len(data) + 3 * (4 + 16)  # three records
    assert listener.open(wire) == data


@pytest.mark.parametrize("change", ["flip", "replay", "reorder", "other_direction", "too_long"])
def test_a_changed_stream_does_not_open(change: str) -> None:
    dialler, listener = _pair()
    first, second = dialler.seal(b"cluster_open as alice"), dialler.seal(b"second")
    if change == "flip":
        wire = first[:-1] + bytes([first[-1] ^ 1])
    elif change == "replay":
        assert listener.open(first) == b"cluster_open as alice"
        wire = first
    elif change == "reorder":
        wire = second + first
    elif change == "other_direction":
        wire = listener.seal(b"reflected")  # the listener's own record sent back to it
    else:
        wire = struct.pack(">I", MAX_SEALED_PLAINTEXT + 17)
    with pytest.raises(LinkProtocolError):
        listener.open(wire)
    with pytest.raises(LinkProtocolError):  # and it stays broken
        listener.open(dialler.seal(b"more"))


def test_the_keys_belong_to_one_link() -> None:
    keys = session_keys(b"s" * 32, nonces=_NONCES, nodes=_NODES)
    assert keys != session_keys(b"t" * 32, nonces=_NONCES, nodes=_NODES)
    assert keys != session_keys(b"s" * 32, nonces=(b"x" * 32, _NONCES[1]), nodes=_NODES)
    assert keys != session_keys(b"s" * 32, nonces=_NONCES, nodes=("hub-a", "hub-c"))
