"""The hybrid post-quantum Noise_NK handshake, as sans-IO state machines.

:class:`Initiator` is the client, :class:`Responder` the worker. Both follow
``spec/handshake.md`` step by step; the step numbers in comments refer to it.
Nothing here does I/O: messages are bytes in and bytes out, randomness,
ML-KEM encapsulation and SLH-DSA signing are injectable callables.

The responder's signature is a separate step so a driver can run the
~125 ms, GIL-holding SLH-DSA signature in another process::

    responder = Responder(keypair, mode)
    to_sign = responder.read_message1(message1)   # None in classic mode
    signature = await run_in_process(sign, to_sign)
    message2 = responder.write_message2(signature)
    session = responder.session()

Legal calls per state are the table :data:`TRANSITIONS`; a call the table
does not allow raises :class:`~leapcore.errors.HandshakeStateError` and
changes nothing. Any failure while writing or reading a message moves the
handshake to ``FAILED`` for good and drops its secrets. Messages may be any
bytes-like object.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from ..errors import HandshakeError, HandshakeStateError, LocalError, MessageLengthError
from .keys import PublicKeyBundle, WorkerKeyPair
from .mode import EncryptionMode, parse_encryption_mode
from .primitives import (
    AEAD_TAG_SIZE,
    HASH_SIZE,
    MLKEM_CIPHERTEXT_SIZE,
    SLHDSA_SIGNATURE_SIZE,
    X25519_KEY_SIZE,
    Encapsulator,
    RandomSource,
    Signer,
    X25519PrivateKey,
    aead_decrypt,
    aead_encrypt,
    blake2b,
    hkdf2,
    mlkem_decapsulate,
    mlkem_encapsulate,
    slhdsa_sign,
    slhdsa_verify,
    system_random,
    x25519_dh,
    x25519_private_key,
    x25519_public,
)
from .transport import TransportSession

__all__ = [
    "PROTOCOL_NAME",
    "TRANSITIONS",
    "HandshakeState",
    "Initiator",
    "Operation",
    "Responder",
    "SymmetricState",
    "Trace",
    "message1_length",
    "message2_length",
]

PROTOCOL_NAME: Final = b"Noise_NK_25519_ChaChaPoly_BLAKE2b"

_PREFIX: Final = X25519_KEY_SIZE + AEAD_TAG_SIZE  # E||tag1 and F||tag2: 48 bytes


def message1_length(mode: EncryptionMode) -> int:
    """1616 bytes post-quantum, 48 classic."""
    return _PREFIX + (MLKEM_CIPHERTEXT_SIZE if mode is EncryptionMode.POST_QUANTUM else 0)


def message2_length(mode: EncryptionMode) -> int:
    """49904 bytes post-quantum, 48 classic."""
    return _PREFIX + (SLHDSA_SIGNATURE_SIZE if mode is EncryptionMode.POST_QUANTUM else 0)


class SymmetricState:
    """Noise's SymmetricState over BLAKE2b-512 and ChaCha20-Poly1305."""

    __slots__ = ("ck", "h", "k", "n")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        # The name fits in HASHLEN, so it is padded, not hashed.
        self.h = protocol_name.ljust(HASH_SIZE, b"\x00")
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = blake2b(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp = hkdf2(self.ck, ikm)
        self.k = temp[:32]
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            out = plaintext
        else:
            out = aead_encrypt(self.k, self.n, self.h, plaintext)
            self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes | None:
        """``None`` when authentication fails (state then unchanged)."""
        if self.k is None:
            out: bytes | None = ciphertext
        else:
            out = aead_decrypt(self.k, self.n, self.h, ciphertext)
            if out is None:
                return None
            self.n += 1
        self.mix_hash(ciphertext)
        return out

    def wipe(self) -> None:
        self.h = self.ck = b""
        self.k = None


class HandshakeState(enum.Enum):
    START = "start"
    #: Initiator: message 1 sent, waiting for message 2.
    AWAIT_MESSAGE2 = "await-message2"
    #: Responder: message 1 accepted; sign (post-quantum) and write message 2.
    RESPOND = "respond"
    #: Keys are ready; :meth:`session` may be taken once.
    DONE = "done"
    #: The session was taken; all secrets are wiped.
    SPLIT = "split"
    FAILED = "failed"


class Operation(enum.Enum):
    WRITE_MESSAGE1 = "write_message1"
    READ_MESSAGE1 = "read_message1"
    WRITE_MESSAGE2 = "write_message2"
    READ_MESSAGE2 = "read_message2"
    SESSION = "session"


#: The handshake state machines: (role, state, operation) -> next state.
TRANSITIONS: Final[dict[tuple[str, HandshakeState, Operation], HandshakeState]] = {
    ("initiator", HandshakeState.START, Operation.WRITE_MESSAGE1): HandshakeState.AWAIT_MESSAGE2,
    ("initiator", HandshakeState.AWAIT_MESSAGE2, Operation.READ_MESSAGE2): HandshakeState.DONE,
    ("initiator", HandshakeState.DONE, Operation.SESSION): HandshakeState.SPLIT,
    ("responder", HandshakeState.START, Operation.READ_MESSAGE1): HandshakeState.RESPOND,
    ("responder", HandshakeState.RESPOND, Operation.WRITE_MESSAGE2): HandshakeState.DONE,
    ("responder", HandshakeState.DONE, Operation.SESSION): HandshakeState.SPLIT,
}


#: ``trace(point, h)`` is called with the running hash at each named point of the handshake:
#: ``h0``, ``h_after_premessage``, ``h_after_msg1_payload``, ``h_after_mlkem_ct`` (post-quantum),
#: ``h_final``. For interoperability debugging and the known-answer tests.
Trace = Callable[[str, bytes], None]


class _Party:
    _role: str

    def __init__(
        self, mode: EncryptionMode | str, random: RandomSource, trace: Trace | None
    ) -> None:
        self.mode = parse_encryption_mode(mode)
        self.state = HandshakeState.START
        self._random = random
        self._trace = trace
        self._sym = SymmetricState()
        self._keys: tuple[bytes, bytes] | None = None  # (send, receive)
        self._note("h0")
        # Steps 1-2: InitSymmetric(name); MixHash(empty prologue).
        self._sym.mix_hash(b"")

    def _note(self, point: str) -> None:
        if self._trace is not None:
            self._trace(point, self._sym.h)

    @property
    def handshake_hash(self) -> bytes:
        """The running transcript hash ``h`` (wiped once the session is taken)."""
        return self._sym.h

    def _begin(self, op: Operation) -> HandshakeState:
        """Check ``op`` against :data:`TRANSITIONS`; return the state it leads to."""
        target = TRANSITIONS.get((self._role, self.state, op))
        if target is None:
            raise HandshakeStateError(
                f"{self._role} cannot {op.value} in state {self.state.value!r}"
            )
        return target

    def _fail(self) -> None:
        self.state = HandshakeState.FAILED
        self._wipe()

    def _wipe(self) -> None:
        self._sym.wipe()

    def _split(self, ss: bytes | None) -> tuple[bytes, bytes]:
        """Steps 14-15: (k1, k2)."""
        ck = self._sym.ck
        if ss is not None:
            ck, _ = hkdf2(ck, ss)
        t1, t2 = hkdf2(ck, b"")
        return t1[:32], t2[:32]

    def session(self) -> TransportSession:
        """The transport session; callable once, after the handshake completed."""
        target = self._begin(Operation.SESSION)
        assert self._keys is not None
        send, recv = self._keys
        self._keys = None
        self.state = target
        return TransportSession(send, recv)

    def _random_bytes(self, n: int) -> bytes:
        value = self._random(n)
        if not isinstance(value, bytes) or len(value) != n:
            raise LocalError(f"random source returned a bad value for {n} bytes")
        return value


class Initiator(_Party):
    """The client side: knows the worker's public keys, speaks first."""

    _role = "initiator"

    def __init__(
        self,
        worker_keys: PublicKeyBundle,
        mode: EncryptionMode | str = EncryptionMode.POST_QUANTUM,
        *,
        random: RandomSource = system_random,
        encapsulate: Encapsulator = mlkem_encapsulate,
        trace: Trace | None = None,
    ) -> None:
        super().__init__(mode, random, trace)
        self._worker = worker_keys
        self._encapsulate = encapsulate
        self._e: X25519PrivateKey | None = None
        self._ct = b""
        self._ss: bytes | None = None
        # Step 3: pre-message, the responder's static X25519 key only.
        self._sym.mix_hash(worker_keys.x25519)
        self._note("h_after_premessage")

    def write_message1(self) -> bytes:
        """Steps 4-8: ``E || tag1 [|| ML-KEM ciphertext]``."""
        target = self._begin(Operation.WRITE_MESSAGE1)
        try:
            message = self._write_message1()
        except BaseException:
            self._fail()
            raise
        self.state = target
        return message

    def _write_message1(self) -> bytes:
        sym = self._sym
        e = self._e = x25519_private_key(self._random_bytes(32))
        public_e = x25519_public(e)
        sym.mix_hash(public_e)  # 4
        sym.mix_key(x25519_dh(e, self._worker.x25519))  # 5
        tag1 = sym.encrypt_and_hash(b"")  # 6
        self._note("h_after_msg1_payload")
        if self.mode is EncryptionMode.CLASSIC:
            return public_e + tag1
        ct, ss = self._encapsulate(self._worker.mlkem)  # 7
        if len(ct) != MLKEM_CIPHERTEXT_SIZE or len(ss) != 32:
            raise LocalError("ML-KEM encapsulation returned values of the wrong size")
        self._ct, self._ss = ct, ss
        sym.mix_hash(ct)  # 8
        self._note("h_after_mlkem_ct")
        return public_e + tag1 + ct

    def read_message2(self, message: bytes) -> None:
        """Steps 9-15; verify the worker's signature (post-quantum). Raises on any defect."""
        target = self._begin(Operation.READ_MESSAGE2)
        try:
            self._read_message2(bytes(message))
        except BaseException:
            self._fail()
            raise
        self.state = target

    def _read_message2(self, message: bytes) -> None:
        expected = message2_length(self.mode)
        if len(message) != expected:
            raise MessageLengthError(
                f"message 2 must be {expected} bytes in {self.mode} mode, got {len(message)}"
            )
        sym = self._sym
        assert self._e is not None
        public_f = message[:X25519_KEY_SIZE]
        sym.mix_hash(public_f)  # 9
        sym.mix_key(x25519_dh(self._e, public_f))  # 10
        if sym.decrypt_and_hash(message[X25519_KEY_SIZE:_PREFIX]) is None:  # 11
            raise HandshakeError(
                "message 2 failed authentication (tampered, or not from this worker)"
            )
        self._note("h_final")
        if self.mode is EncryptionMode.POST_QUANTUM:
            assert self._ss is not None
            transcript = blake2b(sym.h + self._ct + self._ss)  # 12
            slhdsa_verify(self._worker.slhdsa, transcript, message[_PREFIX:])  # 13
        k1, k2 = self._split(self._ss)  # 14-15
        self._keys = (k2, k1)  # initiator sends with k2, receives with k1
        self._wipe()

    def _wipe(self) -> None:
        super()._wipe()
        self._e = self._ss = None
        self._ct = b""


class Responder(_Party):
    """The worker side: holds the static keys, answers message 1."""

    _role = "responder"

    def __init__(
        self,
        keypair: WorkerKeyPair,
        mode: EncryptionMode | str = EncryptionMode.POST_QUANTUM,
        *,
        random: RandomSource = system_random,
        signer: Signer | None = None,
        trace: Trace | None = None,
    ) -> None:
        super().__init__(mode, random, trace)
        self._keypair = keypair
        self._signer = signer
        self._prefix = b""  # F || tag2
        self._ss: bytes | None = None
        self._transcript: bytes | None = None
        self._sym.mix_hash(keypair.x25519_public)  # 3
        self._note("h_after_premessage")

    def read_message1(self, message: bytes) -> bytes | None:
        """Steps 4-12. Returns the transcript to sign (post-quantum), ``None`` in classic mode."""
        target = self._begin(Operation.READ_MESSAGE1)
        try:
            self._read_message1(bytes(message))
        except BaseException:
            self._fail()
            raise
        self.state = target
        return self._transcript

    def _read_message1(self, message: bytes) -> None:
        expected = message1_length(self.mode)
        if len(message) != expected:
            raise MessageLengthError(
                f"message 1 must be {expected} bytes in {self.mode} mode, got {len(message)}"
            )
        sym = self._sym
        public_e = message[:X25519_KEY_SIZE]
        sym.mix_hash(public_e)  # 4
        sym.mix_key(x25519_dh(self._keypair.x25519_key, public_e))  # 5
        if sym.decrypt_and_hash(message[X25519_KEY_SIZE:_PREFIX]) is None:  # 6
            raise HandshakeError(
                "message 1 failed authentication (the client holds a different worker key)"
            )
        self._note("h_after_msg1_payload")
        ct = message[_PREFIX:]
        if self.mode is EncryptionMode.POST_QUANTUM:
            self._ss = mlkem_decapsulate(self._keypair.mlkem_key, ct)  # 7
            sym.mix_hash(ct)  # 8
            self._note("h_after_mlkem_ct")
        f = x25519_private_key(self._random_bytes(32))
        public_f = x25519_public(f)
        sym.mix_hash(public_f)  # 9
        sym.mix_key(x25519_dh(f, public_e))  # 10
        self._prefix = public_f + sym.encrypt_and_hash(b"")  # 11
        self._note("h_final")
        if self.mode is EncryptionMode.POST_QUANTUM:
            assert self._ss is not None
            self._transcript = blake2b(sym.h + ct + self._ss)  # 12

    @property
    def transcript(self) -> bytes | None:
        """The bytes the worker signs (post-quantum, after message 1), else ``None``."""
        return self._transcript

    def sign_transcript(self) -> bytes:
        """Sign the transcript in-line (the injected signer, or the worker's own key)."""
        if self.state is not HandshakeState.RESPOND or self._transcript is None:
            raise HandshakeStateError(
                f"nothing to sign in state {self.state.value!r} ({self.mode} mode)"
            )
        if self._signer is not None:
            return self._signer(self._transcript)
        return slhdsa_sign(self._keypair.slhdsa_private, self._transcript)  # 13

    def write_message2(self, signature: bytes | None = None) -> bytes:
        """``F || tag2 [|| signature]``; in post-quantum mode signs in-line when not given one."""
        target = self._begin(Operation.WRITE_MESSAGE2)
        if self.mode is EncryptionMode.POST_QUANTUM:
            if signature is None:
                signature = self.sign_transcript()
            if len(signature) != SLHDSA_SIGNATURE_SIZE:
                # The caller's signer misbehaved; the handshake can still be retried with a
                # correct signature, so the state is left as it is.
                raise LocalError(
                    f"signature must be {SLHDSA_SIGNATURE_SIZE} bytes, got {len(signature)}"
                )
            message = self._prefix + signature
        else:
            if signature is not None:
                raise LocalError("classic mode takes no signature")
            message = self._prefix
        k1, k2 = self._split(self._ss)  # 14-15
        self._keys = (k1, k2)  # responder sends with k1, receives with k2
        self._wipe()
        self.state = target
        return message

    def _wipe(self) -> None:
        super()._wipe()
        self._ss = self._transcript = None
        self._prefix = b""
