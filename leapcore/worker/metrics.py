"""The worker's own Prometheus metrics and health check, on a loopback port (trio).

``leapcore-worker --metrics-listen 127.0.0.1:9100`` (off by default) serves:

* ``GET /metrics``: the text exposition format (``Content-Type`` :data:`CONTENT_TYPE`);
* ``GET /healthz``: ``200`` while the worker's connect loop runs, whether or not the hub
  link is up (the body says which: ``ok\\nlink online\\n`` or
  ``ok\\nlink offline for 12.3s\\n``), so a liveness check never restarts a worker for a
  hub outage a restart cannot mend; ``503`` before the loop starts (registering) and after
  it ended. Alert on the link with ``leapcore_worker_up`` or
  ``leapcore_worker_offline_seconds``;
* anything else: ``404``; another method on those paths: ``405``.

The endpoint is **unauthenticated**, so :func:`serve_worker_metrics` binds a loopback IP
literal only (the truth table of :mod:`leapcore.proto.bindaddr`) unless
``allow_remote=True`` (``--metrics-allow-remote``). It speaks HTTP/1.1 only, through a
:class:`~leapcore.net.listen.LinkServer` that takes no links, bounded by
:func:`metrics_limits`: :data:`~leapcore.proto.limits.METRICS_REQUEST_TIMEOUT` (5 s) from
accept to the answer written, :data:`~leapcore.proto.limits.METRICS_MAX_CONNECTIONS` (8)
connections at once (one more: ``503``), :data:`~leapcore.proto.limits.METRICS_MAX_REQUEST_HEAD`
(8 KiB) of request head (more: ``400``). Answers are built from the worker's live state
at scrape time, in the event loop, without waiting on the link.

Every figure is read from the worker when scraped (a collector on a private
``CollectorRegistry``; nothing on the link's hot paths but two byte counts and the channel
results). Names, all prefixed ``leapcore_worker_``:

* ``info{version,encryption_mode,transport}`` (gauge, 1);
* ``up`` (gauge): 1 while the hub has greeted the current link, else 0;
* ``offline_seconds`` (gauge): seconds since the link was last up (or since the connect
  loop started, if it never was); 0 while up;
* ``uptime_seconds`` (gauge): seconds since these metrics were created (the worker's start);
* ``connect_attempts_total`` (counter): links dialled by the connect loop;
* ``reconnects_total`` (counter): attempts after the first (each a dial again after a link
  or attempt ended);
* ``links_greeted_total`` (counter): links the hub greeted;
* ``hub_moves_total`` (counter): moves to the next of several hub URLs at once (a failed
  dial, a dropped link or a ``go_away``; :class:`~leapcore.proto.hub_failover.HubFailover`);
* ``hub_index`` (gauge): the position in the worker's hub URL list of the hub dialled now or
  last (0: the first; always 0 with one URL);
* ``heartbeat_rtt_seconds`` (gauge): the last heartbeat round trip on the current link
  (absent until one is measured);
* ``channels_open`` (gauge): channels open on the current link;
* ``channel_opens_total{result}`` (counter): channel requests by result, ``opened`` or the
  refusal's code (:data:`~leapcore.worker.channels.OPEN_RESULTS`);
* ``exec_processes`` (gauge): ``exec`` processes (and watched groups) alive;
* ``pty_sessions`` (gauge): ``pty`` sessions whose process has not exited;
* ``tunnels_open`` (gauge): ``tcp`` relays open;
* ``link_bytes_total{direction}`` (counter, ``sent`` or ``received``): bytes written to and
  read from the hub links, framing included;
* ``calls_total{capability,outcome}`` (counter): calls served or refused on channels since
  the metrics were created (from :attr:`~leapcore.peer.channel.Services.observers`):
  ``capability`` the method's group (``exec``, ``pty``, ``info``, ``ping``…; ``unknown``
  for a method the worker does not serve, ``other`` for a name that is no capability),
  ``outcome`` ``ok`` or the error code (``other`` if it is not a plain code); at most
  :data:`~leapcore.proto.limits.METRICS_MAX_CALL_SERIES` (256) pairs, later pairs counted
  as ``{capability="other",outcome="other"}``;
* ``call_duration_seconds`` (histogram): how long those calls ran, buckets 50 ms … 60 s
  (:data:`~leapcore.proto.limits.METRICS_CALL_BUCKETS`);
* and prometheus-client's ``process_*`` (CPU seconds, resident memory, open descriptors,
  start time; Linux only).

The three service gauges are absent when the worker was given its own services table
rather than :func:`~leapcore.worker.builtin_services.default_services`'. Labels carry
names from fixed sets only (never a token, path, command or user data).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ..net.listen import HttpResponse, LinkServer
from ..peer.channel import CallReport
from ..proto.bindaddr import check_bind_address, parse_listen_address
from ..proto.capabilities import capability_of, capability_problem
from ..proto.channel_mux import PING_METHOD
from ..proto.limits import (
    METRICS_CALL_BUCKETS,
    METRICS_MAX_CALL_SERIES,
    METRICS_MAX_CONNECTIONS,
    METRICS_MAX_REQUEST_HEAD,
    METRICS_REQUEST_TIMEOUT,
    ServerLimits,
)
from .channels import OPEN_RESULTS

if TYPE_CHECKING:
    from .daemon import Worker

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_METRICS_LISTEN",
    "PREFIX",
    "WorkerMetrics",
    "metrics_limits",
    "parse_metrics_listen",
    "serve_worker_metrics",
]

log = logging.getLogger("leapcore.worker")

#: The classic Prometheus text format (what ``generate_latest`` writes).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "leapcore_worker"
#: Where behavior.md §8.2 puts a worker's metrics (an example; the endpoint is off unless
#: ``--metrics-listen`` is given).
DEFAULT_METRICS_LISTEN: Final = "127.0.0.1:9100"
#: The setting and why a remote address is refused (the messages' words).
_SETTING: Final = "metrics_listen"
_WHY: Final = "the metrics endpoint is unauthenticated; --metrics-allow-remote lifts this"
_TEXT: Final = "text/plain; charset=utf-8"
#: A call outcome kept as a label value (an error code); anything else is ``other``.
_CODE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


def parse_metrics_listen(text: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets; port 0: any free port) -> ``(host, port)``; a
    :class:`~leapcore.errors.ConfigError` unless HOST is a loopback IP literal (or any IP
    literal with ``allow_remote``)."""
    return parse_listen_address(text, name=_SETTING, why=_WHY, allow_remote=allow_remote)


