"""The peer's side of a hub link: its own requests, and its credit per channel (sans-IO).

A peer -- a client, or a worker opening a channel to a sibling -- asks the hub two kinds
of question on its link: ``hub_request`` (answered by ``hub_response``) and
``open_channel`` (answered by ``channel_opened`` or ``channel_refused``).
:class:`LinkSession` holds the rules for them, the same for both roles; time is the
``now`` argument, never read:

1. **Ids.** Requests are numbered 1, 2, 3, ... on each link; an id is never reused.
2. **Slots.** At most ``max_pending`` requests (:data:`MAX_PENDING_REQUESTS`) are held at once;
   a driver waits for :attr:`LinkSession.has_room` before it starts one (starting one
   without room is a :class:`~leapcore.errors.LocalError`).
3. **Deadlines.** Each request has one, ``now + timeout``. :meth:`LinkSession.next_deadline`
   is the earliest of the requests still waiting; :meth:`LinkSession.poll` ends each one
   past its deadline with :class:`RequestTimedOut`.
4. **Matching.** The first answer to a waiting request ends it (:class:`CallAnswered`,
   :class:`CallRefused`, :class:`OpenAnswered`). An answer to an id never issued, or of
   the wrong kind for a request still waiting (a call answered ``channel_opened``), is a
   :class:`~leapcore.errors.LinkProtocolError`: nothing changes, and the driver ends the
   link. Any other answer -- late, or a duplicate -- is dropped.
5. **Orphans.** An open whose caller gave up before taking the answer -- it was cancelled
   (:meth:`LinkSession.abandon`) or its deadline passed -- keeps its slot until the hub
   answers: a ``channel_opened`` then is closed with exactly one ``channel_close``
   (:data:`ORPHAN_CLOSE`), never left open; a ``channel_refused`` just frees the slot. A
   ``channel_opened`` that arrived but was never taken is closed the same way when its
   caller gives up. (An honest hub answers every open within its own open timeout.)
6. **Link end.** :meth:`LinkSession.fail` ends every waiting request with
   :class:`RequestFailed`, forgets the orphans (the hub closes a lost link's channels
   itself), drops what was not sent, and refuses later requests with the same error.

A request ends for its caller exactly once, in one of two ways: an answer, a timeout or the
link's end makes its *outcome* (returned as an event, so that the driver wakes the caller,
and collected with :meth:`LinkSession.take`); or the caller gives up first
(:meth:`LinkSession.abandon`). What must go to the hub -- each request, and the close of
each orphan -- is queued in order and collected with :meth:`LinkSession.messages_to_send`;
the slots bound it.

:class:`SendCredit` is the peer's credit on one channel: the bytes the hub's relay lets it
have in flight (:class:`~leapcore.proto.relay.ChannelRelay` holds the hub's side). Each
end starts with :data:`~leapcore.proto.limits.CHANNEL_CREDIT`; a data frame costs its
ciphertext's length, a CLOSE frame nothing; a frame beyond the credit left waits; every
``channel_credit`` record gives some back. The credit is never negative.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, Final

import attrs

from ..errors import ConfigError, LeapcoreError, LinkProtocolError, LocalError
from .chunking import FrameFlag
from .limits import CHANNEL_CREDIT, MAX_PENDING_REQUESTS
from .link_codec import (
    ChannelClose,
    ChannelOpened,
    ChannelRefused,
    HubRequest,
    HubResponse,
    LinkMessage,
    OpenChannel,
)

__all__ = [
    "ORPHAN_CLOSE",
    "Answer",
    "CallAnswered",
    "CallRefused",
    "LinkSession",
    "OpenAnswered",
    "Outcome",
    "RequestFailed",
    "RequestKind",
    "RequestStatus",
    "RequestTimedOut",
    "SendCredit",
]

#: The ``(code, message)`` of the ``channel_close`` that ends an orphaned open.
ORPHAN_CLOSE: Final = ("closed", "the open was abandoned")

#: What the hub answers a request with.
Answer = HubResponse | ChannelOpened | ChannelRefused


class RequestKind(enum.Enum):
    CALL = "call"  # hub_request -> hub_response
    OPEN = "open"  # open_channel -> channel_opened | channel_refused


class RequestStatus(enum.Enum):
    #: The caller waits; no outcome yet.
    PENDING = "pending"
    #: The outcome is there; the caller has not taken it yet.
    READY = "ready"
    #: An open its caller gave up on, kept until the hub answers (rule 5).
    ORPHANED = "orphaned"


# -- outcomes (each ends one request for its caller) ---------------------------------------


@attrs.frozen
class CallAnswered:
    """The hub answered a call with ``result``."""

    request_id: int
    result: dict[str, Any]


@attrs.frozen
class CallRefused:
    """The hub answered a call with an error ``code`` and ``message``."""

    request_id: int
    code: str
    message: str


@attrs.frozen
class OpenAnswered:
    """The hub answered an open: the channel is open, or refused."""

    request_id: int
    answer: ChannelOpened | ChannelRefused


@attrs.frozen
class RequestTimedOut:
    """The request's deadline passed without an answer."""

    request_id: int


