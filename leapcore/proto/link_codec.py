"""The link codec: every message between a peer (worker or client) and the hub (sans-IO).

A link carries a sequence of frames, whatever the transport (a WebSocket
message or an HTTP/2 stream's bytes)::

    frame        = length:u32be  kind:u8  body         length = 1 + len(body)
    kind 0x01    control record: body = a UTF-8 JSON object with a "type" field
    kind 0x02    channel data:   body = channel_id:u64be  correlation_id:u64be
                                        flags:u8  ciphertext (0..65535 bytes)

Control records are decoded strictly into the attrs classes below: an
unknown ``type``, an unknown, missing or mistyped field is a
:class:`~leapcore.errors.LinkProtocolError`. Byte fields travel as standard
base64. Data frames are the hot path and have a fixed binary layout; their
*meaning* (flags, correlation ids, sizes) is checked by the relay rules and
the channel protocol, so that a bad data frame can fail its channel alone.

**Field limits.** Every string a peer controls has a maximum length
(:mod:`leapcore.proto.link_fields` holds them). The decoder checks them after the
types: a breach is a :class:`~leapcore.errors.LinkProtocolError` (code
``link_protocol_error``) naming the field. :func:`encode` checks the same limits (a
:class:`~leapcore.errors.LocalError`), except that free text is clipped rather than
refused, so that an error message that quotes a peer's input can always be sent.

:class:`LinkDecoder` is incremental and bounded: it buffers at most one
partial frame and refuses a length prefix above the limit before buffering.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any, ClassVar, Final

import attrs

from ..errors import FrameTooLarge, LinkProtocolError, LocalError, RecordError
from ..records import b64decode_strict, b64encode, structure_strict, unstructure
from .limits import MAX_CIPHERTEXT
from .link_fields import check_fields, clip_text

__all__ = [
    "CLOSE_CODES",
    "CONTROL_TYPES",
    "KIND_CONTROL",
    "KIND_DATA",
    "LINK_ERRORS",
    "MAX_CONTROL_BODY",
    "OPEN_ERRORS",
    "PROTOCOL_VERSION",
    "WORKER_OPEN_ERRORS",
    "ChannelAccept",
    "ChannelClose",
    "ChannelCredit",
    "ChannelData",
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
    "LinkDecoder",
    "LinkMessage",
    "OpenChannel",
    "Register",
    "Registered",
    "WorkerGreeting",
    "encode",
    "encode_many",
]

PROTOCOL_VERSION: Final = 1

#: Why a worker refused a channel (``channel_reject``).
WORKER_OPEN_ERRORS: Final = frozenset(
    {
        "invalid_max_message_size",
        "channel_already_active",
        "no_authenticated_user",
        "permission_denied",
        "handshake_failed",
        "resource_exhausted",
    }
)
#: Why a channel open failed, as the client hears it (``channel_refused``): the worker's
#: reasons, relayed, or the hub's own.
OPEN_ERRORS: Final = WORKER_OPEN_ERRORS | {
    "not_found",
    "worker_offline",
    "unavailable",
    "timeout",
    "quota_exceeded",
}
#: Why a channel ended (``channel_close``).
CLOSE_CODES: Final = frozenset(
    {"closed", "relay_violation", "decrypt_failed", "link_lost", "replaced", "shutdown"}
)
#: Why a link ended (``error`` records).
LINK_ERRORS: Final = frozenset(
    {
        "unauthenticated",
        "worker_deleted",
        "already_exists",
        "permission_denied",
        "quota_exceeded",
        "invalid_argument",
        "unsupported_protocol_version",
        "link_protocol_error",
        "frame_too_large",
        "unexpected_message",
        "unavailable",
        "internal",
    }
)
KIND_CONTROL: Final = 0x01
KIND_DATA: Final = 0x02
#: A control record's JSON, at most. Message 2 of the handshake (49904 B) is the largest
#: field: 66 540 characters of base64.
MAX_CONTROL_BODY: Final = 128 * 1024
_DATA_HEADER: Final = struct.Struct(">QQB")
_LENGTH: Final = struct.Struct(">I")
_MAX_DATA_BODY: Final = _DATA_HEADER.size + MAX_CIPHERTEXT
#: The largest ``length`` a frame may declare (kind byte included).
MAX_FRAME_LENGTH: Final = 1 + max(MAX_CONTROL_BODY, _MAX_DATA_BODY)
_U64: Final = 2**64 - 1


# ---------------------------------------------------------------------------
# Messages


@attrs.frozen
class ChannelData:
    """One encrypted channel frame relayed through the hub (the hot path)."""

    channel_id: int
    correlation_id: int
    flags: int
    ciphertext: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")

    type: ClassVar[str] = "data"


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
    ``already_exists``)."""

    type: ClassVar[str] = "connect"

    protocol_version: int
    auth_token: str = attrs.field(repr=False)
    name: str | None = None
    labels: dict[str, str] | None = None


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
    type: ClassVar[str] = "client_greeting"
    user_id: str
    user_name: str
    hub_id: str = ""


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


