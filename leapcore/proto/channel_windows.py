"""Credit windows of a byte stream: how many bytes each end may still send.

Sans-IO bookkeeping, one :class:`ByteWindow` per byte stream. Each end grants
the other a window (in BYTES_OPEN or BYTES_ACCEPT) and may send no more data
than the other end granted it; the receiver reopens the window with
WINDOW_UPDATE as its application consumes what arrived, once at least half the
window is waiting to be granted back. The rule this module holds: data beyond
the credit granted, or an update that would widen the window past
:data:`~leapcore.proto.channel_codec.MAX_WINDOW`, is a
:class:`~leapcore.errors.FlowControlError` on that stream; consuming more than
was received is a :class:`~leapcore.errors.StreamUsageError`. Which states of
the stream still allow data and updates is the transition table's business
(:mod:`leapcore.proto.channel_streams`), not this one's.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..errors import FlowControlError, StreamUsageError
from .channel_codec import MAX_WINDOW
from .channel_events import WindowInfo

__all__ = ["DEFAULT_WINDOW", "ByteWindow"]

#: Default receive window of a byte stream (bytes the peer may send unasked).
DEFAULT_WINDOW: Final = 256 * 1024


@attrs.define
class ByteWindow:
    """Flow-control counters of one byte stream, as this end sees them."""

    send_credit: int = 0  # bytes this end may still send
    receive_window: int = 0  # the window this end granted
    receive_credit: int = 0  # bytes the peer may still send
    unconsumed: int = 0  # received, not yet consumed by the application
    pending_update: int = 0  # consumed, not yet granted back with WINDOW_UPDATE

    def grant(self, window: int) -> None:
        """This end grants the peer ``window`` bytes (its BYTES_OPEN or BYTES_ACCEPT)."""
        self.receive_window = self.receive_credit = window

    def on_grant(self, window: int) -> None:
        """The peer granted this end ``window`` bytes (the peer's BYTES_OPEN or BYTES_ACCEPT)."""
        self.send_credit = window

    def on_data(self, cid: int, size: int) -> None:
        """``size`` bytes of data arrived; refused if they overrun the credit granted."""
        if size > self.receive_credit:
            raise FlowControlError(
                f"byte stream {cid}: {size} bytes of data with only "
                f"{self.receive_credit} bytes of window left"
            )
        self.receive_credit -= size
        self.unconsumed += size

    def on_update(self, cid: int, increment: int) -> None:
        """The peer's WINDOW_UPDATE; refused if it would widen the window past MAX_WINDOW."""
        if self.send_credit + increment > MAX_WINDOW:
            raise FlowControlError(
                f"byte stream {cid}: window update of {increment} overflows the "
                f"window ({self.send_credit} + {increment} > {MAX_WINDOW})"
            )
        self.send_credit += increment

    def sendable(self, size: int) -> int:
        """How much of ``size`` bytes the peer's window lets this end send now."""
        return min(size, self.send_credit)

    def spend(self, size: int) -> None:
        """This end sent ``size`` bytes of data (at most :meth:`sendable`)."""
        self.send_credit -= size

    def consume(self, cid: int, n: int) -> bool:
        """The application used up ``n`` received bytes; True once at least half the window
        waits to be granted back (then :meth:`release` it, if the stream still allows an
        update)."""
        if n > self.unconsumed:
            raise StreamUsageError(
                f"byte stream {cid}: consume({n}) but only {self.unconsumed} "
                "bytes were received and not yet consumed"
            )
        self.unconsumed -= n
        self.pending_update += n
        return self.pending_update >= max(1, self.receive_window // 2)

    def release(self) -> int:
        """Grant back everything consumed: returns the WINDOW_UPDATE increment to send."""
        increment = self.pending_update
        self.pending_update = 0
        self.receive_credit += increment
        return increment

    def info(self) -> WindowInfo:
        return WindowInfo(
            self.send_credit,
            self.receive_window,
            self.receive_credit,
            self.unconsumed,
            self.pending_update,
        )
