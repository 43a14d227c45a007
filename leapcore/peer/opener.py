"""The initiator's side of opening a channel (trio), shared by clients and workers.

:func:`open_channel` runs the open of ``design.md``, in this order:

1. ask the hub for the worker's three public keys and mode (``worker.keys``);
2. check them against the TOFU pin store **before** anything is sent to the worker
   (first use pins; a mismatch raises :class:`~leapcore.errors.KeyMismatch` and nothing
   is sent);
3. send handshake message 1 in ``open_channel`` and wait for ``channel_opened`` (or the
   refusal, raised by meaning: :class:`~leapcore.errors.ChannelOpenFailed`, ``NotFound``,
   ``WorkerOffline``, ``HubUnavailable``, ``DeadlineExceeded``);
4. finish the handshake (a hub that swapped keys fails here:
   :class:`~leapcore.errors.HandshakeError`) and start the channel's pump;
5. round-trip a Ping inside the channel (10 s) before handing the channel out.

The whole open is bounded by :data:`OPEN_TIMEOUT` (30 s, ``timeout=``): past it the open
raises :class:`~leapcore.errors.DeadlineExceeded` (so does a hub's own ``timeout``
refusal). The link it runs on is anything
with the small :class:`OpenerLink` surface: a :class:`~leapcore.peer.hubsession.PeerLink` --
the client's :class:`~leapcore.peer.hubsession.HubSession`, or a worker's own link
(cross-worker channels). An open answered after the caller gave up (its deadline, or a
cancellation) is closed by that link (:mod:`leapcore.proto.link_session`, rule 5).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import trio

from ..crypto.handshake import Initiator
from ..crypto.keys import PublicKeyBundle
from ..crypto.mode import EncryptionMode, parse_encryption_mode
from ..errors import (
    ChannelOpenFailed,
    DeadlineExceeded,
    HubUnavailable,
    LeapcoreError,
    LinkProtocolError,
    NotFound,
    WorkerOffline,
)
from ..net.trioutil import single_exception
from ..proto.channel_mux import ChannelEndpoint
from ..proto.limits import DEFAULT_MAX_MESSAGE_SIZE, OPEN_TIMEOUT, validate_max_message_size
from ..proto.link_codec import ChannelClose, ChannelOpened, ChannelRefused, LinkMessage
from ..store.pinstore import PinStore
from .channel import Channel, ChannelTable, Services

__all__ = [
    "VERIFY_TIMEOUT",
    "OpenerLink",
    "WorkerKeys",
    "fetch_worker_keys",
    "open_channel",
    "refusal_error",
]

log = logging.getLogger(__name__)

#: Seconds the first in-channel Ping may take.
VERIFY_TIMEOUT: Final = 10.0


class OpenerLink(Protocol):
    """What :func:`open_channel` needs from a link to the hub."""

    channels: ChannelTable

    async def call(self, method: str, *, timeout: float = ..., **params: Any) -> dict[str, Any]: ...

    async def send(self, message: LinkMessage) -> None: ...

    async def send_many(self, messages: Sequence[LinkMessage]) -> None: ...

    def send_nowait(self, message: LinkMessage) -> bool: ...

    async def request_open(
        self, worker_id: str, message1: bytes, max_message_size: int
    ) -> ChannelOpened | ChannelRefused: ...


class WorkerKeys:
    """A worker's public keys and mode, as the hub reported them (not yet trusted)."""

    def __init__(self, worker_id: str, keys: PublicKeyBundle, mode: EncryptionMode) -> None:
        self.worker_id = worker_id
        self.keys = keys
        self.mode = mode


