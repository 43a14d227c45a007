"""The hub's Prometheus metrics, served at ``GET /metrics`` in the text format.

Each :class:`HubMetrics` owns its own ``CollectorRegistry`` (never the process-wide
default one), so several hubs in one process, and tests, keep separate figures.

The gauges (workers online, links by kind, channels) are set from the hub's live
state just before each scrape (:meth:`HubMetrics.render` takes a
:class:`Snapshot`), so they can never drift from what the hub holds; the
counters are incremented where the events happen. Every known label value is
created at start-up so its series reads 0 rather than being absent.

Names (all prefixed ``leapcore_hub_``):

* ``workers_online`` (gauge): workers holding a greeted link;
* ``links{kind}`` (gauge, ``worker`` or ``client``): authenticated links;
* ``channels`` (gauge): open (relaying) channels;
* ``relayed_bytes_total{direction}`` (counter): channel ciphertext bytes written to
  the other end, ``to_worker`` (from the opener) or ``to_client`` (from the worker);
* ``frames_rejected_total{reason}`` (counter): links ended by a bad frame, by the
  error code sent back (``link_protocol_error``, ``frame_too_large``,
  ``unsupported_protocol_version``, ``unexpected_message``), and channels closed by a
  data frame that broke a relay or credit rule (``relay_violation``);
* ``frames_dropped_total`` (counter): data frames for an unknown channel, or one the
  sender is not part of (dropped, never forwarded);
* ``registrations_total{outcome}`` (counter): ``register`` requests by outcome
  (``ok``, ``rejected``, ``quota``, ``error`` when the store failed);
* ``channel_opens_total{result}`` (counter): ``open_channel`` requests by result:
  ``opened``, ``rejected`` (by the worker), ``invalid_accept`` (the worker's answer
  was refused), ``not_found``, ``not_owner`` (told ``not_found``),
  ``worker_offline``, ``invalid_max_message_size``, ``unavailable``, ``timeout``,
  ``quota_exceeded`` (a channel budget of :class:`leapcore.proto.limits.HubLimits`),
  ``permission_denied`` (asked by a deregistering worker);
* ``sign_ins_refused_total{reason}`` (counter): sign-ins refused: ``api_token``,
  ``worker_token``, ``registration_key`` (bad credentials), ``links_per_user``,
  ``links_per_address`` (over a budget);
* ``links_closed_total{reason}`` (counter): signed-in links the hub ended: ``idle`` (a
  client silent for ``client_idle_timeout``), ``token_revoked``, ``worker_deleted``,
  ``deregistered`` (a deregistering worker's link, after its ack or its grace);
* ``audit_write_failures_total`` (counter): audit events the store could not record (the
  operation they describe went on; each is also logged).
"""

from __future__ import annotations

from typing import Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

__all__ = [
    "CONTENT_TYPE",
    "LINK_CLOSE_REASONS",
    "LINK_KINDS",
    "OPEN_RESULTS",
    "REGISTRATION_OUTCOMES",
    "REJECT_REASONS",
    "RELAY_DIRECTIONS",
    "SIGN_IN_REFUSALS",
    "HubMetrics",
    "Snapshot",
]

#: The classic Prometheus text format, which ``generate_latest`` writes. Spelled out:
#: newer prometheus-client releases name version 1.0.0 in ``CONTENT_TYPE_LATEST``.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "leapcore_hub"
LINK_KINDS: Final = ("worker", "client")
REJECT_REASONS: Final = (
    "link_protocol_error",
    "frame_too_large",
    "unsupported_protocol_version",
    "unexpected_message",
    "relay_violation",
)
REGISTRATION_OUTCOMES: Final = ("ok", "rejected", "quota", "error")
OPEN_RESULTS: Final = (
    "opened",
    "rejected",
    "invalid_accept",
    "not_found",
    "not_owner",
    "worker_offline",
    "invalid_max_message_size",
    "unavailable",
    "timeout",
    "quota_exceeded",
    "permission_denied",
)
SIGN_IN_REFUSALS: Final = (
    "api_token",
    "worker_token",
    "registration_key",
    "links_per_user",
    "links_per_address",
)
LINK_CLOSE_REASONS: Final = ("idle", "token_revoked", "worker_deleted", "deregistered")
RELAY_DIRECTIONS: Final = ("to_worker", "to_client")


