"""Reconnect backoff and the decision after each connection attempt (sans-IO).

:class:`Backoff` is the exponential, jittered delay of ``design.md``: 1 s
initial, doubled on the *un-jittered* base, base capped at 180 s, each wait
uniform on ``[0.8 * base, 1.2 * base]``. :class:`ReconnectPolicy` decides,
after a connection attempt ended, whether to stop, to wait the hub's go-away
delay, or to back off — in the order of ``spec/behavior.md`` §1.3. Time is
passed in; randomness is an injected ``uniform()`` returning a float in
``[0, 1)``. The numbers are :mod:`leapcore.proto.limits`' ``BACKOFF_*``.

:func:`classify_link_error` is the table that says what a hub's ``error`` record means to a
worker — above all, **when a worker may retire its identity**. Only ``worker_deleted`` can
say "you were deleted", and a worker believes it only from the hub it registered with
(the error's ``hub_id`` equals the one in ``hub.json``) or, for a worker that recorded no
hub id (registered before hubs had ids), from any hub — ``worker_deleted`` comes only from
a database that issued the token. Everything else that rejects the token leaves the
worker's files untouched (:attr:`ReconnectAction.HUB_MISMATCH`): a different hub, or its own
hub restarted on an empty database, does not know the token and must not destroy it.

=====================  ======================  =========  =========================
error code             its ``hub_id`` is       greeted?   outcome (action)
=====================  ======================  =========  =========================
``worker_deleted``     the saved hub id        any        WORKER_DELETED (retire)
``worker_deleted``     (no saved hub id)       any        WORKER_DELETED (retire)
``worker_deleted``     another (or none)       any        HUB_MISMATCH (exit 9)
``unauthenticated``    any                     no         HUB_MISMATCH (exit 9)
``unauthenticated``    any                     yes        TRANSIENT (retry)
``token_expired``      any                     any        TOKEN_EXPIRED (exit 10)
``already_exists``     any                     any        NAME_TAKEN (fail)
anything else          any                     any        TRANSIENT (retry)
=====================  ======================  =========  =========================
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from typing import Final

import attrs

from ..errors import LocalError
from .limits import (
    BACKOFF_INITIAL,
    BACKOFF_JITTER,
    BACKOFF_MAX,
    BACKOFF_MULTIPLIER,
    BACKOFF_RESET_AFTER,
)

__all__ = [
    "REJECTIONS",
    "Backoff",
    "HubRelation",
    "Outcome",
    "ReconnectAction",
    "ReconnectDecision",
    "ReconnectPolicy",
    "classify_link_error",
    "hub_relation",
    "system_uniform",
]

#: ``uniform()`` returns a float uniformly distributed on [0, 1).
Uniform = Callable[[], float]

_NANOSECOND: Final = 1e-9
_sysrand = _random.SystemRandom()


def system_uniform() -> float:
    """The production jitter source (the OS CSPRNG)."""
    return _sysrand.random()


class Backoff:
    """Exponential backoff with jitter applied after the cap."""

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL,
        maximum: float = BACKOFF_MAX,
        *,
        multiplier: float = BACKOFF_MULTIPLIER,
        jitter: float = BACKOFF_JITTER,
        uniform: Uniform = system_uniform,
    ) -> None:
        if not initial > 0:
            raise LocalError(f"backoff initial interval must be > 0, got {initial}")
        if maximum < initial:
            raise LocalError(f"backoff maximum {maximum} is below the initial {initial}")
        if not 0 <= jitter < 1:
            raise LocalError(f"backoff jitter must be in [0, 1), got {jitter}")
        if multiplier < 1:
            raise LocalError(f"backoff multiplier must be >= 1, got {multiplier}")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._uniform = uniform
        self.base = initial

    def window(self) -> tuple[float, float]:
        """The interval the next delay is drawn from."""
        delta = self.jitter * self.base
        return self.base - delta, self.base + delta

    def next(self) -> float:
        """Sample a delay from the current base, then advance the base."""
        if self.jitter == 0:
            delay = self.base
        else:
            lo, hi = self.window()
            # Inclusive of the upper bound by one nanosecond, as the reference does.
            delay = min(hi, lo + self._uniform() * (hi - lo + _NANOSECOND))
        advanced = self.base * self.multiplier
        self.base = self.maximum if advanced > self.maximum else advanced
        return delay

    def reset(self) -> None:
        self.base = self.initial


class Outcome(enum.Enum):
    """How a connection attempt ended, as the driver classifies it."""

    #: Stream ended, network error, hub unavailable or overloaded, malformed-message kill…
    TRANSIENT = "transient"
    #: The hub the worker registered with says it deleted the worker (``worker_deleted``).
    WORKER_DELETED = "worker-deleted"
    #: A hub that is not the one the worker registered with (or its own, on an empty
    #: database) does not know the token, or claims a deletion it cannot have made.
    HUB_MISMATCH = "hub-mismatch"
    #: The hub says the worker's token is past its expiry (``token_expired``): the worker
    #: must be registered again; its files are left as they are.
    TOKEN_EXPIRED = "token-expired"
    #: The hub refused the worker's name: another of the owner's workers has it.
    NAME_TAKEN = "name-taken"
    #: The hub rejected the registration key (invalid, expired or consumed).
    REGISTRATION_REJECTED = "registration-rejected"
    #: The process is shutting down.
    CANCELLED = "cancelled"


class ReconnectAction(enum.Enum):
    STOP = "stop"  # shutting down: no retry
    WIPE_AND_EXIT = "wipe-and-exit"  # retire local state (renamed, kept), exit 0
    HUB_MISMATCH = "hub-mismatch"  # leave every file untouched, exit 9
    TOKEN_EXPIRED = "token-expired"  # leave every file untouched, exit 10
    FAIL = "fail"  # permanent error: exit non-zero with the hub's message
    RETRY = "retry"  # wait `delay`, then reconnect


@attrs.frozen
class ReconnectDecision:
    action: ReconnectAction
    delay: float = 0.0
    #: True when the delay is the hub's go-away request (exact, no jitter).
    hub_requested: bool = False


#: Outcome -> the action it forces, checked before any waiting (behavior.md §1.3 steps 1-2).
PERMANENT: Final[dict[Outcome, ReconnectAction]] = {
    Outcome.CANCELLED: ReconnectAction.STOP,
    Outcome.WORKER_DELETED: ReconnectAction.WIPE_AND_EXIT,
    Outcome.HUB_MISMATCH: ReconnectAction.HUB_MISMATCH,
    Outcome.TOKEN_EXPIRED: ReconnectAction.TOKEN_EXPIRED,
    Outcome.NAME_TAKEN: ReconnectAction.FAIL,
    Outcome.REGISTRATION_REJECTED: ReconnectAction.FAIL,
}


class HubRelation(enum.Enum):
    """How the hub that sent an ``error`` relates to the hub the worker registered with."""

    #: The error names the hub id saved in ``hub.json``.
    SAME = "same"
    #: The worker saved no hub id (registered before hubs had ids, or with a hub too old
    #: to name itself).
    UNRECORDED = "unrecorded"
    #: The error names another hub id, or none while one was saved.
    OTHER = "other"


def hub_relation(error_hub_id: str, saved_hub_id: str | None) -> HubRelation:
    """Compare the ``hub_id`` of an ``error`` with the one the worker saved (``None`` or
    ``""``: none saved)."""
    if not saved_hub_id:
        return HubRelation.UNRECORDED
    return HubRelation.SAME if error_hub_id == saved_hub_id else HubRelation.OTHER


#: (link error code, :class:`HubRelation`) -> outcome: the table of the module docstring
#: for the codes that end a worker's link for good (``unauthenticated`` only before the
#: greeting; see :func:`classify_link_error`).
REJECTIONS: Final[dict[tuple[str, HubRelation], Outcome]] = {
    ("worker_deleted", HubRelation.SAME): Outcome.WORKER_DELETED,
    ("worker_deleted", HubRelation.UNRECORDED): Outcome.WORKER_DELETED,
    ("worker_deleted", HubRelation.OTHER): Outcome.HUB_MISMATCH,
    **{("unauthenticated", r): Outcome.HUB_MISMATCH for r in HubRelation},
    **{("already_exists", r): Outcome.NAME_TAKEN for r in HubRelation},
    **{("token_expired", r): Outcome.TOKEN_EXPIRED for r in HubRelation},
}


def classify_link_error(
    code: str, error_hub_id: str, saved_hub_id: str | None, *, greeted: bool
) -> Outcome:
    """What a hub's ``error`` record (``code``, ``error_hub_id``) means to a worker that saved
    ``saved_hub_id`` (``None``/``""``: none), before or after the hub greeted this link.

    ``unauthenticated`` after the greeting is retried: the next ``connect`` is answered
    for what the token is then. Codes not in :data:`REJECTIONS` are transient.
    """
    if code == "unauthenticated" and greeted:
        return Outcome.TRANSIENT
    return REJECTIONS.get((code, hub_relation(error_hub_id, saved_hub_id)), Outcome.TRANSIENT)


class ReconnectPolicy:
    """What to do after each connection attempt ends."""

    #: A connection that lasted this long (from the dial) resets the backoff.
    RESET_AFTER: Final = BACKOFF_RESET_AFTER

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff if backoff is not None else Backoff()
        self._hub_delay = 0.0

    def hub_requested_delay(self, seconds: float) -> None:
        """Record a go-away delay from the hub; a later one overwrites it; 0 means none."""
        if seconds < 0:
            raise LocalError(f"hub reconnect delay must be >= 0, got {seconds}")
        self._hub_delay = seconds

    def after_attempt(self, started_at: float, now: float, outcome: Outcome) -> ReconnectDecision:
        """Decide, given when the attempt started (before dialling) and how it ended."""
        forced = PERMANENT.get(outcome)
        if forced is not None:
            return ReconnectDecision(forced)
        if self._hub_delay > 0:
            delay, self._hub_delay = self._hub_delay, 0.0
            self.backoff.reset()
            return ReconnectDecision(ReconnectAction.RETRY, delay, hub_requested=True)
        if now - started_at >= self.RESET_AFTER:
            self.backoff.reset()
        return ReconnectDecision(ReconnectAction.RETRY, self.backoff.next())
