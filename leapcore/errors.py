"""The one error hierarchy of leapcore: every exception class of the package lives here.

Every exception leapcore raises on purpose derives from :class:`LeapcoreError` and carries
a stable, machine-readable ``code``. The tree has three branches, one per meaning, so a
program can catch what it means:

* :class:`LocalError` — this side's fault: the caller misused the API, gave bad
  configuration, or a local file is unreadable. Fixing it means changing the calling code,
  its input or the local files; retrying changes nothing.
* :class:`RemoteProtocolError` — the peer (or something between) broke the protocol: a
  malformed record or frame, a frame that fails authentication, a bad signature, keys
  that differ from their pin, a relay or flow-control violation. Possibly an attack; never
  retried blindly.
* :class:`RemoteFailure` — the protocol was kept, but the operation did not happen:

  * :class:`Unavailable` — the connection or the far side went away or did not answer in
    time (a dropped link, an unreachable hub, an offline worker, a deadline). Retrying
    later may succeed.
  * :class:`Refused` — the far side understood and said no (not found, unauthenticated,
    permission denied, a quota, an error answer to a call). Retrying the same request
    gets the same answer.

Some failures carry the far side's reason code instead of a class of their own
(:class:`ChannelLost`, :class:`ChannelOpenFailed`, :class:`HubRequestFailed`). When that
code says the protocol was broken (a failed handshake, a frame that failed authentication,
a relay violation, ...), :attr:`LeapcoreError.protocol_failure` is true, as it is for every
:class:`RemoteProtocolError`.

The codes are part of the public contract: programs match on ``exc.code``, people read
``str(exc)``. The tree and the table live in the "Errors" section of ``docs/api.md``.
"""

from __future__ import annotations

from typing import ClassVar, Final

__all__ = [
    "AlreadyExists",
    "AmbiguousReference",
    "BadSignature",
    "ChannelClosedError",
    "ChannelLost",
    "ChannelOpenFailed",
    "ChannelProtocolError",
    "CommandNotFound",
    "ConfigError",
    "CorruptPinStore",
    "DeadlineExceeded",
    "DecryptError",
    "ExecFailed",
    "FailedPrecondition",
    "FileTransferFailed",
    "FlowControlError",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeStateError",
    "HttpRequestError",
    "HubMismatch",
    "HubRequestFailed",
    "HubUnavailable",
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
    "PolicyDenied",
    "ProcessFailed",
    "ProcessOutputTooLarge",
    "ProcessTimedOut",
    "QuotaExceeded",
    "RecordError",
    "Refused",
    "RegistrationRejected",
    "RekeyError",
    "RelayViolation",
    "RemoteCallError",
    "RemoteFailure",
    "RemoteProtocolError",
    "RequestError",
    "ResourceExhausted",
    "ServiceError",
    "SessionClosed",
    "SigningPoolBroken",
    "SigningPoolClosed",
    "Socks5Error",
    "StorageError",
    "StreamUsageError",
    "SyncClosed",
    "TLSCertificateError",
    "TerminalNotFound",
    "TokenExpired",
    "TunnelDenied",
    "TunnelDialFailed",
    "Unauthenticated",
    "Unavailable",
    "UnexpectedMessage",
    "UnexpectedStreamMessage",
    "UnsupportedProtocolVersion",
    "WorkerBusy",
    "WorkerDeleted",
    "WorkerOffline",
    "WorkspaceError",
]


