"""Several hubs on one database (leapcore.hub.cluster): presence leases, hub-to-hub links,
channels relayed through two hubs, the cluster secret, graceful shutdown.

Every hub here is a real :class:`Hub` on loopback, all sharing ONE SQLite file (WAL); the
workers and clients are raw link peers (:mod:`support.hubpeer`). Renewal ticks are made
short (``renew_interval``) and conditions are polled with a deadline; lease expiry is
checked by moving one hub's wall clock past the lease.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from support.hubpeer import (
    SIZE,
    Env,
    Peer,
    WallClock,
    gate_next_link,
    now_ms,
    recv,
    wait_until,
)
from support.procs import script
from support.secretlog import record_secret

from leapcore.errors import ConfigError, LeapcoreError
from leapcore.hub.cluster import ClusterOptions, read_secret_file
from leapcore.hub.server import Hub
from leapcore.net.dial import connect_link
from leapcore.proto.cluster_wire import (
    CLUSTER_VERSION,
    ClusterChallenge,
    ClusterDecoder,
    ClusterError,
    ClusterHello,
    ClusterPing,
    ClusterProof,
    ClusterReady,
    encode_cluster,
    proof,
    proof_ok,
)
from leapcore.proto.limits import (
    CHANNEL_CREDIT,
    CLUSTER_HANDSHAKE_TIMEOUT,
    CLUSTER_IDLE_TIMEOUT,
    CLUSTER_LEASE,
    CLUSTER_MAX_CONNECTIONS,
    CLUSTER_MAX_LOOKUPS,
    GO_AWAY_DELAY,
)
from leapcore.proto.link_codec import (
    ChannelAccept,
    ChannelClose,
    ChannelCredit,
    ChannelData,
    ChannelOpened,
    ChannelRefused,
    ChannelRequest,
    Deregister,
    GoAway,
    HeartbeatAck,
    OpenChannel,
    encode,
)
from leapcore.store.hubstore import _MIGRATIONS, SCHEMA_VERSION, SQLiteHubStore

SECRET = record_secret("a shared cluster secret, 32 bytes!").encode()  # never in a log
FULL = 65535
#: Ticks short enough for a test to wait for.
FAST: dict[str, Any] = {"renew_interval": 0.1}


def options(name: str, secret: bytes = SECRET, **kw: Any) -> ClusterOptions:
    return ClusterOptions(listen=("127.0.0.1", 0), secret=secret, node_name=name, **{**FAST, **kw})


class Node:
    """One running hub of the cluster, with alice's token (made once, on the first)."""

    def __init__(self, hub: Hub, url: str, scope: trio.CancelScope, first: Node | None) -> None:
        self.hub = hub
        self.url = url
        self.scope = scope
        self.env = Env(hub, url) if first is None else first.env.__class__.__new__(Env)
        if first is not None:
            self.env.__dict__.update(first.env.__dict__, hub=hub, url=url, store=hub.store)


@asynccontextmanager
async def hubs(tmp_path: Path, *opts: ClusterOptions, **kw: Any) -> AsyncIterator[list[Node]]:
    """Hubs serving on loopback, one per ``opts``, all on ``tmp_path/hub.db``."""
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for option in opts:
            hub = Hub(tmp_path / "hub.db", cluster=option, **kw)
            scope = trio.CancelScope()

            async def serve(hub: Hub = hub, scope: trio.CancelScope = scope, **ts: Any) -> None:
                with scope:
                    await hub.serve(**ts)

            host, port = await nursery.start(serve)
            nodes.append(Node(hub, f"http://{host}:{port}", scope, nodes[0] if nodes else None))
        try:
            yield nodes
        finally:
            for node in nodes:
                await node.hub.shutdown()


async def serve_echo(worker: Peer) -> None:
    """A fake worker: accepts every open and sends every data frame back."""
    while True:
        message = await recv(worker, (HeartbeatAck, ChannelCredit))
        if isinstance(message, ChannelRequest):
            await worker.send(ChannelAccept(message.request_id, message.channel_id, b"m2", 65519))
        elif isinstance(message, ChannelData):
            await worker.send(message)


