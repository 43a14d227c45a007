"""Exec test kit: a real channel pair (real handshake and ciphers, classic mode, the hub
played by an in-memory relay that returns credit) whose worker end serves ``exec``, and
helpers to look at real processes (alive? in which group?)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.peer.channel import Services
from leapcore.worker.exec import ExecService, add_exec_service
from support.channelpair import OWNER, MemoryPair, running

#: Seconds a test on a running pair may take.
DEADLINE = 30.0


class ExecPair(MemoryPair):
    """A client channel and a worker channel joined in memory; the worker end serves
    ``exec`` (``service``)."""

    service: ExecService


def make_exec_pair(
    keypair: WorkerKeyPair,
    *,
    user_id: str = OWNER,
    max_processes: int = 16,
    kill_grace: float = 2.0,
    channel_id: int = 5,
) -> ExecPair:
    pair = ExecPair()
    services = Services()
    pair.service = add_exec_service(services, max_processes=max_processes, kill_grace=kill_grace)
    pair.join(keypair, services, user_id=user_id, channel_id=channel_id)
    return pair


@asynccontextmanager
async def running_exec_pair(keypair: WorkerKeyPair, **options: object) -> AsyncIterator[ExecPair]:
    """The pair, running; a test that takes more than :data:`DEADLINE` seconds fails
    (``trio.TooSlowError``) instead of hanging."""
    pair = make_exec_pair(keypair, **options)  # type: ignore[arg-type]
    with trio.fail_after(DEADLINE):
        async with running(pair):
            yield pair


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` (every 20 ms) until it holds; fail after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def read_pid_file(path: Path, timeout: float = 10.0) -> int:
    """The pid a test process wrote to ``path`` (waits for the whole line)."""
    text = ""

    def ready() -> bool:
        nonlocal text
        text = path.read_text() if path.exists() else ""
        return text.endswith("\n")

    await wait_until(ready, f"{path} to hold a pid", timeout)
    return int(text)
