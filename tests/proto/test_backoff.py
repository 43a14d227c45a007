"""Reconnect backoff (behavior.md §1) with injected randomness and time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leapcore.errors import LocalError
from leapcore.proto.backoff import Backoff, Outcome, ReconnectAction, ReconnectPolicy

BASES = [1, 2, 4, 8, 16, 32, 64, 128, 180, 180, 180]


def test_base_sequence_and_cap() -> None:
    b = Backoff(jitter=0)
    assert [b.next() for _ in BASES] == BASES


def test_sum_of_first_eight_bases_is_255() -> None:
    b = Backoff(jitter=0)
    assert sum(b.next() for _ in range(8)) == 255


@pytest.mark.parametrize("seed", range(20))
def test_jitter_windows_hold_over_seeded_samples(seed: int) -> None:
    rng = random.Random(seed)
    b = Backoff(uniform=rng.random)
    for base in BASES * 30:
        if b.base != base:  # the cap repeats 180 for ever; restart the ladder
            b.reset()
            assert b.base == base
        delay = b.next()
        assert 0.8 * base <= delay <= 1.2 * base


def test_extremes_of_the_window() -> None:
    assert Backoff(uniform=lambda: 0.0).next() == pytest.approx(0.8)
    top = Backoff(uniform=lambda: 1 - 2**-53).next()
    assert top == pytest.approx(1.2) and top <= 1.2
    capped = Backoff(uniform=lambda: 0.999999999999)
    for _ in range(9):
        last = capped.next()
    assert last <= 216.0  # 180 * 1.2: jitter is applied after the cap


def test_doubling_uses_the_unjittered_base() -> None:
    b = Backoff(uniform=lambda: 0.0)  # always the low end: 0.8 * base
    delays = [b.next() for _ in range(4)]
    assert delays == pytest.approx([0.8, 1.6, 3.2, 6.4])


def test_samples_spread_across_the_window() -> None:
    rng = random.Random(7)
    samples = []
    for _ in range(2000):
        b = Backoff(uniform=rng.random)
        samples.append(b.next())
    assert min(samples) < 0.81 and max(samples) > 1.19
    low_half = sum(1 for s in samples if s < 1.0)
    assert 900 < low_half < 1100


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"initial": -1}, {"maximum": 0.5}, {"jitter": 1.0}, {"jitter": -0.1}],
)
def test_invalid_construction(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalError):
        Backoff(**kwargs)


def test_boundary_constructions_are_valid() -> None:
    b = Backoff(initial=5, maximum=5, jitter=0)
    assert [b.next(), b.next()] == [5, 5]


def _policy() -> ReconnectPolicy:
    return ReconnectPolicy(Backoff(jitter=0))


def test_short_connections_keep_growing() -> None:
    p = _policy()
    delays = [p.after_attempt(0, 29.9, Outcome.TRANSIENT).delay for _ in range(4)]
    assert delays == [1, 2, 4, 8]


def test_connection_of_thirty_seconds_from_the_dial_resets() -> None:
    p = _policy()
    for _ in range(5):
        p.after_attempt(0, 1, Outcome.TRANSIENT)
    d = p.after_attempt(100.0, 130.0, Outcome.TRANSIENT)
    assert d.action is ReconnectAction.RETRY and d.delay == 1


def test_go_away_delay_is_honoured_once_exactly_then_backoff_resets() -> None:
    p = _policy()
    for _ in range(4):
        p.after_attempt(0, 1, Outcome.TRANSIENT)  # base now 16
    p.hub_requested_delay(10)
    p.hub_requested_delay(20)  # last one wins
    d = p.after_attempt(0, 1, Outcome.TRANSIENT)
    assert (d.action, d.delay, d.hub_requested) == (ReconnectAction.RETRY, 20, True)
    d = p.after_attempt(0, 1, Outcome.TRANSIENT)
    assert (d.delay, d.hub_requested) == (1, False)


def test_zero_go_away_means_no_request() -> None:
    p = _policy()
    p.hub_requested_delay(0)
    assert not p.after_attempt(0, 1, Outcome.TRANSIENT).hub_requested
    with pytest.raises(LocalError):
        p.hub_requested_delay(-1)


@pytest.mark.parametrize(
    ("outcome", "action"),
    [
        (Outcome.WORKER_DELETED, ReconnectAction.WIPE_AND_EXIT),
        (Outcome.HUB_MISMATCH, ReconnectAction.HUB_MISMATCH),
        (Outcome.NAME_TAKEN, ReconnectAction.FAIL),
        (Outcome.REGISTRATION_REJECTED, ReconnectAction.FAIL),
        (Outcome.CANCELLED, ReconnectAction.STOP),
    ],
)
def test_permanent_outcomes_never_retry_even_with_a_pending_go_away(
    outcome: Outcome, action: ReconnectAction
) -> None:
    p = _policy()
    p.hub_requested_delay(10)
    assert p.after_attempt(0, 1, outcome).action is action


@given(
    steps=st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.integers(0, 30)), max_size=50),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_delay_is_within_the_outer_bounds(steps: list[tuple[float, int]], seed: int) -> None:
    rng = random.Random(seed)
    p = ReconnectPolicy(Backoff(uniform=rng.random))
    for duration, go_away in steps:
        if go_away > 25:
            p.hub_requested_delay(go_away)
        d = p.after_attempt(0.0, duration, Outcome.TRANSIENT)
        assert d.action is ReconnectAction.RETRY
        if d.hub_requested:
            assert d.delay == go_away
        else:
            assert 0.8 <= d.delay <= 216.0