class LeapcoreError(Exception):
    """Base of every error leapcore raises deliberately."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def protocol_failure(self) -> bool:
        """True when this failure means the protocol was broken, here or as the far side
        reports it: possibly tampering on the way, never retried blindly."""
        return False


# ---------------------------------------------------------------------------
# Local: this side's fault (misuse, configuration, local files).


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


class AmbiguousReference(ConfigError):
    """A reference (a worker's name, or the start of its id) matches more than one thing;
    ``candidates`` lists them as ``(id, name)`` pairs."""

    code = "ambiguous_reference"

    def __init__(self, message: str, candidates: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class InvalidEncryptionMode(ConfigError):
    """An encryption mode name is not one leapcore knows."""

    code = "invalid_encryption_mode"


class StorageError(LocalError):
    """A file or directory could not be written (permissions, full disk, not a directory)."""

    code = "storage_error"


class KeyFileError(LocalError):
    """A key file is missing, unreadable or malformed."""

    code = "key_file_error"


class PinStoreError(LocalError):
    """A pin store file cannot be read, locked or written."""

    code = "pin_store_error"


class CorruptPinStore(PinStoreError):
    """A pin store file exists but does not parse; it is left untouched."""

    code = "pin_store_corrupt"


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


class OutboundQueueFull(LocalError):
    """The channel's outbound queue is at its byte budget; drain frames_to_send first."""

    code = "outbound_queue_full"


class SigningPoolClosed(LocalError):
    """``SigningPool.sign`` was called on a pool that is not open (not yet entered,
    or closed); callers still waiting when the pool closes get it too."""

    code = "signing_pool_closed"


class SigningPoolBroken(LocalError):
    """A signing process died twice in a row while computing the same signature."""

    code = "signing_pool_broken"


class SyncClosed(LocalError):
    """A ``leapcore.sync`` hub, channel or stream was used after it was closed (by
    ``close()``, by leaving its ``with`` block, or with the channel or hub holding it); a
    call still waiting when another thread closes it gets it too."""

    code = "sync_closed"


# ---------------------------------------------------------------------------
# Remote protocol: the peer broke the protocol (possibly an attack).


class RemoteProtocolError(LeapcoreError):
    """The peer sent data that violates the protocol."""

    code = "protocol_error"

    @property
    def protocol_failure(self) -> bool:
        return True


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


class HttpRequestError(RemoteProtocolError):
    """An HTTP request to the hub's web page was malformed or over a budget; ``status`` is
    the HTTP status it is answered with (400, 408, 413, 431, 501, ...)."""

    code = "bad_http_request"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


class TLSCertificateError(LinkProtocolError):
    """The hub's TLS certificate did not verify (against the system's CAs, or ``ca_file``):
    possibly an impostor hub. No link is made, and never one in cleartext instead."""

    code = "tls_certificate_rejected"


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


class Socks5Error(RemoteProtocolError):
    """A SOCKS5 client of a tunnel's local listener broke the protocol (bad version, no
    acceptable method, an unsupported command, a truncated message, ...). ``reason`` names
    the violation; only that client's connection is closed."""

    code = "socks5_error"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"SOCKS5 {reason}: {message}")
        self.reason = reason


# ---------------------------------------------------------------------------
# Remote failure: the protocol was kept, the far side went away or said no.


class RemoteFailure(LeapcoreError):
    """The connection or the far side went away, or the far side said no; nobody broke the
    protocol (see :class:`Unavailable` and :class:`Refused`)."""

    code = "remote_failure"


class Unavailable(RemoteFailure):
    """The connection or the far side went away or did not answer in time; retrying later
    may succeed."""

    code = "unavailable"


class LinkClosed(Unavailable):
    """The link's connection ended or could not be made (network error, hub unreachable,
    the hub going away)."""

    code = "link_closed"


class HubUnavailable(Unavailable):
    """The hub answered ``unavailable``: it is shutting down, has too many channel opens
    pending, or closed an idle link. Retry later."""

    code = "hub_unavailable"


class WorkerOffline(Unavailable):
    """The worker exists but holds no link to the hub right now (``reason`` is
    ``worker_offline``, the open refusal's code)."""

    code = "worker_offline"

    def __init__(self, message: str) -> None:
        super().__init__(f"worker_offline: {message}")
        self.reason = "worker_offline"


class ChannelLost(Unavailable):
    """The channel ended under a call: the peer or the hub closed it, or the link went.
    ``reason`` is the close code (``link_lost``, ``closed_by_peer``, ``decrypt_failed``, ...);
    a reason that says the protocol was broken sets :attr:`protocol_failure`."""

    code = "channel_lost"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason

    @property
    def protocol_failure(self) -> bool:
        return self.reason in PROTOCOL_FAILURE_CODES


class DeadlineExceeded(Unavailable):
    """A call, ping, stream, byte-stream open, hub request or channel open through the hub got
    no answer within its deadline (``timeout=``, 30 s by default; or the hub's own 30 s for a
    worker to answer an open): a frame was lost or misrouted, or the peer is stuck. The
    operation may be retried. What the caller gave up on is cancelled (a late answer is
    dropped)."""

    code = "deadline_exceeded"


class Refused(RemoteFailure):
    """The far side understood the request and said no; the same request gets the same
    answer."""

    code = "refused"


class NotFound(Refused):
    """The thing asked for (a worker, a user, a registration key, a pin) does not exist, or
    is not the caller's to see."""

    code = "not_found"


class TerminalNotFound(NotFound):
    """No terminal session with that id on the worker (never spawned, or killed)."""

    code = "terminal_not_found"


class Unauthenticated(Refused):
    """A credential (API token, worker auth token, registration key) was not accepted."""

    code = "unauthenticated"


class WorkerDeleted(Unauthenticated):
    """A worker auth token that belonged to a worker this hub deregistered or deleted:
    the one rejection after which a worker may retire its identity."""

    code = "worker_deleted"


