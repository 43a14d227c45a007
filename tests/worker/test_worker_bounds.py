"""Hostile tests of the worker's bounds, through a scripted fake hub (MockClock).

The fake hub (tests/worker/test_workerd.py) plays a hostile or merely busy client: many
``channel_request``s, chunked messages that never finish, requests that pile up. Each test
checks the refusal (a stable code), that what the worker holds stays within its budget,
and that the other channels still answer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from support.fakehub import FakeHub, HubLink, hub_running, make_worker

from leapcore.crypto.handshake import Initiator
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import ConfigError
from leapcore.peer.channel import CallContext, Channel, Services
from leapcore.proto.channel_events import ErrorReceived, Event, ProtocolViolation, ResponseReceived
from leapcore.proto.channel_mux import ChannelEndpoint
from leapcore.proto.channel_windows import DEFAULT_WINDOW
from leapcore.proto.chunking import ChannelFrame, FrameFlag
from leapcore.proto.limits import DEFAULT_MAX_MESSAGE_SIZE
from leapcore.proto.link_codec import (
    ChannelAccept,
    ChannelClose,
    ChannelData,
    ChannelReject,
    ChannelRequest,
    Deregister,
    Heartbeat,
    HeartbeatAck,
    LinkMessage,
)
from leapcore.store.workerstate import WorkerState, save_state
from leapcore.worker.channels import CHANNEL_BYTES_FACTOR, MIN_STREAMS, ChannelServer
from leapcore.worker.daemon import Worker, WorkerExit

OWNER = "u-1"  # the fake hub's greeting names u-1 as the owner
SIZE = 4 * 65519  # a small max_message_size, so budgets are small


@pytest.fixture
def classic_dir(tmp_path: Path, generated_keypair: WorkerKeyPair) -> Path:
    save_state(tmp_path, WorkerState("w-1", "tok", generated_keypair))
    return tmp_path


class Client:
    """The client end of one channel, driven by hand through the fake hub's link."""

    def __init__(self, link: HubLink, keypair: WorkerKeyPair, channel_id: int) -> None:
        self.link = link
        self.keypair = keypair
        self.channel_id = channel_id
        self.initiator = Initiator(keypair.public, "classic")
        self.endpoint: ChannelEndpoint | None = None

    def request(self, request_id: int) -> ChannelRequest:
        return ChannelRequest(
            request_id, self.channel_id, OWNER, self.initiator.write_message1(), SIZE
        )

    def accepted(self, accept: ChannelAccept) -> None:
        self.initiator.read_message2(accept.message2)
        self.endpoint = ChannelEndpoint(
            self.initiator.session(),
            role="initiator",
            mode="classic",
            now=trio.current_time(),
            max_message_size=accept.max_message_size,
        )

    async def flush(self) -> None:
        assert self.endpoint is not None
        for frame in self.endpoint.frames_to_send():
            data = ChannelData(self.channel_id, frame.correlation_id, frame.flags, frame.ciphertext)
            await self.link.send(data)

    async def send_chunk(self, cid: int, plaintext: bytes, *, final: bool = False) -> None:
        """One raw chunk of a (possibly never finished) chunked message."""
        assert self.endpoint is not None
        ciphertext = self.endpoint.session.encrypt(plaintext)
        flags = FrameFlag.FINAL if final else FrameFlag.MORE
        await self.link.send(ChannelData(self.channel_id, cid, flags, ciphertext))


async def read_until(link: HubLink, want: type) -> LinkMessage:
    """The next link message of type ``want``; heartbeats are answered on the way."""
    while True:
        message = await link.recv()
        if isinstance(message, Heartbeat):
            await link.send(HeartbeatAck(message.seq))
        elif isinstance(message, want):
            return message


async def channel_events(link: HubLink, client: Client) -> list[Event]:
    """Read the worker's frames for ``client``'s channel until something happens."""
    assert client.endpoint is not None
    while True:
        message = await link.recv()
        if isinstance(message, Heartbeat):
            await link.send(HeartbeatAck(message.seq))
            continue
        assert isinstance(message, ChannelData), message
        assert message.channel_id == client.channel_id
        frame = ChannelFrame(message.correlation_id, message.flags, message.ciphertext)
        events = client.endpoint.receive_frame(frame, trio.current_time())
        await client.flush()
        if events:
            return events


async def open_client(link: HubLink, keypair: WorkerKeyPair, channel_id: int) -> Client:
    client = Client(link, keypair, channel_id)
    await link.send(client.request(channel_id))
    accept = await read_until(link, ChannelAccept)
    assert isinstance(accept, ChannelAccept) and accept.channel_id == channel_id
    client.accepted(accept)
    return client


