"""Known-answer tests: every one of LeapMux's six vectors, step by step (spec §9).

Private attributes read here (a test may; the production API does not expose
secrets): ``Responder._sym.ck`` / ``Initiator._sym.ck`` for ``ck`` before the
split, and ``TransportSession._send.key`` / ``._recv.key`` for the session keys.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from leapcore.crypto.fingerprint import (
    fingerprint,
    fingerprint_digest,
    fingerprint_indices,
    wordlist,
)
from leapcore.crypto.handshake import PROTOCOL_NAME, HandshakeState, Initiator
from leapcore.crypto.primitives import (
    MLKEM_PUBLIC_KEY_SIZE,
    mlkem_decapsulate,
    nonce_bytes,
    slhdsa_verify,
    x25519_dh,
    x25519_public,
)
from leapcore.crypto.rekey import accept_rekey, start_rekey
from leapcore.crypto.transport import CipherState, TransportSession, rekeyed_key
from leapcore.errors import BadSignature

PQ_POINTS = ["h0", "h_after_premessage", "h_after_msg1_payload", "h_after_mlkem_ct", "h_final"]
CLASSIC_POINTS = ["h0", "h_after_premessage", "h_after_msg1_payload", "h_final"]


def test_vector_files_are_complete(vector):
    """The vector itself is self-consistent (guards against a damaged copy)."""
    d = vector.data
    assert d["protocol_name"] == PROTOCOL_NAME.decode()
    assert len(vector.message1) == d["message1_len"] == (1616 if vector.is_pq else 48)
    assert len(vector.message2) == d["message2_len"] == (49904 if vector.is_pq else 48)
    assert x25519_public(vector.e) == vector.hex("initiator_ephemeral_public")
    assert x25519_public(vector.f) == vector.hex("responder_ephemeral_public")
    assert vector.message1[:32] == vector.hex("initiator_ephemeral_public")
    assert vector.message2[:32] == vector.hex("responder_ephemeral_public")
    if vector.is_pq:
        assert set(vector.trace) == set(PQ_POINTS)
        assert len(vector.ss) == 32
    else:
        assert set(vector.trace) == {"h_final"}
        assert vector.ss == b""


def test_message1_and_initiator_trace(vector):
    """Message 1 is byte-exact; the initiator's hash at each point is the responder's."""
    seen: dict[str, bytes] = {}
    draws: list[int] = []
    encapsulated: list[bytes] = []

    def random(n: int) -> bytes:
        draws.append(n)
        return vector.e

    def encapsulate(ek: bytes) -> tuple[bytes, bytes]:
        encapsulated.append(ek)
        return vector.ct, vector.ss

    initiator = Initiator(
        vector.bundle,
        vector.mode,
        random=random,
        encapsulate=encapsulate,
        trace=lambda point, h: seen.__setitem__(point, h),
    )
    assert initiator.write_message1() == vector.message1
    # The one random draw is the ephemeral, the vector's first recorded draw.
    assert draws == [32]
    assert bytes.fromhex(vector.data["initiator_rng_draws_in_order"][0]["hex"]) == vector.e
    if vector.is_pq:
        assert encapsulated == [vector.keypair.mlkem_public]
        assert len(encapsulated[0]) == MLKEM_PUBLIC_KEY_SIZE
        assert seen == {p: vector.trace[p] for p in PQ_POINTS if p != "h_final"}
    else:
        assert encapsulated == []
        assert list(seen) == [p for p in CLASSIC_POINTS if p != "h_final"]
    assert seen["h0"] == PROTOCOL_NAME + bytes(31)

    initiator.read_message2(vector.message2)
    assert seen["h_final"] == vector.trace["h_final"]
    assert initiator.state is HandshakeState.DONE


def test_responder_trace_and_transcript(vector):
    seen: dict[str, bytes] = {}
    responder = vector.responder(trace=lambda point, h: seen.__setitem__(point, h))
    transcript = responder.read_message1(vector.message1)
    if vector.is_pq:
        assert list(seen) == PQ_POINTS
        assert seen == vector.trace
        assert transcript == vector.transcript
        assert responder.transcript == vector.transcript
    else:
        assert list(seen) == CLASSIC_POINTS
        assert seen["h_final"] == vector.trace["h_final"]
        assert seen["h0"] == PROTOCOL_NAME + bytes(31)
        assert transcript is None
        assert responder.transcript is None
    assert responder.handshake_hash == vector.trace["h_final"]


def test_ck_before_split(vector):
    """``ck`` after step 10 (before steps 14-15), on both sides (reads ``_sym.ck``)."""
    responder = vector.responder()
    responder.read_message1(vector.message1)
    assert responder._sym.ck == vector.ck_before_split

    # The initiator computes steps 9-15 in one call and wipes ck at the end: catch it
    # at the h_final trace point, which lies between step 11 and step 14.
    captured: list[bytes] = []
    holder: list[Initiator] = []
    initiator = vector.initiator(
        trace=lambda point, h: captured.append(holder[0]._sym.ck) if point == "h_final" else None
    )
    holder.append(initiator)
    initiator.write_message1()
    initiator.read_message2(vector.message2)
    assert captured == [vector.ck_before_split]


def test_message2_prefix_and_vector_signature(vector):
    """F || tag2 is byte-exact; the vector's signature verifies over OUR transcript."""
    responder = vector.responder()
    transcript = responder.read_message1(vector.message1)
    if vector.is_pq:
        assert transcript is not None
        slhdsa_verify(vector.bundle.slhdsa, transcript, vector.signature)
        # ... and the check can fail: not over a different transcript.
        with pytest.raises(BadSignature):
            slhdsa_verify(vector.bundle.slhdsa, bytes(64), vector.signature)
        message2 = responder.write_message2(vector.signature)
    else:
        message2 = responder.write_message2()
    assert message2[:48] == vector.message2[:48]
    assert message2 == vector.message2


