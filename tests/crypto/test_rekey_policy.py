"""The rekey timing rules (spec/handshake.md §5), with time passed in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from leapcore.crypto.rekey_policy import (
    INITIATOR_TRANSITIONS,
    InitiatorRekeyPolicy,
    RekeyAction,
    RekeyState,
    RekeyTimings,
    ResponderRekeyPolicy,
)
from leapcore.errors import LocalError, RekeyError

T0 = 1000.0
HOUR = 3600.0
MIN = 60.0


def test_defaults_match_the_spec() -> None:
    t = RekeyTimings()
    assert (t.max_age, t.min_interval, t.hard_ceiling) == (HOUR, 50 * MIN, 70 * MIN)
    assert (t.reject_backoff, t.timeout, t.idle_check) == (60.0, 10.0, 60.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_interval": 0},
        {"min_interval": 4000.0},  # above max_age
        {"hard_ceiling": 3600.0},  # not above max_age
        {"timeout": 0},
        {"reject_backoff": -1},
    ],
)
def test_inconsistent_timings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalError):
        RekeyTimings(**kwargs)


def test_no_rekey_before_max_age() -> None:
    p = InitiatorRekeyPolicy(T0)
    assert p.poll(T0) is RekeyAction.NONE
    assert p.poll(T0 + HOUR - 0.001) is RekeyAction.NONE
    assert p.state is RekeyState.IDLE


def test_age_based_rekey_at_one_hour_then_ack_resets_the_age() -> None:
    p = InitiatorRekeyPolicy(T0)
    assert p.poll(T0 + HOUR) is RekeyAction.START
    assert p.state is RekeyState.AWAITING_REPLY
    # While waiting, polling does not start a second request.
    assert p.poll(T0 + HOUR + 5) is RekeyAction.NONE
    p.on_ack(T0 + HOUR + 6)
    assert p.state is RekeyState.IDLE
    assert p.key_since == T0 + HOUR + 6
    assert p.poll(T0 + 2 * HOUR) is RekeyAction.NONE
    assert p.poll(T0 + 2 * HOUR + 6) is RekeyAction.START


def test_soft_request_starts_at_once_even_when_young() -> None:
    p = InitiatorRekeyPolicy(T0)
    assert p.poll(T0 + 1, soft=True) is RekeyAction.START


def test_no_reply_within_ten_seconds_closes() -> None:
    p = InitiatorRekeyPolicy(T0)
    assert p.poll(T0 + HOUR) is RekeyAction.START
    assert p.poll(T0 + HOUR + 9.999) is RekeyAction.NONE
    assert p.poll(T0 + HOUR + 10) is RekeyAction.CLOSE
    assert p.state is RekeyState.CLOSED
    assert p.poll(T0 + HOUR + 11) is RekeyAction.CLOSE


def test_reject_backs_off_retry_after_then_retries() -> None:
    p = InitiatorRekeyPolicy(T0)
    assert p.poll(T0 + HOUR) is RekeyAction.START
    p.on_reject(T0 + HOUR + 1, retry_after_ms=120_000)
    assert p.poll(T0 + HOUR + 120) is RekeyAction.NONE
    assert p.poll(T0 + HOUR + 121) is RekeyAction.START


def test_reject_with_zero_retry_backs_off_sixty_seconds() -> None:
    p = InitiatorRekeyPolicy(T0)
    p.poll(T0 + HOUR)
    p.on_reject(T0 + HOUR, retry_after_ms=0)
    assert p.poll(T0 + HOUR + 59.9) is RekeyAction.NONE
    assert p.poll(T0 + HOUR + 60) is RekeyAction.START


def test_soft_request_ignores_the_reject_backoff() -> None:
    p = InitiatorRekeyPolicy(T0)
    p.poll(T0 + HOUR)
    p.on_reject(T0 + HOUR, retry_after_ms=600_000)
    assert p.poll(T0 + HOUR + 1, soft=True) is RekeyAction.START


def test_hard_ceiling_closes_instead_of_using_an_older_key() -> None:
    p = InitiatorRekeyPolicy(T0)
    p.poll(T0 + HOUR)
    p.on_reject(T0 + HOUR, retry_after_ms=20 * 60 * 1000)
    assert p.poll(T0 + 70 * MIN - 0.01) is RekeyAction.NONE
    assert p.poll(T0 + 70 * MIN) is RekeyAction.CLOSE
    assert p.state is RekeyState.CLOSED


@pytest.mark.parametrize("event", ["ack", "reject"])
def test_reply_without_a_request_is_a_protocol_error(event: str) -> None:
    p = InitiatorRekeyPolicy(T0)
    with pytest.raises(RekeyError, match="not allowed in state 'idle'"):
        if event == "ack":
            p.on_ack(T0 + 1)
        else:
            p.on_reject(T0 + 1, retry_after_ms=5)
    assert p.state is RekeyState.IDLE


def test_negative_retry_after_is_a_protocol_error() -> None:
    p = InitiatorRekeyPolicy(T0)
    p.poll(T0 + HOUR)
    with pytest.raises(RekeyError):
        p.on_reject(T0 + HOUR, retry_after_ms=-1)
    assert p.state is RekeyState.AWAITING_REPLY


def test_next_deadline_points_at_the_next_decision() -> None:
    p = InitiatorRekeyPolicy(T0)
    # Idle: at most idle_check away.
    assert p.next_deadline(T0) == T0 + 60
    assert p.next_deadline(T0 + HOUR - 10) == T0 + HOUR
    p.poll(T0 + HOUR)
    assert p.next_deadline(T0 + HOUR) == T0 + HOUR + 10
    p.on_reject(T0 + HOUR + 1, retry_after_ms=30_000)
    assert p.next_deadline(T0 + HOUR + 1) == T0 + HOUR + 31


def test_responder_rejects_age_only_requests_before_fifty_minutes() -> None:
    r = ResponderRekeyPolicy(T0)
    d = r.on_request(T0 + 10 * MIN, soft=False)
    assert not d.accept
    assert d.retry_after_ms == 40 * 60 * 1000
    d = r.on_request(T0 + 50 * MIN - 0.0004, soft=False)
    assert not d.accept and d.retry_after_ms == 1  # never 0: 0 means "60 s" to the initiator
    assert r.on_request(T0 + 50 * MIN, soft=False).accept
    # The interval restarts from the accepted rekey.
    assert not r.on_request(T0 + 51 * MIN, soft=False).accept


def test_responder_always_accepts_soft_requests() -> None:
    r = ResponderRekeyPolicy(T0)
    assert r.on_request(T0 + 1, soft=True).accept
    assert r.on_request(T0 + 2, soft=True).accept
    assert r.key_since == T0 + 2


def test_transition_table_is_the_whole_machine() -> None:
    # Every state but CLOSED has an exit; CLOSED is terminal.
    sources = {s for s, _ in INITIATOR_TRANSITIONS}
    assert sources == {RekeyState.IDLE, RekeyState.AWAITING_REPLY}
    assert RekeyState.CLOSED in INITIATOR_TRANSITIONS.values()


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0, 2000, allow_nan=False), st.booleans(), st.sampled_from("arp")),
        max_size=40,
    )
)
def test_initiator_and_responder_together_never_exceed_the_hard_ceiling(
    steps: list[tuple[float, bool, str]],
) -> None:
    """A client and a worker driving each other: while the channel is open, the key in use is
    never older than 70 minutes, and the client never has two requests in flight."""
    now = T0
    client = InitiatorRekeyPolicy(now)
    worker = ResponderRekeyPolicy(now)
    for dt, soft, _ in steps:
        now += dt
        action = client.poll(now, soft=soft)
        if action is RekeyAction.CLOSE:
            assert client.state is RekeyState.CLOSED
            return
        assert now - client.key_since < client.timings.hard_ceiling
        if action is RekeyAction.START:
            decision = worker.on_request(now, soft=soft)
            if decision.accept:
                client.on_ack(now)
            else:
                assert decision.retry_after_ms >= 1
                client.on_reject(now, decision.retry_after_ms)
        assert client.state is RekeyState.IDLE


class InitiatorModel(RuleBasedStateMachine):
    """The initiator policy against a plain model of the rules."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.p = InitiatorRekeyPolicy(self.now)
        self.key_since = T0
        self.retry_at = T0
        self.sent_at: float | None = None
        self.closed = False

    @rule(dt=st.floats(0, 1200, allow_nan=False), soft=st.booleans())
    def poll(self, dt: float, soft: bool) -> None:
        self.now += dt
        action = self.p.poll(self.now, soft=soft)
        t = self.p.timings
        if self.closed:
            expected = RekeyAction.CLOSE
        elif self.now - self.key_since >= t.hard_ceiling or (
            self.sent_at is not None and self.now - self.sent_at >= t.timeout
        ):
            expected = RekeyAction.CLOSE
            self.closed = True
        elif self.sent_at is None and (
            soft or (self.now - self.key_since >= t.max_age and self.now >= self.retry_at)
        ):
            expected = RekeyAction.START
            self.sent_at = self.now
        else:
            expected = RekeyAction.NONE
        assert action is expected

    @precondition(lambda self: self.sent_at is not None and not self.closed)
    @rule()
    def ack(self) -> None:
        self.p.on_ack(self.now)
        self.key_since = self.retry_at = self.now
        self.sent_at = None

    @precondition(lambda self: self.sent_at is not None and not self.closed)
    @rule(ms=st.integers(0, 3_600_000))
    def reject(self, ms: int) -> None:
        self.p.on_reject(self.now, ms)
        self.retry_at = self.now + (ms / 1000 if ms else 60.0)
        self.sent_at = None

    @invariant()
    def state_agrees(self) -> None:
        if self.closed:
            assert self.p.state is RekeyState.CLOSED
        elif self.sent_at is not None:
            assert self.p.state is RekeyState.AWAITING_REPLY
        else:
            assert self.p.state is RekeyState.IDLE


TestInitiatorModel = InitiatorModel.TestCase
TestInitiatorModel.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
