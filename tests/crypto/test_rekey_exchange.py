"""The in-band rekey exchange (leapcore.crypto.rekey): start_rekey / accept_rekey / finish.

The vectors pin the exact derivation (test_vectors.py::test_full_rekey); these
tests cover the flow with fresh randomness and every way the peer's material
can be malformed. Timing policy is tested elsewhere (test_rekey_policy.py).
"""

from __future__ import annotations

import os

import pytest
from support.helpers import expect

from leapcore.crypto.mode import EncryptionMode
from leapcore.crypto.primitives import x25519_dh
from leapcore.crypto.rekey import (
    PendingRekey,
    RekeyAcceptance,
    RekeyRequest,
    accept_rekey,
    start_rekey,
)
from leapcore.crypto.transport import TransportSession
from leapcore.errors import LocalError, RekeyError, SessionClosed

ORDER_8_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
MODES = [EncryptionMode.POST_QUANTUM, EncryptionMode.CLASSIC]


def sessions() -> tuple[TransportSession, TransportSession]:
    """(initiator, responder) with fresh random keys, crossed."""
    k1, k2 = os.urandom(32), os.urandom(32)
    return TransportSession(k2, k1), TransportSession(k1, k2)


def keys(session: TransportSession) -> tuple[bytes, bytes, int, int]:
    return session._send.key, session._recv.key, session.send_nonce, session.recv_nonce


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_full_exchange(mode, generated_keypair):
    si, sr = sessions()
    for i in range(3):
        sr.decrypt(si.encrypt(b"before %d" % i), 0.0)
        si.decrypt(sr.encrypt(b"before %d" % i), 0.0)

    pending, request = start_rekey(mode, generated_keypair.mlkem_public)
    assert len(request.dh_pub) == 32
    assert len(request.mlkem_ct) == (1568 if mode is EncryptionMode.POST_QUANTUM else 0)
    # The request travels under the current key; so does other traffic meanwhile.
    in_flight = si.encrypt(b"sent before the initiator applied the ack")

    now = 100.0
    ack = accept_rekey(sr, request, mode, generated_keypair.mlkem_seed, now=now)
    assert len(ack.dh_pub) == 32 and ack.dh_pub != request.dh_pub
    ack_frame = sr.encrypt(b"ack:" + ack.dh_pub)  # under the responder's OLD send key
    ack.rotate_send(sr)

    assert si.decrypt(ack_frame, now) == b"ack:" + ack.dh_pub  # initiator, old receive key
    pending.finish(si, ack.dh_pub, now=now)

    assert si._send.key == sr._recv.key and si._recv.key == sr._send.key
    assert (si.send_nonce, si.recv_nonce, sr.send_nonce, sr.recv_nonce) == (0, 0, 0, 0)
    # The frame sent under the old key reaches the responder through its previous key.
    assert sr.decrypt(in_flight, now + 1) == b"sent before the initiator applied the ack"
    for i in range(3):
        assert sr.decrypt(si.encrypt(b"after %d" % i), now + 2) == b"after %d" % i
        assert si.decrypt(sr.encrypt(b"after %d" % i), now + 2) == b"after %d" % i
    assert si.has_previous_key(now + 9) and not si.has_previous_key(now + 10)


def test_post_quantum_secret_matters(generated_keypair):
    """Both directions change with the ML-KEM secret: a responder that decapsulated something
    else (here: another ciphertext) derives keys the initiator does not have."""
    mode = EncryptionMode.POST_QUANTUM
    si, sr = sessions()
    pending, request = start_rekey(mode, generated_keypair.mlkem_public)
    _, other = start_rekey(mode, generated_keypair.mlkem_public)
    forged = RekeyRequest(request.dh_pub, other.mlkem_ct)
    ack = accept_rekey(sr, forged, mode, generated_keypair.mlkem_seed, now=0.0)
    ack.rotate_send(sr)
    pending.finish(si, ack.dh_pub, now=0.0)
    assert si._send.key != sr._recv.key and si._recv.key != sr._send.key


def test_injected_randomness_and_encapsulation(generated_keypair):
    a, b = bytes(range(1, 33)), bytes(range(33, 65))
    calls = []

    def encapsulate(ek):
        calls.append(ek)
        return bytes(1568), bytes(32)

    _, request = start_rekey(
        EncryptionMode.POST_QUANTUM,
        generated_keypair.mlkem_public,
        random=lambda n: a,
        encapsulate=encapsulate,
    )
    assert calls == [generated_keypair.mlkem_public]
    assert request.mlkem_ct == bytes(1568)
    _, sr = sessions()
    ack = accept_rekey(
        sr,
        request,
        EncryptionMode.POST_QUANTUM,
        generated_keypair.mlkem_seed,
        now=0.0,
        random=lambda n: b,
    )
    assert x25519_dh(b, request.dh_pub) == x25519_dh(a, ack.dh_pub)
    # Classic mode never encapsulates.
    start_rekey(EncryptionMode.CLASSIC, b"", encapsulate=encapsulate)
    assert len(calls) == 1


# ---------------------------------------------------------------------------
# Malformed requests: RekeyError, and the responder's session is unchanged.


