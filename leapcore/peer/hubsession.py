"""A client of the hub itself (trio): sign in with an API token and make ``hub_request`` calls.

::

    async with hub_session("http://127.0.0.1:4327", token) as hub:
        workers = await hub.list_workers()

:func:`hub_session` dials the hub (:func:`~leapcore.net.dial.connect_link`), sends
``client_hello`` and waits for the ``client_greeting``; :meth:`HubSession.call` sends one
``hub_request`` and waits for its ``hub_response``. One reader task matches responses to
calls by ``request_id``, so calls may be made from several tasks at once (at most
:data:`MAX_PENDING` outstanding).

Every call has a deadline (``timeout=``, :data:`CALL_TIMEOUT` by default, as do
:meth:`HubSession.request_open` and the channel operations of :mod:`leapcore.peer.channel`):
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
:class:`~leapcore.errors.LinkClosed` (or the error the record names). No trio exception group
escapes the ``async with`` block when a single thing went wrong.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import trio

from ..errors import (
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    HubRequestFailed,
    LeapcoreError,
    LinkClosed,
    LinkProtocolError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)
from ..net.dial import connect_link
from ..net.pipe import LinkPipe
from ..net.trioutil import WriteLock, single_exception
from ..proto.chunking import DEFAULT_MAX_MESSAGE_SIZE
from ..proto.link_codec import (
    PROTOCOL_VERSION,
    ChannelClose,
    ChannelOpened,
    ChannelRefused,
    ClientGreeting,
    ClientHello,
    ErrorMessage,
    GoAway,
    Heartbeat,
    HubRequest,
    HubResponse,
    LinkMessage,
    OpenChannel,
)
from ..proto.link_state import LinkConnection, LinkRole
from ..store.pinstore import PinStore
from .channel import Channel, ChannelTable
from .opener import OPEN_TIMEOUT, open_channel

__all__ = [
    "CALL_TIMEOUT",
    "ERROR_CLASSES",
    "GREETING_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_PENDING",
    "HubSession",
    "hub_error",
    "hub_session",
]

log = logging.getLogger(__name__)

#: Seconds the hub has to greet a new client link.
GREETING_TIMEOUT: Final = 10.0
#: Seconds a call waits for its answer by default.
CALL_TIMEOUT: Final = 30.0
#: Calls that may be outstanding at once; more wait for a free slot.
MAX_PENDING: Final = 64
#: Seconds without sending anything after which a busy session sends a heartbeat.
KEEPALIVE_INTERVAL: Final = 30.0

#: Hub error codes (``hub_response`` and ``error`` records) -> the error raised.
ERROR_CLASSES: Final[dict[str, Callable[[str], LeapcoreError]]] = {
    "unauthenticated": Unauthenticated,
    "not_found": NotFound,
    "failed_precondition": FailedPrecondition,
    "permission_denied": PermissionDenied,
    "quota_exceeded": QuotaExceeded,
}


def hub_error(code: str, message: str) -> LeapcoreError:
    """The leapcore error for a hub error ``code``."""
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        return HubRequestFailed(code, message)
    return cls(message)


class _Pending:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: dict[str, Any] | None = None
        self.error: LeapcoreError | None = None


class _PendingOpen:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: ChannelOpened | ChannelRefused | None = None
        self.error: LeapcoreError | None = None


class HubSession:
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
        #: Seconds of silence after which a busy session sends a heartbeat (None: never).
        self.keepalive = keepalive
        #: Heartbeats sent to keep the link alive.
        self.heartbeats_sent = 0
        self._last_sent = trio.current_time()
        self._pipe = pipe
        self._conn = conn
        self._send_lock = WriteLock()
        self._slots = trio.Semaphore(MAX_PENDING)
        self._ids = itertools.count(1)
        self._last_id = 0
        self._pending: dict[int, _Pending] = {}
        self._opens: dict[int, _PendingOpen] = {}
        self._orphans: list[int] = []
        self._failure: LeapcoreError | None = None
        #: The channels open on this link, by channel id.
        self.channels = ChannelTable()
        #: The hub's URL, as dialled.
        self.url = url
        #: Where worker keys are pinned (``None``: no pinning).
        self.pins = pins
        #: The signed-in user, as the hub greeted it.
        self.user_id = greeting.user_id
        self.user_name = greeting.user_name

    # -- calls --------------------------------------------------------------------------

    async def call(
        self, method: str, *, timeout: float = CALL_TIMEOUT, **params: Any
    ) -> dict[str, Any]:
        """Send ``method(params)`` and return the ``result`` object; raises on an error answer,
        a closed link, or no answer within ``timeout`` seconds (:class:`DeadlineExceeded`)."""
        async with self._slots:
            if self._failure is not None:
                raise self._failure
            request_id = next(self._ids)
            self._last_id = request_id
            pending = _Pending()
            self._pending[request_id] = pending
            try:
                data = self._conn.send(HubRequest(request_id, method, dict(params)))
                await self._write(data)
                with trio.move_on_after(timeout):
                    await pending.done.wait()
                if not pending.done.is_set():
                    raise DeadlineExceeded(f"the hub did not answer {method} within {timeout:g}s")
            finally:
                self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def send(self, message: LinkMessage) -> None:
        """Write one message to the hub (the link's one writer: sends take turns)."""
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[LinkMessage]) -> None:
        """Write several messages in one transport write, in order (sends take turns)."""
        if self._failure is not None:
            raise self._failure
        data = b"".join([self._conn.send(message) for message in messages])
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            await self._pipe.send(data)
            self._last_sent = trio.current_time()

    @property
    def busy(self) -> bool:
        """True while a channel is open or a call or an open waits for its answer."""
        return bool(len(self.channels) or self._pending or self._opens)

    async def request_open(
        self,
        worker_id: str,
        message1: bytes,
        max_message_size: int,
        *,
        timeout: float = OPEN_TIMEOUT,
    ) -> ChannelOpened | ChannelRefused:
        """Send ``open_channel`` and wait for the hub's answer (see :mod:`leapcore.peer.opener`),
        at most ``timeout`` seconds (:class:`DeadlineExceeded`; a late ``channel_opened`` is
        closed)."""
        async with self._slots:
            if self._failure is not None:
                raise self._failure
            request_id = next(self._ids)
            self._last_id = request_id
            pending = _PendingOpen()
            self._opens[request_id] = pending
            try:
                await self.send(OpenChannel(request_id, worker_id, message1, max_message_size))
                with trio.move_on_after(timeout):
                    await pending.done.wait()
                if not pending.done.is_set():
                    raise DeadlineExceeded(
                        f"the hub did not answer the open of a channel to {worker_id} within "
                        f"{timeout:g}s"
                    )
            finally:
                self._opens.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        assert pending.answer is not None
        return pending.answer

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

    async def create_registration_key(self) -> dict[str, Any]:
        """``{"registration_key", "expires_at"}`` (ms since the epoch): ``regkey.create``."""
        return await self.call("regkey.create")

    async def extend_registration_key(self, key: str) -> int:
        """The key's new expiry (ms); :class:`FailedPrecondition` while 2 min or more remain."""
        expires_at: int = (await self.call("regkey.extend", registration_key=key))["expires_at"]
        return expires_at

    async def revoke_registration_key(self, key: str) -> None:
        await self.call("regkey.revoke", registration_key=key)

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

    # -- the reader ------------------------------------------------------------------------

    def _fail(self, error: LeapcoreError) -> None:
        if self._failure is None:
            self._failure = error
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = self._failure
                pending.done.set()
        for opening in self._opens.values():
            if not opening.done.is_set():
                opening.error = self._failure
                opening.done.set()
        self.channels.close_all("link_lost", f"the link to the hub ended: {self._failure}")

    async def _reader(self) -> None:
        """Deliver responses until the link ends; never raises (failures fail the calls)."""
        try:
            while True:
                while (message := self._conn.next_message()) is not None:
                    self._handle(message)
                while self._orphans:  # opened after its caller gave up: close it
                    orphan = self._orphans.pop()
                    await self.send(ChannelClose(orphan, "closed", "the open was abandoned"))
                self._conn.receive_data(await self._pipe.receive())
        except LeapcoreError as exc:
            self._fail(exc)
        finally:
            self._fail(LinkClosed("the link to the hub is closed"))

    def _handle(self, message: LinkMessage) -> None:
        if isinstance(message, HubResponse):
            pending = self._pending.get(message.request_id)
            if pending is None:
                if 0 < message.request_id <= self._last_id:
                    return  # an answer to a call that gave up waiting
                raise LinkProtocolError(f"hub_response for unknown request {message.request_id}")
            if message.error_code is not None:
                pending.error = hub_error(message.error_code, message.error_message or "")
            elif message.result is None:
                pending.error = LinkProtocolError("hub_response carries neither result nor error")
            else:
                pending.result = message.result
            pending.done.set()
        elif isinstance(message, (ChannelOpened, ChannelRefused)):
            opening = self._opens.get(message.request_id)
            if opening is None:
                if 0 < message.request_id <= self._last_id:
                    if isinstance(message, ChannelOpened):  # gave up waiting: close it
                        self._orphans.append(message.channel_id)
                    return
                raise LinkProtocolError(f"{message.type} for unknown request {message.request_id}")
            opening.answer = message
            opening.done.set()
        elif self.channels.deliver(message):
            pass
        elif isinstance(message, GoAway):
            log.info("the hub is going away: %s", message.reason)
            raise LinkClosed(f"the hub is going away: {message.reason}")
        elif isinstance(message, ErrorMessage):
            raise hub_error(message.code, message.message)
        # heartbeat_ack and channel traffic: nothing to do for hub calls.


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
                nursery.start_soon(session._reader)
                nursery.start_soon(session._keepalive)
                try:
                    yield session
                finally:
                    nursery.cancel_scope.cancel()
