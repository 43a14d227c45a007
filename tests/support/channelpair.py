"""A real channel pair joined in memory: the real handshake and ciphers (classic mode), the
hub played by a relay that delivers each frame and gives the sender its credit back. The
worker end serves the ``Services`` a kit gives it (``tcp`` in tunnelkit, ``exec`` in
execkit)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from leapcore.crypto.handshake import Initiator, Responder
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.peer.channel import Channel, Services
from leapcore.proto.channel_mux import DEFAULT_MAX_STREAMS, ChannelEndpoint
from leapcore.proto.link_codec import ChannelData, LinkMessage
from leapcore.proto.link_records import ChannelRequest
from leapcore.worker.channels import ChannelServer
from leapcore.worker.signpool import InlineSigner

OWNER = "u-owner"


class MemoryPair:
    """A client channel and a worker channel joined in memory."""

    def __init__(self) -> None:
        self.client: Channel
        self.worker: Channel

    async def to_worker(self, message: LinkMessage) -> None:
        assert isinstance(message, ChannelData)
        await trio.lowlevel.checkpoint()
        self.worker.feed(message)
        self.client.add_credit(len(message.ciphertext))

    async def to_client(self, message: LinkMessage) -> None:
        assert isinstance(message, ChannelData)
        await trio.lowlevel.checkpoint()
        self.client.feed(message)
        self.worker.add_credit(len(message.ciphertext))

    def join(
        self,
        keypair: WorkerKeyPair,
        services: Services,
        *,
        user_id: str = OWNER,
        channel_id: int = 3,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        """Handshake and build both ends; ``max_streams``: the streams the worker end lets
        the client have open at once (a real worker's channels allow 128)."""
        initiator = Initiator(keypair.public, "classic")
        responder = Responder(keypair, "classic")
        responder.read_message1(initiator.write_message1())
        initiator.read_message2(responder.write_message2())
        now = trio.current_time()
        self.client = Channel(
            ChannelEndpoint(initiator.session(), role="initiator", mode="classic", now=now),
            channel_id=channel_id,
            send=self.to_worker,
        )
        self.worker = Channel(
            ChannelEndpoint(
                responder.session(),
                role="responder",
                mode="classic",
                now=now,
                max_streams=max_streams,
            ),
            channel_id=channel_id,
            send=self.to_client,
            services=services,
            user_id=user_id,
            owner_id=OWNER,
        )


@asynccontextmanager
async def running(pair: MemoryPair) -> AsyncIterator[None]:
    """Both ends' pumps running until the block ends."""
    async with trio.open_nursery() as nursery:
        await nursery.start(pair.client.run)
        await nursery.start(pair.worker.run)
        yield
        nursery.cancel_scope.cancel()


async def answers_to_requests(
    keypair: WorkerKeyPair,
    requests: Sequence[ChannelRequest],
    *,
    services: Services,
    on_refused: Callable[[ChannelRequest, str, str], None] | None = None,
) -> tuple[list[LinkMessage], ChannelServer]:
    """What a real ``ChannelServer`` (owner :data:`OWNER`, classic mode) sends back for raw
    ``requests``, as a raw link (or a lying hub) would make them."""
    sent: list[LinkMessage] = []

    async def send(message: LinkMessage) -> None:
        sent.append(message)

    async with trio.open_nursery() as nursery:
        server = ChannelServer(
            keypair=keypair,
            mode="classic",
            owner_id=OWNER,
            send=send,
            signer=InlineSigner(),
            services=services,
            nursery=nursery,
            on_refused=on_refused,
        )
        for request in requests:
            await server.handle_request(request)
    return sent, server