async def send_within_credit(sender: Peer, channel: int, payload: bytes) -> None:
    """Send ``payload`` on ``channel`` in full frames, within the credit the hub grants."""
    credit = CHANNEL_CREDIT
    more = trio.Event()

    async def credits() -> None:
        nonlocal credit
        while True:
            message = await sender.recv()
            if isinstance(message, ChannelCredit):
                credit += message.credit
                more.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(credits)
        for i in range(0, len(payload), FULL):
            chunk = payload[i : i + FULL]
            while credit < len(chunk):
                more = trio.Event()
                await more.wait()
            credit -= len(chunk)
            await sender.send(ChannelData(channel, 1 + i // FULL, 0, chunk))
        nursery.cancel_scope.cancel()


async def transfer(sender: Peer, receiver: Peer, channel: int, payload: bytes) -> bytes:
    """:func:`send_within_credit`, and what the receiver got meanwhile."""
    got = bytearray()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_within_credit, sender, channel, payload)
            while len(got) < len(payload):
                frame = await recv(receiver, (HeartbeatAck, ChannelCredit))
                assert isinstance(frame, ChannelData), frame
                got += frame.ciphertext
    return bytes(got)


# -- presence ----------------------------------------------------------------------------------


async def test_presence_across_hubs_and_the_latest_link_wins(tmp_path: Path) -> None:
    async with hubs(tmp_path, options("a"), options("b")) as (a, b):
        worker_id, token = await b.env.register()
        events = a.hub.presence.subscribe()  # what A's web page streams follow
        assert events is not None
        async with b.env.worker(token) as on_b, a.env.client() as client:
            await wait_until(lambda: a.hub.is_online(worker_id))
            assert events.receive_nowait() == a.env.user_id
            listed = await client.request("workers.list", 2)
            assert listed.result is not None
            assert [w["online"] for w in listed.result["workers"]] == [True]
            assert a.hub.router.worker_link(worker_id) is None  # not linked here
            nodes = a.hub.store.cluster_nodes(now_ms())
            assert [(n.node_id, n.workers) for n in nodes] == [("a", 0), ("b", 1)]
            # The same worker links to A: A's link is the latest, B drops its own.
            async with a.env.worker(token):
                await wait_until(lambda: b.hub.router.worker_link(worker_id) is None)
                closed = await on_b.until_closed()
                assert not any(isinstance(m, GoAway) for m in closed)
                await wait_until(lambda: b.hub.is_online(worker_id))
                assert a.hub.router.worker_link(worker_id) is not None
            # Its link to A ends: offline everywhere.
            await wait_until(lambda: not b.hub.is_online(worker_id))
            assert not a.hub.is_online(worker_id)


async def test_a_worker_deregistered_at_one_hub_goes_offline_everywhere(tmp_path: Path) -> None:
    async with hubs(tmp_path, options("a"), options("b")) as (a, b):
        worker_id, token = await b.env.register()
        async with b.env.worker(token) as on_b, a.env.client() as client:
            await wait_until(lambda: a.hub.is_online(worker_id))
            answer = await client.request("worker.deregister", 3, worker_id=worker_id)
            assert answer.result is not None and answer.result["notified"] is False
            # B, which holds the link, learns at its next revocation check and retires it.
            deregister = await recv(on_b)
            assert isinstance(deregister, Deregister), deregister
            await wait_until(lambda: not a.hub.is_online(worker_id))
            assert b.hub.store.worker_node(worker_id, now_ms()) is None


async def test_a_hub_that_stops_renewing_loses_its_workers(tmp_path: Path) -> None:
    clock = WallClock(now_ms())
    async with hubs(tmp_path, options("a"), options("b"), wall_clock=clock) as (a, b):
        worker_id, token = await b.env.register()
        async with b.env.worker(token):
            await wait_until(lambda: a.hub.is_online(worker_id))
            assert b.hub.cluster is not None and a.hub.cluster is not None

            async def stalled() -> None:  # B stops renewing (its database link hangs, say)
                return None

            b.hub.cluster.renew = stalled  # type: ignore[method-assign]
            clock.ms += int(CLUSTER_LEASE * 1000) - 1000  # just within the lease: online
            ticked = a.hub.cluster.renewed_at
            await wait_until(lambda: a.hub.cluster.renewed_at > ticked)  # type: ignore[union-attr]
            assert a.hub.is_online(worker_id)
            clock.ms += 2000  # the lease has ended
            ticked = a.hub.cluster.renewed_at
            await wait_until(lambda: a.hub.cluster.renewed_at > ticked)  # type: ignore[union-attr]
            assert not a.hub.is_online(worker_id)
            assert a.hub.store.worker_node(worker_id, clock.ms) is None
            assert [n.node_id for n in a.hub.store.cluster_nodes(clock.ms)] == ["a"]


def test_schema_6_adds_the_cluster_tables_to_a_schema_5_database(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    db = sqlite3.connect(path, isolation_level=None)
    for sql in _MIGRATIONS[:5]:
        db.executescript(sql)
    db.execute("PRAGMA user_version = 5")
    db.close()
    path.chmod(0o600)
    store = SQLiteHubStore(path)
    try:
        assert store.schema_version == SCHEMA_VERSION == 6
        user, _ = store.create_user("alice", 1000)
        key = store.mint_registration_key(user.id, 1000)[1]
        w = store.register_worker(key, name="w", version="1", labels={}, now_ms=1000)[0].id
        store.cluster_join("n1", "127.0.0.1:1", 1000, 15_000)
        tick = store.cluster_renew("n1", 2000, 15_000, up={w: (2000, user.id)})
        assert (tick.held, tick.remote, tick.peers) == ({w}, {}, {})
        # An older link's presence never overwrites a newer one (the latest link wins).
        store.cluster_join("n2", "127.0.0.1:2", 2000, 15_000)
        tick = store.cluster_renew("n2", 2500, 15_000, up={w: (1500, user.id)})
        assert tick.held == set() and tick.remote == {w: user.id} and set(tick.peers) == {"n1"}
        node = store.worker_node(w, 3000)
        assert node is not None and node.node_id == "n1"
        assert store.worker_node(w, 2000 + 15_000) is None  # the lease ended
        store.cluster_leave("n1")
        assert store.worker_node(w, 3000) is None
        assert [n.node_id for n in store.cluster_nodes(3000)] == ["n2"]
    finally:
        store.close()


# -- channels through two hubs ---------------------------------------------------------------


async def test_a_channel_opened_at_a_to_a_worker_on_b(tmp_path: Path) -> None:
    async with hubs(tmp_path, options("a"), options("b")) as (a, b):
        worker_id, token = await b.env.register()
        async with (
            b.env.worker(token) as worker,
            a.env.client() as client,
            trio.open_nursery() as nursery,
        ):
            await wait_until(lambda: a.hub.is_online(worker_id))
            await client.send(OpenChannel(7, worker_id, b"hello", SIZE))
            request = await recv(worker)
            assert isinstance(request, ChannelRequest), request
            # B forwards the user A authenticated; the handshake message is untouched.
            assert (request.user_id, request.message1) == (a.env.user_id, b"hello")
            await worker.send(ChannelAccept(request.request_id, request.channel_id, b"m2", 65519))
            opened = await recv(client)
            assert isinstance(opened, ChannelOpened), opened
            assert (opened.request_id, opened.message2, opened.max_message_size) == (
                7,
                b"m2",
                65519,
            )
            ours, theirs = opened.channel_id, request.channel_id
            assert a.hub.open_channels == b.hub.open_channels == 1

            # Ping: one frame each way, ids translated, bytes unchanged.
            await client.send(ChannelData(ours, 1, 0, b"p" * 16))
            assert await recv(worker) == ChannelData(theirs, 1, 0, b"p" * 16)
            await worker.send(ChannelData(theirs, 2, 0, b"q" * 20))
            assert await recv(client) == ChannelData(ours, 2, 0, b"q" * 20)

            # Bulk both ways, several times the credit: byte for byte, credit end to end.
            payload = os.urandom(48 * FULL)
            assert await transfer(client, worker, ours, payload) == payload
            back = os.urandom(40 * FULL)
            assert await transfer(worker, client, theirs, back) == back
            await wait_until(lambda: a.hub.channel_buffered(ours) == 0)

            # A close at the worker reaches the client, and both hubs forget the channel.
            await worker.send(ChannelClose(theirs, "closed", "bye"))
            assert await recv(client, (HeartbeatAck, ChannelCredit)) == ChannelClose(
                ours, "closed", "bye"
            )
            await wait_until(lambda: a.hub.open_channels == b.hub.open_channels == 0)

            # The link is reused for the next open; a refusal at B comes back as one.
            nursery.start_soon(serve_echo, worker)
            await client.send(OpenChannel(8, worker_id, b"again", SIZE))
            again = await recv(client, (HeartbeatAck, ChannelCredit))
            assert isinstance(again, ChannelOpened), again
            assert a.hub.cluster is not None and len(a.hub.cluster._out) == 1
            await client.send(OpenChannel(9, "no-such-worker", b"x", SIZE))
            refused = await recv(client, (HeartbeatAck, ChannelCredit))
            assert isinstance(refused, ChannelRefused) and refused.code == "not_found"
            nursery.cancel_scope.cancel()


async def test_an_open_for_a_hub_that_cannot_be_dialled_is_refused(tmp_path: Path) -> None:
    async with hubs(tmp_path, options("a")) as (a,):
        worker_id, _token = await a.env.register()
        # The database says a live hub "ghost" holds the worker, at an address nobody serves.
        store, now = a.hub.store, now_ms()
        store.cluster_join("ghost", "127.0.0.1:1", now, 15_000)
        store.cluster_renew("ghost", now, 15_000, up={worker_id: (now, a.env.user_id)})
        async with a.env.client() as client:
            await wait_until(lambda: a.hub.is_online(worker_id))
            await client.send(OpenChannel(1, worker_id, b"m1", SIZE))
            refused = await recv(client)
            assert isinstance(refused, ChannelRefused) and refused.code == "worker_offline"
            assert a.hub.open_channels == 0 and a.hub.router.pending_count == 0
            assert a.hub.cluster is not None and a.hub.cluster._out == {}


async def test_a_close_waits_for_frames_held_for_the_other_hubs_credit(tmp_path: Path) -> None:
    """B's writer to the worker is held, so B grants A no credit: A keeps the client's
    frames past the first CHANNEL_CREDIT. The client's close then waits behind them, and
    once B writes again the worker gets every byte, then the close."""
    async with hubs(tmp_path, options("a"), options("b")) as (a, b):
        worker_id, token = await b.env.register()
        gate = gate_next_link(b.hub)
        async with b.env.worker(token) as worker, a.env.client() as client:
            await wait_until(lambda: a.hub.is_online(worker_id))
            await client.send(OpenChannel(1, worker_id, b"m1", SIZE))
            request = await recv(worker)
            assert isinstance(request, ChannelRequest)
            await worker.send(ChannelAccept(request.request_id, request.channel_id, b"m2", 65519))
            opened = await recv(client)
            assert isinstance(opened, ChannelOpened)
            gate.hold()
            payload = os.urandom(2 * CHANNEL_CREDIT // FULL * FULL)
            got = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_within_credit, client, opened.channel_id, payload)
                # A holds what B has not granted: more than the credit never left A.
                await wait_until(
                    lambda: a.hub.channel_buffered(opened.channel_id) >= CHANNEL_CREDIT // 2
                )
                await client.send(ChannelClose(opened.channel_id, "closed", "done"))
                await wait_until(lambda: a.hub.open_channels == 0)
                gate.release()
                while True:
                    message = await recv(worker, (HeartbeatAck, ChannelCredit))
                    if isinstance(message, ChannelClose):
                        break
                    assert isinstance(message, ChannelData), message
                    got += message.ciphertext
                nursery.cancel_scope.cancel()
            assert message == ChannelClose(request.channel_id, "closed", "done")
            assert bytes(got) == payload[: len(got)] and len(got) >= 3 * CHANNEL_CREDIT // 2
            await wait_until(lambda: b.hub.open_channels == 0)
            assert a.hub.cluster is not None
            assert not any(link.flows for link in a.hub.cluster._out.values())


async def test_channels_to_a_hub_that_goes_away_close(tmp_path: Path) -> None:
    async with hubs(tmp_path, options("a"), options("b")) as (a, b):
        worker_id, token = await b.env.register()
        async with b.env.worker(token) as worker, a.env.client() as client:
            await wait_until(lambda: a.hub.is_online(worker_id))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_echo, worker)
                await client.send(OpenChannel(1, worker_id, b"m1", SIZE))
                opened = await recv(client)
                assert isinstance(opened, ChannelOpened), opened
                nursery.cancel_scope.cancel()
            b.scope.cancel()  # B stops (its links, the hub-to-hub one too, are cut)
            closed = await recv(client, (HeartbeatAck, ChannelCredit))
            assert isinstance(closed, ChannelClose) and closed.channel_id == opened.channel_id
            await wait_until(lambda: a.hub.open_channels == 0)


# -- the cluster secret and the cluster listener ----------------------------------------------


async def test_a_wrong_cluster_secret_is_refused(tmp_path: Path) -> None:
    async with hubs(
        tmp_path, options("a"), options("b", secret=b"another secret, 32 bytes long!!")
    ) as (
        a,
        b,
    ):
        assert a.hub.cluster is not None and a.hub.cluster.bound is not None
        # A raw dialler that does not know the secret.
        stream = await trio.open_tcp_stream(*a.hub.cluster.bound)
        decoder = ClusterDecoder(frozenset())
        await stream.send_all(encode_cluster(ClusterHello(CLUSTER_VERSION, "x", bytes(32))))

        async def record() -> Any:
            while (message := decoder.next()) is None:
                data = await stream.receive_some()
                if not data:
                    return None
                decoder.receive_data(data)
            return message

        challenge = await record()
        assert isinstance(challenge, ClusterChallenge) and challenge.node_id == "a"
        await stream.send_all(encode_cluster(ClusterProof(bytes(32))))
        assert await record() == ClusterError("unauthenticated", "wrong cluster secret")
        assert await record() is None  # closed
        # Hub B (another secret) cannot reach A's workers: its open is refused.
        worker_id, token = await a.env.register()
        async with a.env.worker(token), b.env.client() as client:
            await wait_until(lambda: b.hub.is_online(worker_id))
            await client.send(OpenChannel(1, worker_id, b"m1", SIZE))
            refused = await recv(client)
            assert isinstance(refused, ChannelRefused) and refused.code == "worker_offline"
        assert a.hub.cluster.auth_failures._value.get() == 2
        assert b.hub.cluster is not None and b.hub.cluster.auth_failures._value.get() == 1


async def test_a_client_cannot_use_the_cluster_port(tmp_path: Path) -> None:
    async with hubs(tmp_path, options("a")) as (a,):
        assert a.hub.cluster is not None and a.hub.cluster.bound is not None
        host, port = a.hub.cluster.bound
        assert f"http://{host}:{port}" != a.url
        with pytest.raises((LeapcoreError, OSError, trio.BrokenResourceError)):
            with trio.fail_after(10):
                async with connect_link(f"http://{host}:{port}") as pipe:
                    await pipe.send(b"\x00\x00\x00\x01\x01")
                    await pipe.receive()


def test_the_secret_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="0600") as info:
        read_secret_file(path)
    assert SECRET.decode() not in str(info.value)
    path.chmod(0o600)
    assert read_secret_file(path) == SECRET
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="fewer than"):
        read_secret_file(path)
    with pytest.raises(ConfigError, match="secret"):
        ClusterOptions(listen=("127.0.0.1", 0))


