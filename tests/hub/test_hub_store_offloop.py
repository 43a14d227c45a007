"""Store calls run off the event loop (``Hub.store_call``): a real hub on loopback whose
store holds one call (a sign-in's, or a ``workers.list``'s) on a ``threading.Event`` the test
keeps. Meanwhile a worker's heartbeats are acknowledged and frames relayed on an open
channel; once released the call completes as usual. Store calls never run more at once than
the limiter allows (1 for SQLite, the pool's size for PostgreSQL; counted in the store), and
the hub closes its store only after a call in flight returned. Each on SQLite and on a real
PostgreSQL server (``pg_url``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from support.hubpeer import (
    SIZE,
    Env,
    Peer,
    recv,
    running_hub,
    wait_until,
)

from leapcore.errors import LinkClosed
from leapcore.hub.server import Hub
from leapcore.proto.link_codec import (
    ChannelAccept,
    ChannelData,
    ChannelOpened,
    ChannelRequest,
    Heartbeat,
    HeartbeatAck,
    OpenChannel,
)
from leapcore.store.hubstore import HubStore, SQLiteHubStore, open_hub_store

#: The store methods the hub calls while serving that these tests count.
COUNTED = (
    "authenticate_client",
    "authenticate_worker",
    "get_worker",
    "list_workers",
    "live_token_ids",
    "worker_statuses",
    "record_heartbeat",
    "record_last_seen",
    "record_audit",
)


class Counter:
    """Counts the calls a real store (SQLite or PostgreSQL) gets from the hub's threads (how
    many at once, at most), and can hold the calls of one method until :attr:`release` is
    set: its methods in :data:`COUNTED`, and ``close``, are wrapped on the instance."""

    def __init__(self, store: HubStore, *, dwell: float = 0.0) -> None:
        self.store = store
        #: Each counted call lasts at least this long (so that overlaps would show).
        self.dwell = dwell
        #: The method whose calls wait for :attr:`release` (None: none).
        self.held: str | None = None
        self.release = threading.Event()
        #: Set when a held call is waiting.
        self.blocked = threading.Event()
        self._lock = threading.Lock()
        #: ``active``: this thread is in a counted call (a store method calling another).
        self._inner = threading.local()
        self.running = 0
        self.most = 0
        self.calls = 0
        #: Held calls that returned.
        self.completed: list[str] = []
        self.closed = False
        for name in COUNTED:
            setattr(store, name, self._wrap(name, getattr(store, name)))
        close = store.close

        def closing() -> None:
            assert self.running == 0, "closed while a call runs"
            self.closed = True
            close()

        store.close = closing  # type: ignore[method-assign]

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def method(*args: Any, **kwargs: Any) -> Any:
            nested = getattr(self._inner, "active", False)
            if nested or threading.current_thread() is threading.main_thread():
                return fn(*args, **kwargs)  # the test's own calls, or one inside a call
            self._inner.active = True
            try:
                return self._outer(name, fn, *args, **kwargs)
            finally:
                self._inner.active = False

        return method

    def _outer(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            if name == self.held:
                self.blocked.set()
                assert self.release.wait(30), "never released"
            if self.dwell:
                time.sleep(self.dwell)
            result = fn(*args, **kwargs)
            if name == self.held:
                self.completed.append(name)
            return result
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the hub's store is: an SQLite file, or an empty PostgreSQL database."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return str(tmp_path / "hub.db")


async def channel_to(client: Peer, worker: Peer, worker_id: str) -> int:
    await client.send(OpenChannel(1, worker_id, b"m1", SIZE))
    request = await recv(worker)
    assert isinstance(request, ChannelRequest), request
    await worker.send(
        ChannelAccept(request.request_id, request.channel_id, b"m2", request.max_message_size)
    )
    opened = await recv(client)
    assert isinstance(opened, ChannelOpened), opened
    return opened.channel_id


async def sign_in(env: Env, done: trio.Event) -> None:
    async with env.client():
        done.set()


async def sign_in_or_be_closed(env: Env, done: trio.Event) -> None:
    with contextlib.suppress(LinkClosed):
        await sign_in(env, done)


async def list_workers(env: Env, done: trio.Event, listed: list[str]) -> None:
    async with env.client() as other:
        response = await other.request("workers.list")
        assert response.result is not None
        listed.extend(w["id"] for w in response.result["workers"])
        done.set()


@pytest.mark.parametrize("held", ["authenticate_client", "list_workers"])
async def test_a_blocked_store_call_stops_neither_heartbeats_nor_relayed_frames(
    tmp_path: Path, location: str, held: str
) -> None:
    """Another client's sign-in, or its ``workers.list``, waits in the store thread."""
    store = Counter(open_hub_store(location))
    async with running_hub(tmp_path, store=store.store) as env:
        worker_id, token = await env.register()
        async with env.worker(token) as worker, env.client() as client:
            channel = await channel_to(client, worker, worker_id)
            store.held = held
            answered = trio.Event()
            listed: list[str] = []
            async with trio.open_nursery() as nursery:
                if held == "authenticate_client":
                    nursery.start_soon(sign_in, env, answered)
                else:
                    nursery.start_soon(list_workers, env, answered, listed)
                await wait_until(store.blocked.is_set)
                for seq in range(2, 12):
                    await worker.send(Heartbeat(seq))
                    assert await recv(worker, ()) == HeartbeatAck(seq)
                    out = ChannelData(channel, seq, 0, bytes([seq]) * 64)
                    await client.send(out)
                    assert await recv(worker) == out
                    back = ChannelData(channel, seq, 0, bytes([seq]) * 32)
                    await worker.send(back)
                    assert await recv(client) == back
                # All that while the call was held: it has not returned, nothing answered.
                assert store.running == 1 and not store.completed and not answered.is_set()
                store.release.set()
                with trio.fail_after(10):
                    await answered.wait()  # the held call completed and was answered
            assert store.completed == [held]
            assert listed == ([worker_id] if held == "list_workers" else [])
            assert store.most <= env.hub.store_limiter.total_tokens


