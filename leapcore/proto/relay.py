"""The hub's relay rules for channel data (sans-IO; the hub never decrypts).

The hub sees, per frame, a channel id, a correlation id, the flags and the
ciphertext's size. :class:`ChannelRelay` checks each frame against the rules
for its channel and direction before forwarding it:

* flags are 0 (FINAL), 1 (MORE) or 2 (CLOSE); a CLOSE frame has no ciphertext;
* a FINAL or MORE frame has a non-zero correlation id and 16 (the tag) to 65535
  bytes of ciphertext;
* at most one chunked message is in flight per channel and direction: a MORE
  frame with another correlation id while a sequence is open is refused
  (single-frame FINAL messages of other ids may pass between its chunks);
* a sequence's estimated plaintext, sum(ciphertext - 16), stays within the
  negotiated message size + 64 KiB.

It also keeps each direction's **credit** (:meth:`ChannelRelay.charge`,
:meth:`ChannelRelay.delivered`): a sending end starts with
:data:`~leapcore.proto.link_codec.CHANNEL_CREDIT` bytes; each FINAL or MORE frame costs
its ciphertext's length (CLOSE costs nothing) and a frame beyond the credit
left is a violation. Credit comes back once the hub wrote the frames to the other
end, announced in batches of :data:`CREDIT_BATCH` (a quarter of :data:`CHANNEL_CREDIT`):
small messages cost no extra record each. A sender never waits on credit the hub is
holding back, because a batch plus the largest frame fit in the credit: once everything
it sent was written, less than a batch is unannounced and more than a frame is left.
So the hub holds at most :data:`CHANNEL_CREDIT` bytes per channel and direction.

A violation raises :class:`~leapcore.errors.RelayViolation` for that channel
alone: the hub closes that channel (both ends) and nothing else.
"""

from __future__ import annotations

import enum
from typing import Final

from ..errors import RelayViolation
from .chunking import FrameFlag
from .limits import (
    CHANNEL_CREDIT,
    CREDIT_BATCH,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_CIPHERTEXT,
    MAX_PLAINTEXT,
    REASSEMBLY_SLACK,
    validate_max_message_size,
)

__all__ = [
    "FLAG_CLOSE",
    "FLAG_FINAL",
    "FLAG_MORE",
    "ChannelRelay",
    "RelayDirection",
]

FLAG_FINAL: Final = FrameFlag.FINAL.value
FLAG_MORE: Final = FrameFlag.MORE.value
FLAG_CLOSE: Final = FrameFlag.CLOSE.value
_CIPHERTEXT_LIMIT: Final = MAX_CIPHERTEXT
#: The AEAD tag every sealed frame carries.
_TAG: Final = MAX_CIPHERTEXT - MAX_PLAINTEXT

# REASSEMBLY_SLACK (how far past the negotiated size the hub's plaintext estimate may go)
# and CREDIT_BATCH (returned credit is announced once this much is pending) live in
# leapcore.proto.limits with every other number. A sender whose frames were all written
# has CHANNEL_CREDIT - (< CREDIT_BATCH) left: room for the largest frame, so holding back
# less than a batch can never stall it (tests/proto/test_relay.py checks
# CREDIT_BATCH + 65535 <= CHANNEL_CREDIT).


class RelayDirection(enum.Enum):
    """Which way a frame goes. Hashed by identity: every relayed frame looks its direction
    up (``Enum.__hash__`` runs in Python); members are singletons, nothing else changes."""

    __hash__ = object.__hash__

    TO_WORKER = "to-worker"
    TO_CLIENT = "to-client"


class _Direction:
    __slots__ = ("credit", "estimate", "in_flight", "unannounced")

    def __init__(self, credit: int) -> None:
        self.in_flight = 0  # correlation id of the open chunked sequence; 0 = none
        self.estimate = 0
        self.credit = credit  # bytes the sender may still send
        self.unannounced = 0  # delivered bytes not yet given back with channel_credit


class ChannelRelay:
    """The relay state of one channel: one :class:`_Direction` each way."""

    __slots__ = ("_directions", "ceiling", "channel_id")

    def __init__(
        self,
        channel_id: int,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        *,
        credit: int = CHANNEL_CREDIT,
    ) -> None:
        self.channel_id = channel_id
        self.ceiling = validate_max_message_size(max_message_size) + REASSEMBLY_SLACK
        self._directions = {d: _Direction(credit) for d in RelayDirection}

    def in_flight(self, direction: RelayDirection) -> int:
        """The correlation id of the chunked message in flight that way (0: none)."""
        return self._directions[direction].in_flight

    def credit(self, direction: RelayDirection) -> int:
        """The bytes the sender that way may still send before credit comes back."""
        return self._directions[direction].credit

    def charge(self, direction: RelayDirection, flags: int, ciphertext_size: int) -> int:
        """Spend the sender's credit on one frame (checked with :meth:`check` first); the cost.

        A frame costs its ciphertext's length, a CLOSE frame nothing. More than the credit
        left is a :class:`~leapcore.errors.RelayViolation` (and nothing is spent).
        """
        cost = 0 if flags == FLAG_CLOSE else ciphertext_size
        state = self._directions[direction]
        if cost > state.credit:
            raise RelayViolation(
                f"channel {self.channel_id}: a {cost}-byte frame exceeds the sender's credit "
                f"of {state.credit} bytes"
            )
        state.credit -= cost
        return cost

    def delivered(self, direction: RelayDirection, cost: int) -> int:
        """``cost`` bytes went out to the receiver; the credit to announce now (0: not yet).

        Announced credit is the sender's again. A batch goes out once
        :data:`CREDIT_BATCH` bytes are pending.
        """
        state = self._directions[direction]
        state.unannounced += cost
        if state.unannounced >= CREDIT_BATCH:
            grant, state.unannounced = state.unannounced, 0
            state.credit += grant
            return grant
        return 0

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
        if ciphertext_size < _TAG:
            # Every sealed frame carries at least its 16-byte tag; shorter ones are not
            # ciphertext, and (costing almost no credit) could pile up at the hub.
            raise RelayViolation(
                f"channel {self.channel_id}: a {ciphertext_size}-byte frame is shorter than "
                f"the {_TAG}-byte tag every sealed frame carries"
            )
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