def test_cluster_settings(tmp_path: Path) -> None:
    from leapcore.store.config import hub_settings
    from leapcore_cli.hub import cluster_options

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)

    def settings(**flags: Any) -> dict[str, Any]:
        return hub_settings(flags=flags, env={}, home=tmp_path, config_path=None)[0]

    assert cluster_options(settings()) is None
    made = cluster_options(
        settings(
            cluster_listen="127.0.0.1:0",
            cluster_secret_file=str(secret),
            node_name="n1",
            cluster_lease=3.0,
            cluster_renew_interval=0.5,
        )
    )
    assert made == ClusterOptions(
        listen=("127.0.0.1", 0), secret=SECRET, node_name="n1", lease=3.0, renew_interval=0.5
    )
    assert SECRET.decode() not in repr(made)
    with pytest.raises(ConfigError, match="needs cluster_secret_file"):
        cluster_options(settings(cluster_listen="127.0.0.1:0"))
    with pytest.raises(ConfigError, match="longer than"):
        cluster_options(
            settings(cluster_secret_file=str(secret), cluster_lease=1.0, cluster_renew_interval=2.0)
        )
    with pytest.raises(ConfigError, match="cluster_lease"):
        settings(cluster_lease=0.1)


# -- shutdown and status -----------------------------------------------------------------------