@attrs.frozen
class RequestFailed:
    """The request cannot be answered: the link ended, or the answer was malformed."""

    request_id: int
    error: LeapcoreError


Outcome = CallAnswered | CallRefused | OpenAnswered | RequestTimedOut | RequestFailed


class _Request:
    __slots__ = ("answered", "deadline", "done", "kind", "outcome")

    def __init__(self, kind: RequestKind, deadline: float) -> None:
        self.kind = kind
        self.deadline = deadline
        #: The end for the caller, once there is one.
        self.outcome: Outcome | None = None
        #: The caller took the outcome or gave up.
        self.done = False
        #: The hub answered (a later answer is a duplicate).
        self.answered = False

    @property
    def waiting(self) -> bool:
        return self.outcome is None and not self.done


class LinkSession:
    """The requests of one link (see the module docstring); a fresh one per link."""

    def __init__(self, *, max_pending: int = MAX_PENDING_REQUESTS) -> None:
        if type(max_pending) is not int or max_pending < 1:
            raise ConfigError(f"max_pending must be a positive integer, got {max_pending!r}")
        self.max_pending = max_pending
        self._last_id = 0
        self._requests: dict[int, _Request] = {}
        self._outbox: list[LinkMessage] = []
        #: Why the link ended (:meth:`fail`), or None while it is up.
        self.failure: LeapcoreError | None = None
        #: Orphaned opens closed so far.
        self.orphans_closed = 0

    # -- state ---------------------------------------------------------------------------

    @property
    def last_id(self) -> int:
        """The last request id issued (0: none yet)."""
        return self._last_id

    @property
    def has_room(self) -> bool:
        """True when a request may start now (a free slot, and the link is up)."""
        return self.failure is None and len(self._requests) < self.max_pending

    @property
    def held(self) -> int:
        """Slots taken: requests waiting, ready or orphaned."""
        return len(self._requests)

    @property
    def waiting(self) -> int:
        """Requests whose caller has not finished with them (pending or ready)."""
        return sum(1 for request in self._requests.values() if not request.done)

    def status(self, request_id: int) -> RequestStatus | None:
        """Where request ``request_id`` stands; None once it has ended for good."""
        request = self._requests.get(request_id)
        if request is None:
            return None
        if request.done:
            return RequestStatus.ORPHANED
        return RequestStatus.PENDING if request.outcome is None else RequestStatus.READY

    def deadline(self, request_id: int) -> float | None:
        """The deadline of a pending request (None when it is not pending)."""
        request = self._requests.get(request_id)
        if request is None or not request.waiting:
            return None
        return request.deadline

    def next_deadline(self) -> float | None:
        """The earliest deadline of the pending requests (None: nothing to wait for)."""
        deadlines = [r.deadline for r in self._requests.values() if r.waiting]
        earliest = min(deadlines, default=math.inf)
        return None if earliest == math.inf else earliest

    # -- starting -------------------------------------------------------------------------

    def start_call(self, method: str, params: dict[str, Any], *, now: float, timeout: float) -> int:
        """Queue ``hub_request(method, params)``; its request id."""
        return self._start(
            RequestKind.CALL, now, timeout, lambda rid: HubRequest(rid, method, params)
        )

    def start_open(
        self, worker_id: str, message1: bytes, max_message_size: int, *, now: float, timeout: float
    ) -> int:
        """Queue ``open_channel`` to ``worker_id``; its request id."""
        return self._start(
            RequestKind.OPEN,
            now,
            timeout,
            lambda rid: OpenChannel(rid, worker_id, message1, max_message_size),
        )

    def _start(
        self, kind: RequestKind, now: float, timeout: float, make: Callable[[int], LinkMessage]
    ) -> int:
        if self.failure is not None:
            raise self.failure
        if not len(self._requests) < self.max_pending:
            raise LocalError(f"{self.max_pending} requests are already held on this link")
        if not timeout >= 0:
            raise LocalError(f"a request's timeout must be >= 0 seconds, got {timeout!r}")
        self._last_id += 1
        request_id = self._last_id
        message = make(request_id)
        self._requests[request_id] = _Request(kind, now + timeout)
        self._outbox.append(message)
        return request_id

    # -- what happens to requests ------------------------------------------------------------

    def receive(self, message: Answer) -> list[Outcome]:
        """The hub answered (rule 4): the outcome it makes, if any (at most one)."""
        if self.failure is not None:
            return []
        request_id = message.request_id
        request = self._requests.get(request_id)
        if request is None:
            if 0 < request_id <= self._last_id:
                return []  # the request ended: a late answer, or a duplicate
            raise LinkProtocolError(f"{message.type} for unknown request {request_id}")
        expected = RequestKind.CALL if isinstance(message, HubResponse) else RequestKind.OPEN
        if request.answered or expected is not request.kind:
            if request.waiting and expected is not request.kind:
                what = "an open" if expected is RequestKind.OPEN else "a call"
                raise LinkProtocolError(
                    f"{message.type} answers request {request_id}, which is not {what}"
                )
            return []  # a duplicate, or a late answer of the wrong kind
        request.answered = True
        outcomes: list[Outcome] = []
        if request.waiting:
            request.outcome = _outcome(message)
            outcomes.append(request.outcome)
        elif isinstance(message, ChannelOpened):  # opened after its caller gave up
            self._close_orphan(message.channel_id)
        self._forget_if_over(request_id, request)
        return outcomes

    def poll(self, now: float) -> list[Outcome]:
        """End the pending requests whose deadline is at or before ``now``."""
        outcomes: list[Outcome] = []
        for request_id, request in self._requests.items():
            if request.waiting and request.deadline <= now:
                request.outcome = RequestTimedOut(request_id)
                outcomes.append(request.outcome)
        return outcomes

    def take(self, request_id: int) -> Outcome:
        """The caller collects the outcome of ``request_id``; the request is over for it."""
        request = self._requests.get(request_id)
        if request is None or request.done or request.outcome is None:
            raise LocalError(f"request {request_id} has no outcome to take")
        request.done = True
        self._forget_if_over(request_id, request)
        return request.outcome

    def abandon(self, request_id: int) -> None:
        """The caller gave up on ``request_id`` (rule 5); nothing happens if it is over."""
        request = self._requests.get(request_id)
        if request is None or request.done:
            return
        request.done = True
        answer = request.outcome.answer if isinstance(request.outcome, OpenAnswered) else None
        if isinstance(answer, ChannelOpened) and self.failure is None:
            self._close_orphan(answer.channel_id)  # opened, never taken
        self._forget_if_over(request_id, request)

    def fail(self, error: LeapcoreError) -> list[Outcome]:
        """The link ended (rule 6): every waiting request fails with ``error``."""
        if self.failure is not None:
            return []
        self.failure = error
        self._outbox.clear()
        outcomes: list[Outcome] = []
        for request_id, request in list(self._requests.items()):
            if request.waiting:
                request.outcome = RequestFailed(request_id, error)
                outcomes.append(request.outcome)
            self._forget_if_over(request_id, request)
        return outcomes

    def messages_to_send(self) -> list[LinkMessage]:
        """What must go to the hub, in order (requests, closes of orphans); emptied."""
        messages, self._outbox = self._outbox, []
        return messages

    def _close_orphan(self, channel_id: int) -> None:
        code, text = ORPHAN_CLOSE
        self._outbox.append(ChannelClose(channel_id, code, text))
        self.orphans_closed += 1

    def _forget_if_over(self, request_id: int, request: _Request) -> None:
        # A call is over once its caller is; an open, once the hub answered it too (rule 5).
        if request.done and (
            request.kind is RequestKind.CALL or request.answered or self.failure is not None
        ):
            del self._requests[request_id]


