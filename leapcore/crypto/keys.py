"""A worker's composite keypair and the public-key bundle the hub hands out.

A worker always holds all three key pairs (X25519, ML-KEM-1024,
SLH-DSA-SHAKE-256f), whatever its encryption mode. The JSON form uses
LeapMux's field names with standard base64 values (``spec/handshake.md``
§7)::

    public_key, private_key                  X25519, 32 B each
    mlkem_public_key, mlkem_private_key      1568 B, and the 64-byte seed d || z
    slhdsa_public_key, slhdsa_private_key    64 B, 128 B

Decoding is strict and checks that every public key matches its private key.
File reading and writing live in :mod:`leapcore.store.keyfile`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from pqcrypto.sign import slh_dsa_shake_256f as _slhdsa

from ..errors import KeyFileError, LeapcoreError
from ..records import b64decode_strict, b64encode, structure_strict
from .fingerprint import fingerprint, fingerprint_digest
from .primitives import (
    MLKEM_PUBLIC_KEY_SIZE,
    MLKEM_SEED_SIZE,
    SLHDSA_PUBLIC_KEY_SIZE,
    SLHDSA_SECRET_KEY_SIZE,
    X25519_KEY_SIZE,
    MLKEMPrivateKey,
    RandomSource,
    X25519PrivateKey,
    mlkem_private_key,
    mlkem_public_from_seed,
    system_random,
    x25519_private_key,
    x25519_public,
)

__all__ = ["KEY_FIELDS", "PUBLIC_KEY_FIELDS", "PublicKeyBundle", "WorkerKeyPair"]

#: JSON field name -> (attribute, exact length in bytes), private and public parts.
KEY_FIELDS: dict[str, tuple[str, int]] = {
    "public_key": ("x25519_public", X25519_KEY_SIZE),
    "private_key": ("x25519_private", X25519_KEY_SIZE),
    "mlkem_public_key": ("mlkem_public", MLKEM_PUBLIC_KEY_SIZE),
    "mlkem_private_key": ("mlkem_seed", MLKEM_SEED_SIZE),
    "slhdsa_public_key": ("slhdsa_public", SLHDSA_PUBLIC_KEY_SIZE),
    "slhdsa_private_key": ("slhdsa_private", SLHDSA_SECRET_KEY_SIZE),
}
#: JSON field name -> (attribute of :class:`PublicKeyBundle`, exact length).
PUBLIC_KEY_FIELDS: dict[str, tuple[str, int]] = {
    "public_key": ("x25519", X25519_KEY_SIZE),
    "mlkem_public_key": ("mlkem", MLKEM_PUBLIC_KEY_SIZE),
    "slhdsa_public_key": ("slhdsa", SLHDSA_PUBLIC_KEY_SIZE),
}


def _length(size: int) -> Callable[[Any, attrs.Attribute[bytes], bytes], None]:
    def check(_inst: Any, attribute: attrs.Attribute[bytes], value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != size:
            got = len(value) if isinstance(value, bytes) else type(value).__name__
            raise KeyFileError(f"{attribute.name} must be {size} bytes, got {got}")

    return check


@attrs.frozen
class _B64Record:
    """Any mapping of field name -> base64 string, checked for type only."""

    fields: dict[str, str]


def _decode_fields(
    data: Mapping[str, object],
    spec: Mapping[str, tuple[str, int]],
    *,
    what: str,
    error: type[LeapcoreError],
) -> dict[str, bytes]:
    if not isinstance(data, Mapping):
        raise error(f"{what} must be a JSON object, got {type(data).__name__}")
    record = structure_strict({"fields": dict(data)}, _B64Record, what=what, error=error)
    missing = sorted(set(spec) - set(record.fields))
    unknown = sorted(set(record.fields) - set(spec))
    if missing or unknown:
        bits = []
        if missing:
            bits.append("missing " + ", ".join(missing))
        if unknown:
            bits.append("unknown " + ", ".join(unknown))
        raise error(f"invalid {what}: {'; '.join(bits)}")
    out = {}
    for name, (attr, size) in spec.items():
        try:
            raw = b64decode_strict(record.fields[name], field=name)
        except LeapcoreError as exc:
            raise error(f"invalid {what}: {exc}") from None
        if len(raw) != size:
            raise error(f"invalid {what}: {name} must be {size} bytes, got {len(raw)}")
        out[attr] = raw
    return out


@attrs.frozen
class PublicKeyBundle:
    """A worker's three public keys: what the hub stores, clients pin and fingerprints cover."""

    x25519: bytes = attrs.field(validator=_length(X25519_KEY_SIZE))
    mlkem: bytes = attrs.field(validator=_length(MLKEM_PUBLIC_KEY_SIZE))
    slhdsa: bytes = attrs.field(validator=_length(SLHDSA_PUBLIC_KEY_SIZE))

    @property
    def fingerprint(self) -> str:
        """Four words, e.g. ``deep-idea-obey-tack``."""
        return fingerprint(self.x25519, self.mlkem, self.slhdsa)

    @property
    def fingerprint_digest(self) -> bytes:
        return fingerprint_digest(self.x25519, self.mlkem, self.slhdsa)

    def to_json(self) -> dict[str, str]:
        return {
            name: b64encode(getattr(self, attr)) for name, (attr, _) in PUBLIC_KEY_FIELDS.items()
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, object], *, error: type[LeapcoreError] = KeyFileError
    ) -> PublicKeyBundle:
        """Strictly decode ``{public_key, mlkem_public_key, slhdsa_public_key}``."""
        return cls(**_decode_fields(data, PUBLIC_KEY_FIELDS, what="public key bundle", error=error))