class TokenExpired(Unauthenticated):
    """A worker auth token or API token that is past its expiry (the message says when).
    A worker so refused exits (``leapcore-worker`` exit 10) and must be registered again;
    an expired API token is replaced by a new one (``leapcore-hub admin user token-create``)."""

    code = "token_expired"


class AlreadyExists(Refused):
    """The thing to be made already exists (e.g. another of the owner's workers has that
    name)."""

    code = "already_exists"


class HubMismatch(Refused):
    """A worker's token was rejected by a hub that is not the one it registered with: a
    different hub, or its own hub restarted on an empty database, does not know the token
    (``unauthenticated``), or a hub with another id claims to have deleted it. Nothing was
    changed: the worker's files are left exactly as they were. ``hub_url`` and ``hub_id``
    name the hub reached (``hub_id`` ``""``: it did not say), ``registered_hub_id`` and
    ``registered_url`` the one in ``hub.json`` (``""``: none recorded), ``hub_code`` the
    hub's error code."""

    code = "hub_mismatch"

    def __init__(
        self,
        message: str,
        *,
        hub_url: str = "",
        hub_id: str = "",
        registered_hub_id: str = "",
        registered_url: str = "",
        hub_code: str = "",
    ) -> None:
        super().__init__(message)
        self.hub_url = hub_url
        self.hub_id = hub_id
        self.registered_hub_id = registered_hub_id
        self.registered_url = registered_url
        self.hub_code = hub_code


class PermissionDenied(Refused):
    """The caller is authenticated but not allowed to do this."""

    code = "permission_denied"


class FailedPrecondition(Refused):
    """The request is valid but the state does not allow it now (e.g. too early to extend)."""

    code = "failed_precondition"


class QuotaExceeded(Refused):
    """A configured limit was reached (e.g. the maximum workers per user)."""

    code = "quota_exceeded"


class HubRequestFailed(Refused):
    """The hub answered a request with an error that has no more specific class here
    (``internal``, ``invalid_argument`` or a code this version does not know); the hub's
    code is the ``hub_code`` attribute (one that says the protocol was broken sets
    :attr:`protocol_failure`)."""

    code = "hub_request_failed"

    def __init__(self, hub_code: str, message: str) -> None:
        super().__init__(f"{hub_code}: {message}")
        self.hub_code = hub_code

    @property
    def protocol_failure(self) -> bool:
        return self.hub_code in PROTOCOL_FAILURE_CODES


class ChannelOpenFailed(Refused):
    """The hub or the worker refused to open a channel. ``reason`` is the link protocol's
    open error code (``permission_denied``, ``quota_exceeded``, ``handshake_failed``, ...);
    a reason that says the protocol was broken (``handshake_failed``: the worker could not
    complete the handshake with the keys the hub reported) sets :attr:`protocol_failure`."""

    code = "channel_open_failed"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason

    @property
    def protocol_failure(self) -> bool:
        return self.reason in PROTOCOL_FAILURE_CODES


class RemoteCallError(Refused):
    """The worker answered a call with an error; its code is ``remote_code`` (for example
    ``permission_denied``, ``not_found``, ``unimplemented``, ``internal``)."""

    code = "remote_error"

    def __init__(self, remote_code: str, message: str) -> None:
        super().__init__(f"{remote_code}: {message}" if message else remote_code)
        self.remote_code = remote_code
        self.remote_message = message


class PolicyDenied(RemoteCallError):
    """The worker's policy (``policy.toml``) refused the call before it touched anything
    (``remote_code`` ``denied_by_policy``); ``str(exc)`` is
    ``denied_by_policy: <rule>: <what>``, e.g. ``denied_by_policy: exec.deny ssh: ssh``."""

    code = "denied_by_policy"


class WorkerBusy(RemoteCallError):
    """The worker runs as many calls of this kind (capability) as its ``concurrency``
    setting allows (``remote_code`` ``busy``): nothing was started; retry later."""

    code = "busy"


def remote_call_error(code: str, message: str) -> RemoteCallError:
    """The error for a worker's answer ``code``: :class:`PolicyDenied` for
    ``denied_by_policy``, :class:`WorkerBusy` for ``busy``, else :class:`RemoteCallError`."""
    cls = {PolicyDenied.code: PolicyDenied, WorkerBusy.code: WorkerBusy}.get(code, RemoteCallError)
    return cls(code, message)


class TunnelDialFailed(Refused):
    """The worker could not dial a tunnel's target (``Channel.open_tcp``); nothing was
    connected. ``reason`` is the worker's code: ``connection_refused``,
    ``network_unreachable``, ``host_unreachable``, ``timed_out``, ``name_not_found`` or
    ``denied_by_policy`` (:class:`TunnelDenied`); ``str(exc)`` is ``<reason>: <detail>``,
    e.g. ``name_not_found: dial example.invalid:80: name not found``. The worker's dialler
    raises it too (``leapcore.worker.tcp.dial``)."""

    code = "tunnel_dial_failed"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


