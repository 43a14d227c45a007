"""The worker daemon against a scripted fake hub.

The fake hub is a :class:`LinkConnection` in the hub role driven by a per-test
script. Most tests reach it through an in-memory pipe so that
``trio.testing.MockClock`` (the ``autojump_clock`` fixture) runs the timers
without real waiting; two tests go through a real :class:`LinkServer` on
loopback with the real clock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from support.fakehub import (
    FakeHub,
    HubLink,
    Recorder,
    hub_running,
    make_worker,
)

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import ConfigError, HubMismatch, LinkClosed, RegistrationRejected
from leapcore.net.listen import LinkServer
from leapcore.net.pipe import LinkPipe
from leapcore.proto.link_codec import (
    ChannelReject,
    ChannelRequest,
    Connect,
    Deregister,
    DeregisterAck,
    ErrorMessage,
    GoAway,
    Heartbeat,
    HeartbeatAck,
    LinkMessage,
    Register,
    Registered,
    WorkerGreeting,
)
from leapcore.proto.link_state import LinkState
from leapcore.store.workerstate import STATE_FILE, WorkerState, load_state, save_state
from leapcore.worker.daemon import Worker, WorkerExit

KEY = "reg-key-0123456789-secret"
TOKEN = "auth-token-abcdef"


@pytest.fixture
def registered_dir(tmp_path: Path, generated_keypair: WorkerKeyPair) -> Path:
    save_state(tmp_path, WorkerState("w-1", TOKEN, generated_keypair))
    return tmp_path


# ---------------------------------------------------------------------------
# Registration


async def test_registration_success_saves_state_never_the_key(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        register = await link.recv()
        assert isinstance(register, Register)
        assert register.registration_key == KEY
        assert (register.protocol_version, register.name) == (1, "box")
        assert (register.version, register.labels) == ("9.9", {"site": "lab"})
        await link.send(Registered("w-42", "tok-42"))

    async with hub_running(script) as hub:
        worker = make_worker(tmp_path, hub, registration_key=KEY)
        assert worker.prepare().value == "register"
        state = await worker.register()
    assert (state.worker_id, state.auth_token) == ("w-42", "tok-42")
    on_disk = load_state(tmp_path)
    assert (on_disk.worker_id, on_disk.auth_token) == ("w-42", "tok-42")
    assert on_disk.keys == state.keys
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "code", ["unauthenticated", "invalid_argument", "permission_denied", "already_exists"]
)
async def test_registration_permanent_rejection(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, code: str
) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.recv()
        await link.send(ErrorMessage(code, "key not accepted"))

    async with hub_running(script) as hub:
        worker = make_worker(tmp_path, hub, registration_key=KEY)
        worker.prepare()
        with pytest.raises(RegistrationRejected) as info:
            await worker.register()
    assert str(info.value) == f"registration rejected: {code}: key not accepted"
    assert info.value.hub_code == code
    assert len(hub.links) == 1
    assert not load_state(tmp_path).registered


async def test_registration_transient_failures_retry_with_growing_delays(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.recv()
        if n == 0:
            await link.send(ErrorMessage("quota_exceeded", "too many workers"))
        elif n == 1:
            await link.send(ErrorMessage("unavailable", "hub is shutting down"))
        elif n in (2, 3):
            return  # hang up without an answer: a network failure
        else:
            await link.send(Registered("w-7", "tok-7"))

    uniform = Recorder()
    async with hub_running(script) as hub:
        worker = make_worker(tmp_path, hub, registration_key=KEY, uniform=uniform)
        worker.prepare()
        start = trio.current_time()
        await worker.register()
    waits = [round(b - a, 6) for a, b in zip(hub.dial_times, hub.dial_times[1:], strict=False)]
    # uniform() = 0.5 sits mid-window: the delays are the un-jittered bases 1, 2, 4, 8.
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert uniform.calls == 4
    assert hub.dial_times[0] == start
    assert load_state(tmp_path).worker_id == "w-7"


async def test_registration_needs_a_key(tmp_path: Path) -> None:
    worker = Worker(tmp_path, hub_url="http://x.invalid", name="box")
    with pytest.raises(ConfigError, match="registration key is required"):
        await worker.register()


# ---------------------------------------------------------------------------
# Connecting


async def test_connect_sends_connect_then_keyed_heartbeat(
    registered_dir: Path, autojump_clock: trio.testing.MockClock, generated_keypair: WorkerKeyPair
) -> None:
    seen: dict[str, object] = {}

    async def script(link: HubLink, n: int) -> None:
        connect, beat = await link.handshake()
        seen["connect"], seen["beat"] = connect, beat
        # Heartbeat acks feed the latency meter.
        await trio.sleep(0.25)
        await link.send(HeartbeatAck(beat.seq))
        seen["state"] = link.conn.state
        await trio.sleep(1)
        seen["online"], seen["latency"] = worker.online, worker.latency
        await link.send(Deregister(5, "bye"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    connect, beat = seen["connect"], seen["beat"]
    assert isinstance(connect, Connect) and isinstance(beat, Heartbeat)
    assert (connect.protocol_version, connect.auth_token) == (1, TOKEN)
    assert (connect.name, connect.labels) == ("box", {"site": "lab"})
    public = generated_keypair.public
    assert beat.public_key == public.x25519
    assert beat.mlkem_public_key == public.mlkem
    assert beat.slhdsa_public_key == public.slhdsa
    assert beat.encryption_mode == "post-quantum"
    assert seen["state"] is LinkState.WORKER_ACTIVE
    assert seen["online"] is True
    assert seen["latency"] == pytest.approx(0.25)
    assert worker.online is False


async def test_no_greeting_within_10s_reconnects(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.recv()
        await link.recv()
        if n == 0:
            await trio.sleep_forever()  # never greet
        await link.send(WorkerGreeting("w-1", "u-1", "alice"))
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    # Watchdog at 10 s, then the first backoff delay (base 1 s, uniform 0.5: exactly 1 s).
    assert len(hub.dial_times) == 2
    assert hub.dial_times[1] - hub.dial_times[0] == pytest.approx(11.0)


async def test_idle_heartbeats_every_6s(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        end = trio.current_time() + 31
        with trio.move_on_at(end):
            while True:
                message = await link.recv()
                if isinstance(message, Heartbeat):
                    await link.send(HeartbeatAck(message.seq))
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        start = trio.current_time()
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    beats = [round(t - start, 6) for t, m in hub.log if isinstance(m, Heartbeat)]
    assert beats == [0, 6, 12, 18, 24, 30]


async def test_no_idle_heartbeats_under_steady_traffic(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Channel rejects are outbound traffic too: one every 3 s keeps heartbeats away."""

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        for i in range(10):
            await trio.sleep(3)
            await link.send(ChannelRequest(i + 1, i + 100, "u-1", b"m1", 65519))
            reject = await link.recv()
            assert isinstance(reject, ChannelReject)
            assert (reject.request_id, reject.channel_id) == (i + 1, i + 100)
            assert reject.code == "handshake_failed"
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    beats = [m for _, m in hub.log if isinstance(m, Heartbeat)]
    assert len(beats) == 1  # the keyed first one only


