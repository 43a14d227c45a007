"""Channel messages: the plaintext inside one channel's encrypted session (sans-IO).

A channel message is ``kind (u8) || body``; integers are big-endian. The body
layouts, exactly (``rest`` = every remaining byte, possibly none)::

    0x01 REQUEST         method_len u8 | method | payload (rest)
    0x02 RESPONSE        payload (rest)
    0x03 ERROR           code_len u8 | code | message_len u16 | message
    0x04 STREAM_REQUEST  method_len u8 | method | payload (rest)
    0x05 STREAM_ITEM     payload (rest)
    0x06 STREAM_END      (empty)
    0x07 CANCEL          (empty)
    0x08 BYTES_OPEN      initial_window u32 | method_len u8 | method | payload (rest)
    0x09 BYTES_ACCEPT    initial_window u32
    0x0A BYTES_DATA      data (rest, 1..65518 bytes)
    0x0B WINDOW_UPDATE   increment u32
    0x0C BYTES_EOF       (empty)
    0x0D BYTES_RESET     code_len u8 | code | message_len u16 | message
    0x0E BYTES_OPEN_EARLY as BYTES_OPEN; the opener may send data before the accept
    0x10 REKEY_REQUEST   dh_pub (32) | mlkem_ct (rest: 0 or 1568 bytes)
    0x11 REKEY_ACK       dh_pub (32)
    0x12 REKEY_REJECT    retry_after_ms u32

Field rules: a method matches ``^[a-z][a-z0-9_.-]{0,63}$`` (ASCII); a code is
1..64 bytes of ``[A-Za-z0-9_.-]``; an error message is UTF-8, at most 4096
bytes; windows and increments are 1..2^32-1.

:func:`decode` is strict: an unknown kind, a body that is too short or too
long, bad UTF-8, or a field outside its rule raises
:class:`~leapcore.errors.ChannelProtocolError`. :func:`encode` applies the
same rules to local input and raises :class:`~leapcore.errors.InvalidMessage`.
How big a whole message may be (``max_message_size``) is the caller's limit.
"""

from __future__ import annotations

import enum
import functools
import re
import struct
from collections.abc import Sequence
from typing import Final

import attrs

from ..crypto.primitives import MLKEM_CIPHERTEXT_SIZE, X25519_KEY_SIZE
from ..crypto.rekey import RekeyRequest
from ..errors import ChannelProtocolError, InvalidMessage, LeapcoreError
from .limits import MAX_PLAINTEXT

__all__ = [
    "MAX_BYTES_DATA",
    "MAX_CODE_LENGTH",
    "MAX_ERROR_MESSAGE",
    "MAX_METHOD_LENGTH",
    "MAX_WINDOW",
    "BytesAccept",
    "BytesData",
    "BytesEof",
    "BytesOpen",
    "BytesOpenEarly",
    "BytesReset",
    "Cancel",
    "ErrorReply",
    "Message",
    "MessageKind",
    "RekeyAck",
    "RekeyReject",
    "RekeyRequest",
    "Request",
    "Response",
    "StreamEnd",
    "StreamItem",
    "StreamRequest",
    "WindowUpdate",
    "decode",
    "decode_chunks",
    "encode",
    "kind_of",
]

MAX_METHOD_LENGTH: Final = 64
MAX_CODE_LENGTH: Final = 64
MAX_ERROR_MESSAGE: Final = 4096
MAX_WINDOW: Final = 2**32 - 1
#: BYTES_DATA always fits one transport frame: 65519 - 1 (the kind byte).
MAX_BYTES_DATA: Final = MAX_PLAINTEXT - 1

_METHOD = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")


class MessageKind(enum.IntEnum):
    """The first byte of every channel message."""

    REQUEST = 0x01
    RESPONSE = 0x02
    ERROR = 0x03
    STREAM_REQUEST = 0x04
    STREAM_ITEM = 0x05
    STREAM_END = 0x06
    CANCEL = 0x07
    BYTES_OPEN = 0x08
    BYTES_ACCEPT = 0x09
    BYTES_DATA = 0x0A
    WINDOW_UPDATE = 0x0B
    BYTES_EOF = 0x0C
    BYTES_RESET = 0x0D
    BYTES_OPEN_EARLY = 0x0E
    REKEY_REQUEST = 0x10
    REKEY_ACK = 0x11
    REKEY_REJECT = 0x12


# ---------------------------------------------------------------------------
# Messages


@attrs.frozen
class Request:
    """An RPC call; answered by one :class:`Response` or :class:`ErrorReply`."""

    method: str
    payload: bytes = b""


@attrs.frozen
class Response:
    payload: bytes = b""


@attrs.frozen
class ErrorReply:
    """An error answer to a request, a stream request or a byte-stream open."""

    code: str
    message: str = ""


