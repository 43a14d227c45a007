"""In-band rekey: the key material exchanged and how each side applies it (sans-IO).

Only the initiator (client) starts a rekey::

    # initiator
    pending, request = start_rekey(mode, worker_keys.mlkem)
    send(request)                      # under the current key
    # responder
    ack = accept_rekey(session, request, mode, keypair.mlkem_seed, now=now)
    #   -> receive key rotated (old kept 10 s); send the ack UNDER THE OLD SEND KEY:
    send(session.encrypt(frame(ack.dh_pub)))
    ack.rotate_send(session)           # then rotate the send key
    # initiator, on the matching ack
    pending.finish(session, ack_dh_pub, now=now)

How requests, acks and rejects are framed inside a channel is the channel
protocol's business; the timing rules are :mod:`leapcore.crypto.rekey_policy`.
"""

from __future__ import annotations

import attrs

from ..errors import LocalError, LowOrderPoint, RekeyError
from .mode import EncryptionMode
from .primitives import (
    MLKEM_CIPHERTEXT_SIZE,
    X25519_KEY_SIZE,
    Encapsulator,
    MLKEMPrivateKey,
    RandomSource,
    X25519PrivateKey,
    mlkem_decapsulate,
    mlkem_encapsulate,
    system_random,
    x25519_dh,
    x25519_private_key,
    x25519_public,
)
from .transport import TransportSession

__all__ = ["PendingRekey", "RekeyAcceptance", "RekeyRequest", "accept_rekey", "start_rekey"]


@attrs.frozen
class RekeyRequest:
    """The initiator's request: ephemeral X25519 key and (post-quantum) ML-KEM ciphertext."""

    dh_pub: bytes
    mlkem_ct: bytes = b""


@attrs.define
class PendingRekey:
    """The initiator's side of one rekey in flight."""

    _ephemeral: X25519PrivateKey | None = attrs.field(repr=False)
    _pq: bytes = attrs.field(repr=False)

    def finish(self, session: TransportSession, ack_dh_pub: bytes, *, now: float) -> None:
        """Apply the responder's ack: rotate send (old dropped) and receive (old kept 10 s)."""
        if self._ephemeral is None:
            raise LocalError("this rekey was already finished")
        if len(ack_dh_pub) != X25519_KEY_SIZE:
            raise RekeyError(f"rekey ack dh_pub must be 32 bytes, got {len(ack_dh_pub)}")
        try:
            dh = x25519_dh(self._ephemeral, ack_dh_pub)
        except LowOrderPoint as exc:
            raise RekeyError(f"rekey ack: {exc}") from None
        session.rotate_send(dh, self._pq)
        session.rotate_receive(dh, self._pq, now)
        self._ephemeral, self._pq = None, b""


def start_rekey(
    mode: EncryptionMode,
    worker_mlkem_public: bytes,
    *,
    random: RandomSource = system_random,
    encapsulate: Encapsulator = mlkem_encapsulate,
) -> tuple[PendingRekey, RekeyRequest]:
    """Make the initiator's request: a fresh ephemeral, and in post-quantum mode an
    encapsulation to the worker's *static* ML-KEM key."""
    a = x25519_private_key(random(X25519_KEY_SIZE))
    if mode is EncryptionMode.POST_QUANTUM:
        ct, ss = encapsulate(worker_mlkem_public)
    else:
        ct, ss = b"", b""
    return PendingRekey(a, ss), RekeyRequest(x25519_public(a), ct)


@attrs.define
class RekeyAcceptance:
    """The responder's side after accepting: the ack to send, and the send rotation to do
    once the ack has been encrypted under the old send key."""

    dh_pub: bytes
    _dh: bytes = attrs.field(repr=False)
    _pq: bytes = attrs.field(repr=False)

    def rotate_send(self, session: TransportSession) -> None:
        if not self._dh:
            raise LocalError("this rekey's send rotation was already applied")
        session.rotate_send(self._dh, self._pq)
        self._dh = self._pq = b""


def accept_rekey(
    session: TransportSession,
    request: RekeyRequest,
    mode: EncryptionMode,
    mlkem_seed: bytes | MLKEMPrivateKey,
    *,
    now: float,
    random: RandomSource = system_random,
) -> RekeyAcceptance:
    """Validate ``request``, rotate the receive key (old kept for the grace window) and return
    the ack. Invalid material raises :class:`RekeyError` and changes nothing; the channel
    must then be closed."""
    if len(request.dh_pub) != X25519_KEY_SIZE:
        raise RekeyError(f"rekey request dh_pub must be 32 bytes, got {len(request.dh_pub)}")
    expected_ct = MLKEM_CIPHERTEXT_SIZE if mode is EncryptionMode.POST_QUANTUM else 0
    if len(request.mlkem_ct) != expected_ct:
        raise RekeyError(
            f"rekey request mlkem_ct must be {expected_ct} bytes in {mode} mode, "
            f"got {len(request.mlkem_ct)}"
        )
    b = x25519_private_key(random(X25519_KEY_SIZE))
    try:
        dh = x25519_dh(b, request.dh_pub)
    except LowOrderPoint as exc:
        raise RekeyError(f"rekey request: {exc}") from None
    pq = mlkem_decapsulate(mlkem_seed, request.mlkem_ct) if expected_ct else b""
    session.rotate_receive(dh, pq, now)
    return RekeyAcceptance(x25519_public(b), dh, pq)