async def test_go_away_waits_exactly_then_resets_backoff(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        if n in (0, 1):
            # Refused at once (no greeting): transient, backoff grows to base 4.
            await link.recv()
            await link.recv()
            await link.send(ErrorMessage("unavailable", "hub is shutting down"))
            return
        await link.handshake()
        if n == 2:
            await link.send(GoAway(10, "hub shutting down"))
            return  # the hub drops the link
        if n == 3:
            return  # plain drop: backoff restarted at 1 s
        await link.send(Deregister(1, "done"))
        await link.drain()

    uniform = Recorder()
    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub, uniform=uniform)
        assert await worker.run() is WorkerExit.DEREGISTERED
    gaps = [round(b - a, 6) for a, b in zip(hub.dial_times, hub.dial_times[1:], strict=False)]
    assert gaps == [1.0, 2.0, 10.0, 1.0]
    assert uniform.calls == 3  # the go-away wait drew no jitter


async def test_deregister_acks_wipes_and_returns(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    acks: list[LinkMessage] = []

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        await link.send(Deregister(77, "worker deregistered by owner"))
        acks.append(await link.recv())
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    assert acks == [DeregisterAck(77)]
    assert not (registered_dir / STATE_FILE).exists()
    # Retired, not destroyed: the identity is kept under a new name.
    (kept,) = worker.retired
    assert kept.name.startswith("state.json.deregistered-") and kept.parent == registered_dir
    assert json.loads(kept.read_text())["auth_token"] == TOKEN
    assert len(hub.links) == 1


async def test_unauthenticated_at_connect_changes_nothing(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A hub that does not know the token (a different hub, or its own on an empty
    database) is refused for good, and no file is touched."""
    before = (registered_dir / STATE_FILE).read_bytes()

    async def script(link: HubLink, n: int) -> None:
        await link.recv()
        await link.send(ErrorMessage("unauthenticated", "invalid auth token", "feedface00000000"))

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        with pytest.raises(HubMismatch) as info:
            await worker.run()
    assert (registered_dir / STATE_FILE).read_bytes() == before
    assert sorted(p.name for p in registered_dir.iterdir()) == [STATE_FILE]
    assert info.value.hub_id == "feedface00000000" and info.value.hub_code == "unauthenticated"
    assert len(hub.links) == 1


async def test_worker_deleted_at_connect_retires_a_worker_without_a_hub_record(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A worker registered before hubs had ids believes ``worker_deleted`` (only a database
    that issued the token can say it)."""

    async def script(link: HubLink, n: int) -> None:
        await link.recv()
        await link.send(ErrorMessage("worker_deleted", "deleted on this hub", "feedface00000000"))

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.WIPED
    assert not (registered_dir / STATE_FILE).exists()
    assert [p.name.split("-")[0] for p in worker.retired] == ["state.json.deregistered"]
    assert len(hub.links) == 1


async def test_other_errors_are_transient(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        if n == 0:
            # After the greeting even "unauthenticated" does not wipe: it is retried.
            await link.send(ErrorMessage("unauthenticated", "odd"))
            return
        if n == 1:
            await link.send(ErrorMessage("internal", "boom"))
            return
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    assert len(hub.links) == 3


async def test_stop_ends_run(registered_dir: Path, autojump_clock: trio.testing.MockClock) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        async with trio.open_nursery() as nursery:

            async def stopper() -> None:
                await trio.sleep(20)
                assert worker.online
                worker.stop()

            nursery.start_soon(stopper)
            assert await worker.run() is WorkerExit.STOPPED
    assert load_state(registered_dir).registered


async def test_run_refuses_an_unregistered_worker(tmp_path: Path) -> None:
    worker = Worker(tmp_path, hub_url="http://x.invalid", name="box")
    with pytest.raises(ConfigError, match="worker is unregistered"):
        await worker.run()


# ---------------------------------------------------------------------------
# Real transports on loopback (real clock)


async def test_register_and_connect_over_loopback_websocket(tmp_path: Path) -> None:
    async def script(link: HubLink, n: int) -> None:
        if n == 0:
            register = await link.recv()
            assert isinstance(register, Register)
            await link.send(Registered("w-9", "tok-9"))
            return
        connect, _ = await link.handshake()
        assert connect.auth_token == "tok-9"
        await link.send(Deregister(3, "done"))
        assert await link.recv() == DeregisterAck(3)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            hub = FakeHub(nursery, script)
            server = LinkServer(hub.on_link)
            host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
            worker = Worker(
                tmp_path,
                hub_url=f"http://{host}:{port}",
                name="box",
                registration_key=KEY,
                encryption_mode="classic",
            )
            assert await worker.serve() is WorkerExit.DEREGISTERED
            nursery.cancel_scope.cancel()
    assert not (tmp_path / STATE_FILE).exists()
    assert len(hub.links) == 2


async def test_state_json_has_no_key_after_loopback_registration(tmp_path: Path) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.recv()
        await link.send(Registered("w-5", "tok-5"))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            hub = FakeHub(nursery, script)
            server = LinkServer(hub.on_link)
            host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
            worker = Worker(
                tmp_path, hub_url=f"http://{host}:{port}", name="box", registration_key=KEY
            )
            worker.prepare()
            await worker.register()
            nursery.cancel_scope.cancel()
    document = json.loads((tmp_path / STATE_FILE).read_text())
    assert document["worker_id"] == "w-5"
    assert KEY not in (tmp_path / STATE_FILE).read_text()


async def test_refused_connect_is_read_once_after_a_failed_write(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The hub answered the connect with an error and closed before the keyed heartbeat
    went out: the worker reads the hub's reason instead of treating it as a plain drop."""
    from leapcore.proto.link_codec import encode

    class RefusingPipe:
        def __init__(self) -> None:
            self.sent: list[bytes] = []
            self.pending = [encode(ErrorMessage("unauthenticated", "worker not found"))]

        async def send(self, data: bytes) -> None:
            if self.sent:
                raise LinkClosed("peer closed")
            self.sent.append(data)

        async def receive(self) -> bytes:
            if not self.pending:
                raise LinkClosed("peer closed")
            return self.pending.pop()

        async def aclose(self) -> None:
            pass

    pipe = RefusingPipe()

    @asynccontextmanager
    async def dial() -> AsyncIterator[LinkPipe]:
        yield pipe

    before = (registered_dir / STATE_FILE).read_bytes()
    worker = Worker(registered_dir, hub_url="http://x.invalid", name="box", dial=dial)
    with pytest.raises(HubMismatch):
        await worker.run()  # the hub's reason was read: a refusal, not a retry
    assert len(pipe.sent) == 1
    assert (registered_dir / STATE_FILE).read_bytes() == before


async def test_last_go_away_wins(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        if n == 0:
            await link.send(GoAway(10, "first"))
            await link.send(GoAway(20, "second"))
            return
        await link.send(Deregister(1, "done"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    assert hub.dial_times[1] - hub.dial_times[0] == pytest.approx(20.0)


async def test_stop_during_backoff_and_registration(
    tmp_path: Path, registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        await link.recv()  # never answers; the link drops

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def stop_later() -> None:
                await trio.sleep(30)
                worker.stop()

            nursery.start_soon(stop_later)
            assert await worker.run() is WorkerExit.STOPPED
        # Stopped in the middle of a backoff wait, after several attempts.
        assert trio.current_time() - start == pytest.approx(30.0)
        assert len(hub.dial_times) >= 4

        fresh = make_worker(tmp_path / "new", hub, registration_key=KEY)
        async with trio.open_nursery() as nursery:

            async def stop_soon() -> None:
                await trio.sleep(5)
                fresh.stop()

            nursery.start_soon(stop_soon)
            assert await fresh.serve() is WorkerExit.STOPPED
    assert not load_state(tmp_path / "new").registered


@pytest.mark.parametrize("transport", ["websocket", "h2"])
async def test_cancelling_run_over_loopback_returns_promptly(
    registered_dir: Path, transport: str
) -> None:
    """Cancelling the daemon while its link is up must not hang on the close handshake."""

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        await link.drain()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            hub = FakeHub(nursery, script)
            host, port = await nursery.start(LinkServer(hub.on_link).serve_tcp, "127.0.0.1", 0)
            worker = Worker(
                registered_dir, hub_url=f"http://{host}:{port}", name="box", transport=transport
            )
            # Cancel the run from outside once the worker is online.
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:

                    async def cancel_when_online() -> None:
                        await worker.wait_online()
                        scope.cancel()

                    inner.start_soon(cancel_when_online)
                    await worker.run()
            assert scope.cancelled_caught and not worker.online
            # And a graceful stop while online.
            async with trio.open_nursery() as inner:

                async def stop_when_online() -> None:
                    await worker.wait_online()
                    worker.stop()

                inner.start_soon(stop_when_online)
                assert await worker.run() is WorkerExit.STOPPED
            nursery.cancel_scope.cancel()
    assert len(hub.links) == 2


def test_parse_labels() -> None:
    from leapcore.worker.daemon import parse_labels

    assert parse_labels("") == {}
    assert parse_labels(" a=1, b = two ,c=") == {"a": "1", "b": "two", "c": ""}
    with pytest.raises(ConfigError, match="not key=value"):
        parse_labels("a=1,b")
    with pytest.raises(ConfigError, match="given twice"):
        parse_labels("a=1,a=2")
