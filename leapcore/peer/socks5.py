"""A local SOCKS5 proxy (trio) whose connections are dialled from the worker: the driver
of the sans-IO codec :mod:`leapcore.proto.socks5`, on the listener, channel pool and copy
loop of :mod:`leapcore.peer.tunnel`::

    async with channel_pool(session, worker_id) as pool:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_socks5, pool, ("127.0.0.1", 1080))

The rules beyond the tunnel's (spec §6.2):

* a SOCKS5 handshake is bounded by :data:`SOCKS_HANDSHAKE_TIMEOUT` (30 s);
* a SOCKS5 listener holds at most ``max_pending_handshakes`` handshakes at once
  (:data:`~leapcore.proto.limits.SOCKS_MAX_PENDING_HANDSHAKES`, 512): one more connection
  closes the **oldest** pending handshake, so idle connections cannot lock out clients
  that finish theirs in milliseconds; one warning per episode (it ends when the pending
  handshakes fall to half the budget);
* SOCKS5 (:mod:`leapcore.proto.socks5`): a failed dial answers by its reason
  (``connection_refused`` 0x05, ``network_unreachable`` 0x03, ``denied_by_policy`` 0x02,
  else 0x04; a timeout 0x04); a failure that is not the dial's (the channel is gone)
  answers 0x01.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final

import trio

from ..errors import ConfigError, DeadlineExceeded, LeapcoreError, Socks5Error, TunnelDialFailed
from ..proto.limits import SOCKS_MAX_PENDING_HANDSHAKES
from ..proto.socks5 import Reply, Socks5Server, reply_for_dial_failure
from .tunnel import (
    COPY_CHUNK,
    Dial,
    Opener,
    Stream,
    accept_loop,
    dial_bounded,
    dialer,
    listen,
    peer_name,
    pipe,
    where,
)

__all__ = ["SOCKS_HANDSHAKE_TIMEOUT", "SOCKS_MAX_PENDING_HANDSHAKES", "serve_socks5"]

log = logging.getLogger(__name__)

#: Seconds a SOCKS5 client has to finish its greeting and request.
SOCKS_HANDSHAKE_TIMEOUT: Final = 30.0


async def serve_socks5(
    opener: Opener,
    bind: tuple[str, int],
    *,
    max_pending_handshakes: int = SOCKS_MAX_PENDING_HANDSHAKES,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """A SOCKS5 proxy (CONNECT, no authentication) on ``bind`` whose connections are
    dialled from the worker (domain names resolved there);
    ``task_status.started((host, port))`` with the bound address. At most
    ``max_pending_handshakes`` connections may be in their handshake at once: one more
    closes the oldest of them."""
    if type(max_pending_handshakes) is not int or max_pending_handshakes < 1:
        raise ConfigError(
            f"max_pending_handshakes must be a positive integer, got {max_pending_handshakes!r}"
        )
    dial = dialer(opener)
    listener, bound = await listen(bind)
    name = f"socks5 {where(*bound)}"
    budget = _HandshakeBudget(max_pending_handshakes, name)

    async def handle(stream: trio.SocketStream) -> None:
        peer = peer_name(stream)
        try:
            await _socks_connection(stream, dial, name, peer, budget)
        finally:
            await trio.aclose_forcefully(stream)

    task_status.started(bound)
    await accept_loop(listener, handle, name=name)


class _Slot:
    """One pending handshake: its cancel scope, and whether it was closed to make room."""

    __slots__ = ("evicted", "scope")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.evicted = False


class _HandshakeBudget:
    """The SOCKS5 handshakes one listener holds, oldest first: at most ``limit``; one more
    cancels the oldest (:meth:`hold`). One warning per episode: it starts when the budget
    is first full and ends when the pending handshakes fall to half of it."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit = limit
        self.name = name
        self._pending: dict[int, _Slot] = {}  # insertion order: oldest first
        self._ids = itertools.count()
        #: Handshakes closed to make room, in all (and in the current episode).
        self.evicted = 0
        self._episode = 0
        self.full = False

    def __len__(self) -> int:
        return len(self._pending)

    @contextmanager
    def hold(self, scope: trio.CancelScope) -> Iterator[_Slot]:
        """Count a handshake (run it under ``scope``) until the block ends; if the budget is
        full, the oldest pending handshake's scope is cancelled first."""
        if len(self._pending) >= self.limit:
            oldest = self._pending.pop(next(iter(self._pending)))
            oldest.evicted = True
            oldest.scope.cancel()
            self.evicted += 1
            self._episode += 1
            if not self.full:
                self.full = True
                log.warning(
                    "%s: %d SOCKS5 handshakes pending (the budget); each new connection "
                    "closes the oldest of them; not logged again until %d or fewer are pending",
                    self.name,
                    self.limit,
                    self.limit // 2,
                )
        key = next(self._ids)
        slot = _Slot(scope)
        self._pending[key] = slot
        try:
            yield slot
        finally:
            self._pending.pop(key, None)
            if self.full and len(self._pending) <= self.limit // 2:
                self.full = False
                log.info(
                    "%s: %d pending handshakes were closed to make room; %d pending now",
                    self.name,
                    self._episode,
                    len(self._pending),
                )
                self._episode = 0


async def _handshake(stream: Stream, server: Socks5Server) -> Any:
    while True:
        event = server.next_event()
        out = server.data_to_send()
        if out:
            await stream.send_all(out)
        if event is not None:
            return event
        server.receive_data(await stream.receive_some(COPY_CHUNK))


async def _socks_connection(
    stream: Stream, dial: Dial, name: str, peer: str, budget: _HandshakeBudget
) -> None:
    server = Socks5Server()
    waited = trio.CancelScope(deadline=trio.current_time() + SOCKS_HANDSHAKE_TIMEOUT)
    request = None
    with budget.hold(waited) as slot:
        try:
            with waited:
                request = await _handshake(stream, server)
        except Socks5Error as exc:
            log.info("%s: client %s: %s", name, peer, exc)
            out = server.data_to_send()
            if out:
                with suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(out)
            return
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s: client %s went away: %s", name, peer, exc)
            return
    if request is None:
        if slot.evicted:
            log.debug("%s: client %s: its handshake was closed to make room", name, peer)
        else:
            log.info("%s: client %s did not finish its request in time", name, peer)
        return
    target = where(request.host, request.port)
    try:
        remote = await dial_bounded(dial, request.host, request.port)
    except trio.TooSlowError:
        code = Reply.HOST_UNREACHABLE
        log.info("%s: %s -> %s: timed out", name, peer, target)
    except LeapcoreError as exc:
        if isinstance(exc, TunnelDialFailed):
            code = reply_for_dial_failure(exc.reason)
        elif isinstance(exc, DeadlineExceeded):
            code = Reply.HOST_UNREACHABLE
        else:
            code = Reply.GENERAL_FAILURE
        log.info("%s: %s -> %s: %s", name, peer, target, exc)
    else:
        code = Reply.SUCCEEDED
    server.reply(code)
    try:
        await stream.send_all(server.data_to_send())
        if code is not Reply.SUCCEEDED:
            return
        log.info("%s: %s -> %s", name, peer, target)
        if server.leftover:
            await remote.send_all(server.leftover)
    except (OSError, LeapcoreError, trio.BrokenResourceError, trio.ClosedResourceError):
        if code is Reply.SUCCEEDED:
            await trio.aclose_forcefully(remote)
        return
    await pipe(stream, remote)
    log.info("%s: %s -> %s closed", name, peer, target)