class TunnelDenied(TunnelDialFailed):
    """The worker's destination rules (``tunnel_allow`` / ``tunnel_deny``) refused a tunnel
    before any dial (``reason`` ``denied_by_policy``; the message names the rule)."""

    code = "tunnel_denied"


class ExecFailed(Refused):
    """The worker could not start a command (``Channel.run_command``,
    ``Channel.create_process``); nothing ran. ``reason`` is the worker's code:
    ``command_not_found`` (:class:`CommandNotFound`), ``not_executable``, ``bad_cwd`` or
    ``spawn_failed``; ``str(exc)`` is ``<reason>: <detail>``."""

    code = "exec_failed"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


class CommandNotFound(ExecFailed):
    """The command to run does not exist on the worker (``reason`` ``command_not_found``)."""

    code = "command_not_found"


class ProcessFailed(Refused):
    """A remote process did not succeed: ``run_command(check=True)`` saw a non-zero exit
    status or a signal. ``result`` is the :class:`~leapcore.peer.process.ProcessResult`
    (its output included)."""

    code = "process_failed"

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result


class ProcessTimedOut(ProcessFailed):
    """A remote process ran past its ``timeout``: the worker killed its process group;
    ``result`` holds what it wrote until then."""

    code = "process_timed_out"


class ProcessOutputTooLarge(ProcessFailed):
    """A remote process wrote more than ``run_command``'s ``max_output`` bytes to stdout or
    stderr: the process was killed; ``result`` holds the first ``max_output`` bytes."""

    code = "process_output_too_large"


class FileTransferFailed(Refused):
    """A file copy (``Channel.put``, ``Channel.get``, ``leapcore remote cp``) was refused by
    the worker, or, for names a worker sent, by this side. ``reason`` is the code:
    ``not_found``, ``permission_denied``, ``is_a_directory``, ``not_a_directory``,
    ``path_escapes`` (a ``..``, absolute or NUL name, or a symlink on the way to a write),
    ``invalid_argument``, ``no_space`` or ``io_error``; ``str(exc)`` is ``<reason>:
    <detail>``. Nothing half-written is left at the target."""

    code = "file_transfer_failed"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


class RegistrationRejected(Refused):
    """The hub refused the registration key for good (``registration rejected: <code>: <msg>``).

    ``hub_code`` is the hub's error code (``unauthenticated``, ``invalid_argument`` or
    ``permission_denied``).
    """

    code = "registration_rejected"

    def __init__(self, hub_code: str, message: str) -> None:
        super().__init__(f"registration rejected: {hub_code}: {message}")
        self.hub_code = hub_code


class RequestError(Refused):
    """Raised inside the hub to answer a ``hub_request`` with an error: ``error_code`` and
    ``message`` go back in the ``hub_response`` (the client raises the matching class)."""

    code = "request_error"

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class WorkspaceError(Refused):
    """A workspace call (``Channel.workspace``, ``Channel.remove_workspace``, a process or
    terminal started in a workspace) was refused by the worker. ``reason`` is the code:
    ``workspace_not_found``, ``repo_not_found``, ``branch_not_found``, ``workspace_busy``,
    ``workspace_dirty``, ``git_missing`` or ``git_failed``; ``str(exc)`` is ``<reason>:
    <detail>``. A refused create leaves nothing on the worker."""

    code = "workspace_error"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


class ServiceError(Refused):
    """Raise from a service handler to answer the call with an error ``error_code`` and
    ``error_message``; the caller gets :class:`RemoteCallError` with them."""

    code = "service_error"

    def __init__(self, error_code: str, message: str = "") -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.error_message = message


#: Reason codes (of :class:`ChannelLost`, :class:`ChannelOpenFailed`,
#: :class:`HubRequestFailed`) that say the protocol was broken: the codes of the
#: :class:`RemoteProtocolError` subclasses a peer or this side's channel reports by code --
#: all but ``key_mismatch`` and ``tls_certificate_rejected`` (never sent as codes) and
#: ``resource_exhausted`` (a worker also answers it when a budget is full).
PROTOCOL_FAILURE_CODES: Final = frozenset(
    cls.code
    for cls in (
        RecordError,
        LinkProtocolError,
        FrameTooLarge,
        UnsupportedProtocolVersion,
        UnexpectedMessage,
        RelayViolation,
        HandshakeError,
        MessageLengthError,
        LowOrderPoint,
        BadSignature,
        DecryptError,
        RekeyError,
        ChannelProtocolError,
        UnexpectedStreamMessage,
        FlowControlError,
        Socks5Error,
    )
)