def metrics_limits() -> ServerLimits:
    """The metrics listener's budgets (see the module docstring)."""
    return ServerLimits(
        handshake_timeout=METRICS_REQUEST_TIMEOUT,
        max_connections_per_address=METRICS_MAX_CONNECTIONS,
        max_pending_connections=METRICS_MAX_CONNECTIONS,
        max_header_list_size=METRICS_MAX_REQUEST_HEAD,
    )


class _Live(Collector):
    """Reads the worker's state at each collection."""

    def __init__(self, worker: Worker, started: float, clock: Callable[[], float]) -> None:
        self.worker = worker
        self.started = started
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        w = self.worker

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        info = GaugeMetricFamily(
            f"{PREFIX}_info",
            "The worker's version and settings (value 1).",
            labels=["version", "encryption_mode", "transport"],
        )
        info.add_metric([w.version, w.encryption_mode, w.transport], 1)
        yield info
        yield gauge("up", "1 while the hub has greeted the current link.", int(w.online))
        offline = w.offline_for()
        yield gauge(
            "offline_seconds",
            "Seconds since the hub link was last up (0 while up).",
            offline if offline is not None else 0.0,
        )
        yield gauge(
            "uptime_seconds",
            "Seconds since the worker's metrics were created.",
            max(0.0, self.clock() - self.started),
        )
        yield counter("connect_attempts", "Links dialled by the connect loop.", w.attempts)
        yield counter("reconnects", "Connection attempts after the first.", max(0, w.attempts - 1))
        yield counter("links_greeted", "Links the hub greeted.", w.greetings)
        yield counter("hub_moves", "Moves to the next hub URL at once.", w.hub_moves)
        yield gauge("hub_index", "The position of the hub dialled now or last.", w.hub_index)
        rtt = GaugeMetricFamily(
            f"{PREFIX}_heartbeat_rtt_seconds", "The last heartbeat round trip on the link."
        )
        latency = w.latency
        if latency is not None:
            rtt.add_metric([], latency)
        yield rtt
        server = w.channel_server
        yield gauge(
            "channels_open",
            "Channels open on the current link.",
            len(server.channels) if server is not None else 0,
        )
        opens = CounterMetricFamily(
            f"{PREFIX}_channel_opens",
            "Channel requests by result: opened, or the refusal's code.",
            labels=["result"],
        )
        counts = w.channel_opens
        for result in OPEN_RESULTS:
            opens.add_metric([result], counts.get(result, 0))
        yield opens
        if w.exec_service is not None:
            yield gauge(
                "exec_processes",
                "exec processes (and watched groups) alive.",
                w.exec_service.processes,
            )
        if w.pty_service is not None:
            yield gauge(
                "pty_sessions",
                "pty sessions whose process has not exited.",
                w.pty_service.live_sessions,
            )
        if w.tcp_tunnels is not None:
            yield gauge("tunnels_open", "tcp relays open.", w.tcp_tunnels.open)
        sent, received = w.link_bytes()
        link_bytes = CounterMetricFamily(
            f"{PREFIX}_link_bytes",
            "Bytes written to and read from the hub links (framing included).",
            labels=["direction"],
        )
        link_bytes.add_metric(["sent"], sent)
        link_bytes.add_metric(["received"], received)
        yield link_bytes


