"""The hub-to-hub link's sans-IO core (leapcore.proto.cluster_wire): strict records, the
framing that carries link frames beside them, and the cluster secret's proofs."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from leapcore.errors import FrameTooLarge, LinkProtocolError
from leapcore.proto.cluster_wire import (
    KIND_CLUSTER,
    ClusterDecoder,
    ClusterHello,
    ClusterOpen,
    ClusterPing,
    encode_cluster,
    proof,
    proof_ok,
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
