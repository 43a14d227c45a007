"""What the hub's routing core asks its driver to do (sans-IO): frozen values, no behaviour.

:class:`~leapcore.proto.hub_router.HubRouter` answers every input with a list of these,
to be carried out at once and in order. The rule this module holds: a router's output
names a link (the driver's own object, opaque to the core) and one thing to do on it,
or one thing to count or log; two kinds ask the driver a question whose answer goes
straight back to the router before anything else happens:

* :class:`Lookup`: look the named worker up (the hub's store) and hand the result to
  :meth:`~leapcore.proto.hub_router.HubRouter.found`;
* :class:`Offer`: queue a record whose fate the router must know (a ``channel_request``,
  a ``channel_opened``) and report with
  :meth:`~leapcore.proto.hub_router.HubRouter.offered` whether the link took it.

It also holds the words: the ``channel_refused`` of every refusal (:data:`OPEN_REFUSALS`)
and the ``channel_close`` of every link that ends (:data:`END_REASONS`). Log lines are
given as a ``%``-format and its arguments, formatted only if the driver's
logger emits them; a link among the arguments is printed with ``str()`` (the driver's
link object names its peer there).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, Generic, TypeAlias, TypeVar

import attrs

from .limits import MAX_MAX_MESSAGE_SIZE, MIN_MAX_MESSAGE_SIZE
from .link_codec import (
    ChannelClose,
    ChannelData,
    ChannelOpened,
    ChannelRefused,
    ChannelRequest,
    LinkMessage,
    OpenChannel,
    RelayedData,
)
from .relay import RelayDirection

__all__ = [
    "DEBUG",
    "END_REASONS",
    "INFO",
    "OPEN_REFUSALS",
    "Action",
    "ChannelGone",
    "Close",
    "EndLink",
    "Forward",
    "FrameDropped",
    "FrameRejected",
    "Log",
    "Lookup",
    "Offer",
    "OpenOutcome",
    "Send",
    "Target",
    "dropped",
    "refused",
    "unknown_answer",
]

#: A link, as the driver knows it: anything hashable (the hub passes its own link objects).
L = TypeVar("L", bound=Hashable)

#: Log levels of :class:`Log` (the numbers of the standard ``logging`` module).
DEBUG: Final = 10
INFO: Final = 20

#: Why a link's channels end -> the ``channel_close`` code and message its peers get.
END_REASONS: Final = {
    "link_lost": ("link_lost", "the other end's link to the hub was lost"),
    "replaced": ("replaced", "the worker connected again; its older link was closed"),
    "shutdown": ("shutdown", "hub is shutting down"),
    "deregistered": ("closed", "the worker was deregistered"),
}

#: Why the hub refuses an open -> the ``channel_refused`` code, its message, and the
#: ``channel_opens_total`` result when it is not the code. A stranger's worker reads
#: exactly like an unknown id, so that nobody can probe which ids exist.
OPEN_REFUSALS: Final[dict[str, tuple[str, str, str | None]]] = {
    "size": (
        "invalid_max_message_size",
        "max_message_size {size} is outside {low} .. {high}",
        None,
    ),
    "closing": ("unavailable", "hub is shutting down", None),
    "retired": ("permission_denied", "this worker is deregistering", None),
    "pending": ("unavailable", "too many channel opens pending (at most {cap})", None),
    "link_quota": (
        "quota_exceeded",
        "this link already has {held} channels, which is the configured maximum "
        "(max_channels_per_link)",
        None,
    ),
    "user_quota": (
        "quota_exceeded",
        "this account already has {held} channels, which is the configured maximum "
        "(max_channels_per_user)",
        None,
    ),
    "not_found": ("not_found", "worker not found", None),
    "not_owner": ("not_found", "worker not found", "not_owner"),
    "offline": ("worker_offline", "worker is offline", None),
    "worker_pending": (
        "unavailable",
        "the worker has too many channel opens pending (at most {cap})",
        None,
    ),
    "worker_quota": (
        "quota_exceeded",
        "the worker already serves {held} channels, which is the configured maximum "
        "(max_channels_per_worker)",
        None,
    ),
}


@attrs.frozen
class Send(Generic[L]):
    """Queue the control record ``message`` for ``link`` (written before any data)."""

    link: L
    message: LinkMessage


@attrs.frozen
class Forward(Generic[L]):
    """Queue the data frame ``frame`` for ``link`` in its channel's turn, moving
    ``direction``. It holds ``cost`` bytes of the sender's credit until the driver has
    written it and called :meth:`~leapcore.proto.hub_router.HubRouter.written`."""

    link: L
    frame: ChannelData | RelayedData
    direction: RelayDirection
    cost: int


@attrs.frozen
class Close(Generic[L]):
    """Queue the ``channel_close`` ``message`` for ``link``, behind that channel's frames
    still queued to it (a control record when none are)."""

    link: L
    message: ChannelClose


@attrs.frozen
class ChannelGone(Generic[L]):
    """The channel ended at the hub (after any :class:`Forward` and :class:`Close` of it
    in the same answer): the driver may forget its queues to ``ends`` once they drain."""

    channel_id: int
    ends: tuple[L, L]


@attrs.frozen
class EndLink(Generic[L]):
    """End ``link``: a worker's older link, replaced by a newer one of the same worker."""

    link: L


