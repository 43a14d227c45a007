"""Classic mode against an independent implementation: the ``noiseprotocol`` package.

Classic mode is exactly ``Noise_NK_25519_ChaChaPoly_BLAKE2b`` (spec §3) up to
one difference, spec §2 "Which key sends": after Split() a stock Noise
initiator sends with c1 (k1) and receives with c2 (k2); leapcore's initiator
sends with k2 and receives with k1 (and the responders mirror that). So the
handshake bytes are identical, and transport interoperates once noise's two
cipher states are swapped -- :func:`swap_cipher_states` does that, explicitly.
"""

from __future__ import annotations

import warnings

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseInvalidMessage

from leapcore.crypto.handshake import Initiator, Responder
from leapcore.crypto.keys import PublicKeyBundle, WorkerKeyPair
from leapcore.crypto.mode import EncryptionMode
from leapcore.crypto.primitives import x25519_public
from leapcore.errors import DecryptError, HandshakeError

NAME = b"Noise_NK_25519_ChaChaPoly_BLAKE2b"
CLASSIC = EncryptionMode.CLASSIC


def noise_party(
    *, initiator: bool, static_private=None, remote_static=None, ephemeral=None
) -> NoiseConnection:
    conn = NoiseConnection.from_name(NAME)
    if initiator:
        conn.set_as_initiator()
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    else:
        conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    if ephemeral is not None:
        # noiseprotocol takes a preset ephemeral (and warns that it is for testing only).
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "One of ephemeral keypairs is already set")
        conn.start_handshake()
    return conn


def swap_cipher_states(conn: NoiseConnection) -> None:
    """THE swap: make noise's initiator send with k2 / its responder send with k1."""
    proto = conn.noise_protocol
    proto.cipher_state_encrypt, proto.cipher_state_decrypt = (
        proto.cipher_state_decrypt,
        proto.cipher_state_encrypt,
    )


def noise_keys(conn: NoiseConnection) -> tuple[bytes, bytes]:
    """(encrypt key, decrypt key) of a finished noise connection."""
    proto = conn.noise_protocol
    return proto.cipher_state_encrypt.k, proto.cipher_state_decrypt.k


@pytest.fixture
def classic(load_vector):
    return load_vector("classic_seed1")


# ---------------------------------------------------------------------------
# Byte equality with injected ephemerals.


def test_vectors_equal_noiseprotocol_bytes(classic):
    """noiseprotocol, fed the vector's keys and ephemerals, writes the vector's messages."""
    kp = classic.keypair
    ni = noise_party(initiator=True, remote_static=kp.x25519_public, ephemeral=classic.e)
    nr = noise_party(initiator=False, static_private=kp.x25519_private, ephemeral=classic.f)
    m1 = bytes(ni.write_message())
    assert m1 == classic.message1
    assert bytes(nr.read_message(m1)) == b""
    m2 = bytes(nr.write_message())
    assert m2 == classic.message2
    ni.read_message(m2)
    assert ni.handshake_finished and nr.handshake_finished
    assert ni.get_handshake_hash() == classic.trace["h_final"] == nr.get_handshake_hash()

    # Split: noise's initiator encrypts with k1, which is leapcore's initiator RECEIVE key.
    k1 = classic.session_keys["responder_send_key"]
    k2 = classic.session_keys["initiator_send_key"]
    assert noise_keys(ni) == (k1, k2)
    assert noise_keys(nr) == (k2, k1)
    swap_cipher_states(ni)
    swap_cipher_states(nr)
    assert noise_keys(ni) == (k2, k1)  # now like leapcore's initiator
    assert noise_keys(nr) == (k1, k2)  # now like leapcore's responder

    for frame in classic.data["transport_initiator_to_responder"]:
        assert ni.encrypt(frame["plaintext"].encode()) == bytes.fromhex(frame["ciphertext"])
    for frame in classic.data["transport_responder_to_initiator"]:
        assert nr.encrypt(frame["plaintext"].encode()) == bytes.fromhex(frame["ciphertext"])