async def ping(link: HubLink, client: Client) -> None:
    assert client.endpoint is not None
    cid = client.endpoint.ping()
    await client.flush()
    events = await channel_events(link, client)
    assert events == [ResponseReceived(cid, b"")]


def worker_server(worker: Worker) -> ChannelServer:
    attempt = worker._attempt
    assert attempt is not None and attempt.channels is not None
    return attempt.channels


def worker_channels(worker: Worker) -> dict[int, Channel]:
    return worker_server(worker).channels.channels


def budget_worker(classic_dir: Path, hub: FakeHub) -> Worker:
    """A classic worker whose channels hold at most SIZE bytes, serving :func:`services`."""
    return make_worker(
        classic_dir,
        hub,
        encryption_mode="classic",
        max_message_size=SIZE,
        max_channel_bytes=SIZE,
        services=services(),
    )


def services() -> Services:
    table = Services()

    @table.rpc("hold")
    async def hold(ctx: CallContext, payload: bytes) -> bytes:
        await trio.sleep(3600)
        return b"held %d" % len(payload)

    return table


# ---------------------------------------------------------------------------


async def test_one_channel_over_the_cap_is_refused_and_the_others_still_answer(
    classic_dir: Path, generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    worker: Worker

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        clients = [await open_client(link, generated_keypair, 100 + i) for i in range(3)]
        for i in range(5):  # a flood of requests past the cap: each refused, none opened
            extra = Client(link, generated_keypair, 200 + i)
            await link.send(extra.request(50 + i))
            reject = await read_until(link, ChannelReject)
            assert isinstance(reject, ChannelReject)
            assert (reject.channel_id, reject.code) == (200 + i, "resource_exhausted")
            assert "limit is 3" in reject.message
        assert sorted(worker_channels(worker)) == [100, 101, 102]
        for client in clients:
            await ping(link, client)
        # A channel that ends frees its place.
        await link.send(ChannelClose(101, "closed", "bye"))
        await trio.testing.wait_all_tasks_blocked()
        again = await open_client(link, generated_keypair, 300)
        await ping(link, again)
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(classic_dir, hub, encryption_mode="classic", max_channels=3)
        assert await worker.run() is WorkerExit.DEREGISTERED


async def test_unfinished_chunked_messages_are_capped_and_bounded_in_bytes(
    classic_dir: Path,
    generated_keypair: WorkerKeyPair,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="leapcore.peer.channel")
    worker: Worker
    chunk = bytes(60_000)

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        hostile = await open_client(link, generated_keypair, 100)
        bystander = await open_client(link, generated_keypair, 101)
        channel = worker_channels(worker)[100]
        # Four unfinished messages of one chunk each: held.
        for cid in (1001, 1003, 1005, 1007):  # ids the client's own calls will not use
            await hostile.send_chunk(cid, chunk)
        await trio.testing.wait_all_tasks_blocked()
        assert channel.endpoint.reassembly_buffered == 4 * len(chunk)
        # A fifth is one too many: its correlation id fails, nothing more is held.
        await hostile.send_chunk(1009, chunk)
        (answer,) = await channel_events(link, hostile)
        # The worker answered ERROR on 9 (a correlation id the client never opened, so its
        # endpoint reports it as a violation); the worker logged why.
        assert isinstance(answer, ProtocolViolation) and answer.correlation_id == 1009
        assert "ERROR for unknown correlation id 1009" in answer.message
        assert "resource_exhausted: correlation id 1009: more than 4 incomplete" in caplog.text
        assert channel.endpoint.reassembly_buffered == 4 * len(chunk)
        # Growing the unfinished ones: the channel's byte budget (SIZE here) stops them.
        for _ in range(8):
            await hostile.send_chunk(1001, chunk)
            await trio.testing.wait_all_tasks_blocked()
            assert channel.endpoint.reassembly_buffered <= SIZE
        assert channel.held_bytes <= SIZE
        (answer,) = await channel_events(link, hostile)  # one ERROR, then its chunks dropped
        assert isinstance(answer, ProtocolViolation) and answer.correlation_id == 1001
        assert "correlation id 1001: 60000 more bytes would pass the channel's reassembly" in (
            caplog.text
        )
        # The hostile channel still answers, and so does the other one.
        await ping(link, hostile)
        await ping(link, bystander)
        assert bystander.channel_id in worker_channels(worker)
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(
            classic_dir,
            hub,
            encryption_mode="classic",
            max_message_size=SIZE,
            max_channel_bytes=SIZE,
        )
        assert await worker.run() is WorkerExit.DEREGISTERED


async def test_max_incomplete_chunked_is_a_setting(
    classic_dir: Path,
    generated_keypair: WorkerKeyPair,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="leapcore.peer.channel")
    worker: Worker

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        client = await open_client(link, generated_keypair, 100)
        await client.send_chunk(1001, b"a")
        await client.send_chunk(1003, b"b")
        (answer,) = await channel_events(link, client)
        assert isinstance(answer, ProtocolViolation) and answer.correlation_id == 1003
        assert "correlation id 1003: more than 1 incomplete" in caplog.text
        channel = worker_channels(worker)[100]
        assert channel.endpoint.reassembly_buffered == 1
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(classic_dir, hub, encryption_mode="classic", max_incomplete_chunked=1)
        assert await worker.run() is WorkerExit.DEREGISTERED


async def test_requests_held_by_handlers_count_against_the_channel_budget(
    classic_dir: Path, generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    worker: Worker
    payload = bytes(3 * 65519)  # three quarters of SIZE

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        client = await open_client(link, generated_keypair, 100)
        bystander = await open_client(link, generated_keypair, 101)
        assert client.endpoint is not None
        first = client.endpoint.send_request("hold", payload)  # held by its handler
        await client.flush()
        await trio.testing.wait_all_tasks_blocked()
        channel = worker_channels(worker)[100]
        assert channel.held_bytes == len(payload)
        refused = client.endpoint.send_request("hold", payload)  # would pass the budget
        await client.flush()
        events = await channel_events(link, client)
        (error,) = events
        assert isinstance(error, ErrorReceived)
        assert (error.correlation_id, error.code) == (refused, "resource_exhausted")
        assert channel.held_bytes == len(payload)
        small = client.endpoint.send_request("hold", b"x" * 10)  # a small one still fits
        await client.flush()
        await trio.testing.wait_all_tasks_blocked()
        assert channel.held_bytes == len(payload) + 10
        await ping(link, client)
        await ping(link, bystander)
        # The handlers finish: the budget is free again.
        await trio.sleep(3600)
        answers: list[Event] = []
        while len(answers) < 2:
            answers += await channel_events(link, client)
        assert {type(e) for e in answers} == {ResponseReceived}
        done = {e.correlation_id for e in answers if isinstance(e, ResponseReceived)}
        assert done == {first, small}
        assert channel.held_bytes == 0
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = budget_worker(classic_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED


def test_bad_bounds_and_fields_are_configuration_errors(classic_dir: Path) -> None:
    base = {"hub_url": "http://127.0.0.1:1", "name": "box"}
    for bad in (
        {"max_channels": 0},
        {"max_incomplete_chunked": 0},
        {"max_channel_bytes": 1000},
        {"max_message_size": 10},
        {"name": "n" * 129},
        {"name": "box\x1b[31m"},
        {"labels": {"k": "v" * 257}},
        {"labels": {f"k{i}": "v" for i in range(17)}},
        {"version": "1\n"},
    ):
        with pytest.raises(ConfigError):
            Worker(classic_dir, **{**base, **bad})  # type: ignore[arg-type]


async def test_streams_per_channel_follow_the_channel_budget(
    classic_dir: Path, generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    """A channel may have max_channel_bytes / 256 KiB streams open (at least MIN_STREAMS):
    what byte streams' windows let a client send stays within the same budget. One more
    request is refused; the channel and its neighbour go on."""
    worker: Worker

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        client = await open_client(link, generated_keypair, 100)
        bystander = await open_client(link, generated_keypair, 101)
        assert client.endpoint is not None
        assert worker_server(worker).max_streams == MIN_STREAMS
        held = [client.endpoint.send_request("hold", b"x") for _ in range(MIN_STREAMS)]
        await client.flush()
        await trio.testing.wait_all_tasks_blocked()
        refused = client.endpoint.send_request("hold", b"x")
        await client.flush()
        (error,) = await channel_events(link, client)
        assert isinstance(error, ErrorReceived)
        assert (error.correlation_id, error.code) == (refused, "resource_exhausted")
        await ping(link, bystander)
        await trio.sleep(3600)  # the handlers finish
        answers: list[Event] = []
        while len(answers) < MIN_STREAMS:
            answers += await channel_events(link, client)
        assert {e.correlation_id for e in answers} == set(held)
        await ping(link, client)
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = budget_worker(classic_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED


def test_the_default_budget_allows_128_streams_per_channel() -> None:
    assert DEFAULT_WINDOW * 128 == CHANNEL_BYTES_FACTOR * DEFAULT_MAX_MESSAGE_SIZE
