"""The worker daemon (trio): register once, then keep one link to the hub.

:class:`Worker` drives the sans-IO cores: :mod:`leapcore.store.workerstate` (the
identity on disk and the startup table), :mod:`leapcore.proto.link_state` (the
worker's link state machine), :mod:`leapcore.proto.backoff` (retry delays and the
decision after each attempt) and :mod:`leapcore.proto.heartbeat` (idle heartbeats,
the greeting watchdog, latency). Time comes from ``now`` and ``trio.sleep``,
so a ``trio.testing.MockClock`` drives it; jitter from the injected
``uniform``.

One connection attempt (:meth:`Worker.run`):

1. dial; send ``connect`` and, straight after, the keyed first heartbeat;
2. wait for ``worker_greeting`` (10 s, else the attempt ends and the worker
   reconnects);
3. then read, answer and send heartbeats until the link ends. Every outbound
   frame after the first two goes through the link's one
   :class:`~leapcore.peer.linkwriter.LinkWriter` (the client's writer too); queueing it
   counts as traffic for the idle-heartbeat schedule.

``go_away`` records the hub's delay (waited exactly once after the drop);
``deregister`` is acknowledged, the identity is retired (``state.json`` and ``hub.json``
renamed to ``*.deregistered-<UTC time>``, :func:`~leapcore.store.workerstate.retire_state`;
their new paths in :attr:`Worker.retired`) and :meth:`run` returns
:attr:`WorkerExit.DEREGISTERED`. An ``error`` record is judged by
:func:`~leapcore.proto.backoff.classify_link_error`: ``worker_deleted`` from the hub this
worker registered with (its ``hub_id`` is the one in ``hub.json``, or none was recorded)
retires the identity the same way and :meth:`run` returns :attr:`WorkerExit.WIPED`; a
token the hub does not know (``unauthenticated`` before the greeting), or
``worker_deleted`` from a hub with another id, changes no file and raises
:class:`~leapcore.errors.HubMismatch`; ``already_exists`` (the owner has another worker of
this name) raises :class:`~leapcore.errors.AlreadyExists`; ``token_expired`` (the token is
past its expiry) changes no file and raises :class:`~leapcore.errors.TokenExpired`
(``leapcore-worker`` exits 10). Everything else ends the attempt and is retried with backoff.

**Token rotation.** A ``rotate_token`` (the hub's offer of a successor to a token that
expires soon) is saved by replacing ``state.json`` atomically and durably, and only then
acknowledged (``rotate_token_ack``); the hub accepts both tokens until it sees the new one
acknowledged or used, so a crash at any step leaves a token that works.

**The hub.** ``hub.json`` records the hub the worker registered with (its id, its URL and
when). ``hub_url`` may be empty for a registered worker: the recorded URL is used. A
``hub_url`` that differs from the recorded one is used (hubs move) and logged; once a hub
greets the worker with the recorded id, the record's URL is updated. A worker that recorded
no hub id (registered before hubs had ids) records the one of the first hub that greets
it.

**Several hubs.** ``hub_urls`` names the hubs of one deployment (one database, one hub id),
at most :data:`~leapcore.proto.limits.MAX_HUB_URLS`, all parsed at construction.
Registration takes the first hub that answers; the connect loop moves through the list by
the passes of :class:`~leapcore.proto.hub_failover.HubFailover` (a dead hub is left at once,
the backoff waits only after a whole pass failed, a ``go_away`` moves on without its delay
while other URLs remain). ``hub.json`` keeps the URL the hub was last reached at. A hub of the
list that refuses the token, or greets the worker under another hub id, is logged (ERROR)
and dropped for the life of the process, no file changed; only the last usable one's
refusal raises :class:`~leapcore.errors.HubMismatch`.

Every ``connect`` carries the worker's ``name`` and ``labels``, which the hub records,
and its capabilities, ``os`` and ``arch`` (:mod:`leapcore.worker.advertise`; the
capabilities are those of :attr:`Worker.services` at that connect).

Channels: once greeted, a :class:`~leapcore.worker.channels.ChannelServer` answers every
``channel_request`` (checks, then the responder handshake with its signature computed by
the signing pool, each open in its own task) and routes channel traffic; the services a
channel offers are the :class:`~leapcore.peer.channel.Services` table given to the worker
(:func:`~leapcore.worker.builtin_services.default_services`: ``info``; ``ping`` is built in).
The worker's own requests -- ``worker.keys`` and opens of channels to its siblings
(:meth:`Worker.open_channel`) -- go through a :class:`~leapcore.peer.hubsession.PeerLink`,
as a client's do (so an open answered after its caller gave up is closed). When the
link ends, every channel on it ends. The channels are bounded (see
:mod:`leapcore.worker.channels`): ``max_channels`` per link
(:data:`~leapcore.worker.channels.MAX_CHANNELS`, 256), ``max_incomplete_chunked``
unfinished chunked messages per channel (4) and ``max_channel_bytes`` held per channel
(default twice ``max_message_size``).

The worker's ``name``, ``version`` and ``labels`` must fit the link protocol's field limits
(:mod:`leapcore.proto.link_fields`: names 128 characters, versions 64, at most 16 labels of
64-character keys and 256-character values, all printable): the constructor raises
:class:`~leapcore.errors.ConfigError` otherwise.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import logging
import os
import shlex
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from .._version import __version__
from ..crypto.keys import PublicKeyBundle
from ..crypto.mode import parse_encryption_mode
from ..errors import (
    AlreadyExists,
    ConfigError,
    HubMismatch,
    KeyMismatch,
    LeapcoreError,
    LinkClosed,
    LinkProtocolError,
    RegistrationRejected,
    TokenExpired,
)
from ..net.dial import TRANSPORTS, connect_link
from ..net.pipe import HubAddress, LinkPipe, parse_hub_url
from ..net.security_log import security_event
from ..peer.channel import CallReport, Channel, Services
from ..peer.hubsession import PeerLink
from ..peer.linkwriter import LinkWriter
from ..peer.opener import open_channel
from ..proto.backoff import (
    Backoff,
    Outcome,
    ReconnectAction,
    ReconnectPolicy,
    classify_link_error,
    system_uniform,
)
from ..proto.call_audit import call_record, channel_record
from ..proto.capabilities import parse_concurrency
from ..proto.heartbeat import GreetingWatchdog, HeartbeatSchedule, LatencyMeter
from ..proto.hub_failover import HubFailover, check_hub_urls
from ..proto.limits import (
    AUDIT_LOG_MAX_BYTES,
    AUDIT_LOG_RETENTION_DAYS,
    DEFAULT_MAX_INCOMPLETE,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_CHANNELS,
    OPEN_TIMEOUT,
    validate_max_message_size,
)
from ..proto.link_codec import (
    PROTOCOL_VERSION,
    ChannelData,
    ChannelRequest,
    Connect,
    Deregister,
    DeregisterAck,
    ErrorMessage,
    GoAway,
    Heartbeat,
    HeartbeatAck,
    LinkMessage,
    Register,
    Registered,
    RotateToken,
    RotateTokenAck,
    WorkerGreeting,
)
from ..proto.link_fields import check_fields
from ..proto.link_state import LinkConnection, LinkRole
from ..proto.pins import PinDecision
from ..proto.tunnel_policy import ALLOW_ALL, TunnelPolicy
from ..proto.worker_policy import WorkerPolicy
from ..store.auditlog import AuditLog
from ..store.paths import cross_worker_pins_path, worker_policy_path
from ..store.pinstore import PinStore
from ..store.policyfile import load_policy
from ..store.workerstate import (
    HUB_FILE,
    STATE_FILE,
    UNREGISTERED,
    HubRecord,
    StartupAction,
    WorkerState,
    ensure_keys,
    format_utc,
    load_hub,
    load_state,
    retire_state,
    save_hub,
    save_state,
    startup_action,
)
from .advertise import capabilities, host_platform
from .builtin_services import default_services
from .channels import ChannelServer, check_bounds
from .exec import ExecService
from .pty import PtyService
from .signpool import InlineSigner, OnDemandSigner, Signer
from .tcp import TcpTunnels

__all__ = [
    "HUB_REQUIRED",
    "PERMANENT_REGISTRATION_CODES",
    "Worker",
    "WorkerExit",
    "parse_labels",
]

log = logging.getLogger("leapcore.worker")

#: Hub error codes that end registration for good (everything else is retried).
PERMANENT_REGISTRATION_CODES: Final = frozenset(
    {"unauthenticated", "invalid_argument", "permission_denied", "already_exists"}
)
#: An unregistered worker was not told its hub (there is no default hub).
HUB_REQUIRED: Final = (
    "hub URL is required: pass --hub URL (or set LEAPCORE_WORKER_HUB, or hub in the config file)"
)
#: Seconds one registration attempt may take before it counts as a transient failure.
REGISTER_TIMEOUT: Final = 30.0
#: Seconds allowed to flush the deregister ack before the link is torn down.
FLUSH_TIMEOUT: Final = 5.0
#: Test-only hook (never set it in production): ``before-save`` or ``after-save`` makes the
#: worker SIGKILL itself on a ``rotate_token``, before writing the new token or after
#: writing it and before acknowledging it, so that tests can crash a real worker between
#: the steps of a token rotation.
ROTATION_CRASH_ENV: Final = "LEAPCORE_TEST_ROTATION_CRASH"
#: How a cross-worker key mismatch says to clear the pin.
CROSS_WORKER_HINT: Final = (
    "pin previously recorded; clear with `leapcore-worker cross-worker-pins remove "
    "--data-dir {data_dir} --target-worker-id={{worker_id}}`"
)
Dial = Callable[[], AbstractAsyncContextManager[LinkPipe]]


class _CrossWorkerPins(PinStore):
    """The worker's pins of its siblings: a key mismatch is logged once, here, where it is
    found (workers do not report mismatches to the hub), then raised as ever."""

    def __init__(self, path: Path, *, hint: str, hub_url: str) -> None:
        super().__init__(path, hint=hint)
        self.hub_url = hub_url

    def verify(self, worker_id: str, keys: PublicKeyBundle) -> PinDecision:
        try:
            return super().verify(worker_id, keys)
        except KeyMismatch as exc:
            security_event(
                log,
                "key_mismatch",
                "cross-worker channel to %s not opened: the keys the hub gave (%s) are not the "
                "pinned ones (%s)",
                worker_id,
                exc.actual,
                exc.expected,
                reason="keys differ from the pin",
                peer=self.hub_url,
                worker_id=worker_id,
                expected_fingerprint=exc.expected,
                presented_fingerprint=exc.actual,
            )
            raise


def _address_key(address: HubAddress) -> tuple[str, str, int, str]:
    return (address.scheme, address.host.lower(), address.port, address.unix_path)


def _check_addresses(urls: Sequence[str]) -> None:
    """Parse every hub URL (:func:`~leapcore.net.pipe.parse_hub_url`) and refuse two that name
    the same place (``http://h`` and ``http://h:80``): :class:`ConfigError`."""
    seen: dict[tuple[str, str, int, str], str] = {}
    for url in urls:
        key = _address_key(parse_hub_url(url))
        if key in seen:
            raise ConfigError(f"hub URLs {seen[key]!r} and {url!r} name the same hub address")
        seen[key] = url


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (white space around items ignored; empty text: no labels)."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"labels: {item!r} is not key=value")
        if key in labels:
            raise ConfigError(f"labels: {key!r} is given twice")
        labels[key] = value.strip()
    return labels


class _Transient(Exception):
    """An attempt failed in a way that is retried (never escapes this module)."""


class WorkerExit(enum.Enum):
    """Why :meth:`Worker.run` returned."""

    #: :meth:`Worker.stop` was called.
    STOPPED = "stopped"
    #: The hub deregistered the worker: acknowledged, identity retired (files renamed).
    DEREGISTERED = "deregistered"
    #: The hub it registered with says it deleted the worker (``worker_deleted``):
    #: identity retired (files renamed).
    WIPED = "wiped"


class _MessageReader:
    """Whole, checked messages from a pipe through one :class:`LinkConnection`."""

    def __init__(self, pipe: LinkPipe, conn: LinkConnection) -> None:
        self._pipe = pipe
        self._conn = conn
        #: Bytes read from the pipe so far.
        self.received = 0

    async def next(self) -> LinkMessage:
        while True:
            message = self._conn.next_message()
            if message is not None:
                return message
            data = await self._pipe.receive()
            self.received += len(data)
            self._conn.receive_data(data)


@attrs.define
class _Attempt:
    """One connection attempt's state (a fresh one per dial)."""

    pipe: LinkPipe
    conn: LinkConnection
    schedule: HeartbeatSchedule
    watchdog: GreetingWatchdog
    meter: LatencyMeter
    writer: LinkWriter
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    greeted: trio.Event = attrs.Factory(trio.Event)
    result: Outcome | WorkerExit | None = None
    nursery: trio.Nursery | None = None
    channels: ChannelServer | None = None
    hub: PeerLink | None = None
    reader: _MessageReader | None = None
    #: Bytes written before the writer existed (``connect`` and the first heartbeat).
    sent_directly: int = 0

    def finish(self, result: Outcome | WorkerExit) -> None:
        if self.result is None:
            self.result = result
        self.scope.cancel()


class Worker:
    """A worker's daemon: registration, then the connect loop (see the module docstring).

    ``dial`` replaces the network (tests pass an in-memory pipe); by default it is
    :func:`~leapcore.net.dial.connect_link` to ``hub_url`` with ``transport`` and
    ``ca_file``.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        hub_url: str = "",
        hub_urls: Sequence[str] = (),
        name: str,
        transport: str = "websocket",
        ca_file: str | None = None,
        version: str = __version__,
        labels: Mapping[str, str] | None = None,
        encryption_mode: str = "post-quantum",
        registration_key: str | None = None,
        uniform: Callable[[], float] = system_uniform,
        now: Callable[[], float] = trio.current_time,
        dial: Dial | None = None,
        signer: Signer | None = None,
        services: Services | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_channels: int = MAX_CHANNELS,
        max_incomplete_chunked: int = DEFAULT_MAX_INCOMPLETE,
        max_channel_bytes: int | None = None,
        tunnel_policy: TunnelPolicy | None = None,
        workspace_root: Path | str | None = None,
        policy_file: Path | str | None = None,
        policy: WorkerPolicy | None = None,
        concurrency: Mapping[str, int] | None = None,
        audit_log: Path | str | None = None,
        audit_max_bytes: int = AUDIT_LOG_MAX_BYTES,
        audit_retention_days: int = AUDIT_LOG_RETENTION_DAYS,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ConfigError(f"unknown transport {transport!r}: use websocket or h2")
        if hub_url and hub_urls:
            raise ConfigError("give the hub as hub_url or hub_urls, not both")
        #: The hub URLs given (empty: ``hub.json``'s, once :meth:`prepare` has read it).
        self.hub_urls = check_hub_urls(list(hub_urls) if hub_urls else [hub_url] if hub_url else [])
        if dial is None:
            _check_addresses(self.hub_urls)  # bad URLs are configuration errors, before any dial
        self.data_dir = Path(data_dir)
        #: Where the ``workspace`` service keeps clones and worktrees.
        self.workspace_root = (
            Path(workspace_root) if workspace_root else self.data_dir / "workspaces"
        )
        #: The URL of the hub dialled now or last ("" until :meth:`prepare` takes
        #: ``hub.json``'s when no URL was given).
        self.hub_url = self.hub_urls[0] if self.hub_urls else ""
        self._own_dial = dial is None
        self.name = name
        self.transport = transport
        self.ca_file = ca_file
        self.version = version
        self.labels = dict(labels or {})
        check_fields(Register(PROTOCOL_VERSION, "", name, version, self.labels), error=ConfigError)
        self.encryption_mode = str(parse_encryption_mode(encryption_mode))
        self.registration_key = registration_key or None
        self._uniform = uniform
        self._now = now
        self._dial = dial if dial is not None else self._dial_hub
        #: Computes handshake signatures (``None``: :meth:`run` opens a process pool).
        self.signer = signer
        #: The built-in services' live tables, set by
        #: :func:`~leapcore.worker.builtin_services.default_services` (None when the worker
        #: was given its own table): what :mod:`leapcore.worker.metrics` counts.
        self.exec_service: ExecService | None = None
        self.pty_service: PtyService | None = None
        self.tcp_tunnels: TcpTunnels | None = None
        #: The methods channels offer
        #: (default: :func:`~leapcore.worker.builtin_services.default_services`).
        self.services = services if services is not None else default_services(self)
        #: Calls in progress at once per capability (``{"exec": 8}``); one more is refused
        #: ``busy``.
        self.services.limits.update(parse_concurrency(concurrency or {}))
        #: Every call and refused channel, one JSON line each (None: ``audit_log="off"``).
        self.audit_log: AuditLog | None = None
        if audit_log != "off":
            self.audit_log = AuditLog(
                Path(audit_log) if audit_log else self.data_dir / "audit.log",
                max_bytes=audit_max_bytes,
                retention_days=audit_retention_days,
            )
            self.services.observers.append(self._audit_call)
        self.max_message_size = validate_max_message_size(max_message_size)
        check_bounds(max_channels=max_channels, max_incomplete_chunked=max_incomplete_chunked)
        if max_channel_bytes is not None and (
            type(max_channel_bytes) is not int or max_channel_bytes < max_message_size
        ):
            raise ConfigError(
                f"max_channel_bytes must be an integer >= max_message_size ({max_message_size}), "
                f"got {max_channel_bytes!r}"
            )
        #: Channels open or opening on one link (more are refused ``resource_exhausted``).
        self.max_channels = max_channels
        #: Unfinished chunked messages per channel.
        self.max_incomplete_chunked = max_incomplete_chunked
        #: Bytes held per channel (None: twice ``max_message_size``).
        self.max_channel_bytes = max_channel_bytes
        #: The ``tunnel_allow`` / ``tunnel_deny`` settings' rules (default: anywhere); the
        #: policy file's ``[tunnel]`` takes their place (:attr:`tunnel_policy`).
        self.tunnel_settings = tunnel_policy if tunnel_policy is not None else ALLOW_ALL
        #: Where :meth:`reload_policy` reads the policy (None: nowhere; ``policy`` given).
        self.policy_file: Path | None = (
            Path(policy_file)
            if policy_file
            else (None if policy is not None else worker_policy_path(self.data_dir))
        )
        self._policy_required = bool(policy_file)
        #: What the owner may make this worker do (:mod:`leapcore.proto.worker_policy`);
        #: read at each call, replaced whole by :meth:`reload_policy`.
        self.policy = self._settled(policy) if policy is not None else self._read_policy()
        self.state: WorkerState | None = None
        #: The hub this worker registered with (``hub.json``; None: none recorded).
        self.hub_record: HubRecord | None = None
        #: Where a retired identity's files went (after a deregistration or deletion).
        self.retired: list[Path] = []
        self._hub_resolved = False
        self._announced = False
        #: The ``error`` record that ended the last attempt (for the refusal's message).
        self._rejection: ErrorMessage | None = None
        #: When to dial again after a link ends.
        self.reconnect_policy = ReconnectPolicy(Backoff(uniform=uniform))
        #: Which of :attr:`hub_urls` to dial, and when (None until there is a URL).
        self.failover: HubFailover | None = (
            HubFailover(self.hub_urls, self.reconnect_policy) if self.hub_urls else None
        )
        #: The current attempt's hub sent ``go_away``.
        self._went_away = False
        #: The greeting of the current link (None while not connected).
        self.greeting: WorkerGreeting | None = None
        #: Connection attempts made by :meth:`run` so far.
        self.attempts = 0
        #: Links the hub greeted so far.
        self.greetings = 0
        #: Moves to the next hub URL at once (a failed dial, a dropped link or a ``go_away``
        #: while other URLs were left in the pass).
        self.hub_moves = 0
        #: Channel requests answered on every link so far, by result: ``opened``, or the
        #: refusal's code (:class:`~leapcore.worker.channels.ChannelServer`).
        self.channel_opens: collections.Counter[str] = collections.Counter()
        #: Bytes written to and read from the links that ended (see :meth:`link_bytes`).
        self._bytes_sent = 0
        self._bytes_received = 0
        #: When (``now``) the worker last went without a greeted link (None while online).
        self._offline_since: float | None = None
        #: True while :meth:`run`'s connect loop runs.
        self.running = False
        #: Why :meth:`run` returned (None until it has).
        self.exit: WorkerExit | None = None
        self._attempt: _Attempt | None = None
        self._run_scope: trio.CancelScope | None = None
        self._register_scope: trio.CancelScope | None = None
        self._stopped = False
        #: Set, then replaced, each time a link is greeted (see :meth:`wait_online`).
        self._greeting_event = trio.Event()

    # -- audit ----------------------------------------------------------------------

    def _audit_call(self, report: CallReport) -> None:
        if self.audit_log is not None:
            self.audit_log.write(
                call_record(
                    at=time.time(),
                    channel_id=report.channel_id,
                    user_id=report.user_id,
                    method=report.method,
                    payload=report.payload,
                    outcome=report.outcome,
                    message=report.message,
                    duration=report.duration,
                    bytes_in=report.bytes_in,
                    bytes_out=report.bytes_out,
                    notes=report.notes,
                )
            )

    def _audit_refused_channel(self, request: ChannelRequest, code: str, message: str) -> None:
        if self.audit_log is not None:
            self.audit_log.write(
                channel_record(
                    at=time.time(),
                    channel_id=request.channel_id,
                    user_id=request.user_id,
                    code=code,
                    message=message,
                )
            )

    # -- policy ---------------------------------------------------------------------

    @property
    def tunnel_policy(self) -> TunnelPolicy:
        """Where the ``tcp`` service may connect: the policy file's ``[tunnel]`` rules, else
        the ``tunnel_allow`` / ``tunnel_deny`` settings'. Read at each open."""
        tunnel = self.policy.tunnel
        return self.tunnel_settings if tunnel is None else tunnel

    @tunnel_policy.setter
    def tunnel_policy(self, rules: TunnelPolicy) -> None:
        self.tunnel_settings = rules

    def _settled(self, policy: WorkerPolicy) -> WorkerPolicy:
        settings = self.tunnel_settings
        if policy.tunnel is not None and (settings.allow or settings.deny):
            raise ConfigError(
                f"{policy.source or 'the policy'}: tunnel rules are set both in [tunnel] and "
                "in the tunnel_allow / tunnel_deny settings; keep one of them"
            )
        return policy

    def _read_policy(self) -> WorkerPolicy:
        if self.policy_file is None:
            return self.policy
        return self._settled(load_policy(self.policy_file, required=self._policy_required))

    def reload_policy(self) -> bool:
        """Read the policy file again (what ``kill -HUP`` does): True when the new policy
        is in force; False, logged, when the file is broken -- the policy in force stays
        (a broken file never opens anything up)."""
        try:
            policy = self._read_policy()
        except ConfigError as exc:
            log.warning("policy not reloaded, the one in force stays: %s", exc)
            return False
        self.policy = policy
        log.info("policy reloaded from %s", policy.source or f"{self.policy_file} (no file)")
        return True

    # -- status ---------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """True while a link is up and the hub has greeted the worker."""
        return self._attempt is not None and self._attempt.greeted.is_set()

    async def wait_online(self) -> None:
        """Return once the hub has greeted the worker: now if it is online, else on the next
        greeting (of this link or a later one)."""
        while not self.online:
            await self._greeting_event.wait()

    def open_channel(
        self, worker_id: str, *, timeout: float = OPEN_TIMEOUT
    ) -> AbstractAsyncContextManager[Channel]:
        """``async with worker.open_channel(sibling_id) as ch:`` a channel to another worker
        of the same owner, through the hub, its keys pinned in ``cross_worker_pins.json``.
        Raises :class:`~leapcore.errors.LinkClosed` while the worker is offline."""
        attempt = self._attempt
        if attempt is None or attempt.hub is None:
            raise LinkClosed("the worker is not connected to the hub")
        return open_channel(attempt.hub, worker_id, pins=self.cross_worker_pins, timeout=timeout)

    @property
    def cross_worker_pins(self) -> PinStore:
        """This worker's pins of its siblings (``<data-dir>/cross_worker_pins.json``); a
        mismatch is logged (security event ``key_mismatch``) where it is found."""
        return _CrossWorkerPins(
            cross_worker_pins_path(self.data_dir),
            hint=CROSS_WORKER_HINT.format(data_dir=shlex.quote(str(self.data_dir))),
            hub_url=self.hub_url,
        )

    @property
    def channel_server(self) -> ChannelServer | None:
        """The current link's channels (None while no link is greeted)."""
        return self._attempt.channels if self._attempt is not None else None

    def link_bytes(self) -> tuple[int, int]:
        """``(sent, received)``: bytes written to and read from every link so far (link
        framing included; the current link's as far as they went)."""
        sent, received = self._bytes_sent, self._bytes_received
        attempt = self._attempt
        if attempt is not None:
            sent += attempt.sent_directly + attempt.writer.written
            received += attempt.reader.received if attempt.reader is not None else 0
        return sent, received

    def offline_for(self) -> float | None:
        """Seconds (by ``now``) since the worker last had a greeted link, or since
        :meth:`run` started if it never had one; None while online or before :meth:`run`."""
        if self.online or self._offline_since is None:
            return None
        return max(0.0, self._now() - self._offline_since)

    @property
    def hub_index(self) -> int:
        """The position in :attr:`hub_urls` of the hub dialled now or last (0: the first)."""
        return self.hub_urls.index(self.hub_url) if self.hub_url in self.hub_urls else 0

    @property
    def latency(self) -> float | None:
        """The last heartbeat round trip (seconds) on the current link, if measured."""
        return self._attempt.meter.last if self._attempt is not None else None

    # -- startup --------------------------------------------------------------------

    def prepare(self) -> StartupAction:
        """Startup (behavior.md §3.3): load state and ``hub.json``, settle the hub URL, make
        and save keys, apply the table.

        Without a hub URL an unregistered worker is refused (:data:`HUB_REQUIRED`) before any
        file is written, and a registered one uses ``hub.json``'s. The two refusals of the
        table raise :class:`~leapcore.errors.ConfigError` with the messages of
        :mod:`leapcore.store.workerstate`; the key is not consumed.
        """
        state = load_state(self.data_dir)
        self._settle_hub(state)
        state = ensure_keys(self.data_dir, state)
        self.state = state
        return startup_action(state, self.registration_key)

    def _settle_hub(self, state: WorkerState) -> None:
        """Read ``hub.json`` and choose the URL to dial (see the module docstring)."""
        if self._hub_resolved:
            return
        saved = load_hub(self.data_dir) if state.registered else None
        self.hub_record = saved
        if not self.hub_urls:
            if saved is None:
                if state.registered:
                    raise ConfigError(
                        f"{HUB_REQUIRED}: this worker registered before its hub was recorded "
                        f"(no {self.data_dir / HUB_FILE})"
                    )
                raise ConfigError(HUB_REQUIRED)
            self.hub_urls = (saved.hub_url,)
            log.info(
                "no hub URL given: using %s, the hub this worker registered with (hub id %s)",
                saved.hub_url,
                saved.hub_id or "not recorded",
            )
            if self._own_dial:
                parse_hub_url(saved.hub_url)
        elif saved is not None and saved.hub_url not in self.hub_urls:
            log.info(
                "using hub URL %s; this worker registered with hub %s at %s (the hub id is "
                "checked: a hub that does not know this worker changes nothing)",
                ", ".join(self.hub_urls),
                saved.hub_id or "(id not recorded)",
                saved.hub_url,
            )
        # Passes start at the URL that worked last (hub.json's), when it is in the list.
        self.failover = HubFailover(
            self.hub_urls, self.reconnect_policy, preferred=saved.hub_url if saved else ""
        )
        self.hub_url = self.failover.current
        if len(self.hub_urls) > 1:
            log.info("hub URLs, in order: %s", ", ".join(self.hub_urls))
        self._hub_resolved = True

    def _announce(self, state: WorkerState) -> None:
        """Log, once, as the connect loop starts, who this worker is: its fingerprint (what
        owners pin) and its id."""
        if self._announced or state.keys is None:
            return
        self._announced = True
        log.info(
            "worker fingerprint %s (worker id %s, %s mode)",
            state.keys.public.fingerprint,
            state.worker_id or "none yet: unregistered",
            self.encryption_mode,
        )

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> WorkerExit:
        """:meth:`prepare`, :meth:`register` if needed, then :meth:`run`."""
        if self.prepare() is StartupAction.REGISTER and await self.register() is None:
            return WorkerExit.STOPPED
        return await self.run(task_status=task_status)

    # -- registration ----------------------------------------------------------------

    async def register(self) -> WorkerState | None:
        """Consume the registration key; retried with backoff until it succeeds or is
        refused for good (:class:`RegistrationRejected`). The key is never saved.

        Returns the saved state, or ``None`` if :meth:`stop` was called first.
        """
        if not self.registration_key:
            raise ConfigError("registration key is required")
        failover = self.failover
        if failover is None:
            raise ConfigError(HUB_REQUIRED)
        if self.state is None or self.state.keys is None:
            self.state = ensure_keys(self.data_dir, load_state(self.data_dir))
        backoff = Backoff(uniform=self._uniform)
        registered: Registered | None = None
        with trio.CancelScope() as scope:
            self._register_scope = scope
            if self._stopped:
                scope.cancel()
            while registered is None:
                # One pass over the URLs, at once; the backoff between passes.
                failures: list[str] = []
                for url in failover.order():
                    self.hub_url = url
                    try:
                        registered = await self._register_once(self.registration_key)
                    except _Transient as exc:
                        if len(self.hub_urls) == 1:
                            failures.append(str(exc))
                            continue
                        failures.append(f"{url}: {exc}")
                        log.info("registration at %s failed: %s; trying the next hub URL", url, exc)
                        continue
                    failover.use(url)
                    break
                if registered is None:
                    delay = backoff.next()
                    log.warning(
                        "registration failed: %s; retrying in %.1fs", "; ".join(failures), delay
                    )
                    await trio.sleep(delay)
        self._register_scope = None
        if registered is None:
            return None  # stop() was called
        state = attrs.evolve(
            self.state, worker_id=registered.worker_id, auth_token=registered.auth_token
        )
        # The hub first: credentials never exist without the record of who issued them.
        record = HubRecord(registered.hub_id, self.hub_url, format_utc(dt.datetime.now(dt.UTC)))
        save_hub(self.data_dir, record)
        path = save_state(self.data_dir, state)
        self.state = state
        self.hub_record = record
        self._hub_resolved = True
        log.info(
            "registered as %s; credentials saved to %s (hub %s at %s)",
            state.worker_id,
            path,
            registered.hub_id or "(id not given)",
            self.hub_url,
        )
        return state

    async def _register_once(self, key: str) -> Registered:
        conn = LinkConnection(LinkRole.WORKER)
        try:
            with trio.fail_after(REGISTER_TIMEOUT):
                async with self._dial() as pipe:
                    message = Register(PROTOCOL_VERSION, key, self.name, self.version, self.labels)
                    await pipe.send(conn.send(message))
                    answer = await _MessageReader(pipe, conn).next()
        except (LinkClosed, LinkProtocolError, OSError, trio.TooSlowError) as exc:
            raise _Transient(str(exc) or type(exc).__name__) from None
        if isinstance(answer, ErrorMessage):
            if answer.code in PERMANENT_REGISTRATION_CODES:
                raise RegistrationRejected(answer.code, answer.message)
            raise _Transient(f"{answer.code}: {answer.message}")
        assert isinstance(answer, Registered)  # the state machine allows nothing else
        return answer

    # -- the connect loop ------------------------------------------------------------

    def stop(self) -> None:
        """End :meth:`run` gracefully (it returns :attr:`WorkerExit.STOPPED`).

        A live link is closed cleanly (the hub sees the end at once); a backoff wait
        or a registration in progress is cancelled.
        """
        self._stopped = True
        if self._attempt is not None:
            self._attempt.finish(WorkerExit.STOPPED)
        elif self._run_scope is not None:
            self._run_scope.cancel()
        if self._register_scope is not None:
            self._register_scope.cancel()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> WorkerExit:
        """Connect and reconnect until stopped, deregistered or wiped (behavior.md §1.3).

        A post-quantum worker without an injected ``signer`` signs handshakes in a
        :class:`~leapcore.worker.signpool.SigningPool` of processes, started at the first open
        (:class:`~leapcore.worker.signpool.OnDemandSigner`) and closed when this call returns.
        """
        self.running, self.exit = True, None
        self._offline_since = self._now()
        try:
            if self.signer is None and self.encryption_mode == "post-quantum":
                async with OnDemandSigner() as pool:
                    self.signer = pool
                    try:
                        self.exit = await self._run(task_status=task_status)
                    finally:
                        self.signer = None
            else:
                self.exit = await self._run(task_status=task_status)
            return self.exit
        finally:
            self.running = False

    async def _run(self, *, task_status: Any) -> WorkerExit:
        if self.state is None:
            self.state = load_state(self.data_dir)
        if not self.state.registered or self.state.keys is None:
            raise ConfigError(UNREGISTERED)
        self._settle_hub(self.state)
        self._announce(self.state)
        with trio.CancelScope() as scope:
            self._run_scope = scope
            if self._stopped:
                scope.cancel()
            task_status.started()
            failover = self.failover
            assert failover is not None  # _settle_hub made it
            while not self._stopped:
                self.hub_url = failover.current
                started = self._now()
                self.attempts += 1
                self._rejection = None
                self._went_away = False
                result = await self._connect_once()
                if isinstance(result, WorkerExit):
                    return result
                decision = failover.after_attempt(
                    started, self._now(), result, went_away=self._went_away
                )
                if result is Outcome.HUB_MISMATCH and decision.action is ReconnectAction.RETRY:
                    log.error(
                        "%s; %s is not dialled again: it is not this worker's deployment",
                        self._mismatch(),
                        self.hub_url,
                    )
                if decision.action is ReconnectAction.WIPE_AND_EXIT:
                    self._retire("the hub it registered with deleted this worker")
                    return WorkerExit.WIPED
                if decision.action is ReconnectAction.HUB_MISMATCH:
                    raise self._mismatch()
                if decision.action is ReconnectAction.TOKEN_EXPIRED:
                    raise self._expired()
                if decision.action is ReconnectAction.FAIL:
                    rejection = self._rejection
                    raise AlreadyExists(
                        f"the hub refused this worker's name {self.name!r}: "
                        f"{rejection.message if rejection is not None else 'already_exists'}"
                    )
                if decision.action is not ReconnectAction.RETRY or self._stopped:
                    break
                if decision.delay == 0 and failover.current != self.hub_url:
                    log.info("link to %s ended; trying %s now", self.hub_url, failover.current)
                    self.hub_moves += 1
                    continue
                log.info("disconnected; reconnecting in %.3fs", decision.delay)
                await trio.sleep(decision.delay)
        self._run_scope = None
        return WorkerExit.STOPPED

    @asynccontextmanager
    async def _dial_hub(self) -> AsyncIterator[LinkPipe]:
        async with connect_link(self.hub_url, transport=self.transport, ca_file=self.ca_file) as p:
            yield p

    async def _connect_once(self) -> Outcome | WorkerExit:
        try:
            async with self._dial() as pipe:
                return await self._serve_link(pipe)
        except (LinkClosed, LinkProtocolError, OSError) as exc:
            log.info("link ended: %s", exc)
            return Outcome.TRANSIENT
        finally:
            attempt = self._attempt
            if attempt is not None:
                sent, received = self.link_bytes()
                self._bytes_sent, self._bytes_received = sent, received
                if attempt.greeted.is_set():
                    self._offline_since = self._now()
            self._attempt = None
            self.greeting = None

    async def _serve_link(self, pipe: LinkPipe) -> Outcome | WorkerExit:
        state = self.state
        assert state is not None and state.keys is not None
        conn = LinkConnection(LinkRole.WORKER)
        connected_at = self._now()
        schedule = HeartbeatSchedule(connected_at)
        # Everything queued counts as traffic for the idle-heartbeat schedule.
        writer = LinkWriter(pipe, conn, on_queued=lambda: schedule.on_sent(self._now()))
        attempt = _Attempt(
            pipe, conn, schedule, GreetingWatchdog(connected_at), LatencyMeter(), writer
        )
        self._attempt = attempt
        public = state.keys.public
        first = Heartbeat(
            attempt.meter.probe(connected_at),
            encryption_mode=self.encryption_mode,
            public_key=public.x25519,
            mlkem_public_key=public.mlkem,
            slhdsa_public_key=public.slhdsa,
        )
        connect = Connect(
            PROTOCOL_VERSION,
            state.auth_token,
            self.name,
            dict(self.labels),
            capabilities(self.services),
            *host_platform(),
        )
        # Written directly, before the queue exists (behavior.md §2.1).
        try:
            for message in (connect, first):
                data = conn.send(message)
                await pipe.send(data)
                attempt.sent_directly += len(data)
        except LinkClosed:
            # The hub may have refused the connect and closed: read once for its reason.
            with trio.move_on_after(FLUSH_TIMEOUT):
                answer = await _MessageReader(pipe, conn).next()
                if isinstance(answer, ErrorMessage):
                    result = await self._handle(attempt, answer)
                    if result is not None:
                        return result
            raise
        attempt.schedule.on_sent(self._now())
        with attempt.scope:
            async with trio.open_nursery() as nursery:
                attempt.nursery = nursery
                nursery.start_soon(self._writer, attempt)
                nursery.start_soon(self._reader, attempt)
                nursery.start_soon(self._heartbeats, attempt)
                nursery.start_soon(self._watchdog, attempt)
        if attempt.channels is not None:
            attempt.channels.close_all("link_lost", "the link to the hub ended")
        if attempt.hub is not None:
            attempt.hub.fail(LinkClosed("the link to the hub ended"))
        return attempt.result if attempt.result is not None else Outcome.TRANSIENT

    def _enqueue_nowait(self, attempt: _Attempt, message: LinkMessage) -> bool:
        """:meth:`_enqueue` if the queue has room now; False (nothing queued) if it has not."""
        if attempt.result is not None:
            return True  # the attempt is ending: dropped, as _enqueue drops it
        try:
            return attempt.writer.send_nowait(message)
        except LinkClosed:
            return True

    async def _enqueue(self, attempt: _Attempt, message: LinkMessage) -> None:
        """The one way out after the first two frames (the link's
        :class:`~leapcore.peer.linkwriter.LinkWriter`); once the attempt is ending, what is
        sent is dropped."""
        if attempt.result is not None:
            return  # the attempt is ending; the link may already be closed
        try:
            await attempt.writer.send(message)
        except LinkClosed:
            return

    async def _enqueue_many(self, attempt: _Attempt, messages: Sequence[LinkMessage]) -> None:
        """:meth:`_enqueue` for several messages: one item, one transport write."""
        if attempt.result is not None:
            return
        try:
            await attempt.writer.send_many(messages)
        except LinkClosed:
            return

    async def _writer(self, attempt: _Attempt) -> None:
        try:
            await attempt.writer.run()
        except LinkClosed as exc:
            log.info("link ended while sending: %s", exc)
            attempt.finish(Outcome.TRANSIENT)

    async def _watchdog(self, attempt: _Attempt) -> None:
        deadline = attempt.watchdog.deadline()
        if deadline is None:  # the greeting was read before this task first ran
            return
        with trio.move_on_at(deadline):
            await attempt.greeted.wait()
        if attempt.watchdog.expired(self._now()):
            log.warning(
                "no greeting from the hub within %ss; reconnecting", GreetingWatchdog.TIMEOUT
            )
            attempt.finish(Outcome.TRANSIENT)

    async def _heartbeats(self, attempt: _Attempt) -> None:
        schedule = attempt.schedule
        while True:
            await trio.sleep_until(schedule.next_deadline())
            now = self._now()
            if schedule.poll(now):
                await self._enqueue(attempt, Heartbeat(attempt.meter.probe(now)))

    async def _reader(self, attempt: _Attempt) -> None:
        reader = attempt.reader = _MessageReader(attempt.pipe, attempt.conn)
        try:
            while True:
                message = await reader.next()
                result = await self._handle(attempt, message)
                if result is not None:
                    attempt.finish(result)
                    return
        except (LinkClosed, LinkProtocolError) as exc:
            log.info("link ended: %s", exc)
            attempt.finish(Outcome.TRANSIENT)

    async def _handle(self, attempt: _Attempt, message: LinkMessage) -> Outcome | WorkerExit | None:
        if type(message) is ChannelData and attempt.hub is not None:
            attempt.hub.handle(message)  # the hot path: no walk through the record types
            return None
        if isinstance(message, WorkerGreeting):
            if self._foreign(message):
                return Outcome.HUB_MISMATCH
            attempt.watchdog.on_greeting()
            attempt.greeted.set()
            self.greeting = message
            self.greetings += 1
            self._offline_since = None
            self._greeting_event.set()
            self._greeting_event = trio.Event()
            log.info(
                "connected as %s (owner %s) to %s",
                message.worker_id,
                message.owner_name,
                self.hub_url,
            )
            if self.failover is not None:
                self.failover.greeted()
            self._record_hub(message)
            if attempt.channels is None and attempt.nursery is not None:
                assert self.state is not None and self.state.keys is not None
                attempt.channels = ChannelServer(
                    keypair=self.state.keys,
                    mode=self.encryption_mode,
                    owner_id=message.owner_id,
                    send=lambda m: self._enqueue(attempt, m),
                    send_many=lambda ms: self._enqueue_many(attempt, ms),
                    send_nowait=lambda m: self._enqueue_nowait(attempt, m),
                    signer=self.signer if self.signer is not None else InlineSigner(),
                    services=self.services,
                    nursery=attempt.nursery,
                    max_message_size=self.max_message_size,
                    clock=self._now,
                    max_channels=self.max_channels,
                    on_refused=self._audit_refused_channel,
                    max_incomplete=self.max_incomplete_chunked,
                    max_channel_bytes=self.max_channel_bytes,
                    results=self.channel_opens,
                )
                attempt.hub = PeerLink(attempt.writer, attempt.channels.channels)
        elif isinstance(message, HeartbeatAck):
            attempt.meter.on_echo(message.seq, self._now())
        elif isinstance(message, GoAway):
            others = len(self.failover.usable) > 1 if self.failover is not None else False
            log.info(
                "hub going away (%s); %s",
                message.reason,
                "moving to the next hub URL"
                if others
                else f"reconnect in {message.reconnect_delay}s",
            )
            self._went_away = True
            self.reconnect_policy.hub_requested_delay(message.reconnect_delay)
        elif isinstance(message, Deregister):
            return await self._deregistered(attempt, message)
        elif isinstance(message, RotateToken):
            await self._rotate_token(attempt, message)
        elif isinstance(message, ChannelRequest):
            assert attempt.channels is not None  # requests come after the greeting
            await attempt.channels.handle_request(message)
        elif isinstance(message, ErrorMessage):
            log.warning("hub error: %s: %s", message.code, message.message)
            self._rejection = message
            saved = self.hub_record.hub_id if self.hub_record is not None else None
            return classify_link_error(
                message.code, message.hub_id, saved, greeted=attempt.greeted.is_set()
            )
        elif attempt.hub is not None:
            # Answers to its own requests (cross-worker opens), channel data, credit, close.
            attempt.hub.handle(message)
        return None

    async def _deregistered(self, attempt: _Attempt, message: Deregister) -> WorkerExit:
        log.warning("deregistered by the hub: %s", message.reason)
        await self._enqueue(attempt, DeregisterAck(message.request_id))
        await attempt.writer.drain(FLUSH_TIMEOUT)  # the writer writes the ack, then stops
        self._retire("deregistered by the hub")
        return WorkerExit.DEREGISTERED

    async def _rotate_token(self, attempt: _Attempt, message: RotateToken) -> None:
        """Save the successor of the worker's token, then acknowledge it. ``state.json`` is
        replaced atomically and durably (:func:`save_state`), so at every instant it holds
        the old token or the new one, and the hub accepts both until it sees the new one
        acknowledged or used. A failed write is logged and not acknowledged: the old token
        stays the worker's, and the next connect is offered a new one again."""
        assert self.state is not None
        crash = os.environ.get(ROTATION_CRASH_ENV, "")
        if crash == "before-save":
            os.kill(os.getpid(), signal.SIGKILL)
        state = attrs.evolve(self.state, auth_token=message.auth_token)
        try:
            path = save_state(self.data_dir, state)
        except LeapcoreError as exc:
            log.warning("could not save the new auth token (the old one stays): %s", exc)
            return
        self.state = state
        expires = dt.datetime.fromtimestamp(message.expires_at / 1000, dt.UTC)
        log.info("new auth token saved to %s (expires %s)", path, format_utc(expires))
        if crash == "after-save":
            os.kill(os.getpid(), signal.SIGKILL)
        await self._enqueue(attempt, RotateTokenAck(message.request_id))

    # -- the hub's identity ----------------------------------------------------------

    def _foreign(self, greeting: WorkerGreeting) -> bool:
        """True (logged, nothing recorded) when a worker given several hub URLs is greeted by
        a hub whose id is not the recorded one: the URLs of one list are one deployment (one
        database, one hub id), so this hub is another deployment's and is not switched to."""
        saved = self.hub_record
        if len(self.hub_urls) < 2 or saved is None or not saved.hub_id or not greeting.hub_id:
            return False
        if greeting.hub_id == saved.hub_id:
            return False
        self._rejection = ErrorMessage(
            "hub_id_mismatch",
            f"it greeted this worker as hub {greeting.hub_id}",
            greeting.hub_id,
        )
        return True

    def _record_hub(self, greeting: WorkerGreeting) -> None:
        """Keep ``hub.json`` true after a greeting (the hub accepted the token, so it is the
        one that issued it): record a hub id not yet recorded, or the URL the hub moved to.
        A failure to write is logged; the link goes on."""
        if not greeting.hub_id:
            return  # a hub too old to name itself
        saved = self.hub_record
        if saved is not None and (saved.hub_id, saved.hub_url) == (greeting.hub_id, self.hub_url):
            return
        if saved is not None and saved.hub_id == greeting.hub_id:
            record = attrs.evolve(saved, hub_url=self.hub_url)
            log.info(
                "hub %s is now at %s (was %s): %s updated",
                greeting.hub_id,
                self.hub_url,
                saved.hub_url,
                HUB_FILE,
            )
        else:
            record = HubRecord(greeting.hub_id, self.hub_url, None)
            if saved is not None and saved.hub_id:
                log.warning(
                    "hub %s at %s accepted this worker's token, but %s named hub %s: recording %s",
                    greeting.hub_id,
                    self.hub_url,
                    HUB_FILE,
                    saved.hub_id,
                    greeting.hub_id,
                )
            else:
                log.info("recorded hub %s at %s in %s", greeting.hub_id, self.hub_url, HUB_FILE)
        try:
            save_hub(self.data_dir, record)
        except LeapcoreError as exc:
            log.warning("could not record the hub: %s", exc)
            return
        self.hub_record = record

    def _retire(self, why: str) -> None:
        """Retire the identity, keeping a copy (:func:`retire_state`), and say where."""
        self.retired = retire_state(self.data_dir)
        self.state = None
        self.hub_record = None
        kept = ", ".join(str(path) for path in self.retired) or "no files to keep"
        log.warning("%s: identity retired; kept as %s", why, kept)

    def _expired(self) -> TokenExpired:
        """The refusal of an expired token (nothing is changed: register again)."""
        error = self._rejection
        text = error.message if error is not None else "the worker token expired"
        return TokenExpired(
            f"hub at {self.hub_url} refused this worker's token: {text}; {STATE_FILE} left "
            f"untouched (move it and {HUB_FILE} aside, then start the worker with a new "
            "--registration-key)"
        )

    def _mismatch(self) -> HubMismatch:
        """The refusal for a token a hub does not know (nothing is changed)."""
        error = self._rejection
        code, text, hub_id = (
            (error.code, error.message, error.hub_id) if error is not None else ("", "", "")
        )
        saved = self.hub_record
        reached = f"hub at {self.hub_url} (hub id {hub_id or 'not given'})"
        if code == "worker_deleted":
            what = "says it deleted this worker but is not the hub it registered with"
        elif code == "hub_id_mismatch":
            what = "is not the hub this worker registered with"
        else:
            what = "does not know this worker"
        if saved is None:
            origin = f"it recorded no hub (no {HUB_FILE}: registered before hubs had ids)"
        else:
            origin = f"it registered with hub {saved.hub_id or '(id not given)'} at {saved.hub_url}"
        return HubMismatch(
            f"{reached} {what} ({code}: {text}); {origin}; {STATE_FILE} left untouched",
            hub_url=self.hub_url,
            hub_id=hub_id,
            registered_hub_id=saved.hub_id if saved is not None else "",
            registered_url=saved.hub_url if saved is not None else "",
            hub_code=code,
        )
