"""Terminal test kit: real channel pairs (real handshake and ciphers, classic mode, the hub
played by an in-memory relay) whose worker ends share one ``pty`` service, so a session
spawned through one channel can be seen through the next; helpers that poll a session's
screen until it shows what a test waits for."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import trio

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.peer.channel import Channel, Services
from leapcore.proto.pty_spec import Capture
from leapcore.worker.pty import PtyService, add_pty_service
from support.channelpair import OWNER, MemoryPair, running

W = TypeVar("W", bound="PtyWorker")

#: Seconds a test on a running pair may take.
DEADLINE = 60.0


class PtyWorker:
    """One worker's ``pty`` service (``service``) and its method table (``services``);
    a subclass may add more services to the table."""

    def __init__(self, **options: object) -> None:
        self.services = Services()
        self.service: PtyService = add_pty_service(self.services, **options)  # type: ignore[arg-type]
        self._next_channel = 7

    @asynccontextmanager
    async def channel(
        self, keypair: WorkerKeyPair, *, user_id: str = OWNER
    ) -> AsyncIterator[Channel]:
        """A client channel to this worker, open until the block ends."""
        pair = MemoryPair()
        self._next_channel += 1
        pair.join(keypair, self.services, user_id=user_id, channel_id=self._next_channel)
        async with running(pair):
            yield pair.client
            await pair.client.aclose()


@asynccontextmanager
async def serving(worker: W) -> AsyncIterator[W]:
    """``worker``'s sessions run in this block (all killed at its end); a test that takes
    more than :data:`DEADLINE` seconds fails instead of hanging."""
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.service.run)
            try:
                yield worker
            finally:
                with trio.CancelScope(shield=True):
                    await worker.service.aclose()
                nursery.cancel_scope.cancel()


def pty_worker(**options: object) -> AbstractAsyncContextManager[PtyWorker]:
    """A worker whose sessions run in this block (see :func:`serving`)."""
    return serving(PtyWorker(**options))


async def screen_until(
    channel: Channel,
    session_id: str,
    condition: Callable[[Capture], bool],
    what: str,
    *,
    timeout: float = 15.0,
    scrollback: int = 0,
) -> Capture:
    """Capture the session every 50 ms until ``condition`` holds; fail after ``timeout``."""
    shot: Capture | None = None
    with trio.move_on_after(timeout):
        while True:
            shot = await channel.capture(session_id, scrollback=scrollback)
            if condition(shot):
                return shot
            await trio.sleep(0.05)
    text = "(nothing)" if shot is None else shot.text
    raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")


async def read_until(
    stream: trio.abc.ReceiveStream, needle: bytes, *, timeout: float = 15.0
) -> bytes:
    """Read ``stream`` until ``needle`` appeared in what was read; returns all of it."""
    seen = bytearray()
    with trio.move_on_after(timeout):
        while needle not in seen:
            data = await stream.receive_some()
            if not data:
                break
            seen += data
        if needle in seen:
            return bytes(seen)
    raise AssertionError(f"{needle!r} never came; read {bytes(seen[-500:])!r}")