@attrs.frozen(repr=False)
class WorkerKeyPair:
    """The worker's static keys. ``repr`` never shows private parts."""

    x25519_private: bytes = attrs.field(validator=_length(X25519_KEY_SIZE))
    x25519_public: bytes = attrs.field(validator=_length(X25519_KEY_SIZE))
    mlkem_seed: bytes = attrs.field(validator=_length(MLKEM_SEED_SIZE))
    mlkem_public: bytes = attrs.field(validator=_length(MLKEM_PUBLIC_KEY_SIZE))
    slhdsa_private: bytes = attrs.field(validator=_length(SLHDSA_SECRET_KEY_SIZE))
    slhdsa_public: bytes = attrs.field(validator=_length(SLHDSA_PUBLIC_KEY_SIZE))
    # Loaded key objects, kept so each handshake does not re-derive them from bytes.
    _x25519_key: X25519PrivateKey = attrs.field(init=False, eq=False, repr=False)
    _mlkem_key: MLKEMPrivateKey = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        x_key = x25519_private_key(self.x25519_private)
        if x25519_public(x_key) != self.x25519_public:
            raise KeyFileError("X25519 public key does not match its private key")
        m_key = mlkem_private_key(self.mlkem_seed)
        if mlkem_public_from_seed(m_key) != self.mlkem_public:
            raise KeyFileError("ML-KEM-1024 public key does not match its private seed")
        # An SLH-DSA secret key is SK.seed || SK.prf || PK.seed || PK.root.
        if self.slhdsa_private[SLHDSA_PUBLIC_KEY_SIZE:] != self.slhdsa_public:
            raise KeyFileError("SLH-DSA public key does not match its private key")
        object.__setattr__(self, "_x25519_key", x_key)
        object.__setattr__(self, "_mlkem_key", m_key)

    @property
    def x25519_key(self) -> X25519PrivateKey:
        """The loaded X25519 private key object."""
        return self._x25519_key

    @property
    def mlkem_key(self) -> MLKEMPrivateKey:
        """The loaded ML-KEM-1024 decapsulation key object."""
        return self._mlkem_key

    def __repr__(self) -> str:
        return f"WorkerKeyPair(fingerprint={self.public.fingerprint!r})"

    @classmethod
    def generate(
        cls,
        *,
        random: RandomSource = system_random,
        slhdsa_keygen: Callable[[], tuple[bytes, bytes]] | None = None,
    ) -> WorkerKeyPair:
        """A fresh keypair. X25519 and the ML-KEM seed come from ``random``; SLH-DSA keys from
        ``slhdsa_keygen`` (``() -> (public, secret)``), by default pqcrypto's own CSPRNG."""
        x_priv = random(X25519_KEY_SIZE)
        seed = random(MLKEM_SEED_SIZE)
        pk, sk = (slhdsa_keygen or _slhdsa.keygen)()
        return cls(
            x25519_private=x_priv,
            x25519_public=x25519_public(x_priv),
            mlkem_seed=seed,
            mlkem_public=mlkem_public_from_seed(seed),
            slhdsa_private=bytes(sk),
            slhdsa_public=bytes(pk),
        )

    @property
    def public(self) -> PublicKeyBundle:
        return PublicKeyBundle(self.x25519_public, self.mlkem_public, self.slhdsa_public)

    def to_json(self) -> dict[str, str]:
        """The six §7 fields, standard base64."""
        return {name: b64encode(getattr(self, attr)) for name, (attr, _) in KEY_FIELDS.items()}

    @classmethod
    def from_json(
        cls, data: Mapping[str, object], *, error: type[LeapcoreError] = KeyFileError
    ) -> WorkerKeyPair:
        """Strictly decode exactly the six §7 fields; keys must match each other."""
        fields = _decode_fields(data, KEY_FIELDS, what="worker key material", error=error)
        try:
            return cls(**fields)
        except KeyFileError as exc:
            raise error(f"invalid worker key material: {exc}") from None
