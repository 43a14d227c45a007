"""Revocation takes effect at once: revoked API tokens, deregistered and deleted workers,
revoked registration keys; and failed sign-ins are logged, rate-limited.

The store is changed through a second connection to the same SQLite file (as the admin CLI
or another hub would), or by ``leapcore-hub admin`` run as a real subprocess; the hub
only learns about it by polling its store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio
import trio.testing
from support.hubpeer import (
    KEYS,
    SIZE,
    Env,
    alive,
    now_ms,
    open_ok,
    recv,
    running_hub,
    scrape,
    serve_worker,
    until_closed,
    value,
    wait_until,
    workers,
)
from support.procs import script

from leapcore.hub.server import WORKER_DELETED, Hub
from leapcore.proto.limits import HubLimits
from leapcore.proto.link_codec import (
    ChannelClose,
    ChannelRefused,
    ClientHello,
    Connect,
    Deregister,
    DeregisterAck,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    HubRequest,
    HubResponse,
    OpenChannel,
    Register,
    encode,
)
from leapcore.proto.link_state import LinkRole
from leapcore.proto.ratelimit import LogRateLimiter
from leapcore.store.hubstore import MAX_NOTIFICATION_ATTEMPTS, SQLiteHubStore, WorkerStatus


def other_store(env: Env) -> SQLiteHubStore:
    """A second connection to the hub's database: what the admin CLI or another hub uses."""
    return SQLiteHubStore(env.store.path, create=False)


def token_id(store: SQLiteHubStore, token: str) -> str:
    return store.find_token(token).id


# -- API tokens -----------------------------------------------------------------------------


async def test_revoking_a_token_closes_its_links_within_a_second(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_hub(tmp_path) as env:
        second = env.store.create_token("alice", now_ms())
        _, bob_token = env.store.create_user("bob", now_ms())
        async with (
            env.client() as first_a,
            env.client() as first_b,
            env.client(second) as other_token,
            env.client(bob_token) as bob,
        ):
            admin = other_store(env)
            start = trio.current_time()
            admin.revoke_token(token_id(admin, env.token), now_ms())
            admin.close()
            for peer in (first_a, first_b):  # every link signed in with it
                assert await until_closed(peer, 1) == [
                    ErrorMessage("unauthenticated", "the API token was revoked", env.store.hub_id)
                ]
            assert trio.current_time() - start <= 0.5 + 0.01
            await alive(other_token)  # the same user's other token still works
            await alive(bob)
        assert value(await scrape(env), "links_closed_total", reason="token_revoked") == 2
        async with env.link(LinkRole.CLIENT) as again:  # and it signs in no more
            await again.send(ClientHello(1, env.token))
            assert await until_closed(again, 1) == [
                ErrorMessage("unauthenticated", "invalid API token", env.store.hub_id)
            ]


async def test_admin_cli_token_revoke_closes_a_live_link(tmp_path: Path) -> None:
    """The real ``leapcore-hub admin user token-revoke`` process, against the running hub."""
    data = tmp_path / "data"
    async with running_hub(data) as env:
        _, bob_token = env.store.create_user("bob", now_ms())
        async with env.client() as client, env.client(bob_token) as bob:
            env_vars = {k: v for k, v in os.environ.items() if not k.startswith("LEAPCORE_")}
            env_vars["HOME"] = str(tmp_path)
            argv = [
                script("leapcore-hub"),
                "admin",
                "user",
                "token-revoke",
                "--id",
                token_id(env.store, env.token),
                "--data-dir",
                str(data),
            ]
            proc = await trio.run_process(argv, capture_stdout=True, env=env_vars, check=False)
            assert proc.returncode == 0, proc.stdout
            done = trio.current_time()
            assert await until_closed(client, 1) == [
                ErrorMessage("unauthenticated", "the API token was revoked", env.store.hub_id)
            ]
            assert trio.current_time() - done < 1
            await alive(bob)


# -- deregistered and deleted workers -------------------------------------------------------


async def test_a_worker_deregistered_elsewhere_stops_serving_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        running_hub(tmp_path) as env,
        workers(env, 1) as [(sibling_id, _)],
    ):
        worker_id, token = await env.register(name="leaving")
        async with env.worker(token) as worker, env.client() as client:
            async with trio.open_nursery() as nursery:  # the worker accepts opens meanwhile
                nursery.start_soon(serve_worker, worker)
                opened = await open_ok(client, 1, worker_id)
                nursery.cancel_scope.cancel()
            admin = other_store(env)
            admin.deregister_worker(worker_id, now_ms(), requested_by=None)
            admin.close()
            deregister = await recv(worker)
            assert isinstance(deregister, Deregister)
            assert deregister.reason == "worker deregistered by administrator"
            assert not env.hub.is_online(worker_id)
            # Its channel is closed at the client, and it can reach nothing any more.
            assert await recv(client) == ChannelClose(
                opened.channel_id, "closed", "the worker was deregistered"
            )
            denied = await worker.request("workers.list", 5)
            assert denied.error_code == "permission_denied"
            await worker.send(OpenChannel(6, sibling_id, b"m1", SIZE))
            refused = await recv(worker)
            assert isinstance(refused, ChannelRefused)
            assert refused.code == "permission_denied"
            # Nothing is routed to it.
            await client.send(OpenChannel(2, worker_id, b"m1", SIZE))
            refused = await recv(client)
            assert isinstance(refused, ChannelRefused) and refused.code == "not_found"
            # It acknowledges: deleted, and its link ends.
            await worker.send(DeregisterAck(deregister.request_id))
            assert await until_closed(worker, 5) == []
            assert env.store.get_worker(worker_id).status is WorkerStatus.DELETED
            await alive(client)


