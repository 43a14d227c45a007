"""The one error hierarchy of leapcore.

Every exception leapcore raises on purpose derives from :class:`LeapcoreError`
and carries a stable, machine-readable ``code``. The tree splits in two, in
the manner of h11:

* :class:`LocalError` — the caller misused the API or gave bad
  configuration (wrong state, oversized plaintext, bad flag, unreadable key
  file). Fixing it means changing the calling code or its input.
* :class:`RemoteProtocolError` — the peer (or the network between) sent
  bytes that break the protocol: a malformed or tampered handshake message,
  a frame that fails authentication, a record with unknown fields.

The codes are part of the public contract: programs match on ``exc.code``,
people read ``str(exc)``. The full table lives in ``docs/api.md``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadSignature",
    "ConfigError",
    "DecryptError",
    "HandshakeError",
    "HandshakeStateError",
    "InvalidEncryptionMode",
    "KeyFileError",
    "LeapcoreError",
    "LocalError",
    "LowOrderPoint",
    "MessageLengthError",
    "NonceExhausted",
    "PlaintextTooLarge",
    "RecordError",
    "RekeyError",
    "RemoteProtocolError",
    "SessionClosed",
    "StorageError",
]


class LeapcoreError(Exception):
    """Base of every error leapcore raises deliberately."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------
# Local: the caller's fault.


class LocalError(LeapcoreError):
    """The caller misused the API or supplied invalid local input."""

    code = "local_error"


class HandshakeStateError(LocalError):
    """A handshake method was called in a state that does not allow it."""

    code = "handshake_state"


class PlaintextTooLarge(LocalError):
    """A transport plaintext exceeded 65519 bytes."""

    code = "plaintext_too_large"


class NonceExhausted(LocalError):
    """A cipher state reached the hard nonce limit; the channel must re-handshake."""

    code = "nonce_exhausted"


class SessionClosed(LocalError):
    """The transport session was closed (after a decrypt failure or by the caller)."""

    code = "session_closed"


class ConfigError(LocalError):
    """A configuration value (flag, environment variable, file entry) is invalid."""

    code = "config_error"


class InvalidEncryptionMode(ConfigError):
    """An encryption mode name is not one leapcore knows."""

    code = "invalid_encryption_mode"


class StorageError(LocalError):
    """A file or directory could not be written (permissions, full disk, not a directory)."""

    code = "storage_error"


class KeyFileError(LocalError):
    """A key file is missing, unreadable or malformed."""

    code = "key_file_error"


# ---------------------------------------------------------------------------
# Remote: the peer's fault.


class RemoteProtocolError(LeapcoreError):
    """The peer sent data that violates the protocol."""

    code = "protocol_error"


class RecordError(RemoteProtocolError):
    """A structured record had unknown, missing or mistyped fields."""

    code = "bad_record"


class HandshakeError(RemoteProtocolError):
    """A handshake message was rejected; the handshake is over."""

    code = "handshake_failed"


class MessageLengthError(HandshakeError):
    """A handshake message did not have the exact length of its mode."""

    code = "handshake_bad_length"


class LowOrderPoint(HandshakeError):
    """An X25519 exchange produced the all-zero shared secret."""

    code = "handshake_low_order_point"


class BadSignature(HandshakeError):
    """The worker's SLH-DSA signature over the transcript did not verify."""

    code = "handshake_bad_signature"


class DecryptError(RemoteProtocolError):
    """A transport frame failed authentication; the channel is finished."""

    code = "decrypt_failed"


class RekeyError(RemoteProtocolError):
    """Rekey material from the peer was malformed."""

    code = "rekey_failed"
