"""The hub's channel routing (sans-IO): who may open what, which link a channel's records
go to, credit, open deadlines, and what a lost link takes with it.

A :class:`HubRouter` is fed the routing records a signed-in link sends (``open_channel``,
``channel_accept``, ``channel_reject``, ``channel_close`` and data frames), the links
joining, being published, retiring and leaving, frames written, and the time; it answers
with the actions of :mod:`leapcore.proto.hub_actions` (what to send on which link, what to
count and log). It never blocks, reads a clock or touches a socket. The rules it holds:

* **Opens.** An ``open_channel`` is checked in this order, the first failure answered
  with ``channel_refused`` to the opener (and counted, and logged): the size within
  65519 .. 67108864 (``invalid_max_message_size``); the hub not shutting down
  (``unavailable``); the opener not a deregistering worker (``permission_denied``);
  fewer than :data:`MAX_PENDING_OPENS` of the link's opens waiting (``unavailable``);
  the link's and then its user's channels, live or opening, under
  ``max_channels_per_link`` and ``max_channels_per_user`` (``quota_exceeded``); the
  worker exists, is active, is not the opener itself and has the opener's owner
  (``not_found`` alike, so a stranger cannot probe ids; counted ``not_owner``); it holds
  a published link (``worker_offline``); fewer than ``max_pending_opens_per_worker``
  opens wait for it (``unavailable``) and it serves fewer than
  ``max_channels_per_worker`` channels, live or opening (``quota_exceeded``). Then a
  hub-wide channel id (from 1, never reused) and a request id of the hub's own are
  assigned and ``channel_request`` goes to the worker's link.
* **Answers.** Only the worker link an open went to can settle it, and only once: an
  answer naming another request or channel is ignored. An accept with a size outside
  65519 .. the forwarded size is refused to the opener (``handshake_failed``) and the
  worker gets ``channel_close``. An open not answered within :data:`OPEN_TIMEOUT` is
  refused ``timeout`` (``next_deadline()`` / ``poll(now)``).
* **Channels.** A live channel has exactly two ends, the opener and the worker; records
  for a channel from any other link are dropped (data frames counted). Data frames go
  to the other end after the relay rules and the credit rule of
  :mod:`leapcore.proto.relay`; a violation closes that channel alone, both ends told. A
  ``channel_close`` or a CLOSE frame goes to the other end and ends the channel.
* **Links.** Each worker has at most one published link: a newer one replaces the older,
  whose channels close (``replaced``) and which is ended. A link dropped or leaving
  takes every channel and open it is part of with it, the other side told: channels
  close towards the other end, an opener's waiting opens close at their worker, opens
  waiting for a lost worker are refused ``worker_offline``. Nothing in the router
  outlives its links.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Final, Generic, TypeVar

from ..errors import LocalError, RelayViolation
from .hub_actions import (
    DEBUG,
    END_REASONS,
    INFO,
    Action,
    ChannelGone,
    Close,
    EndLink,
    Forward,
    FrameRejected,
    Log,
    Lookup,
    Offer,
    OpenOutcome,
    Send,
    Target,
    dropped,
    refused,
    unknown_answer,
)
from .limits import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_PENDING_OPENS,
    MIN_MAX_MESSAGE_SIZE,
    OPEN_TIMEOUT,
    HubLimits,
    max_message_size_problem,
    validate_max_message_size,
)
from .link_codec import (
    ChannelAccept,
    ChannelClose,
    ChannelCredit,
    ChannelData,
    ChannelOpened,
    ChannelRefused,
    ChannelReject,
    ChannelRequest,
    LinkMessage,
    OpenChannel,
    RelayedData,
)
from .relay import ChannelRelay, RelayDirection

__all__ = ["HubRouter"]

L = TypeVar("L", bound=Hashable)

_TO_WORKER: Final = RelayDirection.TO_WORKER
_TO_CLIENT: Final = RelayDirection.TO_CLIENT


class _Peer(Generic[L]):
    """One signed-in link, as routing sees it."""

    __slots__ = (
        "channels",
        "key",
        "opened",
        "opens",
        "owner_id",
        "requests",
        "retired",
        "served",
        "worker_id",
    )

    def __init__(self, key: L, owner_id: str, worker_id: str | None) -> None:
        self.key = key
        #: The user it acts for (a worker acts for its owner).
        self.owner_id = owner_id
        self.worker_id = worker_id
        #: A deregistering worker's link: it opens nothing and is never routed to.
        self.retired = False
        #: Live channels this link opened, and (a worker) serves.
        self.opened = 0
        self.served = 0
        #: Live channels this link is an end of, by id.
        self.channels: dict[int, _Channel[L]] = {}
        #: Opens this link asked for, waiting for their worker (by the hub's request id).
        self.opens: dict[int, _Open[L]] = {}
        #: Opens waiting for this (worker) link's answer (by the hub's request id).
        self.requests: dict[int, _Open[L]] = {}


class _Channel(Generic[L]):
    """A live channel: its two ends and its relay state."""

    __slots__ = ("id", "opener", "owner_id", "relay", "worker")

    def __init__(
        self, channel_id: int, opener: _Peer[L], worker: _Peer[L], size: int, owner_id: str
    ) -> None:
        self.id = channel_id
        #: The user whose link opened it (``max_channels_per_user``).
        self.owner_id = owner_id
        #: The client (or sibling worker) that opened it; it sends TO_WORKER.
        self.opener = opener
        self.worker = worker
        self.relay = ChannelRelay(channel_id, size)

    def other(self, peer: _Peer[L]) -> _Peer[L]:
        return self.worker if peer is self.opener else self.opener


class _Open(Generic[L]):
    """An open forwarded to a worker, waiting for its accept or reject."""

    __slots__ = (
        "channel_id",
        "deadline",
        "opener",
        "opener_request_id",
        "owner_id",
        "request_id",
        "size",
        "worker",
        "worker_id",
    )

    def __init__(
        self,
        request_id: int,
        channel_id: int,
        opener: _Peer[L],
        opener_request_id: int,
        worker: _Peer[L],
        worker_id: str,
        size: int,
        deadline: float,
    ) -> None:
        self.request_id = request_id
        self.channel_id = channel_id
        self.owner_id = opener.owner_id
        self.opener = opener
        self.opener_request_id = opener_request_id
        self.worker = worker
        #: The worker id the opener named.
        self.worker_id = worker_id
        self.size = size
        self.deadline = deadline


class HubRouter(Generic[L]):
    """The hub's routing state: links, published workers, pending opens and channels.

    ``L`` is whatever the driver names links with (hashable; the hub passes its link
    objects). Every method answering a list of actions expects them carried out at once,
    in order (see :mod:`leapcore.proto.hub_actions`).
    """

    def __init__(
        self,
        limits: HubLimits | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        *,
        open_timeout: float = OPEN_TIMEOUT,
    ) -> None:
        """``max_message_size``: the largest channel message size the hub forwards."""
        validate_max_message_size(max_message_size)
        self.limits = limits if limits is not None else HubLimits()
        self.max_message_size = max_message_size
        self.open_timeout = open_timeout
        #: The hub is shutting down: every open is refused ``unavailable``.
        self.closing = False
        self._peers: dict[L, _Peer[L]] = {}
        #: Worker id -> its published link ("online" means being in here).
        self._workers: dict[str, _Peer[L]] = {}
        #: Owner id -> ids of its workers holding a published link.
        self._online_by_owner: dict[str, set[str]] = {}
        #: Live channels by id.
        self._channels: dict[int, _Channel[L]] = {}
        #: Opens waiting for their worker, by the hub's request id, oldest (and so
        #: earliest deadline) first.
        self._opens: dict[int, _Open[L]] = {}
        #: Owner id -> ids of the channels (live or opening) its links opened.
        self._user_channels: dict[str, set[int]] = {}
        self._request_id = 0
        self._channel_id = 0
        self._last_deadline = -float("inf")

    # -- what the driver reads ---------------------------------------------------------------

    def next_request_id(self) -> int:
        """A request id of the hub's own (``channel_request``; also for the driver's
        ``deregister``: one sequence for every request the hub makes)."""
        self._request_id += 1
        return self._request_id

    @property
    def channel_count(self) -> int:
        """Live channels."""
        return len(self._channels)

    @property
    def pending_count(self) -> int:
        """Opens waiting for their worker's answer."""
        return len(self._opens)

    @property
    def worker_count(self) -> int:
        """Workers with a published link."""
        return len(self._workers)

    @property
    def online_workers(self) -> frozenset[str]:
        return frozenset(self._workers)

    def worker_link(self, worker_id: str) -> L | None:
        """The worker's published link, or None (offline)."""
        peer = self._workers.get(worker_id)
        return None if peer is None else peer.key

    def online_of(self, owner_id: str) -> frozenset[str]:
        """Ids of ``owner_id``'s workers holding a published link."""
        return frozenset(self._online_by_owner.get(owner_id, ()))

    def is_retired(self, link: L) -> bool:
        peer = self._peers.get(link)
        return peer is not None and peer.retired

    def ends(self, channel_id: int) -> tuple[L, L] | None:
        """A live channel's (opener, worker) links, or None."""
        channel = self._channels.get(channel_id)
        return None if channel is None else (channel.opener.key, channel.worker.key)

    def credit(self, channel_id: int, direction: RelayDirection) -> int:
        """The credit a live channel's sender that way has left."""
        channel = self._channels.get(channel_id)
        if channel is None:
            raise LocalError(f"no channel {channel_id}")
        return channel.relay.credit(direction)

    def links(self) -> Iterator[L]:
        """The links joined and not yet left."""
        return iter(list(self._peers))

    def references(self) -> set[L]:
        """Every link a live channel or a waiting open names (each must have joined)."""
        named = {end.key for c in self._channels.values() for end in (c.opener, c.worker)}
        return named | {end.key for o in self._opens.values() for end in (o.opener, o.worker)}

    # -- links -----------------------------------------------------------------------------

    def join(self, link: L, owner_id: str, worker_id: str | None = None) -> None:
        """``link`` signed in: a client of ``owner_id``, or the worker ``worker_id`` of
        its owner ``owner_id`` (not yet published)."""
        if link in self._peers:
            raise LocalError(f"link {link} joined already")
        self._peers[link] = _Peer(link, owner_id, worker_id)

    def publish(self, link: L) -> list[Action[L]]:
        """The worker's ``link`` is its live one; a link it had before is dropped
        (``replaced``) and ended."""
        peer = self._peer(link)
        if peer.worker_id is None:
            raise LocalError(f"link {link} is not a worker's")
        old = self._workers.get(peer.worker_id)
        self._workers[peer.worker_id] = peer
        self._online_by_owner.setdefault(peer.owner_id, set()).add(peer.worker_id)
        if old is None or old is peer:
            return []
        out = self.drop(old.key, "replaced")
        out.append(EndLink(old.key))
        return out

    def retire(self, link: L) -> list[Action[L]]:
        """A deregistering worker's ``link`` stops serving: unpublished, its channels and
        opens ended (``deregistered``), its own opens refused from now on."""
        peer = self._peer(link)
        self._unpublish(peer)
        peer.retired = True
        return self.drop(link, "deregistered")

    def drop(self, link: L, reason: str = "link_lost") -> list[Action[L]]:
        """End every channel and open ``link`` is part of, telling the other side (``reason``:
        a key of :data:`~leapcore.proto.hub_actions.END_REASONS`). The link stays joined."""
        peer = self._peers.get(link)
        if peer is None:
            return []
        code, text = END_REASONS[reason]
        out: list[Action[L]] = []
        for channel in list(peer.channels.values()):
            self._close_channel(channel, code, text, (channel.other(peer),), out)
        for pending in list(peer.opens.values()):  # its opens: the worker may stop waiting
            self._settle(pending)
            out.append(Close(pending.worker.key, ChannelClose(pending.channel_id, code, text)))
        for pending in list(peer.requests.values()):  # opens waiting for this worker
            self._settle(pending)
            out.append(OpenOutcome("worker_offline"))
            refusal = ChannelRefused(
                pending.opener_request_id, "worker_offline", "worker went offline"
            )
            out.append(Send(pending.opener.key, refusal))
        return out

    def leave(self, link: L) -> list[Action[L]]:
        """``link`` is gone: :meth:`drop` (``link_lost``), unpublished, forgotten."""
        peer = self._peers.get(link)
        if peer is None:
            return []
        out = self.drop(link)
        self._unpublish(peer)
        del self._peers[link]
        return out

    def shutdown(self) -> list[Action[L]]:
        """The hub is stopping: every channel closes both ways, every waiting open is
        refused ``unavailable``, and every later open too."""
        self.closing = True
        code, text = END_REASONS["shutdown"]
        out: list[Action[L]] = []
        for channel in list(self._channels.values()):
            self._close_channel(channel, code, text, (channel.opener, channel.worker), out)
        for pending in list(self._opens.values()):
            self._settle(pending)
            out.append(OpenOutcome("unavailable"))
            refusal = ChannelRefused(pending.opener_request_id, "unavailable", text)
            out.append(Send(pending.opener.key, refusal))
            out.append(Close(pending.worker.key, ChannelClose(pending.channel_id, code, text)))
        return out

    def _peer(self, link: L) -> _Peer[L]:
        peer = self._peers.get(link)
        if peer is None:
            raise LocalError(f"link {link} has not joined the router")
        return peer

    def _unpublish(self, peer: _Peer[L]) -> bool:
        if peer.worker_id is None or self._workers.get(peer.worker_id) is not peer:
            return False
        del self._workers[peer.worker_id]
        owned = self._online_by_owner.get(peer.owner_id)
        if owned is not None:
            owned.discard(peer.worker_id)
            if not owned:
                del self._online_by_owner[peer.owner_id]
        return True

    # -- records from links ------------------------------------------------------------------

    def receive(self, link: L, message: LinkMessage, now: float) -> list[Action[L]]:
        """One routing record from a joined link (``now``: when it arrived)."""
        if isinstance(message, ChannelData):
            return self.data(link, message)
        if isinstance(message, OpenChannel):
            return self.open_channel(link, message, now)
        if isinstance(message, ChannelAccept):
            return self.accept(link, message)
        if isinstance(message, ChannelReject):
            return self.reject(link, message)
        if isinstance(message, ChannelClose):
            return self.close(link, message)
        raise LocalError(f"{message.type} is not a routing record")

    def open_channel(self, link: L, message: OpenChannel, now: float) -> list[Action[L]]:
        """The checks that need no store; a :class:`Lookup` of the worker if they pass."""
        size = message.max_message_size
        if max_message_size_problem(size) is not None:
            return refused(link, message.request_id, message.worker_id, "size", size=size)
        return self._open_checks(link, message) or [Lookup(link, message, now)]

    def _open_checks(self, link: L, message: OpenChannel) -> list[Action[L]]:
        """The refusal of an open by the checks that need no store (empty if they pass);
        made again in :meth:`found`, since the driver may serve others while it asks."""
        peer = self._peer(link)
        asked = (link, message.request_id, message.worker_id)
        limits = self.limits
        link_held = peer.opened + len(peer.opens)
        user_held = len(self._user_channels.get(peer.owner_id, ()))
        if self.closing:
            return refused(*asked, "closing")
        if peer.retired:
            return refused(*asked, "retired")
        if len(peer.opens) >= MAX_PENDING_OPENS:
            return refused(*asked, "pending", cap=MAX_PENDING_OPENS)
        if link_held >= limits.max_channels_per_link:
            return refused(*asked, "link_quota", held=link_held)
        if user_held >= limits.max_channels_per_user:
            return refused(*asked, "user_quota", held=user_held)
        return []

    def found(
        self, lookup: Lookup[L], target: Target | None, *, via: L | None = None
    ) -> list[Action[L]]:
        """The rest of an open's checks, with what the store said about its worker; an
        :class:`Offer` of the ``channel_request`` if they pass. ``via``: a joined link that
        serves the worker though it is not published here (another hub's)."""
        link, message = lookup.link, lookup.message
        problem = self._open_checks(link, message)
        if problem:
            return problem
        peer = self._peer(link)
        asked = (link, message.request_id, message.worker_id)
        limits = self.limits
        if target is None or not target.active or target.worker_id == peer.worker_id:
            return refused(*asked, "not_found")
        if target.owner_id != peer.owner_id:
            return refused(*asked, "not_owner")
        destination = self._workers.get(target.worker_id) if via is None else self._peer(via)
        if destination is None:
            return refused(*asked, "offline")
        waiting = len(destination.requests)
        if waiting >= limits.max_pending_opens_per_worker:
            return refused(*asked, "worker_pending", cap=limits.max_pending_opens_per_worker)
        held = destination.served + waiting
        if held >= limits.max_channels_per_worker:
            return refused(*asked, "worker_quota", held=held)
        self._channel_id += 1
        # Deadlines never go backwards, so the oldest open is always the first due.
        deadline = max(lookup.now + self.open_timeout, self._last_deadline)
        pending = _Open(
            self.next_request_id(),
            self._channel_id,
            peer,
            message.request_id,
            destination,
            message.worker_id,
            min(message.max_message_size, self.max_message_size),
            deadline,
        )
        request = ChannelRequest(
            pending.request_id,
            pending.channel_id,
            pending.owner_id,
            message.message1,
            pending.size,
        )
        return [Offer(destination.key, request, pending)]

    def offered(self, offer: Offer[L], taken: bool) -> list[Action[L]]:
        """Whether the link took an :class:`Offer`'s record: a ``channel_request`` taken
        starts its open's wait (refused ``worker_offline`` if not taken); a
        ``channel_opened`` taken makes the channel live (if not, the worker is told the
        opener's link was lost)."""
        ticket = offer.ticket
        if isinstance(ticket, _Open):
            return self._requested(ticket, taken)
        assert isinstance(ticket, _Channel)
        return self._opened(ticket, taken)

    def _requested(self, pending: _Open[L], taken: bool) -> list[Action[L]]:
        if not taken:
            return refused(
                pending.opener.key, pending.opener_request_id, pending.worker_id, "offline"
            )
        self._last_deadline = pending.deadline
        self._opens[pending.request_id] = pending
        pending.opener.opens[pending.request_id] = pending
        pending.worker.requests[pending.request_id] = pending
        self._hold(pending.owner_id, pending.channel_id)
        return []

    def _opened(self, channel: _Channel[L], taken: bool) -> list[Action[L]]:
        worker = channel.worker
        if not taken:
            code, text = END_REASONS["link_lost"]
            return [Close(worker.key, ChannelClose(channel.id, code, text))]
        self._channels[channel.id] = channel
        channel.opener.channels[channel.id] = channel
        worker.channels[channel.id] = channel
        channel.opener.opened += 1
        worker.served += 1
        self._hold(channel.owner_id, channel.id)
        return [
            OpenOutcome("opened"),
            Log(DEBUG, "channel %d open: %s <-> %s", (channel.id, channel.opener.key, worker.key)),
        ]

    def accept(self, link: L, message: ChannelAccept) -> list[Action[L]]:
        """A worker accepted an open: an :class:`Offer` of ``channel_opened`` to the opener."""
        pending = self._answered(link, message.request_id, message.channel_id)
        if pending is None:
            return [unknown_answer(link, message.request_id, message.channel_id)]
        size = message.max_message_size
        opener = pending.opener.key
        if not MIN_MAX_MESSAGE_SIZE <= size <= pending.size:
            refusal = ChannelRefused(
                pending.opener_request_id,
                "handshake_failed",
                "worker answered an invalid max_message_size",
            )
            close = ChannelClose(
                pending.channel_id,
                "closed",
                f"max_message_size {size} is outside {MIN_MAX_MESSAGE_SIZE} .. {pending.size}",
            )
            return [
                OpenOutcome("invalid_accept"),
                Log(INFO, "%s accepted with max_message_size %d > %d", (link, size, pending.size)),
                Send(opener, refusal),
                Close(link, close),
            ]
        channel = _Channel(
            pending.channel_id, pending.opener, pending.worker, size, pending.owner_id
        )
        opened = ChannelOpened(pending.opener_request_id, channel.id, message.message2, size)
        return [Offer(opener, opened, channel)]

    def reject(self, link: L, message: ChannelReject) -> list[Action[L]]:
        """A worker rejected an open: ``channel_refused`` with its code to the opener."""
        pending = self._answered(link, message.request_id, message.channel_id)
        if pending is None:
            return [unknown_answer(link, message.request_id, message.channel_id)]
        refusal = ChannelRefused(
            pending.opener_request_id, message.code, f"worker rejected channel: {message.message}"
        )
        return [OpenOutcome("rejected"), Send(pending.opener.key, refusal)]

    def _answered(self, link: L, request_id: int, channel_id: int) -> _Open[L] | None:
        """The open a worker's answer settles, or None (unknown: late, or not this link's)."""
        peer = self._peers.get(link)
        pending = None if peer is None else peer.requests.get(request_id)
        if pending is None or pending.channel_id != channel_id:
            return None
        self._settle(pending)
        return pending

    def close(self, link: L, message: ChannelClose) -> list[Action[L]]:
        """An end closed a channel: forwarded to the other end as is; the channel is over."""
        channel = self._channels.get(message.channel_id)
        peer = self._peers.get(link)
        if channel is None or peer is None or peer.channels.get(channel.id) is not channel:
            text = "%s: channel_close for unknown channel %d"
            return [Log(DEBUG, text, (link, message.channel_id))]
        out: list[Action[L]] = []
        self._close_channel(channel, message.code, message.message, (channel.other(peer),), out)
        return out

    def data(self, link: L, frame: ChannelData | RelayedData) -> list[Action[L]]:
        """A data frame: forwarded to the channel's other end after the relay and credit
        rules (the hot path; the hub's driver passes frames kept whole, which it forwards
        as they came)."""
        channel = self._channels.get(frame.channel_id)
        if channel is None:
            return dropped(link, frame)
        opener, worker = channel.opener, channel.worker
        if link == opener.key:
            direction, receiver = _TO_WORKER, worker
        elif link == worker.key:
            direction, receiver = _TO_CLIENT, opener
        else:
            return dropped(link, frame)
        relay = channel.relay
        size = frame.size
        try:
            ends = relay.check(direction, frame.correlation_id, frame.flags, size)
            cost = relay.charge(direction, frame.flags, size)
        except RelayViolation as exc:
            sender = opener if receiver is worker else worker
            out: list[Action[L]] = [
                FrameRejected("relay_violation"),
                Log(INFO, "%s: %s", (link, exc)),
            ]
            self._close_channel(channel, "relay_violation", str(exc), (sender, receiver), out)
            return out
        forward = Forward(receiver.key, frame, direction, cost)
        if not ends:
            return [forward]
        # A CLOSE frame, forwarded: the channel is over at the hub.
        self._forget(channel)
        return [forward, ChannelGone(channel.id, (opener.key, worker.key))]

    def written(self, channel_id: int, direction: RelayDirection, cost: int) -> Send[L] | None:
        """The driver wrote a frame costing ``cost`` to its receiver: the ``channel_credit``
        to send its sender now, if a batch is due (nothing once the channel ended)."""
        channel = self._channels.get(channel_id)
        if channel is None:
            return None
        grant = channel.relay.delivered(direction, cost)
        if not grant:
            return None
        sender = channel.opener if direction is _TO_WORKER else channel.worker
        return Send(sender.key, ChannelCredit(channel_id, grant))

    # -- time ------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When the oldest waiting open times out (``inf``: none waits)."""
        for pending in self._opens.values():
            return pending.deadline
        return float("inf")

    def poll(self, now: float) -> list[Action[L]]:
        """Refuse every open whose deadline is at or before ``now`` (``timeout``); the
        worker is told with ``channel_close``."""
        out: list[Action[L]] = []
        while self._opens:
            pending = next(iter(self._opens.values()))
            if pending.deadline > now:
                break
            self._settle(pending)
            refusal = ChannelRefused(
                pending.opener_request_id,
                "timeout",
                f"worker did not answer the open within {self.open_timeout:g} s",
            )
            close = ChannelClose(pending.channel_id, "closed", "channel open timed out")
            worker = pending.worker.key
            out.append(OpenOutcome("timeout"))
            out.append(
                Log(INFO, "%s did not answer channel %d's open", (worker, pending.channel_id))
            )
            out.append(Send(pending.opener.key, refusal))
            out.append(Close(worker, close))
        return out

    # -- bookkeeping -------------------------------------------------------------------------

    def _hold(self, owner_id: str, channel_id: int) -> None:
        self._user_channels.setdefault(owner_id, set()).add(channel_id)

    def _release(self, owner_id: str, channel_id: int) -> None:
        held = self._user_channels.get(owner_id)
        if held is not None:
            held.discard(channel_id)
            if not held:
                del self._user_channels[owner_id]

    def _settle(self, pending: _Open[L]) -> None:
        self._release(pending.owner_id, pending.channel_id)
        self._opens.pop(pending.request_id, None)
        pending.opener.opens.pop(pending.request_id, None)
        pending.worker.requests.pop(pending.request_id, None)

    def _forget(self, channel: _Channel[L]) -> None:
        if self._channels.pop(channel.id, None) is None:
            return
        channel.opener.channels.pop(channel.id, None)
        channel.worker.channels.pop(channel.id, None)
        channel.opener.opened -= 1
        channel.worker.served -= 1
        self._release(channel.owner_id, channel.id)

    def _close_channel(
        self,
        channel: _Channel[L],
        code: str,
        message: str,
        ends: tuple[_Peer[L], ...],
        out: list[Action[L]],
    ) -> None:
        """Forget a live ``channel`` and tell ``ends``, each after its frames still queued."""
        if self._channels.get(channel.id) is not channel:
            return
        self._forget(channel)
        for end in ends:
            out.append(Close(end.key, ChannelClose(channel.id, code, message)))
        out.append(ChannelGone(channel.id, (channel.opener.key, channel.worker.key)))
