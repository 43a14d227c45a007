"""A worker's own channel opens (to a sibling) follow the client's orphan policy.

A real :class:`~leapcore.worker.daemon.Worker` against the scripted fake hub of
``support.fakehub``, under a MockClock: the worker asks for a sibling's keys, sends
``open_channel``, and its caller gives up before the hub answers. When the hub's
``channel_opened`` arrives after that, the worker closes the channel (one ``channel_close``),
instead of leaving it open at the hub; a duplicate answer is not closed twice, and an
answer to a request the worker never made ends the link (the worker reconnects).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from support.fakehub import HubLink, hub_running, make_worker

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import DeadlineExceeded
from leapcore.proto.link_codec import (
    ChannelClose,
    ChannelOpened,
    Deregister,
    Heartbeat,
    HeartbeatAck,
    HubRequest,
    HubResponse,
    LinkMessage,
    OpenChannel,
)
from leapcore.store.workerstate import WorkerState, save_state
from leapcore.worker.daemon import WorkerExit


@pytest.fixture
def registered_dir(tmp_path: Path, generated_keypair: WorkerKeyPair) -> Path:
    save_state(tmp_path, WorkerState("w-1", "auth-token-abcdef", generated_keypair))
    return tmp_path


async def next_of(link: HubLink, kind: type[LinkMessage]) -> LinkMessage:
    """The next message of ``kind`` from the worker (heartbeats are answered on the way)."""
    while True:
        message = await link.recv()
        if isinstance(message, kind):
            return message
        if isinstance(message, Heartbeat):
            await link.send(HeartbeatAck(message.seq))


async def test_a_cross_worker_open_answered_after_its_caller_gave_up_is_closed(
    registered_dir: Path, autojump_clock: trio.testing.MockClock, generated_keypair: WorkerKeyPair
) -> None:
    gave_up = trio.Event()

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        keys = await next_of(link, HubRequest)
        assert isinstance(keys, HubRequest) and keys.method == "worker.keys"
        sibling = {"worker_id": "w-2", "encryption_mode": "post-quantum"}
        await link.send(HubResponse(keys.request_id, sibling | generated_keypair.public.to_json()))
        request = await next_of(link, OpenChannel)
        assert isinstance(request, OpenChannel) and request.worker_id == "w-2"
        await gave_up.wait()  # the hub holds the answer until the worker's caller gave up
        opened = ChannelOpened(request.request_id, 41, b"late message 2", 65519)
        await link.send(opened)
        await link.send(opened)  # a duplicate
        with trio.fail_after(60):  # a worker that drops the answer never closes it
            await next_of(link, ChannelClose)
        await link.send(Deregister(9, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        async with trio.open_nursery() as nursery:

            async def caller() -> None:
                await worker.wait_online()
                start = trio.current_time()
                with pytest.raises(DeadlineExceeded, match="did not open within 5s"):
                    async with worker.open_channel("w-2", timeout=5):
                        raise AssertionError("not reached")  # pragma: no cover
                assert trio.current_time() - start == pytest.approx(5)
                gave_up.set()

            nursery.start_soon(caller)
            assert await worker.run() is WorkerExit.DEREGISTERED
    closes = [m for _, m in hub.log if isinstance(m, ChannelClose)]
    assert closes == [ChannelClose(41, "closed", "the open was abandoned")]  # exactly one
    assert len(hub.links) == 1


async def test_an_answer_to_a_request_the_worker_never_made_ends_the_link(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        if n == 0:
            await link.send(ChannelOpened(5, 41, b"forged", 65519))
        else:
            await link.send(Deregister(9, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    assert len(hub.links) == 2  # the first link ended; the worker reconnected
    assert not [m for _, m in hub.log if isinstance(m, ChannelClose)]
