"""When to rekey: the timing rules of ``spec/handshake.md`` §5 as pure state machines.

Time is always an argument (``now``, seconds on a monotonic clock). Ages are
measured from the handshake, then from the last successful rekey.

* :class:`InitiatorRekeyPolicy` (client): asks for a rekey at 1 h of key age,
  or at once when a nonce is past the soft limit; closes the channel when a
  request gets no answer in 10 s, or when the key would be older than 70 min.
  A reject backs off ``retry_after_ms`` (60 s when it is 0).
* :class:`ResponderRekeyPolicy` (worker): rejects an age-only request made
  less than 50 min after the last rekey; soft requests are always accepted.

The legal moves are the table :data:`INITIATOR_TRANSITIONS`; a move that is not
in it is a protocol error (e.g. an ack with no request in flight).
"""

from __future__ import annotations

import enum
import math
from typing import Final

import attrs

from ..errors import LocalError, RekeyError
from ..proto.limits import (
    REKEY_HARD_CEILING,
    REKEY_IDLE_CHECK,
    REKEY_MAX_AGE,
    REKEY_MIN_INTERVAL,
    REKEY_REJECT_BACKOFF,
    REKEY_TIMEOUT,
)

__all__ = [
    "INITIATOR_TRANSITIONS",
    "InitiatorRekeyPolicy",
    "RekeyAction",
    "RekeyDecision",
    "RekeyEvent",
    "RekeyState",
    "RekeyTimings",
    "ResponderRekeyPolicy",
]


@attrs.frozen
class RekeyTimings:
    """All rekey timers, in seconds (defaults: :mod:`leapcore.proto.limits`' ``REKEY_*``)."""

    max_age: float = REKEY_MAX_AGE
    min_interval: float = REKEY_MIN_INTERVAL
    hard_ceiling: float = REKEY_HARD_CEILING
    reject_backoff: float = REKEY_REJECT_BACKOFF
    timeout: float = REKEY_TIMEOUT
    idle_check: float = REKEY_IDLE_CHECK

    def __attrs_post_init__(self) -> None:
        if not 0 < self.min_interval <= self.max_age < self.hard_ceiling:
            raise LocalError("rekey timings need 0 < min_interval <= max_age < hard_ceiling")
        if min(self.reject_backoff, self.timeout, self.idle_check) <= 0:
            raise LocalError("rekey timings must be positive")


DEFAULT_TIMINGS: Final = RekeyTimings()


class RekeyState(enum.Enum):
    IDLE = "idle"
    AWAITING_REPLY = "awaiting-reply"
    CLOSED = "closed"


class RekeyEvent(enum.Enum):
    START = "start"  # the policy asked for a rekey and the request was sent
    ACK = "ack"
    REJECT = "reject"
    EXPIRE = "expire"  # timeout or hard ceiling


class RekeyAction(enum.Enum):
    """What :meth:`InitiatorRekeyPolicy.poll` tells the driver to do now."""

    NONE = "none"
    START = "start"  # send a rekey request now
    CLOSE = "close"  # close the channel (and re-handshake if still wanted)


#: (state, event) -> next state, for the initiator.
INITIATOR_TRANSITIONS: Final[dict[tuple[RekeyState, RekeyEvent], RekeyState]] = {
    (RekeyState.IDLE, RekeyEvent.START): RekeyState.AWAITING_REPLY,
    (RekeyState.IDLE, RekeyEvent.EXPIRE): RekeyState.CLOSED,
    (RekeyState.AWAITING_REPLY, RekeyEvent.ACK): RekeyState.IDLE,
    (RekeyState.AWAITING_REPLY, RekeyEvent.REJECT): RekeyState.IDLE,
    (RekeyState.AWAITING_REPLY, RekeyEvent.EXPIRE): RekeyState.CLOSED,
}


class InitiatorRekeyPolicy:
    """The client's rekey timer. Call :meth:`poll` at :meth:`next_deadline`, at least every
    ``idle_check`` seconds, and whenever the session's ``rekey_wanted`` may have changed."""

    def __init__(self, now: float, timings: RekeyTimings = DEFAULT_TIMINGS) -> None:
        self.timings = timings
        self.state = RekeyState.IDLE
        self.key_since = now
        self._retry_at = now
        self._sent_at = now

    def _move(self, event: RekeyEvent) -> None:
        target = INITIATOR_TRANSITIONS.get((self.state, event))
        if target is None:
            raise RekeyError(f"rekey {event.value} is not allowed in state {self.state.value!r}")
        self.state = target

    def poll(self, now: float, *, soft: bool = False) -> RekeyAction:
        """Decide what to do at ``now``; ``soft`` is the session's ``rekey_wanted``."""
        t = self.timings
        if self.state is RekeyState.CLOSED:
            return RekeyAction.CLOSE
        expired = now - self.key_since >= t.hard_ceiling or (
            self.state is RekeyState.AWAITING_REPLY and now - self._sent_at >= t.timeout
        )
        if expired:
            self._move(RekeyEvent.EXPIRE)
            return RekeyAction.CLOSE
        if self.state is RekeyState.IDLE and (
            soft or (now - self.key_since >= t.max_age and now >= self._retry_at)
        ):
            self._move(RekeyEvent.START)
            self._sent_at = now
            return RekeyAction.START
        return RekeyAction.NONE

    def on_ack(self, now: float) -> None:
        """The responder accepted: new keys are in use from ``now``."""
        self._move(RekeyEvent.ACK)
        self.key_since = now
        self._retry_at = now

    def on_reject(self, now: float, retry_after_ms: int) -> None:
        """The responder refused; try again after ``retry_after_ms`` (60 s when 0)."""
        if retry_after_ms < 0:
            raise RekeyError(f"rekey reject retry_after_ms must be >= 0, got {retry_after_ms}")
        self._move(RekeyEvent.REJECT)
        delay = retry_after_ms / 1000 if retry_after_ms else self.timings.reject_backoff
        self._retry_at = now + delay

    def next_deadline(self, now: float) -> float:
        """The latest time the driver should call :meth:`poll` again."""
        t = self.timings
        candidates = [now + t.idle_check, self.key_since + t.hard_ceiling]
        if self.state is RekeyState.AWAITING_REPLY:
            candidates.append(self._sent_at + t.timeout)
        elif self.state is RekeyState.IDLE:
            candidates.append(max(self.key_since + t.max_age, self._retry_at))
        return min(candidates)


@attrs.frozen
class RekeyDecision:
    accept: bool
    #: Only for a reject: how long the initiator should wait, in milliseconds (>= 1).
    retry_after_ms: int = 0


class ResponderRekeyPolicy:
    """The worker's side: accepts or rejects rekey requests."""

    def __init__(self, now: float, timings: RekeyTimings = DEFAULT_TIMINGS) -> None:
        self.timings = timings
        self.key_since = now

    def on_request(self, now: float, *, soft: bool) -> RekeyDecision:
        """``soft``: either direction's nonce is past the soft limit (the session knows)."""
        remaining = self.key_since + self.timings.min_interval - now
        if soft or remaining <= 0:
            self.key_since = now
            return RekeyDecision(accept=True)
        return RekeyDecision(accept=False, retry_after_ms=max(1, math.ceil(remaining * 1000)))
