"""The hub server (trio): registration, worker links, client links and graceful shutdown.

One :class:`Hub` owns a :class:`~leapcore.net.listen.LinkServer` (links plus
``/healthz``), the :class:`~leapcore.store.hubstore.SQLiteHubStore` and the routing core
(:attr:`Hub.router`, which holds the live registry of worker links). It is a driver: the
accept loop, one reader and one writer per link, sign-in, registration and store calls,
metrics and logs. The first frame of a link says what it is:

* ``register``: consume a registration key, answer ``registered`` (or an
  ``error``) and end the link;
* ``connect``: authenticate the worker's token, record the name, labels, capabilities,
  ``os`` and ``arch`` the ``connect`` carries (if any), send ``worker_greeting`` first,
  publish the link (a newer link for the same worker replaces and closes the older one),
  record heartbeats; 10 s without any inbound message ends the link;
* ``client_hello``: authenticate the user, answer ``client_greeting``, then
  serve ``hub_request`` calls (:mod:`leapcore.hub.rpc`) and channel opens; a
  client link silent for ``client_idle_timeout`` gets ``error`` ``unavailable``.

**Budgets** (:class:`~leapcore.proto.limits.HubLimits`, ``Hub(limits=...)``; defaults and
effects in :mod:`leapcore.proto.limits`): client idle time, signed-in links per user and per
IP address, channels per link, per user and per worker, pending opens per worker, control
bytes queued per link, live registration keys per user (expired ones are purged at start
and every ``purge_interval``).

**Revocation at once.** Every ``revocation_check_interval``, and at once when another hub
on the same PostgreSQL database announces a revocation or deregistration (LISTEN/NOTIFY,
:meth:`~leapcore.store.hubstore.HubStore.watch_changes`), the hub asks its store (in one
batched query each) which of its links' API tokens are still live and what its workers'
statuses are, because the admin CLI or another hub may change them: a revoked token's (or
deleted user's) links get ``error`` ``unauthenticated``, a deleted worker's link
``worker_deleted``, and close. A DEREGISTERING worker's link is *retired*: when it
connects, its ``connect`` is answered with its ``deregister`` instead of a greeting (link
state ``worker-retiring``: it may only heartbeat and acknowledge), every time whatever the
notification's attempt count;
a worker deregistered while online is sent it on its live link, whose requests and opens
are then refused ``permission_denied``. A retired link is never published, counted or
routed to (a newer one for the same worker replaces it) and ends after its
``deregister_ack`` or ``deregister_grace``.

**Token expiry and rotation.** A worker token or API token past its expiry is refused
``token_expired`` (the message says when). A published worker link whose token expires
within ``token_rotation_window_days`` is sent ``rotate_token`` (at its connect, and at every
revocation check), at most one offer under way per link; the store keeps the new token as
the worker's pending one (both sign in) until the worker's ``rotate_token_ack`` (or a
connect with the new token) makes it current and retires the old one (audited
``worker_token_rotated``). Lifetimes come from the limits (``worker_token_lifetime_days``,
``api_token_lifetime_days``).

**The hub's id.** Every database has a random ``hub_id`` (``SQLiteHubStore.hub_id``),
logged when the hub starts and named in ``registered``, both greetings and every
``error`` record the hub sends: a worker trusts ``worker_deleted`` (a token of a worker
this hub deleted) only from the hub it registered with; a token the hub never issued is
``unauthenticated``.

**Logs.** Link log lines name the peer (``ip:port``). Failed sign-ins (bad API token, bad
worker token, refused registration key) are logged at WARNING with the peer's address and
never the credential, rate-limited per kind (:class:`~leapcore.proto.ratelimit.LogRateLimiter`).
They, the links closed by a revocation and the deregistrations and key revocations made
through the hub are security events (:mod:`leapcore.net.security_log`): one record each,
with a stable ``event`` name, the ``reason`` and the ``peer`` as record attributes.

**Audit trail.** The security events are also recorded in the database
(:mod:`leapcore.proto.audit_events`): registrations, deregistrations and key revocations
by the store operation itself, in its transaction (the hub passes the link's
:attr:`_Link.origin`); refused credentials (as rate-limited as their log lines, the rest
folded into one row) and replaced worker links by :meth:`Hub._audit`. A failed audit write
is logged and counted, never raised. Events older than ``audit_retention_days`` are
pruned with the expired registration keys (:meth:`Hub.purge`).

**Channels.** Every routing decision is made by the sans-IO core
:class:`~leapcore.proto.hub_router.HubRouter` (:attr:`Hub.router`): who may open a channel
to which worker, the channel table, the channel budgets, open deadlines
(:data:`~leapcore.proto.limits.OPEN_TIMEOUT`), the relay and credit rules, and what a
lost, replaced or retired link takes with it. This driver feeds it each link's routing
records, the links signing in and ending, frames written and the time, and carries out
what it answers (:mod:`leapcore.proto.hub_actions`): records queued on links, metrics
counted, lines logged, store look-ups of the worker an open names.

``GET /metrics`` serves Prometheus metrics (:mod:`leapcore.hub.metrics`).

**Several hubs as one.** With ``Hub(cluster=ClusterOptions(...))`` the hub shares its
database with other hub processes (:mod:`leapcore.hub.cluster`): its worker links come up
and go into the shared presence table, an open for a worker linked to another hub is
carried there (the :class:`~leapcore.proto.hub_actions.Lookup` hook), and its shutdown
sends workers on at once when other hubs are alive.

**The web page.** ``serve(web=WebOptions(...))`` also serves the read-only web page
(:mod:`leapcore.hub.web`) on a listener of its own. The hub tells it what changes through
:attr:`Hub.presence` (:mod:`leapcore.hub.presence`): a worker registered, online (published),
keyed (its first heartbeat), offline or deregistering; a refused token on the page goes
through the same rate-limited log and audit path as a link's (:meth:`Hub.web_sign_in_failed`).

Each link has one writer task and one reader that never waits for the writer:
everything the reader answers or relays is queued without blocking. Control
records go to a queue bounded by frame count (:data:`SEND_QUEUE`) and by bytes
(``max_link_queue_bytes``; a peer that lets it fill up is disconnected) and are
written first; data frames wait in one queue per channel, bounded by that channel's credit
(:data:`~leapcore.proto.limits.CHANNEL_CREDIT` bytes per direction), and the
writer takes them round-robin across channels. A slow reader thus stalls
only the senders of its own channels. A bad or out-of-order frame closes only
its own link, after an ``error`` record.

**Store calls never block the event loop.** Every store call made while serving goes
through :meth:`Hub.store_call`: it runs in a worker thread (``trio.to_thread``) under one
:class:`trio.CapacityLimiter` per hub, sized by the store's ``max_concurrent_calls`` (1 for
SQLite, whose one connection is thus never used by two threads at once). A slow query (a
locked SQLite file, a slow database server) delays only the task that waits for it: the
link whose sign-in, request or open needs the answer, and the store calls queued behind
it; heartbeats (their times are written in batches, :meth:`Hub.flush_last_seen`) and
relayed frames make no store call and go on. A store call is never abandoned: once its
thread started, a cancellation of its caller waits until the call returns (its
transaction committed or rolled back), then takes effect and the answer is dropped; a
caller cancelled while it waits for the limiter never starts its call. The store is
closed when :meth:`Hub.serve` ends, after every serving task, through the limiter.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import trio

from ..crypto.keys import PublicKeyBundle
from ..crypto.mode import EncryptionMode, parse_encryption_mode
from ..errors import (
    AlreadyExists,
    LeapcoreError,
    LinkClosed,
    LinkProtocolError,
    LocalError,
    NotFound,
    QuotaExceeded,
    RequestError,
    StorageError,
    TokenExpired,
    Unauthenticated,
    WorkerDeleted,
)
from ..net.listen import HttpResponse, LinkServer
from ..net.pipe import WRITE_BATCH, LinkPipe, send_joined
from ..net.security_log import security_event
from ..proto.audit_events import ANONYMOUS, AuditEvent, Origin, user_actor, worker_actor
from ..proto.heartbeat import Liveness
from ..proto.hub_actions import (
    Action,
    ChannelGone,
    Close,
    EndLink,
    Forward,
    FrameDropped,
    FrameRejected,
    Log,
    Lookup,
    Offer,
    OpenOutcome,
    Send,
    Target,
)
from ..proto.hub_router import HubRouter
from ..proto.limits import (
    DAY_MS,
    DEFAULT_MAX_MESSAGE_SIZE,
    GO_AWAY_DELAY,
    LAST_SEEN_FLUSH_INTERVAL,
    MAX_LINK_QUEUE_BYTES,
    STORE_CALLS_AT_ONCE,
    HubLimits,
    validate_max_message_size,
)
from ..proto.link_codec import (
    ChannelAccept,
    ChannelClose,
    ChannelData,
    ChannelReject,
    ClientGreeting,
    ClientHello,
    Connect,
    Deregister,
    DeregisterAck,
    ErrorMessage,
    GoAway,
    Heartbeat,
    HeartbeatAck,
    HubRequest,
    HubResponse,
    LinkMessage,
    OpenChannel,
    Register,
    Registered,
    RelayedData,
    RotateToken,
    RotateTokenAck,
    WorkerGreeting,
    encode,
)
from ..proto.link_state import LinkConnection, LinkRole, LinkState
from ..proto.ratelimit import LogRateLimiter
from ..proto.relay import RelayDirection
from ..store.hubstore import (
    HubStore,
    Notification,
    User,
    Worker,
    WorkerStatus,
    open_hub_store,
    utc_text,
)
from ..store.sqldb import DEFAULT_POOL_SIZE
from .cluster import Cluster, ClusterOptions
from .gcpolicy import GcPolicy, GcState, run_gc_policy
from .metrics import CONTENT_TYPE, HubMetrics, Snapshot
from .presence import Presence
from .rpc import WORKER_METHODS, call
from .web import WebOptions, WebServer

__all__ = [
    "HUB_MAX_MESSAGE_SIZE",
    "SEND_QUEUE",
    "SHUTDOWN_BUDGET",
    "Hub",
]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Control records queued per link before the peer counts as not reading (and is
#: disconnected). Data frames are bounded by channel credit instead.
SEND_QUEUE: Final = 256
#: The largest channel message size the hub forwards (``Hub(max_message_size=...)``).
HUB_MAX_MESSAGE_SIZE: Final = DEFAULT_MAX_MESSAGE_SIZE
#: Seconds to flush a closing link's queued frames.
FLUSH_TIMEOUT: Final = 2.0
#: Seconds the go-away broadcast may take, in all.
SHUTDOWN_BUDGET: Final = 2.0
#: Encoded ``heartbeat_ack`` records kept (by sequence number; emptied when full).
ACK_CACHE: Final = 4096
#: The budgets a hub gets when none are given.
DEFAULT_LIMITS: Final = HubLimits()


#: The ``worker_deleted`` error's text: the token is one this hub issued to a worker it has
#: since deleted (the one answer on which a worker retires its identity).
WORKER_DELETED: Final = "this worker was deregistered or deleted on this hub"

#: Failed sign-in kinds (log lines are rate-limited per kind) and how they are named.
_SIGN_IN_KINDS: Final = {
    "api_token": "bad API token",
    "worker_token": "bad worker token",
    "api_token_expired": "expired API token",
    "worker_token_expired": "expired worker token",
    "registration_key": "refused registration key",
}
#: Failed sign-in kind -> its security event (:mod:`leapcore.net.security_log`).
_SIGN_IN_EVENTS: Final = {
    "api_token": "api_token_rejected",
    "worker_token": "worker_token_rejected",
    "api_token_expired": "api_token_rejected",
    "worker_token_expired": "worker_token_rejected",
    "registration_key": "registration_key_rejected",
}

#: Failed sign-in kind -> its audit event kind and detail (:mod:`leapcore.proto.audit_events`).
_SIGN_IN_AUDIT: Final[dict[str, tuple[str, dict[str, str]]]] = {
    "api_token": ("token_refused", {"credential": "api_token"}),
    "worker_token": ("token_refused", {"credential": "worker_token"}),
    "api_token_expired": ("token_expired", {"credential": "api_token"}),
    "worker_token_expired": ("token_expired", {"credential": "worker_token"}),
    "registration_key": ("registration_key_refused", {}),
}

_DIRECTION_LABELS: Final = {
    RelayDirection.TO_WORKER: "to_worker",
    RelayDirection.TO_CLIENT: "to_client",
}


class _Flow:
    """One channel's frames waiting for one destination link's writer (one direction)."""

    __slots__ = ("channel_id", "direction", "frames", "queued", "scheduled")

    def __init__(self, channel_id: int, direction: RelayDirection) -> None:
        self.channel_id = channel_id
        self.direction = direction
        #: (encoded frame, credit cost); a trailing ``channel_close`` costs 0.
        self.frames: deque[tuple[bytes, int]] = deque()
        #: Credit-counted bytes waiting here or being written (at most CHANNEL_CREDIT).
        self.queued = 0
        #: Whether the flow is in its destination's round-robin ring.
        self.scheduled = False


class _Link:
    """One live link: its state machine, its outbound queues and who is on the other end."""

    def __init__(
        self,
        pipe: LinkPipe,
        transport: str,
        on_written: Callable[[_Flow, int], None] | None = None,
        *,
        peer: str = "",
        max_queue_bytes: int = MAX_LINK_QUEUE_BYTES,
        hub_id: str = "",
    ) -> None:
        self.pipe = pipe
        self.transport = transport
        #: The peer's "ip:port", "unix", or "" when the server did not say.
        self.peer = peer
        #: The hub's id, named in every ``error`` record it sends on this link.
        self.hub_id = hub_id
        self.conn = LinkConnection(LinkRole.HUB)
        self._on_written = on_written
        #: Control records (and flush markers), written before any data.
        self._control: deque[bytes | trio.Event] = deque()
        #: Bytes of the records in ``_control`` (bounded by ``max_queue_bytes``).
        self._control_bytes = 0
        self.max_queue_bytes = max_queue_bytes
        #: Flows with frames waiting, served round-robin.
        self._ready: deque[_Flow] = deque()
        self._wake = trio.Event()
        self._idle = False
        self._closed = False
        self.scope = trio.CancelScope()
        self.writer_done = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.worker: Worker | None = None
        self.user: User | None = None
        self.mode: EncryptionMode | None = None
        self.liveness: Liveness | None = None
        #: The client's API token id (checked against the store while the link lives).
        self.token_id: str | None = None
        #: The address this signed-in link counts against (``max_links_per_address``).
        self.address: str | None = None
        #: When the link must end whatever it sends (a retired worker's grace), or inf.
        self.hard_deadline = math.inf
        #: The control queue overflowed (the peer is not reading): the link is ending.
        self._overflowed = False
        #: The reader's receive scope (its deadline is the link's next timeout).
        self.waiting: trio.CancelScope | None = None
        #: The serving loop is over (the link is flushing or gone): no more checks.
        self.ending = False
        #: Deregister request id -> notification id, awaiting the worker's ack.
        self.deregs: dict[int, str] = {}
        #: A worker link's token rotation under way: the ``rotate_token`` request id and the
        #: new token, until the worker acknowledges it.
        self.rotation: tuple[int, str] | None = None
        #: A ``rotate_token`` offer is being stored (at most one at a time).
        self.offering = False
        #: Its deregister is being sent (the store records the attempt first).
        self.dereg_sending = False
        #: The queues of the channels whose frames come to this link, by channel id.
        self.flows: dict[int, _Flow] = {}
        #: The pipe's synchronous write and the flush of what it held (the WebSocket pipe's
        #: ``send_now`` and ``flush``), if it has them.
        self._send_now: Callable[[bytes], int | None] | None = getattr(pipe, "send_now", None)
        self._flush_held: Callable[[], Awaitable[None]] | None = getattr(pipe, "flush", None)
        #: Its batch form (``send_parts_now``), for the frames a reader queued: only on a
        #: pipe that writes straight to its socket.
        self._send_parts_now: Callable[[list[bytes]], int | None] | None = getattr(
            pipe, "send_parts_now", None
        )
        if self._flush_held is None or not getattr(pipe, "writes_directly", False):
            self._send_parts_now = None
        if self._flush_held is None:
            self._send_now = None
        #: ``send_now`` left bytes in the pipe: the writer flushes them.
        self._held = False

    def _put(self, item: bytes | trio.Event) -> bool:
        if self._closed:
            return False
        if (
            self._idle
            and self._send_now is not None
            and not self._control
            and not self._ready
            and not self._held
            and not isinstance(item, trio.Event)
        ):
            # The writer has nothing to do: the record goes out now, from here, without
            # waking it (an idle worker's heartbeat ack: one scheduler pass instead of three).
            held = self._send_now(item)
            if held is not None:
                if held:  # the socket took part of it: the writer writes the rest
                    self._held = True
                    self._wake.set()
                return True
        size = 0 if isinstance(item, trio.Event) else len(item)
        # An idle writer takes the first item at once: it holds one frame, like a hand-off.
        if len(self._control) >= SEND_QUEUE + self._idle or (
            self._control and self._control_bytes + size > self.max_queue_bytes
        ):
            if not self._overflowed:  # one line per link, however much more is refused
                self._overflowed = True
                log.warning("%s: peer is not reading; closing the link", self.name)
            self.scope.cancel()
            return False
        self._control.append(item)
        self._control_bytes += size
        self._wake.set()
        return True

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        where = f" from {self.peer}" if self.peer else ""
        if self.worker is not None:
            return f"worker {self.worker.id}{where}"
        if self.user is not None:
            return f"client {self.user.name}{where}"
        return f"link ({self.transport}){where}"

    @property
    def origin(self) -> Origin:
        """Who acts on this link, and from where, for the audit trail."""
        if self.worker is not None:
            actor = worker_actor(self.worker.id)
        elif self.user is not None:
            actor = user_actor(self.user.name)
        else:
            actor = ANONYMOUS
        return Origin(actor, self.peer or None)

    def end(self, code: str, message: str) -> None:
        """End the link from outside its serving loop: an ``error`` record, then close."""
        if self.ending:
            return
        self.fail(code, message)
        self.scope.cancel()

    def enqueue(self, message: LinkMessage) -> bool:
        """Queue a control record without waiting; False if it could not be (link closing)."""
        try:
            data = self.conn.send(message)
        except LocalError:
            return False
        return self._put(data)

    def put(self, data: bytes) -> bool:
        """Queue a control record already encoded by :attr:`conn` (see :meth:`enqueue`)."""
        return self._put(data)

    def enqueue_data(
        self,
        flow: _Flow,
        message: ChannelData | RelayedData | ChannelClose,
        cost: int,
        *,
        wake: bool = True,
    ) -> bool:
        """Queue ``message`` behind ``flow``'s frames (bounded by the channel's credit).
        Without ``wake``, the caller must call :meth:`flush_ready` before it next waits."""
        if self._closed:
            return False
        try:
            data = self.conn.send(message)
        except LocalError:
            return False
        flow.frames.append((data, cost))
        flow.queued += cost
        if not flow.scheduled:
            flow.scheduled = True
            self._ready.append(flow)
        if wake:
            self._wake.set()
        return True

    def flush_ready(self) -> None:
        """A reader queued frames for this link (``wake`` false) and is done with its read:
        when the writer is idle with nothing else to write, they go out now, from here, in
        one direct write (one scheduler pass and a wake-up less per write); else the writer
        is woken for them."""
        if (
            self._idle
            and self._send_parts_now is not None
            and not self._control
            and not self._held
            and not self._closed
        ):
            taken: list[tuple[_Flow, bytes, int]] = []
            size = 0
            while size < WRITE_BATCH and (ready := self._pop_ready()) is not None:
                taken.append(ready)
                size += len(ready[1])
            if taken:
                held = self._send_parts_now([data for _, data, _ in taken])
                if held is not None:
                    self._after_write([(flow, cost) for flow, _, cost in taken])
                    if held:  # the socket took part of it: the writer writes the rest
                        self._held = True
                        self._wake.set()
                    if not self._ready:
                        return
                else:  # not written: back at the head of their flows, for the writer
                    for flow, data, cost in reversed(taken):
                        flow.frames.appendleft((data, cost))
                        if not flow.scheduled:
                            flow.scheduled = True
                            self._ready.appendleft(flow)
        if self._ready or self._control:
            self._wake.set()

    def _pop_ready(self) -> tuple[_Flow, bytes, int] | None:
        """The next frame of the flows with frames waiting, round-robin; None if none."""
        ready = self._ready
        while ready:
            flow = ready.popleft()
            if not flow.frames:
                flow.scheduled = False
                continue
            data, cost = flow.frames.popleft()
            if flow.frames:
                ready.append(flow)  # round-robin: to the back of the ring
            else:
                flow.scheduled = False
            return flow, data, cost
        return None

    def _after_write(self, written: list[tuple[_Flow, int]]) -> None:
        """Frames of these flows were handed to the transport: their credit comes back."""
        for flow, cost in written:
            flow.queued -= cost
        if self._on_written is not None:
            for flow, cost in written:
                self._on_written(flow, cost)

    def enqueue_close(self, message: ChannelClose) -> bool:
        """Queue a ``channel_close``: after the channel's frames still waiting, if any."""
        flow = self.flows.get(message.channel_id)
        if flow is not None and flow.frames:
            return self.enqueue_data(flow, message, 0)
        return self.enqueue(message)

    def forward(self, action: Forward[_Link], *, wake: bool = True) -> None:
        """Queue a data frame in its channel's flow to this link (``wake``: see
        :meth:`enqueue_data`)."""
        flow = self.flows.get(action.frame.channel_id)
        if flow is None:
            flow = self.flows[action.frame.channel_id] = _Flow(
                action.frame.channel_id, action.direction
            )
        self.enqueue_data(flow, action.frame, action.cost, wake=wake)

    def fail(self, code: str, message: str) -> None:
        """Queue an ``error`` record (naming this hub); the link ends after it."""
        record = ErrorMessage(code, message, self.hub_id)
        if not self.enqueue(record):
            # The state machine closed on a bad frame received: the record still goes out.
            self.conn.state = LinkState.CLOSED
            self._put(encode(record))

    async def flushed(self) -> None:
        """Wait until every control record queued so far was handed to the transport."""
        event = trio.Event()
        if self._put(event):
            await event.wait()

    async def writer(self) -> None:
        """The link's one writer: control records first, then the channels' frames in turn,
        joined into one transport write up to :data:`~leapcore.net.pipe.WRITE_BATCH`."""
        try:
            while True:
                if self._held and self._flush_held is not None:
                    self._held = False
                    await self._flush_held()
                batch: list[bytes] = []
                size = 0
                written: list[tuple[_Flow, int]] = []
                flushed: list[trio.Event] = []
                while size < WRITE_BATCH:
                    if self._control:
                        item = self._control.popleft()
                        if isinstance(item, trio.Event):
                            flushed.append(item)  # set once what came before it is written
                        else:
                            self._control_bytes -= len(item)
                            batch.append(item)
                            size += len(item)
                    elif (ready := self._pop_ready()) is not None:
                        flow, data, cost = ready
                        batch.append(data)
                        size += len(data)
                        written.append((flow, cost))
                    else:
                        break
                if batch:
                    try:
                        await send_joined(self.pipe, batch)
                    except BaseException:
                        for flow, cost in written:
                            flow.queued -= cost
                        raise
                    self._after_write(written)
                for event in flushed:
                    event.set()
                if batch or flushed:
                    continue
                if self._closed:
                    return
                self._wake = trio.Event()
                self._idle = True
                try:
                    await self._wake.wait()
                finally:
                    self._idle = False
        except LinkClosed:
            self.scope.cancel()
        finally:
            self.writer_done.set()

    def close_queue(self) -> None:
        """Accept nothing more; the writer ends once everything queued was written."""
        self._closed = True
        self._wake.set()


