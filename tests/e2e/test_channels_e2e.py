"""Channels end to end, in one process: a real Hub, real Workers and leapcore.connect, over
loopback sockets. The hub relays ciphertext only; pins are checked before message 1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from support.channelpair import answers_to_requests

import leapcore
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.crypto.rekey_policy import DEFAULT_TIMINGS
from leapcore.errors import (
    ChannelOpenFailed,
    KeyMismatch,
    NotFound,
    RemoteCallError,
    WorkerOffline,
)
from leapcore.hub.server import Hub
from leapcore.peer.channel import ByteStream, CallContext, Channel, Services
from leapcore.peer.hubsession import HubSession
from leapcore.proto.link_codec import ChannelReject, ChannelRequest
from leapcore.store.pinstore import PinStore
from leapcore.store.workerstate import WorkerState, save_state
from leapcore.worker.daemon import Worker
from leapcore.worker.signpool import InlineSigner


def now_ms() -> int:
    return int(time.time() * 1000)


@attrs.define
class Env:
    tmp: Path
    hub: Hub
    url: str
    token: str
    nursery: trio.Nursery
    workers: dict[str, Worker] = attrs.Factory(dict)

    def pins(self, name: str = "pins") -> PinStore:
        return PinStore(self.tmp / f"{name}.json", hint="clear {worker_id}")

    async def start_worker(
        self,
        name: str,
        keypair: WorkerKeyPair,
        *,
        mode: str = "classic",
        owner_token: str | None = None,
        services: Callable[[Services], None] | None = None,
        transport: str = "websocket",
    ) -> Worker:
        user = self.hub.store.authenticate_user(owner_token or self.token, now_ms())
        _, key = self.hub.store.mint_registration_key(user.id, now_ms())
        worker, auth = self.hub.store.register_worker(
            key, name=name, version="1", labels={"site": "lab"}, now_ms=now_ms()
        )
        data = self.tmp / name
        save_state(data, WorkerState(worker.id, auth, keypair))
        daemon = Worker(
            data,
            hub_url=self.url,
            name=name,
            encryption_mode=mode,
            signer=InlineSigner(),
            labels={"site": "lab"},
            transport=transport,
        )
        if services is not None:
            services(daemon.services)  # an embedding application adds its methods
        self.nursery.start_soon(daemon.run)
        await daemon.wait_online()
        await self.wait_keys(worker.id)
        self.workers[worker.id] = daemon
        return daemon

    async def wait_keys(self, worker_id: str) -> None:
        # The keys arrive with the worker's first heartbeat, right after connect.
        while self.hub.store.get_worker(worker_id).keys is None:
            await trio.sleep(0.01)

    def session(
        self, pins: PinStore | None = None, token: str | None = None
    ) -> AbstractAsyncContextManager[HubSession]:
        return leapcore.connect(
            self.url, token=token or self.token, pins=pins if pins is not None else self.pins()
        )


@asynccontextmanager
async def environment(tmp_path: Path, timeout: float = 60) -> AsyncIterator[Env]:
    hub = Hub(tmp_path / "hub.db")
    _, token = hub.store.create_user("alice", now_ms())
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(hub.serve)
            yield Env(tmp_path, hub, f"http://{host}:{port}", token, nursery)
            nursery.cancel_scope.cancel()


def _id(worker: Worker) -> str:
    assert worker.greeting is not None
    return worker.greeting.worker_id


@pytest.mark.parametrize("transport", ["websocket", "h2"])
async def test_open_call_info_stream_and_bytes(
    tmp_path: Path, generated_keypair: WorkerKeyPair, transport: str
) -> None:
    async with environment(tmp_path) as env:

        def add_methods(services: Services) -> None:
            services.add_stream("count", count)
            services.add_byte_stream("upper", upper)
            services.add_rpc("echo", echo)

        async def count(ctx: CallContext, payload: bytes) -> AsyncIterator[bytes]:
            for i in range(int(payload)):
                yield b"%d" % i

        async def upper(ctx: CallContext, payload: bytes, stream: ByteStream) -> None:
            while data := await stream.receive_some():
                await stream.send_all(data.upper())

        async def echo(ctx: CallContext, payload: bytes) -> bytes:
            return payload

        worker = await env.start_worker(
            "box", generated_keypair, services=add_methods, transport=transport
        )
        wid = _id(worker)
        async with leapcore.connect(
            env.url, token=env.token, pins=env.pins(), transport=transport
        ) as hub:
            assert [w["id"] for w in await hub.list_workers()] == [wid]
            async with hub.open_channel(wid) as ch:
                info = json.loads(await ch.call("info"))
                assert info["name"] == "box"
                assert info["encryption_mode"] == "classic"
                assert info["labels"] == {"site": "lab"}
                assert info["worker_id"] == wid
                assert {"ping", "info", "count", "upper", "echo"} <= set(info["capabilities"])
                async with ch.stream("count", b"4") as items:
                    assert [i async for i in items] == [b"0", b"1", b"2", b"3"]
                stream = await ch.open_byte_stream("upper")
                await stream.send_all(b"hello " * 50_000)
                await stream.send_eof()
                got = b""
                while data := await stream.receive_some():
                    got += data
                assert got == b"HELLO " * 50_000
                big = bytes(range(256)) * (16 * 1024 * 1024 // 256 - 64)  # a 16 MiB-ish RPC
                assert await ch.call("echo", big) == big
        # The pin was written on first use.
        assert env.pins().get(wid) is not None


async def test_post_quantum_channel(tmp_path: Path, generated_keypair: WorkerKeyPair) -> None:
    async with environment(tmp_path) as env:
        worker = await env.start_worker("pq", generated_keypair, mode="post-quantum")
        async with env.session() as hub, hub.open_channel(_id(worker)) as ch:
            await ch.ping()
            assert json.loads(await ch.call("info"))["encryption_mode"] == "post-quantum"


async def test_refusals_and_strangers(tmp_path: Path, generated_keypair: WorkerKeyPair) -> None:
    async with environment(tmp_path) as env:
        worker = await env.start_worker("box", generated_keypair)
        wid = _id(worker)
        _, stranger = env.hub.store.create_user("mallory", now_ms())
        async with leapcore.connect(env.url, token=stranger, pins=env.pins("m")) as hub:
            with pytest.raises(NotFound) as info:
                async with hub.open_channel(wid):
                    pass
            unknown = await _refusal(hub, "w-unknown")
            assert str(info.value) == unknown == "worker not found"
        worker.stop()
        async with leapcore.connect(env.url, token=env.token, pins=env.pins()) as hub:
            while any(w["online"] for w in await hub.list_workers()):
                await trio.sleep(0.01)
            with pytest.raises(WorkerOffline):
                async with hub.open_channel(wid):
                    pass


async def _refusal(hub: HubSession, worker_id: str) -> str:
    try:
        async with hub.open_channel(worker_id):
            pass
    except NotFound as exc:
        return str(exc)
    raise AssertionError("opened")


async def test_pins_catch_a_swapped_worker_key(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    """A re-registered worker (new keys, same id as far as the hub's lies go) is caught by
    the pin before message 1; a hub that reports the old keys for new ones fails the
    handshake."""
    async with environment(tmp_path) as env:
        worker = await env.start_worker("box", generated_keypair)
        wid = _id(worker)
        pins = env.pins()
        async with (
            leapcore.connect(env.url, token=env.token, pins=pins) as hub,
            hub.open_channel(wid) as ch,
        ):
            await ch.ping()
        # The worker gets new keys (its state was wiped and it re-registered under the same
        # id, as a hub that lies would present it).
        worker.stop()
        other = WorkerKeyPair.generate(
            slhdsa_keygen=lambda: (
                generated_keypair.slhdsa_public,
                generated_keypair.slhdsa_private,
            )
        )
        env.hub.store.record_heartbeat(
            wid, now_ms(), keys=other.public, mode=worker_mode("classic")
        )
        async with leapcore.connect(env.url, token=env.token, pins=pins) as hub:
            with pytest.raises(KeyMismatch) as info:
                async with hub.open_channel(wid):
                    pass
            assert info.value.expected == generated_keypair.public.fingerprint
            assert info.value.actual == other.public.fingerprint
            assert str(info.value).startswith(f"worker {wid} key mismatch — clear ")
        # Without a pin (first contact), the handshake itself catches the substitution:
        # the real worker cannot answer a message 1 made for other keys.
        restarted = Worker(
            env.tmp / "box",
            hub_url=env.url,
            name="box",
            encryption_mode="classic",
            signer=InlineSigner(),
        )
        env.nursery.start_soon(restarted.run)
        await restarted.wait_online()
        while env.hub.store.get_worker(wid).keys != generated_keypair.public:
            await trio.sleep(0.01)  # the worker's own first heartbeat has been recorded
        env.hub.store.record_heartbeat(
            wid, now_ms(), keys=other.public, mode=worker_mode("classic")
        )
        async with leapcore.connect(env.url, token=env.token, pins=None) as hub:
            with pytest.raises(ChannelOpenFailed) as failed:
                async with hub.open_channel(wid):
                    pass
            assert failed.value.reason == "handshake_failed"


def worker_mode(name: str) -> leapcore.EncryptionMode:
    return leapcore.parse_encryption_mode(name)


async def test_unknown_method_and_permission(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    async with environment(tmp_path) as env:
        worker = await env.start_worker("box", generated_keypair)
        async with (
            leapcore.connect(env.url, token=env.token, pins=env.pins()) as hub,
            hub.open_channel(_id(worker)) as ch,
        ):
            with pytest.raises(RemoteCallError) as info:
                await ch.call("nope")
            assert info.value.remote_code == "unimplemented"


async def test_cross_worker_channel_between_siblings(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    async with environment(tmp_path) as env:
        a = await env.start_worker("a", generated_keypair)
        b = await env.start_worker("b", generated_keypair)
        _, bob = env.hub.store.create_user("bob", now_ms())
        c = await env.start_worker("c", generated_keypair, owner_token=bob)
        async with a.open_channel(_id(b)) as ch:
            info = json.loads(await ch.call("info"))
            assert info["name"] == "b"
        assert a.cross_worker_pins.get(_id(b)) is not None
        assert (tmp_path / "a" / "cross_worker_pins.json").exists()
        with pytest.raises(NotFound):
            async with a.open_channel(_id(c)):
                pass
        with pytest.raises(NotFound):  # a worker cannot open a channel to itself
            async with a.open_channel(_id(a)):
                pass


async def test_a_forged_user_is_refused_by_the_worker(generated_keypair: WorkerKeyPair) -> None:
    """The worker checks the hub-supplied user itself: a raw link (or a lying hub) naming
    someone other than the owner, or no one, is refused before any cryptography."""
    size = 16 * 1024 * 1024
    requests = [
        ChannelRequest(1, 5, "u-mallory", b"\0" * 48, size),
        ChannelRequest(2, 6, "", b"\0" * 48, size),
        ChannelRequest(3, 7, "u-owner", b"\0" * 48, 12),
    ]
    sent, server = await answers_to_requests(generated_keypair, requests, services=Services())
    assert sent == [
        ChannelReject(1, 5, "permission_denied", "only the worker owner may open channels"),
        ChannelReject(2, 6, "no_authenticated_user", "no authenticated user id"),
        ChannelReject(
            3,
            7,
            "invalid_max_message_size",
            sent[2].message if isinstance(sent[2], ChannelReject) else "",
        ),
    ]
    assert server.opened == 0


# -- a rekey forced by a fake clock, through the real hub ------------------------------------

#: One fake-clock step: long enough (>= 5 s) that the worker's idle heartbeat is due after it,
#: short enough (< Liveness.TIMEOUT, 10 s) that the hub keeps the worker link.
STEP = 8.0
#: Two rekeys take two key ages (2 x 3600 s) of steps; this is a generous ceiling.
MAX_STEPS = int(3 * DEFAULT_TIMINGS.max_age / STEP)


async def _until(what: str, condition: Callable[[], bool], real_seconds: float = 60.0) -> None:
    """Wait for ``condition`` while the fake clock stands still (rate 0: trio timeouts never
    fire, so the limit is on the wall clock)."""
    give_up = time.monotonic() + real_seconds
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"no {what} within {real_seconds}s of real time")
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def _wall_clock_limit(seconds: float) -> AsyncIterator[None]:
    """Fail the block after ``seconds`` of real time (the mock clock runs trio's timeouts)."""
    done = threading.Event()

    async def watch() -> None:
        if not await trio.to_thread.run_sync(done.wait, seconds, abandon_on_cancel=True):
            raise AssertionError(f"stalled: still running after {seconds}s of real time")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        try:
            yield
        finally:
            done.set()


def _worker_channel(worker: Worker, channel_id: int) -> Channel:
    attempt = worker._attempt  # the worker keeps its channels per link, privately
    assert attempt is not None and attempt.channels is not None
    return attempt.channels.channels.channels[channel_id]


@pytest.mark.parametrize("transport", ["websocket", "h2"])
async def test_rekey_through_the_hub_mid_transfer_loses_no_byte(
    tmp_path: Path,
    generated_keypair: WorkerKeyPair,
    mock_clock: trio.testing.MockClock,
    transport: str,
) -> None:
    """The default rekey policy, a real hub and real sockets: a fake clock walks past the 1 h
    key age twice while a byte stream echoes ~10 MiB through the hub. Each step is short
    enough for the hub's liveness check and waits until the hub has heard from the worker at
    the new time. Both rekeys happen mid-transfer, every byte comes back in order, and the
    links and the channel are still up afterwards."""
    mock_clock.rate = 1  # real time while things start (they poll with trio.sleep)
    async with environment(tmp_path, timeout=60 + MAX_STEPS * STEP) as env:

        async def echo_bytes(ctx: CallContext, payload: bytes, stream: ByteStream) -> None:
            while data := await stream.receive_some():
                await stream.send_all(data)

        async def echo(ctx: CallContext, payload: bytes) -> bytes:
            return payload

        def add_methods(services: Services) -> None:
            services.add_byte_stream("echo-bytes", echo_bytes)
            services.add_rpc("echo", echo)

        worker = await env.start_worker(
            "box", generated_keypair, services=add_methods, transport=transport
        )
        wid = _id(worker)
        hub_link = env.hub.router.worker_link(wid)  # the hub's end of the worker's link
        assert hub_link is not None

        def heard_since(t: float) -> Callable[[], bool]:
            def heard() -> bool:
                assert env.hub.router.worker_link(wid) is hub_link, "the worker link was replaced"
                assert hub_link.liveness is not None
                return hub_link.liveness.last_received >= t

            return heard

        async with leapcore.connect(
            env.url, token=env.token, pins=env.pins(), transport=transport
        ) as hub:
            key_since = trio.current_time()  # no later than the channel's first keys
            async with hub.open_channel(wid) as ch:
                far = _worker_channel(worker, ch.channel_id)

                def timers_run_at(t: float) -> Callable[[], bool]:
                    return lambda: (d := ch.endpoint.next_deadline()) is None or d > t

                stream = await ch.open_byte_stream("echo-bytes")
                payload = bytes(range(251)) * 40_000  # ~10 MiB, not a multiple of a frame
                view = memoryview(payload)
                sent = 0
                received = bytearray()
                at_rekey: list[int] = []  # bytes echoed back when each rekey completed

                async def receive() -> None:
                    while data := await stream.receive_some():
                        received.extend(data)

                async with _wall_clock_limit(180), trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    mock_clock.rate = 0  # from here on, time moves only by the jumps below
                    for _ in range(MAX_STEPS):
                        if ch.rekeys >= 2:
                            break
                        now = trio.current_time()
                        # Small pieces while the keys are young; a full window on the step(s)
                        # that make the client ask, so data is in flight both ways then.
                        due = now + STEP >= key_since + DEFAULT_TIMINGS.max_age
                        piece = view[sent : sent + (256 * 1024 if due else 8192)]
                        await stream.send_all(piece)
                        sent += len(piece)
                        # The hub has heard from the worker at this time (the echo, or the
                        # idle heartbeat a step makes due): the next step stays inside its
                        # liveness timeout.
                        await _until("word from the worker", heard_since(now))
                        mock_clock.jump(STEP)
                        now = trio.current_time()
                        # The client's pump ran every timer due at the new time ...
                        await _until("rekey timer", timers_run_at(now))
                        # ... and a rekey it asked for is answered before time moves again.
                        await _until("rekey answer", lambda: not ch.endpoint.rekey_in_flight)
                        if ch.rekeys > len(at_rekey):
                            assert far.rekeys == ch.rekeys
                            at_rekey.append(len(received))
                            key_since = now
                            # What the client sealed under the old key reaches the worker
                            # before that key's grace window there can run out.
                            await ch.ping()
                    mock_clock.rate = 1
                    assert ch.rekeys >= 2, f"{ch.rekeys} rekeys in {MAX_STEPS} steps"
                    await stream.send_all(view[sent:])
                    await stream.send_eof()
                assert received == payload
                assert ch.rekeys == far.rekeys == len(at_rekey) >= 2
                assert all(0 < n < len(payload) for n in at_rekey), at_rekey  # mid-transfer
                # The same links throughout, and the channel still works.
                assert worker.attempts == 1 and worker.online
                assert env.hub.is_online(wid) and env.hub.router.worker_link(wid) is hub_link
                await ch.ping()
                assert await ch.call("echo", b"after") == b"after"
                assert [w["id"] for w in await hub.list_workers()] == [wid]
