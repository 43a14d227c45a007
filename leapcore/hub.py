"""The hub server (trio): registration, worker links, client links and graceful shutdown.

One :class:`Hub` owns a :class:`~leapcore.netserver.LinkServer` (links plus
``/healthz``), the :class:`~leapcore.hubstore.SQLiteHubStore` and the live
registry of worker links. The first frame of a link says what it is:

* ``register``: consume a registration key, answer ``registered`` (or an
  ``error``) and end the link;
* ``connect``: authenticate the worker's token, send ``worker_greeting``
  first, publish the link (a newer link for the same worker replaces and
  closes the older one), record heartbeats, deliver pending deregister
  notifications; 10 s without any inbound message ends the link;
* ``client_hello``: authenticate the user, answer ``client_greeting``, then
  serve ``hub_request`` calls (:mod:`leapcore.hubrpc`). Channel opening is
  not implemented yet: ``open_channel`` is refused with ``unavailable``.

``GET /metrics`` serves Prometheus metrics (:mod:`leapcore.hubmetrics`).

Each link has one writer task fed by a bounded queue, and one reader that
never waits for the writer: everything it answers is queued without
blocking, and a peer that lets its queue fill up is disconnected. A bad or
out-of-order frame closes only its own link, after an ``error`` record.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

from .errors import (
    LeapcoreError,
    LinkClosed,
    LinkProtocolError,
    LocalError,
    QuotaExceeded,
    StorageError,
    Unauthenticated,
)
from .heartbeat import Liveness
from .hubmetrics import CONTENT_TYPE, HubMetrics, Snapshot
from .hubrpc import RequestError, call
from .hubstore import Notification, SQLiteHubStore, User, Worker
from .keys import PublicKeyBundle
from .link_codec import (
    ChannelRefused,
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
from .link_state import LinkConnection, LinkRole, LinkState
from .mode import EncryptionMode, parse_encryption_mode
from .netpipe import LinkPipe
from .netserver import HttpResponse, LinkServer

__all__ = ["FIRST_FRAME_TIMEOUT", "GO_AWAY_DELAY", "SEND_QUEUE", "SHUTDOWN_BUDGET", "Hub"]

log = logging.getLogger(__name__)

#: Frames queued per link before the peer counts as not reading (and is disconnected).
SEND_QUEUE: Final = 256
#: Seconds a new link has to send its first frame.
FIRST_FRAME_TIMEOUT: Final = 10.0
#: Seconds to flush a closing link's queued frames.
FLUSH_TIMEOUT: Final = 2.0
#: What workers are told to wait before reconnecting when the hub stops.
GO_AWAY_DELAY: Final = 10
#: Seconds the go-away broadcast may take, in all.
SHUTDOWN_BUDGET: Final = 2.0


class _Link:
    """One live link: its state machine, its outbound queue and who is on the other end."""

    def __init__(self, pipe: LinkPipe, transport: str) -> None:
        self.pipe = pipe
        self.transport = transport
        self.conn = LinkConnection(LinkRole.HUB)
        self._send, self._queue = trio.open_memory_channel[bytes | trio.Event](SEND_QUEUE)
        self.scope = trio.CancelScope()
        self.writer_done = trio.Event()
        self.worker: Worker | None = None
        self.user: User | None = None
        self.mode: EncryptionMode | None = None
        self.liveness: Liveness | None = None
        #: Deregister request id -> notification id, awaiting the worker's ack.
        self.deregs: dict[int, str] = {}

    def _put(self, item: bytes | trio.Event) -> bool:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            log.warning("link %s: peer is not reading; closing the link", self.name)
            self.scope.cancel()
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    @property
    def name(self) -> str:
        if self.worker is not None:
            return f"worker {self.worker.id}"
        if self.user is not None:
            return f"client {self.user.name}"
        return f"({self.transport})"

    def enqueue(self, message: LinkMessage) -> bool:
        """Queue ``message`` without waiting; False if it could not be (link closing)."""
        try:
            data = self.conn.send(message)
        except LocalError:
            return False
        return self._put(data)

    def fail(self, code: str, message: str) -> None:
        """Queue an ``error`` record; the link ends after it."""
        record = ErrorMessage(code, message)
        if not self.enqueue(record):
            # The state machine closed on a bad frame received: the record still goes out.
            self.conn.state = LinkState.CLOSED
            self._put(encode(record))

    async def flushed(self) -> None:
        """Wait until everything queued so far was handed to the transport."""
        event = trio.Event()
        if self._put(event):
            await event.wait()

    async def writer(self) -> None:
        try:
            async with self._queue:
                async for item in self._queue:
                    if isinstance(item, trio.Event):
                        item.set()
                    else:
                        await self.pipe.send(item)
        except LinkClosed:
            self.scope.cancel()
        finally:
            self.writer_done.set()

    def close_queue(self) -> None:
        self._send.close()


class Hub:
    """The hub: ``await nursery.start(hub.serve, host=..., port=...)``, then :meth:`shutdown`."""

    def __init__(
        self,
        store_path: Path | str,
        *,
        max_workers_per_user: int = 64,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = SQLiteHubStore(store_path, max_workers_per_user=max_workers_per_user)
        self._clock = clock
        self._wall_clock = wall_clock
        self._links: set[_Link] = set()
        #: Worker id -> its live link ("online" means being in here).
        self._workers: dict[str, _Link] = {}
        #: owner id -> ids of that owner's workers holding a link (for the per-user cap).
        self._online_by_owner: dict[str, set[str]] = {}
        self._request_ids = itertools.count(1)
        self._closing = False
        self._serve_scope: trio.CancelScope | None = None
        #: Prometheus metrics, in this hub's own registry (served at ``/metrics``).
        self.metrics = HubMetrics()
        self._routes = {"/healthz": _healthz, "/metrics": self._metrics_route}
        self.server = LinkServer(self._on_link, routes=self._routes)

    # -- what hubrpc needs ------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def is_online(self, worker_id: str) -> bool:
        return worker_id in self._workers

    @property
    def online_workers(self) -> frozenset[str]:
        return frozenset(self._workers)

    def notify_deregister(self, note: Notification) -> bool:
        link = self._workers.get(note.worker_id)
        if link is None:
            return False
        return self._send_deregister(link, note)

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
            self.server = LinkServer(self._on_link, routes=self._routes, ssl_context=ssl_context)
        try:
            with trio.CancelScope() as scope:
                self._serve_scope = scope
                async with trio.open_nursery() as nursery:
                    bound = await nursery.start(self.server.serve_tcp, host, port)
                    if unix_path is not None:
                        await nursery.start(self.server.serve_unix, unix_path)
                    task_status.started(bound)
        finally:
            self.store.close()

    async def shutdown(self) -> None:
        """Tell every peer to come back in 10 s (2 s budget in all), then close every link."""
        self._closing = True
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

    # -- one link ---------------------------------------------------------------------------

    async def _on_link(self, pipe: LinkPipe, transport: str) -> None:
        link = _Link(pipe, transport)
        if self._closing:
            link.fail("unavailable", "hub is shutting down")
        self._links.add(link)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.writer)
                if not self._closing:
                    with link.scope:
                        await self._serve_link(link)
                link.close_queue()
                with trio.move_on_after(FLUSH_TIMEOUT):
                    await link.writer_done.wait()
                nursery.cancel_scope.cancel()
        except Exception:  # a bug must cost one link, never the hub
            log.exception("link %s: internal error", link.name)
        finally:
            self._links.discard(link)
            if link.worker is not None and self._workers.get(link.worker.id) is link:
                del self._workers[link.worker.id]
                owned = self._online_by_owner.get(link.worker.owner_id)
                if owned is not None:
                    owned.discard(link.worker.id)
                    if not owned:
                        del self._online_by_owner[link.worker.owner_id]
                log.info("worker %s is offline", link.worker.id)

    async def _serve_link(self, link: _Link) -> None:
        first_deadline = self._clock() + FIRST_FRAME_TIMEOUT
        try:
            while True:
                if link.liveness is not None:
                    deadline = link.liveness.deadline()
                elif link.conn.state is LinkState.START:
                    deadline = first_deadline
                else:
                    deadline = math.inf
                with trio.move_on_after(max(0.0, deadline - self._clock())) as waited:
                    data = await link.pipe.receive()
                if waited.cancelled_caught:
                    if link.liveness is not None:
                        log.info(
                            "%s: idle timeout: no messages from worker in %gs",
                            link.name,
                            link.liveness.timeout,
                        )
                    return
                link.conn.receive_data(data)
                while (message := link.conn.next_message()) is not None:
                    if link.liveness is not None:
                        link.liveness.on_received(self._clock())
                    if self._dispatch(link, message):
                        return
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

    def _dispatch(self, link: _Link, message: LinkMessage) -> bool:
        """Handle one message; True when the link should end."""
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
            self.metrics.channel_open("unavailable")
            link.enqueue(
                ChannelRefused(message.request_id, "unavailable", "channels are not supported yet")
            )
            return False
        if isinstance(message, ErrorMessage):
            log.info("%s closed the link: %s: %s", link.name, message.code, message.message)
            return True
        # Channel traffic (data, accept, reject, close): no channels exist yet.
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
            link.fail("unauthenticated", "auth_token required")
            return True
        try:
            worker = self.store.authenticate_worker(message.auth_token, self.now_ms())
        except Unauthenticated:
            link.fail("unauthenticated", "invalid auth token")
            return True
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
        link.worker = worker
        link.liveness = Liveness(self._clock())
        link.enqueue(WorkerGreeting(worker.id, worker.owner_id, worker.owner_name))
        old = self._workers.get(worker.id)
        self._workers[worker.id] = link
        self._online_by_owner.setdefault(worker.owner_id, set()).add(worker.id)
        if old is not None:
            log.info("worker %s connected again; closing its older link", worker.id)
            old.scope.cancel()
        log.info("worker %s is online (%s)", worker.id, link.transport)
        for note in self.store.pending_notifications(worker.id):
            self._send_deregister(link, note)
        return False

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
            user = self.store.authenticate_user(message.api_token, self.now_ms())
        except Unauthenticated as exc:
            link.fail("unauthenticated", str(exc))
            return True
        link.user = user
        link.enqueue(ClientGreeting(user.id, user.name))
        return False

    def _hub_request(self, link: _Link, request: HubRequest) -> None:
        assert link.user is not None
        try:
            result = call(self, link.user, request.method, request.params)
        except RequestError as exc:
            log.info("%s: %s failed: %s", link.name, request.method, exc.message)
            link.enqueue(
                HubResponse(request.request_id, error_code=exc.code, error_message=exc.message)
            )
            return
        link.enqueue(HubResponse(request.request_id, result=result))

    # -- metrics -------------------------------------------------------------------------------

    def _metrics_route(self) -> HttpResponse:
        links = list(self._links)
        snapshot = Snapshot(
            workers_online=len(self._workers),
            worker_links=sum(1 for link in links if link.worker is not None),
            client_links=sum(1 for link in links if link.user is not None),
        )
        return 200, CONTENT_TYPE, self.metrics.render(snapshot)


def _healthz() -> HttpResponse:
    return 200, "text/plain; charset=utf-8", b"ok\n"
