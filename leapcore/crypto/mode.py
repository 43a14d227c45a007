"""Encryption modes and the one place their names are parsed."""

from __future__ import annotations

import enum

from ..errors import InvalidEncryptionMode

__all__ = ["EncryptionMode", "parse_encryption_mode"]


class EncryptionMode(enum.Enum):
    """Which handshake a worker speaks. Every worker holds all three key pairs either way."""

    CLASSIC = "classic"
    POST_QUANTUM = "post-quantum"

    def __str__(self) -> str:
        return self.value


_NAMES = {
    "classic": EncryptionMode.CLASSIC,
    "post-quantum": EncryptionMode.POST_QUANTUM,
    "post_quantum": EncryptionMode.POST_QUANTUM,
    "pq": EncryptionMode.POST_QUANTUM,
}


def parse_encryption_mode(value: str | EncryptionMode) -> EncryptionMode:
    """Parse a mode name: ``classic``, or ``post-quantum`` / ``post_quantum`` / ``pq``.

    Case-insensitive, surrounding white space ignored. Anything else raises
    :class:`~leapcore.errors.InvalidEncryptionMode` (leapcore never falls back
    silently).
    """
    if isinstance(value, EncryptionMode):
        return value
    if not isinstance(value, str):
        raise InvalidEncryptionMode(f"encryption mode must be a string, got {type(value).__name__}")
    mode = _NAMES.get(value.strip().lower())
    if mode is None:
        raise InvalidEncryptionMode(
            f"unknown encryption mode {value!r}: use 'classic' or 'post-quantum' "
            "(also accepted: 'post_quantum', 'pq')"
        )
    return mode