@attrs.frozen
class Target:
    """What the hub's store says about the worker an ``open_channel`` names."""

    worker_id: str
    owner_id: str
    #: Registered and neither deregistering nor deleted.
    active: bool


@attrs.frozen(eq=False)
class Lookup(Generic[L]):
    """Find ``message.worker_id`` (a :class:`Target`, or None if there is no such worker)
    and pass it to :meth:`~leapcore.proto.hub_router.HubRouter.found` right away."""

    link: L
    message: OpenChannel
    #: The time the open arrived (its deadline is counted from it).
    now: float


@attrs.frozen(eq=False)
class Offer(Generic[L]):
    """Queue ``message`` for ``link``, then tell
    :meth:`~leapcore.proto.hub_router.HubRouter.offered` at once whether it was taken
    (False: the link is closing, or the record does not fit in one)."""

    link: L
    message: ChannelRequest | ChannelOpened
    #: The router's own record of what this offer commits (opaque to the driver).
    ticket: object = attrs.field(repr=False)


@attrs.frozen
class OpenOutcome:
    """Count one ``open_channel`` result (``channel_opens_total{result}``)."""

    result: str


@attrs.frozen
class FrameDropped:
    """Count one data frame for a channel its sender is not an end of
    (``frames_dropped_total``)."""


@attrs.frozen
class FrameRejected:
    """Count one data frame that broke a relay or credit rule
    (``frames_rejected_total{reason}``)."""

    reason: str


@attrs.frozen
class Log:
    """Log ``text % args`` at ``level`` (:data:`DEBUG` or :data:`INFO`)."""

    level: int
    text: str
    args: tuple[object, ...] = ()


#: Everything a router may answer.
Action: TypeAlias = (
    Send[L]
    | Forward[L]
    | Close[L]
    | ChannelGone[L]
    | EndLink[L]
    | Lookup[L]
    | Offer[L]
    | OpenOutcome
    | FrameDropped
    | FrameRejected
    | Log
)


def refused(link: L, request_id: int, worker_id: str, why: str, **fields: int) -> list[Action[L]]:
    """An open the hub refuses (``why``: a key of :data:`OPEN_REFUSALS`, its message
    filled with ``fields``): counted, logged, answered with ``channel_refused``."""
    code, template, result = OPEN_REFUSALS[why]
    text = template.format(low=MIN_MAX_MESSAGE_SIZE, high=MAX_MAX_MESSAGE_SIZE, **fields)
    return [
        OpenOutcome(result or code),
        Log(INFO, "%s: open_channel to %s refused: %s", (link, worker_id, text)),
        Send(link, ChannelRefused(request_id, code, text)),
    ]


def unknown_answer(link: L, request_id: int, channel_id: int) -> Log:
    """A worker's answer to an open it was not asked, or that is settled already."""
    text = "%s answered unknown open (request %d, channel %d); ignored"
    return Log(DEBUG, text, (link, request_id, channel_id))


def dropped(link: L, frame: ChannelData | RelayedData) -> list[Action[L]]:
    """A data frame for a channel its sender is not an end of."""
    text = "%s: data for unknown channel %d dropped"
    return [FrameDropped(), Log(DEBUG, text, (link, frame.channel_id))]
