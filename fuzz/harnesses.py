"""Fuzz harnesses: one pure function ``check_<name>(data: bytes) -> None`` per untrusted input.

Contract of every harness: leapcore either **accepts** the input or raises **the documented
leapcore error** for it, and leaves itself in the documented state afterwards:

=====================  ==========================================  ======================
harness                what is fed the bytes                       documented error
=====================  ==========================================  ======================
``message1_classic``   ``Responder.read_message1`` (classic)       ``HandshakeError``
``message1_pq``        ``Responder.read_message1`` (post-quantum)  ``HandshakeError``
``message2_classic``   ``Initiator.read_message2`` (classic)       ``HandshakeError``
``message2_pq``        ``Initiator.read_message2`` (post-quantum)  ``HandshakeError``
``transport_decrypt``  ``TransportSession.decrypt``                ``DecryptError``
``key_json``           ``WorkerKeyPair.from_json`` and             ``KeyFileError``
                       ``PublicKeyBundle.from_json`` of
                       ``json.loads(data)``
``keyfile``            ``leapcore.store.keyfile.load_keypair`` of a      ``KeyFileError``
                       file holding ``data``
``link_stream``        ``LinkDecoder`` (whole, and byte by byte)   ``LinkProtocolError``
``link_hub``           ``LinkConnection(HUB).receive``             ``LinkProtocolError``
``relay``              ``ChannelRelay.check``, 12-byte records     ``RelayViolation``
                       (direction, correlation id, flags, size)
``pin_file``           ``PinStore.load`` of a file holding         ``PinStoreError``
                       ``data`` (and a verify after it)
``channel_message``    ``channel_codec.decode`` (accepted: it      ``ChannelProtocolError``
                       re-encodes to the same bytes)
``reassembly``         ``Reassembler.feed``, 4-byte records        ``ReassemblyFailed``
                       (correlation id, flags, chunk length)       results; ``LocalError``
                                                                   for flags 2 and 3
``channel_endpoint``   ``ChannelEndpoint.receive_frame``           none: only documented
                       (responder), records (flags, correlation    events; a decrypt
                       id, length, plaintext) encrypted by the     failure ends the channel
                       peer, plus raw garbage frames               with one CLOSE frame
``h2_server``          ``LinkServer.handle`` (in memory, MockClock) none: served or ended,
                       after the HTTP/2 preface                    no error log, no hang
``ws_server``          the same after a WebSocket upgrade          the same
``socks5``             ``Socks5Server``, records (length u8,       ``Socks5Error``; never
                       bytes) as chunks, then EOF                  "need more" after EOF;
                                                                   same outcome however
                                                                   the bytes are split
``worker_policy``      ``parse_policy`` of a policy file's bytes   ``ConfigError`` naming
                       (accepted: its summary is plain data)       the file
=====================  ==========================================  ======================

(``HandshakeError`` and ``DecryptError`` are the ``RemoteProtocolError`` subclasses for network
input; ``HandshakeError`` includes ``MessageLengthError``, ``LowOrderPoint`` and
``BadSignature``.) Any other exception, or a broken invariant (a failed handshake not in state
``FAILED``, a failed decrypt that leaves the session open, a wrong plaintext length, ...),
raises :class:`HarnessFailure` chained to the cause. Every input gets fresh objects, so one
input never affects the next.

The fixtures are the known-answer vectors ``tests/support/vectors/{classic,pq}_seed1.json``: the
worker keys, the injected ephemerals and ML-KEM encapsulation, and each mode's valid message 1
and message 2 (whose bytes 48.. are a valid SLH-DSA signature). So nothing here signs, and
every harness is deterministic. Only an input to ``message2_pq`` that passes ``tag2`` pays for
an SLH-DSA verify (~3.4 ms).

The same functions are driven by atheris (``fuzz/run_atheris.py``), by the bounded
mutation driver (``fuzz/run_mutations.py``, ``tests/test_fuzz.py``) and by hypothesis.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import shutil
import tempfile
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio
import trio.testing

from leapcore.crypto.handshake import HandshakeState, Initiator, Responder
from leapcore.crypto.keys import PublicKeyBundle, WorkerKeyPair
from leapcore.crypto.mode import EncryptionMode, parse_encryption_mode
from leapcore.crypto.primitives import MLKEM_CIPHERTEXT_SIZE
from leapcore.crypto.transport import TransportSession
from leapcore.errors import (
    ChannelClosedError,
    ChannelProtocolError,
    ConfigError,
    DecryptError,
    HandshakeError,
    KeyFileError,
    KeyMismatch,
    LinkClosed,
    LinkProtocolError,
    LocalError,
    PinStoreError,
    RelayViolation,
    ResourceExhausted,
    Socks5Error,
)
from leapcore.net.listen import H2_PREFACE, LinkServer
from leapcore.net.trioutil import single_exception
from leapcore.proto import channel_events
from leapcore.proto.channel_codec import (
    MAX_BYTES_DATA,
    MAX_ERROR_MESSAGE,
    MAX_WINDOW,
    BytesAccept,
    BytesData,
    BytesEof,
    BytesOpen,
    BytesReset,
    Cancel,
    ErrorReply,
    Message,
    RekeyAck,
    RekeyReject,
    RekeyRequest,
    Request,
    Response,
    StreamEnd,
    StreamItem,
    StreamRequest,
    WindowUpdate,
)
from leapcore.proto.channel_codec import decode as channel_decode
from leapcore.proto.channel_codec import encode as channel_encode
from leapcore.proto.channel_events import (
    BytesReceived,
    ByteStreamRequested,
    ChannelClosed,
    ProtocolViolation,
    RekeyCompleted,
    RequestReceived,
    StreamRequested,
)
from leapcore.proto.channel_mux import CLOSE_CORRELATION_ID, ChannelEndpoint
from leapcore.proto.chunking import (
    MAX_CHUNK,
    ChannelFrame,
    FrameFlag,
    Reassembled,
    Reassembler,
    ReassemblyFailed,
)
from leapcore.proto.limits import MAX_PLAINTEXT
from leapcore.proto.link_codec import (
    ChannelData,
    ClientHello,
    Connect,
    Heartbeat,
    LinkDecoder,
    OpenChannel,
    encode_many,
)
from leapcore.proto.link_state import LinkConnection, LinkRole, LinkState
from leapcore.proto.relay import ChannelRelay, RelayDirection
from leapcore.proto.socks5 import (
    MAX_BUFFERED,
    AddressType,
    ConnectRequest,
    Phase,
    Reply,
    Socks5Server,
    encode_reply,
)
from leapcore.proto.worker_policy import parse_policy
from leapcore.store.keyfile import load_keypair
from leapcore.store.pinstore import PinStore

__all__ = [
    "HARNESSES",
    "REKEY_DH",
    "Fixtures",
    "HarnessFailure",
    "ModeFixture",
    "accepts",
    "check_channel_endpoint",
    "check_channel_message",
    "check_h2_server",
    "check_key_json",
    "check_keyfile",
    "check_link_hub",
    "check_link_stream",
    "check_message1_classic",
    "check_message1_pq",
    "check_message2_classic",
    "check_message2_pq",
    "check_pin_file",
    "check_reassembly",
    "check_relay",
    "check_socks5",
    "check_transport_decrypt",
    "check_ws_server",
    "describe",
    "fixtures",
    "make_initiator",
    "seeds",
]

VECTOR_DIR = Path(__file__).resolve().parent.parent / "tests" / "support" / "vectors"
#: Handshake prefix ``E || tag1`` / ``F || tag2``.
PREFIX = 48
#: The ``dh`` of the rekey applied to the second transport session (``pq`` is empty).
REKEY_DH = bytes(range(0xA0, 0xC0))
#: Plaintext sizes of the valid transport frames used as seeds (65519 is the maximum).
FRAME_SIZES = (0, 1, 5, 1024, 65519)

CLASSIC = EncryptionMode.CLASSIC
PQ = EncryptionMode.POST_QUANTUM


class HarnessFailure(AssertionError):
    """An input made leapcore raise an undocumented exception or break an invariant."""


# ---------------------------------------------------------------------------
# Fixtures


@dataclass(frozen=True)
class ModeFixture:
    """One known-answer handshake: everything needed to replay either side."""

    mode: EncryptionMode
    keypair: WorkerKeyPair
    initiator_e: bytes
    responder_f: bytes
    ct: bytes  # ML-KEM ciphertext (empty in classic mode)
    ss: bytes  # ML-KEM shared secret (empty in classic mode)
    message1: bytes
    message2: bytes


@dataclass(frozen=True)
class Fixtures:
    modes: dict[EncryptionMode, ModeFixture]
    #: The harness transport session is the responder's: it receives with ``recv_key``.
    send_key: bytes
    recv_key: bytes
    #: Valid frames toward that session at nonce 0 (plaintext sizes :data:`FRAME_SIZES`),
    #: then one frame at nonce 0 under the receive key rekeyed with :data:`REKEY_DH`.
    frames: tuple[bytes, ...]
    #: The worker key file as ``save_keypair`` writes it, and the public bundle as JSON.
    keypair_file: bytes
    bundle_json: bytes


@functools.cache
def _vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTOR_DIR / f"{name}.json").read_text())
    return data


@functools.cache
def _mode_fixture(mode: EncryptionMode) -> ModeFixture:
    v = _vector("classic_seed1" if mode is CLASSIC else "pq_seed1")
    h = bytes.fromhex
    wk = v["worker_key"]
    keypair = WorkerKeyPair(
        x25519_private=h(wk["x25519"]["private"]),
        x25519_public=h(wk["x25519"]["public"]),
        mlkem_seed=h(wk["mlkem1024"]["seed"]),
        mlkem_public=h(wk["mlkem1024"]["public"]),
        slhdsa_private=h(wk["slhdsa_shake_256f"]["private"]),
        slhdsa_public=h(wk["slhdsa_shake_256f"]["public"]),
    )
    message1 = h(v["message1"])
    fixture = ModeFixture(
        mode=parse_encryption_mode(v["mode"]),
        keypair=keypair,
        initiator_e=h(v["initiator_ephemeral_private"]),
        responder_f=h(v["responder_ephemeral_private"]),
        ct=message1[PREFIX:],
        ss=h(v["responder_trace"].get("mlkem_shared_secret", "")),
        message1=message1,
        message2=h(v["message2"]),
    )
    _expect(fixture.mode is mode, "fixture: vector has the wrong mode")
    return fixture


@functools.cache
def fixtures() -> Fixtures:
    """Built once per process from the vectors (a few milliseconds, no signing)."""
    modes = {mode: _mode_fixture(mode) for mode in (CLASSIC, PQ)}
    keys = _vector("pq_seed1")["session_keys"]
    h = bytes.fromhex
    # The harness session is the responder's; the peer is the initiator.
    peer_send, peer_recv = h(keys["initiator_send_key"]), h(keys["initiator_recv_key"])
    frames = [
        TransportSession(peer_send, peer_recv).encrypt(b"\xa5" * size) for size in FRAME_SIZES
    ]
    rekeyed = TransportSession(peer_send, peer_recv)
    rekeyed.rotate_send(REKEY_DH, b"")
    frames.append(rekeyed.encrypt(b"after the rekey"))
    keypair = modes[PQ].keypair
    return Fixtures(
        modes=modes,
        send_key=h(keys["responder_send_key"]),
        recv_key=h(keys["responder_recv_key"]),
        frames=tuple(frames),
        keypair_file=(json.dumps(keypair.to_json(), indent=2) + "\n").encode(),
        bundle_json=json.dumps(keypair.public.to_json()).encode(),
    )


def make_initiator(mode: EncryptionMode) -> Initiator:
    """An initiator that has written the vector's message 1 (injected ephemeral and ML-KEM)."""
    f = _mode_fixture(mode)
    initiator = Initiator(
        f.keypair.public,
        mode,
        random=lambda n: f.initiator_e,
        encapsulate=lambda ek: (f.ct, f.ss),
    )
    message1 = initiator.write_message1()
    _expect(message1 == f.message1, "fixture: message 1 differs from the vector")
    return initiator


