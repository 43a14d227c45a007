"""The hub-to-hub link (sans-IO): its records, its framing and the cluster secret's proofs.

Hubs sharing one database (:mod:`leapcore.hub.cluster`) carry channels to each other's
workers over hub-to-hub links, on a listener of their own (never the one clients use). A
link carries the link frames of :mod:`leapcore.proto.link_codec` (kinds 0x01 and 0x02,
unchanged) plus one frame kind of its own::

    kind 0x03    cluster record: body = a UTF-8 JSON object with a "type" field

decoded strictly into the records below (an unknown type or field, a missing or mistyped
one, a string or byte field over its bound: :class:`~leapcore.errors.LinkProtocolError`).
Which link records may come on a link is the caller's choice (``link_types``); any other
is refused the same way.

**Sign-in: mutual HMAC-SHA256 challenge-response** (docs/protocol.md, "Hub-to-hub
links"). The dialling hub sends ``cluster_hello`` (its node id and a random 32-byte
nonce); the listening hub answers ``cluster_challenge`` (its node id, its own nonce and its
proof); the dialling hub checks that proof and sends ``cluster_proof`` (its own); the
listening hub checks it and answers ``cluster_ready``. Each proof is
``HMAC-SHA256(secret, role || nonce_d || nonce_l || node_d || node_l)`` (:func:`proof`)
with a different role label each way, so a proof is never valid the other way nor on
another link; proofs are compared in constant time (:func:`proof_ok`). A wrong proof:
``cluster_error`` ``unauthenticated`` and the link is closed.

**Channels** (after ``cluster_ready``; the dialling hub opens, the listening hub serves):
``cluster_open`` is a client's ``open_channel`` with the user id the dialling hub
authenticated; the listening hub answers ``channel_opened`` or ``channel_refused`` naming
its ``request_id``. From then on both ways carry ``channel_close``, ``channel_credit`` and
data frames under the *listening* hub's channel id; the dialling hub translates to and from
its own ids (:func:`with_channel_id` rewrites a data frame's header, the ciphertext is
never touched). ``cluster_ping`` / ``cluster_pong`` keep an idle link known alive.

**Everything after sign-in is sealed** (:class:`SealedRecords`): each side derives two keys
from the secret and the sign-in transcript (:func:`session_keys`, one per direction), and
from the first byte after ``cluster_ready`` the stream is a sequence of records
``u32 length || ChaCha20-Poly1305(key, nonce = record counter, plaintext)``, at most
:data:`MAX_SEALED_PLAINTEXT` bytes of plaintext each. A record that does not open (a
changed, injected, replayed or reordered byte) ends the link, so nobody on the path
between two hubs can open channels in a user's name or read the user ids that travel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from typing import ClassVar, Final

import attrs

from ..crypto.primitives import aead_decrypt, aead_encrypt
from ..errors import FrameTooLarge, LinkProtocolError, LocalError
from ..records import b64encode, structure_strict, unstructure
from .link_codec import (
    KIND_CONTROL,
    KIND_DATA,
    MAX_CONTROL_BODY,
    LinkDecoder,
    LinkMessage,
    RelayedData,
    decode_b64_fields,
)

__all__ = [
    "CLUSTER_VERSION",
    "KIND_CLUSTER",
    "MAX_SEALED_PLAINTEXT",
    "NONCE_BYTES",
    "ClusterChallenge",
    "ClusterDecoder",
    "ClusterError",
    "ClusterHello",
    "ClusterOpen",
    "ClusterPing",
    "ClusterPong",
    "ClusterProof",
    "ClusterReady",
    "ClusterRecord",
    "SealedRecords",
    "encode_cluster",
    "proof",
    "proof_ok",
    "session_keys",
    "with_channel_id",
]

#: The hub-to-hub protocol's version (``cluster_hello.version``).
CLUSTER_VERSION: Final = 1
KIND_CLUSTER: Final = 0x03
#: Bytes of each side's random nonce, and of a proof (SHA-256).
NONCE_BYTES: Final = 32
PROOF_BYTES: Final = 32
#: Longest node id, user id or worker id on a hub-to-hub link.
MAX_ID: Final = 128
#: Longest ``cluster_error`` text.
MAX_TEXT: Final = 1024

_LENGTH: Final = struct.Struct(">I")
_CHANNEL: Final = struct.Struct(">Q")
#: Where a data frame's channel id starts (after the length prefix and the kind byte).
_CHANNEL_AT: Final = _LENGTH.size + 1
_DATA_HEADER: Final = struct.Struct(">QQB")
_DATA_START: Final = _CHANNEL_AT + _DATA_HEADER.size
_MAX_FRAME: Final = 1 + max(MAX_CONTROL_BODY, _DATA_HEADER.size + 65535)

#: Role labels of the two proofs.
#: Plaintext bytes in one sealed record, at most (a send is cut into records this long).
MAX_SEALED_PLAINTEXT: Final = 256 * 1024
_TAG_BYTES: Final = 16
_DIALLER: Final = b"leapcore-cluster-v1 dialler"
_LISTENER: Final = b"leapcore-cluster-v1 listener"


class ClusterRecord:
    """Base of the cluster records; ``type`` names the record on the wire."""

    type: ClassVar[str]


@attrs.frozen
class ClusterHello(ClusterRecord):
    type: ClassVar[str] = "cluster_hello"
    version: int
    node_id: str
    nonce: bytes = attrs.field(repr=False)


@attrs.frozen
class ClusterChallenge(ClusterRecord):
    type: ClassVar[str] = "cluster_challenge"
    node_id: str
    nonce: bytes = attrs.field(repr=False)
    proof: bytes = attrs.field(repr=False)


@attrs.frozen
class ClusterProof(ClusterRecord):
    type: ClassVar[str] = "cluster_proof"
    proof: bytes = attrs.field(repr=False)


@attrs.frozen
class ClusterReady(ClusterRecord):
    type: ClassVar[str] = "cluster_ready"


@attrs.frozen
class ClusterError(ClusterRecord):
    type: ClassVar[str] = "cluster_error"
    code: str
    message: str


@attrs.frozen
class ClusterOpen(ClusterRecord):
    """Dialling hub -> listening hub: ``user_id`` (authenticated by the dialling hub) opens
    a channel to ``worker_id``; the answer names ``request_id``."""

    type: ClassVar[str] = "cluster_open"
    request_id: int
    user_id: str
    worker_id: str
    message1: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    max_message_size: int


@attrs.frozen
class ClusterPing(ClusterRecord):
    type: ClassVar[str] = "cluster_ping"
    seq: int


@attrs.frozen
class ClusterPong(ClusterRecord):
    type: ClassVar[str] = "cluster_pong"
    seq: int


_TYPES: Final[dict[str, type[ClusterRecord]]] = {
    cls.type: cls
    for cls in (
        ClusterHello,
        ClusterChallenge,
        ClusterProof,
        ClusterReady,
        ClusterError,
        ClusterOpen,
        ClusterPing,
        ClusterPong,
    )
}
#: Exact byte lengths of the fixed-size byte fields.
_FIXED: Final = {"nonce": NONCE_BYTES, "proof": PROOF_BYTES}
#: Bounded string fields.
_STRINGS: Final = {
    "node_id": MAX_ID,
    "user_id": MAX_ID,
    "worker_id": MAX_ID,
    "code": 64,
    "message": MAX_TEXT,
}


def _bytes_fields(cls: type[ClusterRecord]) -> tuple[str, ...]:
    return tuple(f.name for f in attrs.fields(cls) if f.type in (bytes, "bytes"))  # type: ignore[arg-type]


def encode_cluster(record: ClusterRecord) -> bytes:
    """One cluster frame, ready to write."""
    if type(record) not in _TYPES.values():
        raise LocalError(f"not a cluster record: {type(record).__name__}")
    data = unstructure(record)
    for name in _bytes_fields(type(record)):
        data[name] = b64encode(data[name])
    body = json.dumps({"type": record.type, **data}, separators=(",", ":")).encode()
    if len(body) > MAX_CONTROL_BODY:
        raise LocalError(f"{record.type} record of {len(body)} bytes is too large")
    return _LENGTH.pack(1 + len(body)) + bytes((KIND_CLUSTER,)) + body


def _decode_cluster(body: bytes) -> ClusterRecord:
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise LinkProtocolError("cluster record is not valid UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise LinkProtocolError("cluster record must be a JSON object")
    kind = data.pop("type", None)
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise LinkProtocolError(f"unknown cluster record type {kind!r}")
    decode_b64_fields(data, kind, _bytes_fields(cls))
    record = structure_strict(data, cls, what=f"{kind} record", error=LinkProtocolError)
    for field in attrs.fields(cls):  # type: ignore[arg-type]
        value = getattr(record, field.name)
        if field.name in _FIXED and len(value) != _FIXED[field.name]:
            raise LinkProtocolError(f"{kind}.{field.name} must be {_FIXED[field.name]} bytes")
        if field.name in _STRINGS and len(value) > _STRINGS[field.name]:
            raise LinkProtocolError(f"{kind}.{field.name} is longer than {_STRINGS[field.name]}")
        if isinstance(value, int) and not 0 <= value < 2**64:
            raise LinkProtocolError(f"{kind}.{field.name} is out of range")
    return record


class ClusterDecoder:
    """Incremental, bounded decoder of a hub-to-hub link: cluster records, the link records
    named in ``link_types`` and data frames (as :class:`RelayedData`, kept whole). Any
    other frame, or one over the size limit, is a :class:`LinkProtocolError` and the
    decoder stays broken."""

    def __init__(self, link_types: frozenset[str]) -> None:
        self._buffer = bytearray()
        self._link_types = link_types
        self._error: LinkProtocolError | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    def take_unread(self) -> bytes:
        """The bytes received but not decoded yet, removed (what came behind the sign-in
        is sealed, and is opened before it is decoded)."""
        unread = bytes(self._buffer)
        self._buffer.clear()
        return unread

    def next(self) -> ClusterRecord | LinkMessage | RelayedData | None:
        """The next whole record or frame, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except LinkProtocolError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def _next(self) -> ClusterRecord | LinkMessage | RelayedData | None:
        buf = self._buffer
        if len(buf) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(buf)
        if not 1 <= length <= _MAX_FRAME:
            raise FrameTooLarge(f"frame length {length} is outside 1..{_MAX_FRAME}")
        end = _LENGTH.size + length
        if len(buf) < end:
            return None
        frame = bytes(buf[:end])
        del buf[:end]
        kind = frame[_LENGTH.size]
        if kind == KIND_CLUSTER:
            return _decode_cluster(frame[_LENGTH.size + 1 :])
        if kind == KIND_DATA:
            if "data" not in self._link_types or length <= _DATA_HEADER.size:
                raise LinkProtocolError("unexpected data frame on a hub-to-hub link")
            channel_id, correlation_id, flags = _DATA_HEADER.unpack_from(frame, _CHANNEL_AT)
            return RelayedData(channel_id, correlation_id, flags, end - _DATA_START, frame)
        if kind != KIND_CONTROL:
            raise LinkProtocolError(f"unknown frame kind 0x{kind:02x}")
        decoder = LinkDecoder()
        decoder.receive_data(frame)
        message = decoder.next_message()
        if message is None or message.type not in self._link_types:
            kind_name = "?" if message is None else message.type
            raise LinkProtocolError(f"{kind_name} is not allowed on this hub-to-hub link")
        return message