@attrs.frozen
class Snapshot:
    """The hub's live state at scrape time."""

    workers_online: int
    worker_links: int
    client_links: int
    channels: int = 0


class HubMetrics:
    """One hub's metrics in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.workers_online = Gauge(
            f"{PREFIX}_workers_online", "Workers holding a greeted link.", registry=reg
        )
        self.links = Gauge(
            f"{PREFIX}_links", "Authenticated links by kind.", ["kind"], registry=reg
        )
        self.channels = Gauge(f"{PREFIX}_channels", "Open channels.", registry=reg)
        self.relayed_bytes = Counter(
            f"{PREFIX}_relayed_bytes",
            "Channel ciphertext bytes relayed between peers, by direction.",
            ["direction"],
            registry=reg,
        )
        self.frames_dropped = Counter(
            f"{PREFIX}_frames_dropped",
            "Data frames for an unknown channel or one the sender is not part of.",
            registry=reg,
        )
        self.frames_rejected = Counter(
            f"{PREFIX}_frames_rejected",
            "Links ended by a bad frame, and channels closed by a relay violation, by code.",
            ["reason"],
            registry=reg,
        )
        self.registrations = Counter(
            f"{PREFIX}_registrations", "Worker registrations by outcome.", ["outcome"], registry=reg
        )
        self.channel_opens = Counter(
            f"{PREFIX}_channel_opens",
            "open_channel requests (each carries handshake message 1) by result.",
            ["result"],
            registry=reg,
        )
        self.sign_ins_refused = Counter(
            f"{PREFIX}_sign_ins_refused",
            "Sign-ins refused: bad credentials, or over a link budget.",
            ["reason"],
            registry=reg,
        )
        self.links_closed = Counter(
            f"{PREFIX}_links_closed",
            "Signed-in links the hub ended: idle, revoked, deleted or deregistered.",
            ["reason"],
            registry=reg,
        )
        self.audit_write_failures = Counter(
            f"{PREFIX}_audit_write_failures",
            "Audit events the store could not record (the operation went on).",
            registry=reg,
        )
        for kind in LINK_KINDS:
            self.links.labels(kind=kind)
        for reason in SIGN_IN_REFUSALS:
            self.sign_ins_refused.labels(reason=reason)
        for reason in LINK_CLOSE_REASONS:
            self.links_closed.labels(reason=reason)
        for reason in REJECT_REASONS:
            self.frames_rejected.labels(reason=reason)
        for outcome in REGISTRATION_OUTCOMES:
            self.registrations.labels(outcome=outcome)
        for result in OPEN_RESULTS:
            self.channel_opens.labels(result=result)
        # Counted per relayed frame: the labelled children are looked up once, here.
        self._relayed = {d: self.relayed_bytes.labels(direction=d) for d in RELAY_DIRECTIONS}

    def frame_rejected(self, reason: str) -> None:
        self.frames_rejected.labels(reason=reason).inc()

    def registration(self, outcome: str) -> None:
        self.registrations.labels(outcome=outcome).inc()

    def channel_open(self, result: str) -> None:
        self.channel_opens.labels(result=result).inc()

    def sign_in_refused(self, reason: str) -> None:
        self.sign_ins_refused.labels(reason=reason).inc()

    def link_closed(self, reason: str) -> None:
        self.links_closed.labels(reason=reason).inc()

    def relayed(self, direction: str, size: int) -> None:
        self._relayed[direction].inc(size)

    def frame_dropped(self) -> None:
        self.frames_dropped.inc()

    def audit_write_failed(self) -> None:
        self.audit_write_failures.inc()

    def render(self, snapshot: Snapshot) -> bytes:
        """Set the gauges from ``snapshot`` and return the text exposition."""
        self.workers_online.set(snapshot.workers_online)
        self.links.labels(kind="worker").set(snapshot.worker_links)
        self.links.labels(kind="client").set(snapshot.client_links)
        self.channels.set(snapshot.channels)
        return generate_latest(self.registry)
