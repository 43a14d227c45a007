"""Per-capability concurrency limits (the worker's ``concurrency`` setting): a call past
its capability's limit is refused ``busy`` at once (``WorkerBusy``), never queued; other
capabilities are unaffected; a slot frees when its call ends. Through a real
:class:`~leapcore.worker.daemon.Worker`'s services on a real channel pair, and through the
settings layers (TOML table, environment, flag)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from support.channelpair import MemoryPair, running
from support.procs import TIMEOUT, script

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import ConfigError, WorkerBusy
from leapcore.peer.channel import Channel, Services
from leapcore.store.config import worker_settings
from leapcore.worker.daemon import Worker


def test_services_count_calls_per_capability() -> None:
    services = Services()
    services.limits = {"exec": 2}
    assert services.enter("exec") is None
    assert services.enter("exec.wait") is None  # the same capability
    services.uncounted.add("exec.signal")
    assert services.enter("exec.signal") is None  # never counted
    services.leave("exec.signal")
    refused = services.enter("exec")
    assert refused == (
        "busy",
        "exec: 2 in progress, the worker's limit (concurrency exec = 2); retry later",
    )
    assert services.enter("pty.spawn") is None  # not limited
    assert services.active == {"exec": 2, "pty": 1}
    services.leave("exec.wait")
    assert services.enter("exec") is None
    for method in ("exec", "exec", "pty.spawn"):
        services.leave(method)
    assert services.active == {}


@asynccontextmanager
async def limited_worker(
    tmp_path: Path, keypair: WorkerKeyPair, limits: dict[str, int]
) -> AsyncIterator[tuple[Worker, Channel]]:
    """A worker with ``limits`` and a channel to it, open for the block (30 s at most)."""
    worker = Worker(tmp_path, name="w", concurrency=limits)
    pair = MemoryPair()
    pair.join(keypair, worker.services)
    with trio.fail_after(30):
        async with running(pair):
            yield worker, pair.client


async def test_a_call_over_the_limit_is_refused_busy(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    async with limited_worker(tmp_path, generated_keypair, {"exec": 1}) as (worker, channel):
        async with channel.create_process(["cat"]) as first:
            with pytest.raises(WorkerBusy) as caught:
                await channel.run_command(["true"])
            assert str(caught.value) == (
                "busy: exec: 1 in progress, the worker's limit (concurrency exec = 1); retry later"
            )
            assert await channel.call("info")  # another capability: served
            await first.stdin.send_eof()
            assert (await first.wait()).exit_status == 0
        # The first call has ended: its slot is free again.
        with trio.fail_after(10):
            while "exec" in worker.services.active:
                await trio.sleep(0.01)
        assert (await channel.run_command(["true"])).ok


def test_concurrency_settings_layers(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text("[concurrency]\nexec = 8\npty = 4\n")
    settings, _ = worker_settings(flags={}, env={}, home=tmp_path, config_path=config)
    assert settings["concurrency"] == {"exec": 8, "pty": 4}
    env = {"LEAPCORE_WORKER_CONCURRENCY": "exec=2, files=16"}
    settings, _ = worker_settings(flags={}, env=env, home=tmp_path, config_path=config)
    assert settings["concurrency"] == {"exec": 2, "files": 16}  # replaced whole, like lists
    for bad, problem in (
        ("[concurrency]\nexec = 0\n", "exec must be an integer 1..100000, got 0"),
        ('[concurrency]\nexec = "8"\n', "must map names to integers, got exec = str"),
        ("[concurrency]\nping = 1\n", "'ping' is not limited"),
        ('[concurrency]\n"a b" = 1\n', "is not 1..64 characters"),
    ):
        config.write_text(bad)
        with pytest.raises(ConfigError, match=re.escape(problem)):
            worker_settings(flags={}, env={}, home=tmp_path, config_path=config)
    with pytest.raises(ConfigError, match=re.escape("'exec' is not NAME=INTEGER")):
        worker_settings(
            flags={}, env={"LEAPCORE_WORKER_CONCURRENCY": "exec"}, home=tmp_path, config_path=None
        )


def test_a_bad_concurrency_flag_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [script("leapcore-worker"), "run", "--data-dir", str(tmp_path), "--concurrency", "exec=x"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert "--concurrency: 'exec=x' is not NAME=INTEGER" in done.stderr


async def test_the_pty_limit_counts_live_sessions(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    async with limited_worker(tmp_path, generated_keypair, {"pty": 1}) as (_, channel):
        first = await channel.spawn_terminal(["sleep", "60"])
        with pytest.raises(WorkerBusy, match=re.escape("pty: 1 in progress")):
            await channel.spawn_terminal(["true"])
        assert len(await channel.terminals()) == 1  # nothing was started
        await channel.kill_terminal(first.id)  # ends it, and forgets it
        second = await channel.spawn_terminal(["true"])
        await channel.wait_terminal(second.id)


async def test_n_plus_one_concurrent_calls_give_exactly_one_busy(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    limit = 3
    outcomes: list[str] = []
    async with limited_worker(tmp_path, generated_keypair, {"exec": limit}) as (worker, channel):
        started = trio.Semaphore(0)
        release = trio.Event()

        async def one() -> None:
            try:
                async with channel.create_process(["cat"]) as proc:
                    outcomes.append("started")
                    started.release()
                    await release.wait()
                    await proc.stdin.send_eof()
                    await proc.wait()
            except WorkerBusy:
                outcomes.append("busy")
                started.release()

        async with trio.open_nursery() as nursery:
            for _ in range(limit + 1):
                nursery.start_soon(one)
            for _ in range(limit + 1):
                await started.acquire()
            assert worker.services.active == {"exec": limit}
            release.set()
    assert sorted(outcomes) == ["busy"] + ["started"] * limit
