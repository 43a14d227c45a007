"""The pin decision (``leapcore.proto.pins.decide``) and the pin timestamps, no file in sight."""

from __future__ import annotations

import datetime as dt
import hashlib

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from leapcore.crypto.fingerprint import fingerprint
from leapcore.crypto.keys import PublicKeyBundle
from leapcore.crypto.primitives import (
    MLKEM_PUBLIC_KEY_SIZE,
    SLHDSA_PUBLIC_KEY_SIZE,
    X25519_KEY_SIZE,
)
from leapcore.proto.pins import (
    LAST_USED_PERSIST_INTERVAL,
    Pin,
    PinDecision,
    PinOutcome,
    decide,
    format_time,
    parse_time,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
US = dt.timedelta(microseconds=1)


def _key(label: str, n: int, size: int) -> bytes:
    return hashlib.shake_256(f"{label}{n}".encode()).digest(size)


def bundle(x: int = 0, m: int = 0, s: int = 0) -> PublicKeyBundle:
    """Keys numbered per slot: bundles that share a number share that key exactly."""
    return PublicKeyBundle(
        _key("x25519-", x, X25519_KEY_SIZE),
        _key("mlkem-", m, MLKEM_PUBLIC_KEY_SIZE),
        _key("slhdsa-", s, SLHDSA_PUBLIC_KEY_SIZE),
    )


def pin_of(keys: PublicKeyBundle, first: dt.datetime = T0, last: dt.datetime = T0) -> Pin:
    return Pin(keys.x25519, keys.mlkem, keys.slhdsa, first, last)


def classic_pin(keys: PublicKeyBundle, when: dt.datetime = T0) -> Pin:
    return Pin(keys.x25519, b"", b"", when, when)


# -- decide ------------------------------------------------------------------------------------


def test_unknown_worker_is_pinned_and_persisted() -> None:
    pins: dict[str, Pin] = {"other": pin_of(bundle(9, 9, 9))}
    before = dict(pins)
    decision = decide(pins, "w1", bundle(), T0)
    assert decision == PinDecision(PinOutcome.NEW, pin_of(bundle(), T0, T0), persist=True)
    assert pins == before  # decide never mutates


def test_match_within_the_interval_refreshes_in_memory_only() -> None:
    stored = pin_of(bundle(), T0, T0)
    now = T0 + LAST_USED_PERSIST_INTERVAL - US
    decision = decide({"w1": stored}, "w1", bundle(), now)
    assert decision.outcome is PinOutcome.MATCH
    assert decision.persist is False
    assert decision.pin == attrs.evolve(stored, last_used_at=now)
    assert decision.pin.first_seen_at == T0


def test_match_after_the_interval_is_persisted() -> None:
    stored = pin_of(bundle(), T0 - 7 * MINUTE, T0)
    now = T0 + LAST_USED_PERSIST_INTERVAL
    decision = decide({"w1": stored}, "w1", bundle(), now)
    assert decision == PinDecision(
        PinOutcome.MATCH, pin_of(bundle(), T0 - 7 * MINUTE, now), persist=True
    )


def test_persist_interval_is_ten_minutes() -> None:
    assert dt.timedelta(minutes=10) == LAST_USED_PERSIST_INTERVAL


def test_match_with_a_clock_behind_the_pin_keeps_the_later_time() -> None:
    stored = pin_of(bundle(), T0, T0)
    decision = decide({"w1": stored}, "w1", bundle(), T0 - 60 * MINUTE)
    assert decision == PinDecision(PinOutcome.MATCH, stored, persist=False)


@pytest.mark.parametrize(
    "presented",
    [bundle(x=1), bundle(m=1), bundle(s=1), bundle(1, 1, 1)],
    ids=["x25519", "mlkem", "slhdsa", "all"],
)
def test_any_differing_key_is_a_mismatch_that_changes_nothing(presented: PublicKeyBundle) -> None:
    stored = pin_of(bundle(), T0, T0)
    pins = {"w1": stored}
    decision = decide(pins, "w1", presented, T0 + 60 * MINUTE)
    assert decision == PinDecision(PinOutcome.MISMATCH, stored, persist=False)
    assert decision.pin is stored
    assert pins == {"w1": stored}


def test_classic_pin_with_the_same_x25519_is_upgraded_and_persisted() -> None:
    stored = classic_pin(bundle(), T0)
    now = T0 + MINUTE  # well within the refresh interval: an upgrade is always written
    decision = decide({"w1": stored}, "w1", bundle(), now)
    assert decision == PinDecision(PinOutcome.UPGRADE, pin_of(bundle(), T0, now), persist=True)


def test_classic_pin_with_another_x25519_is_a_mismatch() -> None:
    stored = classic_pin(bundle())
    decision = decide({"w1": stored}, "w1", bundle(x=1), T0 + MINUTE)
    assert decision == PinDecision(PinOutcome.MISMATCH, stored, persist=False)


def test_an_upgraded_pin_then_holds_its_post_quantum_keys() -> None:
    upgraded = decide({"w1": classic_pin(bundle())}, "w1", bundle(), T0).pin
    assert not upgraded.is_classic_only
    assert decide({"w1": upgraded}, "w1", bundle(m=1), T0).outcome is PinOutcome.MISMATCH
    assert decide({"w1": upgraded}, "w1", bundle(), T0).outcome is PinOutcome.MATCH


def test_pin_properties() -> None:
    keys = bundle()
    pin = pin_of(keys)
    assert pin.fingerprint == keys.fingerprint
    assert not pin.is_classic_only
    classic = classic_pin(keys)
    assert classic.is_classic_only
    assert classic.fingerprint == fingerprint(keys.x25519, b"", b"")
    assert keys.x25519.hex() not in repr(pin)
    assert "x25519" not in repr(pin)


# Reference model: the rules written out once more, as plainly as possible.
SLOTS = st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1))