@attrs.frozen
class StreamRequest:
    """Opens a server stream: any number of :class:`StreamItem`, then :class:`StreamEnd`."""

    method: str
    payload: bytes = b""


@attrs.frozen
class StreamItem:
    payload: bytes = b""


@attrs.frozen
class StreamEnd:
    pass


@attrs.frozen
class Cancel:
    """The requester gives up on its request or server stream."""


@attrs.frozen
class BytesOpen:
    """Opens a byte stream; ``initial_window`` is how much the opener will receive unasked."""

    initial_window: int
    method: str
    payload: bytes = b""


@attrs.frozen
class BytesOpenEarly(BytesOpen):
    """Opens a byte stream on which the opener may send data before the acceptor answers
    (up to :data:`~leapcore.proto.channel_windows.EARLY_WINDOW` bytes; docs/protocol.md
    4.6). Same fields and layout as :class:`BytesOpen`."""


@attrs.frozen
class BytesAccept:
    initial_window: int


@attrs.frozen
class BytesData:
    data: bytes


@attrs.frozen
class WindowUpdate:
    increment: int


@attrs.frozen
class BytesEof:
    """Half-close: the sender sends no more data on this byte stream."""


@attrs.frozen
class BytesReset:
    """Aborts a byte stream in both directions."""

    code: str
    message: str = ""


@attrs.frozen
class RekeyAck:
    dh_pub: bytes


@attrs.frozen
class RekeyReject:
    retry_after_ms: int


Message = (
    Request
    | Response
    | ErrorReply
    | StreamRequest
    | StreamItem
    | StreamEnd
    | Cancel
    | BytesOpen
    | BytesOpenEarly
    | BytesAccept
    | BytesData
    | WindowUpdate
    | BytesEof
    | BytesReset
    | RekeyRequest
    | RekeyAck
    | RekeyReject
)

_KIND_OF: Final[dict[type, MessageKind]] = {
    Request: MessageKind.REQUEST,
    Response: MessageKind.RESPONSE,
    ErrorReply: MessageKind.ERROR,
    StreamRequest: MessageKind.STREAM_REQUEST,
    StreamItem: MessageKind.STREAM_ITEM,
    StreamEnd: MessageKind.STREAM_END,
    Cancel: MessageKind.CANCEL,
    BytesOpen: MessageKind.BYTES_OPEN,
    BytesOpenEarly: MessageKind.BYTES_OPEN_EARLY,
    BytesAccept: MessageKind.BYTES_ACCEPT,
    BytesData: MessageKind.BYTES_DATA,
    WindowUpdate: MessageKind.WINDOW_UPDATE,
    BytesEof: MessageKind.BYTES_EOF,
    BytesReset: MessageKind.BYTES_RESET,
    RekeyRequest: MessageKind.REKEY_REQUEST,
    RekeyAck: MessageKind.REKEY_ACK,
    RekeyReject: MessageKind.REKEY_REJECT,
}


def kind_of(message: Message) -> MessageKind:
    """The :class:`MessageKind` of a message object."""
    return _KIND_OF[type(message)]


# ---------------------------------------------------------------------------
# Field rules, shared by encode (local input) and decode (peer input)


def check_method(method: object, error: type[LeapcoreError] = InvalidMessage) -> str:
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise error(f"method {method!r} does not match ^[a-z][a-z0-9_.-]{{0,63}}$")
    return method


def check_code(code: object, error: type[LeapcoreError] = InvalidMessage) -> str:
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise error(f"error code {code!r} must be 1..64 characters of [A-Za-z0-9_.-]")
    return code


def check_error_message(message: object, error: type[LeapcoreError] = InvalidMessage) -> bytes:
    if not isinstance(message, str):
        raise error(f"error message must be a string, got {type(message).__name__}")
    try:
        raw = message.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"error message is not encodable as UTF-8 (character {exc.start})") from None
    if len(raw) > MAX_ERROR_MESSAGE:
        raise error(f"error message is {len(raw)} bytes of UTF-8; the limit is {MAX_ERROR_MESSAGE}")
    return raw


