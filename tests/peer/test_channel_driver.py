"""The trio channel driver (leapcore.peer.channel) between two real endpoints, linked in memory.

The "hub" here is a function that hands each data frame to the other end and (unless a
test holds it back) returns the sender's credit, as the real hub does once it wrote the
frame. Real handshakes, real ciphers; classic mode unless the test is about rekey.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from leapcore.crypto.handshake import Initiator, Responder
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.crypto.rekey_policy import RekeyTimings
from leapcore.errors import (
    ChannelClosedError,
    ChannelLost,
    DeadlineExceeded,
    RemoteCallError,
    ServiceError,
    StreamUsageError,
)
from leapcore.peer.channel import (
    CALL_TIMEOUT,
    MAX_STREAM_BACKLOG,
    ByteStream,
    CallContext,
    Channel,
    Services,
)
from leapcore.proto.channel_mux import ChannelEndpoint
from leapcore.proto.limits import CHANNEL_CREDIT
from leapcore.proto.link_codec import ChannelData, LinkMessage

OWNER = "u-owner"


def _services() -> Services:
    services = Services()

    @services.rpc("echo")
    async def echo(ctx: CallContext, payload: bytes) -> bytes:
        return payload

    @services.rpc("whoami", public=True)
    async def whoami(ctx: CallContext, payload: bytes) -> bytes:
        return json.dumps({"user": ctx.user_id, "owner": ctx.is_owner}).encode()

    @services.rpc("fail")
    async def fail(ctx: CallContext, payload: bytes) -> bytes:
        raise ServiceError("not_found", "no such thing")

    @services.rpc("crash")
    async def crash(ctx: CallContext, payload: bytes) -> bytes:
        raise RuntimeError("secret detail")

    @services.rpc("hang")
    async def hang(ctx: CallContext, payload: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    @services.stream("stall")
    async def stall(ctx: CallContext, payload: bytes) -> AsyncIterator[bytes]:
        await trio.sleep_forever()
        yield b""

    @services.stream("slow")
    async def slow(ctx: CallContext, payload: bytes) -> AsyncIterator[bytes]:
        yield b"first"
        await trio.sleep(3600)  # later items have no deadline
        yield b"second"

    @services.stream("count")
    async def count(ctx: CallContext, payload: bytes) -> AsyncIterator[bytes]:
        for i in range(int(payload)):
            yield str(i).encode()

    @services.byte_stream("echo-bytes")
    async def echo_bytes(ctx: CallContext, payload: bytes, stream: ByteStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    return services


class Wire:
    """Two channels joined by an in-memory 'hub' that relays frames and returns credit."""

    def __init__(self) -> None:
        self.client: Channel
        self.worker: Channel
        self.hold_credit = False
        self.held = 0
        self.sent_by_client = 0
        #: While set, frames to the worker are kept here instead of delivered (a lost frame;
        #: feed them later to play a late one).
        self.lost: list[ChannelData] | None = None

    async def to_worker(self, message: LinkMessage) -> None:
        assert isinstance(message, ChannelData)
        self.sent_by_client += len(message.ciphertext)
        await trio.lowlevel.checkpoint()
        if self.lost is not None:
            self.lost.append(message)
        else:
            self.worker.feed(message)
        if self.hold_credit:
            self.held += len(message.ciphertext)
        else:
            self.client.add_credit(len(message.ciphertext))

    async def to_client(self, message: LinkMessage) -> None:
        assert isinstance(message, ChannelData)
        await trio.lowlevel.checkpoint()
        self.client.feed(message)
        self.worker.add_credit(len(message.ciphertext))


def _pair(
    keypair: WorkerKeyPair,
    mode: str,
    *,
    user_id: str = OWNER,
    timings: RekeyTimings | None = None,
    max_message_size: int = 16 * 1024 * 1024,
    worker_send_nowait: Callable[[LinkMessage], bool] | None = None,
) -> Wire:
    initiator = Initiator(keypair.public, mode)
    responder = Responder(keypair, mode)
    transcript = responder.read_message1(initiator.write_message1())
    assert (transcript is None) == (mode == "classic")
    initiator.read_message2(responder.write_message2())
    extra = {} if timings is None else {"rekey_timings": timings}
    now = trio.current_time()
    wire = Wire()
    wire.client = Channel(
        ChannelEndpoint(
            initiator.session(),
            role="initiator",
            mode=mode,
            now=now,
            max_message_size=max_message_size,
            worker_mlkem_public=keypair.public.mlkem,
            **extra,  # type: ignore[arg-type]
        ),
        channel_id=7,
        send=wire.to_worker,
    )
    wire.worker = Channel(
        ChannelEndpoint(
            responder.session(),
            role="responder",
            mode=mode,
            now=now,
            max_message_size=max_message_size,
            mlkem_private=keypair.mlkem_key,
            **extra,  # type: ignore[arg-type]
        ),
        channel_id=7,
        send=wire.to_client,
        send_nowait=worker_send_nowait,
        services=_services(),
        user_id=user_id,
        owner_id=OWNER,
    )
    return wire


@asynccontextmanager
async def running(wire: Wire) -> AsyncIterator[Wire]:
    async with trio.open_nursery() as nursery:
        await nursery.start(wire.client.run)
        await nursery.start(wire.worker.run)
        yield wire
        nursery.cancel_scope.cancel()


async def test_calls_errors_and_permissions(generated_keypair: WorkerKeyPair) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        ch = wire.client
        await ch.ping()
        assert await ch.call("echo", b"hello") == b"hello"
        big = bytes(range(256)) * (3 * 65536 // 256 + 7)  # chunked both ways
        assert await ch.call("echo", big) == big
        with pytest.raises(RemoteCallError) as info:
            await ch.call("fail")
        assert (info.value.remote_code, info.value.remote_message) == ("not_found", "no such thing")
        with pytest.raises(RemoteCallError) as info:
            await ch.call("crash")
        assert info.value.remote_code == "internal"
        assert "secret" not in str(info.value)
        with pytest.raises(RemoteCallError) as info:
            await ch.call("nope")
        assert info.value.remote_code == "unimplemented"


async def test_a_non_owner_gets_ping_and_public_methods_only(
    generated_keypair: WorkerKeyPair,
) -> None:
    async with running(_pair(generated_keypair, "classic", user_id="u-stranger")) as wire:
        ch = wire.client
        await ch.ping()
        assert json.loads(await ch.call("whoami")) == {"user": "u-stranger", "owner": False}
        with pytest.raises(RemoteCallError) as info:
            await ch.call("echo", b"x")
        assert info.value.remote_code == "permission_denied"
        assert info.value.remote_message == "only the worker owner may use this"


async def test_cancelled_call_cancels_the_handler(generated_keypair: WorkerKeyPair) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        with trio.move_on_after(0.05):
            await wire.client.call("hang")
        await wire.client.ping()  # the cancel went out before this ping's answer came back
        await trio.testing.wait_all_tasks_blocked()
        assert wire.worker._handlers == {}
        assert await wire.client.call("echo", b"still fine") == b"still fine"


async def test_server_stream(generated_keypair: WorkerKeyPair) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        async with wire.client.stream("count", b"5") as items:
            assert [item async for item in items] == [b"0", b"1", b"2", b"3", b"4"]
        # A consumer that never reads: bounded, then the stream is cancelled.
        async with wire.client.stream("count", str(MAX_STREAM_BACKLOG + 50).encode()) as items:
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(StreamUsageError):
                async for _ in items:
                    pass
        assert await wire.client.call("echo", b"ok") == b"ok"


async def test_byte_stream_is_a_half_closeable_stream(generated_keypair: WorkerKeyPair) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        stream = await wire.client.open_byte_stream("echo-bytes")
        payload = b"x" * (700 * 1024)  # more than one window each way

        async def send() -> None:
            await stream.send_all(payload)
            await stream.send_eof()

        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await stream.receive_some(100_000):
                received += data
        assert received == payload
        await stream.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some()
        with pytest.raises(RemoteCallError) as info:
            await wire.client.open_byte_stream("nope")
        assert info.value.remote_code == "unimplemented"


async def test_credit_throttles_the_sender(generated_keypair: WorkerKeyPair) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        wire.hold_credit = True
        big = b"z" * (3 * CHANNEL_CREDIT)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.client.call, "echo", big)
            await trio.testing.wait_all_tasks_blocked()
            assert CHANNEL_CREDIT - 65535 <= wire.sent_by_client <= CHANNEL_CREDIT
            wire.hold_credit = False
            wire.client.add_credit(wire.held)  # the hub catches up
        assert wire.sent_by_client > len(big)


async def test_hub_close_fails_calls_and_ends_the_pump(generated_keypair: WorkerKeyPair) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        async with trio.open_nursery() as nursery:

            async def waiting() -> None:
                with pytest.raises(ChannelLost) as info:
                    await wire.client.call("hang")
                assert info.value.reason == "link_lost"

            nursery.start_soon(waiting)
            await trio.testing.wait_all_tasks_blocked()
            wire.client.hub_closed("link_lost", "the link to the hub ended")
        await wire.client.finished.wait()
        with pytest.raises(ChannelLost):
            await wire.client.call("echo")


async def test_local_close_reaches_the_peer(generated_keypair: WorkerKeyPair) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        await wire.client.aclose()
        await wire.worker.finished.wait()
        with pytest.raises(ChannelClosedError):
            await wire.client.call("echo")


async def test_rekey_in_the_background_loses_nothing(
    generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    timings = RekeyTimings(max_age=60.0, min_interval=50.0, hard_ceiling=70.0, idle_check=5.0)
    async with running(_pair(generated_keypair, "post-quantum", timings=timings)) as wire:
        for i in range(40):
            payload = bytes([i]) * 100_000
            assert await wire.client.call("echo", payload) == payload
            await trio.sleep(10)  # mock time: 400 s in all, several key epochs
        assert wire.client.rekeys >= 3
        assert wire.worker.rekeys == wire.client.rekeys


async def test_byte_stream_passes_trios_stream_conformance_checks(
    generated_keypair: WorkerKeyPair,
) -> None:
    async with trio.open_nursery() as nursery:

        async def stream_maker() -> tuple[ByteStream, ByteStream]:
            wire = _pair(generated_keypair, "classic")
            send_peer, receive_peer = trio.open_memory_channel[ByteStream](1)

            async def hand_over(ctx: CallContext, payload: bytes, stream: ByteStream) -> None:
                await send_peer.send(stream)
                await trio.sleep_forever()  # the test owns the stream now

            assert wire.worker._services is not None
            wire.worker._services.add_byte_stream("pair", hand_over)
            await nursery.start(wire.client.run)
            await nursery.start(wire.worker.run)
            mine = await wire.client.open_byte_stream("pair")
            return mine, await receive_peer.receive()

        with trio.fail_after(20):
            await trio.testing.check_half_closeable_stream(stream_maker, None)
        nursery.cancel_scope.cancel()


async def test_rekey_mid_transfer_loses_no_byte(
    generated_keypair: WorkerKeyPair, mock_clock: trio.testing.MockClock
) -> None:
    """A byte stream runs while the fake clock jumps past the key age several times: the
    rekeys happen between frames of the transfer, and every byte arrives in order."""
    timings = RekeyTimings(max_age=60.0, min_interval=50.0, hard_ceiling=70.0, idle_check=5.0)
    async with running(_pair(generated_keypair, "post-quantum", timings=timings)) as wire:
        stream = await wire.client.open_byte_stream("echo-bytes")
        payload = bytes(range(251)) * 40_000  # ~10 MiB, not a multiple of any frame size
        received = bytearray()

        async def send() -> None:
            view = memoryview(payload)
            for offset in range(0, len(payload), 256 * 1024):
                await stream.send_all(view[offset : offset + 256 * 1024])
                # Let what is in flight (a rekey and its answer among it) be handled before
                # the clock jumps: windows grow past 256 KiB, so the sender no longer waits
                # on the receiver by itself, and fake time would run ahead of the frames.
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(5)  # ~200 s of fake time over the transfer
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await stream.receive_some():
                received += data
        assert received == payload
        assert wire.client.rekeys >= 3
        assert wire.worker.rekeys == wire.client.rekeys


async def test_frames_handed_over_without_waiting_keep_their_order(
    generated_keypair: WorkerKeyPair,
) -> None:
    """The worker hands answers straight to its link queue when it has room (a refusal falls
    back to the pump). Both paths feed one ordered queue; every frame is sealed with the next
    nonce, so any reordering would fail decryption and end the channel."""
    queue: trio.MemorySendChannel[ChannelData]
    queue, arrivals = trio.open_memory_channel[ChannelData](math.inf)
    offered = taken = 0

    def send_nowait(message: LinkMessage) -> bool:
        nonlocal offered, taken
        offered += 1
        if offered % 3 == 0:
            return False  # "no room": the pump must send it, after what went before
        assert isinstance(message, ChannelData)
        taken += 1
        queue.send_nowait(message)
        return True

    wire = _pair(generated_keypair, "classic", worker_send_nowait=send_nowait)

    async def to_client(message: LinkMessage) -> None:
        assert isinstance(message, ChannelData)
        await trio.lowlevel.checkpoint()
        queue.send_nowait(message)

    async def deliver() -> None:
        async for message in arrivals:
            await trio.lowlevel.checkpoint()
            wire.client.feed(message)
            wire.worker.add_credit(len(message.ciphertext))

    wire.to_client = to_client  # type: ignore[method-assign]
    wire.worker._send = to_client  # the pump's path, through the same queue
    async with trio.open_nursery() as outer:
        outer.start_soon(deliver)
        async with running(wire) as w:
            ch = w.client
            payload = bytes(range(256)) * 1024

            async def calls(n: int) -> None:
                for i in range(n):
                    await ch.ping()
                    assert await ch.call("echo", payload[: 1 + i * 97]) == payload[: 1 + i * 97]

            async with trio.open_nursery() as nursery:
                for n in (40, 40, 40):
                    nursery.start_soon(calls, n)
                stream = await ch.open_byte_stream("echo-bytes")
                await stream.send_all(payload)
                await stream.send_eof()
                got = bytearray()
                while chunk := await stream.receive_some():
                    got += chunk
                assert got == payload
            assert not ch.closed and not w.worker.closed
            assert taken > 50 and offered - taken > 20  # both paths carried traffic
        outer.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# Deadlines: a lost frame surfaces as DeadlineExceeded, never a hang (MockClock)


async def test_a_lost_request_or_ping_times_out_and_the_channel_carries_on(
    generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        ch = wire.client
        wire.lost = []
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded, match=r"echo: no answer from channel 7 within 30s"):
            await ch.call("echo", b"x")
        assert trio.current_time() - start == pytest.approx(CALL_TIMEOUT)
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded, match=r"within 2\.5s"):
            await ch.ping(timeout=2.5)
        assert trio.current_time() - start == pytest.approx(2.5)
        assert ch._calls == {}  # nothing left waiting
        late, wire.lost = wire.lost, None
        # The lost frames (the request, its CANCEL, the ping and its CANCEL) arrive late:
        # the worker answers nothing that is still awaited and the channel is fine.
        for frame in late:
            wire.worker.feed(frame)
        assert await ch.call("echo", b"after") == b"after"
        await ch.ping()
        assert not ch.closed and not wire.worker.closed


async def test_a_late_answer_after_the_deadline_is_dropped(
    generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        ch = wire.client
        answers: list[ChannelData] = []
        deliver = wire.to_client

        async def hold(message: LinkMessage) -> None:
            assert isinstance(message, ChannelData)
            answers.append(message)

        wire.worker._send = hold  # the worker's pump writes through _send (no send_many given)
        with pytest.raises(DeadlineExceeded):
            await ch.call("echo", b"late", timeout=1)
        await trio.testing.wait_all_tasks_blocked()
        assert answers  # the worker did answer; the answer was only late
        for message in answers:
            await deliver(message)
        wire.worker._send = deliver
        assert await ch.call("echo", b"on time") == b"on time"


async def test_timeout_none_waits_past_the_default(
    generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        with trio.move_on_after(10 * CALL_TIMEOUT) as waited:
            await wire.client.call("hang", timeout=None)
        assert waited.cancelled_caught
        with pytest.raises(StreamUsageError, match="timeout must be"):
            await wire.client.call("echo", timeout=-1)


async def test_a_stream_whose_first_item_never_comes_times_out_and_is_cancelled(
    generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded, match="stall"):
            async with wire.client.stream("stall", timeout=5) as items:
                async for _ in items:
                    raise AssertionError("no item was sent")
        assert trio.current_time() - start == pytest.approx(5)
        await wire.client.ping()  # the CANCEL went out before this ping's answer came back
        await trio.testing.wait_all_tasks_blocked()
        assert wire.worker._handlers == {}  # the worker's handler was cancelled
        # Only the first item has a deadline: later ones may take as long as they take.
        async with wire.client.stream("slow", timeout=5) as items:
            assert [item async for item in items] == [b"first", b"second"]
        assert trio.current_time() - start > 3600


async def test_a_byte_stream_never_accepted_times_out_and_is_reset(
    generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(_pair(generated_keypair, "classic")) as wire:
        wire.lost = []
        with pytest.raises(DeadlineExceeded, match="echo-bytes"):
            await wire.client.open_byte_stream("echo-bytes", timeout=3)
        assert wire.client._byte_streams == {} and wire.client._opening == {}
        assert wire.client.endpoint.streams == {}  # reset locally: nothing is left open
        late, wire.lost = wire.lost, None
        for frame in late:  # BYTES_OPEN and its BYTES_RESET, late (frames are never reordered)
            wire.worker.feed(frame)
        stream = await wire.client.open_byte_stream("echo-bytes")
        await stream.send_all(b"abc")
        assert await stream.receive_some() == b"abc"
