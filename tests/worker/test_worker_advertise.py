"""What a worker advertises in each ``connect``: the capabilities of its method table as it
is at that connect, and its ``os`` and ``arch`` (a real daemon against a scripted hub)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import trio
import trio.testing
from support.fakehub import HubLink, hub_running, make_worker

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.peer.channel import CallContext
from leapcore.proto.link_codec import Connect, Deregister
from leapcore.store.workerstate import WorkerState, save_state
from leapcore.worker.advertise import capabilities, host_platform
from leapcore.worker.daemon import Worker, WorkerExit

TOKEN = "auth-token-abcdef"
BUILTIN = ["exec", "files", "info", "pty", "tcp", "workspace"]


@pytest.fixture
def registered_dir(tmp_path: Path, generated_keypair: WorkerKeyPair) -> Path:
    save_state(tmp_path, WorkerState("w-1", TOKEN, generated_keypair))
    return tmp_path


async def _answer(ctx: CallContext, payload: bytes) -> bytes:
    return payload


def test_the_default_worker_serves_the_builtin_capabilities(tmp_path: Path) -> None:
    worker = Worker(tmp_path, hub_url="http://x.invalid", name="box")
    assert capabilities(worker.services) == BUILTIN
    worker.services.add_rpc("gpu.run", _answer)
    worker.services.add_rpc("gpu.stats", _answer)
    worker.services.add_rpc("echo", _answer)
    assert capabilities(worker.services) == sorted([*BUILTIN, "echo", "gpu"])


def test_host_platform_is_pythons() -> None:
    assert host_platform() == (platform.system().lower(), platform.machine() or None)


async def test_each_connect_carries_the_capabilities_of_that_moment(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    connects: list[Connect] = []

    async def script(link: HubLink, n: int) -> None:
        connect, _ = await link.handshake()
        connects.append(connect)
        if n == 0:
            worker.services.add_rpc("gpu.run", _answer)  # served from the next connect on
            return  # the link drops: the worker reconnects
        await link.send(Deregister(5, "bye"))
        await link.drain()

    async with hub_running(script) as hub:
        worker = make_worker(registered_dir, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    first, second = connects
    assert first.capabilities == BUILTIN
    assert second.capabilities == sorted([*BUILTIN, "gpu"])
    os_name, arch = host_platform()
    assert (first.os, first.arch) == (second.os, second.arch) == (os_name, arch)
    assert (first.name, first.labels) == ("box", {"site": "lab"})