@settings(max_examples=40, deadline=None)
@given(
    s=st.binary(min_size=32, max_size=32),
    e=st.binary(min_size=32, max_size=32),
    f=st.binary(min_size=32, max_size=32),
    frames=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
)
def test_same_bytes_as_noiseprotocol(generated_keypair, s, e, f, frames):
    """Random static and ephemeral keys: identical messages, hash and (swapped) frames."""
    bundle = PublicKeyBundle(
        x25519_public(s), generated_keypair.mlkem_public, generated_keypair.slhdsa_public
    )
    li = Initiator(bundle, CLASSIC, random=lambda n: e)
    lr = Responder(_with_x25519(generated_keypair, s), CLASSIC, random=lambda n: f)
    ni = noise_party(initiator=True, remote_static=bundle.x25519, ephemeral=e)
    nr = noise_party(initiator=False, static_private=s, ephemeral=f)

    m1 = li.write_message1()
    assert m1 == bytes(ni.write_message())
    lr.read_message1(m1)
    nr.read_message(m1)
    m2 = lr.write_message2()
    assert m2 == bytes(nr.write_message())
    li.read_message2(m2)
    ni.read_message(m2)
    si, sr = li.session(), lr.session()

    # Unswapped, noise's initiator would send with leapcore's initiator's receive key.
    assert noise_keys(ni) == (si._recv.key, si._send.key)
    swap_cipher_states(ni)
    swap_cipher_states(nr)
    assert noise_keys(ni) == (si._send.key, si._recv.key)
    assert noise_keys(nr) == (sr._send.key, sr._recv.key)
    for p in frames:
        assert si.encrypt(p) == ni.encrypt(p)
        assert sr.encrypt(p) == nr.encrypt(p)


def _with_x25519(keypair: WorkerKeyPair, private: bytes) -> WorkerKeyPair:
    """The generated keypair with its X25519 part replaced (ML-KEM/SLH-DSA unused here)."""
    return WorkerKeyPair(
        x25519_private=private,
        x25519_public=x25519_public(private),
        mlkem_seed=keypair.mlkem_seed,
        mlkem_public=keypair.mlkem_public,
        slhdsa_private=keypair.slhdsa_private,
        slhdsa_public=keypair.slhdsa_public,
    )


# ---------------------------------------------------------------------------
# Live interop, fresh randomness on both sides.


def test_leapcore_initiator_with_noise_responder(generated_keypair):
    kp = generated_keypair
    li = Initiator(kp.public, CLASSIC)
    nr = noise_party(initiator=False, static_private=kp.x25519_private)
    nr.read_message(li.write_message1())
    li.read_message2(bytes(nr.write_message()))
    si = li.session()

    swap_cipher_states(nr)
    for i in range(5):
        message = b"to noise %d" % i * i
        assert nr.decrypt(si.encrypt(message)) == message
        reply = b"from noise %d" % i
        assert si.decrypt(nr.encrypt(reply), 0.0) == reply


def test_noise_initiator_with_leapcore_responder(generated_keypair):
    kp = generated_keypair
    ni = noise_party(initiator=True, remote_static=kp.x25519_public)
    lr = Responder(kp, CLASSIC)
    assert lr.read_message1(bytes(ni.write_message())) is None  # classic: nothing to sign
    ni.read_message(lr.write_message2())
    sr = lr.session()

    swap_cipher_states(ni)
    for i in range(5):
        message = b"to leapcore %d" % i
        assert sr.decrypt(ni.encrypt(message), 0.0) == message
        assert ni.decrypt(sr.encrypt(message + b"!")) == message + b"!"


def test_without_the_swap_nothing_decrypts(generated_keypair):
    """The swap is necessary: with noise's stock assignment, each side's frames are
    encrypted under the key the other side expects for the opposite direction."""
    kp = generated_keypair
    li = Initiator(kp.public, CLASSIC)
    nr = noise_party(initiator=False, static_private=kp.x25519_private)
    nr.read_message(li.write_message1())
    li.read_message2(bytes(nr.write_message()))
    si = li.session()

    with pytest.raises(NoiseInvalidMessage):
        nr.decrypt(si.encrypt(b"hello"))
    with pytest.raises(DecryptError):
        si.decrypt(nr.encrypt(b"hello"), 0.0)


def test_noise_rejects_leapcore_tampering_identically(classic):
    """Both implementations reject the same tampered message 1 (a flipped tag bit)."""
    tampered = bytearray(classic.message1)
    tampered[40] ^= 0x01
    nr = noise_party(initiator=False, static_private=classic.keypair.x25519_private)
    with pytest.raises(InvalidTag):
        nr.read_message(bytes(tampered))
    with pytest.raises(HandshakeError):
        classic.responder().read_message1(bytes(tampered))
