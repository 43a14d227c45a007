"""Channels end to end, in one process: a real Hub, real Workers and leapcore.connect, over
loopback sockets. The hub relays ciphertext only; pins are checked before message 1."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

import leapcore
from leapcore.channel import ByteStream, CallContext, Services
from leapcore.errors import (
    ChannelOpenFailed,
    KeyMismatch,
    NotFound,
    RemoteCallError,
    WorkerOffline,
)
from leapcore.hub import Hub
from leapcore.hubclient import HubSession
from leapcore.keys import WorkerKeyPair
from leapcore.link_codec import ChannelReject, ChannelRequest, LinkMessage
from leapcore.pinstore import PinStore
from leapcore.signpool import InlineSigner
from leapcore.workerchannels import ChannelServer
from leapcore.workerd import Worker
from leapcore.workerstate import WorkerState, save_state


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
async def environment(tmp_path: Path) -> AsyncIterator[Env]:
    hub = Hub(tmp_path / "hub.db")
    _, token = hub.store.create_user("alice", now_ms())
    with trio.fail_after(60):
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
    sent: list[LinkMessage] = []

    async def send(message: LinkMessage) -> None:
        sent.append(message)

    async with trio.open_nursery() as nursery:
        server = ChannelServer(
            keypair=generated_keypair,
            mode="classic",
            owner_id="u-owner",
            send=send,
            signer=InlineSigner(),
            services=Services(),
            nursery=nursery,
        )
        size = 16 * 1024 * 1024
        await server.handle_request(ChannelRequest(1, 5, "u-mallory", b"\0" * 48, size))
        await server.handle_request(ChannelRequest(2, 6, "", b"\0" * 48, size))
        await server.handle_request(ChannelRequest(3, 7, "u-owner", b"\0" * 48, 12))
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