# ---------------------------------------------------------------------------
# Plumbing


def describe(data: bytes) -> str:
    """A short, greppable description of an input (length, sha256 prefix, head)."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"{len(data)} bytes, sha256 {digest}…, head {data[:32].hex()}"


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise HarnessFailure(what)


def _guarded(name: str, target: Callable[[bytes], bool], data: bytes) -> bool:
    """Run ``target``; turn anything but acceptance or the documented error into a failure."""
    try:
        return target(data)
    except HarnessFailure as exc:
        exc.add_note(f"harness {name}, input {describe(data)}")
        raise
    except Exception as exc:
        failure = HarnessFailure(
            f"{name}: undocumented {type(exc).__module__}.{type(exc).__qualname__}: {exc}"
        )
        failure.add_note(f"input {describe(data)}")
        raise failure from exc


# ---------------------------------------------------------------------------
# Targets: return True when the input was accepted, False when it was rejected as documented.


def _message1(mode: EncryptionMode, data: bytes) -> bool:
    f = _mode_fixture(mode)
    responder = Responder(f.keypair, mode, random=lambda n: f.responder_f)
    try:
        transcript = responder.read_message1(data)
    except HandshakeError:
        _expect(responder.state is HandshakeState.FAILED, "rejected, but state is not FAILED")
        return False
    _expect(responder.state is HandshakeState.RESPOND, f"accepted in state {responder.state}")
    if mode is PQ:
        _expect(isinstance(transcript, bytes) and len(transcript) == 64, "bad transcript")
    else:
        _expect(transcript is None, "classic mode returned a transcript")
        _expect(len(responder.write_message2()) == PREFIX, "classic message 2 is not 48 bytes")
        responder.session()
    return True


def _message2(mode: EncryptionMode, data: bytes) -> bool:
    initiator = make_initiator(mode)
    try:
        initiator.read_message2(data)
    except HandshakeError:
        _expect(initiator.state is HandshakeState.FAILED, "rejected, but state is not FAILED")
        return False
    _expect(initiator.state is HandshakeState.DONE, f"accepted in state {initiator.state}")
    _expect(isinstance(initiator.session(), TransportSession), "session() is not a session")
    return True


def _decrypt_once(session: TransportSession, data: bytes, now: float) -> bool:
    try:
        out = session.decrypt(data, now)
    except DecryptError:
        _expect(session.closed, "decrypt failed, but the session is still open")
        return False
    _expect(isinstance(out, bytes), f"decrypt returned {type(out).__name__}")
    _expect(len(out) == len(data) - 16, "plaintext length is not ciphertext length - 16")
    _expect(not session.closed, "decrypt succeeded, but the session is closed")
    return True


def _transport_decrypt(data: bytes) -> bool:
    fx = fixtures()
    # 1. A fresh session: the current receive key at nonce 0.
    fresh = TransportSession(fx.send_key, fx.recv_key)
    accepted = _decrypt_once(fresh, data, 0.0)
    if accepted:
        _expect(fresh.recv_nonce == 1, "receive nonce did not advance")
    # 2. Just after a rekey: the new key first, then the previous one (inside its grace window).
    rekeyed = TransportSession(fx.send_key, fx.recv_key)
    rekeyed.rotate_receive(REKEY_DH, b"", 0.0)
    return _decrypt_once(rekeyed, data, 1.0) or accepted


def _key_json(data: bytes) -> bool:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # not JSON (incl. bad UTF-8): leapcore never sees it
        return False
    if not isinstance(obj, dict):
        # from_json takes a Mapping; see tests/test_fuzz.py for what non-mappings do.
        return False
    accepted = False
    for cls in (WorkerKeyPair, PublicKeyBundle):
        try:
            value = cls.from_json(obj)
        except KeyFileError:
            continue
        _expect(isinstance(value, cls), f"{cls.__name__}.from_json returned {type(value)}")
        _expect(cls.from_json(value.to_json()) == value, f"{cls.__name__} does not round-trip")
        accepted = True
    return accepted


_keyfile_dir: Path | None = None


def _keyfile_path() -> Path:
    global _keyfile_dir
    if _keyfile_dir is None:
        _keyfile_dir = Path(tempfile.mkdtemp(prefix="leapcore-fuzz-"))
        atexit.register(shutil.rmtree, _keyfile_dir, True)
    return _keyfile_dir / "worker-key.json"


def _keyfile(data: bytes) -> bool:
    path = _keyfile_path()
    path.write_bytes(data)
    try:
        keypair = load_keypair(path)
    except KeyFileError as exc:
        _expect(str(path) in str(exc), f"KeyFileError does not name the path: {exc}")
        return False
    _expect(isinstance(keypair, WorkerKeyPair), f"load_keypair returned {type(keypair)}")
    return True


def _link_stream(data: bytes) -> bool:
    whole: list[object] = []
    whole_error: LinkProtocolError | None = None
    try:
        whole = list(LinkDecoder().feed(data))
    except LinkProtocolError as exc:
        whole_error = exc
    # Byte by byte must give the same messages and the same error (at the same point).
    decoder, pieces = LinkDecoder(), []
    piece_error: LinkProtocolError | None = None
    try:
        for i in range(len(data)):
            decoder.receive_data(data[i : i + 1])
            while (message := decoder.next_message()) is not None:
                pieces.append(message)
    except LinkProtocolError as exc:
        piece_error = exc
    _expect(type(whole_error) is type(piece_error), "whole and byte-by-byte errors differ")
    if whole_error is None:
        _expect(pieces == whole, "whole and byte-by-byte decoding differ")
        return bool(whole)
    _expect(pieces[: len(whole)] == whole or not whole, "messages before the error differ")
    return False


def _link_hub(data: bytes) -> bool:
    hub = LinkConnection(LinkRole.HUB)
    try:
        messages = hub.receive(data)
    except LinkProtocolError:
        _expect(hub.state is LinkState.CLOSED, "a rejected link is not closed")
        return False
    return bool(messages)


_RECORD = 12  # direction u8, correlation id u64, flags u8, ciphertext size u16


def _relay(data: bytes) -> bool:
    relay = ChannelRelay(1, max_message_size=4 * 65519)
    checked = 0
    for off in range(0, len(data) - _RECORD + 1, _RECORD):
        record = data[off : off + _RECORD]
        direction = (RelayDirection.TO_WORKER, RelayDirection.TO_CLIENT)[record[0] & 1]
        cid = int.from_bytes(record[1:9], "big")
        flags, size = record[9], int.from_bytes(record[10:12], "big")
        try:
            relay.check(direction, cid, flags, size)
        except RelayViolation:
            return False
        checked += 1
    return checked > 0


_pin_dir: Path | None = None


def _pin_path() -> Path:
    global _pin_dir
    if _pin_dir is None:
        _pin_dir = Path(tempfile.mkdtemp(prefix="leapcore-fuzz-pins-"))
        atexit.register(shutil.rmtree, _pin_dir, True)
    return _pin_dir / "pins.json"


def _pin_file(data: bytes) -> bool:
    path = _pin_path()
    path.write_bytes(data)
    store = PinStore(path, hint="clear it")
    try:
        pins = store.load()
    except PinStoreError as exc:
        _expect(str(path) in str(exc), f"PinStoreError does not name the path: {exc}")
        # A store that does not load must refuse to change too, and leave the file alone.
        try:
            store.verify("fuzz-worker", fixtures().modes[PQ].keypair.public)
        except PinStoreError:
            pass
        else:
            raise HarnessFailure("verify() on an unreadable store did not refuse")
        _expect(path.read_bytes() == data, "an unreadable pin store was modified")
        return False
    # A loaded store accepts a verify of a worker it knows nothing of, or reports a mismatch.
    with contextlib.suppress(KeyMismatch):
        store.verify("fuzz-worker", fixtures().modes[PQ].keypair.public)
    _expect(set(store.load()) >= set(pins), "a verify lost pins")
    return True


# -- channel protocol -----------------------------------------------------------


def _channel_message(data: bytes) -> bool:
    try:
        message = channel_decode(data)
    except ChannelProtocolError:
        return False
    # Decoding is canonical: one message, one encoding. encode() refusing what decode()
    # accepted (InvalidMessage) is as much a failure as different bytes.
    again = channel_encode(message)
    _expect(again == data, f"{type(message).__name__} re-encodes to different bytes")
    _expect(channel_decode(again) == message, "the re-encoded message decodes differently")
    return True


#: reassembly: the harness's Reassembler limits (two full chunks; the default 4 sequences).
REASSEMBLY_MAX_MESSAGE = 2 * MAX_CHUNK
REASSEMBLY_MAX_INCOMPLETE = 4
_CHUNK_RECORD = 4  # correlation id (low 3 bits), flags (low 2 bits), chunk length u16


class _ReassemblyModel:
    """What protocol.md section 4.2 says a Reassembler does, written out plainly."""

    def __init__(self) -> None:
        self.partial: dict[int, list[bytes]] = {}
        self.tombstones: set[int] = set()

    def feed(self, cid: int, final: bool, chunk: bytes) -> tuple[str, bytes | None]:
        """("message", bytes), ("failed" | "reserved" | "none", None): what ``feed`` returns."""
        if cid == 0:
            return "reserved", None
        if cid in self.tombstones:
            if final:
                self.tombstones.discard(cid)
            return "none", None
        parts = self.partial.get(cid)
        if parts is None:
            if final:
                return "message", chunk
            if len(self.partial) >= REASSEMBLY_MAX_INCOMPLETE:
                return self._breach(cid, final)
            if self.held() + len(chunk) > REASSEMBLY_MAX_MESSAGE:  # the budget: all together
                return self._breach(cid, final)
            self.partial[cid] = [chunk]
            return "none", None
        if sum(map(len, parts)) + len(chunk) > REASSEMBLY_MAX_MESSAGE:
            del self.partial[cid]
            return self._breach(cid, final)
        if not final and self.held() + len(chunk) > REASSEMBLY_MAX_MESSAGE:
            del self.partial[cid]
            return self._breach(cid, final)
        parts.append(chunk)
        if final:
            del self.partial[cid]
            return "message", b"".join(parts)
        return "none", None

    def held(self) -> int:
        return sum(len(chunk) for parts in self.partial.values() for chunk in parts)

    def _breach(self, cid: int, final: bool) -> tuple[str, bytes | None]:
        if final:
            return "failed", None
        if len(self.tombstones) >= REASSEMBLY_MAX_INCOMPLETE:
            return "none", None  # past both caps: dropped silently
        self.tombstones.add(cid)
        return "failed", None


def _reassembly(data: bytes) -> bool:
    reassembler = Reassembler(REASSEMBLY_MAX_MESSAGE, REASSEMBLY_MAX_INCOMPLETE)
    model = _ReassemblyModel()
    records = messages = rejected = 0
    for index, off in enumerate(range(0, len(data) - _CHUNK_RECORD + 1, _CHUNK_RECORD)):
        cid, flags = data[off] & 7, data[off + 1] & 3
        chunk = bytes([index & 0xFF]) * int.from_bytes(data[off + 2 : off + 4], "big")
        records += 1
        before = (reassembler.incomplete, reassembler.tombstones, reassembler.buffered)
        try:
            result = reassembler.feed(cid, flags, chunk)
        except LocalError:
            # Only FINAL and MORE carry chunks; the refusal changes nothing.
            _expect(flags not in (FrameFlag.FINAL, FrameFlag.MORE), f"flags {flags} refused")
            after = (reassembler.incomplete, reassembler.tombstones, reassembler.buffered)
            _expect(after == before, "a refused feed changed the reassembler")
            rejected += 1
            continue
        _expect(flags in (FrameFlag.FINAL, FrameFlag.MORE), f"flags {flags} were accepted")
        outcome, message = model.feed(cid, flags == FrameFlag.FINAL, chunk)
        if outcome == "message":
            _expect(isinstance(result, Reassembled), f"expected a message, got {result!r}")
            assert isinstance(result, Reassembled)
            _expect(result.correlation_id == cid, "a message under the wrong correlation id")
            _expect(result.message == message, "the reassembled message differs from its chunks")
            _expect(len(result.message) <= REASSEMBLY_MAX_MESSAGE, "a message over the limit")
            messages += 1
        elif outcome == "none":
            _expect(result is None, f"expected nothing, got {result!r}")
        else:
            _expect(isinstance(result, ReassemblyFailed), f"expected a failure, got {result!r}")
            assert isinstance(result, ReassemblyFailed)
            _expect(result.correlation_id == cid, "a failure under the wrong correlation id")
            if outcome == "reserved":
                _expect(type(result.error) is ChannelProtocolError, f"id 0: {result.error!r}")
            else:
                _expect(isinstance(result.error, ResourceExhausted), f"{result.error!r}")
                _expect(result.error.code == "resource_exhausted", "wrong code for a breach")
            rejected += 1
        # The bounds of section 4.2, and the model's state.
        _expect(reassembler.incomplete == frozenset(model.partial), "live sequences differ")
        _expect(reassembler.tombstones == frozenset(model.tombstones), "tombstones differ")
        held = sum(len(b) for parts in model.partial.values() for b in parts)
        _expect(reassembler.buffered == held, "buffered bytes differ")
        _expect(len(reassembler.incomplete) <= REASSEMBLY_MAX_INCOMPLETE, "too many sequences")
        _expect(len(reassembler.tombstones) <= REASSEMBLY_MAX_INCOMPLETE, "too many tombstones")
        _expect(held <= REASSEMBLY_MAX_INCOMPLETE * REASSEMBLY_MAX_MESSAGE, "over the bound")
    return messages > 0 and rejected == 0


#: channel_endpoint: every frame arrives at this time. The endpoint is made at 0, so the
#: first rekey request meets the 3000 s minimum interval (accepted) and a second does not.
ENDPOINT_NOW = 3000.0
#: The receive window the endpoint's application grants: small, so data past it is common.
ENDPOINT_WINDOW = 64
#: A record: flags u8, correlation id u8, length u16, then that many bytes (or what is left).
#: Flags bit 7: send the bytes as a raw, unencrypted frame; bit 6: a local action instead of
#: a frame (correlation id % 4: send_request, start_stream, open_byte_stream, ping); the low
#: six bits are the frame's flags value (0 FINAL, 1 MORE, 2 CLOSE, others unknown).
_RAW, _ACTION, _FLAG_BITS = 0x80, 0x40, 0x3F
_VIOLATION_CODES = frozenset(
    {
        "channel_protocol_error",
        "unexpected_stream_message",
        "flow_control_error",
        "resource_exhausted",
    }
)
_CLOSE_CODES = frozenset(
    {
        "closed_by_peer",
        "decrypt_failed",
        "nonce_exhausted",
        "rekey_failed",
        "rekey_expired",
        "outbound_overflow",
    }
)
_EVENT_TYPES: tuple[type, ...] = typing.get_args(channel_events.Event)
_CLOSE_FRAME = ChannelFrame(CLOSE_CORRELATION_ID, FrameFlag.CLOSE, b"")


def _endpoint_records(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    off = 0
    while off + 4 <= len(data):
        size = int.from_bytes(data[off + 2 : off + 4], "big")
        yield data[off], data[off + 1], data[off + 4 : off + 4 + size]
        off += 4 + size


class _EndpointRun:
    """A responder endpoint, the peer's session toward it, and what the run has seen."""

    def __init__(self) -> None:
        fx = fixtures()
        self.endpoint = ChannelEndpoint(
            TransportSession(fx.send_key, fx.recv_key), role="responder", mode=CLASSIC, now=0.0
        )
        # The peer (the initiator): encrypts toward the endpoint, reads what it sends back.
        self.peer = TransportSession(fx.recv_key, fx.send_key)
        self.peer_reassembler = Reassembler()
        self.peer_reads = True  # until a rekey ack: then the endpoint sends under a new key
        self.violations = 0
        self.closed_code: str | None = None

    def act(self, selector: int, payload: bytes) -> None:
        """A local action of the responder's application (each one is valid when open)."""
        ep, which = self.endpoint, selector % 4
        if which == 0:
            ep.send_request("fuzz", payload)
        elif which == 1:
            ep.start_stream("fuzz", payload)
        elif which == 2:
            ep.open_byte_stream("fuzz", payload, window=ENDPOINT_WINDOW)
        else:
            ep.ping()
        self.drain()

    def receive(self, frame: ChannelFrame) -> list[object]:
        events: list[object] = list(self.endpoint.receive_frame(frame, ENDPOINT_NOW))
        for i, event in enumerate(events):
            _expect(isinstance(event, _EVENT_TYPES), f"undocumented event {event!r}")
            if isinstance(event, ChannelClosed):
                _expect(i == len(events) - 1, "events after ChannelClosed")
                _expect(event.code in _CLOSE_CODES, f"undocumented close code {event.code!r}")
                _expect(self.closed_code is None, "a second ChannelClosed")
                _expect(self.endpoint.closed, "ChannelClosed, but the endpoint is open")
                self.closed_code = event.code
                # Everything queued is dropped; a CLOSE frame goes out unless the peer closed.
                expected = [] if event.code == "closed_by_peer" else [_CLOSE_FRAME]
                _expect(self.endpoint.frames_to_send() == expected, "wrong frames after close")
                return events
            if isinstance(event, RekeyCompleted):
                continue
            cid = getattr(event, "correlation_id", None)
            _expect(cid == frame.correlation_id, f"{event!r} for a frame on id {cid}")
            if isinstance(event, ProtocolViolation):
                _expect(event.code in _VIOLATION_CODES, f"undocumented code {event.code!r}")
                self.violations += 1
            else:
                self.react(event)
        _expect(not self.endpoint.closed, "the endpoint closed without a ChannelClosed event")
        if frame.flags not in (FrameFlag.FINAL, FrameFlag.MORE, FrameFlag.CLOSE):
            codes = [e.code for e in events if isinstance(e, ProtocolViolation)]
            _expect(codes == ["channel_protocol_error"], f"unknown flags gave {events!r}")
        self.drain()
        return events

    def react(self, event: object) -> None:
        """The application answers what it is asked, so that streams go further."""
        ep = self.endpoint
        match event:
            case RequestReceived(cid, _method, payload) if len(payload) % 2 == 0:
                ep.send_response(cid, payload[:8])
            case StreamRequested(cid, _method, payload):
                ep.send_stream_item(cid, b"item")
                if len(payload) % 2 == 0:
                    ep.end_stream(cid)
            case ByteStreamRequested(cid, _method, payload):
                if len(payload) % 2 == 0:
                    ep.accept_byte_stream(cid, window=ENDPOINT_WINDOW)
                else:
                    ep.send_error(cid, "refused", "odd payload")
            case BytesReceived(cid, data):
                ep.consume(cid, len(data))

    def drain(self) -> None:
        for frame in self.endpoint.frames_to_send():
            _expect(frame.flags in (FrameFlag.FINAL, FrameFlag.MORE), f"sent {frame!r}")
            _expect(frame.correlation_id != 0, "sent a frame on correlation id 0")
            _expect(16 <= len(frame.ciphertext) <= 65535, "sent a ciphertext of a bad size")
            if not self.peer_reads:
                continue
            # Whatever the endpoint sends, the peer can decrypt, reassemble and decode.
            plaintext = self.peer.decrypt(frame.ciphertext, ENDPOINT_NOW)
            result = self.peer_reassembler.feed(frame.correlation_id, frame.flags, plaintext)
            _expect(not isinstance(result, ReassemblyFailed), f"sent {result!r}")
            message = channel_decode(result.message) if isinstance(result, Reassembled) else None
            if isinstance(message, RekeyAck):
                self.peer_reads = False  # the endpoint's send key rotates after its ack

    def frame(self, flags: int, cid: int, body: bytes) -> ChannelFrame:
        value = flags & _FLAG_BITS
        if flags & _RAW or value == FrameFlag.CLOSE:
            return ChannelFrame(cid, value, body)  # not encrypted (a CLOSE is never decrypted)
        return ChannelFrame(cid, value, self.peer.encrypt(body[:MAX_PLAINTEXT]))