def check_window(value: object, what: str, error: type[LeapcoreError] = InvalidMessage) -> int:
    if type(value) is not int or not 1 <= value <= MAX_WINDOW:
        raise error(f"{what} must be an integer in 1..{MAX_WINDOW}, got {value!r}")
    return value


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidMessage(f"{what} must be bytes, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------
# Encoding


@functools.lru_cache(maxsize=512)
def _method_field_cached(method: str) -> bytes:
    raw = check_method(method).encode("ascii")
    return bytes([len(raw)]) + raw


def _method_field(method: str) -> bytes:
    """``len || name``; valid names are cached (a channel uses few, on every request)."""
    if not isinstance(method, str):
        check_method(method)
    return _method_field_cached(method)


@functools.lru_cache(maxsize=512)
def _method_from_wire(raw: bytes) -> str:
    """A received method name, checked once per distinct name (errors are not cached)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
    return check_method(text, ChannelProtocolError)


def _error_fields(code: str, message: str) -> bytes:
    raw_code = check_code(code).encode("ascii")
    raw_message = check_error_message(message)
    return bytes([len(raw_code)]) + raw_code + _U16.pack(len(raw_message)) + raw_message


def encode(message: Message) -> bytes:
    """The plaintext of ``message``: ``kind || body``. Invalid fields raise
    :class:`~leapcore.errors.InvalidMessage`."""
    kind = _KIND_OF.get(type(message))
    if kind is None:
        raise InvalidMessage(f"not a channel message: {type(message).__name__}")
    head = bytes([kind])
    match message:
        case Request(method, payload) | StreamRequest(method, payload):
            return head + _method_field(method) + _check_bytes(payload, "payload")
        case Response(payload) | StreamItem(payload):
            return head + _check_bytes(payload, "payload")
        case ErrorReply(code, text) | BytesReset(code, text):
            return head + _error_fields(code, text)
        case StreamEnd() | Cancel() | BytesEof():
            return head
        case BytesOpen(window, method, payload):
            window = check_window(window, "initial_window")
            return (
                head + _U32.pack(window) + _method_field(method) + _check_bytes(payload, "payload")
            )
        case BytesAccept(window):
            return head + _U32.pack(check_window(window, "initial_window"))
        case BytesData(data):
            data = _check_bytes(data, "data")
            if not 1 <= len(data) <= MAX_BYTES_DATA:
                raise InvalidMessage(
                    f"BYTES_DATA carries 1..{MAX_BYTES_DATA} bytes, got {len(data)}"
                )
            return head + data
        case WindowUpdate(increment):
            return head + _U32.pack(check_window(increment, "window increment"))
        case RekeyRequest(dh_pub, mlkem_ct):
            if len(_check_bytes(dh_pub, "dh_pub")) != X25519_KEY_SIZE:
                raise InvalidMessage(f"rekey dh_pub must be 32 bytes, got {len(dh_pub)}")
            if len(_check_bytes(mlkem_ct, "mlkem_ct")) not in (0, MLKEM_CIPHERTEXT_SIZE):
                raise InvalidMessage(f"rekey mlkem_ct must be 0 or 1568 bytes, got {len(mlkem_ct)}")
            return head + dh_pub + mlkem_ct
        case RekeyAck(dh_pub):
            if len(_check_bytes(dh_pub, "dh_pub")) != X25519_KEY_SIZE:
                raise InvalidMessage(f"rekey dh_pub must be 32 bytes, got {len(dh_pub)}")
            return head + dh_pub
        case RekeyReject(retry):
            if type(retry) is not int or not 0 <= retry <= MAX_WINDOW:
                raise InvalidMessage(f"retry_after_ms must be an integer in 0..{MAX_WINDOW}")
            return head + _U32.pack(retry)
    raise InvalidMessage(f"not a channel message: {type(message).__name__}")  # pragma: no cover


# ---------------------------------------------------------------------------
# Decoding


class _JoinFirst(Exception):
    """A field reaches past the first chunk: decode the joined message instead."""


class _Reader:
    """Reads fields off one message body; every shortfall is a ChannelProtocolError.

    ``tail``: the message's further chunks when it came chunked. Fields are read from the
    first chunk; :meth:`rest` joins the remainder of it with the tail (the one copy of a
    large payload). A field that does not fit in the first chunk raises :class:`_JoinFirst`.
    """

    __slots__ = ("data", "name", "pos", "tail")

    def __init__(self, name: str, data: bytes, tail: Sequence[bytes] = ()) -> None:
        self.name = name
        self.data = data  # the whole message (or its first chunk): the body starts at 1
        self.pos = 1
        self.tail = tail

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data) and self.tail:
            raise _JoinFirst
        if end > len(self.data):
            raise ChannelProtocolError(
                f"{self.name} body too short: {what} needs {n} bytes at offset {self.pos - 1}, "
                f"{len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = _U16.unpack(self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def rest(self) -> bytes:
        if self.tail:
            out = b"".join([memoryview(self.data)[self.pos :], *self.tail])
            self.tail = ()
        else:
            out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def text(self, length: int, what: str) -> str:
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ChannelProtocolError(
                f"{self.name}: {what} is not valid UTF-8 (byte {exc.start})"
            ) from None

    def method(self) -> str:
        length = self.u8("method length")
        start = self.pos
        raw = self.take(length, "method")
        try:
            return _method_from_wire(bytes(raw))
        except ChannelProtocolError:
            self.pos = start
            text = self.text(length, "method")  # the precise error for bad UTF-8, if that
            return check_method(text, ChannelProtocolError)

    def error_fields(self) -> tuple[str, str]:
        code = self.text(self.u8("code length"), "code")
        check_code(code, ChannelProtocolError)
        length = self.u16("message length")
        if length > MAX_ERROR_MESSAGE:
            raise ChannelProtocolError(
                f"{self.name}: message length {length} exceeds {MAX_ERROR_MESSAGE}"
            )
        return code, self.text(length, "message")

    def end(self) -> None:
        if self.tail:
            raise _JoinFirst
        extra = len(self.data) - self.pos
        if extra:
            raise ChannelProtocolError(
                f"{self.name} body too long: {extra} unexpected trailing byte(s)"
            )


_KINDS: Final = {kind.value: kind for kind in MessageKind}


def decode_chunks(chunks: Sequence[bytes]) -> Message:
    """:func:`decode` of ``b"".join(chunks)``, the same result or error, but a large payload
    is copied once (from the chunks), not joined and then sliced."""
    if len(chunks) == 1:
        return decode(chunks[0])
    first = next((i for i, chunk in enumerate(chunks) if chunk), None)
    if first is None:
        return decode(b"")
    try:
        return _decode(chunks[first], chunks[first + 1 :])
    except _JoinFirst:
        return decode(b"".join(chunks))


_BYTES_DATA: Final = MessageKind.BYTES_DATA.value


def decode(plaintext: bytes) -> Message:
    """Parse one complete channel message (strict; see the module docstring)."""
    # The most frequent message, a whole BYTES_DATA, without the general parser.
    if plaintext and plaintext[0] == _BYTES_DATA and 1 < len(plaintext) <= MAX_BYTES_DATA + 1:
        return BytesData(plaintext[1:])
    return _decode(plaintext, ())


def _decode(plaintext: bytes, tail: Sequence[bytes]) -> Message:
    if not plaintext:
        raise ChannelProtocolError("empty channel message: the kind byte is missing")
    kind = _KINDS.get(plaintext[0])
    if kind is None:
        raise ChannelProtocolError(f"unknown channel message kind 0x{plaintext[0]:02x}")
    r = _Reader(kind.name, plaintext, tail)
    message: Message
    match kind:
        case MessageKind.REQUEST:
            message = Request(r.method(), r.rest())
        case MessageKind.RESPONSE:
            message = Response(r.rest())
        case MessageKind.ERROR:
            message = ErrorReply(*r.error_fields())
        case MessageKind.STREAM_REQUEST:
            message = StreamRequest(r.method(), r.rest())
        case MessageKind.STREAM_ITEM:
            message = StreamItem(r.rest())
        case MessageKind.STREAM_END:
            message = StreamEnd()
        case MessageKind.CANCEL:
            message = Cancel()
        case MessageKind.BYTES_OPEN:
            window = check_window(r.u32("initial_window"), "initial_window", ChannelProtocolError)
            message = BytesOpen(window, r.method(), r.rest())
        case MessageKind.BYTES_OPEN_EARLY:
            window = check_window(r.u32("initial_window"), "initial_window", ChannelProtocolError)
            message = BytesOpenEarly(window, r.method(), r.rest())
        case MessageKind.BYTES_ACCEPT:
            window = check_window(r.u32("initial_window"), "initial_window", ChannelProtocolError)
            message = BytesAccept(window)
        case MessageKind.BYTES_DATA:
            data = r.rest()
            if not data:
                raise ChannelProtocolError("BYTES_DATA body too short: it carries no data")
            if len(data) > MAX_BYTES_DATA:
                raise ChannelProtocolError(
                    f"BYTES_DATA body too long: {len(data)} bytes of data, at most "
                    f"{MAX_BYTES_DATA} (one frame)"
                )
            message = BytesData(data)
        case MessageKind.WINDOW_UPDATE:
            increment = r.u32("increment")
            message = WindowUpdate(check_window(increment, "increment", ChannelProtocolError))
        case MessageKind.BYTES_EOF:
            message = BytesEof()
        case MessageKind.BYTES_RESET:
            message = BytesReset(*r.error_fields())
        case MessageKind.REKEY_REQUEST:
            dh_pub = r.take(X25519_KEY_SIZE, "dh_pub")
            ct = r.rest()
            if len(ct) not in (0, MLKEM_CIPHERTEXT_SIZE):
                raise ChannelProtocolError(
                    f"REKEY_REQUEST mlkem_ct must be 0 or {MLKEM_CIPHERTEXT_SIZE} bytes, "
                    f"got {len(ct)}"
                )
            message = RekeyRequest(dh_pub, ct)
        case MessageKind.REKEY_ACK:
            message = RekeyAck(r.take(X25519_KEY_SIZE, "dh_pub"))
        case MessageKind.REKEY_REJECT:
            message = RekeyReject(r.u32("retry_after_ms"))
    r.end()
    return message