def with_channel_id(frame: bytes, channel_id: int) -> bytes:
    """A data frame (whole, length prefix included) with another channel id in its header;
    the rest, ciphertext included, unchanged."""
    return frame[:_CHANNEL_AT] + _CHANNEL.pack(channel_id) + frame[_CHANNEL_AT + _CHANNEL.size :]


def proof(
    secret: bytes, *, dialler: bool, nonces: tuple[bytes, bytes], nodes: tuple[str, str]
) -> bytes:
    """The proof of knowing ``secret`` that the dialling (``dialler``) or the listening hub
    gives, over both nonces and both node ids, each as (dialler's, listener's)."""
    return _transcript_mac(secret, _DIALLER if dialler else _LISTENER, nonces, nodes)


def _transcript_mac(
    secret: bytes, label: bytes, nonces: tuple[bytes, bytes], nodes: tuple[str, str]
) -> bytes:
    """``HMAC-SHA256(secret, label || L(nonce_d) || L(nonce_l) || L(node_d) || L(node_l))``,
    ``L(x) = len(x):u32be || x``."""
    mac = hmac.new(secret, label, hashlib.sha256)
    for part in (*nonces, *(n.encode() for n in nodes)):
        mac.update(_LENGTH.pack(len(part)))
        mac.update(part)
    return mac.digest()


