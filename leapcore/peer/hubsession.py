"""A client of the hub itself (trio): sign in with an API token and make ``hub_request`` calls.

::

    async with hub_session("http://127.0.0.1:4327", token) as hub:
        workers = await hub.list_workers()

:func:`hub_session` dials the hub (:func:`~leapcore.net.dial.connect_link`), sends
``client_hello`` and waits for the ``client_greeting``; :meth:`HubSession.call` sends one
``hub_request`` and waits for its ``hub_response``. One reader task matches responses to
calls by ``request_id``, so calls may be made from several tasks at once (at most
:data:`MAX_PENDING_REQUESTS` outstanding; more wait for a free slot within their deadline).

:class:`PeerLink` is what a peer does on its link to the hub, client or worker alike (the
worker's cross-worker channels use it too): it drives the sans-IO
:class:`~leapcore.proto.link_session.LinkSession` (request ids, deadlines, the orphan
policy: an open answered after its caller gave up is closed, never left open) and sends
through the link's one :class:`~leapcore.peer.linkwriter.LinkWriter`.

Every call has a deadline (``timeout=``, :data:`CALL_TIMEOUT` by default, as do
:meth:`PeerLink.request_open` and the channel operations of :mod:`leapcore.peer.channel`):
no answer in time raises :class:`~leapcore.errors.DeadlineExceeded`.

**Keepalive.** The hub closes a client link that sends nothing for a while (10 min by
default), so that an abandoned session does not live for ever. While the session is
*busy* -- a channel open, a call or an open waiting for its answer -- and nothing else
was sent for :data:`KEEPALIVE_INTERVAL` (30 s; ``keepalive=`` to change it, ``None`` to
turn it off), it sends a ``heartbeat`` record. An idle session sends nothing, so the hub
reaps one that was abandoned.

An error answer raises the matching leapcore error (:data:`ERROR_CLASSES`; any other code is
:class:`~leapcore.errors.HubRequestFailed`). A link that ends, a ``go_away`` or an ``error``
record from the hub fails every outstanding and later call with
:class:`~leapcore.errors.LinkClosed` (or the error the record names). When the block ends,
what is queued is written (at most :data:`FLUSH_TIMEOUT`) before the link closes. No trio
exception group escapes the ``async with`` block when a single thing went wrong.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import trio

from ..errors import (
    AlreadyExists,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    HubRequestFailed,
    HubUnavailable,
    LeapcoreError,
    LinkClosed,
    LinkProtocolError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    TokenExpired,
    Unauthenticated,
    WorkerDeleted,
)
from ..net.dial import connect_link
from ..net.pipe import LinkPipe
from ..net.trioutil import single_exception
from ..proto.capabilities import WorkerFilter
from ..proto.limits import (
    DEFAULT_MAX_MESSAGE_SIZE,
    GREETING_TIMEOUT,
    MAX_PENDING_REQUESTS,
    OPEN_TIMEOUT,
)
from ..proto.link_codec import (
    PROTOCOL_VERSION,
    ChannelData,
    ChannelOpened,
    ChannelRefused,
    ClientGreeting,
    ClientHello,
    ErrorMessage,
    GoAway,
    Heartbeat,
    HubResponse,
    LinkMessage,
)
from ..proto.link_session import (
    CallAnswered,
    CallRefused,
    LinkSession,
    OpenAnswered,
    Outcome,
    RequestFailed,
)
from ..proto.link_state import LinkConnection, LinkRole
from ..store.pinstore import PinStore
from .channel import Channel, ChannelTable
from .linkwriter import LinkWriter
from .opener import open_channel
from .resolve import resolve_worker

__all__ = [
    "CALL_TIMEOUT",
    "ERROR_CLASSES",
    "FLUSH_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "HubSession",
    "PeerLink",
    "hub_error",
    "hub_session",
]

log = logging.getLogger(__name__)

#: Seconds a call waits for its answer by default.
CALL_TIMEOUT: Final = 30.0
#: Seconds without sending anything after which a busy session sends a heartbeat.
KEEPALIVE_INTERVAL: Final = 30.0
#: Seconds allowed, when a session ends, to write what is still queued.
FLUSH_TIMEOUT: Final = 5.0

#: Hub error codes (``hub_response`` and ``error`` records) -> the error raised.
ERROR_CLASSES: Final[dict[str, Callable[[str], LeapcoreError]]] = {
    "unauthenticated": Unauthenticated,
    "worker_deleted": WorkerDeleted,
    "token_expired": TokenExpired,
    "already_exists": AlreadyExists,
    "not_found": NotFound,
    "failed_precondition": FailedPrecondition,
    "permission_denied": PermissionDenied,
    "quota_exceeded": QuotaExceeded,
    "unavailable": HubUnavailable,
}


def hub_error(code: str, message: str) -> LeapcoreError:
    """The leapcore error for a hub error ``code``."""
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        return HubRequestFailed(code, message)
    return cls(message)


class PeerLink:
    """A peer's traffic on its link to the hub, client or worker: calls and channel opens
    (through a :class:`~leapcore.proto.link_session.LinkSession`), sends through the link's
    :class:`~leapcore.peer.linkwriter.LinkWriter`, and the link's channel table.

    The link's reader hands it every message with :meth:`handle` and calls :meth:`fail`
    when the link ends. Implements :class:`~leapcore.peer.opener.OpenerLink`.
    """

    def __init__(
        self,
        writer: LinkWriter,
        channels: ChannelTable,
        *,
        max_pending: int = MAX_PENDING_REQUESTS,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._writer = writer
        #: The channels open on this link, by channel id.
        self.channels = channels
        self._clock = clock
        self._session = LinkSession(max_pending=max_pending)
        self._waiters: dict[int, trio.Event] = {}
        self._room = trio.Event()
        self._failure: LeapcoreError | None = None
        #: Set when the link has ended (:attr:`failure` says why).
        self.ended = trio.Event()

    @property
    def failure(self) -> LeapcoreError | None:
        """Why the link ended; None while it is up."""
        return self._failure

    @property
    def busy(self) -> bool:
        """True while a channel is open or a call or an open waits for its answer."""
        return bool(len(self.channels) or self._session.waiting)

    # -- sending --------------------------------------------------------------------------

    async def send(self, message: LinkMessage) -> None:
        """Queue one message for the hub (waits while the link's queue is full)."""
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[LinkMessage]) -> None:
        """Queue several messages as one transport write, in order."""
        if self._failure is not None:
            raise self._failure
        await self._writer.send_many(messages)

    def send_nowait(self, message: LinkMessage) -> bool:
        """Queue ``message`` if there is room now; False if not. Once the link is ending,
        what is sent is dropped (True)."""
        if self._failure is not None:
            return True
        try:
            return self._writer.send_nowait(message)
        except LinkClosed:
            return True

    # -- calls and opens --------------------------------------------------------------------

    async def call(
        self, method: str, *, timeout: float = CALL_TIMEOUT, **params: Any
    ) -> dict[str, Any]:
        """Send ``method(params)`` and return the ``result`` object; raises on an error answer,
        a closed link, or no answer within ``timeout`` seconds (:class:`DeadlineExceeded`)."""
        outcome = await self._request(
            lambda now, left: self._session.start_call(method, dict(params), now=now, timeout=left),
            timeout,
        )
        if isinstance(outcome, CallAnswered):
            return outcome.result
        if isinstance(outcome, CallRefused):
            raise hub_error(outcome.code, outcome.message)
        if isinstance(outcome, RequestFailed):
            raise outcome.error
        raise DeadlineExceeded(f"the hub did not answer {method} within {timeout:g}s")

    async def request_open(
        self,
        worker_id: str,
        message1: bytes,
        max_message_size: int,
        *,
        timeout: float = OPEN_TIMEOUT,
    ) -> ChannelOpened | ChannelRefused:
        """Send ``open_channel`` and wait for the hub's answer (see :mod:`leapcore.peer.opener`),
        at most ``timeout`` seconds (:class:`DeadlineExceeded`). An open answered after its
        caller gave up is closed (:mod:`leapcore.proto.link_session`, rule 5)."""
        outcome = await self._request(
            lambda now, left: self._session.start_open(
                worker_id, message1, max_message_size, now=now, timeout=left
            ),
            timeout,
        )
        if isinstance(outcome, OpenAnswered):
            return outcome.answer
        if isinstance(outcome, RequestFailed):
            raise outcome.error
        raise DeadlineExceeded(
            f"the hub did not answer the open of a channel to {worker_id} within {timeout:g}s"
        )

    async def _request(
        self, start: Callable[[float, float], int], timeout: float
    ) -> Outcome | None:
        """Start a request when a slot is free and wait for its outcome, all within
        ``timeout``; None when the deadline passed. A caller that is cancelled abandons it."""
        deadline = self._clock() + timeout
        with trio.move_on_at(deadline):
            while self._failure is None and not self._session.has_room:
                await self._room.wait()
        if self._failure is not None:
            raise self._failure
        if not self._session.has_room:
            return None  # no slot came free in time
        now = self._clock()
        request_id = start(now, max(0.0, deadline - now))
        waiter = self._waiters[request_id] = trio.Event()
        taken = False
        try:
            self._flush()
            ends = self._session.deadline(request_id)
            with trio.move_on_at(math.inf if ends is None else ends):
                await waiter.wait()
            if not waiter.is_set():
                self._wake(self._session.poll(self._clock()))
            if not waiter.is_set():
                return None
            outcome = self._session.take(request_id)
            taken = True
            return outcome
        finally:
            del self._waiters[request_id]
            if not taken:
                self._session.abandon(request_id)
                self._flush()
            self._free_slots()

    def _wake(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            waiter = self._waiters.get(outcome.request_id)
            if waiter is not None:
                waiter.set()

    def _free_slots(self) -> None:
        self._room.set()
        self._room = trio.Event()

    def _flush(self) -> None:
        """Queue what the session must send (requests, closes of orphans): never waits."""
        messages = self._session.messages_to_send()
        try:
            for message in messages:
                self._writer.push(message)
        except LinkClosed as exc:
            self.fail(exc)

    # -- from the link's reader ---------------------------------------------------------------

    def handle(self, message: LinkMessage) -> bool:
        """Answers to this link's requests and channel traffic (data, credit, close); False
        for any other message. An answer to a request never made is a
        :class:`~leapcore.errors.LinkProtocolError` (the link should end)."""
        if type(message) is ChannelData:  # the hot path
            return self.channels.deliver(message)
        if isinstance(message, (HubResponse, ChannelOpened, ChannelRefused)):
            self._wake(self._session.receive(message))
            self._flush()
            self._free_slots()
            return True
        return self.channels.deliver(message)

    def fail(self, error: LeapcoreError) -> None:
        """The link ended: every waiting and later request fails with ``error`` (the first
        one given), and every channel on the link is lost."""
        if self._failure is None:
            self._failure = error
        self.ended.set()
        self._wake(self._session.fail(self._failure))
        self._free_slots()
        self.channels.close_all("link_lost", f"the link to the hub ended: {self._failure}")


class HubSession(PeerLink):
    """A signed-in client link; made by :func:`hub_session`."""

    def __init__(
        self,
        pipe: LinkPipe,
        conn: LinkConnection,
        greeting: ClientGreeting,
        *,
        url: str = "",
        pins: PinStore | None = None,
        keepalive: float | None = KEEPALIVE_INTERVAL,
    ) -> None:
        if keepalive is not None and not keepalive > 0:
            raise ConfigError(f"keepalive must be a positive number of seconds, got {keepalive!r}")
        super().__init__(LinkWriter(pipe, conn, on_queued=self._on_queued), ChannelTable())
        #: Seconds of silence after which a busy session sends a heartbeat (None: never).
        self.keepalive = keepalive
        #: Heartbeats sent to keep the link alive.
        self.heartbeats_sent = 0
        self._last_sent = trio.current_time()
        self._pipe = pipe
        self._conn = conn
        #: The hub's URL, as dialled.
        self.url = url
        #: Where worker keys are pinned (``None``: no pinning).
        self.pins = pins
        #: The signed-in user, as the hub greeted it.
        self.user_id = greeting.user_id
        self.user_name = greeting.user_name
        #: When the API token this session signed in with expires (ms since the epoch, UTC;
        #: None: never, or a hub that does not say).
        self.token_expires_at = greeting.token_expires_at

    def _on_queued(self) -> None:
        self._last_sent = trio.current_time()

    def open_channel(
        self,
        worker_id: str,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        timeout: float = OPEN_TIMEOUT,
    ) -> AbstractAsyncContextManager[Channel]:
        """``async with hub.open_channel(worker_id) as ch:`` an end-to-end encrypted channel,
        its worker's keys checked against this session's pin store first (see
        :func:`leapcore.peer.opener.open_channel`)."""
        return open_channel(
            self, worker_id, pins=self.pins, max_message_size=max_message_size, timeout=timeout
        )

    async def worker_keys(self, worker_id: str) -> dict[str, Any]:
        """``{"worker_id", "encryption_mode", "public_key", ...}`` as the hub reports them
        (untrusted until checked against a pin)."""
        return await self.call("worker.keys", worker_id=worker_id)

    async def list_workers(self) -> list[dict[str, Any]]:
        """The signed-in user's active workers (``workers.list``)."""
        result = await self.call("workers.list")
        workers: list[dict[str, Any]] = result["workers"]
        return workers

    async def find_workers(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        capability: str | Iterable[str] | None = None,
        online: bool | None = True,
    ) -> list[dict[str, Any]]:
        """The signed-in user's active workers that have every label of ``labels`` (equal
        values), advertise every capability of ``capability`` (one name or several:
        ``"pty"``, ``["exec", "files"]``) and are online (``online=True``, the default),
        offline (``False``) or either (``None``). The hub filters (``workers.list`` with
        filter parameters; a hub older than them answers ``invalid_argument``). A worker
        that never advertised capabilities (older than them) matches no ``capability``."""
        wanted = WorkerFilter.of(labels=labels, capability=capability, online=online)
        result = await self.call("workers.list", **wanted.params())
        workers: list[dict[str, Any]] = result["workers"]
        return workers

    async def resolve_worker(self, ref: str) -> dict[str, Any]:
        """The one of the signed-in user's active workers that ``ref`` names: its id, its
        name, or the start of its id (at least 4 characters), in that order
        (:func:`leapcore.peer.resolve.resolve_worker`); :class:`NotFound` when none does,
        :class:`~leapcore.errors.AmbiguousReference` (with the candidates) when several do."""
        return resolve_worker(ref, await self.list_workers())

    async def list_registration_keys(self) -> list[dict[str, Any]]:
        """The signed-in user's registration keys, newest first (``regkey.list``): each
        ``{"id", "prefix", "created_at", "expires_at", "state"}`` (ms since the epoch;
        ``prefix`` is the key's first 6 characters; ``state`` is ``live`` or ``expired``).
        The key itself is never listed."""
        keys: list[dict[str, Any]] = (await self.call("regkey.list"))["keys"]
        return keys

    async def create_registration_key(self) -> dict[str, Any]:
        """``{"registration_key", "expires_at"}`` (ms since the epoch): ``regkey.create``."""
        return await self.call("regkey.create")

    async def extend_registration_key(self, key: str) -> int:
        """The key's new expiry (ms); :class:`FailedPrecondition` while 2 min or more remain."""
        expires_at: int = (await self.call("regkey.extend", registration_key=key))["expires_at"]
        return expires_at

    async def revoke_registration_key(self, key: str) -> str:
        """Expire one of the user's registration keys now, named by the key itself or by its
        id (from :meth:`list_registration_keys`); returns its id. Revoking a dead key again
        is accepted; another user's or an unknown key is :class:`NotFound`."""
        key_id: str = (await self.call("regkey.revoke", registration_key=key)).get("key_id", "")
        return key_id

    async def registration_key_state(self, key: str) -> str:
        """``live``, ``expired`` or ``consumed`` (a worker registered with it)."""
        state: str = (await self.call("regkey.state", registration_key=key))["state"]
        return state

    async def deregister_worker(self, worker_id: str) -> dict[str, Any]:
        """``{"worker_id", "status": "deregistering", "notified": bool}``."""
        return await self.call("worker.deregister", worker_id=worker_id)

    # -- keepalive -------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """Send a heartbeat when busy and silent for :attr:`keepalive` seconds (never raises)."""
        interval = self.keepalive
        if interval is None:
            return
        seq = itertools.count(1)
        deadline = self._last_sent + interval
        while self._failure is None:
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if now - self._last_sent < interval:  # something else went out meanwhile
                deadline = self._last_sent + interval
                continue
            if not self.busy:  # idle: let the hub reap an abandoned session
                deadline = now + interval
                continue
            try:
                await self.send(Heartbeat(next(seq)))
            except LeapcoreError:
                return  # the link is failing: the reader reports it
            self.heartbeats_sent += 1
            deadline = self._last_sent + interval

    # -- the link's tasks -------------------------------------------------------------------

    async def _write(self) -> None:
        """The link's writer; a failed write ends the session (never raises)."""
        try:
            await self._writer.run()
        except LinkClosed as exc:
            self.fail(exc)

    def fail(self, error: LeapcoreError) -> None:
        super().fail(error)
        self._writer.close()

    async def _reader(self) -> None:
        """Deliver responses until the link ends; never raises (failures fail the calls)."""
        try:
            while True:
                while (message := self._conn.next_message()) is not None:
                    self._handle(message)
                self._conn.receive_data(await self._pipe.receive())
        except LeapcoreError as exc:
            self.fail(exc)
        finally:
            self.fail(LinkClosed("the link to the hub is closed"))

    def _handle(self, message: LinkMessage) -> None:
        if self.handle(message):
            pass
        elif isinstance(message, GoAway):
            log.info("the hub is going away: %s", message.reason)
            raise LinkClosed(f"the hub is going away: {message.reason}")
        elif isinstance(message, ErrorMessage):
            raise hub_error(message.code, message.message)
        # heartbeat_ack: nothing to do.


async def _greeting(pipe: LinkPipe, conn: LinkConnection) -> ClientGreeting:
    with trio.move_on_after(GREETING_TIMEOUT):
        while True:
            conn.receive_data(await pipe.receive())
            message = conn.next_message()
            if message is None:
                continue
            if isinstance(message, ClientGreeting):
                return message
            if isinstance(message, ErrorMessage):
                raise hub_error(message.code, message.message)
            raise LinkProtocolError(f"expected client_greeting, got {message.type}")
    raise LinkClosed(f"the hub did not greet within {GREETING_TIMEOUT:g}s")


@asynccontextmanager
async def hub_session(
    url: str,
    token: str,
    *,
    transport: str = "websocket",
    ca_file: str | None = None,
    pins: PinStore | None = None,
    keepalive: float | None = KEEPALIVE_INTERVAL,
    dial: Callable[[], AbstractAsyncContextManager[LinkPipe]] | None = None,
) -> AsyncIterator[HubSession]:
    """Sign in to the hub at ``url`` with the API ``token``; the link closes with the block.

    ``keepalive`` is the busy session's heartbeat interval (the module docstring); ``dial``
    replaces the network (tests pass an in-memory pipe).

    ``pins`` is the TOFU store :meth:`HubSession.open_channel` checks worker keys against
    (``None``: no pinning; :func:`leapcore.connect` uses the per-hub default store).
    A refused token raises :class:`~leapcore.errors.Unauthenticated`; a hub that cannot be
    reached, :class:`~leapcore.errors.LinkClosed`.
    """
    if keepalive is not None and not keepalive > 0:
        raise ConfigError(f"keepalive must be a positive number of seconds, got {keepalive!r}")
    if dial is None:

        def dial() -> AbstractAsyncContextManager[LinkPipe]:
            return connect_link(url, transport=transport, ca_file=ca_file)

    with single_exception():
        async with dial() as pipe:
            conn = LinkConnection(LinkRole.CLIENT)
            await pipe.send(conn.send(ClientHello(PROTOCOL_VERSION, token)))
            greeting = await _greeting(pipe, conn)
            session = HubSession(pipe, conn, greeting, url=url, pins=pins, keepalive=keepalive)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session._write)
                nursery.start_soon(session._reader)
                nursery.start_soon(session._keepalive)
                try:
                    yield session
                finally:
                    try:
                        await session._writer.drain(FLUSH_TIMEOUT)
                    finally:
                        nursery.cancel_scope.cancel()