def _channel_endpoint(data: bytes) -> bool:
    run = _EndpointRun()
    records = 0
    for flags, cid, body in _endpoint_records(data):
        records += 1
        if flags & _ACTION and not flags & _RAW:
            run.act(cid, body)
            continue
        frame = run.frame(flags, cid, body)
        events = run.receive(frame)
        if frame.flags == FrameFlag.CLOSE:
            _expect(run.closed_code == "closed_by_peer", f"CLOSE frame gave {events!r}")
        elif flags & _RAW:
            _expect(run.closed_code == "decrypt_failed", f"a raw frame gave {events!r}")
        if run.closed_code is not None:
            break
    accepted = records > 0 and run.closed_code is None and run.violations == 0
    if run.closed_code is None:
        # Garbage at the end: the channel ends, with exactly one CLOSE frame queued.
        events = run.receive(ChannelFrame(1, FrameFlag.FINAL, bytes(32)))
        _expect(run.closed_code == "decrypt_failed", f"garbage gave {events!r}")
    # A closed endpoint is inert: frames give no events, actions are refused.
    _expect(run.endpoint.receive_frame(run.frame(0, 1, b"\x07"), ENDPOINT_NOW) == [], "events")
    _expect(run.endpoint.frames_to_send() == [], "frames after the close")
    try:
        run.endpoint.send_request("fuzz")
    except ChannelClosedError:
        pass
    else:
        raise HarnessFailure("a closed endpoint took a request")
    return accepted


