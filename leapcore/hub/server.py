"""The hub server (trio): registration, worker links, client links and graceful shutdown.

One :class:`Hub` owns a :class:`~leapcore.net.listen.LinkServer` (links plus
``/healthz``), the :class:`~leapcore.store.hubstore.SQLiteHubStore` and the live
registry of worker links. The first frame of a link says what it is:

* ``register``: consume a registration key, answer ``registered`` (or an
  ``error``) and end the link;
* ``connect``: authenticate the worker's token, send ``worker_greeting``
  first, publish the link (a newer link for the same worker replaces and
  closes the older one), record heartbeats; 10 s without any inbound message
  ends the link;
* ``client_hello``: authenticate the user, answer ``client_greeting``, then
  serve ``hub_request`` calls (:mod:`leapcore.hub.rpc`) and channel opens; a
  client link silent for ``client_idle_timeout`` gets ``error`` ``unavailable``.

**Budgets** (:class:`~leapcore.proto.hub_limits.HubLimits`, ``Hub(limits=...)``; defaults and
effects in :mod:`leapcore.proto.hub_limits`): client idle time, signed-in links per user and per
IP address, channels per link, per user and per worker, pending opens per worker, control
bytes queued per link, live registration keys per user (expired ones are purged at start
and every ``purge_interval``).

**Revocation at once.** Every ``revocation_check_interval`` the hub asks its store (in one
batched query each) which of its links' API tokens are still live and what its workers'
statuses are, because the admin CLI or another hub may change them: a revoked token's (or
deleted user's) links and a deleted worker's link get ``error`` ``unauthenticated`` and
close. A DEREGISTERING worker's link is *retired*: when it connects, its ``connect`` is
answered with its ``deregister`` instead of a greeting (link state ``worker-retiring``: it
may only heartbeat and acknowledge), every time whatever the notification's attempt count;
a worker deregistered while online is sent it on its live link, whose requests and opens
are then refused ``permission_denied``. A retired link is never published, counted or
routed to (a newer one for the same worker replaces it) and ends after its
``deregister_ack`` or ``deregister_grace``.

**Logs.** Link log lines name the peer (``ip:port``). Failed sign-ins (bad API token, bad
worker token, refused registration key) are logged at WARNING with the peer's address and
never the credential, rate-limited per kind (:class:`~leapcore.proto.ratelimit.LogRateLimiter`).

**Channels.** A client (or a worker, towards a sibling worker of the same
owner) sends ``open_channel``; the hub checks ownership, assigns a hub-wide
``channel_id`` and forwards ``channel_request`` to the worker's link, then
relays ``channel_accept`` / ``channel_reject`` as ``channel_opened`` /
``channel_refused`` (or ``timeout`` after :data:`OPEN_TIMEOUT`). A live
channel relays data frames both ways after the relay rules and the credit
rule (:mod:`leapcore.proto.relay`); a violation closes that channel alone. When a
link ends, its channels are closed towards their other ends.

``GET /metrics`` serves Prometheus metrics (:mod:`leapcore.hub.metrics`).

Each link has one writer task and one reader that never waits for the writer:
everything the reader answers or relays is queued without blocking. Control
records go to a queue bounded by frame count (:data:`SEND_QUEUE`) and by bytes
(``max_link_queue_bytes``; a peer that lets it fill up is disconnected) and are
written first; data frames wait in one queue per channel, bounded by that channel's credit
(:data:`~leapcore.proto.link_codec.CHANNEL_CREDIT` bytes per direction), and the
writer takes them round-robin across channels. A slow reader thus stalls
only the senders of its own channels. A bad or out-of-order frame closes only
its own link, after an ``error`` record.

Store calls are small synchronous SQLite statements made on the event loop
thread: ``SQLiteHubStore`` holds one connection that may only be used from the
thread that opened it, so they are not moved to worker threads.
"""

from __future__ import annotations

import itertools
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import trio

from ..crypto.keys import PublicKeyBundle
from ..crypto.mode import EncryptionMode, parse_encryption_mode
from ..errors import (
    LeapcoreError,
    LinkClosed,
    LinkProtocolError,
    LocalError,
    NotFound,
    QuotaExceeded,
    RelayViolation,
    StorageError,
    Unauthenticated,
)
from ..net.listen import HttpResponse, LinkServer
from ..net.pipe import WRITE_BATCH, LinkPipe
from ..proto.chunking import DEFAULT_MAX_MESSAGE_SIZE, MAX_MAX_MESSAGE_SIZE, MIN_MAX_MESSAGE_SIZE
from ..proto.heartbeat import Liveness
from ..proto.hub_limits import MAX_LINK_QUEUE_BYTES, HubLimits
from ..proto.link_codec import (
    ChannelAccept,
    ChannelClose,
    ChannelCredit,
    ChannelData,
    ChannelOpened,
    ChannelRefused,
    ChannelReject,
    ChannelRequest,
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
    WorkerGreeting,
    encode,
)
from ..proto.link_state import LinkConnection, LinkRole, LinkState
from ..proto.ratelimit import LogRateLimiter
from ..proto.relay import ChannelRelay, RelayDirection
from ..store.hubstore import Notification, SQLiteHubStore, User, Worker, WorkerStatus
from .metrics import CONTENT_TYPE, HubMetrics, Snapshot
from .rpc import WORKER_METHODS, RequestError, call