LinkMessage = ControlMessage | ChannelData

#: Wire name -> record class.
CONTROL_TYPES: Final[dict[str, type[ControlMessage]]] = {
    cls.type: cls
    for cls in (
        Register,
        Registered,
        Connect,
        WorkerGreeting,
        ClientHello,
        ClientGreeting,
        Heartbeat,
        HeartbeatAck,
        OpenChannel,
        ChannelRequest,
        ChannelAccept,
        ChannelReject,
        ChannelOpened,
        ChannelRefused,
        ChannelClose,
        ChannelCredit,
        GoAway,
        Deregister,
        DeregisterAck,
        HubRequest,
        HubResponse,
        ErrorMessage,
    )
}
_BYTES_FIELDS: Final[dict[type, tuple[str, ...]]] = {
    cls: tuple(
        f.name
        for f in attrs.fields(cls)  # type: ignore[arg-type]
        if f.type in (bytes, "bytes", bytes | None, "bytes | None")
    )
    for cls in CONTROL_TYPES.values()
}


def _check_ranges(msg: ControlMessage) -> None:
    for field in attrs.fields(type(msg)):  # type: ignore[arg-type]
        value = getattr(msg, field.name)
        if isinstance(value, int) and not 0 <= value <= _U64:
            raise LinkProtocolError(f"{msg.type}.{field.name} is out of range: {value}")


# ---------------------------------------------------------------------------
# Encoding


def encode(message: LinkMessage) -> bytes:
    """One frame, ready to write."""
    if isinstance(message, ChannelData):
        if len(message.ciphertext) > MAX_CIPHERTEXT:
            raise LocalError(
                f"channel ciphertext of {len(message.ciphertext)} bytes exceeds {MAX_CIPHERTEXT}"
            )
        if not (0 <= message.channel_id <= _U64 and 0 <= message.correlation_id <= _U64):
            raise LocalError("channel and correlation ids must fit in 64 bits")
        if not 0 <= message.flags <= 255:
            raise LocalError("channel flags must fit in one byte")
        header = _DATA_HEADER.pack(message.channel_id, message.correlation_id, message.flags)
        length = 1 + len(header) + len(message.ciphertext)
        return b"".join((_LENGTH.pack(length), bytes((KIND_DATA,)), header, message.ciphertext))
    if type(message) not in _BYTES_FIELDS:
        raise LocalError(f"not a link message: {type(message).__name__}")
    message = clip_text(message)
    check_fields(message)
    record = unstructure(message)
    for name in _BYTES_FIELDS[type(message)]:
        if record[name] is not None:
            record[name] = b64encode(record[name])
    record = {"type": message.type, **{k: v for k, v in record.items() if v is not None}}
    body = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_CONTROL_BODY:
        raise LocalError(f"{message.type} record of {len(body)} bytes exceeds {MAX_CONTROL_BODY}")
    return _LENGTH.pack(1 + len(body)) + bytes((KIND_CONTROL,)) + body


