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
    "ChannelClosedError",
    "ChannelLost",
    "ChannelOpenFailed",
    "ChannelProtocolError",
    "ConfigError",
    "CorruptPinStore",
    "DeadlineExceeded",
    "DecryptError",
    "FailedPrecondition",
    "FlowControlError",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeStateError",
    "HubRequestFailed",
    "InvalidEncryptionMode",
    "InvalidMessage",
    "KeyFileError",
    "KeyMismatch",
    "LeapcoreError",
    "LinkClosed",
    "LinkProtocolError",
    "LocalError",
    "LowOrderPoint",
    "MessageLengthError",
    "MessageTooLarge",
    "NonceExhausted",
    "NotFound",
    "OutboundQueueFull",
    "PermissionDenied",
    "PinStoreError",
    "PlaintextTooLarge",
    "QuotaExceeded",
    "RecordError",
    "RekeyError",
    "RelayViolation",
    "RemoteCallError",
    "RemoteProtocolError",
    "ResourceExhausted",
    "SessionClosed",
    "SigningPoolBroken",
    "SigningPoolClosed",
    "StorageError",
    "StreamUsageError",
    "Unauthenticated",
    "UnexpectedMessage",
    "UnexpectedStreamMessage",
    "UnsupportedProtocolVersion",
    "WorkerOffline",
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


class NotFound(LocalError):
    """The thing asked for (a pin, a worker, a key) does not exist."""

    code = "not_found"


class Unauthenticated(LocalError):
    """A credential (API token, worker auth token, registration key) was not accepted."""

    code = "unauthenticated"


class PermissionDenied(LocalError):
    """The caller is authenticated but not allowed to do this."""

    code = "permission_denied"


class FailedPrecondition(LocalError):
    """The request is valid but the state does not allow it now (e.g. too early to extend)."""

    code = "failed_precondition"


class QuotaExceeded(LocalError):
    """A configured limit was reached (e.g. the maximum workers per user)."""

    code = "quota_exceeded"


class PinStoreError(LocalError):
    """A pin store file cannot be read, locked or written."""

    code = "pin_store_error"


class CorruptPinStore(PinStoreError):
    """A pin store file exists but does not parse; it is left untouched."""

    code = "pin_store_corrupt"


# ---------------------------------------------------------------------------
# Remote: the peer's fault.


class RemoteProtocolError(LeapcoreError):
    """The peer sent data that violates the protocol."""

    code = "protocol_error"


class KeyMismatch(RemoteProtocolError):
    """A worker presented keys that differ from its pin: possibly an impostor.

    ``str(exc)`` is ``worker <id> key mismatch — <hint>``; the fingerprints of the
    pinned (``expected``) and presented (``actual``) keys are attributes.
    """

    code = "key_mismatch"

    def __init__(self, worker_id: str, *, expected: str, actual: str, hint: str) -> None:
        super().__init__(f"worker {worker_id} key mismatch \u2014 {hint}")
        self.worker_id = worker_id
        self.expected = expected
        self.actual = actual
        self.hint = hint


class RecordError(RemoteProtocolError):
    """A structured record had unknown, missing or mistyped fields."""

    code = "bad_record"


class LinkProtocolError(RemoteProtocolError):
    """A peer broke the link protocol (bad frame, bad record, message out of order).
    The link is closed; other links are unaffected."""

    code = "link_protocol_error"


class FrameTooLarge(LinkProtocolError):
    """A link frame declared or carried more bytes than the protocol allows."""

    code = "frame_too_large"


class UnsupportedProtocolVersion(LinkProtocolError):
    """A hello named a link protocol version this side does not speak."""

    code = "unsupported_protocol_version"


class UnexpectedMessage(LinkProtocolError):
    """A link message that is not allowed in the link's current state."""

    code = "unexpected_message"