__all__ = [
    "GO_AWAY_DELAY",
    "HUB_MAX_MESSAGE_SIZE",
    "MAX_PENDING_OPENS",
    "OPEN_TIMEOUT",
    "SEND_QUEUE",
    "SHUTDOWN_BUDGET",
    "Hub",
]

log = logging.getLogger(__name__)

#: Control records queued per link before the peer counts as not reading (and is
#: disconnected). Data frames are bounded by channel credit instead.
SEND_QUEUE: Final = 256
#: The largest channel message size the hub forwards (``Hub(max_message_size=...)``).
HUB_MAX_MESSAGE_SIZE: Final = DEFAULT_MAX_MESSAGE_SIZE
#: Seconds a worker has to answer a ``channel_request``.
OPEN_TIMEOUT: Final = 30.0
#: Channel opens one link may have waiting for their worker at once.
MAX_PENDING_OPENS: Final = 64
#: Seconds to flush a closing link's queued frames.
FLUSH_TIMEOUT: Final = 2.0
#: What workers are told to wait before reconnecting when the hub stops.
GO_AWAY_DELAY: Final = 10
#: Seconds the go-away broadcast may take, in all.
SHUTDOWN_BUDGET: Final = 2.0
#: The budgets a hub gets when none are given.
DEFAULT_LIMITS: Final = HubLimits()


#: Failed sign-in kinds (log lines are rate-limited per kind) and how they are named.
_SIGN_IN_KINDS: Final = {
    "api_token": "bad API token",
    "worker_token": "bad worker token",
    "registration_key": "refused registration key",
}

_TO_WORKER: Final = RelayDirection.TO_WORKER
_TO_CLIENT: Final = RelayDirection.TO_CLIENT
_DIRECTION_LABELS: Final = {_TO_WORKER: "to_worker", _TO_CLIENT: "to_client"}
#: Why a link's channels close towards their other ends: the ``channel_close`` code and text.
_END_MESSAGES: Final = {
    "link_lost": ("link_lost", "the other end's link to the hub was lost"),
    "replaced": ("replaced", "the worker connected again; its older link was closed"),
    "shutdown": ("shutdown", "hub is shutting down"),
    "deregistered": ("closed", "the worker was deregistered"),
}


class _Flow:
    """One channel's frames waiting for one destination link's writer (one direction)."""

    __slots__ = ("channel", "direction", "frames", "queued", "scheduled")

    def __init__(self, channel: _Channel, direction: RelayDirection) -> None:
        self.channel = channel
        self.direction = direction
        #: (encoded frame, credit cost); a trailing ``channel_close`` costs 0.
        self.frames: deque[tuple[bytes, int]] = deque()
        #: Credit-counted bytes waiting here or being written (at most CHANNEL_CREDIT).
        self.queued = 0
        #: Whether the flow is in its destination's round-robin ring.
        self.scheduled = False


class _Channel:
    """A live channel: its two links, its relay state and one flow each way."""

    def __init__(
        self, channel_id: int, opener: _Link, worker: _Link, size: int, owner_id: str = ""
    ) -> None:
        self.id = channel_id
        #: The user whose links opened it (``max_channels_per_user``).
        self.owner_id = owner_id
        #: The client (or sibling worker) that opened it; it sends TO_WORKER.
        self.opener = opener
        self.worker = worker
        self.relay = ChannelRelay(channel_id, size)
        self.live = True
        self.flows = {d: _Flow(self, d) for d in RelayDirection}

    def sender(self, direction: RelayDirection) -> _Link:
        return self.opener if direction is _TO_WORKER else self.worker

    def receiver(self, direction: RelayDirection) -> _Link:
        return self.worker if direction is _TO_WORKER else self.opener

    def other(self, link: _Link) -> _Link:
        return self.worker if link is self.opener else self.opener

    def toward(self, link: _Link) -> _Flow:
        """The flow whose frames go to ``link``."""
        return self.flows[_TO_WORKER if link is self.worker else _TO_CLIENT]