def encode_many(messages: Iterable[LinkMessage]) -> bytes:
    return b"".join(encode(m) for m in messages)


# ---------------------------------------------------------------------------
# Decoding


def _decode_control(body: bytes) -> ControlMessage:
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise LinkProtocolError(f"control record is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LinkProtocolError(f"control record must be a JSON object, got {type(data).__name__}")
    kind = data.pop("type", None)
    if not isinstance(kind, str):
        raise LinkProtocolError("control record has no string 'type' field")
    cls = CONTROL_TYPES.get(kind)
    if cls is None:
        raise LinkProtocolError(f"unknown control record type {kind!r}")
    for name in _BYTES_FIELDS[cls]:
        value = data.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise LinkProtocolError(f"{kind}.{name} must be a base64 string")
            try:
                data[name] = b64decode_strict(value, field=f"{kind}.{name}")
            except RecordError as exc:
                raise LinkProtocolError(str(exc)) from None
    message = structure_strict(data, cls, what=f"{kind} record", error=LinkProtocolError)
    _check_ranges(message)
    check_fields(message, error=LinkProtocolError)
    return message


def _decode_data(body: bytes) -> ChannelData:
    if len(body) < _DATA_HEADER.size:
        raise LinkProtocolError(
            f"data frame body of {len(body)} bytes is shorter than its {_DATA_HEADER.size}-byte"
            " header"
        )
    channel_id, correlation_id, flags = _DATA_HEADER.unpack_from(body)
    return ChannelData(channel_id, correlation_id, flags, body[_DATA_HEADER.size :])


class LinkDecoder:
    """Incremental frame decoder: :meth:`receive_data` as bytes arrive, then
    :meth:`next_message` until it returns ``None``.

    Errors surface in order: messages before a bad frame are returned first. After an
    error the decoder is broken for good (the link must close): every later call raises
    the same error again.
    """

    def __init__(self, max_frame_length: int = MAX_FRAME_LENGTH) -> None:
        self._buffer = bytearray()
        self._max = max_frame_length
        self._error: LinkProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data

    def next_message(self) -> LinkMessage | None:
        """The next whole message, or ``None`` until more bytes arrive."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except LinkProtocolError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def feed(self, data: bytes) -> list[LinkMessage]:
        """:meth:`receive_data` then every whole message (raises at the first bad frame)."""
        self.receive_data(data)
        out = []
        while (message := self.next_message()) is not None:
            out.append(message)
        return out

    def _next(self) -> LinkMessage | None:
        buf = self._buffer
        if len(buf) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(buf)
        if not 1 <= length <= self._max:
            raise FrameTooLarge(f"frame length {length} is outside 1..{self._max}")
        end = _LENGTH.size + length
        if len(buf) < end:
            return None
        kind = buf[_LENGTH.size]
        if kind == KIND_DATA and _DATA_HEADER.size < length <= 1 + _MAX_DATA_BODY:
            # The hot path: header unpacked in place, the ciphertext copied once.
            start = _LENGTH.size + 1
            channel_id, correlation_id, flags = _DATA_HEADER.unpack_from(buf, start)
            with memoryview(buf) as view:
                ciphertext = bytes(view[start + _DATA_HEADER.size : end])
            del buf[:end]
            return ChannelData(channel_id, correlation_id, flags, ciphertext)
        body = bytes(buf[_LENGTH.size + 1 : end])
        del buf[:end]
        if kind == KIND_DATA:
            if len(body) > _MAX_DATA_BODY:
                raise FrameTooLarge(
                    f"data frame ciphertext of {len(body) - _DATA_HEADER.size} bytes exceeds "
                    f"{MAX_CIPHERTEXT}"
                )
            return _decode_data(body)
        if kind == KIND_CONTROL:  # the length check above bounds a control record
            return _decode_control(body)
        raise LinkProtocolError(f"unknown frame kind 0x{kind:02x}")