def proof_ok(
    secret: bytes,
    given: bytes,
    *,
    dialler: bool,
    nonces: tuple[bytes, bytes],
    nodes: tuple[str, str],
) -> bool:
    """Whether ``given`` is the right proof (compared in constant time)."""
    expected = proof(secret, dialler=dialler, nonces=nonces, nodes=nodes)
    return hmac.compare_digest(expected, given)


def session_keys(
    secret: bytes, *, nonces: tuple[bytes, bytes], nodes: tuple[str, str]
) -> tuple[bytes, bytes]:
    """The sealing keys of one signed-in link: (dialler -> listener, listener -> dialler),
    each an HMAC-SHA256 of the sign-in transcript under the secret with its own label."""
    return (
        _transcript_mac(secret, b"keys " + _DIALLER, nonces, nodes),
        _transcript_mac(secret, b"keys " + _LISTENER, nonces, nodes),
    )


class SealedRecords:
    """One side of a signed-in link's sealed byte stream (see the module docstring):
    :meth:`seal` what to send, :meth:`open` what arrives. A record that does not
    authenticate, or claims more than a record may hold, is a :class:`LinkProtocolError`
    and the opener stays broken."""

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._send_key = send_key
        self._receive_key = receive_key
        self._sent = 0
        self._received = 0
        self._buffer = bytearray()
        self._error: LinkProtocolError | None = None

    def seal(self, data: bytes | bytearray | memoryview) -> bytes:
        view = memoryview(data)
        out: list[bytes] = []
        for at in range(0, len(view), MAX_SEALED_PLAINTEXT):
            sealed = aead_encrypt(
                self._send_key, self._sent, b"", bytes(view[at : at + MAX_SEALED_PLAINTEXT])
            )
            self._sent += 1
            out += (_LENGTH.pack(len(sealed)), sealed)
        return b"".join(out)

    def open(self, data: bytes | bytearray | memoryview) -> bytes:
        """The plaintext of every whole record now received (b"" until one is whole)."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        out = []
        buf = self._buffer
        while len(buf) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buf)
            if not _TAG_BYTES < length <= MAX_SEALED_PLAINTEXT + _TAG_BYTES:
                self._error = LinkProtocolError(f"sealed record of {length} bytes")
                raise self._error
            end = _LENGTH.size + length
            if len(buf) < end:
                break
            plain = aead_decrypt(
                self._receive_key, self._received, b"", bytes(buf[_LENGTH.size : end])
            )
            if plain is None:
                self._error = LinkProtocolError("a sealed record does not authenticate")
                raise self._error
            self._received += 1
            del buf[:end]
            out.append(plain)
        return b"".join(out)
