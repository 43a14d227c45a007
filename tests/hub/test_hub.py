"""The hub server on loopback: raw worker and client peers speaking the link protocol."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from support.hubpeer import (
    KEYS,
    Env,
    Peer,
    alive,
    gate_next_link,
    now_ms,
    running_hub,
    wait_until,
)

import leapcore.hub.server as hub_server
from leapcore.hub.server import SEND_QUEUE, WORKER_DELETED, Hub
from leapcore.net.dial import connect_link
from leapcore.proto.limits import REG_KEY_LIFETIME_MS
from leapcore.proto.link_codec import (
    ClientGreeting,
    ClientHello,
    Connect,
    Deregister,
    DeregisterAck,
    ErrorMessage,
    GoAway,
    Heartbeat,
    HeartbeatAck,
    OpenChannel,
    Register,
    Registered,
    WorkerGreeting,
    encode,
)
from leapcore.proto.link_state import LinkRole
from leapcore.store.hubstore import WorkerStatus

# -- registration ------------------------------------------------------------------------


async def test_register_then_key_is_consumed(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        key = env.key()
        worker_id, token = await env.register(key)
        worker = env.store.get_worker(worker_id)
        assert worker.owner_id == env.user_id and worker.status is WorkerStatus.ACTIVE
        assert env.store.authenticate_worker(token, now_ms()).id == worker_id
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Register(1, key, "again", "1.0"))
            [error] = await peer.until_closed()
            assert error == ErrorMessage(
                "unauthenticated", "registration key invalid or already consumed", env.store.hub_id
            )
        async with env.client() as client:
            state = await client.request("regkey.state", registration_key=key)
            assert state.result == {"state": "consumed"}
            old = env.key(at=now_ms() - 4 * 60_000)  # 1 minute left: extendable
            extended = await client.request("regkey.extend", 2, registration_key=old)
            assert extended.result is not None
            assert extended.result["expires_at"] >= now_ms() + REG_KEY_LIFETIME_MS - 60_000


async def test_register_refusals(tmp_path: Path) -> None:
    async with running_hub(tmp_path, max_workers_per_user=1) as env:
        expired = env.key(at=now_ms() - REG_KEY_LIFETIME_MS - 1)
        cases = [
            (Register(1, expired, "w", "1.0"), "unauthenticated"),
            (Register(1, env.key(), "w", "!!!"), "invalid_argument"),
        ]
        for message, code in cases:
            async with env.link(LinkRole.WORKER) as peer:
                await peer.send(message)
                [error] = await peer.until_closed()
                assert isinstance(error, ErrorMessage) and error.code == code
        await env.register()  # the refused key above was not consumed, the cap is 1
        key = env.key()
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Register(1, key, "w", "1.0"))
            [error] = await peer.until_closed()
            assert isinstance(error, ErrorMessage) and error.code == "quota_exceeded"
            assert "max_workers_per_user" in error.message
        async with env.client() as client:
            assert (await client.request("regkey.state", registration_key=key)).result == {
                "state": "live"
            }


async def test_wrong_protocol_version_and_first_frame_rules(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        async with env.link(LinkRole.WORKER) as peer:
            await peer.pipe.send(encode(Register(2, env.key(), "w", "1.0")))
            [error] = await peer.until_closed()
            assert isinstance(error, ErrorMessage)
            assert error.code == "unsupported_protocol_version"
        async with env.link(LinkRole.WORKER) as peer:
            await peer.pipe.send(encode(Heartbeat(1)))
            [error] = await peer.until_closed()
            assert isinstance(error, ErrorMessage) and error.code == "unexpected_message"


# -- worker links -------------------------------------------------------------------------


async def test_connect_greets_first_and_persists_keys(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        async with env.link(LinkRole.WORKER) as peer:
            # The connect and the keyed heartbeat arrive together, before the greeting.
            await peer.pipe.send(
                peer.conn.send(Connect(1, token)) + peer.conn.send(Heartbeat(7, "pq", **KEYS))
            )
            assert await peer.recv() == WorkerGreeting(
                worker_id, env.user_id, "alice", env.store.hub_id
            )
            assert await peer.recv() == HeartbeatAck(7)
            assert env.hub.is_online(worker_id)
            worker = env.store.get_worker(worker_id)
            assert worker.keys is not None and worker.keys.x25519 == KEYS["public_key"]
            assert worker.keys.mlkem == KEYS["mlkem_public_key"]
            assert str(worker.encryption_mode) == "post-quantum"
            seen = worker.last_seen_at
            assert seen is not None
            await peer.send(Heartbeat(8))
            assert await peer.recv() == HeartbeatAck(8)
            await peer.send(Heartbeat(9))
            assert await peer.recv() == HeartbeatAck(9)
            assert (env.store.get_worker(worker_id).last_seen_at or 0) >= seen
        await wait_until(lambda: not env.hub.is_online(worker_id))


async def test_heartbeat_acks_are_right_on_every_link_past_the_ack_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks are encoded once per (link state, sequence number) and shared; a cache that
    fills up is emptied, and worker and client links (other states) still get their own."""
    monkeypatch.setattr(hub_server, "ACK_CACHE", 3)
    async with running_hub(tmp_path) as env:
        _, token_a = await env.register()
        _, token_b = await env.register()
        async with env.worker(token_a) as a, env.worker(token_b) as b, env.client() as c:
            for seq in range(2, 9):
                for peer in (a, b, c):
                    await peer.send(Heartbeat(seq))
                    assert await peer.recv() == HeartbeatAck(seq)
        assert len(env.hub._acks) <= 3


