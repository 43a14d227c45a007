"""A worker's hub URL list (sans-IO): how it is written, and the passes over it."""

from __future__ import annotations

import pytest
from support.helpers import expect

from leapcore.errors import ConfigError
from leapcore.proto.backoff import (
    Backoff,
    Outcome,
    ReconnectAction,
    ReconnectDecision,
    ReconnectPolicy,
)
from leapcore.proto.hub_failover import (
    HubFailover,
    check_hub_urls,
    hub_urls_problem,
    split_hub_urls,
)
from leapcore.proto.limits import MAX_HUB_URLS

A, B, C = "http://a:1", "http://b:2", "http://c:3"
RETRY_NOW = ReconnectDecision(ReconnectAction.RETRY, 0.0)


def failover(urls: list[str], preferred: str = "") -> HubFailover:
    # No jitter: every backoff wait is its base.
    policy = ReconnectPolicy(Backoff(jitter=0.0))
    return HubFailover(urls, policy, preferred=preferred)


def fail(f: HubFailover, lasted: float = 0.0, **kw: object) -> tuple[float, str]:
    """One transient failure of an attempt that lasted ``lasted``: (wait, next URL)."""
    decision = f.after_attempt(100.0, 100.0 + lasted, Outcome.TRANSIENT, **kw)  # type: ignore[arg-type]
    assert decision.action is ReconnectAction.RETRY
    return decision.delay, f.current


# -- writing the list ----------------------------------------------------------------------------


def test_split_takes_commas_and_repeats() -> None:
    assert split_hub_urls(f" {A} , {B}") == [A, B]
    assert split_hub_urls([A, f"{B},{C}"]) == [A, B, C]
    assert split_hub_urls("  ") == []  # one blank text: unset


@pytest.mark.parametrize("value", [f"{A},,{B}", f"{A},", f",{A}", [A, ""], [A, " "]])
def test_an_empty_element_is_refused(value: str | list[str]) -> None:
    expect(
        ConfigError,
        "^LEAPCORE_WORKER_HUB: .* has an empty hub URL",
        split_hub_urls,
        value,
        where="LEAPCORE_WORKER_HUB",
    )


def test_duplicates_and_too_many_are_refused() -> None:
    assert hub_urls_problem([A, B]) is None and hub_urls_problem([]) is None
    assert hub_urls_problem([A, B, A]) == f"names hub URL {A!r} twice"
    many = [f"http://h{i}:1" for i in range(MAX_HUB_URLS + 1)]
    assert hub_urls_problem(many[:MAX_HUB_URLS]) is None
    expect(ConfigError, f"^hub names 17 hub URLs; at most {MAX_HUB_URLS}", check_hub_urls, many)
    expect(ConfigError, "^hub: no hub URL$", HubFailover, [])


# -- passes --------------------------------------------------------------------------------------


def test_one_url_is_the_reconnect_policy_unchanged() -> None:
    f = failover([A])
    assert [fail(f)[0] for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert fail(f, lasted=30.0) == (1.0, A)  # a long link resets the backoff
    f.policy.hub_requested_delay(10)
    assert fail(f, went_away=True) == (10.0, A)  # the go-away delay, exactly
    assert fail(f) == (1.0, A)  # ... then the backoff from its start


def test_a_dead_hub_is_left_at_once_and_a_failed_pass_waits() -> None:
    f = failover([A, B, C])
    # Every URL fails at once: two immediate moves, then the backoff, then the same again.
    assert [fail(f) for _ in range(6)] == [
        (0.0, B),
        (0.0, C),
        (1.0, A),
        (0.0, B),
        (0.0, C),
        (2.0, A),
    ]


def test_passes_start_where_a_hub_last_greeted() -> None:
    f = failover([A, B, C], preferred=B)
    assert f.current == B and f.order() == [B, C, A]
    assert fail(f) == (0.0, C)
    f.greeted()  # C answered, then dropped the link at once
    assert fail(f) == (0.0, A)
    assert fail(f) == (1.0, C)  # the pass failed: the next one starts at C


def test_a_long_link_resets_the_backoff_and_starts_a_new_pass() -> None:
    f = failover([A, B])
    assert [fail(f) for _ in range(4)] == [(0.0, B), (1.0, A), (0.0, B), (2.0, A)]
    f.greeted()
    assert fail(f, lasted=45.0) == (0.0, B)  # A's link was up: B at once
    assert fail(f) == (1.0, A)  # B dead too: the backoff, from its start


@pytest.mark.parametrize("delay", [0, 10])
def test_a_go_away_moves_on_at_once(delay: int) -> None:
    f = failover([A, B])
    f.greeted()
    f.policy.hub_requested_delay(delay)
    assert fail(f, lasted=2.0, went_away=True) == (0.0, B)
    # B is dead too: the go-away's delay (exactly, then a reset), or the backoff for 0.
    wait, url = fail(f)
    assert (wait, url) == (float(delay) if delay else 1.0, A)
    assert fail(f) == (0.0, B)
    assert fail(f)[0] == (1.0 if delay else 2.0)


def test_a_spent_go_away_delay_is_forgotten() -> None:
    f = failover([A, B])
    f.policy.hub_requested_delay(10)
    assert fail(f, went_away=True) == (0.0, B)
    f.greeted()  # B held the link for a minute, then dropped it
    assert fail(f, lasted=60.0) == (0.0, A)
    assert fail(f) == (1.0, B)  # not the 10 s of A's old go-away


def test_a_hub_of_another_deployment_is_dropped() -> None:
    f = failover([A, B, C])
    decision = f.after_attempt(0.0, 0.1, Outcome.HUB_MISMATCH)
    assert decision == RETRY_NOW and f.current == B and f.refused == [A]
    assert f.usable == [B, C] and f.order() == [B, C]
    assert fail(f) == (0.0, C)
    assert fail(f) == (1.0, B)  # a pass is now two URLs, and never A again
    assert f.after_attempt(0.0, 0.1, Outcome.HUB_MISMATCH) == RETRY_NOW
    assert f.current == C
    # The last usable URL's refusal is the worker's, as with one URL.
    last = f.after_attempt(0.0, 0.1, Outcome.HUB_MISMATCH)
    assert last.action is ReconnectAction.HUB_MISMATCH and f.refused == [A, B]


def test_permanent_outcomes_are_not_failed_over() -> None:
    f = failover([A, B])
    for outcome, action in [
        (Outcome.WORKER_DELETED, ReconnectAction.WIPE_AND_EXIT),
        (Outcome.TOKEN_EXPIRED, ReconnectAction.TOKEN_EXPIRED),
        (Outcome.NAME_TAKEN, ReconnectAction.FAIL),
        (Outcome.CANCELLED, ReconnectAction.STOP),
    ]:
        assert f.after_attempt(0.0, 1.0, outcome).action is action
        assert f.current == A


def test_use_names_the_hub_that_answered() -> None:
    f = failover([A, B, C])
    f.use(C)
    assert f.current == C and f.order() == [C, A, B]
    with pytest.raises(ValueError, match="not in tuple"):
        f.use("http://d:4")
