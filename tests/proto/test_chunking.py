"""Splitting channel messages into chunks and reassembling them within limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.helpers import expect

from leapcore.errors import ChannelProtocolError, ConfigError, LocalError, ResourceExhausted
from leapcore.proto.chunking import (
    MAX_CHUNK,
    ChannelFrame,
    FrameFlag,
    Reassembled,
    Reassembler,
    ReassemblyFailed,
    chunk_count,
    iter_chunks,
    split_message,
)
from leapcore.proto.limits import DEFAULT_MAX_MESSAGE_SIZE, validate_max_message_size

FINAL, MORE = FrameFlag.FINAL, FrameFlag.MORE

sizes = st.one_of(
    st.integers(0, 200 * 1024),
    st.sampled_from([0, 1, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, 2 * MAX_CHUNK, 3 * MAX_CHUNK]),
)


def message_of(size: int, seed: int = 7) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(size % 997)) * (size // 997 + 1)


def test_flag_values():
    assert (FINAL, MORE, FrameFlag.CLOSE) == (0, 1, 2)
    assert MAX_CHUNK == 65519


@given(sizes)
def test_split_shape(size):
    data = bytes(size)
    chunks = split_message(data)
    assert len(chunks) == chunk_count(size) == max(1, -(-size // MAX_CHUNK))
    assert [flag for flag, _ in chunks] == [MORE] * (len(chunks) - 1) + [FINAL]
    assert all(0 < len(c) <= MAX_CHUNK for _, c in chunks[:-1])
    assert all(len(c) == MAX_CHUNK for _, c in chunks[:-1])
    assert b"".join(c for _, c in chunks) == data
    if size and size % MAX_CHUNK == 0:
        assert len(chunks[-1][1]) == MAX_CHUNK  # exact multiples: no empty trailing chunk


def whole(result: object) -> object:
    """A reassembled message as (correlation id, bytes); anything else as it is."""
    if isinstance(result, Reassembled):
        return result.correlation_id, result.message
    return result


def test_empty_message_is_one_empty_final_chunk():
    assert split_message(b"") == [(FINAL, b"")]
    assert whole(Reassembler().feed(5, FINAL, b"")) == (5, b"")


@given(sizes, st.integers(1, 2**64 - 1))
def test_split_then_reassemble(size, cid):
    data = message_of(size)[:size]
    r = Reassembler()
    results = [r.feed(cid, flag, chunk) for flag, chunk in iter_chunks(data)]
    assert results[:-1] == [None] * (len(results) - 1)
    assert whole(results[-1]) == (cid, data)
    assert not r.incomplete and r.buffered == 0


@given(st.binary(max_size=3000), st.integers(1, 50))
def test_one_frame_or_many_small_chunks_give_the_same_events(data, step):
    """The analogue of feeding a byte stream one byte at a time: delivering a message as one
    FINAL frame, or as many tiny MORE chunks, gives the same events."""
    expected = whole(Reassembler().feed(9, FINAL, data))
    r = Reassembler()
    pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    events = [r.feed(9, MORE, p) for p in pieces[:-1]] + [r.feed(9, FINAL, pieces[-1])]
    assert [whole(e) for e in events if e is not None] == [expected]
    r1 = Reassembler()
    ones = [r1.feed(9, MORE, data[i : i + 1]) for i in range(len(data))] + [r1.feed(9, FINAL, b"")]
    assert [whole(e) for e in ones if e is not None] == [expected]


@given(st.lists(st.tuples(st.integers(1, 6), st.binary(max_size=40)), max_size=40))
def test_interleaved_ids_reassemble_independently(frames):
    """Chunks of different ids interleave freely (up to the limit); each id gets its bytes."""
    r = Reassembler(max_incomplete=6)
    expected: dict[int, bytearray] = {}
    for cid, chunk in frames:
        assert r.feed(cid, MORE, chunk) is None
        expected.setdefault(cid, bytearray()).extend(chunk)
    for cid, buf in expected.items():
        assert whole(r.feed(cid, FINAL, b"!")) == (cid, bytes(buf) + b"!")
    assert r.buffered == 0


# -- limits -------------------------------------------------------------------


def test_fifth_incomplete_message_fails_only_its_own_id():
    r = Reassembler()
    for cid in (1, 3, 5, 7):
        assert r.feed(cid, MORE, b"a") is None
    failed = r.feed(9, MORE, b"b")
    assert isinstance(failed, ReassemblyFailed) and failed.correlation_id == 9
    assert type(failed.error) is ResourceExhausted and failed.error.code == "resource_exhausted"
    assert str(failed.error) == (
        "correlation id 9: more than 4 incomplete chunked messages on this channel"
    )
    assert r.tombstones == {9}
    assert r.feed(9, MORE, b"c") is None  # dropped
    assert r.feed(9, FINAL, b"d") is None  # dropped, reaps the tombstone
    assert r.tombstones == frozenset()
    # the four others are untouched
    for cid in (1, 3, 5, 7):
        assert whole(r.feed(cid, FINAL, b"z")) == (cid, b"az")
    # single-frame messages are never limited by the count
    r2 = Reassembler(max_incomplete=1)
    assert r2.feed(1, MORE, b"x") is None
    assert whole(r2.feed(3, FINAL, b"y")) == (3, b"y")


def test_size_ceiling_is_checked_as_chunks_arrive():
    limit = 100_000
    r = Reassembler(max_message_size=limit)
    assert r.feed(3, MORE, bytes(MAX_CHUNK)) is None
    failed = r.feed(3, MORE, bytes(MAX_CHUNK))  # 131038 > 100000: nothing more is buffered
    assert isinstance(failed, ReassemblyFailed) and failed.correlation_id == 3
    assert type(failed.error) is ResourceExhausted
    assert str(failed.error) == (
        "correlation id 3: chunked message reached 131038 bytes; the limit is 100000"
    )
    assert r.buffered == 0 and r.incomplete == frozenset() and r.tombstones == {3}
    assert r.feed(3, MORE, bytes(10)) is None
    assert r.feed(3, FINAL, bytes(10)) is None
    assert r.tombstones == frozenset()
    # exactly at the limit is fine
    r.feed(5, MORE, bytes(MAX_CHUNK))
    assert whole(r.feed(5, FINAL, bytes(limit - MAX_CHUNK))) == (5, bytes(limit))


def test_breach_on_the_final_chunk_needs_no_tombstone():
    r = Reassembler(max_message_size=MAX_CHUNK)
    r.feed(3, MORE, bytes(MAX_CHUNK))
    failed = r.feed(3, FINAL, b"x")
    assert isinstance(failed, ReassemblyFailed) and failed.correlation_id == 3
    assert r.tombstones == frozenset() and r.incomplete == frozenset()


def test_tombstones_are_capped_then_chunks_are_dropped_silently():
    r = Reassembler(max_incomplete=2)
    r.feed(1, MORE, b"a")
    r.feed(3, MORE, b"a")
    assert isinstance(r.feed(5, MORE, b"a"), ReassemblyFailed)
    assert isinstance(r.feed(7, MORE, b"a"), ReassemblyFailed)
    assert r.tombstones == {5, 7}
    assert r.feed(9, MORE, b"a") is None  # past both caps: silently dropped
    assert r.tombstones == {5, 7} and r.incomplete == {1, 3}
    assert r.feed(9, MORE, b"b") is None
    r.feed(5, FINAL, b"")  # reaps 5: a tombstone slot frees up
    assert isinstance(r.feed(11, MORE, b"a"), ReassemblyFailed)


def test_correlation_id_zero_is_a_protocol_error_for_that_frame():
    r = Reassembler()
    for flag in (MORE, FINAL):
        failed = r.feed(0, flag, b"x")
        assert isinstance(failed, ReassemblyFailed) and failed.correlation_id == 0
        assert type(failed.error) is ChannelProtocolError
        assert str(failed.error) == "correlation id 0 is reserved; frame dropped"
    assert r.incomplete == frozenset() and r.tombstones == frozenset()


def test_discard_forgets_an_id():
    r = Reassembler()
    r.feed(1, MORE, b"abc")
    r.discard(1)
    assert whole(r.feed(1, FINAL, b"d")) == (1, b"d")


def test_only_data_flags_are_fed():
    expect(
        LocalError,
        r"only FINAL and MORE frames carry chunks, got flags 2",
        Reassembler().feed,
        1,
        2,
        b"",
    )


@pytest.mark.parametrize(
    "value", [65518, 64 * 1024 * 1024 + 1, 0, -1, 2.0e6, "16777216", True, None]
)
def test_max_message_size_is_validated(value):
    expect(
        ConfigError,
        r"max_message_size must be an integer in 65519..67108864",
        validate_max_message_size,
        value,
    )
    expect(ConfigError, r"max_message_size must be an integer", Reassembler, value)


@pytest.mark.parametrize("value", [65519, DEFAULT_MAX_MESSAGE_SIZE, 64 * 1024 * 1024])
def test_max_message_size_bounds_are_inclusive(value):
    assert validate_max_message_size(value) == value


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_max_incomplete_is_validated(value):
    expect(ConfigError, r"max_incomplete must be a positive integer", Reassembler, 65519, value)


def test_channel_frame_is_a_frozen_value():
    frame = ChannelFrame(1, FINAL, b"ct")
    assert frame == ChannelFrame(1, 0, b"ct")
    with pytest.raises(AttributeError):
        frame.flags = 1  # type: ignore[misc]