# ---------------------------------------------------------------------------
# The harnesses


def check_message1_classic(data: bytes) -> None:
    """``Responder.read_message1`` in classic mode: accept, or ``HandshakeError``."""
    _guarded("message1_classic", functools.partial(_message1, CLASSIC), data)


def check_message1_pq(data: bytes) -> None:
    """``Responder.read_message1`` in post-quantum mode: accept, or ``HandshakeError``."""
    _guarded("message1_pq", functools.partial(_message1, PQ), data)


def check_message2_classic(data: bytes) -> None:
    """``Initiator.read_message2`` (after message 1) in classic mode."""
    _guarded("message2_classic", functools.partial(_message2, CLASSIC), data)


def check_message2_pq(data: bytes) -> None:
    """``Initiator.read_message2`` (after message 1) in post-quantum mode."""
    _guarded("message2_pq", functools.partial(_message2, PQ), data)


def check_transport_decrypt(data: bytes) -> None:
    """``TransportSession.decrypt`` on a fresh and on a just-rekeyed session."""
    _guarded("transport_decrypt", _transport_decrypt, data)


def check_key_json(data: bytes) -> None:
    """``WorkerKeyPair.from_json`` / ``PublicKeyBundle.from_json`` of ``json.loads(data)``."""
    _guarded("key_json", _key_json, data)


