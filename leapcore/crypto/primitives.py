"""Cryptographic primitives of the handshake, as small pure functions.

Everything here is deterministic given its inputs: randomness and the SLH-DSA
signer are handed in by callers. The only library calls are to
``cryptography`` (X25519, ChaCha20-Poly1305, ML-KEM-1024), ``pqcrypto``
(SLH-DSA-SHAKE-256f) and ``hashlib``/``hmac`` (BLAKE2b).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from pqcrypto.sign import slh_dsa_shake_256f as _slhdsa

from ..errors import BadSignature, HandshakeError, LocalError, LowOrderPoint

__all__ = [
    "AEAD_TAG_SIZE",
    "HASH_SIZE",
    "MLKEM_CIPHERTEXT_SIZE",
    "MLKEM_PUBLIC_KEY_SIZE",
    "MLKEM_SEED_SIZE",
    "MLKEM_SHARED_SECRET_SIZE",
    "SLHDSA_PUBLIC_KEY_SIZE",
    "SLHDSA_SECRET_KEY_SIZE",
    "SLHDSA_SIGNATURE_SIZE",
    "X25519_KEY_SIZE",
    "Encapsulator",
    "MLKEMPrivateKey",
    "RandomSource",
    "Signer",
    "X25519PrivateKey",
    "aead_decrypt",
    "aead_encrypt",
    "blake2b",
    "hkdf2",
    "mlkem_decapsulate",
    "mlkem_encapsulate",
    "mlkem_private_key",
    "mlkem_public_from_seed",
    "nonce_bytes",
    "slhdsa_sign",
    "slhdsa_verify",
    "system_random",
    "x25519_dh",
    "x25519_private_key",
    "x25519_public",
]

X25519_KEY_SIZE: Final = 32
HASH_SIZE: Final = 64
AEAD_TAG_SIZE: Final = 16
MLKEM_PUBLIC_KEY_SIZE: Final = 1568
MLKEM_CIPHERTEXT_SIZE: Final = 1568
MLKEM_SHARED_SECRET_SIZE: Final = 32
MLKEM_SEED_SIZE: Final = 64
SLHDSA_PUBLIC_KEY_SIZE: Final = 64
SLHDSA_SECRET_KEY_SIZE: Final = 128
SLHDSA_SIGNATURE_SIZE: Final = 49856

#: ``random(n)`` returns ``n`` uniformly random bytes.
RandomSource = Callable[[int], bytes]
#: ``encapsulate(encapsulation_key)`` returns ``(ciphertext, shared_secret)``.
Encapsulator = Callable[[bytes], tuple[bytes, bytes]]
#: ``sign(message)`` returns an SLH-DSA-SHAKE-256f signature of ``message``.
Signer = Callable[[bytes], bytes]

X25519PrivateKey = x25519.X25519PrivateKey
MLKEMPrivateKey = mlkem.MLKEM1024PrivateKey

_ZERO32: Final = bytes(32)
_NONCE: Final = struct.Struct("<4xI4x")


def system_random(n: int) -> bytes:
    """The production randomness source: the operating system's CSPRNG."""
    return secrets.token_bytes(n)


def blake2b(data: bytes) -> bytes:
    """Unkeyed BLAKE2b-512."""
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise's two-output HKDF over HMAC-BLAKE2b-512."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    return out1, out2


#: ``nonce_bytes(n)``: the 12-byte AEAD nonce, four zero bytes, ``uint32_le(n)``, four zero
#: bytes. A bound method rather than a function: it is on the per-frame hot path.
nonce_bytes: Final = _NONCE.pack


def aead_encrypt(key: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(n), plaintext, ad)


def aead_decrypt(key: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes | None:
    """Decrypt and authenticate; ``None`` when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(n), ciphertext, ad)
    except InvalidTag:
        return None


def x25519_private_key(private: bytes | X25519PrivateKey) -> X25519PrivateKey:
    """Load a raw 32-byte X25519 private key (loading also computes the public key: reuse it)."""
    if isinstance(private, X25519PrivateKey):
        return private
    if len(private) != X25519_KEY_SIZE:
        raise LocalError(f"X25519 private key must be 32 bytes, got {len(private)}")
    return X25519PrivateKey.from_private_bytes(private)


def x25519_public(private: bytes | X25519PrivateKey) -> bytes:
    return x25519_private_key(private).public_key().public_bytes_raw()


def x25519_dh(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    """X25519; a low-order peer key (all-zero shared secret) raises :class:`LowOrderPoint`."""
    key = x25519_private_key(private)
    if len(public) != X25519_KEY_SIZE:
        raise HandshakeError(f"X25519 public key must be 32 bytes, got {len(public)}")
    try:
        shared = key.exchange(x25519.X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise LowOrderPoint("X25519 produced an all-zero shared secret (low-order point)") from None
    if shared == _ZERO32:  # pragma: no cover - cryptography already refuses these
        raise LowOrderPoint("X25519 produced an all-zero shared secret (low-order point)")
    return shared


def mlkem_private_key(seed: bytes | MLKEMPrivateKey) -> MLKEMPrivateKey:
    if isinstance(seed, MLKEMPrivateKey):
        return seed
    if len(seed) != MLKEM_SEED_SIZE:
        raise LocalError(f"ML-KEM-1024 seed must be {MLKEM_SEED_SIZE} bytes, got {len(seed)}")
    return MLKEMPrivateKey.from_seed_bytes(seed)


def mlkem_public_from_seed(seed: bytes | MLKEMPrivateKey) -> bytes:
    return mlkem_private_key(seed).public_key().public_bytes_raw()


def mlkem_encapsulate(encapsulation_key: bytes) -> tuple[bytes, bytes]:
    """ML-KEM-1024 encapsulation with fresh OS randomness: ``(ciphertext, shared_secret)``."""
    try:
        public = mlkem.MLKEM1024PublicKey.from_public_bytes(encapsulation_key)
    except ValueError as exc:
        raise HandshakeError(f"invalid ML-KEM-1024 encapsulation key: {exc}") from None
    shared, ciphertext = public.encapsulate()
    return ciphertext, shared


def mlkem_decapsulate(seed: bytes | MLKEMPrivateKey, ciphertext: bytes) -> bytes:
    """ML-KEM-1024 decapsulation (implicit rejection: never fails on a modified ciphertext)."""
    if len(ciphertext) != MLKEM_CIPHERTEXT_SIZE:
        raise HandshakeError(
            f"ML-KEM-1024 ciphertext must be {MLKEM_CIPHERTEXT_SIZE} bytes, got {len(ciphertext)}"
        )
    return mlkem_private_key(seed).decapsulate(ciphertext)


def slhdsa_sign(secret_key: bytes, message: bytes) -> bytes:
    """SLH-DSA-SHAKE-256f, pure mode, empty context, randomized. ~125 ms; holds the GIL."""
    return bytes(_slhdsa.sign(secret_key, message))


def slhdsa_verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is valid for ``message``."""
    try:
        _slhdsa.verify(public_key, message, signature)
    except Exception as exc:  # pqcrypto raises its own InvalidSignatureError or ValueError
        raise BadSignature(f"SLH-DSA signature over the transcript is invalid: {exc}") from None