BAD_REQUESTS = {
    "dh_pub empty": (EncryptionMode.CLASSIC, RekeyRequest(b""), r"dh_pub must be 32 bytes, got 0$"),
    "dh_pub 31": (
        EncryptionMode.CLASSIC,
        RekeyRequest(bytes(31)),
        r"dh_pub must be 32 bytes, got 31$",
    ),
    "dh_pub 33": (
        EncryptionMode.CLASSIC,
        RekeyRequest(bytes(33)),
        r"dh_pub must be 32 bytes, got 33$",
    ),
    "classic with ct": (
        EncryptionMode.CLASSIC,
        RekeyRequest(bytes(range(32)), bytes(1568)),
        r"mlkem_ct must be 0 bytes in classic mode, got 1568$",
    ),
    "pq without ct": (
        EncryptionMode.POST_QUANTUM,
        RekeyRequest(bytes(range(32))),
        r"mlkem_ct must be 1568 bytes in post-quantum mode, got 0$",
    ),
    "pq ct 1567": (
        EncryptionMode.POST_QUANTUM,
        RekeyRequest(bytes(range(32)), bytes(1567)),
        r"mlkem_ct must be 1568 bytes in post-quantum mode, got 1567$",
    ),
    "pq ct 1569": (
        EncryptionMode.POST_QUANTUM,
        RekeyRequest(bytes(range(32)), bytes(1569)),
        r"mlkem_ct must be 1568 bytes in post-quantum mode, got 1569$",
    ),
    "dh_pub zero": (
        EncryptionMode.CLASSIC,
        RekeyRequest(bytes(32)),
        r"^rekey request: X25519 .*low-order",
    ),
    "dh_pub order 8": (
        EncryptionMode.POST_QUANTUM,
        RekeyRequest(ORDER_8_POINT, bytes(1568)),
        r"^rekey request: X25519 .*low-order",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_malformed_request(case, generated_keypair):
    mode, request, pattern = BAD_REQUESTS[case]
    _, sr = sessions()
    sr.decrypt(TransportSession(sr._recv.key, os.urandom(32)).encrypt(b"x"), 0.0)
    before = keys(sr)
    expect(
        RekeyError, pattern, accept_rekey, sr, request, mode, generated_keypair.mlkem_seed, now=0.0
    )
    assert keys(sr) == before
    assert not sr.has_previous_key(0.0)


@pytest.mark.parametrize(
    ("dh_pub", "pattern"),
    [
        (b"", r"^rekey ack dh_pub must be 32 bytes, got 0$"),
        (bytes(31), r"^rekey ack dh_pub must be 32 bytes, got 31$"),
        (bytes(64), r"^rekey ack dh_pub must be 32 bytes, got 64$"),
        (bytes(32), r"^rekey ack: X25519 .*low-order"),
        (ORDER_8_POINT, r"^rekey ack: X25519 .*low-order"),
    ],
    ids=["empty", "31", "64", "zero", "order8"],
)
def test_malformed_ack(dh_pub, pattern):
    si, _ = sessions()
    before = keys(si)
    pending, _ = start_rekey(EncryptionMode.CLASSIC, b"")
    expect(RekeyError, pattern, pending.finish, si, dh_pub, now=0.0)
    assert keys(si) == before
    assert not si.has_previous_key(0.0)


# ---------------------------------------------------------------------------
# Misuse and hygiene.


def test_finish_twice_is_refused():
    si, sr = sessions()
    pending, request = start_rekey(EncryptionMode.CLASSIC, b"")
    ack = accept_rekey(sr, request, EncryptionMode.CLASSIC, b"", now=0.0)
    pending.finish(si, ack.dh_pub, now=0.0)
    after = keys(si)
    expect(
        LocalError, r"^this rekey was already finished$", pending.finish, si, ack.dh_pub, now=0.0
    )
    assert keys(si) == after


def test_ack_rotate_send_twice_is_refused():
    _, sr = sessions()
    _, request = start_rekey(EncryptionMode.CLASSIC, b"")
    ack = accept_rekey(sr, request, EncryptionMode.CLASSIC, b"", now=0.0)
    ack.rotate_send(sr)
    after = keys(sr)
    expect(LocalError, r"^this rekey's send rotation was already applied$", ack.rotate_send, sr)
    assert keys(sr) == after


def test_rekey_on_a_closed_session():
    si, sr = sessions()
    pending, request = start_rekey(EncryptionMode.CLASSIC, b"")
    sr.close()
    expect(SessionClosed, "closed", accept_rekey, sr, request, EncryptionMode.CLASSIC, b"", now=0.0)
    si.close()
    _, sr2 = sessions()
    ack = accept_rekey(sr2, request, EncryptionMode.CLASSIC, b"", now=0.0)
    expect(SessionClosed, "closed", pending.finish, si, ack.dh_pub, now=0.0)


def test_secrets_not_in_repr_and_wiped(generated_keypair):
    a = bytes(range(1, 33))
    pending, request = start_rekey(
        EncryptionMode.POST_QUANTUM,
        generated_keypair.mlkem_public,
        random=lambda n: a,
        encapsulate=lambda ek: (bytes(1568), b"S" * 32),
    )
    assert isinstance(pending, PendingRekey)
    for text in (repr(pending), str(pending)):
        assert repr(a)[2:-1] not in text and "SSSS" not in text
    _, sr = sessions()
    ack = accept_rekey(
        sr, request, EncryptionMode.POST_QUANTUM, generated_keypair.mlkem_seed, now=0.0
    )
    assert isinstance(ack, RekeyAcceptance)
    assert ack._dh.hex() not in repr(ack) and repr(ack._dh)[2:-1] not in repr(ack)
    si, _ = sessions()
    ack.rotate_send(sr)
    assert ack._dh == b"" and ack._pq == b""
    pending.finish(si, ack.dh_pub, now=0.0)
    assert pending._ephemeral is None and pending._pq == b""