async def fetch_worker_keys(link: OpenerLink, worker_id: str) -> WorkerKeys:
    """``worker.keys`` from the hub, strictly decoded."""
    answer = await link.call("worker.keys", worker_id=worker_id)
    try:
        keys = PublicKeyBundle.from_json(
            {k: answer[k] for k in ("public_key", "mlkem_public_key", "slhdsa_public_key")},
            error=LinkProtocolError,
        )
        mode = parse_encryption_mode(answer["encryption_mode"])
    except (KeyError, TypeError, LeapcoreError) as exc:
        raise LinkProtocolError(f"hub sent malformed worker keys: {exc}") from None
    return WorkerKeys(worker_id, keys, mode)


def refusal_error(refused: ChannelRefused) -> LeapcoreError:
    """The error a ``channel_refused`` raises."""
    if refused.code == "not_found":
        return NotFound(refused.message)
    if refused.code == "worker_offline":
        return WorkerOffline(refused.message)
    if refused.code == "unavailable":  # the hub's own: retry later
        return HubUnavailable(refused.message)
    if refused.code == "timeout":  # the hub's own: the worker did not answer in time
        return DeadlineExceeded(refused.message)
    return ChannelOpenFailed(refused.code, refused.message)


@asynccontextmanager
async def open_channel(
    link: OpenerLink,
    worker_id: str,
    *,
    pins: PinStore | None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    timeout: float = OPEN_TIMEOUT,
    clock: Callable[[], float] = trio.current_time,
    services: Services | None = None,
) -> AsyncIterator[Channel]:
    """Open a verified channel to ``worker_id`` (see the module docstring); it is closed
    when the block ends. ``pins=None`` skips pinning (tests and one-off tools only)."""
    validate_max_message_size(max_message_size)
    deadline = trio.current_time() + timeout  # the whole open, first ping included
    with single_exception():
        channel = await _open(
            link, worker_id, pins, max_message_size, deadline, timeout, clock, services
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                try:
                    verify_by = min(trio.current_time() + VERIFY_TIMEOUT, deadline)
                    with trio.move_on_at(verify_by) as verify:
                        await channel.ping(timeout=None)  # bounded by verify_by
                    if verify.cancelled_caught:
                        raise DeadlineExceeded(
                            f"worker {worker_id} did not answer the first ping within "
                            f"{min(VERIFY_TIMEOUT, timeout):g}s"
                        )
                    yield channel
                finally:
                    with trio.move_on_after(5) as flush:
                        flush.shield = True
                        await channel.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            link.channels.discard(channel)


async def _open(
    link: OpenerLink,
    worker_id: str,
    pins: PinStore | None,
    max_message_size: int,
    deadline: float,
    timeout: float,
    clock: Callable[[], float],
    services: Services | None,
) -> Channel:
    with trio.move_on_at(deadline) as waited:
        found = await fetch_worker_keys(link, worker_id)
        if pins is not None:
            pins.verify(worker_id, found.keys)  # KeyMismatch: nothing was sent to the worker
        initiator = Initiator(found.keys, found.mode)
        answer = await link.request_open(worker_id, initiator.write_message1(), max_message_size)
        if isinstance(answer, ChannelRefused):
            raise refusal_error(answer)
        try:
            initiator.read_message2(answer.message2)
        except LeapcoreError:
            await link.send(ChannelClose(answer.channel_id, "closed", "handshake failed"))
            raise
        endpoint = ChannelEndpoint(
            initiator.session(),
            role="initiator",
            mode=found.mode,
            now=clock(),
            max_message_size=answer.max_message_size,
            worker_mlkem_public=found.keys.mlkem,
        )
        channel = Channel(
            endpoint,
            channel_id=answer.channel_id,
            send=link.send,
            send_many=link.send_many,
            send_nowait=link.send_nowait,
            clock=clock,
            services=services,
            worker_id=worker_id,
        )
        link.channels.add(channel)
        log.debug("channel %d to %s open (%s)", answer.channel_id, worker_id, found.mode)
        return channel
    assert waited.cancelled_caught
    raise DeadlineExceeded(f"the channel to {worker_id} did not open within {timeout:g}s")
