"""The one writer of a peer's link to the hub (trio), shared by the client and the worker.

Everything a peer sends after its first frames goes through one :class:`LinkWriter`: the
message is encoded by the link's :class:`~leapcore.proto.link_state.LinkConnection` when
it is queued (so the wire order is the queue order), and one task (:meth:`LinkWriter.run`)
writes the queue out, joining what is queued into one transport write of up to
:data:`~leapcore.net.pipe.WRITE_BATCH` bytes.

**Back-pressure.** The queue holds :data:`QUEUE_SIZE` items (a message, or the messages of
one :meth:`~LinkWriter.send_many`); :meth:`~LinkWriter.send` waits while it is full,
:meth:`~LinkWriter.send_nowait` returns False instead. When there is room, queueing does
not pass through the scheduler (on a path taken per message that is a real cost).
:meth:`~LinkWriter.push` never waits and is never refused for lack of room: it is for the
few records a sans-IO core must get out even from a cancelled task (requests, closes of
orphaned opens), which that core bounds (:mod:`leapcore.proto.link_session`).

**Close.** :meth:`~LinkWriter.close` accepts nothing more; the task writes what is queued
and returns (:meth:`~LinkWriter.drain` closes and waits for that, a bounded time). Once
closed, or once a write failed, every way in raises :class:`~leapcore.errors.LinkClosed`
and what was still queued is dropped; a failed write also ends :meth:`~LinkWriter.run` with
that :class:`~leapcore.errors.LinkClosed`. ``on_queued`` is called each time something is
queued (the drivers count it as traffic for their heartbeat schedules).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Final

import trio

from ..errors import LinkClosed
from ..net.pipe import WRITE_BATCH, LinkPipe, send_joined
from ..proto.link_codec import LinkMessage
from ..proto.link_state import LinkConnection

__all__ = ["QUEUE_SIZE", "LinkWriter"]

#: Items the queue holds before :meth:`LinkWriter.send` waits.
QUEUE_SIZE: Final = 256


class LinkWriter:
    """The queue and the writing task of one link (see the module docstring)."""

    def __init__(
        self,
        pipe: LinkPipe,
        conn: LinkConnection,
        *,
        queue_size: int = QUEUE_SIZE,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self._pipe = pipe
        self._conn = conn
        self.queue_size = queue_size
        self._on_queued = on_queued
        #: Encoded messages; the messages of one :meth:`send_many` as one list (joined only
        #: when framed for the transport: one copy less than joining them here).
        self._queue: collections.deque[bytes | list[bytes]] = collections.deque()
        self._room = trio.lowlevel.ParkingLot()
        self._work = trio.lowlevel.ParkingLot()
        self._closing = False
        self._error: LinkClosed | None = None
        #: Set once :meth:`run` has ended (everything queued was written, or dropped).
        self.done = trio.Event()
        #: Bytes :meth:`run` has written so far.
        self.written = 0

    @property
    def closed(self) -> bool:
        """True once nothing more is accepted."""
        return self._closing or self._error is not None

    @property
    def queued(self) -> int:
        """Items waiting to be written."""
        return len(self._queue)

    def _check(self) -> None:
        if self._error is not None:
            raise LinkClosed(self._error.message)
        if self._closing:
            raise LinkClosed("the link is closing")

    def _append(self, data: bytes | list[bytes]) -> None:
        self._queue.append(data)
        self._work.unpark_all()
        if self._on_queued is not None:
            self._on_queued()

    async def send(self, message: LinkMessage) -> None:
        """Queue ``message``, waiting while the queue is full."""
        await self._put(self._conn.send(message))

    async def send_many(self, messages: Sequence[LinkMessage]) -> None:
        """Queue ``messages`` as one item (one transport write, in order)."""
        if not messages:
            return
        conn = self._conn
        await self._put([conn.send(message) for message in messages])

    def send_nowait(self, message: LinkMessage) -> bool:
        """Queue ``message`` if there is room now; False (nothing queued) if there is not."""
        self._check()
        if len(self._queue) >= self.queue_size:
            return False
        self._append(self._conn.send(message))
        return True

    def push(self, message: LinkMessage) -> None:
        """Queue ``message`` now, room or not (for records a core bounds itself)."""
        self._check()
        self._append(self._conn.send(message))

    async def _put(self, data: bytes | list[bytes]) -> None:
        self._check()
        while len(self._queue) >= self.queue_size:
            await self._room.park()
            self._check()
        self._append(data)

    def close(self) -> None:
        """Accept nothing more; :meth:`run` returns once the queue is written."""
        self._closing = True
        self._work.unpark_all()
        self._room.unpark_all()

    async def drain(self, timeout: float) -> None:
        """:meth:`close`, then wait at most ``timeout`` seconds for the queue to be written."""
        self.close()
        with trio.move_on_after(timeout):
            await self.done.wait()

    async def run(self) -> None:
        """Write the queue until closed and drained; raises :class:`LinkClosed` if a write
        fails."""
        queue = self._queue
        try:
            while True:
                if not queue:
                    if self._closing:
                        return
                    await self._work.park()
                    continue
                batch: list[bytes] = []
                size = 0
                while queue and size < WRITE_BATCH:
                    item = queue.popleft()
                    if isinstance(item, list):
                        batch += item
                        size += sum(map(len, item))
                    else:
                        batch.append(item)
                        size += len(item)
                self._room.unpark_all()
                await send_joined(self._pipe, batch)
                self.written += size
        except LinkClosed as exc:
            self._error = exc
            raise
        finally:
            if self._error is None:
                self._error = LinkClosed("the link is closed")
            queue.clear()
            self._room.unpark_all()
            self.done.set()
