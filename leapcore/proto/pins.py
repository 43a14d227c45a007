"""Trust on first use: what to do when a worker presents its keys (sans-IO).

A pin is a worker's three public keys as first seen, with when it was first
seen and last used. :func:`decide` compares presented keys with the pins and
says what happens; it never mutates anything and takes the time as an
argument. :mod:`leapcore.store.pinstore` applies the decision to a file.

Rules:

* An unknown worker id is pinned (``NEW``) and the store is written at once.
* All keys equal: ``MATCH``; ``last_used_at`` moves to ``now``, persisted only
  if the stored value is at least 10 minutes old (so a busy client does not
  rewrite its pin file on every channel).
* Any key different: ``MISMATCH``; nothing changes, and the caller raises
  :class:`~leapcore.errors.KeyMismatch`.
* **Classic pins.** A pin written by a client that only saw a classic-mode
  worker's X25519 key (LeapMux writes its ML-KEM and SLH-DSA keys as empty
  strings) holds empty post-quantum keys. When that worker later presents the
  same X25519 key together with post-quantum keys, the pin is completed
  (``UPGRADE``, persisted): the post-quantum keys are trusted on first use,
  as the X25519 key once was. (A leapcore worker always reports all three
  keys, so presented keys are always a full :class:`PublicKeyBundle`; a
  classic-only pin can only come from an older or foreign pin file.)
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping
from typing import Final

import attrs

from ..crypto.fingerprint import fingerprint
from ..crypto.keys import PublicKeyBundle

__all__ = [
    "LAST_USED_PERSIST_INTERVAL",
    "Pin",
    "PinDecision",
    "PinOutcome",
    "decide",
    "format_time",
    "parse_time",
]

#: A match rewrites ``last_used_at`` on disk only when the stored value is this old.
LAST_USED_PERSIST_INTERVAL: Final = dt.timedelta(minutes=10)

_RFC3339: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def format_time(when: dt.datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. ``2026-11-23T16:50:00.123456Z``."""
    if when.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    # Not strftime: its %Y drops the leading zeros of years before 1000 on glibc, and the
    # store would then write a timestamp it cannot read back.
    u = when.astimezone(dt.UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T"
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}Z"
    )


def parse_time(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp (``Z`` or an offset; up to nanoseconds, kept to µs)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second, frac, zulu, sign, oh, om = m.groups()
    offset = dt.timedelta(0)
    if not zulu:
        if int(oh) > 23 or int(om) > 59:
            raise ValueError(f"not an RFC 3339 timestamp (bad offset): {text!r}")
        offset = dt.timedelta(hours=int(oh), minutes=int(om))
        if sign == "-":
            offset = -offset
    micros = int((frac or "0").ljust(9, "0")[:6])
    when = dt.datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        micros,
        tzinfo=dt.timezone(offset),
    )
    return when.astimezone(dt.UTC)


@attrs.frozen
class Pin:
    """A worker's pinned keys. Empty ``mlkem``/``slhdsa``: a classic-only pin."""

    x25519: bytes = attrs.field(repr=False)
    mlkem: bytes = attrs.field(repr=False)
    slhdsa: bytes = attrs.field(repr=False)
    first_seen_at: dt.datetime
    last_used_at: dt.datetime

    @property
    def is_classic_only(self) -> bool:
        return not self.mlkem and not self.slhdsa

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.x25519, self.mlkem, self.slhdsa)


class PinOutcome(enum.Enum):
    NEW = "new"
    MATCH = "match"
    UPGRADE = "upgrade"
    MISMATCH = "mismatch"


@attrs.frozen
class PinDecision:
    outcome: PinOutcome
    #: The pin after the decision (for MISMATCH: the unchanged stored pin).
    pin: Pin
    #: Whether the store must be written.
    persist: bool


def decide(
    pins: Mapping[str, Pin], worker_id: str, keys: PublicKeyBundle, now: dt.datetime
) -> PinDecision:
    """What presenting ``keys`` for ``worker_id`` at ``now`` does to ``pins`` (pure)."""
    stored = pins.get(worker_id)
    if stored is None:
        pin = Pin(keys.x25519, keys.mlkem, keys.slhdsa, now, now)
        return PinDecision(PinOutcome.NEW, pin, persist=True)
    if stored.x25519 != keys.x25519:
        return PinDecision(PinOutcome.MISMATCH, stored, persist=False)
    if stored.is_classic_only and (keys.mlkem or keys.slhdsa):
        pin = attrs.evolve(stored, mlkem=keys.mlkem, slhdsa=keys.slhdsa, last_used_at=now)
        return PinDecision(PinOutcome.UPGRADE, pin, persist=True)
    if stored.mlkem != keys.mlkem or stored.slhdsa != keys.slhdsa:
        return PinDecision(PinOutcome.MISMATCH, stored, persist=False)
    stale = now - stored.last_used_at >= LAST_USED_PERSIST_INTERVAL
    pin = attrs.evolve(stored, last_used_at=max(now, stored.last_used_at))
    return PinDecision(PinOutcome.MATCH, pin, persist=stale)