def check_keyfile(data: bytes) -> None:
    """``load_keypair`` on a file holding ``data``."""
    _guarded("keyfile", _keyfile, data)


def check_link_stream(data: bytes) -> None:
    """``LinkDecoder``: accept, or ``LinkProtocolError``; byte by byte gives the same result."""
    _guarded("link_stream", _link_stream, data)


def check_link_hub(data: bytes) -> None:
    """The hub's side of a fresh link: accept, or ``LinkProtocolError`` and the link closed."""
    _guarded("link_hub", _link_hub, data)


def check_relay(data: bytes) -> None:
    """``ChannelRelay.check`` over 12-byte frame records: accept, or ``RelayViolation``."""
    _guarded("relay", _relay, data)


def check_pin_file(data: bytes) -> None:
    """``PinStore.load`` of a file: accept, or ``PinStoreError`` naming it, file untouched."""
    _guarded("pin_file", _pin_file, data)


def check_channel_message(data: bytes) -> None:
    """``channel_codec.decode``: accept (and re-encode to the same bytes), or
    ``ChannelProtocolError``."""
    _guarded("channel_message", _channel_message, data)


def check_reassembly(data: bytes) -> None:
    """``Reassembler.feed`` over 4-byte chunk records: the documented results, the bounds."""
    _guarded("reassembly", _reassembly, data)


def check_channel_endpoint(data: bytes) -> None:
    """A responder ``ChannelEndpoint`` fed encrypted records and garbage: documented events
    only, nothing raised; a decrypt failure ends the channel with one CLOSE frame."""
    _guarded("channel_endpoint", _channel_endpoint, data)


HARNESSES: dict[str, Callable[[bytes], None]] = {
    "message1_classic": check_message1_classic,
    "message1_pq": check_message1_pq,
    "message2_classic": check_message2_classic,
    "message2_pq": check_message2_pq,
    "transport_decrypt": check_transport_decrypt,
    "key_json": check_key_json,
    "keyfile": check_keyfile,
    "link_stream": check_link_stream,
    "link_hub": check_link_hub,
    "relay": check_relay,
    "pin_file": check_pin_file,
    "channel_message": check_channel_message,
    "reassembly": check_reassembly,
    "channel_endpoint": check_channel_endpoint,
}

_TARGETS: dict[str, Callable[[bytes], bool]] = {
    "message1_classic": functools.partial(_message1, CLASSIC),
    "message1_pq": functools.partial(_message1, PQ),
    "message2_classic": functools.partial(_message2, CLASSIC),
    "message2_pq": functools.partial(_message2, PQ),
    "transport_decrypt": _transport_decrypt,
    "key_json": _key_json,
    "keyfile": _keyfile,
    "link_stream": _link_stream,
    "link_hub": _link_hub,
    "relay": _relay,
    "pin_file": _pin_file,
    "channel_message": _channel_message,
    "reassembly": _reassembly,
    "channel_endpoint": _channel_endpoint,
}


def accepts(name: str, data: bytes) -> bool:
    """Like ``HARNESSES[name](data)``, but say whether leapcore accepted the input."""
    return _guarded(name, _TARGETS[name], data)