async def test_liveness_closes_a_silent_link(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        async with env.worker(token) as peer:
            for seq in (2, 3):  # any inbound message re-arms the 10 s timer
                await trio.sleep(9)
                await peer.send(Heartbeat(seq))
                assert await peer.recv() == HeartbeatAck(seq)
                assert env.hub.is_online(worker_id)
            start = trio.current_time()
            assert await peer.until_closed() == []
            assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)
            assert not env.hub.is_online(worker_id)
        async with env.link(LinkRole.CLIENT) as silent:  # no first frame within 10 s
            start = trio.current_time()
            assert await silent.until_closed() == []
            assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)


@pytest.mark.parametrize("transport", ["websocket", "h2"])
async def test_unix_socket_and_transports(tmp_path: Path, transport: str) -> None:
    hub = Hub(tmp_path / "hub.db")
    sock = str(tmp_path / "hub.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: hub.serve(unix_path=sock, task_status=task_status))
        env = Env(hub, f"unix:{sock}")
        async with connect_link(env.url, transport=transport) as pipe:
            peer = Peer(pipe, LinkRole.WORKER)
            await peer.send(Register(1, env.key(), "w", "1.0"))
            reply = await peer.recv()
            assert isinstance(reply, Registered)
        async with connect_link(env.url, transport=transport) as pipe:
            peer = Peer(pipe, LinkRole.WORKER)
            await peer.send(Connect(1, reply.auth_token))
            await peer.send(Heartbeat(1, "classic", **KEYS))
            assert isinstance(await peer.recv(), WorkerGreeting)
            assert await peer.recv() == HeartbeatAck(1)
            assert hub.is_online(reply.worker_id)
            await hub.shutdown()
            assert await peer.until_closed() == [GoAway(10, "hub is shutting down")]


async def test_a_second_link_replaces_the_first(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        async with env.worker(token) as first:
            async with env.worker(token) as second:
                assert await first.until_closed() == []
                assert env.hub.is_online(worker_id)
                await second.send(Heartbeat(2))
                assert await second.recv() == HeartbeatAck(2)
            await wait_until(lambda: not env.hub.is_online(worker_id))


async def test_unknown_or_deleted_token_is_refused(tmp_path: Path) -> None:
    """A token this hub never issued is ``unauthenticated``; the token of a worker this hub
    deleted is ``worker_deleted`` (the one answer a worker retires its identity on); both
    name the hub."""
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        note = env.store.deregister_worker(worker_id, now_ms(), requested_by=None)
        env.store.notification_delivered(note.id, now_ms())
        hub_id = env.store.hub_id
        assert len(hub_id) == 16
        cases = (
            (token, "worker_deleted", WORKER_DELETED),
            ("t" * 48, "unauthenticated", "invalid auth token"),
            ("", "unauthenticated", "auth_token required"),
        )
        for bad, code, text in cases:
            async with env.link(LinkRole.WORKER) as peer:
                await peer.send(Connect(1, bad))
                [error] = await peer.until_closed()
                assert error == ErrorMessage(code, text, hub_id)


async def test_deregister_online_worker(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        async with env.worker(token) as worker, env.client() as client:
            response = await client.request("worker.deregister", worker_id=worker_id)
            assert response.result == {
                "worker_id": worker_id,
                "status": "deregistering",
                "notified": True,
            }
            note = await worker.recv()
            assert isinstance(note, Deregister) and note.reason == "worker deregistered by owner"
            await worker.send(DeregisterAck(note.request_id))
            assert await worker.until_closed() == []
        assert env.store.get_worker(worker_id).status is WorkerStatus.DELETED


async def test_deregister_offline_worker_is_told_on_connect(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        async with env.client() as client:
            response = await client.request("worker.deregister", worker_id=worker_id)
            assert response.result is not None and response.result["notified"] is False
        assert env.store.get_worker(worker_id).status is WorkerStatus.DEREGISTERING
        async with env.link(LinkRole.WORKER) as worker:
            await worker.send(Connect(1, token))
            note = await worker.recv()  # instead of a greeting: it is never greeted again
            assert isinstance(note, Deregister)
            await worker.send(DeregisterAck(note.request_id))
            assert await worker.until_closed() == []
        assert env.store.get_worker(worker_id).status is WorkerStatus.DELETED


# -- client links -------------------------------------------------------------------------


async def test_client_requests(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        mine, token = await env.register(name="mine")
        offline, _ = await env.register(name="offline")
        bob, _ = env.store.create_user("bob", now_ms())
        theirs, _ = await env.register(env.key(bob.id), name="theirs")
        async with env.worker(token), env.client() as client:
            listed = (await client.request("workers.list")).result
            assert listed is not None
            by_name = {w["name"]: w for w in listed["workers"]}
            assert set(by_name) == {"mine", "offline"}
            assert by_name["mine"]["online"] is True and by_name["mine"]["id"] == mine
            assert by_name["mine"]["encryption_mode"] == "classic"
            assert isinstance(by_name["mine"]["last_seen_at"], int)
            assert len(by_name["mine"]["fingerprint"].split("-")) == 4
            assert by_name["offline"]["online"] is False
            assert "fingerprint" not in by_name["offline"]

            created = (await client.request("regkey.create")).result
            assert created is not None and len(created["registration_key"]) == 48
            key = created["registration_key"]
            assert created["expires_at"] > now_ms()
            state = await client.request("regkey.state", registration_key=key)
            assert state.result == {"state": "live"}
            extend = await client.request("regkey.extend", registration_key=key)
            assert extend.error_code == "failed_precondition"
            assert extend.error_message == "extension not allowed yet"
            revoked = (await client.request("regkey.revoke", registration_key=key)).result
            assert revoked is not None and set(revoked) == {"key_id"}
            state = await client.request("regkey.state", registration_key=key)
            assert state.result == {"state": "expired"}

            stranger = await client.request("worker.deregister", worker_id=theirs)
            assert (stranger.error_code, stranger.error_message) == (
                "not_found",
                "worker not found",
            )
            unknown = await client.request("regkey.state", registration_key="nope")
            assert unknown.error_code == "not_found"

            bad = [
                ("workers.list", {"extra": 1}),
                ("regkey.state", {}),
                ("regkey.state", {"registration_key": 5}),
                ("regkey.extend", {"registration_key": ""}),
                ("worker.deregister", {"worker_id": True}),
                ("no.such.method", {}),
            ]
            for i, (method, params) in enumerate(bad, start=10):
                response = await client.request(method, i, **params)
                assert response.error_code == "invalid_argument", (method, params)
                assert response.result is None
            # The link survived every refusal.
            await client.send(Heartbeat(3))
            assert await client.recv() == HeartbeatAck(3)
            await client.send(OpenChannel(4, offline, b"m1", 65519))
            refused = await client.recv()
            assert refused.type == "channel_refused" and refused.code == "worker_offline"  # type: ignore[attr-defined]
        assert env.store.get_worker(offline).status is WorkerStatus.ACTIVE


async def test_bad_api_token(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env, env.link(LinkRole.CLIENT) as peer:
        await peer.send(ClientHello(1, "wrong"))
        [error] = await peer.until_closed()
        assert isinstance(error, ErrorMessage) and error.code == "unauthenticated"


async def test_a_malformed_frame_closes_only_its_link(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        _, token = await env.register()
        async with env.worker(token) as worker, env.client() as good:
            for junk in (b"\x00\x00\x00\x05\x01{no}", b"\xff\xff\xff\xff", b"\x00\x00\x00\x01\x07"):
                async with env.client() as bad:
                    await bad.pipe.send(junk)
                    [error] = await bad.until_closed()
                    assert isinstance(error, ErrorMessage)
                    assert error.code in ("link_protocol_error", "frame_too_large")
            async with env.client() as bad:
                await bad.pipe.send(encode(Connect(1, token)))  # a hello, out of order
                [error] = await bad.until_closed()
                assert isinstance(error, ErrorMessage) and error.code == "unexpected_message"
            assert (await good.request("workers.list")).result is not None
            await worker.send(Heartbeat(5))
            assert await worker.recv() == HeartbeatAck(5)


async def test_healthz_and_graceful_shutdown(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        _, token = await env.register()
        host_port = env.url.removeprefix("http://")
        host, port = host_port.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\nok\n")
        async with env.worker(token) as worker, env.client() as client:
            await env.hub.shutdown()
            assert await worker.until_closed() == [GoAway(10, "hub is shutting down")]
            assert await client.until_closed() == [GoAway(10, "hub is shutting down")]


async def test_live_links_are_capped_per_owner(tmp_path: Path) -> None:
    async with running_hub(tmp_path, max_workers_per_user=2) as env:
        (first, token1), (_, token2) = (
            await env.register(name="first"),
            await env.register(name="second"),
        )
        env.store.max_workers_per_user = 1  # lowered after both registered
        # A reconnect replaces its own slot; a second worker is refused.
        async with env.worker(token1), env.worker(token1), env.link(LinkRole.WORKER) as peer:
            assert env.hub.is_online(first)
            await peer.send(Connect(1, token2))
            [error] = await peer.until_closed()
            assert isinstance(error, ErrorMessage) and error.code == "quota_exceeded"


async def test_a_peer_that_does_not_read_is_cut_off_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="leapcore.hub.server")

    def cut_off() -> bool:
        return any("peer is not reading" in r.getMessage() for r in caplog.records)

    async with running_hub(tmp_path) as env:
        held = gate_next_link(env.hub)
        async with env.client() as stuck:
            # The hub's writer for the link takes one ack and waits at the gate for good.
            held.hold()
            await stuck.send(Heartbeat(1))
            await wait_until(lambda: held.waiting)
            # Its queue takes SEND_QUEUE more records; the next one is refused at once (the
            # reader never waits for the writer) and ends the link.
            beats = range(2, SEND_QUEUE + 3)
            await stuck.pipe.send(b"".join(stuck.conn.send(Heartbeat(i)) for i in beats))
            await wait_until(cut_off)
            async with env.client() as other:  # nobody else waited
                await alive(other)
            held.release()
            acks = await stuck.until_closed()
            assert acks == [HeartbeatAck(i) for i in range(1, SEND_QUEUE + 2)]


async def test_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    hub = Hub(tmp_path / "hub.db")
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(
            lambda task_status: hub.serve(ssl_context=context, task_status=task_status)
        )
        env = Env(hub, f"https://localhost:{port}")
        for transport in ("websocket", "h2"):
            async with connect_link(
                env.url, transport=transport, ca_file=str(tmp_path / "ca.pem")
            ) as pipe:
                peer = Peer(pipe, LinkRole.CLIENT)
                await peer.send(ClientHello(1, env.token))
                expires = hub.store.find_token(env.token).expires_at
                assert await peer.recv() == ClientGreeting(
                    env.user_id, "alice", hub.store.hub_id, expires
                )
        await hub.shutdown()
