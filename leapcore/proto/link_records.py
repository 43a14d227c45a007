"""The control records of the link protocol: one attrs class per ``type`` (sans-IO).

:mod:`leapcore.proto.link_codec` encodes and decodes them (and re-exports every name
here); this module only says what each record holds.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

__all__ = [
    "ChannelAccept",
    "ChannelClose",
    "ChannelCredit",
    "ChannelOpened",
    "ChannelRefused",
    "ChannelReject",
    "ChannelRequest",
    "ClientGreeting",
    "ClientHello",
    "Connect",
    "ControlMessage",
    "Deregister",
    "DeregisterAck",
    "ErrorMessage",
    "GoAway",
    "Heartbeat",
    "HeartbeatAck",
    "HubRequest",
    "HubResponse",
    "OpenChannel",
    "Register",
    "Registered",
    "RotateToken",
    "RotateTokenAck",
    "WorkerGreeting",
]


class ControlMessage:
    """Base of the control records; ``type`` names the record on the wire."""

    type: ClassVar[str]


# -- hello and greetings ------------------------------------------------------


@attrs.frozen
class Register(ControlMessage):
    """Worker -> hub, first frame of a registration link: consume a registration key.
    The hub answers :class:`Registered` (or :class:`ErrorMessage`) and closes the link."""

    type: ClassVar[str] = "register"

    protocol_version: int
    registration_key: str = attrs.field(repr=False)
    name: str
    version: str
    labels: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class Registered(ControlMessage):
    """Hub -> worker: the new worker's id and auth token, and the id of the hub that
    issued them (``hub_id``, the store's; the worker keeps it with its identity)."""

    type: ClassVar[str] = "registered"
    worker_id: str
    auth_token: str = attrs.field(repr=False)
    hub_id: str = ""


@attrs.frozen
class Connect(ControlMessage):
    """Worker -> hub, first frame of a worker link. ``name`` and ``labels``, when present,
    are what the worker's configuration says now: the hub records them before it greets
    (an owner's other live worker already called ``name`` ends the link
    ``already_exists``). ``capabilities`` (the service groups it serves,
    :mod:`leapcore.proto.capabilities`), ``os`` and ``arch`` are recorded likewise; a
    worker older than them leaves them out."""

    type: ClassVar[str] = "connect"

    protocol_version: int
    auth_token: str = attrs.field(repr=False)
    name: str | None = None
    labels: dict[str, str] | None = None
    capabilities: list[str] | None = None
    os: str | None = None
    arch: str | None = None


@attrs.frozen
class WorkerGreeting(ControlMessage):
    """Hub -> worker, the hub's first frame: who the worker is, who owns it, and which hub
    this is (``hub_id``)."""

    type: ClassVar[str] = "worker_greeting"

    worker_id: str
    owner_id: str
    owner_name: str
    hub_id: str = ""


@attrs.frozen
class ClientHello(ControlMessage):
    """Client -> hub, first frame of a client link."""

    type: ClassVar[str] = "client_hello"

    protocol_version: int
    api_token: str = attrs.field(repr=False)


@attrs.frozen
class ClientGreeting(ControlMessage):
    """Hub -> client: who signed in, the hub's id, and when the API token the client signed
    in with expires (``token_expires_at``, ms since the epoch; absent: never)."""

    type: ClassVar[str] = "client_greeting"
    user_id: str
    user_name: str
    hub_id: str = ""
    token_expires_at: int | None = None


# -- liveness -------------------------------------------------------------------


@attrs.frozen
class Heartbeat(ControlMessage):
    """Peer -> hub. A worker's first heartbeat carries its three public keys and mode."""

    type: ClassVar[str] = "heartbeat"

    seq: int
    encryption_mode: str | None = None
    public_key: bytes | None = None
    mlkem_public_key: bytes | None = None
    slhdsa_public_key: bytes | None = None


@attrs.frozen
class HeartbeatAck(ControlMessage):
    """Hub -> peer: echoes the heartbeat's ``seq`` (the peer measures latency with it)."""

    type: ClassVar[str] = "heartbeat_ack"

    seq: int


# -- channel opening -----------------------------------------------------------


@attrs.frozen
class OpenChannel(ControlMessage):
    """Client -> hub: open a channel to ``worker_id`` with handshake message 1."""

    type: ClassVar[str] = "open_channel"

    request_id: int
    worker_id: str
    message1: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    max_message_size: int


@attrs.frozen
class ChannelRequest(ControlMessage):
    """Hub -> worker: a channel is wanted by the hub-authenticated ``user_id``."""

    type: ClassVar[str] = "channel_request"

    request_id: int
    channel_id: int
    user_id: str
    message1: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    max_message_size: int


@attrs.frozen
class ChannelAccept(ControlMessage):
    """Worker -> hub: handshake message 2 and the negotiated size, min(hub, worker)."""

    type: ClassVar[str] = "channel_accept"

    request_id: int
    channel_id: int
    message2: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    max_message_size: int


@attrs.frozen
class ChannelReject(ControlMessage):
    """Worker -> hub: the open failed (see ``OPEN_ERROR_CODES``)."""

    type: ClassVar[str] = "channel_reject"

    request_id: int
    channel_id: int
    code: str
    message: str


@attrs.frozen
class ChannelOpened(ControlMessage):
    """Hub -> client: the worker accepted."""

    type: ClassVar[str] = "channel_opened"

    request_id: int
    channel_id: int
    message2: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    max_message_size: int


@attrs.frozen
class ChannelRefused(ControlMessage):
    """Hub -> client: the open failed, by the worker or by the hub."""

    type: ClassVar[str] = "channel_refused"

    request_id: int
    code: str
    message: str


@attrs.frozen
class ChannelClose(ControlMessage):
    """Any direction: the channel is gone (the hub also sends it when a relay rule breaks)."""

    type: ClassVar[str] = "channel_close"

    channel_id: int
    code: str
    message: str


@attrs.frozen
class ChannelCredit(ControlMessage):
    """Hub -> peer: ``credit`` more bytes of ciphertext may be sent on ``channel_id``.

    Each sending end starts a channel with :data:`CHANNEL_CREDIT` bytes; every data frame
    it sends costs its ciphertext's length (CLOSE frames cost nothing). The hub returns
    credit once the frames were written to the other end's link. ``credit`` is > 0.
    """

    type: ClassVar[str] = "channel_credit"

    channel_id: int
    credit: int


# -- hub control ---------------------------------------------------------------


@attrs.frozen
class GoAway(ControlMessage):
    """Hub -> peer: the hub is going away; reconnect after ``reconnect_delay`` seconds."""

    type: ClassVar[str] = "go_away"

    reconnect_delay: int
    reason: str


@attrs.frozen
class Deregister(ControlMessage):
    """Hub -> worker: the worker was deregistered; acknowledge, wipe state, exit."""

    type: ClassVar[str] = "deregister"

    request_id: int
    reason: str


@attrs.frozen
class DeregisterAck(ControlMessage):
    type: ClassVar[str] = "deregister_ack"
    request_id: int


@attrs.frozen
class RotateToken(ControlMessage):
    """Hub -> worker: the worker's token expires soon; here is its successor, valid until
    ``expires_at`` (ms since the epoch, UTC). The hub accepts both tokens until the worker
    uses the new one or acknowledges it; the worker saves it, then answers
    :class:`RotateTokenAck` with the same ``request_id``."""

    type: ClassVar[str] = "rotate_token"

    request_id: int
    auth_token: str = attrs.field(repr=False)
    expires_at: int


@attrs.frozen
class RotateTokenAck(ControlMessage):
    """Worker -> hub: the token of ``rotate_token`` ``request_id`` is saved durably; the
    hub makes it the worker's token and retires the old one."""

    type: ClassVar[str] = "rotate_token_ack"
    request_id: int


@attrs.frozen
class HubRequest(ControlMessage):
    """Client -> hub: a call to the hub itself (list workers, mint a key, …)."""

    type: ClassVar[str] = "hub_request"

    request_id: int
    method: str
    params: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class HubResponse(ControlMessage):
    """Hub -> client: exactly one of ``result`` or (``error_code``, ``error_message``)."""

    type: ClassVar[str] = "hub_response"

    request_id: int
    result: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None


@attrs.frozen
class ErrorMessage(ControlMessage):
    """Either direction: a fatal link error; the sender closes the link after it. The hub
    names itself in ``hub_id`` (a worker retires its identity on ``worker_deleted`` only
    from the hub it registered with); a peer leaves it empty."""

    type: ClassVar[str] = "error"

    code: str
    message: str
    hub_id: str = ""
