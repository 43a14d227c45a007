"""Byte-stream receive windows grow while the reader keeps up, within per-stream and
per-channel budgets (leapcore.proto.channel_windows), with the wire unchanged."""

from __future__ import annotations

import os

from leapcore.crypto.transport import TransportSession
from leapcore.proto.channel_events import BytesReceived
from leapcore.proto.channel_mux import ChannelEndpoint
from leapcore.proto.channel_windows import (
    CHANNEL_WINDOW_BUDGET,
    DEFAULT_WINDOW,
    MAX_STREAM_WINDOW,
    ByteWindow,
    WindowBudget,
)

KIB = 1024


def _window(window: int = DEFAULT_WINDOW, budget: WindowBudget | None = None) -> ByteWindow:
    w = ByteWindow(budget=WindowBudget() if budget is None else budget)
    w.grant(window)
    return w


def _cycle(w: ByteWindow, n: int) -> int:
    """``n`` bytes arrive and are consumed at once; the update sent (0: none yet)."""
    w.on_data(1, n)
    if w.consume(1, n):
        return w.release()
    return 0


def _sane(w: ByteWindow) -> None:
    assert w.unconsumed + w.receive_credit + w.pending_update == w.receive_window


def test_window_doubles_while_the_reader_keeps_up_and_stops_at_the_cap() -> None:
    w = _window()
    seen = [w.receive_window]
    for _ in range(200):
        _cycle(w, 64 * KIB)
        _sane(w)
        if w.receive_window != seen[-1]:
            seen.append(w.receive_window)
    assert seen == [256 * KIB, 512 * KIB, 1024 * KIB, 2048 * KIB, 4096 * KIB]
    assert w.receive_window == MAX_STREAM_WINDOW
    assert w.grown == MAX_STREAM_WINDOW - DEFAULT_WINDOW


def test_update_grants_the_growth_to_the_sender() -> None:
    w = _window(256 * KIB)
    w.on_data(1, 128 * KIB)
    assert w.consume(1, 128 * KIB)
    increment = w.release()
    assert increment == 128 * KIB + 256 * KIB  # what was consumed plus the growth
    assert w.receive_credit == 512 * KIB - 0 and w.receive_window == 512 * KIB
    _sane(w)


def test_a_reader_that_falls_behind_never_grows_the_window() -> None:
    w = _window()
    for _ in range(100):
        # 64 KiB arrive, 32 KiB are read: the backlog stays above an eighth of the window
        w.on_data(1, min(64 * KIB, w.receive_credit))
        if w.consume(1, 32 * KIB):
            assert w.unconsumed > w.receive_window // 8
            w.release()
        if w.receive_credit == 0:
            while w.unconsumed > 64 * KIB:
                if w.consume(1, 32 * KIB):
                    w.release()
    assert w.receive_window == DEFAULT_WINDOW
    assert w.grown == 0
    _sane(w)


def test_the_channel_budget_bounds_growth_and_ended_streams_give_it_back() -> None:
    budget = WindowBudget()
    streams = [_window(budget=budget) for _ in range(4)]
    for _ in range(400):
        for w in streams:
            _cycle(w, 64 * KIB)
    grown = sum(w.grown for w in streams)
    assert grown == CHANNEL_WINDOW_BUDGET  # 4 streams would take 15 MiB; 8 MiB are lent
    assert budget.available == 0
    assert all(w.receive_window <= MAX_STREAM_WINDOW for w in streams)
    streams[0].retire()
    assert budget.available == streams[0].receive_window - DEFAULT_WINDOW
    streams[0].retire()  # once only
    assert budget.available == streams[0].receive_window - DEFAULT_WINDOW


def test_no_budget_means_no_growth() -> None:
    w = ByteWindow()
    w.grant(DEFAULT_WINDOW)
    for _ in range(50):
        _cycle(w, 64 * KIB)
    assert w.receive_window == DEFAULT_WINDOW


def _pair() -> tuple[ChannelEndpoint, ChannelEndpoint]:
    k1, k2 = os.urandom(32), os.urandom(32)
    i = ChannelEndpoint(TransportSession(k2, k1), role="initiator", mode="classic", now=0.0)
    r = ChannelEndpoint(TransportSession(k1, k2), role="responder", mode="classic", now=0.0)
    return i, r


def _pump(src: ChannelEndpoint, dst: ChannelEndpoint) -> list[object]:
    events: list[object] = []
    for frame in src.frames_to_send():
        events += dst.receive_frame(frame, 0.0)
    return events


def test_endpoints_grow_the_senders_credit_and_return_the_budget_at_the_end() -> None:
    """Through two real endpoints: the receiver's updates grow the sender's credit past the
    initial window, and the stream's growth goes back to the budget when it closes."""
    i, r = _pair()
    cid = i.open_byte_stream("pipe")
    _pump(i, r)
    r.accept_byte_stream(cid)
    _pump(r, i)
    assert i.window(cid).send_credit == DEFAULT_WINDOW
    best = 0
    for _ in range(60):
        sent = i.send_bytes(cid, bytes(200 * KIB))
        for event in _pump(i, r):
            if isinstance(event, BytesReceived):
                r.consume(cid, len(event.data))
        _pump(r, i)
        best = max(best, i.window(cid).send_credit + sent)
    assert r.window(cid).receive_window == MAX_STREAM_WINDOW
    assert best > DEFAULT_WINDOW
    assert r.window_budget.available == CHANNEL_WINDOW_BUDGET - (MAX_STREAM_WINDOW - DEFAULT_WINDOW)
    i.send_eof(cid)
    r.send_eof(cid)
    for event in _pump(i, r):
        if isinstance(event, BytesReceived):
            r.consume(cid, len(event.data))
    _pump(r, i)
    assert cid not in r.streams
    assert r.window_budget.available == CHANNEL_WINDOW_BUDGET


def test_send_bytes_takes_a_memoryview_and_copies_what_it_takes() -> None:
    """Zero-copy input: a contiguous byte view is accepted, and what was taken is copied
    before send_bytes returns (the caller may reuse its buffer); other views are refused."""
    import pytest

    from leapcore.errors import StreamUsageError

    i, r = _pair()
    cid = i.open_byte_stream("pipe")
    _pump(i, r)
    r.accept_byte_stream(cid)
    _pump(r, i)
    buffer = bytearray(b"a" * 100_000)
    assert i.send_bytes(cid, memoryview(buffer)[10:]) == 99_990
    buffer[:] = b"b" * 100_000  # reused at once
    got = b"".join(e.data for e in _pump(i, r) if isinstance(e, BytesReceived))
    assert got == b"a" * 99_990
    with pytest.raises(StreamUsageError, match="data must be bytes"):
        i.send_bytes(cid, memoryview(bytes(10))[::2])
    with pytest.raises(StreamUsageError, match="data must be bytes"):
        i.send_bytes(cid, bytearray(10))  # type: ignore[arg-type]


def test_byte_view_is_flat_and_copies_only_non_contiguous_data() -> None:
    import array

    from leapcore.peer.channel import _byte_view

    data = bytearray(b"xyz")
    view = _byte_view(data)
    assert view.obj is data and bytes(view) == b"xyz"
    assert bytes(_byte_view(memoryview(b"abcdef")[::2])) == b"ace"
    ints = _byte_view(array.array("i", [1, 2]))
    assert ints.format == "B" and len(ints) == 2 * array.array("i").itemsize