def _outcome(message: Answer) -> Outcome:
    if isinstance(message, HubResponse):
        if message.error_code is not None:
            return CallRefused(message.request_id, message.error_code, message.error_message or "")
        if message.result is None:
            error = LinkProtocolError("hub_response carries neither result nor error")
            return RequestFailed(message.request_id, error)
        return CallAnswered(message.request_id, message.result)
    return OpenAnswered(message.request_id, message)


# -- credit -------------------------------------------------------------------------------


class SendCredit:
    """What the hub's relay lets this peer send on one channel (see the module docstring)."""

    __slots__ = ("available",)

    def __init__(self, credit: int = CHANNEL_CREDIT) -> None:
        if type(credit) is not int or credit < 0:
            raise ConfigError(f"credit must be an integer >= 0, got {credit!r}")
        #: Bytes of ciphertext this end may still send before credit comes back.
        self.available = credit

    @staticmethod
    def cost(flags: int, ciphertext_size: int) -> int:
        """What one frame costs: its ciphertext's length; nothing for a CLOSE frame."""
        return 0 if flags == FrameFlag.CLOSE else ciphertext_size

    def allows(self, cost: int) -> bool:
        """True when a frame costing ``cost`` may go now."""
        return cost <= self.available

    def spend(self, cost: int) -> None:
        """A frame costing ``cost`` goes out (:class:`LocalError` past the credit left)."""
        if not 0 <= cost <= self.available:
            raise LocalError(f"a {cost}-byte frame exceeds the credit of {self.available} bytes")
        self.available -= cost

    def grant(self, credit: int) -> None:
        """``channel_credit`` from the hub: ``credit`` more bytes may go (the link's state
        machine refuses a record granting less than 1; a negative grant is a
        :class:`LocalError`)."""
        if credit < 0:
            raise LocalError(f"a credit grant cannot be negative, got {credit}")
        self.available += credit