async def test_a_deregistering_worker_is_never_a_working_worker_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        sibling_id, _ = await env.register(name="sibling")
        env.store.deregister_worker(worker_id, now_ms(), requested_by=env.user_id)
        # Far more reconnects than the notification's attempts: every one is the same.
        for attempt in range(MAX_NOTIFICATION_ATTEMPTS + 2):
            async with env.link(LinkRole.WORKER) as peer:
                start = trio.current_time()
                await peer.send(Connect(1, token))
                await peer.send(Heartbeat(1, "classic", **KEYS))
                # Answered with its deregister, never greeted: it never learns its owner.
                deregister = await recv(peer)
                assert isinstance(deregister, Deregister), (attempt, deregister)
                assert await peer.recv() == HeartbeatAck(1)
                assert not env.hub.is_online(worker_id)
                assert worker_id not in env.hub.online_workers
                # It keeps heartbeating but never acknowledges: the link ends after 10 s.
                for seq in range(5, 9):
                    await trio.sleep(2)
                    await peer.send(Heartbeat(seq))
                rest = await until_closed(peer, 30)
                assert all(isinstance(m, HeartbeatAck) for m in rest), rest
                assert trio.current_time() - start == pytest.approx(10, abs=0.1)
        assert env.store.get_worker(worker_id).status is WorkerStatus.DEREGISTERING
        # The one that finally acknowledges is deleted; its token is then refused.
        # A retiring link may only heartbeat and acknowledge: a hub request (or an open)
        # sent past its own state machine closes it as a protocol violation.
        for hostile in (
            HubRequest(2, "workers.list", {}),
            HubRequest(3, "worker.keys", {"worker_id": sibling_id}),
            OpenChannel(4, sibling_id, b"m1", SIZE),
        ):
            async with env.link(LinkRole.WORKER) as peer:
                await peer.send(Connect(1, token))
                assert isinstance(await recv(peer), Deregister)
                await peer.pipe.send(encode(hostile))
                rest = await until_closed(peer, 5)
                assert rest and isinstance(rest[-1], ErrorMessage), rest
                assert rest[-1].code == "unexpected_message"
                assert not any(isinstance(m, HubResponse | ChannelRefused) for m in rest), rest
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Connect(1, token))
            deregister = await recv(peer)
            assert isinstance(deregister, Deregister)
            await peer.send(DeregisterAck(deregister.request_id))
            assert await until_closed(peer, 5) == []
        assert env.store.get_worker(worker_id).status is WorkerStatus.DELETED
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Connect(1, token))
            assert await until_closed(peer, 5) == [
                ErrorMessage("worker_deleted", WORKER_DELETED, env.store.hub_id)
            ]


async def test_a_deleted_workers_link_is_closed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        bystander_id, bystander_token = await env.register(name="bystander")
        async with env.worker(token) as worker, env.worker(bystander_token) as bystander:
            # Deregistered and acknowledged by another copy of it, elsewhere: deleted.
            admin = other_store(env)
            note = admin.deregister_worker(worker_id, now_ms(), requested_by=None)
            admin.notification_delivered(note.id, now_ms())
            admin.close()
            assert await until_closed(worker, 1) == [
                ErrorMessage("worker_deleted", WORKER_DELETED, env.store.hub_id)
            ]
            assert not env.hub.is_online(worker_id)
            await alive(bystander)
            assert env.hub.is_online(bystander_id)