def test_fresh_signature_verifies(pq_vector):
    """Signing in-line with the vector's SLH-DSA secret key gives a different (randomized),
    equally valid signature that the initiator accepts."""
    responder = pq_vector.responder(real_signing=True)
    initiator = pq_vector.initiator_after_message1()
    responder.read_message1(pq_vector.message1)
    message2 = responder.write_message2()
    assert message2[:48] == pq_vector.message2[:48]
    assert message2[48:] != pq_vector.signature
    initiator.read_message2(message2)
    si, sr = initiator.session(), responder.session()
    assert si._send.key == pq_vector.session_keys["initiator_send_key"]
    assert sr._send.key == pq_vector.session_keys["responder_send_key"]


def test_session_keys(vector):
    si, sr = vector.handshake()
    keys = vector.session_keys
    assert si._send.key == keys["initiator_send_key"]
    assert si._recv.key == keys["initiator_recv_key"]
    assert sr._send.key == keys["responder_send_key"]
    assert sr._recv.key == keys["responder_recv_key"]
    # Responder sends with k1, initiator with k2: they are crossed, and distinct.
    assert si._send.key == sr._recv.key != si._recv.key == sr._send.key
    assert (si.send_nonce, si.recv_nonce, sr.send_nonce, sr.recv_nonce) == (0, 0, 0, 0)


def _frames(vector, key):
    return [
        (f["nonce"], f["plaintext"].encode(), bytes.fromhex(f["ciphertext"]))
        for f in vector.data[key]
    ]


def test_transport_frames(vector):
    si, sr = vector.handshake()
    i2r = _frames(vector, "transport_initiator_to_responder")
    r2i = _frames(vector, "transport_responder_to_initiator")
    assert [n for n, _, _ in i2r] == [0, 1, 2, 3] == [n for n, _, _ in r2i]
    for n, plaintext, ciphertext in i2r:
        assert si.send_nonce == n and sr.recv_nonce == n
        assert si.encrypt(plaintext) == ciphertext
        assert sr.decrypt(ciphertext, 0.0) == plaintext
    for n, plaintext, ciphertext in r2i:
        assert sr.send_nonce == n and si.recv_nonce == n
        assert sr.encrypt(plaintext) == ciphertext
        assert si.decrypt(ciphertext, 0.0) == plaintext
    # Independently of TransportSession: plain ChaCha20-Poly1305 with the §1 nonce layout.
    for n, plaintext, ciphertext in i2r:
        nonce = bytes(4) + n.to_bytes(4, "little") + bytes(4)
        assert nonce == nonce_bytes(n)
        aead = ChaCha20Poly1305(vector.session_keys["initiator_send_key"])
        assert aead.encrypt(nonce, plaintext, None) == ciphertext