async def test_shutdown_sends_workers_on_at_once_when_other_hubs_live(tmp_path: Path) -> None:
    async with hubs(tmp_path, options("a"), options("b")) as (a, b):
        worker_id, token = await b.env.register()
        async with b.env.worker(token) as on_b:
            await wait_until(lambda: a.hub.is_online(worker_id))
            await b.hub.shutdown()
            assert GoAway(0, "hub is shutting down") in await on_b.until_closed()
        # The last hub standing keeps the usual delay.
        async with a.env.worker(token) as on_a:
            await wait_until(lambda: not a.hub.cluster.others_alive)  # type: ignore[union-attr]
            await a.hub.shutdown()
            assert GoAway(GO_AWAY_DELAY, "hub is shutting down") in await on_a.until_closed()


async def test_cluster_status_cli(tmp_path: Path) -> None:
    async with hubs(tmp_path, options("a"), options("b")) as (a, b):
        worker_id, token = await b.env.register()
        async with b.env.worker(token):
            await wait_until(lambda: a.hub.is_online(worker_id))
            command = [script("leapcore-hub"), "admin", "cluster", "status"]
            command += ["--data-dir", str(tmp_path)]
            done = await trio.run_process(
                [*command, "--json"], capture_stdout=True, capture_stderr=True, check=False
            )
            assert done.returncode == 0, done.stderr
            doc = json.loads(done.stdout)
            assert [(h["node_id"], h["workers"]) for h in doc["hubs"]] == [("a", 0), ("b", 1)]
            assert doc["hubs"][1]["advertise"] == "{}:{}".format(*b.hub.cluster.bound)  # type: ignore[union-attr]
            assert all(0 <= h["lease_age_ms"] < 15_000 for h in doc["hubs"])
            text = await trio.run_process(command, capture_stdout=True, check=True)
            lines = text.stdout.decode().splitlines()
            assert lines[0].split()[:2] == ["NODE", "ADVERTISE"]
            assert lines[2].split()[0] == "b" and lines[2].split()[-3:] == ["live", "1", "0"]
            assert lines[-1] == "2 live hubs, 1 workers online, 0 channels"