@given(
    stored=st.one_of(st.none(), SLOTS, SLOTS.map(lambda t: (t[0], None, None))),
    presented=SLOTS,
    last_used_minutes=st.integers(-30, 30),
)
def test_decide_agrees_with_the_plain_rules(
    stored: tuple[int, int | None, int | None] | None,
    presented: tuple[int, int, int],
    last_used_minutes: int,
) -> None:
    keys = bundle(*presented)
    last = T0 + last_used_minutes * MINUTE
    pins: dict[str, Pin] = {}
    if stored is not None:
        x, m, s = stored
        if m is None:
            pins["w"] = classic_pin(bundle(x), last)
        else:
            pins["w"] = pin_of(bundle(x, m, s or 0), last, last)
    decision = decide(pins, "w", keys, T0)
    if stored is None:
        expected = PinOutcome.NEW
    elif stored[0] != presented[0]:
        expected = PinOutcome.MISMATCH
    elif stored[1] is None:
        expected = PinOutcome.UPGRADE
    elif stored[1:] != presented[1:]:
        expected = PinOutcome.MISMATCH
    else:
        expected = PinOutcome.MATCH
    assert decision.outcome is expected
    if expected is PinOutcome.MISMATCH:
        assert decision.pin is pins["w"] and not decision.persist
        return
    assert (decision.pin.x25519, decision.pin.mlkem, decision.pin.slhdsa) == (
        keys.x25519,
        keys.mlkem,
        keys.slhdsa,
    )
    assert decision.pin.first_seen_at == (T0 if stored is None else last)
    assert decision.pin.last_used_at == (max(T0, last) if expected is PinOutcome.MATCH else T0)
    assert decision.persist == (expected is not PinOutcome.MATCH or last_used_minutes <= -10)


# -- timestamps --------------------------------------------------------------------------------


def test_format_time_is_utc_with_microseconds() -> None:
    assert format_time(T0) == "2026-03-01T12:00:00.250000Z"
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert format_time(dt.datetime(2026, 3, 1, 1, 30, tzinfo=plus2)) == (
        "2026-02-28T23:30:00.000000Z"
    )


def test_format_time_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match=r"^timestamps must be timezone-aware$"):
        format_time(dt.datetime(2026, 3, 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T12:00:00Z", dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)),
        ("2026-03-01t12:00:00z", dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)),
        ("2026-03-01T12:00:00.5Z", dt.datetime(2026, 3, 1, 12, 0, 0, 500_000, tzinfo=dt.UTC)),
        # LeapMux writes nanoseconds; they are truncated (not rounded) to microseconds.
        (
            "2026-03-01T12:00:00.123456789Z",
            dt.datetime(2026, 3, 1, 12, 0, 0, 123_456, tzinfo=dt.UTC),
        ),
        ("2026-03-01T14:30:00+02:30", dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)),
        ("2026-03-01T00:15:00-23:59", dt.datetime(2026, 3, 2, 0, 14, tzinfo=dt.UTC)),
        ("2026-03-01T12:00:00-00:00", dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)),
    ],
)
def test_parse_time_accepts_rfc3339(text: str, expected: dt.datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo is dt.UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-03-01",
        "2026-03-01 12:00:00Z",  # a space is not the RFC 3339 separator here
        "2026-03-01T12:00:00",  # no zone
        "2026-03-01T12:00Z",
        "2026-03-01T12:00:00.Z",
        "2026-03-01T12:00:00.1234567890Z",  # ten fraction digits
        "2026-03-01T12:00:00+0200",
        "2026-3-01T12:00:00Z",
        " 2026-03-01T12:00:00Z",
        "2026-03-01T12:00:00Z ",
        "2026-03-01T12:00:00Z\n",
        "\u0662\u0660\u0662\u0666-03-01T12:00:00Z",  # Arabic-Indic digits are not digits here
        "2026-03-01T12:00:00+24:00",
        "2026-03-01T12:00:00+05:60",
    ],
)
def test_parse_time_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_time(text)
    assert str(info.value) in (
        f"not an RFC 3339 timestamp: {text!r}",
        f"not an RFC 3339 timestamp (bad offset): {text!r}",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-02-29T12:00:00Z", "day is out of range for month"),
        ("2026-13-01T12:00:00Z", "month must be in 1..12"),
        ("2026-03-01T24:00:00Z", "hour must be in 0..23"),
        ("2026-03-01T12:00:60Z", "second must be in 0..59"),
    ],
)
def test_parse_time_rejects_impossible_dates(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_time(text)


@given(
    st.datetimes(
        min_value=dt.datetime(1, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=45)), dt.timezone(-MINUTE * 600)]
        ),
    )
)
def test_format_then_parse_is_the_same_instant(when: dt.datetime) -> None:
    text = format_time(when)
    assert text.endswith("Z") and len(text) == 27
    assert parse_time(text) == when
    assert format_time(parse_time(text)) == text
