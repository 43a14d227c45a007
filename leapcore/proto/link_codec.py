"""The link codec: every message between a peer (worker or client) and the hub (sans-IO).

A link carries a sequence of frames, whatever the transport (a WebSocket
message or an HTTP/2 stream's bytes)::

    frame        = length:u32be  kind:u8  body         length = 1 + len(body)
    kind 0x01    control record: body = a UTF-8 JSON object with a "type" field
    kind 0x02    channel data:   body = channel_id:u64be  correlation_id:u64be
                                        flags:u8  ciphertext (0..65535 bytes)

Control records are decoded strictly into the attrs classes of
:mod:`leapcore.proto.link_records` (re-exported here): an
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
from typing import ClassVar, Final

import attrs

from ..errors import FrameTooLarge, LinkProtocolError, LocalError, RecordError
from ..records import b64decode_strict, b64encode, structure_strict, unstructure
from .limits import MAX_CIPHERTEXT
from .link_fields import check_fields, clip_text
from .link_records import (
    ChannelAccept,
    ChannelClose,
    ChannelCredit,
    ChannelOpened,
    ChannelRefused,
    ChannelReject,
    ChannelRequest,
    ClientGreeting,
    ClientHello,
    Connect,
    ControlMessage,
    Deregister,
    DeregisterAck,
    ErrorMessage,
    GoAway,
    Heartbeat,
    HeartbeatAck,
    HubRequest,
    HubResponse,
    OpenChannel,
    Register,
    Registered,
    RotateToken,
    RotateTokenAck,
    WorkerGreeting,
)

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
    "RelayedData",
    "RotateToken",
    "RotateTokenAck",
    "WorkerGreeting",
    "decode_b64_fields",
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
        "token_expired",
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
#: Where a data frame's ciphertext starts (length prefix, kind byte, header).
_DATA_START: Final = _LENGTH.size + 1 + _DATA_HEADER.size
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

    @property
    def size(self) -> int:
        """The ciphertext's length (what the hub's relay rules and credit count)."""
        return len(self.ciphertext)


class RelayedData:
    """A data frame as the hub received it, kept whole: the hub forwards ``frame`` (the
    encoded link frame, length prefix included) unchanged, since it is exactly what
    encoding the same fields again would give. From
    :meth:`LinkDecoder.next_relayed`; ``size`` is the ciphertext's length."""

    __slots__ = ("channel_id", "correlation_id", "flags", "frame", "size")

    type: ClassVar[str] = "data"

    def __init__(
        self, channel_id: int, correlation_id: int, flags: int, size: int, frame: bytes
    ) -> None:
        self.channel_id = channel_id
        self.correlation_id = correlation_id
        self.flags = flags
        self.size = size
        self.frame = frame

    def __repr__(self) -> str:
        return (
            f"RelayedData(channel_id={self.channel_id}, correlation_id={self.correlation_id}, "
            f"flags={self.flags}, <{self.size} bytes>)"
        )

    def decoded(self) -> ChannelData:
        """The same frame as a :class:`ChannelData`."""
        return ChannelData(
            self.channel_id, self.correlation_id, self.flags, self.frame[_DATA_START:]
        )


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
        RotateToken,
        RotateTokenAck,
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


def encode(message: LinkMessage | RelayedData) -> bytes:
    """One frame, ready to write."""
    if isinstance(message, RelayedData):
        return message.frame
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
    decode_b64_fields(data, kind, _BYTES_FIELDS[cls])
    message = structure_strict(data, cls, what=f"{kind} record", error=LinkProtocolError)
    _check_ranges(message)
    check_fields(message, error=LinkProtocolError)
    return message


