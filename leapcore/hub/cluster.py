"""Several hubs as one (trio): hub nodes, presence leases, hub-to-hub links and relayed
channels. Hub processes that share one database each run one :class:`Cluster`
(``Hub(cluster=ClusterOptions(...))``).

**Nodes and leases.** Each hub process is a *node*: a random id per start (or
``node_name``), the address other hubs dial (``advertise``) and a row in ``hub_nodes``
whose lease it renews every :data:`~leapcore.proto.limits.CLUSTER_RENEW_INTERVAL`
(lease :data:`~leapcore.proto.limits.CLUSTER_LEASE`). A worker's presence
(``worker_presence``: which node holds its link) is written when its link is published
and deleted when it ends, at the next write (a link coming up wakes the writer at once,
batched over :data:`PRESENCE_BATCH`); every tick renews all this node's presence leases in
one transaction (:meth:`~leapcore.store.hubstore.SQLiteHubStore.cluster_renew`). A worker
on a hub that stopped renewing (killed, cut off from the database) shows offline once its
lease ends. The latest link wins: a worker that links to hub B while hub A still holds it
is B's, and A drops its stale link at its next tick, when its presence row no longer names
it. ``workers.list`` on any hub shows a worker online if it is here or its lease is live on
another hub (as of this hub's last tick).

**Hub-to-hub links** (:mod:`leapcore.proto.cluster_wire`, docs/protocol.md). With
``listen`` set the node accepts hub-to-hub links on a listener of its own (never the
client and worker listener); with ``secret`` it dials other nodes on demand: one link per
ordered pair, reused, dialled again once it broke. Both sides prove the shared secret.

**Relayed channels.** An open at hub A for a worker whose presence is on hub B goes over
A's link to B. A's router sees the link as the worker's side of the channel (one
:class:`_End` per remote worker, joined to the router but never published); B's router
sees it as a client's side (one :class:`_End` per user the link carries): the routing
core, the relay rules and the credit serve unchanged at both hubs. B trusts the user id A
asserts (A proved the secret) and checks ownership as for any open. Data frames pass
unchanged but for the channel id in their header (the wire carries B's ids; A translates
its own); the ciphertext is never touched. Each hub sends a channel's frames to the other
only within the credit that hub granted (a frame waits in its channel's queue until then),
so the per-channel credit holds end to end. An open from another hub is never sent on to a
third.

Store calls go through :meth:`Cluster._store` (one place to move them off the loop).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import secrets
import stat
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import attrs
import trio
from prometheus_client import Counter

from ..errors import ConfigError, LeapcoreError, LinkProtocolError, LocalError
from ..net.pipe import WRITE_BATCH
from ..proto.cluster_wire import (
    CLUSTER_VERSION,
    NONCE_BYTES,
    ClusterChallenge,
    ClusterDecoder,
    ClusterError,
    ClusterHello,
    ClusterOpen,
    ClusterPing,
    ClusterPong,
    ClusterProof,
    ClusterReady,
    ClusterRecord,
    SealedRecords,
    encode_cluster,
    proof,
    proof_ok,
    session_keys,
    with_channel_id,
)
from ..proto.hub_actions import Forward, Lookup
from ..proto.limits import (
    CHANNEL_CREDIT,
    CLUSTER_HANDSHAKE_TIMEOUT,
    CLUSTER_IDLE_TIMEOUT,
    CLUSTER_LEASE,
    CLUSTER_MAX_CONNECTIONS,
    CLUSTER_MAX_LOOKUPS,
    CLUSTER_PING_INTERVAL,
    CLUSTER_RENEW_INTERVAL,
    CLUSTER_SECRET_MIN,
    MAX_LINK_QUEUE_BYTES,
)
from ..proto.link_codec import (
    ChannelAccept,
    ChannelClose,
    ChannelCredit,
    ChannelOpened,
    ChannelRefused,
    ChannelReject,
    ChannelRequest,
    LinkMessage,
    OpenChannel,
    RelayedData,
    encode,
)
from ..proto.relay import RelayDirection
from ..store.hubstore import ClusterNode

if TYPE_CHECKING:
    from .server import Hub

__all__ = ["PRESENCE_BATCH", "Cluster", "ClusterOptions", "read_secret_file"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a link coming up or going waits for others before the presence write.
PRESENCE_BATCH: Final = 0.2
#: What ends one hub-to-hub link (logged; never the hub): the network, a timeout, a bad
#: frame, the other hub's refusal, or a bug in handling one record.
_LINK_ENDS: Final = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    LeapcoreError,
)
#: Link records each side of a hub-to-hub link may send (besides cluster records).
_FROM_DIALLER: Final = frozenset({"channel_close", "channel_credit", "data"})
_FROM_LISTENER: Final = frozenset(
    {"channel_opened", "channel_refused", "channel_close", "channel_credit", "data"}
)


def read_secret_file(path: Path | str) -> bytes:
    """The cluster secret in ``path`` (surrounding whitespace stripped). Refused
    (:class:`~leapcore.errors.ConfigError`, never quoting the secret) when the file is
    missing, readable or writable by group or others, or shorter than
    :data:`~leapcore.proto.limits.CLUSTER_SECRET_MIN` bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(64 * 1024).strip()
    except OSError as exc:
        raise ConfigError(f"cluster secret file {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"cluster secret file {path} is accessible to group or others (mode "
            f"{stat.S_IMODE(mode):04o}); make it 0600"
        )
    if len(data) < CLUSTER_SECRET_MIN:
        raise ConfigError(f"cluster secret file {path} holds fewer than {CLUSTER_SECRET_MIN} bytes")
    return data


@attrs.frozen
class ClusterOptions:
    """A hub's cluster settings. ``listen``: (host, port) of the hub-to-hub listener (None:
    it accepts no hub-to-hub links, and other hubs cannot reach its workers); ``advertise``:
    the HOST:PORT other hubs dial (default: the bound listen address); ``secret``: the
    shared cluster secret (empty: no hub-to-hub links, presence only); ``node_name``: a
    stable node id (default: random per start)."""

    listen: tuple[str, int] | None = None
    advertise: str = ""
    secret: bytes = attrs.field(default=b"", repr=False)
    node_name: str = ""
    renew_interval: float = CLUSTER_RENEW_INTERVAL
    lease: float = CLUSTER_LEASE

    def __attrs_post_init__(self) -> None:
        if self.listen is not None and not self.secret:
            raise ConfigError("a cluster listener needs the cluster secret (cluster_secret_file)")
        if not 0 < self.renew_interval < self.lease:
            raise ConfigError("the cluster lease must be longer than its renewal interval")


class _Flow:
    """One channel's frames towards the other hub (one direction), gated by its credit."""

    __slots__ = ("channel_id", "direction", "ended", "frames", "queued", "scheduled", "wire_id")

    def __init__(self, channel_id: int, direction: RelayDirection, wire_id: int) -> None:
        self.channel_id = channel_id
        self.direction = direction
        self.wire_id = wire_id
        self.frames: deque[tuple[bytes, int]] = deque()
        self.queued = 0
        self.scheduled = False
        #: The channel ended at this hub: the flow goes once its last frame is written.
        self.ended = False


class _Flows(dict[int, _Flow]):
    """An end's flows by (local) channel id; the hub pops one when its channel ends."""

    def __init__(self, link: _PeerLink) -> None:
        super().__init__()
        self.link = link

    def pop(self, channel_id: int, default: Any = None) -> Any:
        self.link.forget(channel_id)
        return super().pop(channel_id, default)


class _Scope:
    """What the hub cancels to end a link: an end leaves the router instead."""

    def __init__(self, end: _End) -> None:
        self.end = end

    def cancel(self) -> None:
        self.end.link.cluster.leave(self.end)


class _End:
    """One side of a hub-to-hub link as the router sees it: the remote worker ``worker_id``
    (on the dialling hub), or the user ``owner_id``'s opener (on the listening hub)."""

    def __init__(self, link: _PeerLink, owner_id: str, worker_id: str | None) -> None:
        self.link = link
        self.owner_id = owner_id
        self.worker_id = worker_id
        self.flows = _Flows(link)
        self.scope = _Scope(self)
        self.peer = f"hub {link.remote or '?'}"
        self.left = False

    def __str__(self) -> str:
        what = f"worker {self.worker_id}" if self.worker_id else f"user {self.owner_id}"
        return f"{what} via {self.peer}"

    def forward(self, action: Forward[Any]) -> None:
        frame = action.frame
        flow = self.flows.get(frame.channel_id)
        if flow is None:
            wire = self.link.wire_id(frame.channel_id)
            if wire is None:
                return
            flow = self.flows[frame.channel_id] = _Flow(frame.channel_id, action.direction, wire)
            self.link.flows[wire] = flow
        data = encode(frame)
        if flow.wire_id != frame.channel_id:
            data = with_channel_id(data, flow.wire_id)
        self.link.queue_data(flow, data, action.cost)

    def enqueue(self, message: LinkMessage) -> bool:
        return self.link.send_link_record(self, message)

    def enqueue_close(self, message: ChannelClose) -> bool:
        flow = self.flows.get(message.channel_id)
        if flow is not None and flow.frames:
            data = self.link.translate_close(message)
            if data is None:
                return False
            self.link.queue_data(flow, data, 0)
            return True
        return self.enqueue(message)


class _PeerLink:
    """One hub-to-hub link: the dialling side (opens go out) or the listening side."""

    def __init__(self, cluster: Cluster, *, dialler: bool, remote: str) -> None:
        self.cluster = cluster
        self.dialler = dialler
        #: The other hub's node id (known at once when dialling; after its hello otherwise).
        self.remote = remote
        self.stream: trio.abc.Stream | None = None
        self.scope = trio.CancelScope()
        self.closed = False
        self._control: deque[bytes] = deque()
        self._control_bytes = 0
        self._ready: deque[_Flow] = deque()
        self._wake = trio.Event()
        #: Outgoing flows by wire channel id, and the credit the other hub granted each.
        self.flows: dict[int, _Flow] = {}
        self.gate: dict[int, int] = {}
        #: Ends by worker id (dialling side) or user id (listening side).
        self.ends: dict[str, _End] = {}
        # Dialling side: request id -> (channel id, end) of opens sent; channel ids both
        # ways between ours and the wire's (the listening hub's); opens closed while waiting.
        self.pending: dict[int, tuple[int, _End]] = {}
        self.wire_of: dict[int, int] = {}
        self.local_of: dict[int, int] = {}
        self.cancelled: set[int] = set()
        self._ping = 0

    def __str__(self) -> str:
        return f"hub-to-hub link {'to' if self.dialler else 'from'} {self.remote or '?'}"

    # -- what ends queue ----------------------------------------------------------------------

    def wire_id(self, channel_id: int) -> int | None:
        return self.wire_of.get(channel_id) if self.dialler else channel_id

    def forget(self, channel_id: int) -> None:
        """A channel ended at this hub: its mapping goes, and its flow and credit once the
        frames still queued (its close among them) are written."""
        wire = self.wire_id(channel_id)
        if self.dialler:
            self.wire_of.pop(channel_id, None)
            if wire is not None:
                self.local_of.pop(wire, None)
        if wire is None:
            return
        flow = self.flows.get(wire)
        if flow is not None and flow.frames:
            flow.ended = True
            return
        self._drop_flow(wire)

    def _drop_flow(self, wire: int) -> None:
        self.flows.pop(wire, None)
        self.gate.pop(wire, None)

    def put(self, data: bytes) -> bool:
        if self.closed:
            return False
        if self._control_bytes + len(data) > MAX_LINK_QUEUE_BYTES:
            log.warning("%s: the other hub is not reading; closing the link", self)
            self.scope.cancel()
            return False
        self._control.append(data)
        self._control_bytes += len(data)
        self._wake.set()
        return True

    def queue_data(self, flow: _Flow, data: bytes, cost: int) -> None:
        if self.closed:
            return
        flow.frames.append((data, cost))
        flow.queued += cost
        self._schedule(flow)

    def _schedule(self, flow: _Flow) -> None:
        if not flow.scheduled and flow.frames:
            flow.scheduled = True
            self._ready.append(flow)
            self._wake.set()

    def translate_close(self, message: ChannelClose) -> bytes | None:
        wire = self.wire_id(message.channel_id)
        if wire is None:
            return None
        return encode(ChannelClose(wire, message.code, message.message))

    def send_link_record(self, end: _End, message: LinkMessage) -> bool:
        """A record the router sends ``end``, put on the wire (translated on the dialling
        side: a ``channel_request`` becomes ``cluster_open``, channel ids the wire's)."""
        if not self.dialler:
            if isinstance(message, ChannelOpened):
                self.gate.setdefault(message.channel_id, CHANNEL_CREDIT)
            return self.put(encode(message))
        if isinstance(message, ChannelRequest):
            assert end.worker_id is not None
            self.pending[message.request_id] = (message.channel_id, end)
            return self.put(
                encode_cluster(
                    ClusterOpen(
                        message.request_id,
                        message.user_id,
                        end.worker_id,
                        message.message1,
                        message.max_message_size,
                    )
                )
            )
        if isinstance(message, ChannelClose):
            data = self.translate_close(message)
            if data is None:  # an open still waiting: closed when its answer comes
                for request_id, (channel_id, _end) in self.pending.items():
                    if channel_id == message.channel_id:
                        self.cancelled.add(request_id)
                return True
            self.forget(message.channel_id)
            return self.put(data)
        if isinstance(message, ChannelCredit):
            wire = self.wire_of.get(message.channel_id)
            return wire is not None and self.put(encode(ChannelCredit(wire, message.credit)))
        log.debug("%s: %s not sent to another hub", self, message.type)
        return False

    # -- the writer ---------------------------------------------------------------------------

    async def writer(self) -> None:
        """Control records first, then channel frames in turn, each within its credit."""
        assert self.stream is not None
        while True:
            batch: list[bytes] = []
            size = 0
            written: list[tuple[_Flow, int]] = []
            while size < WRITE_BATCH:
                if self._control:
                    item = self._control.popleft()
                    self._control_bytes -= len(item)
                    batch.append(item)
                    size += len(item)
                    continue
                if not self._ready:
                    break
                flow = self._ready.popleft()
                if not flow.frames:
                    flow.scheduled = False
                    continue
                data, cost = flow.frames[0]
                if cost > self.gate.get(flow.wire_id, 0):
                    flow.scheduled = False  # waits for the other hub's credit
                    continue
                flow.frames.popleft()
                self.gate[flow.wire_id] = self.gate.get(flow.wire_id, 0) - cost
                if flow.frames:
                    self._ready.append(flow)
                else:
                    flow.scheduled = False
                    if flow.ended and self.flows.get(flow.wire_id) is flow:
                        self._drop_flow(flow.wire_id)
                batch.append(data)
                size += len(data)
                written.append((flow, cost))
            if batch:
                await self.stream.send_all(b"".join(batch))
                for flow, cost in written:
                    flow.queued -= cost
                    self.cluster.written(flow, cost)
                continue
            self._wake = trio.Event()
            await self._wake.wait()

    # -- the reader ---------------------------------------------------------------------------

    def receive(self, message: ClusterRecord | LinkMessage | RelayedData) -> None:
        """One record or frame from the other hub (signed in)."""
        hub = self.cluster.hub
        router = hub.router
        if isinstance(message, RelayedData):
            self._data(message)
        elif isinstance(message, ChannelCredit):
            if message.channel_id in self.gate:
                self.gate[message.channel_id] += message.credit
                flow = self.flows.get(message.channel_id)
                if flow is not None:
                    self._schedule(flow)
        elif isinstance(message, ChannelClose):
            channel_id = (
                self.local_of.get(message.channel_id) if self.dialler else (message.channel_id)
            )
            end = None if channel_id is None else self._end_of(channel_id)
            if end is not None and channel_id is not None:
                close = ChannelClose(channel_id, message.code, message.message)
                hub._apply(router.close(cast(Any, end), close))
        elif isinstance(message, ClusterPing):
            self.put(encode_cluster(ClusterPong(message.seq)))
        elif isinstance(message, ClusterPong):
            pass
        elif isinstance(message, ClusterOpen) and not self.dialler:
            self._open(message)
        elif isinstance(message, (ChannelOpened, ChannelRefused)) and self.dialler:
            self._answer(message)
        elif isinstance(message, ClusterError):
            log.info("%s: the other hub closed it: %s: %s", self, message.code, message.message)
            self.scope.cancel()
        else:
            raise LinkProtocolError(f"{message.type} is not expected on {self}")

    def _end_of(self, channel_id: int) -> _End | None:
        """This link's end of a live channel (None: not one of this link's)."""
        ends = self.cluster.hub.router.ends(channel_id)
        if ends is None:
            return None
        end = cast(Any, ends[1] if self.dialler else ends[0])
        return end if isinstance(end, _End) and end.link is self else None

    def _data(self, frame: RelayedData) -> None:
        hub = self.cluster.hub
        if self.dialler:
            channel_id = self.local_of.get(frame.channel_id)
            if channel_id is None:
                hub.metrics.frame_dropped()
                return
            frame = RelayedData(
                channel_id,
                frame.correlation_id,
                frame.flags,
                frame.size,
                with_channel_id(frame.frame, channel_id),
            )
        end = self._end_of(frame.channel_id)
        if end is None:
            hub.metrics.frame_dropped()
            return
        hub._apply(hub.router.data(cast(Any, end), frame))

    def _open(self, message: ClusterOpen) -> None:
        """The listening side: a user's open, asserted by the dialling hub."""
        hub = self.cluster.hub
        end = self.ends.get(message.user_id)
        if end is None or end.left:
            end = self.ends[message.user_id] = _End(self, message.user_id, None)
            hub.router.join(cast(Any, end), message.user_id)
        open_ = OpenChannel(
            message.request_id, message.worker_id, message.message1, message.max_message_size
        )
        hub._apply(hub.router.open_channel(cast(Any, end), open_, hub._clock()))
        hub._reset_open_timer()

    def _answer(self, message: ChannelOpened | ChannelRefused) -> None:
        """The dialling side: the other hub settled one of the opens sent to it."""
        hub = self.cluster.hub
        found = self.pending.pop(message.request_id, None)
        if found is None:
            return
        channel_id, end = found
        if message.request_id in self.cancelled:
            self.cancelled.discard(message.request_id)
            if isinstance(message, ChannelOpened):
                gone = ChannelClose(message.channel_id, "link_lost", "the opener went away")
                self.put(encode(gone))
            return
        if isinstance(message, ChannelRefused):
            reject = ChannelReject(message.request_id, channel_id, message.code, message.message)
            hub._apply(hub.router.reject(cast(Any, end), reject))
            return
        self.wire_of[channel_id] = message.channel_id
        self.local_of[message.channel_id] = channel_id
        self.gate[message.channel_id] = CHANNEL_CREDIT
        accept = ChannelAccept(
            message.request_id, channel_id, message.message2, message.max_message_size
        )
        hub._apply(hub.router.accept(cast(Any, end), accept))

    def close(self) -> None:
        """The link is over: every end leaves the router (its channels closed, its opens
        refused ``worker_offline``)."""
        if self.closed:
            return
        self.closed = True
        for end in list(self.ends.values()):
            self.cluster.leave(end)
        self.ends.clear()


class Cluster:
    """One hub's part in a cluster (see the module's text). ``await nursery.start(run)``."""

    def __init__(self, hub: Hub, options: ClusterOptions) -> None:
        self.hub = hub
        self.options = options
        self.node_id = options.node_name or secrets.token_hex(8)
        #: The bound hub-to-hub listener, once :meth:`run` started.
        self.bound: tuple[str, int] | None = None
        self.advertise = options.advertise
        #: Workers whose link came up (-> when, ms, and their owner's id) or went, not yet
        #: written.
        self._up: dict[str, tuple[int, str]] = {}
        self._down: set[str] = set()
        self._wake = trio.Event()
        #: Workers online on other hubs (-> owner id), and the other live hubs, as of the
        #: last tick.
        self.remote: dict[str, str] = {}
        self.peers: dict[str, ClusterNode] = {}
        self.renewed_at = -math.inf
        self._out: dict[str, _PeerLink] = {}
        self._inbound: set[_PeerLink] = set()
        self._nursery: trio.Nursery | None = None
        #: Opens being looked up (:data:`~leapcore.proto.limits.CLUSTER_MAX_LOOKUPS`).
        self._lookups = 0
        reg = hub.metrics.registry
        self.auth_failures = Counter(
            "leapcore_hub_cluster_auth_failures",
            "Hub-to-hub links refused: the other side's proof of the cluster secret was wrong.",
            registry=reg,
        )
        self.relayed_opens = Counter(
            "leapcore_hub_cluster_opens",
            "Channel opens sent to the hub holding the worker's link.",
            registry=reg,
        )

    async def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every store call of the cluster goes through here: off the event loop
        (:meth:`~leapcore.hub.server.Hub.store_call`)."""
        return await self.hub.store_call(fn, *args, **kwargs)

    @property
    def others_alive(self) -> bool:
        """Whether another hub held a live lease at the last tick."""
        return bool(self.peers)

    def online_elsewhere(self, worker_id: str) -> bool:
        return worker_id in self.remote

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen (if set), join, then renew every interval until cancelled; on the way out
        the node's rows are deleted."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.options.listen is not None:
                    host, port = self.options.listen
                    listeners = await nursery.start(
                        functools.partial(trio.serve_tcp, self._accept, port, host=host)
                    )
                    sockname = listeners[0].socket.getsockname()
                    self.bound = (sockname[0], sockname[1])
                    if not self.advertise:
                        host = sockname[0]
                        host = f"[{host}]" if ":" in host else host
                        self.advertise = f"{host}:{sockname[1]}"
                        if host in ("0.0.0.0", "[::]"):
                            log.warning(
                                "cluster_listen is on every address: set cluster_advertise "
                                "to the address the other hubs can dial for this one"
                            )
                await self._store(
                    self.hub.store.cluster_join,
                    self.node_id,
                    self.advertise,
                    self.hub.now_ms(),
                    int(self.options.lease * 1000),
                )
                log.info(
                    "cluster node %s (hub-to-hub %s)",
                    self.node_id,
                    f"listening on {self.advertise}" if self.bound else "listener off",
                )
                await self.renew()
                task_status.started()
                nursery.start_soon(self._renew_forever)
        finally:
            for link in [*self._out.values(), *self._inbound]:
                link.close()
            with trio.CancelScope(shield=True):
                try:
                    await self._store(self.hub.store.cluster_leave, self.node_id)
                except LeapcoreError as exc:
                    log.error("cluster: leaving failed: %s", exc)

    async def _renew_forever(self) -> None:
        while True:
            with trio.move_on_after(self.options.renew_interval):
                await self._wake.wait()
                await trio.sleep(PRESENCE_BATCH)
            self._wake = trio.Event()
            await self.renew()

    def worker_up(self, worker_id: str, owner_id: str) -> None:
        """A worker's link was published here."""
        self._down.discard(worker_id)
        self._up[worker_id] = (self.hub.now_ms(), owner_id)
        self._wake.set()

    def worker_down(self, worker_id: str) -> None:
        """A worker's published link here ended."""
        self._up.pop(worker_id, None)
        self._down.add(worker_id)
        self._wake.set()

    async def renew(self) -> None:
        """One tick: write presence changes, renew every lease, learn what others hold;
        drop the local links of workers another hub took over."""
        hub = self.hub
        up, self._up = self._up, {}
        down, self._down = self._down, set()
        local = set(hub.router.online_workers)
        try:
            tick = await self._store(
                hub.store.cluster_renew,
                self.node_id,
                hub.now_ms(),
                int(self.options.lease * 1000),
                up=up,
                down=down,
                channels=hub.router.channel_count,
            )
        except LeapcoreError as exc:
            log.error("cluster: lease renewal failed: %s: %s", type(exc).__name__, exc)
            for worker_id, value in up.items():
                self._up.setdefault(worker_id, value)
            self._down |= down - set(self._up)
            return
        self.renewed_at = hub._clock()
        before, self.remote = self.remote, tick.remote
        for owner_id in {  # the web page's streams follow workers on other hubs too
            (before.get(w) or tick.remote[w]) for w in before.keys() ^ tick.remote.keys()
        }:
            hub.presence.changed(owner_id)
        self.peers = tick.peers
        for worker_id in local - tick.held:
            link = hub.router.worker_link(worker_id)
            if link is None or worker_id in self._up:
                continue
            log.info("%s linked to another hub since; closing this older link", link.name)
            hub._apply(hub.router.drop(link, "replaced"))
            link.scope.cancel()

    # -- routing opens to other hubs ---------------------------------------------------------

    def routes(self, lookup: Lookup[Any]) -> bool:
        """The hook where an open finds no local worker: True when the cluster looks the
        worker up (and answers the router) itself."""
        if isinstance(lookup.link, _End) or not self.options.secret or self._nursery is None:
            return False
        if self.hub.router.worker_link(lookup.message.worker_id) is not None:
            return False
        if self._lookups >= CLUSTER_MAX_LOOKUPS:
            log.warning("%d opens are being looked up already; this one is not", self._lookups)
            return False  # answered from what this hub knows: the worker is not linked here
        self._lookups += 1
        self._nursery.start_soon(self._route, lookup)
        return True

    async def _route(self, lookup: Lookup[Any]) -> None:
        try:
            await self._carry(lookup)
        finally:
            self._lookups -= 1

    async def _carry(self, lookup: Lookup[Any]) -> None:
        hub = self.hub
        worker_id = lookup.message.worker_id
        try:
            target = await hub._target(worker_id)
            node = None
            if target is not None and target.active:
                node = await self._store(hub.store.worker_node, worker_id, hub.now_ms())
        except LeapcoreError as exc:
            log.error("cluster: looking worker %s up failed: %s", worker_id, exc)
            target = node = None
        via = None
        if (
            node is not None
            and target is not None
            and node.node_id != self.node_id
            and node.advertise
            and hub.router.worker_link(worker_id) is None
        ):
            via = self._remote_worker(node, worker_id, target.owner_id)
            self.relayed_opens.inc()
        try:
            actions = hub.router.found(lookup, target, via=cast(Any, via))
        except LocalError:  # the opener's link is gone meanwhile
            return
        hub._apply(actions)
        hub._reset_open_timer()

    def _remote_worker(self, node: ClusterNode, worker_id: str, owner_id: str) -> _End:
        link = self._out.get(node.node_id)
        if link is None or link.closed:
            link = self._out[node.node_id] = _PeerLink(self, dialler=True, remote=node.node_id)
            assert self._nursery is not None
            self._nursery.start_soon(self._dial, link, node.advertise)
        end = link.ends.get(worker_id)
        if end is None or end.left:
            end = link.ends[worker_id] = _End(link, owner_id, worker_id)
            self.hub.router.join(cast(Any, end), owner_id, worker_id)
        return end

    def leave(self, end: _End) -> None:
        """An end is done (its link ended, or the hub ended it): out of the router."""
        if end.left:
            return
        end.left = True
        if end.link.ends.get(end.worker_id or end.owner_id) is end:
            del end.link.ends[end.worker_id or end.owner_id]
        self.hub._apply(self.hub.router.leave(cast(Any, end)))

    def written(self, flow: _Flow, cost: int) -> None:
        self.hub._written(cast(Any, flow), cost)

    # -- hub-to-hub links ----------------------------------------------------------------------

    async def _dial(self, link: _PeerLink, address: str) -> None:
        host, _, port = address.rpartition(":")
        try:
            with link.scope:
                with trio.fail_after(CLUSTER_HANDSHAKE_TIMEOUT):
                    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
                async with stream:
                    decoder = ClusterDecoder(_FROM_LISTENER)
                    with trio.fail_after(CLUSTER_HANDSHAKE_TIMEOUT):
                        sealed = await self._dialler_handshake(link, stream, decoder)
                    link.stream = sealed
                    log.info("%s is up (%s)", link, address)
                    await self._serve(link, sealed, decoder)
        except* _LINK_ENDS as group:
            log.warning("%s (%s): %s", link, address, _describe(group))
        finally:
            link.close()
            if self._out.get(link.remote) is link:
                del self._out[link.remote]

    async def _dialler_handshake(
        self, link: _PeerLink, stream: trio.abc.Stream, decoder: ClusterDecoder
    ) -> _SealedStream:
        secret = self.options.secret
        mine = secrets.token_bytes(NONCE_BYTES)
        await stream.send_all(encode_cluster(ClusterHello(CLUSTER_VERSION, self.node_id, mine)))
        challenge = await _read_record(stream, decoder)
        if not isinstance(challenge, ClusterChallenge):
            raise LinkProtocolError(_refusal(challenge, "cluster_challenge"))
        nonces, nodes = (mine, challenge.nonce), (self.node_id, challenge.node_id)
        if not proof_ok(secret, challenge.proof, dialler=False, nonces=nonces, nodes=nodes):
            self.auth_failures.inc()
            await stream.send_all(
                encode_cluster(ClusterError("unauthenticated", "wrong cluster secret"))
            )
            raise LinkProtocolError("the other hub's proof is wrong: the cluster secrets differ")
        if challenge.node_id != link.remote:
            raise LinkProtocolError(f"the hub there is node {challenge.node_id!r}")
        given = proof(secret, dialler=True, nonces=nonces, nodes=nodes)
        await stream.send_all(encode_cluster(ClusterProof(given)))
        ready = await _read_record(stream, decoder)
        if not isinstance(ready, ClusterReady):
            raise LinkProtocolError(_refusal(ready, "cluster_ready"))
        outbound, inbound = session_keys(secret, nonces=nonces, nodes=nodes)
        return _SealedStream(stream, SealedRecords(outbound, inbound), decoder.take_unread())

    async def _accept(self, stream: trio.SocketStream) -> None:
        peer = _peer_of(stream)
        if len(self._inbound) >= CLUSTER_MAX_CONNECTIONS:
            log.warning(
                "hub-to-hub link from %s refused: %d links already", peer, len(self._inbound)
            )
            await stream.aclose()
            return
        link = _PeerLink(self, dialler=False, remote="")
        self._inbound.add(link)
        try:
            with link.scope:
                async with stream:
                    decoder = ClusterDecoder(_FROM_DIALLER)
                    with trio.fail_after(CLUSTER_HANDSHAKE_TIMEOUT):
                        sealed = await self._listener_handshake(link, stream, decoder, peer)
                    link.stream = sealed
                    log.info("%s is up (%s)", link, peer)
                    await self._serve(link, sealed, decoder)
        except* _LINK_ENDS as group:
            log.warning("hub-to-hub link from %s: %s", peer, _describe(group))
        finally:
            self._inbound.discard(link)
            link.close()

    async def _listener_handshake(
        self, link: _PeerLink, stream: trio.abc.Stream, decoder: ClusterDecoder, peer: str
    ) -> _SealedStream:
        secret = self.options.secret
        hello = await _read_record(stream, decoder)
        if not isinstance(hello, ClusterHello):
            raise LinkProtocolError(_refusal(hello, "cluster_hello"))
        if hello.version != CLUSTER_VERSION:
            raise LinkProtocolError(f"unsupported hub-to-hub version {hello.version}")
        mine = secrets.token_bytes(NONCE_BYTES)
        nonces, nodes = (hello.nonce, mine), (hello.node_id, self.node_id)
        given = proof(secret, dialler=False, nonces=nonces, nodes=nodes)
        await stream.send_all(encode_cluster(ClusterChallenge(self.node_id, mine, given)))
        answer = await _read_record(stream, decoder)
        if isinstance(answer, ClusterError):
            self.auth_failures.inc()
            raise LinkProtocolError(f"refused by the dialling hub: {answer.message}")
        if not isinstance(answer, ClusterProof):
            raise LinkProtocolError(_refusal(answer, "cluster_proof"))
        if not proof_ok(secret, answer.proof, dialler=True, nonces=nonces, nodes=nodes):
            self.auth_failures.inc()
            log.warning("hub-to-hub link from %s refused: wrong cluster secret", peer)
            await stream.send_all(
                encode_cluster(ClusterError("unauthenticated", "wrong cluster secret"))
            )
            raise LinkProtocolError("wrong cluster secret")
        link.remote = hello.node_id
        await stream.send_all(encode_cluster(ClusterReady()))
        inbound, outbound = session_keys(secret, nonces=nonces, nodes=nodes)
        return _SealedStream(stream, SealedRecords(outbound, inbound), decoder.take_unread())

    async def _serve(
        self, link: _PeerLink, stream: trio.abc.Stream, decoder: ClusterDecoder
    ) -> None:
        """A signed-in link: its writer, its pings, and the reader here until it ends."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.writer)
            nursery.start_soon(self._pinger, link)
            while True:
                with trio.move_on_after(CLUSTER_IDLE_TIMEOUT) as idle:
                    data = await stream.receive_some()
                if idle.cancelled_caught:
                    raise LinkProtocolError(f"silent for {CLUSTER_IDLE_TIMEOUT:g} s")
                if not data:
                    break
                decoder.receive_data(data)
                while (message := decoder.next()) is not None:
                    link.receive(message)
            nursery.cancel_scope.cancel()

    async def _pinger(self, link: _PeerLink) -> None:
        while True:
            await trio.sleep(CLUSTER_PING_INTERVAL)
            link._ping += 1
            link.put(encode_cluster(ClusterPing(link._ping)))


class _SealedStream(trio.abc.Stream):
    """A signed-in link's stream: what is sent is sealed, what arrives is opened
    (:class:`~leapcore.proto.cluster_wire.SealedRecords`). ``unread``: bytes that came
    behind the sign-in, still sealed."""

    def __init__(self, stream: trio.abc.Stream, records: SealedRecords, unread: bytes) -> None:
        self._stream = stream
        self._records = records
        self._unread = unread

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(self._records.seal(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The plaintext of the next whole record(s); b"" at the end of the stream."""
        while True:
            raw: bytes | bytearray = self._unread
            self._unread = b""
            if not raw:
                raw = await self._stream.receive_some()
                if not raw:
                    return b""
            plain = self._records.open(raw)
            if plain:
                return plain

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _read_record(
    stream: trio.abc.Stream, decoder: ClusterDecoder
) -> ClusterRecord | LinkMessage | RelayedData:
    while (message := decoder.next()) is None:
        data = await stream.receive_some()
        if not data:
            raise LinkProtocolError("the other hub closed the link while signing in")
        decoder.receive_data(data)
    return message


def _refusal(message: object, wanted: str) -> str:
    if isinstance(message, ClusterError):
        return f"refused: {message.code}: {message.message}"
    return f"expected {wanted}, got {getattr(message, 'type', type(message).__name__)}"


def _peer_of(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except (OSError, ValueError):
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