# -- budgets of the hub-to-hub listener (docs/budgets.md), on trio's MockClock ----------------


async def signed_in(address: tuple[str, int], node: str = "x") -> tuple[trio.SocketStream, Any]:
    """A raw dialler that knows the secret, signed in: (its stream, a record reader)."""
    stream = await trio.open_tcp_stream(*address)
    decoder = ClusterDecoder(frozenset({"channel_opened", "channel_close", "data"}))

    async def record() -> Any:
        while (message := decoder.next()) is None:
            data = await stream.receive_some()
            if not data:
                return None
            decoder.receive_data(data)
        return message

    mine = os.urandom(32)
    await stream.send_all(encode_cluster(ClusterHello(CLUSTER_VERSION, node, mine)))
    challenge = await record()
    assert isinstance(challenge, ClusterChallenge)
    nonces, nodes = (mine, challenge.nonce), (node, challenge.node_id)
    assert proof_ok(SECRET, challenge.proof, dialler=False, nonces=nonces, nodes=nodes)
    await stream.send_all(
        encode_cluster(ClusterProof(proof(SECRET, dialler=True, nonces=nonces, nodes=nodes)))
    )
    assert await record() == ClusterReady()
    return stream, record


async def test_cluster_listener_budgets(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with hubs(tmp_path, options("a")) as (a,):
        assert a.hub.cluster is not None and a.hub.cluster.bound is not None
        address = a.hub.cluster.bound
        # Silent before signing in: closed after the handshake budget.
        silent = await trio.open_tcp_stream(*address)
        start = trio.current_time()
        assert await silent.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(CLUSTER_HANDSHAKE_TIMEOUT, abs=0.1)
        # A frame over the size limit: closed without a word.
        big = await trio.open_tcp_stream(*address)
        await big.send_all(b"\xff\xff\xff\xff\x03")
        assert await big.receive_some() == b""
        # Signed in, then silent: closed once the idle budget passed without a ping answered.
        stream, record = await signed_in(address)
        start = trio.current_time()
        while (message := await record()) is not None:
            assert isinstance(message, ClusterPing)
        assert trio.current_time() - start == pytest.approx(CLUSTER_IDLE_TIMEOUT, abs=0.1)
        # Signed in, then a record the dialling side may not send: that link alone ends.
        stream, record = await signed_in(address)
        await stream.send_all(encode(ChannelOpened(1, 1, b"m2", 65519)))
        assert await record() is None
        # At most CLUSTER_MAX_CONNECTIONS at once: the next one is closed unread.
        held = [await trio.open_tcp_stream(*address) for _ in range(CLUSTER_MAX_CONNECTIONS)]
        await wait_until(lambda: len(a.hub.cluster._inbound) == CLUSTER_MAX_CONNECTIONS)  # type: ignore[union-attr]
        extra = await trio.open_tcp_stream(*address)
        assert await extra.receive_some() == b""
        for s in held:
            await s.aclose()
        # The hub still serves.
        worker_id, token = await a.env.register()
        async with a.env.worker(token):
            assert a.hub.is_online(worker_id)


async def test_opens_looked_up_at_once_are_bounded(tmp_path: Path) -> None:
    async with hubs(tmp_path, options("a"), options("b")) as (a, b):
        worker_id, token = await b.env.register()
        cluster = a.hub.cluster
        assert cluster is not None
        async with b.env.worker(token) as worker, a.env.client() as client:
            await wait_until(lambda: a.hub.is_online(worker_id))
            slow = trio.Event()
            plain = cluster._store

            async def held(fn: Any, *args: Any, **kw: Any) -> Any:
                await slow.wait()  # the database is slow
                return await plain(fn, *args, **kw)

            cluster._store = held  # type: ignore[method-assign]
            cluster._lookups = CLUSTER_MAX_LOOKUPS - 1
            await client.send(OpenChannel(1, worker_id, b"m1", SIZE))  # the last one allowed
            await wait_until(lambda: cluster._lookups == CLUSTER_MAX_LOOKUPS)
            await client.send(OpenChannel(2, worker_id, b"m1", SIZE))  # one too many
            refused = await recv(client)
            assert refused == ChannelRefused(2, "worker_offline", refused.message)
            slow.set()
            request = await recv(worker)
            assert isinstance(request, ChannelRequest)
            await worker.send(ChannelAccept(request.request_id, request.channel_id, b"m2", 65519))
            opened = await recv(client)
            assert isinstance(opened, ChannelOpened) and opened.request_id == 1
            assert cluster._lookups == CLUSTER_MAX_LOOKUPS - 1
