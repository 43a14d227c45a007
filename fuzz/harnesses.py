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
``keyfile``            ``leapcore.keyfile.load_keypair`` of a      ``KeyFileError``
                       file holding ``data``
``link_stream``        ``LinkDecoder`` (whole, and byte by byte)   ``LinkProtocolError``
``link_hub``           ``LinkConnection(HUB).receive``             ``LinkProtocolError``
``relay``              ``ChannelRelay.check``, 12-byte records     ``RelayViolation``
                       (direction, correlation id, flags, size)
``pin_file``           ``PinStore.load`` of a file holding         ``PinStoreError``
                       ``data`` (and a verify after it)
=====================  ==========================================  ======================

(``HandshakeError`` and ``DecryptError`` are the ``RemoteProtocolError`` subclasses for network
input; ``HandshakeError`` includes ``MessageLengthError``, ``LowOrderPoint`` and
``BadSignature``.) Any other exception, or a broken invariant (a failed handshake not in state
``FAILED``, a failed decrypt that leaves the session open, a wrong plaintext length, ...),
raises :class:`HarnessFailure` chained to the cause. Every input gets fresh objects, so one
input never affects the next.

The fixtures are the known-answer vectors ``tests/vectors/{classic,pq}_seed1.json``: the
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
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leapcore.errors import (
    DecryptError,
    HandshakeError,
    KeyFileError,
    KeyMismatch,
    LinkProtocolError,
    PinStoreError,
    RelayViolation,
)
from leapcore.handshake import HandshakeState, Initiator, Responder
from leapcore.keyfile import load_keypair
from leapcore.keys import PublicKeyBundle, WorkerKeyPair
from leapcore.link_codec import (
    ChannelData,
    ClientHello,
    Connect,
    Heartbeat,
    LinkDecoder,
    OpenChannel,
    encode_many,
)
from leapcore.link_state import LinkConnection, LinkRole, LinkState
from leapcore.mode import EncryptionMode, parse_encryption_mode
from leapcore.pinstore import PinStore
from leapcore.relay import ChannelRelay, RelayDirection
from leapcore.transport import TransportSession

__all__ = [
    "HARNESSES",
    "REKEY_DH",
    "Fixtures",
    "HarnessFailure",
    "ModeFixture",
    "accepts",
    "check_key_json",
    "check_keyfile",
    "check_link_hub",
    "check_link_stream",
    "check_message1_classic",
    "check_message1_pq",
    "check_message2_classic",
    "check_message2_pq",
    "check_pin_file",
    "check_relay",
    "check_transport_decrypt",
    "describe",
    "fixtures",
    "make_initiator",
    "seeds",
]

VECTOR_DIR = Path(__file__).resolve().parent.parent / "tests" / "vectors"
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
    raise KeyError(name)