def decode_b64_fields(data: dict[str, object], kind: str, names: Iterable[str]) -> None:
    """Decode in place the base64 byte fields ``names`` of the record ``kind`` (an absent
    one is left for the strict structuring to name); a bad one is a LinkProtocolError."""
    for name in names:
        value = data.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise LinkProtocolError(f"{kind}.{name} must be a base64 string")
            try:
                data[name] = b64decode_strict(value, field=f"{kind}.{name}")
            except RecordError as exc:
                raise LinkProtocolError(str(exc)) from None


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
        #: Immutable bytes received (``bytes``, or a read-only view) parsed where they
        #: are, from ``_pos``, while ``_buffer`` is empty: whole data frames are cut out of
        #: them without first being copied into the buffer. The rest (a partial frame, a
        #: control record) moves to the buffer.
        self._chunk: bytes | memoryview | None = None
        self._pos = 0
        self._max = max_frame_length
        self._error: LinkProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        chunk = 0 if self._chunk is None else len(self._chunk) - self._pos
        return len(self._buffer) + chunk

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._chunk is not None:
            self._spill()
        if not self._buffer and (
            type(data) is bytes or (isinstance(data, memoryview) and data.readonly)
        ):
            self._chunk, self._pos = data, 0
        else:
            self._buffer += data

    def _spill(self) -> None:
        """Move what is left of the chunk into the buffer (empty while there is a chunk)."""
        chunk, self._chunk = self._chunk, None
        if chunk is not None and self._pos < len(chunk):
            self._buffer += chunk[self._pos :]

    def next_message(self) -> LinkMessage | None:
        """The next whole message, or ``None`` until more bytes arrive."""
        message = self._guarded(False)
        assert not isinstance(message, RelayedData)
        return message

    def next_relayed(self) -> LinkMessage | RelayedData | None:
        """:meth:`next_message`, but a data frame comes as a :class:`RelayedData` (the
        hub's: it forwards the frame's bytes without decoding and encoding them again)."""
        return self._guarded(True)

    def _guarded(self, relay: bool) -> LinkMessage | RelayedData | None:
        if self._error is not None:
            raise self._error
        try:
            chunk = self._chunk
            if chunk is not None:
                message = self._from_chunk(chunk, relay)
                if message is not None:
                    return message
            return self._next(relay)
        except LinkProtocolError as exc:
            self._error = exc
            self._buffer.clear()
            self._chunk = None
            raise

    def _from_chunk(
        self, chunk: bytes | memoryview, relay: bool
    ) -> LinkMessage | RelayedData | None:
        """A whole data frame at the chunk's position, cut out in place; else ``None``,
        with what is left of the chunk moved to the buffer for :meth:`_next`."""
        pos = self._pos
        left = len(chunk) - pos
        if left >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(chunk, pos)
            end = pos + _LENGTH.size + length
            if (
                _DATA_HEADER.size < length <= 1 + _MAX_DATA_BODY
                and end - pos <= left
                and chunk[pos + _LENGTH.size] == KIND_DATA
            ):
                channel_id, correlation_id, flags = _DATA_HEADER.unpack_from(
                    chunk, pos + _LENGTH.size + 1
                )
                if end == len(chunk):
                    self._chunk = None
                else:
                    self._pos = end
                if relay:  # slicing bytes copies; a view is copied by bytes()
                    frame = chunk[pos:end]
                    return RelayedData(
                        channel_id,
                        correlation_id,
                        flags,
                        end - pos - _DATA_START,
                        frame if type(frame) is bytes else bytes(frame),
                    )
                ciphertext = chunk[pos + _DATA_START : end]
                return ChannelData(
                    channel_id,
                    correlation_id,
                    flags,
                    ciphertext if type(ciphertext) is bytes else bytes(ciphertext),
                )
        self._spill()
        return None

    def feed(self, data: bytes) -> list[LinkMessage]:
        """:meth:`receive_data` then every whole message (raises at the first bad frame)."""
        self.receive_data(data)
        out = []
        while (message := self.next_message()) is not None:
            out.append(message)
        return out

    def _next(self, relay: bool = False) -> LinkMessage | RelayedData | None:
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
                if relay:
                    frame = bytes(view[:end])
                else:
                    ciphertext = bytes(view[start + _DATA_HEADER.size : end])
            del buf[:end]
            if relay:
                return RelayedData(channel_id, correlation_id, flags, end - _DATA_START, frame)
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
