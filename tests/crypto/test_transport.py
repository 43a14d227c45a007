"""TransportSession / CipherState: framing limits, nonces, tampering, the grace window.

Keys are fixed bytes here; the vectors (test_vectors.py) pin the real ones.
Every hostile frame must raise exactly DecryptError (code ``decrypt_failed``)
and close the session, after which every call raises SessionClosed.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from support.helpers import expect

from leapcore.crypto.transport import (
    HARD_NONCE_LIMIT,
    SOFT_NONCE_LIMIT,
    CipherState,
    TransportSession,
    rekeyed_key,
)
from leapcore.errors import (
    DecryptError,
    LocalError,
    NonceExhausted,
    PlaintextTooLarge,
    SessionClosed,
)
from leapcore.proto.limits import GRACE_WINDOW, MAX_CIPHERTEXT, MAX_PLAINTEXT

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
DH = bytes(range(200, 232))
AUTH_FAILED = (
    r"^transport frame failed authentication at receive nonce \d+ "
    r"\(tampered, replayed, reordered or wrong key\); channel closed$"
)
CLOSED = r"^transport session is closed$"


def pair(**kw) -> tuple[TransportSession, TransportSession]:
    """(a, b) where a sends with K1 and b receives with K1, and vice versa."""
    return TransportSession(K1, K2, **kw), TransportSession(K2, K1)


def assert_closed(session: TransportSession) -> None:
    assert session.closed
    assert not session.has_previous_key(0.0)
    for fn, args in [
        (session.encrypt, (b"x",)),
        (session.decrypt, (bytes(17), 0.0)),
        (session.rotate_send, (DH, b"")),
        (session.rotate_receive, (DH, b"", 0.0)),
    ]:
        expect(SessionClosed, CLOSED, fn, *args)


def reference_frame(key: bytes, n: int, plaintext: bytes) -> bytes:
    nonce = b"\x00" * 4 + n.to_bytes(4, "little") + b"\x00" * 4
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, None)


# ---------------------------------------------------------------------------
# Basics.


def test_roundtrip_both_ways_and_counters():
    a, b = pair()
    for i in range(5):
        message = bytes([i]) * i
        assert b.decrypt(a.encrypt(message), 0.0) == message
        assert a.decrypt(b.encrypt(message + b"!"), 0.0) == message + b"!"
        assert (a.send_nonce, a.recv_nonce, b.send_nonce, b.recv_nonce) == (i + 1,) * 4
    assert not a.closed and not b.closed


def test_frames_are_plain_chacha20poly1305_with_the_spec_nonce():
    a, _ = pair()
    for n in range(3):
        assert a.encrypt(b"frame") == reference_frame(K1, n, b"frame")
    far = TransportSession(K1, K2, send_n=0x01020304)
    assert far.encrypt(b"far") == reference_frame(K1, 0x01020304, b"far")


def test_empty_plaintext_is_allowed():
    a, b = pair()
    frame = a.encrypt(b"")
    assert len(frame) == 16
    assert b.decrypt(frame, 0.0) == b""


def test_bad_key_length():
    for key in (b"", bytes(31), bytes(33)):
        expect(LocalError, rf"^cipher key must be 32 bytes, got {len(key)}$", CipherState, key)
        expect(LocalError, "^cipher key must be 32 bytes", TransportSession, key, K2)
        expect(LocalError, "^cipher key must be 32 bytes", TransportSession, K1, key)


def test_close_by_caller():
    a, _ = pair()
    a.close()
    assert_closed(a)


# ---------------------------------------------------------------------------
# Hostile frames.


def test_every_bit_flip_of_a_frame():
    plaintext = b"attack at dawn, bring snacks"
    a, _ = pair()
    a.encrypt(b"first")
    frame = a.encrypt(plaintext)  # nonce 1
    for bit in range(len(frame) * 8):
        tampered = bytearray(frame)
        tampered[bit // 8] ^= 1 << (bit % 8)
        _, b = pair()
        assert b.decrypt(reference_frame(K1, 0, b"first"), 0.0) == b"first"
        expect(DecryptError, AUTH_FAILED, b.decrypt, bytes(tampered), 0.0)
        assert_closed(b)
    # The untampered frame does decrypt.
    _, b = pair()
    b.decrypt(reference_frame(K1, 0, b"first"), 0.0)
    assert b.decrypt(frame, 0.0) == plaintext


def test_every_truncation_and_extensions_of_a_frame():
    a, _ = pair()
    frame = a.encrypt(b"x" * 40)
    cases = [frame[:n] for n in range(len(frame))] + [frame + b"\x00", frame + frame]
    for tampered in cases:
        _, b = pair()
        if len(tampered) < 16:
            expect(
                DecryptError,
                rf"^transport frame of {len(tampered)} bytes is outside 16\.\.65535; "
                "channel closed$",
                b.decrypt,
                tampered,
                0.0,
            )
        else:
            expect(DecryptError, AUTH_FAILED, b.decrypt, tampered, 0.0)
        assert_closed(b)


def test_replayed_frame():
    a, b = pair()
    frame = a.encrypt(b"once")
    assert b.decrypt(frame, 0.0) == b"once"
    exc = expect(DecryptError, AUTH_FAILED, b.decrypt, frame, 0.0)
    assert "receive nonce 1" in str(exc)
    assert_closed(b)


def test_reordered_frames():
    a, b = pair()
    first, second = a.encrypt(b"one"), a.encrypt(b"two")
    expect(DecryptError, AUTH_FAILED, b.decrypt, second, 0.0)
    assert_closed(b)
    # The first frame, now arriving in order, is refused too: the session is gone.
    expect(SessionClosed, CLOSED, b.decrypt, first, 0.0)
    # ... and a dropped frame also desynchronises the counter for good.
    a, b = pair()
    a.encrypt(b"lost")
    expect(DecryptError, AUTH_FAILED, b.decrypt, a.encrypt(b"next"), 0.0)
    assert_closed(b)


def test_frame_for_the_other_direction_is_rejected():
    """A reflected frame (our own, sent back to us) does not authenticate: keys differ."""
    a, _ = pair()
    frame = a.encrypt(b"mirror")
    expect(DecryptError, AUTH_FAILED, a.decrypt, frame, 0.0)
    assert_closed(a)


# ---------------------------------------------------------------------------
# Size limits.


def test_plaintext_size_limit():
    a, b = pair()
    frame = a.encrypt(bytes(MAX_PLAINTEXT))  # 65519: fine
    assert MAX_PLAINTEXT == 65519 and len(frame) == MAX_CIPHERTEXT == 65535
    assert b.decrypt(frame, 0.0) == bytes(MAX_PLAINTEXT)
    assert a.send_nonce == 1

    expect(
        PlaintextTooLarge,
        r"^transport plaintext is 65520 bytes; the limit is 65519$",
        a.encrypt,
        bytes(MAX_PLAINTEXT + 1),
    )
    # Nothing consumed: the nonce did not advance and the session still works.
    assert a.send_nonce == 1 and not a.closed
    assert a.encrypt(b"after") == reference_frame(K1, 1, b"after")
    assert b.decrypt(reference_frame(K1, 1, b"after"), 0.0) == b"after"


def test_oversized_ciphertext_is_refused():
    _, b = pair()
    expect(
        DecryptError,
        r"^transport frame of 65536 bytes is outside 16\.\.65535; channel closed$",
        b.decrypt,
        bytes(MAX_CIPHERTEXT + 1),
        0.0,
    )
    assert_closed(b)
    assert b.recv_nonce == 0


# ---------------------------------------------------------------------------
# Nonce limits.


def test_send_nonce_hard_limit():
    a = TransportSession(K1, K2, send_n=HARD_NONCE_LIMIT)  # 2**32 - 1: one frame left
    b = TransportSession(K2, K1, recv_n=HARD_NONCE_LIMIT)
    frame = a.encrypt(b"last")
    assert frame == reference_frame(K1, 2**32 - 1, b"last")
    assert b.decrypt(frame, 0.0) == b"last"
    assert a.send_nonce == 2**32
    for _ in range(2):  # and it stays refused
        expect(
            NonceExhausted,
            r"^send key exhausted its nonces; the channel must re-handshake$",
            a.encrypt,
            b"more",
        )
    assert a.send_nonce == 2**32

    refused = TransportSession(K1, K2, send_n=2**32)
    expect(NonceExhausted, "^send key exhausted", refused.encrypt, b"")


def test_receive_nonce_hard_limit():
    b = TransportSession(K2, K1, recv_n=HARD_NONCE_LIMIT)
    assert b.decrypt(reference_frame(K1, HARD_NONCE_LIMIT, b"z"), 0.0) == b"z"
    assert b.recv_nonce == 2**32
    for _ in range(2):
        expect(
            NonceExhausted,
            r"^receive key exhausted its nonces; the channel must re-handshake$",
            b.decrypt,
            bytes(17),
            0.0,
        )
    assert b.recv_nonce == 2**32

    refused = TransportSession(K2, K1, recv_n=2**32)
    expect(NonceExhausted, "^receive key exhausted", refused.decrypt, bytes(16), 0.0)
    assert refused.recv_nonce == 2**32


def test_rekey_wanted_flips_exactly_past_the_soft_limit():
    assert SOFT_NONCE_LIMIT == 2**31 - 1
    a = TransportSession(K1, K2, send_n=2**31 - 2)
    a.encrypt(b"")
    assert a.send_nonce == 2**31 - 1 and not a.rekey_wanted
    a.encrypt(b"")
    assert a.send_nonce == 2**31 and a.rekey_wanted

    b = TransportSession(K2, K1, recv_n=2**31 - 1)
    assert not b.rekey_wanted
    b.decrypt(reference_frame(K1, 2**31 - 1, b""), 0.0)
    assert b.rekey_wanted
    assert not TransportSession(K1, K2).rekey_wanted


def test_rotate_send_resets_counter_and_rekey_wanted():
    a = TransportSession(K1, K2, send_n=2**31)
    assert a.rekey_wanted
    a.rotate_send(DH, b"")
    assert a.send_nonce == 0 and not a.rekey_wanted
    assert a.encrypt(b"new") == reference_frame(rekeyed_key(K1, DH, b""), 0, b"new")


# ---------------------------------------------------------------------------
# Rekey and the previous-key grace window.


def rotated_pair(now: float):
    """a -> b traffic: 3 frames under the old key delivered, then b rotates its receive key
    at ``now``; returns (a, b, [two further old-key frames a sent before its own rotation])."""
    a, b = pair()
    for i in range(3):
        b.decrypt(a.encrypt(b"old %d" % i), 0.0)
    in_flight = [a.encrypt(b"late 0"), a.encrypt(b"late 1")]
    b.rotate_receive(DH, b"pq", now)
    a.rotate_send(DH, b"pq")
    return a, b, in_flight


def test_previous_key_decrypts_inside_grace_window():
    now = 1000.0
    a, b, in_flight = rotated_pair(now)
    assert b.has_previous_key(now) and b.recv_nonce == 0
    # Old-key frames (at the old counter 3, 4) and new-key frames interleave freely.
    assert b.decrypt(in_flight[0], now + 1) == b"late 0"
    assert b.decrypt(a.encrypt(b"new 0"), now + 2) == b"new 0"
    assert b.decrypt(in_flight[1], now + GRACE_WINDOW - 0.001) == b"late 1"
    assert b.recv_nonce == 1
    assert b._recv.key == rekeyed_key(K1, DH, b"pq")


@pytest.mark.parametrize("late", [0.0, 0.5, 3600.0])
def test_previous_key_fails_from_the_deadline_on(late):
    now = 1000.0
    assert GRACE_WINDOW == 10.0
    _, b, in_flight = rotated_pair(now)
    deadline = now + 10.0 + late
    expect(DecryptError, AUTH_FAILED, b.decrypt, in_flight[0], deadline)
    assert_closed(b)


def test_previous_key_is_wiped_once_expired():
    now = 1000.0
    a, b, in_flight = rotated_pair(now)
    assert b.has_previous_key(now + 9.999)
    assert not b.has_previous_key(now + 10.0)
    # Gone for good, even if a later call carries an earlier clock reading.
    assert not b.has_previous_key(now)
    expect(DecryptError, AUTH_FAILED, b.decrypt, in_flight[0], now)
    assert a.send_nonce == 0


def test_new_key_frames_still_work_after_the_window():
    now = 1000.0
    a, b, _ = rotated_pair(now)
    assert b.decrypt(a.encrypt(b"new"), now + 60.0) == b"new"
    assert not b.has_previous_key(now + 60.0)


def test_second_rekey_replaces_the_previous_key():
    now = 1000.0
    a, b, in_flight = rotated_pair(now)
    b.rotate_receive(DH, b"again", now + 1)
    a.rotate_send(DH, b"again")
    # The epoch-0 key is gone: only one previous key is kept.
    expect(DecryptError, AUTH_FAILED, b.decrypt, in_flight[0], now + 2)


def test_old_send_key_is_dropped_by_rotate_send():
    a, b = pair()
    a.rotate_send(DH, b"")
    frame = a.encrypt(b"x")
    assert frame != reference_frame(K1, 0, b"x")
    expect(DecryptError, AUTH_FAILED, b.decrypt, frame, 0.0)


def test_rekeyed_key_derivation():
    """Rekey(k_old, dh, pq) = HKDF(HKDF(k_old, dh).o1, pq).o1[:32] (spec §5)."""
    import hashlib
    import hmac

    def hk(ck: bytes, ikm: bytes) -> bytes:
        t = hmac.new(ck, ikm, hashlib.blake2b).digest()
        return hmac.new(t, b"\x01", hashlib.blake2b).digest()

    for pq in (b"", bytes(range(32))):
        assert rekeyed_key(K1, DH, pq) == hk(hk(K1, DH), pq)[:32]
    assert rekeyed_key(K1, DH, b"") != rekeyed_key(K1, DH, b"\x00")
    assert rekeyed_key(K1, DH, b"") != rekeyed_key(K2, DH, b"")
