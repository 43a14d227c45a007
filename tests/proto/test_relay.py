"""The hub's relay rules, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.helpers import expect

from leapcore.errors import ConfigError, RelayViolation
from leapcore.proto.limits import CHANNEL_CREDIT, DEFAULT_MAX_MESSAGE_SIZE
from leapcore.proto.relay import FLAG_CLOSE, FLAG_FINAL, FLAG_MORE, ChannelRelay, RelayDirection

TW, TC = RelayDirection.TO_WORKER, RelayDirection.TO_CLIENT
FULL = 65535


def test_single_frames_and_a_chunked_message_pass() -> None:
    r = ChannelRelay(1)
    assert r.check(TW, 1, FLAG_FINAL, 100) is False
    for _ in range(3):
        r.check(TW, 3, FLAG_MORE, FULL)
    assert r.in_flight(TW) == 3
    r.check(TW, 3, FLAG_FINAL, 20)
    assert r.in_flight(TW) == 0


def test_correlation_id_zero_is_refused() -> None:
    expect(RelayViolation, "correlation id 0 is reserved", ChannelRelay(1).check, TW, 0, 0, 16)
    expect(RelayViolation, "correlation id 0", ChannelRelay(1).check, TW, 0, FLAG_MORE, 16)


def test_oversized_ciphertext_is_refused() -> None:
    r = ChannelRelay(5)
    expect(RelayViolation, r"^channel 5: ciphertext of 65536 bytes", r.check, TW, 1, 0, 65536)


@pytest.mark.parametrize("flags", [3, 4, 255])
def test_unknown_flags(flags: int) -> None:
    expect(RelayViolation, f"unknown flags value {flags}", ChannelRelay(1).check, TW, 1, flags, 16)


def test_close_carries_no_data_and_ends_the_channel() -> None:
    r = ChannelRelay(1)
    assert r.check(TC, 0, FLAG_CLOSE, 0) is True
    expect(RelayViolation, "a CLOSE frame carries no data", r.check, TC, 1, FLAG_CLOSE, 16)


def test_one_chunked_message_in_flight_per_direction() -> None:
    r = ChannelRelay(9)
    r.check(TW, 1, FLAG_MORE, FULL)
    # Single-frame messages of other ids may pass between the chunks.
    r.check(TW, 3, FLAG_FINAL, 40)
    # The other direction is independent.
    r.check(TC, 2, FLAG_MORE, FULL)
    expect(
        RelayViolation,
        r"^channel 9: chunk interleaving: correlation id 5 started while 1 is in flight$",
        r.check,
        TW,
        5,
        FLAG_MORE,
        FULL,
    )


def test_size_estimate_is_capped_at_negotiated_plus_64k() -> None:
    size = 65519 * 4
    r = ChannelRelay(1, max_message_size=size)
    ceiling = size + 65536
    assert r.ceiling == ceiling
    sent = 0
    while sent + (FULL - 16) <= ceiling:
        r.check(TC, 7, FLAG_MORE, FULL)
        sent += FULL - 16
    expect(RelayViolation, f"exceeds {ceiling} bytes", r.check, TC, 7, FLAG_MORE, FULL)


def test_default_ceiling_matches_the_reference() -> None:
    assert ChannelRelay(1).ceiling == DEFAULT_MAX_MESSAGE_SIZE + 65536 == 16_842_752


@pytest.mark.parametrize("size", [0, 65518, 64 * 1024 * 1024 + 1, True, 1.5e6])
def test_max_message_size_range(size: object) -> None:
    expect(
        ConfigError, "max_message_size must be an integer in 65519..67108864", ChannelRelay, 1, size
    )
    assert ChannelRelay(1, 65519).ceiling == 65519 + 65536


@given(st.lists(st.integers(0, 3 * 65519), min_size=1, max_size=5))
def test_messages_chunked_like_a_sender_always_pass(sizes: list[int]) -> None:
    """Whatever a well-behaved sender produces (one chunked message at a time, each within
    the negotiated size) passes."""
    r = ChannelRelay(1, max_message_size=3 * 65519)
    for cid, size in enumerate(sizes, start=1):
        chunks = [min(65519, size - off) for off in range(0, size, 65519)] or [0]
        for i, plain in enumerate(chunks):
            flags = FLAG_MORE if i < len(chunks) - 1 else FLAG_FINAL
            r.check(TW, cid, flags, plain + 16)
        assert r.in_flight(TW) == 0


# -- credit ---------------------------------------------------------------------------------


def test_credit_is_spent_per_direction_and_close_is_free() -> None:
    r = ChannelRelay(4, credit=100)
    assert r.charge(TW, FLAG_FINAL, 60) == 60
    assert r.charge(TW, FLAG_MORE, 40) == 40
    assert r.credit(TW) == 0 and r.credit(TC) == 100
    assert r.charge(TW, FLAG_CLOSE, 0) == 0
    expect(
        RelayViolation,
        r"^channel 4: a 1-byte frame exceeds the sender's credit of 0 bytes$",
        r.charge,
        TW,
        FLAG_FINAL,
        1,
    )
    assert r.credit(TW) == 0  # a refused frame spends nothing
    assert r.charge(TC, FLAG_FINAL, 100) == 100


def test_default_credit_is_the_link_constant() -> None:

    r = ChannelRelay(1)
    assert r.credit(TW) == r.credit(TC) == CHANNEL_CREDIT == 1024 * 1024
    r.charge(TW, FLAG_FINAL, CHANNEL_CREDIT)
    expect(RelayViolation, "exceeds the sender's credit", r.charge, TW, FLAG_FINAL, 1)


def test_delivered_credit_is_announced_in_batches() -> None:
    from leapcore.proto.limits import CREDIT_BATCH

    r = ChannelRelay(1)
    r.charge(TC, FLAG_FINAL, FULL)
    r.charge(TC, FLAG_FINAL, FULL)
    # Small deliveries wait until a batch is due, whether or not more is queued.
    assert r.delivered(TC, 100) == 0
    assert r.delivered(TC, CREDIT_BATCH - 101) == 0
    assert r.delivered(TC, 1) == CREDIT_BATCH
    assert r.delivered(TC, 5) == 0
    assert r.delivered(TC, 0) == 0
    assert r.credit(TC) == 1024 * 1024 - 2 * FULL + CREDIT_BATCH
    assert r.credit(TW) == 1024 * 1024


@pytest.mark.parametrize("size", [0, 1, 15])
def test_a_frame_shorter_than_the_tag_is_refused(size: int) -> None:
    relay = ChannelRelay(1)
    with pytest.raises(RelayViolation, match="shorter than the 16-byte tag"):
        relay.check(RelayDirection.TO_WORKER, 1, FLAG_FINAL, size)
    assert relay.check(RelayDirection.TO_WORKER, 1, FLAG_FINAL, 16) is False


@given(st.lists(st.integers(min_value=16, max_value=FULL), min_size=1, max_size=200))
def test_a_sender_whose_frames_were_written_always_has_room_for_the_next(
    sizes: list[int],
) -> None:
    """Credit held back below a batch never stalls a sender: after every frame it sent was
    written (and whatever batches were due announced), the largest frame still fits."""
    from leapcore.proto.limits import CREDIT_BATCH

    assert CREDIT_BATCH + FULL <= CHANNEL_CREDIT
    r = ChannelRelay(1)
    for size in sizes:
        assert r.credit(TW) >= FULL
        r.charge(TW, FLAG_FINAL, size)
        r.delivered(TW, size)
    assert r.credit(TW) >= FULL