async def test_owner_deregistering_over_its_link_retires_the_worker_at_once(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        async with env.worker(token) as worker, env.client() as client:
            response = await client.request("worker.deregister", 1, worker_id=worker_id)
            assert response.result == {
                "worker_id": worker_id,
                "status": "deregistering",
                "notified": True,
            }
            assert not env.hub.is_online(worker_id)
            deregister = await recv(worker)
            assert isinstance(deregister, Deregister)
            assert (await worker.request("workers.list", 2)).error_code == "permission_denied"
            await worker.send(DeregisterAck(deregister.request_id))
            assert await until_closed(worker, 5) == []
            assert env.store.get_worker(worker_id).status is WorkerStatus.DELETED


# -- registration keys ----------------------------------------------------------------------


async def test_a_revoked_registration_key_is_refused_at_once(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        record, key = env.store.mint_registration_key(env.user_id, now_ms())
        admin = other_store(env)
        admin.revoke_registration_key(record.id, now_ms())
        admin.close()
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Register(1, key, "box", "1.0"))
            assert await until_closed(peer, 5) == [
                ErrorMessage(
                    "unauthenticated",
                    "registration key invalid or already consumed",
                    env.store.hub_id,
                )
            ]
        assert env.store.list_workers(owner_id=env.user_id) == []


# -- sign-in logs ---------------------------------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_failed_sign_ins_are_logged_with_the_peer_and_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="leapcore.hub.server")
    async with running_hub(tmp_path) as env:
        bad = "B" * 48
        record, key = env.store.mint_registration_key(env.user_id, now_ms())
        env.store.revoke_registration_key(record.id, now_ms())
        async with env.link(LinkRole.CLIENT) as peer:
            await peer.send(ClientHello(1, bad))
            await until_closed(peer, 5)
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Connect(1, bad))
            await until_closed(peer, 5)
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Register(1, key, "box", "1.0"))
            await until_closed(peer, 5)
        lines = [line for line in _lines(caplog) if "sign-in refused" in line]
        assert len(lines) == 3, lines  # once per event
        for line, kind in zip(
            lines,
            ("bad API token", "bad worker token", "refused registration key"),
            strict=True,
        ):
            assert line.startswith("sign-in refused from 127.0.0.1:"), line
            assert kind in line
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert bad not in text and key not in text and env.token not in text
        assert value(await scrape(env), "sign_ins_refused_total", reason="api_token") == 1


async def test_a_sign_in_flood_is_logged_rate_limited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.WARNING, logger="leapcore.hub.server")
    async with running_hub(tmp_path) as env:
        for i in range(30):
            async with env.link(LinkRole.CLIENT) as peer:
                await peer.send(ClientHello(1, f"{i:048d}"))
                await until_closed(peer, 5)
        refused = [line for line in _lines(caplog) if line.startswith("sign-in refused")]
        assert len(refused) == 10
        await trio.sleep(11)  # the window ends: one summary line, from the periodic check
        summary = [line for line in _lines(caplog) if "suppressed" in line]
        assert summary == ["20 more refused sign-ins (bad API token) suppressed in the last 10s"]
        async with env.client() as client:  # the flood cost nobody else anything
            await alive(client)


# -- the sans-IO rate limiter ---------------------------------------------------------------


def test_rate_limiter_counts_every_event_once() -> None:
    limiter = LogRateLimiter(limit=2, window=10.0)
    assert [limiter.allow("a", t) for t in (0.0, 1.0, 2.0, 3.0)] == [
        (True, 0),
        (True, 0),
        (False, 0),
        (False, 0),
    ]
    assert limiter.allow("b", 3.0) == (True, 0)  # kinds are separate
    assert limiter.expired(9.9) == []
    # The next event after the window reports what the old window suppressed...
    assert limiter.allow("a", 10.0) == (True, 2)
    assert limiter.allow("a", 10.5) == (True, 0)
    assert limiter.allow("a", 11.0) == (False, 0)
    # ... or the periodic flush does, once; an ended window with nothing held is dropped.
    assert limiter.expired(20.0) == [("a", 1)]
    assert limiter.expired(30.0) == []
    with pytest.raises(ValueError):
        LogRateLimiter(limit=0)


async def test_the_revocation_check_is_one_batched_query(tmp_path: Path) -> None:
    """check_revocations asks the store in one batch per kind, however many links."""
    hub = Hub(tmp_path / "hub.db", limits=HubLimits(revocation_check_interval=0.05))
    calls: list[int] = []
    real = hub.store.live_token_ids

    def counted(ids: object) -> set[str]:
        ids = set(ids)  # type: ignore[call-overload]
        calls.append(len(ids))
        return real(ids)

    hub.store.live_token_ids = counted  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(lambda task_status: hub.serve(task_status=task_status))
        env = Env(hub, f"http://{host}:{port}")
        second = env.store.create_token("alice", now_ms())
        async with env.client(), env.client(), env.client(second):
            calls.clear()
            await wait_until(lambda: len(calls) >= 2)
            assert set(calls) == {2}  # three links, two distinct tokens, one query
        await hub.shutdown()


async def test_a_deregistering_workers_newest_link_replaces_its_older_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """However many times a deregistering worker's token connects, the hub keeps one
    retiring link for it: each new one ends the one before."""
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        env.store.deregister_worker(worker_id, now_ms(), requested_by=env.user_id)
        async with env.link(LinkRole.WORKER) as first:
            await first.send(Connect(1, token))
            assert isinstance(await recv(first), Deregister)
            async with env.link(LinkRole.WORKER) as second:
                await second.send(Connect(1, token))
                assert isinstance(await recv(second), Deregister)
                start = trio.current_time()
                assert await until_closed(first, 5) == []  # replaced at once
                assert trio.current_time() - start < 1
                retiring = [x for x in env.hub._links if x.worker is not None]
                assert len(retiring) == 1 and env.hub.router.is_retired(retiring[0])
