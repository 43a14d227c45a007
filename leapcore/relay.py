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

from .errors import LocalError, RelayViolation

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FLAG_CLOSE",
    "FLAG_FINAL",
    "FLAG_MORE",
    "MAX_MESSAGE_SIZE",
    "MIN_MESSAGE_SIZE",
    "REASSEMBLY_SLACK",
    "ChannelRelay",
    "RelayDirection",
    "check_max_message_size",
]

FLAG_FINAL: Final = 0
FLAG_MORE: Final = 1
FLAG_CLOSE: Final = 2
_CIPHERTEXT_LIMIT: Final = 65535
_TAG: Final = 16

MIN_MESSAGE_SIZE: Final = 65519
MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
#: How far past the negotiated size the hub's plaintext estimate may go.
REASSEMBLY_SLACK: Final = 64 * 1024


def check_max_message_size(size: int) -> int:
    """A negotiated message size must be in 65519 .. 64 MiB."""
    if type(size) is not int or not MIN_MESSAGE_SIZE <= size <= MAX_MESSAGE_SIZE:
        raise LocalError(
            f"max message size must be {MIN_MESSAGE_SIZE}..{MAX_MESSAGE_SIZE} bytes, got {size!r}"
        )
    return size


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
        self.ceiling = check_max_message_size(max_message_size) + REASSEMBLY_SLACK
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
