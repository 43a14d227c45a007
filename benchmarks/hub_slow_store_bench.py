"""A slow store call against the hub's heartbeats and relayed frames.

One hub in this process (trio, real loopback WebSocket links) whose store makes every
``list_workers`` call last ``--slow`` seconds more: on SQLite (the default, a temporary file)
a ``time.sleep`` inside the call, as a locked database would; with ``--store
postgresql://...`` (an empty database) a ``SELECT pg_sleep(...)`` on the call's connection.
One worker link and one client link with a channel open to it probe the hub back to back: a
heartbeat and its ``heartbeat_ack``, then a 64-byte frame client → worker → client through
the hub. A second client asks ``workers.list`` (``--calls`` times, one after the other)
while the probes go on, and once more without any slow call as the baseline. Reported: the
probes' round trips (median and max) with and without the slow calls, how many probes
completed while a slow call was running, and how long each ``workers.list`` took.

Before store calls ran in worker threads (``Hub.store_call``), a slow call stopped the whole
event loop: every probe waited for it. Not a module of leapcore.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import trio

from leapcore.crypto.keys import PUBLIC_KEY_FIELDS
from leapcore.hub.server import Hub
from leapcore.net.dial import connect_link
from leapcore.net.pipe import LinkPipe
from leapcore.proto import link_codec as lc
from leapcore.proto.link_state import LinkConnection, LinkRole
from leapcore.store.hubstore import HubStore, PostgresHubStore, Worker, open_hub_store

SIZE = 1 << 20


#: Seconds each ``list_workers`` call lasts more (changed while the hub runs).
SLOW = [0.0]


def slow_store(location: str | Path) -> HubStore:
    """The store at ``location``, its ``list_workers`` made slow by :data:`SLOW`."""
    store = open_hub_store(location)
    inner = store.list_workers

    def list_workers(*args: Any, **kwargs: Any) -> list[Worker]:
        if SLOW[0]:
            if isinstance(store, PostgresHubStore):
                store._one("SELECT pg_sleep(?)", (SLOW[0],))  # a slow query
            else:
                time.sleep(SLOW[0])
        return inner(*args, **kwargs)

    store.list_workers = list_workers  # type: ignore[method-assign]
    return store


class Peer:
    def __init__(self, pipe: LinkPipe, role: LinkRole) -> None:
        self.pipe = pipe
        self.conn = LinkConnection(role)
        self.inbox: deque[lc.LinkMessage] = deque()

    async def send(self, message: lc.LinkMessage) -> None:
        await self.pipe.send(self.conn.send(message))

    async def recv(self, kind: type) -> Any:
        while True:
            while not self.inbox:
                self.inbox.extend(self.conn.receive(await self.pipe.receive()))
            message = self.inbox.popleft()
            if isinstance(message, kind):
                return message


def summary(rtts: list[float]) -> dict[str, float | int]:
    if not rtts:
        return {"probes": 0}
    return {
        "probes": len(rtts),
        "median_ms": round(statistics.median(rtts) * 1e3, 2),
        "max_ms": round(max(rtts) * 1e3, 2),
    }


async def run(slow: float, calls: int, data: Path, location: str | None) -> dict[str, Any]:
    store = slow_store(location or data / "hub.db")
    now = int(time.time() * 1000)
    user, api_token = store.create_user("bench", now)
    _, key = store.mint_registration_key(user.id, now)
    worker, token = store.register_worker(key, name="w", version="1", labels={}, now_ms=now)
    hub = Hub(data / "unused.db", store=store)
    keys = {name: os.urandom(size) for name, (_, size) in PUBLIC_KEY_FIELDS.items()}
    backend = "postgresql" if isinstance(store, PostgresHubStore) else "sqlite"
    out: dict[str, Any] = {"store": backend, "slow_s": slow, "calls": calls}
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(lambda task_status: hub.serve(task_status=task_status))
        url = f"http://{host}:{port}"
        async with (
            connect_link(url) as wpipe,
            connect_link(url) as cpipe,
            connect_link(url) as opipe,
        ):
            w = Peer(wpipe, LinkRole.WORKER)
            c = Peer(cpipe, LinkRole.CLIENT)
            other = Peer(opipe, LinkRole.CLIENT)
            await w.send(lc.Connect(lc.PROTOCOL_VERSION, token))
            await w.send(lc.Heartbeat(1, "classic", **keys))
            await w.recv(lc.HeartbeatAck)
            for client in (c, other):
                await client.send(lc.ClientHello(lc.PROTOCOL_VERSION, api_token))
                await client.recv(lc.ClientGreeting)
            await c.send(lc.OpenChannel(1, worker.id, b"m1", SIZE))
            request = await w.recv(lc.ChannelRequest)
            await w.send(lc.ChannelAccept(request.request_id, request.channel_id, b"m2", SIZE))
            channel = (await c.recv(lc.ChannelOpened)).channel_id
            seq = 1
            phase: list[str] = ["idle"]
            rtts: dict[str, dict[str, list[float]]] = {
                p: {"heartbeat": [], "relay": []} for p in ("idle", "slow")
            }
            stop = trio.Event()

            async def probe() -> None:
                nonlocal seq
                while not stop.is_set():
                    seq += 1
                    start = time.perf_counter()
                    await w.send(lc.Heartbeat(seq))
                    await w.recv(lc.HeartbeatAck)
                    rtts[phase[0]]["heartbeat"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    await c.send(lc.ChannelData(channel, seq, 0, b"x" * 64))
                    frame = await w.recv(lc.ChannelData)
                    await w.send(frame)
                    await c.recv(lc.ChannelData)
                    rtts[phase[0]]["relay"].append(time.perf_counter() - start)
                    await trio.sleep(0.005)

            async def ask(request_id: int) -> float:
                start = time.perf_counter()
                await other.send(lc.HubRequest(request_id, "workers.list", {}))
                response = await other.recv(lc.HubResponse)
                assert response.result is not None and len(response.result["workers"]) == 1
                return time.perf_counter() - start

            nursery.start_soon(probe)
            await trio.sleep(1.0)  # the baseline
            SLOW[0] = 0.0
            baseline = await ask(1)
            phase[0] = "slow"
            SLOW[0] = slow
            took = [await ask(2 + i) for i in range(calls)]
            stop.set()
            out["workers_list_s"] = {
                "baseline": round(baseline, 4),
                "slow": [round(t, 3) for t in took],
            }
            for p in ("idle", "slow"):
                out[p] = {k: summary(v) for k, v in rtts[p].items()}
        await hub.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=float, default=1.0, help="seconds per slow call (1)")
    parser.add_argument("--calls", type=int, default=3, help="slow calls in a row (3)")
    parser.add_argument("--store", help="a postgresql:// URL of an empty database (SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hub-slow-") as tmp:
        result = trio.run(run, args.slow, args.calls, Path(tmp), args.store)
    result["command"] = " ".join([os.path.basename(sys.executable), *sys.argv])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
