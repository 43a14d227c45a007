"""Channel frames, splitting messages into chunks, and bounded reassembly (sans-IO).

A channel carries :class:`ChannelFrame` objects: a correlation id, a flag
*value* and one transport ciphertext (at most 65535 bytes, so at most 65519
bytes of plaintext). A channel message larger than that travels as several
chunks under one correlation id: every chunk but the last is flagged
``MORE``, the last ``FINAL``. An empty message is one zero-length ``FINAL``
chunk. ``CLOSE`` is a standalone frame with no data.

Splitting works on plaintext (:func:`split_message`, :func:`iter_chunks`):
encryption is the channel endpoint's job, because the transport's nonces
follow the order in which frames are *sent*.

:class:`Reassembler` is the receiving side, keyed by correlation id, with the
limits of ``spec/behavior.md`` §5.7: at most ``max_incomplete``
(:data:`~leapcore.proto.limits.DEFAULT_MAX_INCOMPLETE`, 4) chunked messages in progress per
channel, each at most ``max_message_size`` (:func:`~leapcore.proto.limits.validate_max_message_size`
checks it), and all of them together at most ``max_buffered`` bytes
(:attr:`Reassembler.budget`, ``max_message_size`` by default; the worker's channel driver
lowers it by what its handlers hold, see :mod:`leapcore.peer.channel`); the running totals are
checked as chunks arrive, so nothing is buffered past a limit. A breach fails that
correlation id alone, once (:class:`~leapcore.errors.ResourceExhausted`), and
tombstones it: its later chunks are dropped and its ``FINAL`` chunk reaps the
tombstone. Tombstones are capped at ``max_incomplete`` too; past both caps, chunks
are dropped silently.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Final

import attrs

from ..errors import ChannelProtocolError, ConfigError, LocalError, ResourceExhausted
from .limits import (
    DEFAULT_MAX_INCOMPLETE,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_PLAINTEXT,
    validate_max_message_size,
)

__all__ = [
    "MAX_CHUNK",
    "ChannelFrame",
    "FrameFlag",
    "Reassembled",
    "Reassembler",
    "ReassemblyFailed",
    "chunk_count",
    "iter_chunks",
    "split_message",
]

#: Plaintext bytes per chunk: one transport frame's (:data:`~leapcore.proto.limits.MAX_PLAINTEXT`).
MAX_CHUNK: Final = MAX_PLAINTEXT


class FrameFlag(enum.IntEnum):
    """Frame flags are values, not bits. Any other value is dropped by receivers."""

    FINAL = 0  # the last chunk, or the only one
    MORE = 1  # more chunks of this message follow
    CLOSE = 2  # the channel is closing (standalone, no data)


@attrs.frozen
class ChannelFrame:
    """One frame of a channel, as the link carries it.

    ``correlation_id`` is a u64 (never 0 on a data frame), ``flags`` a
    :class:`FrameFlag` value (the raw integer, so that unknown values can be
    carried to the receiver and dropped there), ``ciphertext`` one
    :meth:`TransportSession.encrypt <leapcore.crypto.transport.TransportSession.encrypt>`
    output (empty for ``CLOSE``).
    """

    correlation_id: int
    flags: int
    ciphertext: bytes


def chunk_count(size: int) -> int:
    """How many frames a message of ``size`` bytes takes (an empty message takes one)."""
    return max(1, -(-size // MAX_CHUNK))


def iter_chunks(message: bytes) -> Iterator[tuple[FrameFlag, bytes]]:
    """``(flag, plaintext)`` for each chunk of ``message``, lazily, in order."""
    if len(message) <= MAX_CHUNK:
        yield FrameFlag.FINAL, bytes(message)  # no copy when message is already bytes
        return
    view = memoryview(message)
    last = chunk_count(len(message)) - 1
    for i in range(last + 1):
        piece = bytes(view[i * MAX_CHUNK : (i + 1) * MAX_CHUNK])
        yield (FrameFlag.FINAL if i == last else FrameFlag.MORE), piece


def split_message(message: bytes) -> list[tuple[FrameFlag, bytes]]:
    """All chunks of ``message`` (see :func:`iter_chunks`)."""
    return list(iter_chunks(message))


@attrs.frozen
class Reassembled:
    """A complete channel message, as the chunks it arrived in: decoding takes the chunks
    (:func:`~leapcore.proto.channel_codec.decode_chunks`), so a large message is copied once."""

    correlation_id: int
    chunks: tuple[bytes, ...]

    @property
    def message(self) -> bytes:
        """The whole message (joined now: a copy for a chunked one)."""
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


@attrs.frozen
class ReassemblyFailed:
    """This correlation id broke a limit (or is 0); ``error`` says which, for a person and
    (``error.code``) for a program."""

    correlation_id: int
    error: ChannelProtocolError


class Reassembler:
    """Receiving side of chunking for one channel (one direction)."""

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_incomplete: int = DEFAULT_MAX_INCOMPLETE,
        max_buffered: int | None = None,
    ) -> None:
        self.max_message_size = validate_max_message_size(max_message_size)
        if type(max_incomplete) is not int or max_incomplete < 1:
            raise ConfigError(f"max_incomplete must be a positive integer, got {max_incomplete!r}")
        self.max_incomplete = max_incomplete
        if max_buffered is None:
            max_buffered = self.max_message_size
        if type(max_buffered) is not int or max_buffered < 0:
            raise ConfigError(f"max_buffered must be an integer >= 0, got {max_buffered!r}")
        #: Bytes all incomplete messages together may hold now (the driver may change it;
        #: a lower budget fails the chunk that would pass it, not what is already held).
        self.budget = max_buffered
        self._partial: dict[int, list[bytes]] = {}
        self._sizes: dict[int, int] = {}  # running total of each incomplete message
        self._buffered = 0  # their sum
        self._tombstones: set[int] = set()

    @property
    def incomplete(self) -> frozenset[int]:
        """Correlation ids with a chunked message in progress."""
        return frozenset(self._partial)

    @property
    def tombstones(self) -> frozenset[int]:
        return frozenset(self._tombstones)

    @property
    def buffered(self) -> int:
        """Plaintext bytes held for incomplete messages."""
        return self._buffered

    def feed(
        self, correlation_id: int, flags: int, chunk: bytes
    ) -> Reassembled | ReassemblyFailed | None:
        """Take one decrypted chunk; return a complete message, a failure, or ``None``."""
        if flags not in (FrameFlag.FINAL, FrameFlag.MORE):
            raise LocalError(f"only FINAL and MORE frames carry chunks, got flags {flags!r}")
        final = flags == FrameFlag.FINAL
        cid = correlation_id
        if cid == 0:
            return ReassemblyFailed(
                0, ChannelProtocolError("correlation id 0 is reserved; frame dropped")
            )
        if cid in self._tombstones:
            if final:
                self._tombstones.discard(cid)
            return None
        parts = self._partial.get(cid)
        if parts is None:
            if len(chunk) > self.max_message_size:  # only if a chunk exceeds 65519 bytes
                return self._fail(cid, final, self._too_big(len(chunk)))
            if final:
                return Reassembled(cid, (bytes(chunk),))
            if len(self._partial) >= self.max_incomplete:
                return self._fail(
                    cid,
                    final,
                    f"more than {self.max_incomplete} incomplete chunked messages on this channel",
                )
            if self._buffered + len(chunk) > self.budget:
                return self._fail(cid, final, self._over_budget(len(chunk)))
            self._partial[cid] = [chunk]
            self._sizes[cid] = len(chunk)
            self._buffered += len(chunk)
            return None
        total = self._sizes[cid] + len(chunk)
        if total > self.max_message_size:
            self._forget(cid)
            return self._fail(cid, final, self._too_big(total))
        if not final and self._buffered + len(chunk) > self.budget:
            self._forget(cid)
            return self._fail(cid, final, self._over_budget(len(chunk)))
        parts.append(chunk)
        if final:
            self._forget(cid)
            return Reassembled(cid, tuple(parts))
        self._sizes[cid] = total
        self._buffered += len(chunk)
        return None

    def _forget(self, cid: int) -> None:
        del self._partial[cid]
        self._buffered -= self._sizes.pop(cid)

    def discard(self, correlation_id: int) -> None:
        """Forget any partial message and tombstone for ``correlation_id``."""
        if correlation_id in self._partial:
            self._forget(correlation_id)
        self._tombstones.discard(correlation_id)

    def _over_budget(self, size: int) -> str:
        return (
            f"{size} more bytes would pass the channel's reassembly budget "
            f"({self._buffered} of {self.budget} bytes held)"
        )

    def _too_big(self, size: int) -> str:
        return f"chunked message reached {size} bytes; the limit is {self.max_message_size}"

    def _fail(self, cid: int, final: bool, why: str) -> ReassemblyFailed | None:
        if final:  # nothing more of it will come: no tombstone needed
            return ReassemblyFailed(cid, ResourceExhausted(f"correlation id {cid}: {why}"))
        if len(self._tombstones) >= self.max_incomplete:
            return None  # past both caps: dropped silently
        self._tombstones.add(cid)
        return ReassemblyFailed(cid, ResourceExhausted(f"correlation id {cid}: {why}"))
