"""Data frames kept whole for the hub (RelayedData): the bytes forwarded are the bytes
encoding the same fields gives, whichever way the decoder got them."""

from __future__ import annotations

import pytest

from leapcore.errors import LocalError
from leapcore.proto.link_codec import (
    ChannelCredit,
    ChannelData,
    Heartbeat,
    LinkDecoder,
    RelayedData,
    encode,
)
from leapcore.proto.link_state import LinkConnection, LinkRole, LinkState

FRAMES = [
    ChannelData(7, 1, 0, bytes(16)),
    ChannelData(2**64 - 1, 2**63, 1, b"x" * 65535),
    ChannelCredit(7, 4096),
    ChannelData(9, 3, 2, b""),
    Heartbeat(4),
]


def _relayed(decoder: LinkDecoder) -> list[object]:
    out = []
    while (item := decoder.next_relayed()) is not None:
        out.append(item)
    return out


@pytest.mark.parametrize("form", ["bytes", "view", "bytearray", "byte-by-byte"])
def test_relayed_frames_are_the_encoded_frames(form: str) -> None:
    wire = b"".join(encode(m) for m in FRAMES)
    decoder = LinkDecoder()
    if form == "byte-by-byte":
        got = []
        for i in range(len(wire)):
            decoder.receive_data(wire[i : i + 1])
            got += _relayed(decoder)
    else:
        data = {"bytes": wire, "view": memoryview(wire), "bytearray": bytearray(wire)}[form]
        decoder.receive_data(data)
        got = _relayed(decoder)
    assert decoder.buffered == 0
    assert len(got) == len(FRAMES)
    for item, message in zip(got, FRAMES, strict=True):
        if isinstance(message, ChannelData):
            assert isinstance(item, RelayedData)
            assert item.frame == encode(message) == encode(item)
            assert item.size == message.size
            assert item.decoded() == message
        else:
            assert item == message


def test_next_message_still_decodes_data_and_a_partial_frame_waits() -> None:
    wire = encode(FRAMES[1])
    decoder = LinkDecoder()
    decoder.receive_data(wire[:100])
    assert decoder.next_message() is None
    assert decoder.buffered == 100
    decoder.receive_data(memoryview(wire)[100:])
    assert decoder.next_message() == FRAMES[1]
    assert decoder.buffered == 0


def _active_hub() -> LinkConnection:
    conn = LinkConnection(LinkRole.HUB)
    conn.state = LinkState.CLIENT_ACTIVE
    return conn


def test_the_hub_forwards_relayed_frames_only_when_data_may_flow() -> None:
    receiving = _active_hub()
    receiving.receive_data(encode(FRAMES[0]))
    item = receiving.next_relayed()
    assert isinstance(item, RelayedData)
    assert _active_hub().send(item) == encode(FRAMES[0])
    with pytest.raises(LocalError):
        LinkConnection(LinkRole.HUB).send(item)  # nobody signed in yet