def seeds(name: str) -> list[bytes]:
    """Valid inputs for harness ``name`` (leapcore accepts every one)."""
    fx = fixtures()
    if name.startswith(("message1_", "message2_")):
        f = fx.modes[CLASSIC if name.endswith("classic") else PQ]
        return [f.message1 if name.startswith("message1_") else f.message2]
    if name == "transport_decrypt":
        return list(fx.frames)
    if name == "key_json":
        keypair = json.loads(fx.keypair_file)
        return [fx.keypair_file, json.dumps(keypair).encode(), fx.bundle_json]
    if name == "keyfile":
        return [fx.keypair_file]
    keys = fx.modes[PQ].keypair.public
    first_beat = Heartbeat(1, "pq", keys.x25519, keys.mlkem, keys.slhdsa)
    if name == "link_stream":
        return [
            encode_many([Connect(1, "t" * 48), first_beat, ChannelData(3, 1, 0, bytes(40))]),
            encode_many([OpenChannel(1, "w" * 48, fx.modes[PQ].message1, 2**24)]),
        ]
    if name == "link_hub":
        return [
            encode_many([Connect(1, "t" * 48), first_beat]),
            encode_many([ClientHello(1, "a" * 48)]),
        ]
    if name == "relay":

        def rec(direction: int, cid: int, flags: int, size: int) -> bytes:
            return (
                bytes([direction])
                + cid.to_bytes(8, "big")
                + bytes([flags])
                + size.to_bytes(2, "big")
            )

        return [
            rec(0, 1, 1, 65535) + rec(0, 3, 0, 40) + rec(1, 2, 0, 16) + rec(0, 1, 0, 100),
            rec(1, 0, 2, 0),
        ]
    if name == "pin_file":
        pin = {
            "x25519_public_key": base64.b64encode(keys.x25519).decode(),
            "mlkem_public_key": base64.b64encode(keys.mlkem).decode(),
            "slhdsa_public_key": base64.b64encode(keys.slhdsa).decode(),
            "first_seen_at": "2026-11-23T16:50:00.123456Z",
            "last_used_at": "2026-11-23T16:50:00Z",
        }
        return [
            json.dumps({"pins": {"w1": pin}}, indent=2).encode(),
            b'{"pins": {}}',
            b'{"pins": null}',
        ]
    if name == "channel_message":
        return [channel_encode(m) for m in _channel_messages()]
    if name == "reassembly":
        return _reassembly_seeds()
    if name == "channel_endpoint":
        return _endpoint_seeds()
    if name == "h2_server":
        return _h2_seeds()
    if name == "ws_server":
        return _ws_seeds()
    if name == "socks5":
        return _socks5_seeds()
    if name == "worker_policy":
        return _policy_seeds()
    raise KeyError(name)