class _Pending:
    """An open forwarded to a worker, waiting for its accept or reject."""

    def __init__(
        self,
        request_id: int,
        channel_id: int,
        opener: _Link,
        opener_request_id: int,
        worker: _Link,
        size: int,
        owner_id: str,
    ) -> None:
        self.request_id = request_id
        self.channel_id = channel_id
        self.owner_id = owner_id
        self.opener = opener
        self.opener_request_id = opener_request_id
        self.worker = worker
        self.size = size
        self.settled = trio.Event()


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
    ) -> None:
        self.pipe = pipe
        self.transport = transport
        #: The peer's "ip:port", "unix", or "" when the server did not say.
        self.peer = peer
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
        #: A deregistering worker's link: never published, ends after its ack (or grace).
        self.retired = False
        #: When the link must end whatever it sends (a retired worker's grace), or inf.
        self.hard_deadline = math.inf
        #: The control queue overflowed (the peer is not reading): the link is ending.
        self._overflowed = False
        #: The reader's receive scope (its deadline is the link's next timeout).
        self.waiting: trio.CancelScope | None = None
        #: The serving loop is over (the link is flushing or gone): no more checks.
        self.ending = False
        #: Live channels this link opened, and (a worker) serves.
        self.opened = 0
        self.served = 0
        #: Deregister request id -> notification id, awaiting the worker's ack.
        self.deregs: dict[int, str] = {}
        #: Live channels this link is an end of, by id.
        self.channels: dict[int, _Channel] = {}
        #: Opens this link asked for, waiting for their worker (by the hub's request id).
        self.opens: dict[int, _Pending] = {}
        #: Opens waiting for this (worker) link's answer (by the hub's request id).
        self.requests: dict[int, _Pending] = {}

    def _put(self, item: bytes | trio.Event) -> bool:
        if self._closed:
            return False
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

    @property
    def name(self) -> str:
        where = f" from {self.peer}" if self.peer else ""
        if self.worker is not None:
            return f"worker {self.worker.id}{where}"
        if self.user is not None:
            return f"client {self.user.name}{where}"
        return f"link ({self.transport}){where}"

    @property
    def owner_id(self) -> str:
        """The user this signed-in link acts for (a worker acts for its owner)."""
        if self.worker is not None:
            return self.worker.owner_id
        assert self.user is not None
        return self.user.id

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

    def enqueue_data(self, flow: _Flow, message: ChannelData | ChannelClose, cost: int) -> bool:
        """Queue ``message`` behind ``flow``'s frames (bounded by the channel's credit)."""
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
        self._wake.set()
        return True

    def enqueue_close(self, flow: _Flow, message: ChannelClose) -> bool:
        """Queue a ``channel_close``: after the channel's frames still waiting, if any."""
        if flow.frames:
            return self.enqueue_data(flow, message, 0)
        return self.enqueue(message)

    def fail(self, code: str, message: str) -> None:
        """Queue an ``error`` record; the link ends after it."""
        record = ErrorMessage(code, message)
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
                    elif self._ready:
                        flow = self._ready.popleft()
                        if not flow.frames:
                            flow.scheduled = False
                            continue
                        data, cost = flow.frames.popleft()
                        if flow.frames:
                            self._ready.append(flow)  # round-robin: to the back of the ring
                        else:
                            flow.scheduled = False
                        batch.append(data)
                        size += len(data)
                        written.append((flow, cost))
                    else:
                        break
                if batch:
                    try:
                        await self.pipe.send(batch[0] if len(batch) == 1 else b"".join(batch))
                    finally:
                        for flow, cost in written:
                            flow.queued -= cost
                    if self._on_written is not None:
                        for flow, cost in written:
                            self._on_written(flow, cost)
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
        store: SQLiteHubStore | None = None,
        limits: HubLimits = DEFAULT_LIMITS,
    ) -> None:
        """``store`` replaces the store opened at ``store_path`` (solo mode passes one that
        protects its own worker); the hub closes it when :meth:`serve` returns. ``limits``
        are the budgets of :mod:`leapcore.proto.hub_limits`."""
        if not MIN_MAX_MESSAGE_SIZE <= max_message_size <= MAX_MAX_MESSAGE_SIZE:
            raise ValueError(
                f"max_message_size must be within {MIN_MAX_MESSAGE_SIZE} .. "
                f"{MAX_MAX_MESSAGE_SIZE}, got {max_message_size}"
            )
        if store is None:
            store = SQLiteHubStore(store_path, max_workers_per_user=max_workers_per_user)
        self.store = store
        #: The largest message size forwarded in a ``channel_request``.
        self.max_message_size = max_message_size
        self.limits = limits
        self._clock = clock
        self._wall_clock = wall_clock
        self._links: set[_Link] = set()
        #: Worker id -> its live link ("online" means being in here).
        self._workers: dict[str, _Link] = {}
        #: owner id -> ids of that owner's workers holding a link (for the per-user cap).
        self._online_by_owner: dict[str, set[str]] = {}
        #: Worker id -> the link it connected with while deregistering (at most one each).
        self._retiring: dict[str, _Link] = {}
        self._request_ids = itertools.count(1)
        #: Channel ids: hub-wide, from 1, never reused while the hub runs.
        self._channel_ids = itertools.count(1)
        #: Live channels by id.
        self._channels: dict[int, _Channel] = {}
        #: Opens waiting for their worker, by the hub's request id.
        self._opens: dict[int, _Pending] = {}
        #: user id -> its signed-in client links (``max_links_per_user``).
        self._user_links: dict[str, set[_Link]] = {}
        #: peer address -> its signed-in links (``max_links_per_address``).
        self._address_links: dict[str, set[_Link]] = {}
        #: owner id -> ids of the channels (live or opening) its links opened.
        self._user_channels: dict[str, set[int]] = {}
        #: Failed sign-ins are logged at most this often per kind.
        self._signin_log = LogRateLimiter()
        self._closing = False
        self._serve_scope: trio.CancelScope | None = None
        #: Prometheus metrics, in this hub's own registry (served at ``/metrics``).
        self.metrics = HubMetrics()
        self._routes = {"/healthz": _healthz, "/metrics": self._metrics_route}
        self.server = LinkServer(self._on_link, routes=self._routes, limits=limits.server_limits())

    # -- what hubrpc needs ------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def is_online(self, worker_id: str) -> bool:
        return worker_id in self._workers

    @property
    def online_workers(self) -> frozenset[str]:
        return frozenset(self._workers)

    def notify_deregister(self, note: Notification) -> bool:
        """The worker was deregistered on this hub: its live link stops working at once
        and is sent the deregister (True when it was)."""
        link = self._workers.get(note.worker_id)
        if link is None:
            return False
        return self._retire(link, note)

    @property
    def open_channels(self) -> int:
        return len(self._channels)

    def channel_buffered(self, channel_id: int) -> int:
        """Credit-counted bytes the hub holds for a live channel, both directions."""
        channel = self._channels.get(channel_id)
        if channel is None:
            return 0
        return sum(flow.queued for flow in channel.flows.values())

    # -- serving --------------------------------------------------------------------------

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on TCP (and a Unix socket); ``task_status.started`` gets the TCP (host, port).

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
                    self._purge_registration_keys()
                    nursery.start_soon(self._check_revocations_forever)
                    nursery.start_soon(self._purge_forever)
                    bound = await nursery.start(self.server.serve_tcp, host, port)
                    if unix_path is not None:
                        await nursery.start(self.server.serve_unix, unix_path)
                    task_status.started(bound)
        finally:
            self.store.close()

    async def shutdown(self) -> None:
        """Close every channel, tell every peer to come back in 10 s (2 s budget in all),
        then close every link."""
        self._closing = True
        self._close_everything()
        links = list(self._links)
        with trio.move_on_after(SHUTDOWN_BUDGET):
            async with trio.open_nursery() as nursery:
                for link in links:
                    if link.enqueue(GoAway(GO_AWAY_DELAY, "hub is shutting down")):
                        nursery.start_soon(link.flushed)
        for link in links:
            link.scope.cancel()
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    # -- periodic checks ---------------------------------------------------------------------

    async def _check_revocations_forever(self) -> None:
        while True:
            await trio.sleep(self.limits.revocation_check_interval)
            try:
                self.check_revocations()
            except LeapcoreError as exc:  # the store failed: try again next time
                log.error("revocation check failed: %s: %s", type(exc).__name__, exc)
            for kind, count in self._signin_log.expired(self._clock()):
                self._log_suppressed(kind, count)

    def check_revocations(self) -> None:
        """End the links whose credentials no longer hold, asking the store (the admin CLI
        or another hub may have changed them): a client whose API token was revoked (or
        whose user was deleted) gets ``error`` ``unauthenticated``; a worker that was
        deleted likewise; a worker being deregistered stops serving and is sent its
        deregister (:meth:`_retire`). Runs every ``revocation_check_interval``."""
        links = [link for link in self._links if not link.ending]
        clients = [link for link in links if link.token_id is not None]
        if clients:
            live = self.store.live_token_ids({link.token_id for link in clients if link.token_id})
            for link in clients:
                if link.token_id not in live:
                    log.warning("%s: API token revoked (or user deleted); link closed", link.name)
                    self.metrics.link_closed("token_revoked")
                    link.end("unauthenticated", "the API token was revoked")
        workers = [link for link in links if link.worker is not None]
        if workers:
            statuses = self.store.worker_statuses({w.worker.id for w in workers if w.worker})
            for link in workers:
                assert link.worker is not None
                status = statuses.get(link.worker.id, WorkerStatus.DELETED)
                if status is WorkerStatus.DELETED:
                    log.warning("%s: worker deleted; link closed", link.name)
                    self.metrics.link_closed("worker_deleted")
                    link.end("unauthenticated", "invalid auth token")
                elif status is WorkerStatus.DEREGISTERING and not link.retired:
                    note = self.store.deregistration_notice(link.worker.id, self.now_ms())
                    self._retire(link, note)

    async def _purge_forever(self) -> None:
        while True:
            await trio.sleep(self.limits.purge_interval)
            self._purge_registration_keys()

    def _purge_registration_keys(self) -> None:
        """Delete the registration keys expired more than ``registration_key_retention`` ago."""
        cutoff = self.now_ms() - int(self.limits.registration_key_retention * 1000)
        try:
            purged = self.store.purge_expired_registration_keys(cutoff)
        except StorageError as exc:
            log.error("purging expired registration keys failed: %s", exc)
            return
        if purged:
            log.info("purged %d expired registration keys", purged)

    # -- one link ---------------------------------------------------------------------------

    async def _on_link(self, pipe: LinkPipe, transport: str, peer: str = "") -> None:
        link = _Link(
            pipe,
            transport,
            self._written,
            peer=peer,
            max_queue_bytes=self.limits.max_link_queue_bytes,
        )
        if self._closing:
            link.fail("unavailable", "hub is shutting down")
        self._links.add(link)
        try:
            async with trio.open_nursery() as nursery:
                link.nursery = nursery
                nursery.start_soon(link.writer)
                if not self._closing:
                    with link.scope:
                        await self._serve_link(link)
                link.ending = True
                self._drop_link(link, "link_lost")
                link.close_queue()
                with trio.move_on_after(FLUSH_TIMEOUT):
                    await link.writer_done.wait()
                nursery.cancel_scope.cancel()
        except Exception:  # a bug must cost one link, never the hub
            log.exception("link %s: internal error", link.name)
        finally:
            link.ending = True
            self._drop_link(link, "link_lost")
            self._links.discard(link)
            self._signed_out(link)
            if self._unpublish(link):
                log.info("%s is offline", link.name)
            if link.worker is not None and self._retiring.get(link.worker.id) is link:
                del self._retiring[link.worker.id]

    def _unpublish(self, link: _Link) -> bool:
        """Take a worker's link out of the live registry; True if it was the published one."""
        if link.worker is None or self._workers.get(link.worker.id) is not link:
            return False
        del self._workers[link.worker.id]
        owned = self._online_by_owner.get(link.worker.owner_id)
        if owned is not None:
            owned.discard(link.worker.id)
            if not owned:
                del self._online_by_owner[link.worker.owner_id]
        return True

    async def _serve_link(self, link: _Link) -> None:
        first_deadline = self._clock() + self.limits.signin_timeout
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
                    while (message := link.conn.next_message()) is not None:
                        if link.liveness is not None:
                            link.liveness.on_received(self._clock())
                        if self._dispatch(link, message):
                            return
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

    def _dispatch(self, link: _Link, message: LinkMessage) -> bool:
        """Handle one message; True when the link should end."""
        if isinstance(message, ChannelData):
            self._data(link, message)
            return False
        if isinstance(message, Heartbeat):
            return self._heartbeat(link, message)
        if isinstance(message, HubRequest):
            self._hub_request(link, message)
            return False
        if isinstance(message, DeregisterAck):
            return self._deregister_ack(link, message)
        if isinstance(message, Register):
            return self._register(link, message)
        if isinstance(message, Connect):
            return self._connect(link, message)
        if isinstance(message, ClientHello):
            return self._client_hello(link, message)
        if isinstance(message, OpenChannel):
            self._open_channel(link, message)
            return False
        if isinstance(message, ChannelAccept):
            self._channel_accept(link, message)
            return False
        if isinstance(message, ChannelReject):
            self._channel_reject(link, message)
            return False
        if isinstance(message, ChannelClose):
            self._channel_close(link, message)
            return False
        if isinstance(message, ErrorMessage):
            log.info("%s closed the link: %s: %s", link.name, message.code, message.message)
            return True
        return False

    # -- registration -----------------------------------------------------------------------

    def _register(self, link: _Link, message: Register) -> bool:
        try:
            worker, token = self.store.register_worker(
                message.registration_key,
                name=message.name,
                version=message.version,
                labels=dict(message.labels),
                now_ms=self.now_ms(),
            )
        except StorageError:
            self.metrics.registration("error")
            raise
        except Unauthenticated as exc:
            self.metrics.registration("rejected")
            self._sign_in_failed(link, "registration_key", str(exc))
            link.fail("unauthenticated", str(exc))
            return True
        except QuotaExceeded as exc:
            self.metrics.registration("quota")
            link.fail("quota_exceeded", str(exc))
            return True
        except LocalError as exc:
            self.metrics.registration("rejected")
            link.fail("invalid_argument", str(exc))
            return True
        self.metrics.registration("ok")
        log.info("worker %s registered for %s", worker.id, worker.owner_name)
        link.enqueue(Registered(worker.id, token))
        return True

    # -- worker links -------------------------------------------------------------------------

    def _connect(self, link: _Link, message: Connect) -> bool:
        if not message.auth_token:
            self._sign_in_failed(link, "worker_token", "auth_token required")
            link.fail("unauthenticated", "auth_token required")
            return True
        try:
            worker = self.store.authenticate_worker(message.auth_token, self.now_ms())
        except Unauthenticated:
            self._sign_in_failed(link, "worker_token", "invalid auth token")
            link.fail("unauthenticated", "invalid auth token")
            return True
        if worker.status is WorkerStatus.DEREGISTERING:
            return self._connect_deregistering(link, worker)
        cap = self.store.max_workers_per_user
        owned = self._online_by_owner.get(worker.owner_id, set())
        live = len(owned) - (worker.id in owned)  # a reconnect replaces its own slot
        if cap and live >= cap:
            link.fail(
                "quota_exceeded",
                f"this account already has {live} workers connected, which is the configured "
                "maximum (max_workers_per_user)",
            )
            return True
        if not self._admit_address(link):
            return True
        link.worker = worker
        link.liveness = Liveness(self._clock())
        link.enqueue(WorkerGreeting(worker.id, worker.owner_id, worker.owner_name))
        old = self._workers.get(worker.id)
        self._workers[worker.id] = link
        self._online_by_owner.setdefault(worker.owner_id, set()).add(worker.id)
        if old is not None:
            log.info("worker %s connected again; closing its older link", worker.id)
            self._drop_link(old, "replaced")
            old.scope.cancel()
        log.info("%s is online (%s)", link.name, link.transport)
        return False

    def _connect_deregistering(self, link: _Link, worker: Worker) -> bool:
        """A DEREGISTERING worker signs in: its connect is answered with its ``deregister``
        instead of a greeting (it never learns its owner again), and it is never published,
        counted or routed to; it may only heartbeat and acknowledge."""
        if not self._admit_address(link):
            return True
        link.worker = worker
        link.liveness = Liveness(self._clock())
        old = self._workers.get(worker.id)
        if old is not None:  # published before its deregistration was seen: it goes too
            self._unpublish(old)
            self._drop_link(old, "deregistered")
            old.scope.cancel()
        older = self._retiring.get(worker.id)
        if older is not None:  # one retiring link per worker: the newest replaces it
            older.scope.cancel()
        self._retiring[worker.id] = link
        log.info("%s connected while deregistering; sending its deregister", link.name)
        self._retire(link, self.store.deregistration_notice(worker.id, self.now_ms()))
        return False

    def _retire(self, link: _Link, note: Notification) -> bool:
        """A deregistering worker's link stops serving at once: out of the registry, its
        channels and opens closed, every request and open refused; it is sent ``note``
        (once) and ends after its ack, or after ``deregister_grace``. True if sent."""
        if self._unpublish(link):
            log.info("%s is deregistering; it no longer serves", link.name)
        link.retired = True
        self._drop_link(link, "deregistered")
        link.hard_deadline = min(link.hard_deadline, self._clock() + self.limits.deregister_grace)
        if link.waiting is not None:  # its reader may be waiting on a later deadline
            link.waiting.deadline = min(
                link.waiting.deadline,
                trio.current_time() + max(0.0, link.hard_deadline - self._clock()),
            )
        if link.deregs:
            return True
        return self._send_deregister(link, note)

    def _send_deregister(self, link: _Link, note: Notification) -> bool:
        if note.kind != "deregister":
            return False
        request_id = next(self._request_ids)
        self.store.notification_attempted(note.id)
        if not link.enqueue(Deregister(request_id, note.reason)):
            return False
        link.deregs[request_id] = note.id
        return True

    def _deregister_ack(self, link: _Link, message: DeregisterAck) -> bool:
        note_id = link.deregs.pop(message.request_id, None)
        if note_id is None:
            raise LinkProtocolError(f"deregister_ack for unknown request {message.request_id}")
        self.store.notification_delivered(note_id, self.now_ms())
        self.metrics.link_closed("deregistered")
        log.info("%s acknowledged its deregistration; it is deleted", link.name)
        return True

    def _heartbeat(self, link: _Link, beat: Heartbeat) -> bool:
        if link.worker is not None:
            if beat.encryption_mode is not None:
                assert beat.public_key is not None
                assert beat.mlkem_public_key is not None
                assert beat.slhdsa_public_key is not None
                keys = PublicKeyBundle(
                    beat.public_key, beat.mlkem_public_key, beat.slhdsa_public_key
                )
                link.mode = parse_encryption_mode(beat.encryption_mode)
                self.store.record_heartbeat(
                    link.worker.id, self.now_ms(), keys=keys, mode=link.mode
                )
            else:
                self.store.record_heartbeat(link.worker.id, self.now_ms())
        link.enqueue(HeartbeatAck(beat.seq))
        return False

    # -- client links -------------------------------------------------------------------------

    def _client_hello(self, link: _Link, message: ClientHello) -> bool:
        try:
            user, token_id = self.store.authenticate_client(message.api_token, self.now_ms())
        except Unauthenticated as exc:
            self._sign_in_failed(link, "api_token", str(exc))
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
        self._user_links.setdefault(user.id, set()).add(link)
        link.liveness = Liveness(self._clock(), self.limits.client_idle_timeout)
        link.enqueue(ClientGreeting(user.id, user.name))
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

    def _sign_in_failed(self, link: _Link, kind: str, reason: str) -> None:
        """Log a refused credential (never the credential), rate-limited per kind."""
        self.metrics.sign_in_refused(kind)
        allowed, suppressed = self._signin_log.allow(kind, self._clock())
        if suppressed:
            self._log_suppressed(kind, suppressed)
        if allowed:
            log.warning(
                "sign-in refused from %s (%s): %s: %s",
                link.peer or "?",
                link.transport,
                _SIGN_IN_KINDS[kind],
                reason,
            )

    def _log_suppressed(self, kind: str, count: int) -> None:
        log.warning(
            "%d more refused sign-ins (%s) suppressed in the last %gs",
            count,
            _SIGN_IN_KINDS[kind],
            self._signin_log.window,
        )

    def _hub_request(self, link: _Link, request: HubRequest) -> None:
        if link.worker is not None:
            # A worker asks as its owner, and only about its siblings.
            denied = None
            if link.retired:
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
            result = call(self, user, request.method, request.params)
        except RequestError as exc:
            log.info("%s: %s failed: %s", link.name, request.method, exc.message)
            link.enqueue(
                HubResponse(request.request_id, error_code=exc.code, error_message=exc.message)
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

    # -- channels: opening -----------------------------------------------------------------

    def _open_channel(self, link: _Link, message: OpenChannel) -> None:
        def refuse(code: str, text: str, result: str | None = None) -> None:
            self.metrics.channel_open(result or code)
            log.info("%s: open_channel to %s refused: %s", link.name, message.worker_id, text)
            link.enqueue(ChannelRefused(message.request_id, code, text))

        size = message.max_message_size
        if not MIN_MAX_MESSAGE_SIZE <= size <= MAX_MAX_MESSAGE_SIZE:
            refuse(
                "invalid_max_message_size",
                f"max_message_size {size} is outside "
                f"{MIN_MAX_MESSAGE_SIZE} .. {MAX_MAX_MESSAGE_SIZE}",
            )
            return
        if self._closing:
            refuse("unavailable", "hub is shutting down")
            return
        if link.retired:
            refuse("permission_denied", "this worker is deregistering")
            return
        if len(link.opens) >= MAX_PENDING_OPENS:
            refuse("unavailable", f"too many channel opens pending (at most {MAX_PENDING_OPENS})")
            return
        limits = self.limits
        held = link.opened + len(link.opens)
        if held >= limits.max_channels_per_link:
            refuse(
                "quota_exceeded",
                f"this link already has {held} channels, which is the configured maximum "
                "(max_channels_per_link)",
            )
            return
        if link.worker is not None:  # a worker opening a channel to a sibling
            owner_id, own_id = link.worker.owner_id, link.worker.id
        else:
            assert link.user is not None
            owner_id, own_id = link.user.id, None
        held = len(self._user_channels.get(owner_id, ()))
        if held >= limits.max_channels_per_user:
            refuse(
                "quota_exceeded",
                f"this account already has {held} channels, which is the configured maximum "
                "(max_channels_per_user)",
            )
            return
        try:
            target: Worker | None = self.store.get_worker(message.worker_id)
        except NotFound:
            target = None
        if target is None or target.status is not WorkerStatus.ACTIVE or target.id == own_id:
            refuse("not_found", "worker not found")
            return
        if target.owner_id != owner_id:
            # Exactly what an unknown id gets: a stranger cannot probe which ids exist.
            refuse("not_found", "worker not found", result="not_owner")
            return
        destination = self._workers.get(target.id)
        if destination is None or link.nursery is None:
            refuse("worker_offline", "worker is offline")
            return
        waiting = len(destination.requests)
        if waiting >= limits.max_pending_opens_per_worker:
            refuse(
                "unavailable",
                f"the worker has too many channel opens pending (at most "
                f"{limits.max_pending_opens_per_worker})",
            )
            return
        held = destination.served + waiting
        if held >= limits.max_channels_per_worker:
            refuse(
                "quota_exceeded",
                f"the worker already serves {held} channels, which is the configured maximum "
                "(max_channels_per_worker)",
            )
            return
        pending = _Pending(
            next(self._request_ids),
            next(self._channel_ids),
            link,
            message.request_id,
            destination,
            min(size, self.max_message_size),
            owner_id,
        )
        request = ChannelRequest(
            pending.request_id, pending.channel_id, owner_id, message.message1, pending.size
        )
        if not destination.enqueue(request):
            refuse("worker_offline", "worker is offline")
            return
        self._opens[pending.request_id] = pending
        link.opens[pending.request_id] = pending
        destination.requests[pending.request_id] = pending
        self._hold(owner_id, pending.channel_id)
        link.nursery.start_soon(self._open_timer, pending)

    async def _open_timer(self, pending: _Pending) -> None:
        with trio.move_on_after(OPEN_TIMEOUT):
            await pending.settled.wait()
            return
        if self._opens.get(pending.request_id) is not pending:
            return
        self._settle(pending)
        self.metrics.channel_open("timeout")
        log.info("%s did not answer channel %d's open", pending.worker.name, pending.channel_id)
        pending.opener.enqueue(
            ChannelRefused(
                pending.opener_request_id,
                "timeout",
                f"worker did not answer the open within {OPEN_TIMEOUT:g} s",
            )
        )
        pending.worker.enqueue(ChannelClose(pending.channel_id, "closed", "channel open timed out"))

    def _hold(self, owner_id: str, channel_id: int) -> None:
        self._user_channels.setdefault(owner_id, set()).add(channel_id)

    def _release(self, owner_id: str, channel_id: int) -> None:
        held = self._user_channels.get(owner_id)
        if held is not None:
            held.discard(channel_id)
            if not held:
                del self._user_channels[owner_id]

    def _settle(self, pending: _Pending) -> None:
        self._release(pending.owner_id, pending.channel_id)
        self._opens.pop(pending.request_id, None)
        pending.opener.opens.pop(pending.request_id, None)
        pending.worker.requests.pop(pending.request_id, None)
        pending.settled.set()

    def _answered(self, link: _Link, request_id: int, channel_id: int) -> _Pending | None:
        """The open a worker's answer settles, or None (unknown: late, or not this link's)."""
        pending = link.requests.get(request_id)
        if pending is None or pending.channel_id != channel_id:
            log.debug(
                "%s answered unknown open (request %d, channel %d); ignored",
                link.name,
                request_id,
                channel_id,
            )
            return None
        self._settle(pending)
        return pending

    def _channel_accept(self, link: _Link, message: ChannelAccept) -> None:
        pending = self._answered(link, message.request_id, message.channel_id)
        if pending is None:
            return
        size = message.max_message_size
        if not MIN_MAX_MESSAGE_SIZE <= size <= pending.size:
            self.metrics.channel_open("invalid_accept")
            log.info("%s accepted with max_message_size %d > %d", link.name, size, pending.size)
            pending.opener.enqueue(
                ChannelRefused(
                    pending.opener_request_id,
                    "handshake_failed",
                    "worker answered an invalid max_message_size",
                )
            )
            link.enqueue(
                ChannelClose(
                    pending.channel_id,
                    "closed",
                    f"max_message_size {size} is outside {MIN_MAX_MESSAGE_SIZE} .. {pending.size}",
                )
            )
            return
        channel = _Channel(pending.channel_id, pending.opener, link, size, pending.owner_id)
        opened = ChannelOpened(pending.opener_request_id, channel.id, message.message2, size)
        if not pending.opener.enqueue(opened):
            link.enqueue(ChannelClose(channel.id, *_END_MESSAGES["link_lost"]))
            return
        self.metrics.channel_open("opened")
        self._channels[channel.id] = channel
        channel.opener.channels[channel.id] = channel
        link.channels[channel.id] = channel
        channel.opener.opened += 1
        link.served += 1
        self._hold(channel.owner_id, channel.id)
        log.debug("channel %d open: %s <-> %s", channel.id, channel.opener.name, link.name)

    def _channel_reject(self, link: _Link, message: ChannelReject) -> None:
        pending = self._answered(link, message.request_id, message.channel_id)
        if pending is None:
            return
        self.metrics.channel_open("rejected")
        pending.opener.enqueue(
            ChannelRefused(
                pending.opener_request_id,
                message.code,
                f"worker rejected channel: {message.message}",
            )
        )

    # -- channels: relaying and closing ------------------------------------------------------

    def _data(self, link: _Link, frame: ChannelData) -> None:
        channel = link.channels.get(frame.channel_id)
        if channel is None:
            self.metrics.frame_dropped()
            log.debug("%s: data for unknown channel %d dropped", link.name, frame.channel_id)
            return
        direction = _TO_WORKER if link is channel.opener else _TO_CLIENT
        size = len(frame.ciphertext)
        try:
            ends = channel.relay.check(direction, frame.correlation_id, frame.flags, size)
            cost = channel.relay.charge(direction, frame.flags, size)
        except RelayViolation as exc:
            self.metrics.frame_rejected("relay_violation")
            log.info("%s: %s", link.name, exc)
            self._close_channel(channel, "relay_violation", str(exc), (link, channel.other(link)))
            return
        channel.receiver(direction).enqueue_data(channel.flows[direction], frame, cost)
        if ends:  # a CLOSE frame, forwarded: the channel is over at the hub
            self._forget(channel)

    def _written(self, flow: _Flow, cost: int) -> None:
        """A destination's writer handed one of ``flow``'s frames to its transport."""
        channel = flow.channel
        if cost:
            self.metrics.relayed(_DIRECTION_LABELS[flow.direction], cost)
        if not channel.live:
            return
        grant = channel.relay.delivered(flow.direction, cost)
        if grant:
            channel.sender(flow.direction).enqueue(ChannelCredit(channel.id, grant))

    def _channel_close(self, link: _Link, message: ChannelClose) -> None:
        channel = link.channels.get(message.channel_id)
        if channel is None:
            log.debug("%s: channel_close for unknown channel %d", link.name, message.channel_id)
            return
        self._close_channel(channel, message.code, message.message, (channel.other(link),))

    def _forget(self, channel: _Channel) -> None:
        if channel.live and self._channels.get(channel.id) is channel:
            channel.opener.opened -= 1
            channel.worker.served -= 1
            self._release(channel.owner_id, channel.id)
        channel.live = False
        self._channels.pop(channel.id, None)
        channel.opener.channels.pop(channel.id, None)
        channel.worker.channels.pop(channel.id, None)

    def _close_channel(
        self, channel: _Channel, code: str, message: str, ends: Iterable[_Link]
    ) -> None:
        """Forget ``channel`` and tell ``ends``, each after the frames still queued to it."""
        if not channel.live:
            return
        self._forget(channel)
        for end in ends:
            end.enqueue_close(channel.toward(end), ChannelClose(channel.id, code, message))

    def _drop_link(self, link: _Link, reason: str) -> None:
        """``link`` is ending (or retiring): close its channels and opens towards their
        other ends."""
        code, text = _END_MESSAGES[reason]
        for channel in list(link.channels.values()):
            self._close_channel(channel, code, text, (channel.other(link),))
        for pending in list(link.opens.values()):  # its opens: the worker may stop waiting
            self._settle(pending)
            pending.worker.enqueue(ChannelClose(pending.channel_id, code, text))
        for pending in list(link.requests.values()):  # opens waiting for this worker
            self._settle(pending)
            self.metrics.channel_open("worker_offline")
            pending.opener.enqueue(
                ChannelRefused(pending.opener_request_id, "worker_offline", "worker went offline")
            )

    def _close_everything(self) -> None:
        """Hub shutdown: every channel closes both ways, every pending open is refused."""
        _code, text = _END_MESSAGES["shutdown"]
        for channel in list(self._channels.values()):
            self._close_channel(channel, "shutdown", text, (channel.opener, channel.worker))
        for pending in list(self._opens.values()):
            self._settle(pending)
            self.metrics.channel_open("unavailable")
            pending.opener.enqueue(
                ChannelRefused(pending.opener_request_id, "unavailable", "hub is shutting down")
            )
            pending.worker.enqueue(ChannelClose(pending.channel_id, "shutdown", text))

    # -- metrics -------------------------------------------------------------------------------

    def _metrics_route(self) -> HttpResponse:
        links = list(self._links)
        snapshot = Snapshot(
            workers_online=len(self._workers),
            worker_links=sum(1 for link in links if link.worker is not None),
            client_links=sum(1 for link in links if link.user is not None),
            channels=len(self._channels),
        )
        return 200, CONTENT_TYPE, self.metrics.render(snapshot)


def _address(peer: str) -> str | None:
    """The IP address in a peer's ``ip:port`` (``[v6]:port`` too); None for Unix-socket
    (``unix``), non-socket (``local``) and unknown peers, which are not counted per address."""
    if peer in ("", "unix", "local"):
        return None
    host, sep, _port = peer.rpartition(":")
    if not sep:
        return peer
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _healthz() -> HttpResponse:
    return 200, "text/plain; charset=utf-8", b"ok\n"
