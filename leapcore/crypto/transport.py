"""Transport cipher state of one channel, after the handshake (sans-IO).

One :class:`TransportSession` holds both directions of a channel: a send
:class:`CipherState` and a receive :class:`CipherState`, plus, for 10 s after
a rekey, the previous receive key. Frames must be decrypted in the order
they were encrypted; the counter is never sent. Time is passed in as ``now``
(seconds on any monotonic clock). The frame sizes and the grace window are
:mod:`leapcore.proto.limits`' (``MAX_PLAINTEXT``, ``MAX_CIPHERTEXT``, ``GRACE_WINDOW``).
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import DecryptError, LocalError, NonceExhausted, PlaintextTooLarge, SessionClosed
from ..proto.limits import GRACE_WINDOW, MAX_CIPHERTEXT, MAX_PLAINTEXT
from .primitives import AEAD_TAG_SIZE, hkdf2, nonce_bytes

__all__ = [
    "HARD_NONCE_LIMIT",
    "SOFT_NONCE_LIMIT",
    "CipherState",
    "TransportSession",
    "rekeyed_key",
]

#: "Rekey wanted" once a counter is past this value.
SOFT_NONCE_LIMIT: Final = 2**31 - 1
#: Encrypt and decrypt are refused once a counter is past this value.
HARD_NONCE_LIMIT: Final = 2**32 - 1


def rekeyed_key(old_key: bytes, dh: bytes, pq: bytes) -> bytes:
    """The per-direction rekey derivation: ``HKDF(HKDF(k_old, dh).o1, pq).o1[:32]``."""
    c1, _ = hkdf2(old_key, dh)
    out, _ = hkdf2(c1, pq)
    return out[:32]


class CipherState:
    """A ChaCha20-Poly1305 key and its counter, for one direction."""

    __slots__ = ("_aead", "_key", "n")

    def __init__(self, key: bytes, n: int = 0) -> None:
        if len(key) != 32:
            raise LocalError(f"cipher key must be 32 bytes, got {len(key)}")
        self._key = key
        self._aead = ChaCha20Poly1305(key)
        self.n = n

    @property
    def key(self) -> bytes:
        return self._key

    def encrypt(self, plaintext: bytes | memoryview) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise PlaintextTooLarge(
                f"transport plaintext is {len(plaintext)} bytes; the limit is {MAX_PLAINTEXT}"
            )
        if self.n > HARD_NONCE_LIMIT:
            raise NonceExhausted("send key exhausted its nonces; the channel must re-handshake")
        out = self._aead.encrypt(nonce_bytes(self.n), plaintext, None)
        self.n += 1
        return out

    def try_decrypt(self, ciphertext: bytes) -> bytes | None:
        """Decrypt at the current counter; ``None`` (counter unchanged) when it fails."""
        if self.n > HARD_NONCE_LIMIT:
            raise NonceExhausted("receive key exhausted its nonces; the channel must re-handshake")
        try:
            out = self._aead.decrypt(nonce_bytes(self.n), ciphertext, None)
        except InvalidTag:
            return None
        self.n += 1
        return out


class TransportSession:
    """Both directions of one channel's transport encryption.

    Built by a finished handshake (:meth:`Initiator.session` /
    :meth:`Responder.session`). A decrypt failure is fatal: the session closes
    and every later call raises :class:`~leapcore.errors.SessionClosed`.
    """

    __slots__ = ("_closed", "_previous", "_previous_deadline", "_recv", "_send")

    def __init__(self, send_key: bytes, recv_key: bytes, *, send_n: int = 0, recv_n: int = 0):
        self._send = CipherState(send_key, send_n)
        self._recv = CipherState(recv_key, recv_n)
        self._previous: CipherState | None = None
        self._previous_deadline = 0.0
        self._closed = False

    # -- inspection ---------------------------------------------------------

    @property
    def send_nonce(self) -> int:
        return self._send.n

    @property
    def recv_nonce(self) -> int:
        return self._recv.n

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def rekey_wanted(self) -> bool:
        """True once either direction's counter is past the soft limit (2^31 - 1)."""
        return self._send.n > SOFT_NONCE_LIMIT or self._recv.n > SOFT_NONCE_LIMIT

    def has_previous_key(self, now: float) -> bool:
        """Whether a previous receive key is still inside its grace window at ``now``."""
        self._expire_previous(now)
        return self._previous is not None

    # -- data ---------------------------------------------------------------

    def encrypt(self, plaintext: bytes | memoryview) -> bytes:
        """Encrypt one frame (at most 65519 bytes of plaintext; empty is allowed)."""
        if self._closed:
            raise SessionClosed("transport session is closed")
        return self._send.encrypt(plaintext)

    def decrypt(self, ciphertext: bytes, now: float) -> bytes:
        """Decrypt the next frame in order.

        Tries the current receive key, then the previous one while its grace
        window lasts. Failure raises :class:`~leapcore.errors.DecryptError`
        and closes the session for good.
        """
        if self._closed:
            raise SessionClosed("transport session is closed")
        if self._previous is not None:
            self._expire_previous(now)
        if not AEAD_TAG_SIZE <= len(ciphertext) <= MAX_CIPHERTEXT:
            self.close()
            raise DecryptError(
                f"transport frame of {len(ciphertext)} bytes is outside "
                f"{AEAD_TAG_SIZE}..{MAX_CIPHERTEXT}; channel closed"
            )
        out = self._recv.try_decrypt(ciphertext)
        if out is None and self._previous is not None:
            out = self._previous.try_decrypt(ciphertext)
        if out is None:
            self.close()
            raise DecryptError(
                f"transport frame failed authentication at receive nonce {self._recv.n} "
                "(tampered, replayed, reordered or wrong key); channel closed"
            )
        return out

    # -- rekey --------------------------------------------------------------

    def rotate_send(self, dh: bytes, pq: bytes) -> None:
        """Replace the send key by its rekeyed successor (counter 0); the old key is dropped."""
        self._check_open()
        self._send = CipherState(rekeyed_key(self._send.key, dh, pq))

    def rotate_receive(self, dh: bytes, pq: bytes, now: float) -> None:
        """Replace the receive key; keep the old one for :data:`GRACE_WINDOW` seconds."""
        self._check_open()
        self._previous = self._recv
        self._previous_deadline = now + GRACE_WINDOW
        self._recv = CipherState(rekeyed_key(self._recv.key, dh, pq))

    def close(self) -> None:
        """Forget all keys; later calls raise :class:`~leapcore.errors.SessionClosed`."""
        self._closed = True
        self._previous = None

    # -- internals ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed("transport session is closed")

    def _expire_previous(self, now: float) -> None:
        if self._previous is not None and now >= self._previous_deadline:
            self._previous = None
