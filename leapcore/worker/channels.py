"""The responder's side of channels on a worker's link (trio).

:class:`ChannelServer` answers each ``channel_request`` the hub forwards, checking, in the
order of ``spec/behavior.md`` §5.4 and before any cryptography:

1. the channel id is not already active (``channel_already_active``);
2. the hub named a user (``no_authenticated_user``) and that user is the worker's owner
   as the hub's greeting named it (``permission_denied``: a hub or raw link cannot open a
   channel for anyone else);
3. the hub's ``max_message_size`` is within [65519, 64 MiB] (``invalid_max_message_size``);
4. the link has fewer than ``max_channels`` channels open or opening
   (:data:`MAX_CHANNELS`, 256) and fewer than :data:`MAX_OPENING` (64) handshakes in
   progress (``resource_exhausted``).

Each channel is bounded: at most ``max_incomplete`` unfinished chunked messages
(:data:`~leapcore.proto.chunking.DEFAULT_MAX_INCOMPLETE`, 4; more fail their correlation id
with ``resource_exhausted``) and at most ``max_channel_bytes`` bytes held for the client --
incomplete chunked messages plus the request payloads of running handlers (default
:data:`CHANNEL_BYTES_FACTOR` times the worker's ``max_message_size``: 32 MiB at 16 MiB);
past it a chunked message fails, or a request is answered ``resource_exhausted``. The
streams the client may have open on one channel are ``max_channel_bytes`` divided by a
byte stream's receive window (:data:`~leapcore.proto.channel_windows.DEFAULT_WINDOW`, 256 KiB):
128 by default, at least :data:`MIN_STREAMS`; one more is refused
``resource_exhausted``. So what byte streams may have in flight towards the worker is
bounded by the same budget. Other channels are unaffected.

Then the responder handshake runs; its SLH-DSA signature (post-quantum mode, ~125 ms of
CPU) is computed by the injected :class:`~leapcore.worker.signpool.Signer` -- a process pool in
the daemon -- so a burst of opens never stalls the event loop. The duplicate check is
repeated after the handshake. The answer is ``channel_accept`` with
``min(hub, worker)`` as the message size, or ``channel_reject`` with the code. Each open
runs in its own task, so the link's reader never waits for a handshake.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from ..crypto.handshake import Responder
from ..crypto.keys import WorkerKeyPair
from ..crypto.mode import EncryptionMode, parse_encryption_mode
from ..crypto.transport import TransportSession
from ..errors import ConfigError, LeapcoreError
from ..peer.channel import Channel, ChannelTable, SendMany, SendNowait, Services
from ..proto.channel_mux import DEFAULT_MAX_STREAMS, ChannelEndpoint
from ..proto.channel_windows import DEFAULT_WINDOW
from ..proto.limits import (
    DEFAULT_MAX_INCOMPLETE,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_CHANNELS,
    validate_max_message_size,
)
from ..proto.link_codec import ChannelAccept, ChannelReject, ChannelRequest, LinkMessage
from .signpool import Signer

__all__ = [
    "CHANNEL_BYTES_FACTOR",
    "MAX_OPENING",
    "MIN_STREAMS",
    "OPEN_RESULTS",
    "ChannelServer",
]

log = logging.getLogger("leapcore.worker")

#: Handshakes in progress at once; more are refused at once (the hub retries nothing).
MAX_OPENING: Final = 64
#: The default per-channel byte budget, as a multiple of the worker's max_message_size.
CHANNEL_BYTES_FACTOR: Final = 2
#: The fewest streams a channel may have open at once, however small ``max_channel_bytes``.
MIN_STREAMS: Final = 16

Send = Callable[[LinkMessage], Awaitable[None]]

#: What a ``channel_request`` can come to (the counts of ``results``): ``opened``, or the
#: refusal's code.
OPEN_RESULTS: Final = (
    "opened",
    "channel_already_active",
    "no_authenticated_user",
    "permission_denied",
    "invalid_max_message_size",
    "resource_exhausted",
    "handshake_failed",
)


def check_bounds(**bounds: object) -> None:
    """Each of ``bounds`` (a worker's channel budgets, by setting name) must be a positive
    integer; :class:`ConfigError` naming the first that is not."""
    for name, value in bounds.items():
        if type(value) is not int or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class ChannelServer:
    """The channels of one worker link (a fresh one per connection attempt)."""

    def __init__(
        self,
        *,
        keypair: WorkerKeyPair,
        mode: EncryptionMode | str,
        owner_id: str,
        send: Send,
        signer: Signer,
        send_nowait: SendNowait | None = None,
        send_many: SendMany | None = None,
        services: Services,
        nursery: trio.Nursery,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = trio.current_time,
        max_channels: int = MAX_CHANNELS,
        max_incomplete: int = DEFAULT_MAX_INCOMPLETE,
        max_channel_bytes: int | None = None,
        on_refused: Callable[[ChannelRequest, str, str], None] | None = None,
        results: collections.Counter[str] | None = None,
    ) -> None:
        self.keypair = keypair
        #: Called with each request refused and its code and message (the audit log).
        self._on_refused = on_refused
        self.mode = parse_encryption_mode(mode)
        self.owner_id = owner_id
        self.channels = ChannelTable()
        self._send = send
        self._send_nowait = send_nowait
        self._send_many = send_many
        self._signer = signer
        self._services = services
        self._nursery = nursery
        self._max_message_size = validate_max_message_size(max_message_size)
        check_bounds(max_channels=max_channels, max_incomplete_chunked=max_incomplete)
        if max_channel_bytes is None:
            max_channel_bytes = CHANNEL_BYTES_FACTOR * self._max_message_size
        if type(max_channel_bytes) is not int or max_channel_bytes < self._max_message_size:
            raise ConfigError(
                f"max_channel_bytes must be an integer >= max_message_size "
                f"({self._max_message_size}), got {max_channel_bytes!r}"
            )
        self.max_channels = max_channels
        self.max_incomplete = max_incomplete
        self.max_channel_bytes = max_channel_bytes
        #: Streams the client may have open at once on one channel: each byte stream's
        #: receive window is credit the client may fill, so their windows together stay
        #: within about ``max_channel_bytes`` (at least :data:`MIN_STREAMS`).
        self.max_streams = min(
            DEFAULT_MAX_STREAMS, max(MIN_STREAMS, max_channel_bytes // DEFAULT_WINDOW)
        )
        self._clock = clock
        self._opening: set[int] = set()
        #: Channels opened on this link so far.
        self.opened = 0
        #: Requests answered, by result (:data:`OPEN_RESULTS`); the worker passes one
        #: counter to every link's server, so it counts the worker's whole life.
        self.results: collections.Counter[str] = (
            results if results is not None else collections.Counter()
        )

    def _active(self, channel_id: int) -> bool:
        return channel_id in self.channels.channels or channel_id in self._opening

    def _refusal(self, request: ChannelRequest) -> tuple[str, str] | None:
        if self._active(request.channel_id):
            return "channel_already_active", "channel id already active"
        if not request.user_id:
            return "no_authenticated_user", "no authenticated user id"
        if request.user_id != self.owner_id:
            return "permission_denied", "only the worker owner may open channels"
        try:
            validate_max_message_size(request.max_message_size)
        except LeapcoreError as exc:
            return "invalid_max_message_size", f"invalid hub max_message_size: {exc}"
        if len(self.channels) + len(self._opening) >= self.max_channels:
            return (
                "resource_exhausted",
                f"the worker has {self.max_channels} channels open on this link; the limit is "
                f"{self.max_channels}",
            )
        if len(self._opening) >= MAX_OPENING:
            return "resource_exhausted", "too many channel opens in progress"
        return None

    async def handle_request(self, request: ChannelRequest) -> None:
        """Called by the link reader; refusals go out at once, handshakes in their own task."""
        refusal = self._refusal(request)
        if refusal is not None:
            code, message = refusal
            self.results[code] += 1
            log.info("channel %d refused: %s", request.channel_id, message)
            if self._on_refused is not None:
                self._on_refused(request, code, message)
            await self._send(ChannelReject(request.request_id, request.channel_id, code, message))
            return
        self._opening.add(request.channel_id)
        self._nursery.start_soon(self._open, request)

    async def _open(self, request: ChannelRequest) -> None:
        try:
            try:
                message2, session = await self._handshake(request.message1)
            except Exception as exc:
                # A bad message 1 is a LeapcoreError; anything else is a bug or a failing
                # signer. Either way it ends this open, never the link and its other channels.
                if isinstance(exc, LeapcoreError):
                    log.info("channel %d: handshake failed: %s", request.channel_id, exc)
                    why = f"handshake failed: {exc}"
                else:
                    log.exception("channel %d: handshake failed", request.channel_id)
                    why = "handshake failed: an internal error on the worker"
                self.results["handshake_failed"] += 1
                await self._send(
                    ChannelReject(request.request_id, request.channel_id, "handshake_failed", why)
                )
                return
            if request.channel_id in self.channels.channels:  # repeated after the handshake
                self.results["channel_already_active"] += 1
                await self._send(
                    ChannelReject(
                        request.request_id,
                        request.channel_id,
                        "channel_already_active",
                        "channel id already active",
                    )
                )
                return
            size = min(request.max_message_size, self._max_message_size)
            endpoint = ChannelEndpoint(
                session,
                role="responder",
                mode=self.mode,
                now=self._clock(),
                max_message_size=size,
                max_incomplete=self.max_incomplete,
                max_streams=self.max_streams,
                mlkem_private=self.keypair.mlkem_key
                if self.mode is EncryptionMode.POST_QUANTUM
                else None,
            )
            channel = Channel(
                endpoint,
                channel_id=request.channel_id,
                send=self._send,
                send_many=self._send_many,
                send_nowait=self._send_nowait,
                clock=self._clock,
                services=self._services,
                user_id=request.user_id,
                owner_id=self.owner_id,
                max_held_bytes=self.max_channel_bytes,
            )
            self.channels.add(channel)
            self.opened += 1
            self.results["opened"] += 1
        finally:
            self._opening.discard(request.channel_id)
        await self._send(ChannelAccept(request.request_id, request.channel_id, message2, size))
        log.info("channel %d open", request.channel_id)
        try:
            await channel.run()
        finally:
            self.channels.discard(channel)

    async def _handshake(self, message1: bytes) -> tuple[bytes, TransportSession]:
        responder = Responder(self.keypair, self.mode)
        transcript = responder.read_message1(message1)
        signature = None
        if transcript is not None:
            signature = await self._signer.sign(self.keypair.slhdsa_private, transcript)
        message2 = responder.write_message2(signature)
        return message2, responder.session()

    def close_all(self, code: str, message: str) -> None:
        self.channels.close_all(code, message)
