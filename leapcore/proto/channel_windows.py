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

**Window growth** (receiver side only; the wire is unchanged: a WINDOW_UPDATE may grant
more than was consumed). A stream starts with its granted window (256 KiB by default);
each time a WINDOW_UPDATE goes out while the application keeps up -- what arrived and is
not yet consumed is at most an eighth of the window -- the window doubles, up to
:data:`MAX_STREAM_WINDOW` per stream, the extra taken from the channel's
:class:`WindowBudget` (:data:`CHANNEL_WINDOW_BUDGET` by default) and given back when the
stream ends. A stream whose reader falls behind never grows (its buffer, not the path, is
the limit), so a window is only as large as the path has shown it can fill at the
receiver's pace, and every end holds at most its initial windows plus the budget.

**Early data** (a stream opened with BYTES_OPEN_EARLY): before the answer, the opener may
send up to :data:`EARLY_WINDOW` bytes -- the acceptor's window is :data:`EARLY_WINDOW` until
it accepts. BYTES_ACCEPT's window then counts from the stream's first byte, early data
included, and is at least :data:`EARLY_WINDOW` (an acceptor never grants less on such a
stream; a smaller one is a :class:`~leapcore.errors.FlowControlError`), so the data in
flight when the acceptor answered always fits.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..errors import FlowControlError, StreamUsageError
from .channel_codec import MAX_WINDOW
from .channel_events import WindowInfo
from .limits import CHANNEL_WINDOW_BUDGET, MAX_STREAM_WINDOW

__all__ = [
    "CHANNEL_WINDOW_BUDGET",
    "DEFAULT_WINDOW",
    "EARLY_WINDOW",
    "MAX_STREAM_WINDOW",
    "ByteWindow",
    "WindowBudget",
]

#: Default receive window of a byte stream (bytes the peer may send unasked).
DEFAULT_WINDOW: Final = 256 * 1024
#: The acceptor's window on a stream opened with BYTES_OPEN_EARLY, until it accepts.
EARLY_WINDOW: Final = 64 * 1024


@attrs.define
class WindowBudget:
    """The window growth one channel end may still lend its byte streams (bytes)."""

    available: int = CHANNEL_WINDOW_BUDGET

    def take(self, wanted: int) -> int:
        """Lend up to ``wanted`` bytes; returns how many."""
        taken = min(wanted, self.available)
        self.available -= taken
        return taken

    def give(self, n: int) -> None:
        self.available += n


@attrs.define
class ByteWindow:
    """Flow-control counters of one byte stream, as this end sees them."""

    send_credit: int = 0  # bytes this end may still send
    receive_window: int = 0  # the window this end granted
    receive_credit: int = 0  # bytes the peer may still send
    unconsumed: int = 0  # received, not yet consumed by the application
    pending_update: int = 0  # consumed, not yet granted back with WINDOW_UPDATE
    budget: WindowBudget | None = None  # where growth comes from (None: never grows)
    max_window: int = MAX_STREAM_WINDOW  # the receive window grows up to this
    grown: int = 0  # growth taken from the budget, given back by retire()

    def grant(self, window: int) -> None:
        """This end grants the peer ``window`` bytes (its BYTES_OPEN or BYTES_ACCEPT)."""
        self.receive_window = self.receive_credit = window

    def on_grant(self, window: int) -> None:
        """The peer granted this end ``window`` bytes (the peer's BYTES_OPEN or BYTES_ACCEPT)."""
        self.send_credit = window

    def accept_early(self, window: int) -> int:
        """This end accepts an early stream granting ``window`` (raised to
        :data:`EARLY_WINDOW`, which it granted until now); returns the window granted."""
        window = max(window, EARLY_WINDOW)
        self.receive_credit += window - self.receive_window
        self.receive_window = window
        return window

    def on_accept_early(self, cid: int, window: int) -> None:
        """The peer accepted this end's early stream with ``window``, which counts the
        early data already sent; refused if it is less than :data:`EARLY_WINDOW`."""
        if window < EARLY_WINDOW:
            raise FlowControlError(
                f"byte stream {cid}: BYTES_ACCEPT grants {window} bytes on a stream opened "
                f"with early data; at least {EARLY_WINDOW} are required"
            )
        self.send_credit += window - EARLY_WINDOW

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
        """Grant back everything consumed, plus any growth of the window (module
        docstring): returns the WINDOW_UPDATE increment to send."""
        increment = self.pending_update + self._grow()
        self.pending_update = 0
        self.receive_credit += increment
        return increment

    def _grow(self) -> int:
        window = self.receive_window
        if (
            self.budget is None
            or window >= self.max_window
            or self.unconsumed > window // 8
            or window + self.receive_credit + self.unconsumed > MAX_WINDOW
        ):
            return 0
        extra = self.budget.take(min(window, self.max_window - window))
        self.grown += extra
        self.receive_window = window + extra
        return extra

    def retire(self) -> None:
        """The stream ended: give its growth back to the channel's budget."""
        if self.budget is not None and self.grown:
            self.budget.give(self.grown)
            self.grown = 0

    def info(self) -> WindowInfo:
        return WindowInfo(
            self.send_credit,
            self.receive_window,
            self.receive_credit,
            self.unconsumed,
            self.pending_update,
        )