def _channel_messages() -> list[Message]:
    """One message of every kind, with the boundary sizes of section 4.3."""
    dh = fixtures().modes[CLASSIC].keypair.x25519_public
    return [
        Request("ping"),
        Request("echo", b"payload"),
        Request("a" + "z0_.-" * 12 + "abc", bytes(100)),  # a 64-byte method
        Response(),
        Response(b"\x00" * 300),
        ErrorReply("not_found", "n\u00f6"),
        ErrorReply("x" * 64, "\u00e9" * (MAX_ERROR_MESSAGE // 2)),
        StreamRequest("watch.files", b"x"),
        StreamItem(b"item"),
        StreamEnd(),
        Cancel(),
        BytesOpen(262144, "tcp-forward", b"host:22"),
        BytesAccept(1),
        BytesData(b"\x01"),
        BytesData(b"\xa5" * MAX_BYTES_DATA),
        WindowUpdate(MAX_WINDOW),
        BytesEof(),
        BytesReset("reset", ""),
        RekeyRequest(dh, b""),
        RekeyRequest(dh, bytes(range(256)) * (MLKEM_CIPHERTEXT_SIZE // 256) + bytes(32)),
        RekeyAck(dh),
        RekeyReject(0),
        RekeyReject(MAX_WINDOW),
    ]


def _chunk_record(cid: int, flags: int, size: int) -> bytes:
    return bytes([cid, flags]) + size.to_bytes(2, "big")


def _reassembly_seeds() -> list[bytes]:
    r = _chunk_record
    more, final = FrameFlag.MORE, FrameFlag.FINAL
    return [
        # Two interleaved chunked messages, single-frame messages between their chunks.
        r(1, more, 100) + r(3, final, 5) + r(2, more, 0) + r(1, final, 1) + r(2, final, 7),
        # A message of exactly max_message_size: two full chunks.
        r(5, more, MAX_CHUNK) + r(5, final, MAX_CHUNK),
        # Four sequences in progress at once (the limit), then all finished.
        b"".join(r(c, more, 10) for c in (1, 2, 3, 4))
        + b"".join(r(c, final, 1) for c in (4, 3, 2, 1)),
        r(7, final, 0),
    ]


def _endpoint_record(flags: int, cid: int, body: bytes | Message) -> bytes:
    raw = body if isinstance(body, bytes) else channel_encode(body)
    return bytes([flags, cid]) + len(raw).to_bytes(2, "big") + raw


def _endpoint_seeds() -> list[bytes]:
    rec = _endpoint_record
    dh = fixtures().modes[CLASSIC].keypair.x25519_public
    blob = channel_encode(Request("blob", bytes(100)))
    return [
        # RPCs from the peer: a ping (answered by the endpoint), an answered and a cancelled
        # request, and a request in three chunks.
        rec(0, 1, Request("ping"))
        + rec(0, 3, Request("echo", b"hi"))
        + rec(0, 5, Request("echo", b"odd"))
        + rec(0, 5, Cancel())
        + rec(1, 7, blob[:40])
        + rec(1, 7, blob[40:80])
        + rec(0, 7, blob[80:]),
        # Streams the peer opens: server streams, an accepted and a refused byte stream.
        rec(0, 1, StreamRequest("watch", b""))
        + rec(0, 3, StreamRequest("tail", b"x"))
        + rec(0, 3, Cancel())
        + rec(0, 5, BytesOpen(4096, "pipe", b""))
        + rec(0, 5, BytesData(b"abc"))
        + rec(0, 5, WindowUpdate(100))
        + rec(0, 5, WindowUpdate(MAX_WINDOW - 4096 - 100))  # the credit at its maximum
        + rec(0, 5, BytesData(b"\x00" * (ENDPOINT_WINDOW - 3)))  # the window, to the byte
        + rec(0, 5, BytesEof())
        + rec(0, 7, BytesOpen(10, "pipe", b"z")),
        # Streams the endpoint opens (ids 2, 4, 6, 8, 10), answered by the peer.
        rec(_ACTION, 0, b"q")
        + rec(_ACTION, 1, b"")
        + rec(_ACTION, 2, b"")
        + rec(_ACTION, 3, b"")
        + rec(0, 2, Response(b"r"))
        + rec(0, 4, StreamItem(b"i"))
        + rec(0, 4, StreamEnd())
        + rec(0, 6, BytesAccept(1000))
        + rec(0, 6, BytesData(b"d"))
        + rec(0, 6, BytesReset("done", ""))
        + rec(0, 8, Response())
        + rec(_ACTION, 0, b"")
        + rec(0, 10, ErrorReply("not_found", "no such thing")),
        # Four chunked requests in progress at once (the reassembly limit), a single-frame
        # request between their chunks (as MORE, it would be a fifth), then their ends.
        b"".join(rec(1, c, blob[:50]) for c in (1, 3, 5, 7))
        + rec(0, 9, Request("echo", b""))
        + b"".join(rec(0, c, blob[50:]) for c in (7, 5, 3, 1)),
        # A rekey (accepted: the minimum interval has passed), a second one (rejected), and
        # traffic under the old key (the previous receive key is still in its grace window).
        rec(0, 1, RekeyRequest(dh, b""))
        + rec(0, 3, RekeyRequest(dh, b""))
        + rec(0, 5, Request("echo", b"")),
    ]


# ---------------------------------------------------------------------------
# The network listener: a real LinkServer over an in-memory stream (trio, MockClock).
#
# ``h2_server``: the HTTP/2 preface, then ``data``; ``ws_server``: a valid WebSocket
# upgrade request for ``/link``, then ``data``. Then the peer's side is shut (EOF) while
# everything the server writes is read. Contract: ``LinkServer.handle`` serves the
# connection or ends it, with at most one log line about it and never an error record
# (a traceback means a bug); it returns within 60 s of mock time (no hang). Accepted: a
# route was answered or the link received bytes; rejected: it was not.

_NET_LOGGER = "leapcore.net.listen"
_WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_WS_REQUEST = (
    "GET /link HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {_WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _served_route(answer: bytes) -> bool:
    return b"ok\n" in answer


def _serve_bytes(first: bytes, data: bytes) -> tuple[bool, bytes]:
    """Run one connection carrying ``first + data``; (the link got bytes, server output)."""
    got: list[bytes] = []

    async def on_link(pipe: Any, transport: str, peer: str) -> None:
        with contextlib.suppress(LinkClosed):
            while True:
                chunk = await pipe.receive()
                got.append(bytes(chunk))
                await pipe.send(bytes(chunk))

    def route() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    answer = bytearray()
    records = _Records()
    logger = logging.getLogger(_NET_LOGGER)
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)

    async def run() -> bool:
        server = LinkServer(on_link, routes={"/healthz": route})
        server_end, client_end = trio.testing.memory_stream_pair()
        finished = False
        with trio.move_on_after(60):
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    nonlocal finished
                    await server.handle(server_end)
                    finished = True

                async def drain() -> None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        while chunk := await client_end.receive_some(65536):
                            answer.extend(chunk)

                nursery.start_soon(serve)
                nursery.start_soon(drain)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await client_end.send_all(first + data)
                    await client_end.send_eof()
        return finished

    try:
        with single_exception():  # a bug surfaces as itself, not as a trio group
            finished = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    _expect(finished, "the server did not end the connection within 60 s after EOF (a hang)")
    bad = [r for r in records.records if r.levelno >= logging.ERROR or r.exc_info]
    _expect(not bad, f"internal error serving the connection: {[r.getMessage() for r in bad]}")
    closed = [r for r in records.records if "closed:" in r.getMessage()]
    _expect(len(closed) <= 1, f"more than one line for one connection: {closed}")
    return bool(got), bytes(answer)


def _h2_server(data: bytes) -> bool:
    linked, answer = _serve_bytes(H2_PREFACE, data)
    return linked or _served_route(answer)


#: Close codes a server sends when it fails a connection for what the peer sent.
_WS_FAILED: Final = frozenset({1002, 1003, 1007, 1008, 1009})


def _ws_failed(answer: bytes) -> bool:
    """Whether the server's output (a 101 response, then unmasked frames) holds a close
    frame failing the connection for bad input."""
    end = answer.find(b"\r\n\r\n")
    pos = end + 4 if end >= 0 else len(answer)
    while len(answer) - pos >= 2:
        opcode, length = answer[pos] & 0x0F, answer[pos + 1] & 0x7F
        pos += 2
        if length >= 126:
            size = 2 if length == 126 else 8
            length = int.from_bytes(answer[pos : pos + size], "big")
            pos += size
        if opcode == 0x8 and length >= 2:
            return int.from_bytes(answer[pos : pos + 2], "big") in _WS_FAILED
        pos += length
    return False


def _ws_server(data: bytes) -> bool:
    linked, answer = _serve_bytes(_WS_REQUEST, data)
    return linked and not _ws_failed(answer)


def check_h2_server(data: bytes) -> None:
    """A LinkServer given the HTTP/2 preface then ``data``: served or ended, never raised,
    logged an error or hung."""
    _guarded("h2_server", _h2_server, data)


def check_ws_server(data: bytes) -> None:
    """A LinkServer given a WebSocket upgrade then ``data`` (frames): the same contract."""
    _guarded("ws_server", _ws_server, data)


HARNESSES["h2_server"] = check_h2_server
HARNESSES["ws_server"] = check_ws_server
_TARGETS["h2_server"] = _h2_server
_TARGETS["ws_server"] = _ws_server


def _h2_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _h2_seeds() -> list[bytes]:
    import hpack

    def block(*pairs: tuple[str, str]) -> bytes:
        return bytes(hpack.Encoder().encode(list(pairs)))

    get = block((":method", "GET"), (":path", "/healthz"), (":scheme", "http"), (":authority", "x"))
    post = block((":method", "POST"), (":path", "/link"), (":scheme", "http"), (":authority", "x"))
    settings = _h2_frame(0x4, 0, 0, b"")
    ack = _h2_frame(0x4, 0x1, 0, b"")
    link_bytes = encode_many([Heartbeat(1)])
    return [
        settings + _h2_frame(0x1, 0x5, 1, get),  # HEADERS, END_STREAM | END_HEADERS
        settings + ack + _h2_frame(0x1, 0x4, 1, post) + _h2_frame(0x0, 0, 1, link_bytes),
        settings
        + _h2_frame(0x1, 0x1, 1, get[:3])  # a header block split over CONTINUATION
        + _h2_frame(0x9, 0x4, 1, get[3:])
        + _h2_frame(0x6, 0, 0, b"12345678")  # PING
        + _h2_frame(0x8, 0, 1, (100).to_bytes(4, "big")),  # WINDOW_UPDATE
    ]


def _ws_frame(first: int, payload: bytes) -> bytes:
    """A masked client frame (mask key zero: the payload is sent as is)."""
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 65536:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return bytes([first]) + length + bytes(4) + payload


def _ws_seeds() -> list[bytes]:
    link_bytes = encode_many([Heartbeat(1)])
    return [
        _ws_frame(0x82, link_bytes),  # FIN | BINARY
        _ws_frame(0x89, b"ping")
        + _ws_frame(0x02, link_bytes[:3])
        + _ws_frame(0x80, link_bytes[3:]),
        _ws_frame(0x82, link_bytes) + _ws_frame(0x8A, b"unsolicited pong"),
    ]


# ---------------------------------------------------------------------------
# The SOCKS5 server codec (leapcore.proto.socks5), fed the way a tunnel listener feeds it.
#
# ``data`` is records: a length byte, then that many bytes (the last record takes what is
# left): each record is one ``receive_data`` chunk; a zero length is the client's EOF (and
# ends the input); the input's end is an EOF too. After each chunk the harness asks
# ``next_event`` and takes ``data_to_send``, as the listener does, and stops at the request
# (what follows is the tunnel's). Contract: a ``ConnectRequest`` (accepted) or
# ``Socks5Error`` with a documented reason (rejected), never another exception, and never
# "need more" after EOF (a connection that would hang). Invariants: a rejected server is
# CLOSED, refuses ``next_event`` and owes only a documented reply; an accepted request is
# well formed, answered ``05 00`` and in phase REPLY, and a success reply opens it; the
# outcome (request or reason, bytes owed, bytes after the request) is the same whether the
# bytes come in these chunks, all at once or one at a time.

#: Every ``Socks5Error.reason`` the codec documents.
SOCKS5_REASONS = frozenset(
    {
        "bad_version",
        "no_acceptable_method",
        "command_not_supported",
        "address_type_not_supported",
        "bad_request",
        "bad_domain",
        "truncated",
        "too_much_data",
    }
)
_SOCKS5_FAILURE_REPLIES = frozenset(
    encode_reply(code)
    for code in (
        Reply.COMMAND_NOT_SUPPORTED,
        Reply.ADDRESS_TYPE_NOT_SUPPORTED,
        Reply.HOST_UNREACHABLE,
    )
)
_SOCKS5_EOF = None  # a chunk that stands for the client's EOF


def _socks5_chunks(data: bytes) -> list[bytes | None]:
    """The records of ``data``, then an EOF (``None``)."""
    chunks: list[bytes | None] = []
    at = 0
    while at < len(data):
        size = data[at]
        if size == 0:
            break
        chunks.append(data[at + 1 : at + 1 + size])
        at += 1 + size
    chunks.append(_SOCKS5_EOF)
    return chunks


#: One run's outcome: ("request", the request, bytes sent, bytes after the request) or
#: ("error", the reason, bytes sent, b"").
_Socks5Outcome = tuple[str, object, bytes, bytes]


def _socks5_run(chunks: list[bytes | None]) -> _Socks5Outcome:
    server = Socks5Server()
    sent = bytearray()
    try:
        for index, chunk in enumerate(chunks):
            server.receive_data(b"" if chunk is None else chunk)
            event = server.next_event()
            sent += server.data_to_send()
            if event is not None:
                after = server.leftover + b"".join(c for c in chunks[index + 1 :] if c)
                _socks5_accepted(server, event, bytes(sent))
                return "request", event, bytes(sent), after
            _expect(chunk is not None, "next_event asks for more bytes after the EOF (a hang)")
    except Socks5Error as exc:
        owed = bytes(sent) + server.data_to_send()
        _socks5_rejected(server, exc, owed)
        return "error", exc.reason, owed, b""
    raise HarnessFailure("the chunks ran out without an EOF")  # unreachable: EOF is last


def _socks5_rejected(server: Socks5Server, exc: Socks5Error, owed: bytes) -> None:
    _expect(exc.reason in SOCKS5_REASONS, f"undocumented Socks5Error reason {exc.reason!r}")
    _expect(exc.code == "socks5_error", f"Socks5Error with code {exc.code!r}")
    _expect(server.phase is Phase.CLOSED, f"a failed exchange left in phase {server.phase}")
    reply = owed.removeprefix(b"\x05\x00")  # the method choice, if the greeting was fine
    _expect(
        reply in (b"", b"\x05\xff") or reply in _SOCKS5_FAILURE_REPLIES,
        f"an undocumented reply owed: {owed.hex()}",
    )
    try:
        server.next_event()
    except Socks5Error as again:
        _expect(again.reason == "closed", f"a closed exchange raised {again.reason!r}")
    else:
        raise HarnessFailure("a failed exchange went on")
    server.receive_data(b"more")  # ignored once closed
    _expect(server.data_to_send() == b"", "a closed exchange has more to send")


def _socks5_accepted(server: Socks5Server, event: object, sent: bytes) -> None:
    _expect(isinstance(event, ConnectRequest), f"an undocumented event {event!r}")
    assert isinstance(event, ConnectRequest)
    _expect(sent == b"\x05\x00", f"a request accepted after sending {sent.hex()}")
    _expect(server.phase is Phase.REPLY, f"an accepted request in phase {server.phase}")
    _expect(0 <= event.port <= 65535, f"port {event.port}")
    if event.address_type is AddressType.IPV4:
        _expect(ipaddress.ip_address(event.host).version == 4, f"IPv4 {event.host!r}")
    elif event.address_type is AddressType.IPV6:
        _expect(ipaddress.ip_address(event.host).version == 6, f"IPv6 {event.host!r}")
    else:
        size = len(event.host.encode())
        _expect(0 < size <= 255 and event.host.isprintable(), f"domain {event.host!r}")
    _expect(server.next_event() is None, "a request awaiting its reply gave another event")
    server.reply(Reply.SUCCEEDED)
    _expect(server.data_to_send() == encode_reply(Reply.SUCCEEDED), "the success reply")
    _expect(server.phase is Phase.OPEN, f"a succeeded request in phase {server.phase}")


def _socks5(data: bytes) -> bool:
    chunks = _socks5_chunks(data)
    outcome = _socks5_run(chunks)
    payload = b"".join(c for c in chunks if c)
    if len(payload) <= MAX_BUFFERED:  # more at once is refused too_much_data, by design
        whole = _socks5_run([payload, _SOCKS5_EOF])
        _expect(whole == outcome, f"all at once: {whole!r}, in chunks: {outcome!r}")
    # One byte at a time (the decision falls within a greeting and a request: 519 bytes).
    head, tail = payload[:600], payload[600:]
    single: list[bytes | None] = [head[i : i + 1] for i in range(len(head))]
    bytewise = _socks5_run([*single, tail, _SOCKS5_EOF] if tail else [*single, _SOCKS5_EOF])
    _expect(bytewise == outcome, f"byte by byte: {bytewise!r}, in chunks: {outcome!r}")
    return outcome[0] == "request"


def check_socks5(data: bytes) -> None:
    """``Socks5Server`` fed records as chunks, then EOF: a ``ConnectRequest`` or
    ``Socks5Error``, the same however the bytes are split."""
    _guarded("socks5", _socks5, data)


HARNESSES["socks5"] = check_socks5
_TARGETS["socks5"] = _socks5


def _socks5_records(*chunks: bytes) -> bytes:
    return b"".join(bytes([len(c)]) + c for c in chunks)


def _socks5_seeds() -> list[bytes]:
    r = _socks5_records
    greeting = b"\x05\x01\x00"
    ipv4 = b"\x05\x01\x00\x01" + bytes([10, 0, 0, 7]) + (5432).to_bytes(2, "big")
    ipv6 = b"\x05\x01\x00\x04" + bytes(15) + b"\x01" + (22).to_bytes(2, "big")
    name = b"db.internal"
    domain = b"\x05\x01\x00\x03" + bytes([len(name)]) + name + (80).to_bytes(2, "big")
    long_name = (b"a" * 63 + b".") * 3 + b"b" * 63  # 255 bytes, the most a request holds
    longest = b"\x05\x01\x00\x03\xff" + long_name + (443).to_bytes(2, "big")
    every_method = b"\x05\xff" + bytes(range(1, 256))  # the longest greeting, 0 not first
    every_method = every_method[:-1] + b"\x00"
    return [
        r(greeting + ipv4),  # all in one chunk
        r(b"\x05", b"\x03\x02", b"\x01\x00", ipv6[:7], ipv6[7:]),  # several methods, split
        r(*(bytes([b]) for b in greeting + domain), b"GET / HTTP/1.0\r\n"),  # early data
        r(every_method[:255], every_method[255:], longest[:200], longest[200:]),
        r(greeting, domain) + b"\x00" + r(b"ignored after the EOF"),
    ]


# The worker's policy file (leapcore.proto.worker_policy), as the worker reads it.


def _worker_policy(data: bytes) -> bool:
    try:
        policy = parse_policy(data, source="policy.toml", home="/home/fuzz")
    except ConfigError as exc:
        _expect(str(exc).startswith("policy.toml: "), f"error not naming the file: {exc}")
        return False
    summary = policy.summary()
    _expect(json.loads(json.dumps(summary)) == summary, "the summary is not plain data")
    return True


def check_worker_policy(data: bytes) -> None:
    """``parse_policy``: a policy, or ``ConfigError`` naming the file."""
    _guarded("worker_policy", _worker_policy, data)


HARNESSES["worker_policy"] = check_worker_policy
_TARGETS["worker_policy"] = _worker_policy


def _policy_seeds() -> list[bytes]:
    return [
        b"",
        b'[exec]\nallow = ["pytest", "/usr/bin/git"]\ndeny = ["ssh"]\nmax_cpu_seconds = 60\n'
        b'max_memory_mb = 512\nmax_open_files = 256\nrun_as_user = "builder"\n',
        b'[files]\nroots = ["~/work", "/tmp/scratch"]\n[services]\ndisabled = ["pty"]\n',
        b'[tunnel]\nallow = ["10.0.0.0/8:5432", "*.example.com:443"]\ndeny = ["[::1]"]\n',
    ]