class WorkerMetrics:
    """One worker's metrics in a private registry (never the process-wide one), read from
    the worker at each :meth:`render`. ``clock`` times ``uptime_seconds`` (monotonic)."""

    def __init__(self, worker: Worker, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        self.registry.register(_Live(worker, clock(), clock))
        ProcessCollector(registry=self.registry)
        self.calls = Counter(
            f"{PREFIX}_calls",
            "Channel calls served or refused, by capability and outcome.",
            ["capability", "outcome"],
            registry=self.registry,
        )
        self.call_duration = Histogram(
            f"{PREFIX}_call_duration_seconds",
            "How long channel calls ran.",
            buckets=METRICS_CALL_BUCKETS,
            registry=self.registry,
        )
        self._series: dict[tuple[str, str], Any] = {}
        worker.services.observers.append(self.on_call)

    def on_call(self, report: CallReport) -> None:
        """Count one call (an observer of the worker's services table)."""
        key = (self._capability(report.method), report.outcome)
        child = self._series.get(key)
        if child is None:
            capability, outcome = key
            if _CODE.fullmatch(outcome) is None:
                outcome = "other"
            if len(self._series) >= METRICS_MAX_CALL_SERIES:
                capability = outcome = "other"
            child = self.calls.labels(capability=capability, outcome=outcome)
            if len(self._series) < METRICS_MAX_CALL_SERIES:
                self._series[key] = child
        child.inc()
        self.call_duration.observe(report.duration)

    def _capability(self, method: str) -> str:
        services = self.worker.services
        if method != PING_METHOD and not any(
            method in table for table in (services.rpcs, services.streams, services.byte_streams)
        ):
            return "unknown"
        capability = capability_of(method)
        return capability if capability_problem(capability) is None else "other"

    def render(self) -> bytes:
        """The text exposition of every metric, now."""
        return generate_latest(self.registry)

    def metrics_route(self) -> HttpResponse:
        return 200, CONTENT_TYPE, self.render()

    def healthz_route(self) -> HttpResponse:
        """``/healthz`` (see the module docstring)."""
        w = self.worker
        if not w.running:
            state = f"stopped ({w.exit.value})" if w.exit is not None else "starting"
            return 503, _TEXT, f"{state}\n".encode()
        offline = w.offline_for()
        link = "link online" if offline is None else f"link offline for {offline:.1f}s"
        return 200, _TEXT, f"ok\n{link}\n".encode()


async def serve_worker_metrics(
    worker: Worker,
    host: str,
    port: int,
    *,
    allow_remote: bool = False,
    metrics: WorkerMetrics | None = None,
    limits: ServerLimits | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``worker``'s ``/metrics`` and ``/healthz`` on ``host:port`` until cancelled;
    ``task_status.started`` gets the bound ``(host, port)`` (port 0: a free one), so
    ``await nursery.start(serve_worker_metrics, worker, "127.0.0.1", 0)``. ``host`` must be
    a loopback IP literal unless ``allow_remote`` (:class:`~leapcore.errors.ConfigError`,
    before anything is bound); an address that cannot be bound raises ``OSError``."""
    host = check_bind_address(host, allow_remote=allow_remote, name=_SETTING, why=_WHY)
    metrics = metrics if metrics is not None else WorkerMetrics(worker)
    server = LinkServer(
        None,
        routes={"/metrics": metrics.metrics_route, "/healthz": metrics.healthz_route},
        limits=limits if limits is not None else metrics_limits(),
        name="metrics listener",
    )
    listeners = await trio.open_tcp_listeners(port, host=host)  # OSError as itself
    bound = listeners[0].socket.getsockname()[:2]
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    log.info("metrics on http://%s:%d/metrics (and /healthz)", shown, bound[1])
    task_status.started(bound)
    await server.serve_listeners(listeners)
