"""A real hub on loopback with raw worker and client links: what a ``connect`` advertises
(capabilities, ``os``, ``arch``) is recorded at each connect and listed by ``workers.list``,
whose optional filter parameters keep only the matching workers and are decoded strictly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from support.hubpeer import KEYS, Env, Peer, running_hub

from leapcore.proto.link_codec import Connect, Heartbeat, HeartbeatAck, WorkerGreeting
from leapcore.proto.link_state import LinkRole


@asynccontextmanager
async def advertised(env: Env, connect: Connect) -> AsyncIterator[Peer]:
    """A worker link opened with ``connect``, greeted, its keyed heartbeat acknowledged."""
    async with env.link(LinkRole.WORKER) as peer:
        await peer.send(connect)
        await peer.send(Heartbeat(1, "classic", **KEYS))
        assert isinstance(await peer.recv(), WorkerGreeting)
        assert await peer.recv() == HeartbeatAck(1)
        yield peer


async def listed(client: Peer, request_id: int = 1, **params: Any) -> dict[str, dict[str, Any]]:
    response = await client.request("workers.list", request_id, **params)
    assert response.result is not None, response
    return {w["name"]: w for w in response.result["workers"]}


async def test_connect_records_capabilities_os_and_arch(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        _, token = await env.register(name="box")
        _, old_token = await env.register(name="old")
        full = Connect(1, token, "box", {"env": "prod"}, ["exec", "pty"], os="linux", arch="x86_64")
        async with env.client() as client:
            before = await listed(client)
            assert before["box"]["capabilities"] == [] and before["box"]["os"] is None
            async with advertised(env, full), advertised(env, Connect(1, old_token)):
                now = await listed(client, 2)
                box = now["box"]
                assert (box["capabilities"], box["os"], box["arch"]) == (
                    ["exec", "pty"],
                    "linux",
                    "x86_64",
                )
                assert box["labels"] == {"env": "prod"} and box["online"] is True
                old = now["old"]  # a worker from before capabilities
                assert (old["capabilities"], old["os"], old["arch"]) == ([], None, None)
            # Kept while offline; a later connect without them (an older release) keeps them.
            assert (await listed(client, 3))["box"]["capabilities"] == ["exec", "pty"]
            async with advertised(env, Connect(1, token)):
                assert (await listed(client, 4))["box"]["os"] == "linux"
            # A connect that serves less replaces them.
            async with advertised(env, Connect(1, token, capabilities=["exec"], arch="arm64")):
                box = (await listed(client, 5))["box"]
                assert (box["capabilities"], box["os"], box["arch"]) == (["exec"], "linux", "arm64")


async def test_workers_list_filters(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        _, prod = await env.register(name="prod")
        _, dev = await env.register(name="dev")
        _, idle = await env.register(name="idle")
        async with env.client() as client:
            async with advertised(
                env, Connect(1, idle, labels={"env": "prod"}, capabilities=["pty"])
            ):
                pass  # recorded, then offline
            async with (
                advertised(
                    env, Connect(1, prod, labels={"env": "prod"}, capabilities=["exec", "pty"])
                ),
                advertised(
                    env, Connect(1, dev, labels={"env": "dev", "gpu": "1"}, capabilities=["exec"])
                ) as dev_link,
            ):
                assert set(await listed(client)) == {"prod", "dev", "idle"}
                assert set(await listed(client, 2, labels={"env": "prod"})) == {"prod", "idle"}
                assert set(await listed(client, 3, capabilities=["pty"])) == {"prod", "idle"}
                assert set(await listed(client, 4, capabilities=["exec", "pty"])) == {"prod"}
                assert set(await listed(client, 5, online=True)) == {"prod", "dev"}
                assert set(await listed(client, 6, online=False)) == {"idle"}
                both = await listed(
                    client, 7, labels={"env": "prod"}, capabilities=["pty"], online=True
                )
                assert set(both) == {"prod"}
                assert await listed(client, 8, labels={"env": "prod", "gpu": "1"}) == {}
                assert set(await listed(client, 9, labels={}, capabilities=[])) == {
                    "prod",
                    "dev",
                    "idle",
                }
                # A worker may filter its siblings too (as its owner).
                sibling = await listed(dev_link, 10, capabilities=["exec"], online=True)
                assert set(sibling) == {"prod", "dev"}

            bad: list[dict[str, Any]] = [
                {"label": {"env": "prod"}},
                {"labels": ["env=prod"]},
                {"labels": {"env": 1}},
                {"capabilities": "pty"},
                {"capabilities": ["a b"]},
                {"online": "yes"},
            ]
            for i, params in enumerate(bad, start=20):
                response = await client.request("workers.list", i, **params)
                assert response.error_code == "invalid_argument", params
                assert response.error_message and "workers.list" in response.error_message
            assert set(await listed(client, 30)) == {"prod", "dev", "idle"}  # the link lives on
