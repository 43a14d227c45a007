"""The hub's relay rules for channel data (sans-IO; the hub never decrypts).

The hub sees, per frame, a channel id, a correlation id, the flags and the
ciphertext's size. :class:`ChannelRelay` checks each frame against the rules
for its channel and direction before forwarding it:

* flags are 0 (FINAL), 1 (MORE) or 2 (CLOSE); a CLOSE frame has no ciphertext;
* a FINAL or MORE frame has a non-zero correlation id and at most 65535 bytes
  of ciphertext;
* at most one chunked message is in flight per channel and direction: a MORE
  frame with another correlation id while a sequence is open is refused
  (single-frame FINAL messages of other ids may pass between its chunks);
* a sequence's estimated plaintext, sum(ciphertext - 16), stays within the
  negotiated message size + 64 KiB.

A violation raises :class:`~leapcore.errors.RelayViolation` for that channel
alone: the hub closes that channel (both ends) and nothing else.
"""

from __future__ import annotations

import enum
from typing import Final

from .chunking import DEFAULT_MAX_MESSAGE_SIZE, FrameFlag, validate_max_message_size
from .errors import RelayViolation

__all__ = [
    "FLAG_CLOSE",
    "FLAG_FINAL",
    "FLAG_MORE",
    "REASSEMBLY_SLACK",
    "ChannelRelay",
    "RelayDirection",
]

FLAG_FINAL: Final = FrameFlag.FINAL.value
FLAG_MORE: Final = FrameFlag.MORE.value
FLAG_CLOSE: Final = FrameFlag.CLOSE.value
_CIPHERTEXT_LIMIT: Final = 65535
_TAG: Final = 16

#: How far past the negotiated size the hub's plaintext estimate may go.
REASSEMBLY_SLACK: Final = 64 * 1024


class RelayDirection(enum.Enum):
    TO_WORKER = "to-worker"
    TO_CLIENT = "to-client"


class _Direction:
    __slots__ = ("estimate", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0  # correlation id of the open chunked sequence; 0 = none
        self.estimate = 0


class ChannelRelay:
    """The relay state of one channel: one :class:`_Direction` each way."""

    __slots__ = ("_directions", "ceiling", "channel_id")

    def __init__(self, channel_id: int, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.channel_id = channel_id
        self.ceiling = validate_max_message_size(max_message_size) + REASSEMBLY_SLACK
        self._directions = {d: _Direction() for d in RelayDirection}

    def in_flight(self, direction: RelayDirection) -> int:
        """The correlation id of the chunked message in flight that way (0: none)."""
        return self._directions[direction].in_flight

    def check(
        self, direction: RelayDirection, correlation_id: int, flags: int, ciphertext_size: int
    ) -> bool:
        """Check one frame; True when it is a CLOSE (the channel ends after forwarding it)."""
        if flags == FLAG_CLOSE:
            if ciphertext_size:
                raise RelayViolation(
                    f"channel {self.channel_id}: a CLOSE frame carries no data, "
                    f"got {ciphertext_size} bytes"
                )
            return True
        if flags not in (FLAG_FINAL, FLAG_MORE):
            raise RelayViolation(f"channel {self.channel_id}: unknown flags value {flags}")
        if correlation_id == 0:
            raise RelayViolation(f"channel {self.channel_id}: correlation id 0 is reserved")
        if ciphertext_size > _CIPHERTEXT_LIMIT:
            raise RelayViolation(
                f"channel {self.channel_id}: ciphertext of {ciphertext_size} bytes exceeds "
                f"{_CIPHERTEXT_LIMIT}"
            )
        state = self._directions[direction]
        if state.in_flight == 0 or correlation_id != state.in_flight:
            if flags == FLAG_FINAL:
                return False  # a single-frame message, possibly between another's chunks
            if state.in_flight:
                raise RelayViolation(
                    f"channel {self.channel_id}: chunk interleaving: correlation id "
                    f"{correlation_id} started while {state.in_flight} is in flight"
                )
            state.in_flight, state.estimate = correlation_id, 0
        state.estimate += max(0, ciphertext_size - _TAG)
        if state.estimate > self.ceiling:
            raise RelayViolation(
                f"channel {self.channel_id}: chunked message {correlation_id} exceeds "
                f"{self.ceiling} bytes"
            )
        if flags == FLAG_FINAL:
            state.in_flight, state.estimate = 0, 0
        return False