async def test_store_calls_never_run_more_at_once_than_the_limiter_allows(
    tmp_path: Path, location: str
) -> None:
    """SQLite: one call at a time; PostgreSQL: as many as its pool has connections (2)."""
    store = Counter(open_hub_store(location, pool_size=2), dwell=0.001)
    pool = 2 if location.startswith("postgresql") else 1
    async with running_hub(tmp_path, store=store.store) as env:
        assert env.hub.store_limiter.total_tokens == pool
        for name in ("a", "b"):
            await env.register(name=name)

        async def busy_client() -> None:
            async with env.client() as client:
                for request_id in range(1, 6):
                    response = await client.request("workers.list", request_id)
                    assert response.result is not None
                    assert len(response.result["workers"]) == 2

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(busy_client)
    assert store.calls >= 8 * 6  # every sign-in and request, each in a thread
    assert store.most == pool  # never more; and so many did overlap
    assert store.closed


async def test_the_store_is_closed_only_after_the_call_in_flight_returned(
    tmp_path: Path, location: str
) -> None:
    """Shutting down cancels the link whose sign-in waits for the store: the call is never
    abandoned (it returns first), and the store is closed after it."""
    store = Counter(open_hub_store(location))
    signed_in = trio.Event()
    async with trio.open_nursery() as outer:
        async with running_hub(tmp_path, store=store.store) as env:
            store.held = "authenticate_client"
            outer.start_soon(sign_in_or_be_closed, env, signed_in)
            await wait_until(store.blocked.is_set)

            async def release_once_stuck() -> None:
                await wait_until(lambda: env.hub.router.closing)  # the shutdown began
                await trio.testing.wait_all_tasks_blocked()  # and waits for the call
                assert not store.closed and not store.completed
                store.release.set()

            outer.start_soon(release_once_stuck)
        # running_hub returned: the hub shut down and closed its store.
        assert store.completed == ["authenticate_client"] and store.closed
        outer.cancel_scope.cancel()
    assert not signed_in.is_set()  # its link was closed by the shutdown


def test_the_limiter_is_sized_by_the_store(tmp_path: Path) -> None:
    class PooledStore(SQLiteHubStore):
        max_concurrent_calls = 4

    hub = Hub(tmp_path / "unused.db", store=PooledStore(tmp_path / "hub.db"))
    try:
        assert hub.store_limiter.total_tokens == 4
    finally:
        hub.store.close()
    hub = Hub(tmp_path / "hub.db")  # SQLite, which says nothing: one call at a time
    try:
        assert hub.store_limiter.total_tokens == 1
    finally:
        hub.store.close()
