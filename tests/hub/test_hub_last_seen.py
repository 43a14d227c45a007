"""A worker's ``last_seen_at`` is batched: heartbeats are answered at once but their times
written together, one transaction every ``LAST_SEEN_FLUSH_INTERVAL`` (a real hub on
loopback, its clock a MockClock), soon after the worker's link ends, and never moving
back in time."""

from __future__ import annotations

import time
from pathlib import Path

import trio
import trio.testing
from support.hubpeer import KEYS, running_hub, wait_until

from leapcore.proto.limits import LAST_SEEN_FLUSH_INTERVAL
from leapcore.proto.link_codec import Connect, Heartbeat, HeartbeatAck, WorkerGreeting
from leapcore.proto.link_state import LinkRole
from leapcore.store.hubstore import SQLiteHubStore


def test_record_last_seen_writes_many_and_never_goes_back(tmp_path: Path) -> None:
    store = SQLiteHubStore(tmp_path / "hub.db")
    user, _ = store.create_user("alice", 1_000)
    _, key = store.mint_registration_key(user.id, 1_000)
    a, _ = store.register_worker(key, name="a", version="1", labels={}, now_ms=1_000)
    _, key = store.mint_registration_key(user.id, 1_000)
    b, _ = store.register_worker(key, name="b", version="1", labels={}, now_ms=1_000)
    store.record_last_seen({a.id: 5_000, b.id: 6_000})
    store.record_last_seen({a.id: 4_000})  # a late batch: a stays at 5 000
    store.record_last_seen({})
    assert (store.get_worker(a.id).last_seen_at, store.get_worker(b.id).last_seen_at) == (
        5_000,
        6_000,
    )


async def test_heartbeats_are_written_in_batches(tmp_path: Path) -> None:
    wall = [float(int(time.time()))]
    clock = trio.testing.MockClock()  # the hub's monotonic clock: it paces the batches
    async with running_hub(tmp_path, wall_clock=lambda: wall[0], clock=clock.current_time) as env:
        worker_id, token = await env.register()
        async with env.link(LinkRole.WORKER) as peer:
            await peer.pipe.send(
                peer.conn.send(Connect(1, token)) + peer.conn.send(Heartbeat(1, "pq", **KEYS))
            )
            assert isinstance(await peer.recv(), WorkerGreeting)
            assert await peer.recv() == HeartbeatAck(1)
            first = env.store.get_worker(worker_id).last_seen_at  # a keyed beat: at once
            assert first == int(wall[0] * 1000)
            for seq in (2, 3):
                wall[0] += 1
                await peer.send(Heartbeat(seq))
                assert await peer.recv() == HeartbeatAck(seq)
            assert env.store.get_worker(worker_id).last_seen_at == first  # not yet written
            clock.jump(LAST_SEEN_FLUSH_INTERVAL)  # the next revocation check writes them
            await wait_until(lambda: env.store.get_worker(worker_id).last_seen_at != first)
            assert env.store.get_worker(worker_id).last_seen_at == first + 2000
            wall[0] += 1
            await peer.send(Heartbeat(4))
            assert await peer.recv() == HeartbeatAck(4)
        # The link ended: its last heartbeat is written with it (by a flush in the
        # background, off the event loop).
        await wait_until(lambda: not env.hub.is_online(worker_id))
        await wait_until(lambda: env.store.get_worker(worker_id).last_seen_at == first + 3000)