@pytest.mark.parametrize("old_frame_when", ["before_finish", "after_finish"])
def test_full_rekey(vector, old_frame_when):
    """The vector's in-band rekey, with the initiator reading the responder's old-key frame
    either before applying the ack or after (through its retained previous key)."""
    rk = vector.rekey
    h = bytes.fromhex
    a, b = h(rk["initiator_ephemeral_private"]), h(rk["responder_ephemeral_private"])
    ct_r, pq = h(rk["mlkem_ciphertext"]), h(rk["pq_secret"])
    assert (len(ct_r), len(pq)) == ((1568, 32) if vector.is_pq else (0, 0))

    si, sr = vector.handshake()
    for _, plaintext, _ in _frames(vector, "transport_initiator_to_responder"):
        sr.decrypt(si.encrypt(plaintext), 0.0)
    for _, plaintext, _ in _frames(vector, "transport_responder_to_initiator"):
        si.decrypt(sr.encrypt(plaintext), 0.0)
    assert (si.send_nonce, sr.send_nonce) == (4, 4)
    initiator_old_recv = si._recv.key

    encapsulated: list[bytes] = []

    def encapsulate(ek: bytes) -> tuple[bytes, bytes]:
        encapsulated.append(ek)
        return ct_r, pq

    pending, request = start_rekey(
        vector.mode, vector.keypair.mlkem_public, random=lambda n: a, encapsulate=encapsulate
    )
    assert encapsulated == ([vector.keypair.mlkem_public] if vector.is_pq else [])
    assert request.dh_pub == h(rk["initiator_ephemeral_public"])
    assert request.mlkem_ct == ct_r
    if vector.is_pq:
        assert mlkem_decapsulate(vector.keypair.mlkem_seed, ct_r) == pq

    now = 500.0
    ack = accept_rekey(
        sr, request, vector.mode, vector.keypair.mlkem_seed, now=now, random=lambda n: b
    )
    assert ack.dh_pub == h(rk["responder_ephemeral_public"])
    dh = h(rk["dh_secret"])
    assert x25519_dh(a, ack.dh_pub) == dh == x25519_dh(b, request.dh_pub)

    after = {k: h(v) for k, v in rk["session_keys_after"].items()}
    assert sr._recv.key == after["responder_recv_key"]  # receive rotated first
    assert sr.send_nonce == 4

    # The one frame under the responder's OLD send key, at nonce 4: its plaintext is not in
    # the vector, so: our initiator decrypts it, and re-encrypting reproduces it.
    old_frame = h(rk["responder_old_key_frame"])
    if old_frame_when == "before_finish":
        assert si.recv_nonce == 4 and si._recv.key == initiator_old_recv
        plaintext = si.decrypt(old_frame, now)
        pending.finish(si, ack.dh_pub, now=now)
    else:
        pending.finish(si, ack.dh_pub, now=now)
        assert si.has_previous_key(now)
        plaintext = si.decrypt(old_frame, now + 1.0)  # via the retained previous key
        assert si.recv_nonce == 0  # the new key's counter did not move
    assert sr.encrypt(plaintext) == old_frame
    ack.rotate_send(sr)

    assert si._send.key == after["initiator_send_key"]
    assert si._recv.key == after["initiator_recv_key"]
    assert sr._send.key == after["responder_send_key"]
    assert sr._recv.key == after["responder_recv_key"]
    assert (
        rekeyed_key(vector.session_keys["initiator_send_key"], dh, pq)
        == after["initiator_send_key"]
    )

    for key, sender, receiver in [
        ("initiator_to_responder_after", si, sr),
        ("responder_to_initiator_after", sr, si),
    ]:
        frame = rk[key]
        assert frame["nonce"] == 0 == sender.send_nonce
        ciphertext = sender.encrypt(frame["plaintext"].encode())
        assert ciphertext == h(frame["ciphertext"])
        assert receiver.decrypt(ciphertext, now + 2.0) == frame["plaintext"].encode()


def test_fingerprint(vector):
    bundle = vector.bundle
    digest = vector.hex("fingerprint_digest")
    indices = tuple(vector.data["fingerprint_word_indices"])
    assert fingerprint_digest(bundle.x25519, bundle.mlkem, bundle.slhdsa) == digest
    assert bundle.fingerprint_digest == digest
    assert fingerprint_indices(digest) == indices == tuple(digest[:4])
    words = wordlist()
    expected = "-".join(words[i] for i in indices)
    assert fingerprint(bundle.x25519, bundle.mlkem, bundle.slhdsa) == expected
    assert bundle.fingerprint == expected
    assert len(expected) == 19


def test_spec_rekey_known_answer():
    """spec §5: k_old = 01..20, encrypt "x" once, Rekey(dh = a0..bf, pq = empty)."""
    k_old = bytes(range(1, 33))
    dh = bytes(range(0xA0, 0xC0))
    expected = bytes.fromhex("2c0f3a3f9a452bfe1bdfec4bf4fcfc412c28dc17be6865a3048d46")

    session = TransportSession(k_old, bytes(32))
    session.encrypt(b"x")
    assert session.send_nonce == 1
    session.rotate_send(dh, b"")
    assert session.send_nonce == 0
    assert session.encrypt(b"hello-rekey") == expected

    cipher = CipherState(k_old)
    cipher.encrypt(b"x")
    assert CipherState(rekeyed_key(cipher.key, dh, b"")).encrypt(b"hello-rekey") == expected

    peer = TransportSession(bytes(32), k_old)
    assert peer.decrypt(TransportSession(k_old, bytes(32)).encrypt(b"x"), 0.0) == b"x"
    peer.rotate_receive(dh, b"", 0.0)
    assert peer.decrypt(expected, 0.0) == b"hello-rekey"
