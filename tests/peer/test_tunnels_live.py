"""Tunnels through a real hub and a real worker in this process (loopback sockets, classic
mode): a channel lost mid-transfer resets the connections it carried, the tunnel goes on
while the worker is away, and the next connection opens a new channel."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from support.hubpeer import registered_worker, serve_hub

import leapcore
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import LinkClosed
from leapcore.hub.server import Hub
from leapcore.peer.tunnel import channel_pool, forward_local
from leapcore.store.pinstore import PinStore
from leapcore.worker.daemon import Worker
from leapcore.worker.signpool import InlineSigner

MIB = 1024 * 1024
#: What the source server sends, over and over.
BLOCK = random.Random(7).randbytes(MIB)


def now_ms() -> int:
    return int(time.time() * 1000)


async def source(stream: trio.SocketStream) -> None:
    """Send BLOCK until the connection breaks."""
    try:
        while True:
            await stream.send_all(BLOCK)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def read_checked(stream: trio.SocketStream, at_least: int, got: int = 0) -> int:
    """Read until ``at_least`` bytes were received in all (``got`` so far), each checked
    against BLOCK; the new total."""
    while got < at_least:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF after {got} bytes"
        start = got % len(BLOCK)
        assert chunk == (BLOCK * 2)[start : start + len(chunk)], f"wrong bytes at {got}"
        got += len(chunk)
    return got


class Box:
    """Worker ``box`` of user alice, registered at the hub; :meth:`start` runs it (again,
    with the same data directory) until :meth:`kill`."""

    def __init__(self, hub: Hub, url: str, data: Path, nursery: trio.Nursery) -> None:
        self.hub, self.url, self.data, self.nursery = hub, url, data, nursery
        self.scope: trio.CancelScope | None = None

    async def start(self) -> None:
        daemon = Worker(
            self.data,
            hub_url=self.url,
            name="box",
            encryption_mode="classic",
            signer=InlineSigner(),
        )
        scope = self.scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await daemon.run()

        self.nursery.start_soon(run)
        await daemon.wait_online()

    def kill(self) -> None:
        """Stop the worker at once (its link to the hub drops)."""
        assert self.scope is not None
        self.scope.cancel()


@asynccontextmanager
async def hub_and_box(
    tmp_path: Path, keypair: WorkerKeyPair
) -> AsyncIterator[tuple[Box, str, str, trio.Nursery, trio.CancelScope]]:
    """(the worker, its id, alice's token, a nursery, the hub's cancel scope) with the hub
    serving and alice's worker ``box`` online."""
    hub = Hub(tmp_path / "hub.db")
    data = tmp_path / "box"
    worker_id, token = registered_worker(hub, data, keypair)
    async with trio.open_nursery() as nursery:
        url, hub_scope = await serve_hub(hub, nursery)
        box = Box(hub, url, data, nursery)
        await box.start()
        yield box, worker_id, token, nursery, hub_scope
        nursery.cancel_scope.cancel()


async def test_a_channel_lost_mid_transfer(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    with trio.fail_after(60):
        async with hub_and_box(tmp_path, generated_keypair) as (box, worker_id, token, nursery, _):
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, source, 0, host="127.0.0.1")
            )
            target = ("127.0.0.1", listeners[0].socket.getsockname()[1])
            pins = PinStore(tmp_path / "pins.json", hint="clear {worker_id}")
            async with (
                leapcore.connect(box.url, token=token, pins=pins) as session,
                channel_pool(session, worker_id) as pool,
            ):
                bound = await nursery.start(forward_local, pool, ("127.0.0.1", 0), target)

                # A transfer in progress, then the worker gone: the connection is reset.
                client = await trio.open_tcp_stream(*bound)
                got = await read_checked(client, 2 * MIB)
                box.kill()
                with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
                    while True:
                        got = await read_checked(client, got + 1, got)
                await client.aclose()
                assert pool.opened == 1

                # While it is away, a connection fails alone and the listener stays.
                away = await trio.open_tcp_stream(*bound)
                with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
                    await away.receive_some(10)
                await away.aclose()

                # Back (same data directory): the next connection opens a new channel.
                await box.start()
                again = await trio.open_tcp_stream(*bound)
                assert await read_checked(again, MIB) >= MIB
                await again.aclose()
                assert pool.opened == 2
                assert not session.ended.is_set()


async def test_the_session_reports_its_link_ending(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    """``HubSession.ended`` and ``failure``, what ``leapcore remote tunnel`` waits on to exit:
    a worker going away does not set them, the hub going away does."""
    with trio.fail_after(60):
        async with hub_and_box(tmp_path, generated_keypair) as (box, worker_id, token, _, hub):
            pins = PinStore(tmp_path / "pins.json", hint="clear {worker_id}")
            async with (
                leapcore.connect(box.url, token=token, pins=pins) as session,
                channel_pool(session, worker_id) as pool,
            ):
                channel = await pool.channel()
                box.kill()
                await channel.finished.wait()  # the hub told us the worker's end is gone
                assert not session.ended.is_set() and session.failure is None

                hub.cancel()  # the hub stops: every link it holds closes
                await session.ended.wait()
                assert isinstance(session.failure, LinkClosed), session.failure
