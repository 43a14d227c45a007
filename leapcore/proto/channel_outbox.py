"""The outbound queue of a channel endpoint: encoded messages waiting to become frames.

Sans-IO and bounded, in plaintext bytes, by two budgets:

* messages the application sends may hold at most ``max_app_bytes`` (the
  endpoint's ``max_outbound_bytes``); the endpoint checks :meth:`Outbox.check_room`
  before it changes any state, so a sender that does not drain frames is told at
  once (:class:`~leapcore.errors.OutboundQueueFull`);
* messages the endpoint queues on its own (ping answers, window updates, error
  replies, rekey messages) may hold at most :data:`CONTROL_RESERVE`. They cannot
  be refused, so :meth:`Outbox.push` reports the overflow and the endpoint closes
  the channel: ``frames_to_send`` is not being drained.

The rule of order: single-frame messages go first, so window updates, pings and
small answers are never stuck behind a long chunked message; chunked messages
go one at a time, in order; messages on one correlation id keep their order (a
short one queued behind a chunked one on its id waits its turn). Frames are
encrypted as they are taken, by the ``encrypt`` function given, in the order
taken.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Final

import attrs

from ..errors import OutboundQueueFull
from .chunking import MAX_CHUNK, ChannelFrame, FrameFlag

__all__ = ["CONTROL_RESERVE", "Outbox"]

#: Plaintext bytes of frames the endpoint queues on its own (ping answers, window updates,
#: error replies, rekey messages) that may wait in the outbound queue; past it the channel
#: closes, because frames_to_send is not being drained.
CONTROL_RESERVE: Final = 256 * 1024


@attrs.define
class _Queued:
    cid: int
    data: bytes
    auto: bool  # queued by the endpoint itself (counts against CONTROL_RESERVE)
    after: Callable[[], None] | None = None  # called once the last frame is encrypted
    offset: int = 0  # bytes of data already taken as frames


class Outbox:
    """The queue (see the module docstring)."""

    def __init__(self, max_app_bytes: int) -> None:
        self.max_app_bytes = max_app_bytes
        self.app_bytes = 0  # queued by the application, not yet taken
        self.control_bytes = 0  # queued by the endpoint itself, not yet taken
        self._priority: collections.deque[_Queued] = collections.deque()
        self._bulk: collections.deque[_Queued] = collections.deque()
        self._bulk_cids: collections.Counter[int] = collections.Counter()

    def __bool__(self) -> bool:
        return bool(self._priority or self._bulk)

    @property
    def queued(self) -> int:
        """Plaintext bytes waiting, from both budgets."""
        return self.app_bytes + self.control_bytes

    def check_room(self, size: int) -> None:
        """Raise unless an application message of ``size`` bytes fits the budget."""
        if self.app_bytes + size > self.max_app_bytes:
            raise OutboundQueueFull(
                f"{self.app_bytes} bytes are already queued (budget {self.max_app_bytes}); "
                "send the queued frames first"
            )

    def push(
        self, cid: int, data: bytes, *, auto: bool, after: Callable[[], None] | None = None
    ) -> bool:
        """Queue one encoded message. An application message (``auto`` false) is always
        queued: :meth:`check_room` came first. An endpoint's own message that would pass
        :data:`CONTROL_RESERVE` is not, and False says so."""
        if auto:
            if self.control_bytes + len(data) > CONTROL_RESERVE:
                return False
            self.control_bytes += len(data)
        else:
            self.app_bytes += len(data)
        entry = _Queued(cid, data, auto, after)
        if len(data) <= MAX_CHUNK and not self._bulk_cids[cid]:
            self._priority.append(entry)
        else:
            self._bulk.append(entry)
            self._bulk_cids[cid] += 1
        return True

    def drain(
        self,
        out: list[ChannelFrame],
        limit: int | None,
        encrypt: Callable[[bytes | memoryview], bytes],
    ) -> None:
        """Encrypt queued messages into frames appended to ``out`` until it holds ``limit``
        frames or the queue is empty. An error from ``encrypt`` propagates; the frames
        already appended stay."""
        priority, bulk = self._priority, self._bulk
        while limit is None or len(out) < limit:
            if priority:
                entry = priority[0]
            elif bulk:
                entry = bulk[0]
            else:
                return
            if entry.offset == 0 and len(entry.data) <= MAX_CHUNK:
                piece: bytes | memoryview = entry.data
            else:  # a chunk of a long message: no copy, the cipher reads the view
                piece = memoryview(entry.data)[entry.offset : entry.offset + MAX_CHUNK]
            entry.offset += len(piece)
            final = entry.offset >= len(entry.data)
            ciphertext = encrypt(piece)
            out.append(
                ChannelFrame(entry.cid, FrameFlag.FINAL if final else FrameFlag.MORE, ciphertext)
            )
            if entry.auto:
                self.control_bytes -= len(piece)
            else:
                self.app_bytes -= len(piece)
            if final:
                if priority and priority[0] is entry:
                    priority.popleft()
                else:
                    bulk.popleft()
                    self._bulk_cids[entry.cid] -= 1
                    if not self._bulk_cids[entry.cid]:
                        del self._bulk_cids[entry.cid]
                if entry.after is not None:
                    entry.after()

    def clear(self) -> None:
        """Drop everything queued."""
        self._priority.clear()
        self._bulk.clear()
        self._bulk_cids.clear()
        self.app_bytes = self.control_bytes = 0