class Hub:
    """The hub: ``await nursery.start(hub.serve, host=..., port=...)``, then :meth:`shutdown`."""

    def __init__(
        self,
        store_path: Path | str,
        *,
        max_workers_per_user: int = 64,
        max_message_size: int = HUB_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
        store: HubStore | None = None,
        limits: HubLimits = DEFAULT_LIMITS,
        store_pool_size: int = DEFAULT_POOL_SIZE,
        cluster: ClusterOptions | None = None,
        gc_policy: GcPolicy | None = None,
    ) -> None:
        """``store_path``: an SQLite file, or a ``postgresql://`` URL (at most
        ``store_pool_size`` connections; :func:`~leapcore.store.hubstore.open_hub_store`).
        ``store`` replaces the store opened at ``store_path`` (solo mode passes one that
        protects its own worker); the hub closes it when :meth:`serve` returns. ``limits``
        are the budgets of :class:`~leapcore.proto.limits.HubLimits`. ``cluster``: this hub
        is one of several sharing the database (:mod:`leapcore.hub.cluster`). ``gc_policy``:
        :meth:`serve` runs it (:mod:`leapcore.hub.gcpolicy`; for a process that is this hub
        and nothing else)."""
        validate_max_message_size(max_message_size)
        if store is None:
            store = open_hub_store(
                store_path, pool_size=store_pool_size, max_workers_per_user=max_workers_per_user
            )
        self.store: HubStore = store
        #: At most this many store calls run at once, each in a worker thread
        #: (:meth:`store_call`): the store's ``max_concurrent_calls`` (1 for SQLite, the
        #: pool's size for PostgreSQL).
        calls = getattr(store, "max_concurrent_calls", STORE_CALLS_AT_ONCE)
        self.store_limiter = trio.CapacityLimiter(calls)
        #: The largest message size forwarded in a ``channel_request``.
        self.max_message_size = max_message_size
        self.limits = limits
        self._clock = clock
        self._wall_clock = wall_clock
        self._links: set[_Link] = set()
        #: Links that have ended since this hub was made (the GC policy's measure of churn).
        self.links_closed = 0
        self.gc_policy = gc_policy
        #: The policy's state while :meth:`serve` runs it.
        self.gc_state: GcState | None = None
        #: The routing core: published workers, pending opens, channels, credit.
        self.router: HubRouter[_Link] = HubRouter(limits, max_message_size)
        #: Worker id -> the link it connected with while deregistering (at most one each).
        self._retiring: dict[str, _Link] = {}
        #: The timer of the router's next open deadline (while :meth:`serve` runs).
        self._open_timer: trio.CancelScope | None = None
        #: user id -> its signed-in client links (``max_links_per_user``).
        self._user_links: dict[str, set[_Link]] = {}
        #: peer address -> its signed-in links (``max_links_per_address``).
        self._address_links: dict[str, set[_Link]] = {}
        #: Failed sign-ins are logged at most this often per kind.
        self._signin_log = LogRateLimiter()
        #: Heartbeats' times not yet written (worker id -> ms), and when they last were
        #: (see :meth:`flush_last_seen`).
        self._seen: dict[str, int] = {}
        #: Encoded ``heartbeat_ack`` records by (link state, sequence number) (see :meth:`_ack`).
        self._acks: dict[tuple[LinkState, int], bytes] = {}
        self._seen_flushed = -math.inf  # (no trio clock before serve)
        #: Set when the store announces a change (PostgreSQL): check revocations now.
        self._store_changed = trio.Event()
        #: A flush of the heartbeats' times is scheduled in :attr:`_nursery`.
        self._flush_scheduled = False
        self._serve_scope: trio.CancelScope | None = None
        #: The serving nursery (while :meth:`serve` runs): background store writes.
        self._nursery: trio.Nursery | None = None
        #: Prometheus metrics, in this hub's own registry (served at ``/metrics``).
        self.metrics = HubMetrics()
        #: Worker changes, for the web page's event streams (:mod:`leapcore.hub.web`).
        self.presence = Presence()
        self.store.on_audit_failure = self.metrics.audit_write_failed
        #: The web page's server and its bound (host, port), when :meth:`serve` serves one.
        self.web: WebServer | None = None
        self.web_bound: tuple[str, int] | None = None
        self.store.worker_token_lifetime_ms = limits.worker_token_lifetime_days * DAY_MS
        self.store.api_token_lifetime_ms = limits.api_token_lifetime_days * DAY_MS
        self._routes = {"/healthz": _healthz, "/metrics": self._metrics_route}
        self.server = LinkServer(self._on_link, routes=self._routes, limits=limits.server_limits())
        #: This hub's part in a cluster of hubs sharing its database, or None.
        self.cluster = Cluster(self, cluster) if cluster is not None else None

    # -- the store ------------------------------------------------------------------------

    async def store_call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` (a store method) in a worker thread, at most
        :attr:`store_limiter`'s many at once; the event loop goes on meanwhile. Never
        abandoned: a cancellation that comes while the call runs waits for it to return
        (so a write completes or does not happen, and no transaction is left open), then
        takes effect; one that comes while the call waits for the limiter, before it starts,
        takes effect at once and the call never runs."""
        call = functools.partial(fn, *args, **kwargs)
        return await trio.to_thread.run_sync(
            call, limiter=self.store_limiter, abandon_on_cancel=False
        )

    # -- what hubrpc needs ------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def is_online(self, worker_id: str) -> bool:
        """Linked here, or (in a cluster) holding a live presence lease on another hub."""
        if self.router.worker_link(worker_id) is not None:
            return True
        return self.cluster is not None and self.cluster.online_elsewhere(worker_id)

    @property
    def online_workers(self) -> frozenset[str]:
        return self.router.online_workers

    async def notify_deregister(self, note: Notification) -> bool:
        """The worker was deregistered on this hub: its live link stops working at once
        and is sent the deregister (True when it was)."""
        link = self.router.worker_link(note.worker_id)
        if link is None:
            return False
        return await self._retire(link, note)

    @property
    def open_channels(self) -> int:
        return self.router.channel_count

    def channel_buffered(self, channel_id: int) -> int:
        """Credit-counted bytes the hub holds for a live channel, both directions."""
        ends = self.router.ends(channel_id)
        if ends is None:
            return 0
        flows = (end.flows.get(channel_id) for end in ends)
        return sum(flow.queued for flow in flows if flow is not None)

    # -- serving --------------------------------------------------------------------------

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        web: WebOptions | None = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on TCP (and a Unix socket); ``task_status.started`` gets the TCP (host, port).

        With ``web`` the web page (:mod:`leapcore.hub.web`) is served too; :attr:`web` is its
        server and :attr:`web_bound` its bound (host, port) once ``task_status.started`` is
        called.

        Returns after :meth:`shutdown`. The store is closed when it returns.
        """
        if ssl_context is not None:
            self.server = LinkServer(
                self._on_link,
                routes=self._routes,
                ssl_context=ssl_context,
                limits=self.limits.server_limits(),
            )
        try:
            with trio.CancelScope() as scope:
                self._serve_scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._seen_flushed = self._clock()  # the first batch 5 s from now
                    log.info("hub id %s (database %s)", self.store.hub_id, self.store.location)
                    await self.purge()
                    if self.cluster is not None:
                        await nursery.start(self.cluster.run)
                    if self.gc_policy is not None:
                        self.gc_state = await nursery.start(
                            functools.partial(
                                run_gc_policy, self.gc_policy, self._link_counts, clock=self._clock
                            )
                        )
                    nursery.start_soon(self._expire_opens)
                    nursery.start_soon(self._check_revocations_forever)
                    if self.store.announces_changes:
                        nursery.start_soon(self._watch_store_changes)
                    nursery.start_soon(self._purge_forever)
                    bound = await nursery.start(self.server.serve_tcp, host, port)
                    if unix_path is not None:
                        await nursery.start(self.server.serve_unix, unix_path)
                    if web is not None:
                        scheme = "https" if ssl_context is not None else "http"
                        self.web = WebServer(
                            self,
                            hub_url=web.public_url or url_of(scheme, bound),
                            ssl_context=web.ssl_context,
                        )
                        self.web_bound = await nursery.start(self.web.serve, *web.listen)
                    task_status.started(bound)
        finally:
            self._nursery = None
            # Every serving task is over: the last heartbeats' times, then close (through
            # the limiter, never while a call runs).
            with trio.CancelScope(shield=True):
                await self.flush_last_seen()
                await self.store_call(self.store.close)

    async def shutdown(self) -> None:
        """Close every channel, tell every peer to come back in 10 s (at once when other hubs
        of its cluster are alive: they take the workers) (2 s budget in all), then close
        every link."""
        self._apply(self.router.shutdown())
        links = list(self._links)
        delay = 0 if self.cluster is not None and self.cluster.others_alive else GO_AWAY_DELAY
        with trio.move_on_after(SHUTDOWN_BUDGET):
            async with trio.open_nursery() as nursery:
                for link in links:
                    if link.enqueue(GoAway(delay, "hub is shutting down")):
                        nursery.start_soon(link.flushed)
        for link in links:
            link.scope.cancel()
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    # -- periodic checks ---------------------------------------------------------------------

    async def _expire_opens(self) -> None:
        """Refuse the opens whose worker did not answer in time (the router's deadlines)."""
        while True:
            with trio.CancelScope() as timer:
                self._open_timer = timer
                self._reset_open_timer()
                await trio.sleep_forever()
            self._open_timer = None
            self._apply(self.router.poll(self._clock()))

    def _reset_open_timer(self) -> None:
        if self._open_timer is not None:
            self._open_timer.deadline = self._trio_time(self.router.next_deadline())

    def _trio_time(self, deadline: float) -> float:
        """A deadline on :attr:`_clock` as trio time."""
        return trio.current_time() + max(0.0, deadline - self._clock())

    async def flush_last_seen(self) -> None:
        """Write the heartbeats' times kept since the last call, in one transaction (a failed
        or cancelled write keeps them for the next). Presence needs seconds, not one
        transaction per heartbeat: this runs every :data:`LAST_SEEN_FLUSH_INTERVAL`, soon
        after a worker's link ends, and when the hub stops. Two flushes may overlap: a time
        never moves back (``record_last_seen`` keeps the later one)."""
        self._seen_flushed = self._clock()
        if not self._seen:
            return
        seen, self._seen = self._seen, {}
        try:
            await self.store_call(self.store.record_last_seen, seen)
        except LeapcoreError as exc:
            log.error("last seen times not written: %s: %s", type(exc).__name__, exc)
            self._keep_seen(seen)
        except BaseException:  # cancelled: perhaps not written; the next flush writes them
            self._keep_seen(seen)
            raise

    def _keep_seen(self, seen: dict[str, int]) -> None:
        for worker_id, at in seen.items():
            self._seen[worker_id] = max(at, self._seen.get(worker_id, 0))

    def _flush_soon(self) -> None:
        """Flush the heartbeats' times in the background (a link ending never waits for
        the store); the final flush in :meth:`serve` writes them when the hub stops."""
        if self._flush_scheduled or self._nursery is None:
            return
        self._flush_scheduled = True
        self._nursery.start_soon(self._flush_task)

    async def _flush_task(self) -> None:
        self._flush_scheduled = False
        await self.flush_last_seen()

    async def _check_revocations_forever(self) -> None:
        while True:
            with trio.move_on_after(self.limits.revocation_check_interval):
                await self._store_changed.wait()
            self._store_changed = trio.Event()
            if self._clock() - self._seen_flushed >= LAST_SEEN_FLUSH_INTERVAL:
                await self.flush_last_seen()
            try:
                await self.check_revocations()
            except LeapcoreError as exc:  # the store failed: try again next time
                log.error("revocation check failed: %s: %s", type(exc).__name__, exc)
            for kind, count in self._signin_log.expired(self._clock()):
                await self._log_suppressed(kind, count)

    async def _watch_store_changes(self) -> None:
        """Check revocations as soon as any hub on this database announces a change
        (:meth:`~leapcore.store.hubstore.HubStore.watch_changes`, PostgreSQL's LISTEN):
        the watch runs in a thread, and wakes :meth:`_check_revocations_forever`."""
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()

        def heard(_what: str) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._store_changed.set, trio_token=token)

        try:
            await trio.to_thread.run_sync(
                self.store.watch_changes, heard, stop, abandon_on_cancel=True
            )
        finally:
            stop.set()  # the abandoned thread returns within the watch's check interval

    async def check_revocations(self) -> None:
        """End the links whose credentials no longer hold, asking the store (the admin CLI
        or another hub may have changed them): a client whose API token was revoked (or
        whose user was deleted) gets ``error`` ``unauthenticated``; a worker that was
        deleted, ``worker_deleted``; a worker being deregistered stops serving and is sent
        its deregister (:meth:`_retire`). Runs every ``revocation_check_interval``; the links
        that ended while the store answered are left alone."""
        links = [link for link in self._links if not link.ending]
        clients = [link for link in links if link.token_id is not None]
        if clients:
            token_ids = {link.token_id for link in clients if link.token_id}
            live = await self.store_call(self.store.live_token_ids, token_ids)
            for link in clients:
                if link.token_id not in live and not link.ending:
                    security_event(
                        log,
                        "api_token_revoked",
                        "%s: API token revoked (or user deleted); link closed",
                        link.name,
                        reason="API token revoked or user deleted",
                        peer=link.peer or "?",
                        token_id=link.token_id,
                        user=link.user.name if link.user is not None else None,
                    )
                    self.metrics.link_closed("token_revoked")
                    link.end("unauthenticated", "the API token was revoked")
        workers = [link for link in links if link.worker is not None]
        if workers:
            worker_ids = {w.worker.id for w in workers if w.worker}
            statuses = await self.store_call(self.store.worker_statuses, worker_ids)
            for link in workers:
                assert link.worker is not None
                if link.ending:
                    continue
                status = statuses.get(link.worker.id, WorkerStatus.DELETED)
                if status is WorkerStatus.DELETED:
                    security_event(
                        log,
                        "worker_deleted",
                        "%s: worker deleted; link closed",
                        link.name,
                        reason="worker deleted",
                        peer=link.peer or "?",
                        worker_id=link.worker.id,
                    )
                    self.metrics.link_closed("worker_deleted")
                    link.end("worker_deleted", WORKER_DELETED)
                elif status is WorkerStatus.ACTIVE:
                    await self._offer_rotation(link)
                elif status is WorkerStatus.DEREGISTERING and not self.router.is_retired(link):
                    note = await self.store_call(
                        self.store.deregistration_notice, link.worker.id, self.now_ms()
                    )
                    if link.ending or self.router.is_retired(link):
                        continue  # gone, or retired by its own link meanwhile
                    security_event(
                        log,
                        "worker_deregistered",
                        "%s: %s",
                        link.name,
                        note.reason,
                        reason=note.reason,
                        peer=link.peer or "?",
                        worker_id=link.worker.id,
                    )
                    await self._retire(link, note)

    async def _purge_forever(self) -> None:
        while True:
            await trio.sleep(self.limits.purge_interval)
            await self.purge()

    async def purge(self) -> None:
        """Delete the registration keys expired more than ``registration_key_retention`` ago
        and the audit events older than ``audit_retention_days`` (on the wall clock). Runs
        when the hub starts and every ``purge_interval``; a store failure is logged."""
        cutoff = self.now_ms() - int(self.limits.registration_key_retention * 1000)
        try:
            purged = await self.store_call(self.store.purge_expired_registration_keys, cutoff)
        except StorageError as exc:
            log.error("purging expired registration keys failed: %s", exc)
        else:
            if purged:
                log.info("purged %d expired registration keys", purged)
        before = self._wall_clock() - self.limits.audit_retention_days * 86400.0
        try:
            pruned = await self.store_call(self.store.prune_audit, before)
        except StorageError as exc:
            log.error("pruning the audit trail failed: %s", exc)
        else:
            if pruned:
                log.info(
                    "pruned %d audit events older than %d days",
                    pruned,
                    self.limits.audit_retention_days,
                )

    async def _audit(
        self,
        link: _Link,
        kind: str,
        *,
        worker_id: str | None = None,
        detail: dict[str, str | int | bool | None] | None = None,
    ) -> None:
        """Record an audit event of ``link`` that no store operation records (a refusal, a
        replaced link); never raises (:meth:`SQLiteHubStore.record_audit`)."""
        await self._record(link.origin, kind, worker_id=worker_id, detail=detail)

    async def _record(
        self,
        origin: Origin,
        kind: str,
        *,
        worker_id: str | None = None,
        detail: dict[str, str | int | bool | None] | None = None,
    ) -> None:
        event = AuditEvent(
            self._wall_clock(), kind, origin.actor, worker_id, origin.address, detail or {}
        )
        await self.store_call(self.store.record_audit, event)

    # -- one link ---------------------------------------------------------------------------

    async def _on_link(self, pipe: LinkPipe, transport: str, peer: str = "") -> None:
        link = _Link(
            pipe,
            transport,
            self._written,
            peer=peer,
            max_queue_bytes=self.limits.max_link_queue_bytes,
            hub_id=self.store.hub_id,
        )
        if self.router.closing:
            link.fail("unavailable", "hub is shutting down")
        self._links.add(link)
        try:
            async with trio.open_nursery() as nursery:
                link.nursery = nursery
                nursery.start_soon(link.writer)
                if not self.router.closing:
                    with link.scope:
                        await self._serve_link(link)
                link.ending = True
                self._apply(self.router.drop(link))
                link.close_queue()
                with trio.move_on_after(FLUSH_TIMEOUT):
                    await link.writer_done.wait()
                nursery.cancel_scope.cancel()
        except Exception:  # a bug must cost one link, never the hub
            log.exception("link %s: internal error", link.name)
        finally:
            link.ending = True
            self._links.discard(link)
            self.links_closed += 1
            self._signed_out(link)
            published = link.worker is not None and self.router.worker_link(link.worker.id) is link
            self._apply(self.router.leave(link))
            if link.worker is not None and link.worker.id in self._seen:
                self._flush_soon()  # its last heartbeat is on record soon after it goes
            if published:
                assert link.worker is not None
                log.info("%s is offline", link.name)
                self.presence.changed(link.worker.owner_id)
            if (
                self.cluster is not None
                and link.worker is not None
                and self.router.worker_link(link.worker.id) is None
            ):
                self.cluster.worker_down(link.worker.id)
            if link.worker is not None and self._retiring.get(link.worker.id) is link:
                del self._retiring[link.worker.id]

    def _link_counts(self) -> tuple[int, int]:
        return len(self._links), self.links_closed

    async def _serve_link(self, link: _Link) -> None:
        first_deadline = self._clock() + self.limits.signin_timeout
        #: The links this read queued frames for, not yet flushed (``_Link.flush_ready``).
        touched: list[_Link] = []
        try:
            # One scope for the whole loop, its deadline moved as messages arrive (a scope
            # per receive costs more than relaying a small frame).
            with trio.CancelScope() as waiting:
                link.waiting = waiting
                while True:
                    if link.liveness is not None:
                        deadline = link.liveness.deadline()
                    elif link.conn.state is LinkState.START:
                        deadline = first_deadline
                    else:
                        deadline = math.inf
                    deadline = min(deadline, link.hard_deadline)
                    waiting.deadline = trio.current_time() + max(0.0, deadline - self._clock())
                    data = await link.pipe.receive()
                    link.conn.receive_data(data)
                    try:
                        while (message := link.conn.next_relayed()) is not None:
                            if link.liveness is not None:
                                link.liveness.on_received(self._clock())
                            if type(message) is RelayedData:  # the hot path: as it came
                                self._relay(link, message, touched)
                                continue
                            _flush_touched(touched)
                            # A store call may take a while: the peer is not late meanwhile
                            # (the deadline is set again before the next receive).
                            waiting.deadline = math.inf
                            if await self._dispatch(link, message):
                                return
                    finally:
                        # what this read queued goes out before the reader waits again
                        _flush_touched(touched)
            if waiting.cancelled_caught:
                self._timed_out(link)
        except LinkClosed:
            return
        except LinkProtocolError as exc:
            log.info("%s: %s", link.name, exc)
            self.metrics.frame_rejected(exc.code)
            link.fail(exc.code, str(exc))
        except LeapcoreError as exc:  # the store failed, or a bug: this link alone ends
            log.error("%s: %s: %s", link.name, type(exc).__name__, exc)
            link.fail(
                "internal",
                "hub storage error" if isinstance(exc, StorageError) else "internal error",
            )

    def _relay(self, link: _Link, message: RelayedData, touched: list[_Link]) -> None:
        """Carry out the router's answer to a data frame; a frame forwarded is queued
        without waking the receiver's writer: the reader flushes ``touched`` after its read."""
        for action in self.router.data(link, message):
            # (a frame to another hub of the cluster is its link's to forward)
            if isinstance(action, Forward) and type(receiver := action.link) is _Link:
                receiver.forward(action, wake=False)
                if receiver not in touched:
                    touched.append(receiver)
            else:
                self._act(action)

    def _timed_out(self, link: _Link) -> None:
        if self._clock() >= link.hard_deadline:
            self.metrics.link_closed("deregistered")
            log.info(
                "%s did not acknowledge its deregistration within %gs; link closed",
                link.name,
                self.limits.deregister_grace,
            )
        elif link.liveness is None:
            pass  # no first frame in time
        elif link.user is not None:
            timeout = link.liveness.timeout
            log.info("%s: idle for %gs; link closed", link.name, timeout)
            self.metrics.link_closed("idle")
            link.fail("unavailable", f"the link was idle for {timeout:g} s and is closed")
        else:
            log.info(
                "%s: idle timeout: no messages from worker in %gs",
                link.name,
                link.liveness.timeout,
            )

    async def _dispatch(self, link: _Link, message: LinkMessage | RelayedData) -> bool:
        """Handle one message (relayed data is forwarded by the reader itself); True when
        the link should end."""
        assert not isinstance(message, RelayedData)
        if isinstance(message, Heartbeat):
            return await self._heartbeat(link, message)
        if isinstance(message, HubRequest):
            await self._hub_request(link, message)
            return False
        if isinstance(message, DeregisterAck):
            return await self._deregister_ack(link, message)
        if isinstance(message, RotateTokenAck):
            return await self._rotate_ack(link, message)
        if isinstance(message, Register):
            return await self._register(link, message)
        if isinstance(message, Connect):
            return await self._connect(link, message)
        if isinstance(message, ClientHello):
            return await self._client_hello(link, message)
        if isinstance(message, OpenChannel):
            actions = self.router.open_channel(link, message, self._clock())
            if len(actions) == 1 and isinstance(actions[0], Lookup):
                lookup = actions[0]
                if self.cluster is not None and self.cluster.routes(lookup):
                    actions = []  # the cluster looks the worker up and answers the router
                else:  # the rest of the checks need the store's word on the worker
                    actions = self.router.found(lookup, await self._target(message.worker_id))
            self._apply(actions)
            self._reset_open_timer()
            return False
        if isinstance(message, (ChannelAccept, ChannelReject, ChannelClose)):
            self._apply(self.router.receive(link, message, self._clock()))
            return False
        if isinstance(message, ErrorMessage):
            log.info("%s closed the link: %s: %s", link.name, message.code, message.message)
            return True
        return False

    # -- registration -----------------------------------------------------------------------

    async def _register(self, link: _Link, message: Register) -> bool:
        try:
            worker, token = await self.store_call(
                self.store.register_worker,
                message.registration_key,
                name=message.name,
                version=message.version,
                labels=dict(message.labels),
                now_ms=self.now_ms(),
                origin=link.origin,
            )
        except StorageError:
            self.metrics.registration("error")
            raise
        except Unauthenticated as exc:
            self.metrics.registration("rejected")
            await self._sign_in_failed(link, "registration_key", str(exc))
            link.fail("unauthenticated", str(exc))
            return True
        except QuotaExceeded as exc:
            self.metrics.registration("quota")
            link.fail("quota_exceeded", str(exc))
            return True
        except AlreadyExists as exc:
            self.metrics.registration("rejected")
            link.fail("already_exists", str(exc))
            return True
        except LocalError as exc:
            self.metrics.registration("rejected")
            link.fail("invalid_argument", str(exc))
            return True
        self.metrics.registration("ok")
        log.info("worker %s registered for %s", worker.id, worker.owner_name)
        self.presence.changed(worker.owner_id)
        link.enqueue(Registered(worker.id, token, self.store.hub_id))
        return True

    # -- worker links -------------------------------------------------------------------------

    async def _connect(self, link: _Link, message: Connect) -> bool:
        if not message.auth_token:
            await self._sign_in_failed(link, "worker_token", "auth_token required")
            link.fail("unauthenticated", "auth_token required")
            return True
        try:
            worker = await self.store_call(
                self.store.authenticate_worker,
                message.auth_token,
                self.now_ms(),
                origin=link.origin,
            )
        except TokenExpired as exc:
            await self._sign_in_failed(link, "worker_token_expired", str(exc))
            link.fail("token_expired", str(exc))
            return True
        except WorkerDeleted:
            await self._sign_in_failed(link, "worker_token", "token of a deleted worker")
            link.fail("worker_deleted", WORKER_DELETED)
            return True
        except Unauthenticated:
            await self._sign_in_failed(link, "worker_token", "invalid auth token")
            link.fail("unauthenticated", "invalid auth token")
            return True
        if worker.status is WorkerStatus.DEREGISTERING:
            return await self._connect_deregistering(link, worker)
        if self._over_worker_cap(link, worker):
            return True
        try:
            worker = await self._update_profile(worker, message)
        except AlreadyExists as exc:
            log.info("worker %s from %s: %s", worker.id, link.peer or "?", exc)
            link.fail("already_exists", str(exc))
            return True
        # Checked again with nothing awaited from here to the publication: other links
        # of the owner may have come online while the profile was written.
        if self._over_worker_cap(link, worker) or not self._admit_address(link):
            return True
        link.worker = worker
        link.liveness = Liveness(self._clock())
        link.enqueue(
            WorkerGreeting(worker.id, worker.owner_id, worker.owner_name, self.store.hub_id)
        )
        self.router.join(link, worker.owner_id, worker.id)
        older = self.router.worker_link(worker.id)
        if older is not None:
            log.info("worker %s connected again; closing its older link", worker.id)
        self._apply(self.router.publish(link))
        if self.cluster is not None:
            self.cluster.worker_up(worker.id, worker.owner_id)
        log.info("%s is online (%s)", link.name, link.transport)
        self.presence.changed(worker.owner_id)
        if older is not None:
            await self._audit(
                link,
                "worker_replaced",
                worker_id=worker.id,
                detail={"previous_address": older.peer or None},
            )
        await self._offer_rotation(link)
        return False

    def _over_worker_cap(self, link: _Link, worker: Worker) -> bool:
        """The owner has ``max_workers_per_user`` workers online already (not counting this
        one's older link, which it replaces): the link is refused."""
        cap = self.store.max_workers_per_user
        owned = self.router.online_of(worker.owner_id)
        live = len(owned) - (worker.id in owned)  # a reconnect replaces its own slot
        if cap and live >= cap:
            link.fail(
                "quota_exceeded",
                f"this account already has {live} workers connected, which is the configured "
                "maximum (max_workers_per_user)",
            )
            return True
        return False

    async def _offer_rotation(self, link: _Link) -> None:
        """Offer a published worker link a new token (``rotate_token``) when its token
        expires within ``token_rotation_window_days`` and no offer is under way on the link.
        The new token is stored as the worker's pending one: both authenticate until the
        worker acknowledges it (or connects with it). A store failure is logged and the offer
        made at a later check."""
        worker = link.worker
        if worker is None or link.rotation is not None or link.offering or link.ending:
            return
        if worker.token_expires_at is None or self.router.worker_link(worker.id) is not link:
            return
        now = self.now_ms()
        if worker.token_expires_at - now > self.limits.token_rotation_window_days * DAY_MS:
            return
        link.offering = True  # one offer at a time (the reader and the checks both offer)
        try:
            token, expires_at = await self.store_call(self.store.offer_worker_token, worker.id, now)
        except LeapcoreError as exc:  # deregistered meanwhile, or the store failed: later
            log.warning("%s: no new token offered: %s", link.name, exc)
            return
        finally:
            link.offering = False
        request_id = self.router.next_request_id()
        if link.enqueue(RotateToken(request_id, token, expires_at)):
            link.rotation = (request_id, token)
            log.info(
                "%s: token expires %s; offered a new one (expires %s)",
                link.name,
                utc_text(worker.token_expires_at),
                utc_text(expires_at),
            )

    async def _rotate_ack(self, link: _Link, message: RotateTokenAck) -> bool:
        """The worker saved its new token: it becomes the worker's token, the old one is
        retired (audited ``worker_token_rotated``)."""
        rotation = link.rotation
        if rotation is None or rotation[0] != message.request_id or link.worker is None:
            raise LinkProtocolError(f"rotate_token_ack for unknown request {message.request_id}")
        link.rotation = None
        worker_id = link.worker.id
        if await self.store_call(
            self.store.promote_worker_token,
            worker_id,
            rotation[1],
            self.now_ms(),
            origin=link.origin,
        ):
            log.info("%s saved its new token; the old one is retired", link.name)
        link.worker = await self.store_call(self.store.get_worker, worker_id)
        return False

    async def _update_profile(self, worker: Worker, message: Connect) -> Worker:
        """Record the name, labels, capabilities, ``os`` and ``arch`` a ``connect`` carries
        (each may be absent: it stays as it was); :class:`AlreadyExists` when another of the
        owner's live workers has that name, and nothing changes. A profile that did not
        change is not written (nor checked: two workers named alike before names were
        unique keep connecting)."""
        name = worker.name if message.name is None else message.name
        labels = dict(worker.labels) if message.labels is None else dict(message.labels)
        caps = worker.capabilities
        if message.capabilities is not None:
            caps = tuple(sorted(set(message.capabilities)))
        os_name = worker.os if message.os is None else message.os
        arch = worker.arch if message.arch is None else message.arch
        if (name, labels, caps, os_name, arch) == (
            worker.name,
            dict(worker.labels),
            worker.capabilities,
            worker.os,
            worker.arch,
        ):
            return worker
        change = self.store.update_worker_profile
        updated = await self.store_call(
            change, worker.id, name=name, labels=labels, capabilities=caps, os=os_name, arch=arch
        )
        if name != worker.name:
            log.info("worker %s is now called %r (was %r)", worker.id, name, worker.name)
        return updated

    async def _connect_deregistering(self, link: _Link, worker: Worker) -> bool:
        """A DEREGISTERING worker signs in: its connect is answered with its ``deregister``
        instead of a greeting (it never learns its owner again), and it is never published,
        counted or routed to; it may only heartbeat and acknowledge."""
        note = await self.store_call(self.store.deregistration_notice, worker.id, self.now_ms())
        if not self._admit_address(link):
            return True
        link.worker = worker
        link.liveness = Liveness(self._clock())
        self.router.join(link, worker.owner_id, worker.id)
        old = self.router.worker_link(worker.id)
        if old is not None:  # published before its deregistration was seen: it goes too
            self._apply(self.router.retire(old))
            old.scope.cancel()
        older = self._retiring.get(worker.id)
        if older is not None:  # one retiring link per worker: the newest replaces it
            older.scope.cancel()
        self._retiring[worker.id] = link
        log.info("%s connected while deregistering; sending its deregister", link.name)
        await self._retire(link, note)
        return False

    async def _retire(self, link: _Link, note: Notification) -> bool:
        """A deregistering worker's link stops serving at once: out of the registry, its
        channels and opens closed, every request and open refused; it is sent ``note``
        (once) and ends after its ack, or after ``deregister_grace``. True if sent."""
        assert link.worker is not None
        if self.router.worker_link(link.worker.id) is link:
            log.info("%s is deregistering; it no longer serves", link.name)
            self.presence.changed(link.worker.owner_id)
            if self.cluster is not None:
                self.cluster.worker_down(link.worker.id)
        self._apply(self.router.retire(link))
        link.hard_deadline = min(link.hard_deadline, self._clock() + self.limits.deregister_grace)
        if link.waiting is not None:  # its reader may be waiting on a later deadline
            link.waiting.deadline = min(
                link.waiting.deadline,
                trio.current_time() + max(0.0, link.hard_deadline - self._clock()),
            )
        if link.deregs or link.dereg_sending:
            return True
        return await self._send_deregister(link, note)

    async def _send_deregister(self, link: _Link, note: Notification) -> bool:
        if note.kind != "deregister":
            return False
        request_id = self.router.next_request_id()
        link.dereg_sending = True  # once per link, whoever retires it meanwhile
        try:
            await self.store_call(self.store.notification_attempted, note.id)
        except BaseException:
            link.dereg_sending = False
            raise
        if not link.enqueue(Deregister(request_id, note.reason)):
            return False
        link.deregs[request_id] = note.id
        return True

    async def _deregister_ack(self, link: _Link, message: DeregisterAck) -> bool:
        note_id = link.deregs.pop(message.request_id, None)
        if note_id is None:
            raise LinkProtocolError(f"deregister_ack for unknown request {message.request_id}")
        await self.store_call(self.store.notification_delivered, note_id, self.now_ms())
        self.metrics.link_closed("deregistered")
        log.info("%s acknowledged its deregistration; it is deleted", link.name)
        return True

    async def _heartbeat(self, link: _Link, beat: Heartbeat) -> bool:
        if link.worker is not None:
            if beat.encryption_mode is not None:
                assert beat.public_key is not None
                assert beat.mlkem_public_key is not None
                assert beat.slhdsa_public_key is not None
                keys = PublicKeyBundle(
                    beat.public_key, beat.mlkem_public_key, beat.slhdsa_public_key
                )
                link.mode = parse_encryption_mode(beat.encryption_mode)
                await self.store_call(
                    self.store.record_heartbeat,
                    link.worker.id,
                    self.now_ms(),
                    keys=keys,
                    mode=link.mode,
                )
                self.presence.changed(link.worker.owner_id)
            else:
                self._seen[link.worker.id] = self.now_ms()  # written in a batch
        self._ack(link, beat.seq)
        return False

    def _ack(self, link: _Link, seq: int) -> None:
        """Queue ``heartbeat_ack`` ``seq``: its bytes are the same on every link, so they are
        encoded once per sequence number and state (every idle worker's heartbeat comes here;
        the state machine still checks the first one in each state)."""
        key = (link.conn.state, seq)
        data = self._acks.get(key)
        if data is None:
            try:
                data = link.conn.send(HeartbeatAck(seq))
            except LocalError:
                return
            if link.conn.state is not key[0]:  # (an ack never moves a link's state)
                link.put(data)
                return
            if len(self._acks) >= ACK_CACHE:
                self._acks.clear()
            self._acks[key] = data
        link.put(data)

    # -- client links -------------------------------------------------------------------------

    async def _client_hello(self, link: _Link, message: ClientHello) -> bool:
        try:
            user, token_id, expires_at = await self.store_call(
                self.store.authenticate_client, message.api_token, self.now_ms()
            )
        except TokenExpired as exc:
            await self._sign_in_failed(link, "api_token_expired", str(exc))
            link.fail("token_expired", str(exc))
            return True
        except Unauthenticated as exc:
            await self._sign_in_failed(link, "api_token", str(exc))
            link.fail("unauthenticated", str(exc))
            return True
        count = len(self._user_links.get(user.id, ()))
        if count >= self.limits.max_links_per_user:
            log.warning(
                "client %s from %s: sign-in refused: %d client links already (max_links_per_user)",
                user.name,
                link.peer or "?",
                count,
            )
            self.metrics.sign_in_refused("links_per_user")
            link.fail(
                "quota_exceeded",
                f"this account already has {count} client links to the hub, which is the "
                "configured maximum (max_links_per_user)",
            )
            return True
        if not self._admit_address(link):
            return True
        link.user = user
        link.token_id = token_id
        self.router.join(link, user.id)
        self._user_links.setdefault(user.id, set()).add(link)
        link.liveness = Liveness(self._clock(), self.limits.client_idle_timeout)
        link.enqueue(ClientGreeting(user.id, user.name, self.store.hub_id, expires_at))
        return False

    def _admit_address(self, link: _Link) -> bool:
        """Count a link that signs in against its address; False (refused) when full."""
        address = _address(link.peer)
        if address is None:
            return True
        links = self._address_links.get(address, set())
        if len(links) >= self.limits.max_links_per_address:
            log.warning(
                "%s: sign-in refused: %d links from %s already (max_links_per_address)",
                link.name,
                len(links),
                address,
            )
            self.metrics.sign_in_refused("links_per_address")
            link.fail(
                "quota_exceeded",
                f"{len(links)} links from this address are signed in already, which is the "
                "configured maximum (max_links_per_address)",
            )
            return False
        self._address_links[address] = links
        links.add(link)
        link.address = address
        return True

    def _signed_out(self, link: _Link) -> None:
        if link.address is not None:
            links = self._address_links.get(link.address)
            if links is not None:
                links.discard(link)
                if not links:
                    del self._address_links[link.address]
        if link.user is not None:
            links = self._user_links.get(link.user.id)
            if links is not None:
                links.discard(link)
                if not links:
                    del self._user_links[link.user.id]

    async def _sign_in_failed(self, link: _Link, kind: str, reason: str) -> None:
        """Log a refused credential (never the credential), rate-limited per kind."""
        await self._refused(link.origin, link.peer, link.transport, kind, reason)

    async def web_sign_in_failed(self, peer: str, reason: str, *, expired: bool = False) -> None:
        """The web page (:mod:`leapcore.hub.web`) refused an API token: logged, counted and
        audited (``token_refused``, or ``token_expired``, credential ``api_token``) like a
        link's bad token."""
        kind = "api_token_expired" if expired else "api_token"
        await self._refused(Origin(ANONYMOUS, peer or None), peer, "web", kind, reason)

    async def _refused(
        self, origin: Origin, peer: str, transport: str, kind: str, reason: str
    ) -> None:
        self.metrics.sign_in_refused(kind)
        allowed, suppressed = self._signin_log.allow(kind, self._clock())
        if suppressed:
            await self._log_suppressed(kind, suppressed)
        if allowed:
            # The audit trail takes what the log takes (rate-limited per kind), so that a
            # flood of bad credentials cannot fill the database; the rest are counted.
            audit_kind, detail = _SIGN_IN_AUDIT[kind]
            await self._record(origin, audit_kind, detail={**detail, "reason": reason})
            security_event(
                log,
                _SIGN_IN_EVENTS[kind],
                "sign-in refused from %s (%s): %s: %s",
                peer or "?",
                transport,
                _SIGN_IN_KINDS[kind],
                reason,
                reason=reason,
                peer=peer or "?",
                transport=transport,
            )

    async def _log_suppressed(self, kind: str, count: int) -> None:
        audit_kind, detail = _SIGN_IN_AUDIT[kind]
        event = AuditEvent(
            self._wall_clock(),
            audit_kind,
            ANONYMOUS,
            detail={**detail, "reason": "rate limited", "suppressed": count},
        )
        await self.store_call(self.store.record_audit, event)
        security_event(
            log,
            "sign_ins_suppressed",
            "%d more refused sign-ins (%s) suppressed in the last %gs",
            count,
            _SIGN_IN_KINDS[kind],
            self._signin_log.window,
            reason="log rate limit",
            kind=kind,
            count=count,
        )

    async def _hub_request(self, link: _Link, request: HubRequest) -> None:
        if link.worker is not None:
            # A worker asks as its owner, and only about its siblings.
            denied = None
            if self.router.is_retired(link):
                denied = "this worker is deregistering"
            elif request.method not in WORKER_METHODS:
                denied = f"method {request.method!r} is not available to workers"
            if denied is not None:
                link.enqueue(
                    HubResponse(
                        request.request_id, error_code="permission_denied", error_message=denied
                    )
                )
                return
            user = User(link.worker.owner_id, link.worker.owner_name, 0)
        else:
            assert link.user is not None
            user = link.user
        try:
            result = await call(self, user, request.method, request.params, link.origin)
        except RequestError as exc:
            log.info("%s: %s failed: %s", link.name, request.method, exc.message)
            link.enqueue(
                HubResponse(
                    request.request_id, error_code=exc.error_code, error_message=exc.message
                )
            )
            return
        try:
            data = link.conn.send(HubResponse(request.request_id, result=result))
        except LocalError as exc:  # too large for one record: the caller gets an answer
            log.warning("%s: %s answer not sent: %s", link.name, request.method, exc)
            link.enqueue(
                HubResponse(
                    request.request_id,
                    error_code="resource_exhausted",
                    error_message=f"the answer to {request.method} is too large to send",
                )
            )
            return
        link.put(data)
        self._log_request_event(link, user, request.method, result)
        if request.method == "worker.deregister":
            self.presence.changed(user.id)

    def _log_request_event(
        self, link: _Link, user: User, method: str, result: dict[str, Any]
    ) -> None:
        """The security event of a request that succeeded, if it is one (once, here)."""
        if method == "worker.deregister":
            security_event(
                log,
                "worker_deregistered",
                "%s: deregistered worker %s",
                link.name,
                result["worker_id"],
                reason="worker deregistered by owner",
                peer=link.peer or "?",
                user=user.name,
                worker_id=result["worker_id"],
            )
        elif method == "regkey.revoke":
            security_event(
                log,
                "registration_key_revoked",
                "%s: revoked a registration key",
                link.name,
                reason="registration key revoked by owner",
                peer=link.peer or "?",
                user=user.name,
            )

    # -- carrying out the router's answers ---------------------------------------------------

    def _apply(self, actions: Iterable[Action[_Link]]) -> None:
        """Carry out what the router answered, in order, at once."""
        for action in actions:
            self._act(action)

    def _act(self, action: Action[_Link]) -> None:
        if isinstance(action, Forward):
            action.link.forward(action)
        elif isinstance(action, Send):
            action.link.enqueue(action.message)
        elif isinstance(action, Close):
            action.link.enqueue_close(action.message)
        elif isinstance(action, Log):
            log.log(action.level, action.text, *action.args)
        elif isinstance(action, OpenOutcome):
            self.metrics.channel_open(action.result)
        elif isinstance(action, Offer):
            self._apply(self.router.offered(action, action.link.enqueue(action.message)))
        elif isinstance(action, Lookup):  # (an open from another hub: a link's is awaited)
            if self.cluster is None or not self.cluster.routes(action):
                self._look_up_soon(action)
        elif isinstance(action, ChannelGone):
            for end in action.ends:
                end.flows.pop(action.channel_id, None)
        elif isinstance(action, EndLink):
            action.link.scope.cancel()
        elif isinstance(action, FrameDropped):
            self.metrics.frame_dropped()
        elif isinstance(action, FrameRejected):
            self.metrics.frame_rejected(action.reason)

    def _look_up_soon(self, lookup: Lookup[_Link]) -> None:
        """Finish an open in the background once the store answers (an open that came
        without a reader to wait for it: from another hub of the cluster)."""
        if self._nursery is None:
            self._apply(self.router.found(lookup, None))
            return
        self._nursery.start_soon(self._look_up, lookup)

    async def _look_up(self, lookup: Lookup[_Link]) -> None:
        try:
            target = await self._target(lookup.message.worker_id)
        except LeapcoreError as exc:  # the store failed: the open is refused, the hub goes on
            log.error("looking worker %s up failed: %s", lookup.message.worker_id, exc)
            target = None
        try:
            actions = self.router.found(lookup, target)
        except LocalError:  # the opener left meanwhile
            return
        self._apply(actions)
        self._reset_open_timer()

    async def _target(self, worker_id: str) -> Target | None:
        """What the store says about the worker an open names (None: no such worker)."""
        try:
            worker: Worker | None = await self.store_call(self.store.get_worker, worker_id)
        except NotFound:
            return None
        if worker is None:
            return None
        return Target(worker.id, worker.owner_id, worker.status is WorkerStatus.ACTIVE)

    def _written(self, flow: _Flow, cost: int) -> None:
        """A destination's writer handed one of ``flow``'s frames to its transport."""
        if cost:
            self.metrics.relayed(_DIRECTION_LABELS[flow.direction], cost)
        credit = self.router.written(flow.channel_id, flow.direction, cost)
        if credit is not None:
            credit.link.enqueue(credit.message)

    # -- metrics -------------------------------------------------------------------------------

    def _metrics_route(self) -> HttpResponse:
        links = list(self._links)
        snapshot = Snapshot(
            workers_online=self.router.worker_count,
            worker_links=sum(1 for link in links if link.worker is not None),
            client_links=sum(1 for link in links if link.user is not None),
            channels=self.router.channel_count,
        )
        return 200, CONTENT_TYPE, self.metrics.render(snapshot)


def _flush_touched(touched: list[_Link]) -> None:
    for receiver in touched:
        receiver.flush_ready()
    touched.clear()


def _address(peer: str) -> str | None:
    """The IP address in a peer's ``ip:port`` (``[v6]:port`` too); None for Unix-socket
    (``unix``), non-socket (``local``) and unknown peers, which are not counted per address."""
    if peer in ("", "unix", "local"):
        return None
    host, sep, _port = peer.rpartition(":")
    if not sep:
        return peer
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def url_of(scheme: str, bound: tuple[str, int]) -> str:
    """``scheme://host:port`` of a bound address (``[host]`` for IPv6)."""
    host, port = bound[0], bound[1]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _healthz() -> HttpResponse:
    return 200, "text/plain; charset=utf-8", b"ok\n"
