"""The hub's identity and a worker's profile, on a real hub on loopback: ``hub_id`` in
``registered``, both greetings and every ``error``; which token rejection is
``worker_deleted``; names and labels from ``connect``; unique names per owner."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from support.hubpeer import KEYS, Env, Peer, alive, now_ms, running_hub, until_closed

from leapcore.errors import AlreadyExists, Unauthenticated, WorkerDeleted
from leapcore.hub.server import WORKER_DELETED, Hub
from leapcore.net.dial import connect_link
from leapcore.peer.hubsession import hub_error
from leapcore.proto.link_codec import (
    ClientGreeting,
    ClientHello,
    Connect,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    LinkMessage,
    Register,
    Registered,
    WorkerGreeting,
    encode,
)
from leapcore.proto.link_state import LinkRole
from leapcore.store.hubstore import WorkerStatus


async def register(env: Env, name: str, labels: dict[str, str] | None = None) -> Registered:
    async with env.link(LinkRole.WORKER) as peer:
        await peer.send(Register(1, env.key(), name, "1.0", labels or {}))
        reply = await peer.recv()
        assert isinstance(reply, Registered), reply
        assert await peer.until_closed() == []
        return reply


async def connect(env: Env, message: Connect) -> list[LinkMessage]:
    """Send ``message`` and a keyed heartbeat; the greeting and ack, or what the hub said
    before it closed the link."""
    async with env.link(LinkRole.WORKER) as peer:
        await peer.send(message)
        await peer.send(Heartbeat(1, "classic", **KEYS))
        first = await peer.recv()
        if isinstance(first, WorkerGreeting):
            assert await peer.recv() == HeartbeatAck(1)
            return [first]
        return [first, *await until_closed(peer, 10)]


# -- the hub's id ---------------------------------------------------------------------------


async def test_registered_and_both_greetings_name_the_hub(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        hub_id = env.store.hub_id
        assert len(hub_id) == 16 and int(hub_id, 16) >= 0
        reply = await register(env, "box")
        assert reply.hub_id == hub_id
        [greeting] = await connect(env, Connect(1, reply.auth_token))
        assert greeting == WorkerGreeting(reply.worker_id, env.user_id, "alice", hub_id)
        async with env.link(LinkRole.CLIENT) as client:
            await client.send(ClientHello(1, env.token))
            expires = env.store.find_token(env.token).expires_at
            assert expires is not None  # the greeting says when the token expires
            assert await client.recv() == ClientGreeting(env.user_id, "alice", hub_id, expires)
    # The same database is the same hub, whatever process serves it.
    hub = Hub(tmp_path / "hub.db")
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(lambda task_status: hub.serve(task_status=task_status))
        async with connect_link(f"http://{host}:{port}") as pipe:
            peer = Peer(pipe, LinkRole.WORKER)
            await peer.send(Connect(1, reply.auth_token))
            greeting = await peer.recv()
            assert isinstance(greeting, WorkerGreeting) and greeting.hub_id == hub_id
        await hub.shutdown()


async def test_every_error_the_hub_sends_names_it(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        cases: list[LinkMessage] = [
            Register(1, "not-a-key", "box", "1.0"),  # unauthenticated
            Register(1, env.key(), "box", "!!!"),  # invalid_argument
            ClientHello(1, "not-a-token"),  # unauthenticated
        ]
        for message in cases:
            role = LinkRole.CLIENT if isinstance(message, ClientHello) else LinkRole.WORKER
            async with env.link(role) as peer:
                await peer.send(message)
                [error] = await until_closed(peer, 10)
                assert isinstance(error, ErrorMessage) and error.hub_id == env.store.hub_id
        async with env.link(LinkRole.WORKER) as peer:  # a protocol error, too
            await peer.pipe.send(encode(Heartbeat(1)))
            [error] = await until_closed(peer, 10)
            assert isinstance(error, ErrorMessage) and error.code == "unexpected_message"
            assert error.hub_id == env.store.hub_id


async def test_the_hub_logs_its_id_when_it_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leapcore.hub.server")
    async with running_hub(tmp_path) as env:
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if "hub id" in r.msg]
        assert lines == [
            (logging.INFO, f"hub id {env.store.hub_id} (database {tmp_path / 'hub.db'})")
        ]


# -- which rejection retires a worker -------------------------------------------------------


async def test_only_this_hubs_deletion_is_worker_deleted(tmp_path: Path) -> None:
    """A token of a worker this hub deleted: ``worker_deleted``. The same token at another
    hub (another database), which never issued it: ``unauthenticated``, from that hub's
    id, so a worker can tell the two apart."""
    async with (
        running_hub(tmp_path / "a") as home,
        running_hub(tmp_path / "b") as other,
    ):
        assert home.store.hub_id != other.store.hub_id
        reply = await register(home, "box")
        assert await connect(other, Connect(1, reply.auth_token)) == [
            ErrorMessage("unauthenticated", "invalid auth token", other.store.hub_id)
        ]
        assert home.store.get_worker(reply.worker_id).status is WorkerStatus.ACTIVE
        note = home.store.deregister_worker(reply.worker_id, now_ms(), requested_by=None)
        home.store.notification_delivered(note.id, now_ms())
        assert await connect(home, Connect(1, reply.auth_token, "box")) == [
            ErrorMessage("worker_deleted", WORKER_DELETED, home.store.hub_id)
        ]
        assert await connect(other, Connect(1, reply.auth_token)) == [
            ErrorMessage("unauthenticated", "invalid auth token", other.store.hub_id)
        ]


def test_clients_get_the_error_classes_of_the_new_codes() -> None:
    deleted = hub_error("worker_deleted", "gone")
    assert type(deleted) is WorkerDeleted and isinstance(deleted, Unauthenticated)
    assert type(hub_error("already_exists", "taken")) is AlreadyExists
    assert type(hub_error("unauthenticated", "no")) is Unauthenticated


# -- names and labels -----------------------------------------------------------------------


async def test_connect_records_the_workers_name_and_labels(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        reply = await register(env, "box", {"site": "lab"})
        worker_id, token = reply.worker_id, reply.auth_token

        def profile() -> tuple[str, dict[str, str]]:
            worker = env.store.get_worker(worker_id)
            return worker.name, dict(worker.labels)

        await connect(env, Connect(1, token))  # no profile: nothing changes
        assert profile() == ("box", {"site": "lab"})
        await connect(env, Connect(1, token, "crate", {"site": "home", "gpu": "yes"}))
        assert profile() == ("crate", {"site": "home", "gpu": "yes"})
        await connect(env, Connect(1, token, labels={}))  # labels only: the name stays
        assert profile() == ("crate", {})
        await connect(env, Connect(1, token, "box"))  # name only: the labels stay
        assert profile() == ("box", {})
        async with env.client() as client:  # what the owner sees
            listed = await client.request("workers.list")
            assert listed.result is not None
            assert [(w["name"], w["labels"]) for w in listed.result["workers"]] == [("box", {})]


async def test_a_name_taken_at_connect_ends_the_link_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path) as env:
        box = await register(env, "box", {"site": "lab"})
        crate = await register(env, "crate", {"site": "home"})
        async with env.worker(box.auth_token) as online:
            answer = await connect(env, Connect(1, crate.auth_token, "box", {"site": "x"}))
            [error] = answer
            assert isinstance(error, ErrorMessage) and error.code == "already_exists"
            assert "'box'" in error.message and error.hub_id == env.store.hub_id
            worker = env.store.get_worker(crate.worker_id)
            assert (worker.name, worker.labels) == ("crate", {"site": "home"})
            assert not env.hub.is_online(crate.worker_id)
            await alive(online)  # the worker that has the name is untouched
        # Another owner may use the name; a deleted worker's name is free again.
        bob, _ = env.store.create_user("bob", now_ms())
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Register(1, env.key(bob.id), "box", "1.0"))
            assert isinstance(await peer.recv(), Registered)
        note = env.store.deregister_worker(box.worker_id, now_ms(), requested_by=None)
        env.store.notification_delivered(note.id, now_ms())
        [greeting] = await connect(env, Connect(1, crate.auth_token, "box"))
        assert isinstance(greeting, WorkerGreeting)
        assert env.store.get_worker(crate.worker_id).name == "box"


async def test_an_unchanged_name_is_not_checked_again(tmp_path: Path) -> None:
    """Two workers named alike before names were unique keep connecting, as long as their
    configuration does not change (only a change is checked)."""
    async with running_hub(tmp_path) as env:
        first = await register(env, "box")
        second = await register(env, "crate")
        with env.store._tx() as db:  # as a database from before the rule may hold them
            db.execute("UPDATE workers SET name = 'box' WHERE id = ?", (second.worker_id,))
        [greeting] = await connect(env, Connect(1, second.auth_token, "box", {}))
        assert isinstance(greeting, WorkerGreeting)
        [error] = await connect(env, Connect(1, second.auth_token, "box", {"new": "label"}))
        assert isinstance(error, ErrorMessage) and error.code == "already_exists"
        assert env.store.get_worker(first.worker_id).name == "box"


async def test_a_bad_profile_at_connect_is_a_protocol_error(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        reply = await register(env, "box")
        async with env.link(LinkRole.WORKER) as peer:
            bad = (
                b'{"type":"connect","protocol_version":1,"auth_token":"'
                + reply.auth_token.encode()
                + b'","name":"box\\u001b[2J"}'
            )
            await peer.pipe.send(len(bad + b"x").to_bytes(4, "big") + b"\x01" + bad)
            [error] = await until_closed(peer, 10)
            assert isinstance(error, ErrorMessage) and error.code == "link_protocol_error"
            assert "connect.name" in error.message
        assert env.store.get_worker(reply.worker_id).name == "box"


async def test_a_name_taken_at_registration_consumes_nothing(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        first = await register(env, "box")
        key = env.key()
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Register(1, key, "box", "1.0"))
            [error] = await until_closed(peer, 10)
            assert isinstance(error, ErrorMessage) and error.code == "already_exists"
            assert first.worker_id in error.message and error.hub_id == env.store.hub_id
        assert [w.id for w in env.store.list_workers(owner_id=env.user_id)] == [first.worker_id]
        async with env.client() as client:
            state = await client.request("regkey.state", registration_key=key)
            assert state.result == {"state": "live"}
        async with env.link(LinkRole.WORKER) as peer:  # the same key, another name
            await peer.send(Register(1, key, "crate", "1.0"))
            assert isinstance(await peer.recv(), Registered)


async def test_a_hub_request_refused_already_exists_keeps_its_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's :class:`AlreadyExists` reaches a client as ``already_exists``."""
    async with running_hub(tmp_path) as env, env.client() as client:

        def taken(**_: object) -> list[object]:
            raise AlreadyExists("another of this owner's workers is already called 'box'")

        monkeypatch.setattr(env.store, "list_workers", taken)
        response = await client.request("workers.list")
        assert response.error_code == "already_exists"
        assert response.error_message == "another of this owner's workers is already called 'box'"
        with trio.fail_after(5):
            await alive(client)