class HubRequestFailed(RemoteProtocolError):
    """The hub answered a request with an error that has no more specific class here
    (``internal``, ``unavailable``, ``invalid_argument`` or a code this version does not
    know); the hub's code is the ``hub_code`` attribute."""

    code = "hub_request_failed"

    def __init__(self, hub_code: str, message: str) -> None:
        super().__init__(f"{hub_code}: {message}")
        self.hub_code = hub_code


class LinkClosed(RemoteProtocolError):
    """The link's connection ended or could not be made (network error, peer gone)."""

    code = "link_closed"


class ChannelOpenFailed(RemoteProtocolError):
    """A channel could not be opened: the hub or the worker refused it, or it timed out.
    ``reason`` is the link protocol's open error code (``timeout``, ``handshake_failed``,
    ``unavailable``, ...)."""

    code = "channel_open_failed"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class WorkerOffline(ChannelOpenFailed):
    """The worker exists but holds no link to the hub right now."""

    code = "worker_offline"

    def __init__(self, message: str) -> None:
        super().__init__("worker_offline", message)


class ChannelLost(RemoteProtocolError):
    """The channel ended under a call: the peer or the hub closed it, or the link went.
    ``reason`` is the close code (``link_lost``, ``closed_by_peer``, ``decrypt_failed``, ...)."""

    code = "channel_lost"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class DeadlineExceeded(RemoteProtocolError):
    """A call, ping, stream, byte-stream open, hub request or channel open through the hub got
    no answer within its deadline (``timeout=``, 30 s by default): a frame was lost or
    misrouted, or the peer is stuck. Not a protocol violation; the operation may be retried.
    What the caller gave up on is cancelled (a late answer is dropped)."""

    code = "deadline_exceeded"


class RemoteCallError(RemoteProtocolError):
    """The worker answered a call with an error; its code is ``remote_code`` (for example
    ``permission_denied``, ``not_found``, ``unimplemented``, ``internal``)."""

    code = "remote_error"

    def __init__(self, remote_code: str, message: str) -> None:
        super().__init__(f"{remote_code}: {message}" if message else remote_code)
        self.remote_code = remote_code
        self.remote_message = message


class RelayViolation(RemoteProtocolError):
    """A channel data frame broke a relay rule; that channel alone is closed."""

    code = "relay_violation"


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


# ---------------------------------------------------------------------------
# Channel protocol (leapcore.proto: channel_codec, chunking, channel_mux)


class InvalidMessage(LocalError):
    """A channel message built locally has an invalid field (method name, code, window)."""

    code = "invalid_message"


class MessageTooLarge(InvalidMessage):
    """An encoded channel message exceeds the channel's max_message_size."""

    code = "message_too_large"


class StreamUsageError(LocalError):
    """A stream action that the stream's kind, state or this side's role does not allow."""

    code = "stream_usage_error"


class ChannelClosedError(LocalError):
    """An action on a channel endpoint that is already closed."""

    code = "channel_closed"


class SigningPoolClosed(LocalError):
    """``SigningPool.sign`` was called on a pool that is not open (not yet entered,
    or closed); callers still waiting when the pool closes get it too."""

    code = "signing_pool_closed"


class SigningPoolBroken(LocalError):
    """A signing process died twice in a row while computing the same signature."""

    code = "signing_pool_broken"


class OutboundQueueFull(LocalError):
    """The channel's outbound queue is at its byte budget; drain frames_to_send first."""

    code = "outbound_queue_full"


class ChannelProtocolError(RemoteProtocolError):
    """A channel message or frame from the peer is malformed; only its stream is affected."""

    code = "channel_protocol_error"


class UnexpectedStreamMessage(ChannelProtocolError):
    """A channel message not allowed for its stream's kind, state or sender (or unknown id)."""

    code = "unexpected_stream_message"


class FlowControlError(ChannelProtocolError):
    """The peer sent more byte-stream data than its window allowed, or overflowed a window."""

    code = "flow_control_error"


class ResourceExhausted(ChannelProtocolError):
    """A reassembly or stream limit was reached; that correlation id is failed."""

    code = "resource_exhausted"
