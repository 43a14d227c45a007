"""Hostile input to the handshake, and misuse of its state machines.

Every rejection must be the exact leapcore exception class with its code and a
clear message -- never some other exception -- and must leave the handshake
in state FAILED, where every further call raises HandshakeStateError, so that
no later call can wrongly succeed.

Runtime: the exhaustive flips are replayed from the vectors (injected
ephemerals and ML-KEM output), so no SLH-DSA signing is needed except in the
one test that checks the signature binds the ML-KEM secret.
"""

from __future__ import annotations

import re

import pytest

from leapcore.crypto.handshake import (
    HandshakeState,
    Initiator,
    Responder,
    message1_length,
    message2_length,
)
from leapcore.crypto.keys import PublicKeyBundle
from leapcore.crypto.mode import EncryptionMode
from leapcore.crypto.primitives import SLHDSA_SIGNATURE_SIZE, x25519_dh
from leapcore.errors import (
    BadSignature,
    HandshakeError,
    HandshakeStateError,
    InvalidEncryptionMode,
    LeapcoreError,
    LocalError,
    LowOrderPoint,
    MessageLengthError,
)

#: Every encoding of a low-order Curve25519 point (and the same with bit 255 set, which
#: X25519 ignores): order 1, 2, 4 and 8 points and their non-canonical forms p-1, p, p+1.
LOW_ORDER_POINTS = [
    bytes.fromhex(p)
    for p in [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "0100000000000000000000000000000000000000000000000000000000000080",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ]
]
ORDER_8_POINT = LOW_ORDER_POINTS[2]

MSG1_TAMPERED = r"^message 1 failed authentication \(the client holds a different worker key\)$"
MSG2_TAMPERED = r"^message 2 failed authentication \(tampered, or not from this worker\)$"
BAD_SIGNATURE = r"^SLH-DSA signature over the transcript is invalid"
LOW_ORDER = r"^X25519 produced an all-zero shared secret \(low-order point\)$"


def flip(message: bytes, bit: int) -> bytes:
    out = bytearray(message)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def rejection(fn, *args) -> LeapcoreError | None:
    """Run ``fn(*args)``; return the leapcore error it raised, None if it returned.
    Any other exception propagates and fails the test."""
    try:
        fn(*args)
    except LeapcoreError as exc:
        return exc
    return None


def check_error(
    exc: BaseException | None, cls: type[LeapcoreError], pattern: str, group: int | None = None
) -> str | None:
    """None when ``exc`` is exactly ``cls`` with its code and a message matching ``pattern``
    (whose first group, if ``group`` is given, must be that number). Patterns are constant
    so the regex cache keeps them compiled."""
    if exc is None:
        return "no exception"
    if type(exc) is not cls:
        return f"{type(exc).__name__} instead of {cls.__name__}: {exc}"
    if exc.code != cls.code:
        return f"code {exc.code!r}"
    match = re.search(pattern, str(exc))
    if match is None:
        return f"message {str(exc)!r} does not match {pattern!r}"
    if group is not None and match.group(1) != str(group):
        return f"message {str(exc)!r} does not say {group}"
    return None


def expect(cls: type[LeapcoreError], pattern: str, fn, *args) -> LeapcoreError:
    exc = rejection(fn, *args)
    problem = check_error(exc, cls, pattern)
    assert problem is None, problem
    assert exc is not None
    return exc


def initiator_is_dead(initiator: Initiator, message2: bytes = b"") -> str | None:
    """None when the initiator is FAILED, wiped, and refuses every operation."""
    if initiator.state is not HandshakeState.FAILED:
        return f"state {initiator.state}"
    if initiator.handshake_hash != b"" or initiator._e is not None or initiator._ss is not None:
        return "secrets not wiped"
    state_error = r"^initiator cannot \w+ in state 'failed'$"
    for fn, args in [
        (initiator.write_message1, ()),
        (initiator.read_message2, (message2,)),
        (initiator.session, ()),
    ]:
        problem = check_error(rejection(fn, *args), HandshakeStateError, state_error)
        if problem:
            return f"{fn.__name__}: {problem}"
    return None


def responder_is_dead(responder: Responder, message1: bytes = b"") -> str | None:
    if responder.state is not HandshakeState.FAILED:
        return f"state {responder.state}"
    if responder.handshake_hash != b"" or responder._ss is not None or responder.transcript:
        return "secrets not wiped"
    state_error = r"^responder cannot \w+ in state 'failed'$"
    for fn, args in [
        (responder.read_message1, (message1,)),
        (responder.write_message2, ()),
        (responder.session, ()),
    ]:
        problem = check_error(rejection(fn, *args), HandshakeStateError, state_error)
        if problem:
            return f"{fn.__name__}: {problem}"
    problem = check_error(
        rejection(responder.sign_transcript), HandshakeStateError, r"^nothing to sign"
    )
    return f"sign_transcript: {problem}" if problem else None


def responder_rejects(vector, message1: bytes, cls, pattern, group=None) -> str | None:
    responder = vector.responder()
    problem = check_error(rejection(responder.read_message1, message1), cls, pattern, group)
    return problem or responder_is_dead(responder, vector.message1)


def initiator_rejects(vector, message2: bytes, cls, pattern, bundle=None, group=None):
    initiator = vector.initiator_after_message1(bundle)
    problem = check_error(rejection(initiator.read_message2, message2), cls, pattern, group)
    return problem or initiator_is_dead(initiator, vector.message2)


def assert_all(problems: dict[object, str | None]) -> None:
    bad = {k: v for k, v in problems.items() if v is not None}
    shown = dict(list(bad.items())[:5])
    assert not bad, f"{len(bad)} of {len(problems)} cases wrong, e.g. {shown}"


# ---------------------------------------------------------------------------
# Message 1 bit flips.


def test_message1_prefix_every_bit_flip(mode_vector):
    """Every bit of E || tag1 (384 flips): the responder rejects at tag1."""
    m1 = mode_vector.message1
    assert_all(
        {
            bit: responder_rejects(mode_vector, flip(m1, bit), HandshakeError, MSG1_TAMPERED)
            for bit in range(48 * 8)
        }
    )


def test_message1_mlkem_ciphertext_every_bit_flip(load_vector):
    """Every bit of the 1568-byte ML-KEM ciphertext (12544 flips), exhaustively.

    ML-KEM decapsulation never fails (implicit rejection), so the responder accepts the
    message and answers; the ciphertext is in ``h`` since step 8, so the initiator must
    reject message 2 at tag2 -- before it even looks at the (here fake) signature, which
    is why the responder can use a cheap fake signer.
    """
    vector = load_vector("pq_seed1")
    m1 = vector.message1
    fake_signature = bytes(SLHDSA_SIGNATURE_SIZE)

    def case(bit: int) -> str | None:
        responder = vector.responder(signer=lambda _t: fake_signature)
        transcript = responder.read_message1(flip(m1, bit))
        if responder.state is not HandshakeState.RESPOND:
            return f"responder state {responder.state}"
        if transcript is None or transcript == vector.transcript:
            return "transcript not changed by the ciphertext"
        message2 = responder.write_message2()
        if message2[:32] != vector.message2[:32] or message2[32:48] == vector.message2[32:48]:
            return "tag2 did not change"
        return initiator_rejects(vector, message2, HandshakeError, MSG2_TAMPERED)

    assert_all({bit: case(bit) for bit in range(48 * 8, len(m1) * 8)})


# ---------------------------------------------------------------------------
# Message 2 bit flips.


def test_message2_prefix_every_bit_flip(mode_vector):
    """Every bit of F || tag2 (384 flips): the initiator rejects at tag2 (never reaching the
    signature check in post-quantum mode)."""
    m2 = mode_vector.message2
    assert_all(
        {
            bit: initiator_rejects(mode_vector, flip(m2, bit), HandshakeError, MSG2_TAMPERED)
            for bit in range(48 * 8)
        }
    )


def _signature_sample_bits() -> list[int]:
    first_last = [
        *range(0, 64 * 8),
        *range((SLHDSA_SIGNATURE_SIZE - 64) * 8, SLHDSA_SIGNATURE_SIZE * 8),
    ]
    total = SLHDSA_SIGNATURE_SIZE * 8
    step = total // 301
    spread = [step * i + (i % 8) for i in range(1, 301)]  # vary the bit within the byte too
    return sorted(set(first_last + spread))


def test_message2_signature_bit_flips_sampled(load_vector):
    """Bit flips in the 49856-byte SLH-DSA signature -> BadSignature.

    Sampled, not exhaustive: one SLH-DSA verification costs ~3.5 ms, so all 398848 bits
    would take ~23 minutes. The deterministic sample is every bit of the first 64 bytes
    (the randomizer R and the start of the FORS signature), every bit of the last 64 bytes
    (the end of the top hypertree layer) and 300 bits evenly spaced across the whole
    signature (with the bit position inside the byte varying) -- 1324 flips.
    """
    vector = load_vector("pq_seed1")
    bits = _signature_sample_bits()
    assert len(bits) == 1324
    base = 48 * 8
    assert_all(
        {
            bit: initiator_rejects(
                vector, flip(vector.message2, base + bit), BadSignature, BAD_SIGNATURE
            )
            for bit in bits
        }
    )


def test_untampered_messages_are_accepted(mode_vector):
    """The baseline for the flip tests: the replay helpers do accept the real messages."""
    responder = mode_vector.responder()
    responder.read_message1(mode_vector.message1)
    assert responder.state is HandshakeState.RESPOND
    initiator = mode_vector.initiator_after_message1()
    initiator.read_message2(mode_vector.message2)
    assert initiator.state is HandshakeState.DONE


# ---------------------------------------------------------------------------
# Truncations and extensions.


def truncations_and_extensions(message: bytes):
    """(name, bytes) for every proper prefix, one extra byte and the message twice; lazily,
    since all prefixes of message 2 together would be over a gigabyte."""
    for n in range(len(message)):
        yield n, message[:n]
    yield "one extra byte", message + b"\x00"
    yield "doubled", message + message


def test_message1_every_truncation_and_extensions(mode_vector):
    want = message1_length(mode_vector.mode)
    assert_all(
        {
            name: responder_rejects(
                mode_vector,
                message,
                MessageLengthError,
                rf"^message 1 must be {want} bytes in {mode_vector.mode} mode, got (\d+)$",
                group=len(message),
            )
            for name, message in truncations_and_extensions(mode_vector.message1)
        }
    )


def test_message2_every_truncation_and_extensions(mode_vector):
    """All 49903 (post-quantum) prefixes, each against a fresh initiator."""
    want = message2_length(mode_vector.mode)
    assert_all(
        {
            name: initiator_rejects(
                mode_vector,
                message,
                MessageLengthError,
                rf"^message 2 must be {want} bytes in {mode_vector.mode} mode, got (\d+)$",
                group=len(message),
            )
            for name, message in truncations_and_extensions(mode_vector.message2)
        }
    )


@pytest.mark.parametrize(
    ("mode", "other"), [("pq_seed1", "classic_seed1"), ("classic_seed1", "pq_seed1")]
)
def test_messages_of_the_other_mode(load_vector, mode, other):
    vector, other_vector = load_vector(mode), load_vector(other)
    assert (
        responder_rejects(vector, other_vector.message1, MessageLengthError, "^message 1 must")
        is None
    )
    assert (
        initiator_rejects(vector, other_vector.message2, MessageLengthError, "^message 2 must")
        is None
    )


# ---------------------------------------------------------------------------
# Wrong keys.


def test_substituted_worker_static_key(mode_vector, load_vector):
    """A client holding another worker's bundle: the responder rejects message 1."""
    other = load_vector(mode_vector.name.replace("seed1", "seed2")).bundle
    initiator = Initiator(other, mode_vector.mode)
    message1 = initiator.write_message1()
    assert responder_rejects(mode_vector, message1, HandshakeError, MSG1_TAMPERED) is None


def test_wrong_slhdsa_key_in_bundle(load_vector):
    """The right X25519 and ML-KEM keys but another worker's SLH-DSA key -> BadSignature."""
    vector = load_vector("pq_seed1")
    bundle = PublicKeyBundle(
        vector.bundle.x25519, vector.bundle.mlkem, load_vector("pq_seed2").bundle.slhdsa
    )
    problem = initiator_rejects(vector, vector.message2, BadSignature, BAD_SIGNATURE, bundle)
    assert problem is None, problem


def test_signature_binds_the_mlkem_secret(generated_keypair, load_vector):
    """A client encapsulating to the wrong ML-KEM key passes tag2 (the ciphertext, not the
    secret, is in h) but the worker's transcript holds a different (implicit-rejection)
    secret, so its genuine signature does not verify -> BadSignature. One real signature."""
    other = load_vector("pq_seed1").bundle
    bundle = PublicKeyBundle(
        generated_keypair.x25519_public, other.mlkem, generated_keypair.slhdsa_public
    )
    initiator = Initiator(bundle, EncryptionMode.POST_QUANTUM)
    responder = Responder(generated_keypair, EncryptionMode.POST_QUANTUM)
    responder.read_message1(initiator.write_message1())
    message2 = responder.write_message2()
    expect(BadSignature, BAD_SIGNATURE, initiator.read_message2, message2)
    assert initiator_is_dead(initiator, message2) is None


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_x25519_rejects_low_order_points(point):
    expect(LowOrderPoint, LOW_ORDER, x25519_dh, bytes(range(1, 33)), point)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_low_order_e_in_message1(mode_vector, point):
    message1 = point + mode_vector.message1[32:]
    assert responder_rejects(mode_vector, message1, LowOrderPoint, LOW_ORDER) is None


@pytest.mark.parametrize("point", [bytes(32), ORDER_8_POINT], ids=["zero", "order8"])
def test_low_order_f_in_message2(mode_vector, point):
    message2 = point + mode_vector.message2[32:]
    assert initiator_rejects(mode_vector, message2, LowOrderPoint, LOW_ORDER) is None


@pytest.mark.parametrize("point", [bytes(32), ORDER_8_POINT], ids=["zero", "order8"])
def test_low_order_static_key_in_bundle(mode_vector, point):
    bundle = PublicKeyBundle(point, mode_vector.bundle.mlkem, mode_vector.bundle.slhdsa)
    initiator = mode_vector.initiator(bundle)
    expect(LowOrderPoint, LOW_ORDER, initiator.write_message1)
    assert initiator_is_dead(initiator) is None


# ---------------------------------------------------------------------------
# Misbehaving injected callables (local errors).


def test_bad_random_source(mode_vector):
    initiator = Initiator(mode_vector.bundle, mode_vector.mode, random=lambda n: bytes(n - 1))
    expect(
        LocalError, r"^random source returned a bad value for 32 bytes$", initiator.write_message1
    )
    assert initiator_is_dead(initiator) is None

    responder = Responder(mode_vector.keypair, mode_vector.mode, random=lambda n: "x" * n)
    expect(
        LocalError,
        r"^random source returned a bad value for 32 bytes$",
        responder.read_message1,
        mode_vector.message1,
    )
    assert responder_is_dead(responder) is None


@pytest.mark.parametrize("sizes", [(1567, 32), (1568, 31), (0, 0)])
def test_bad_encapsulation_output(load_vector, sizes):
    vector = load_vector("pq_seed1")
    ct_len, ss_len = sizes
    initiator = Initiator(
        vector.bundle,
        vector.mode,
        random=lambda n: vector.e,
        encapsulate=lambda ek: (bytes(ct_len), bytes(ss_len)),
    )
    expect(
        LocalError,
        r"^ML-KEM encapsulation returned values of the wrong size$",
        initiator.write_message1,
    )
    assert initiator_is_dead(initiator) is None


def test_wrong_size_signature_can_be_retried(load_vector):
    """A misbehaving signer is a local error that leaves the responder able to retry."""
    vector = load_vector("pq_seed1")
    responder = vector.responder(signer=lambda t: vector.signature[:-1])
    responder.read_message1(vector.message1)
    expect(LocalError, r"^signature must be 49856 bytes, got 49855$", responder.write_message2)
    assert responder.state is HandshakeState.RESPOND
    expect(
        LocalError,
        r"^signature must be 49856 bytes, got 49857$",
        responder.write_message2,
        vector.signature + b"\x00",
    )
    assert responder.write_message2(vector.signature) == vector.message2


def test_classic_mode_takes_no_signature(load_vector):
    vector = load_vector("classic_seed1")
    responder = vector.responder()
    responder.read_message1(vector.message1)
    expect(
        HandshakeStateError,
        r"^nothing to sign in state 'respond' \(classic mode\)$",
        responder.sign_transcript,
    )
    expect(LocalError, r"^classic mode takes no signature$", responder.write_message2, bytes(49856))
    assert responder.state is HandshakeState.RESPOND
    assert responder.write_message2() == vector.message2


# ---------------------------------------------------------------------------
# Misuse: calls out of order.

STATE_ERROR = r"^(initiator|responder) cannot \w+ in state '[\w-]+'$"


def test_initiator_calls_out_of_order(mode_vector):
    initiator = mode_vector.initiator()
    # START: only write_message1.
    expect(
        HandshakeStateError,
        r"^initiator cannot read_message2 in state 'start'$",
        initiator.read_message2,
        mode_vector.message2,
    )
    expect(HandshakeStateError, r"^initiator cannot session in state 'start'$", initiator.session)
    assert initiator.state is HandshakeState.START  # a refused call changes nothing
    initiator.write_message1()
    # AWAIT_MESSAGE2: only read_message2.
    expect(
        HandshakeStateError,
        r"^initiator cannot write_message1 in state 'await-message2'$",
        initiator.write_message1,
    )
    expect(
        HandshakeStateError,
        r"^initiator cannot session in state 'await-message2'$",
        initiator.session,
    )
    assert initiator.state is HandshakeState.AWAIT_MESSAGE2
    initiator.read_message2(mode_vector.message2)
    # DONE: only session.
    expect(
        HandshakeStateError,
        r"^initiator cannot write_message1 in state 'done'$",
        initiator.write_message1,
    )
    expect(
        HandshakeStateError,
        r"^initiator cannot read_message2 in state 'done'$",
        initiator.read_message2,
        mode_vector.message2,
    )
    session = initiator.session()
    assert session._send.key == mode_vector.session_keys["initiator_send_key"]
    # SPLIT: nothing, not even session() a second time.
    assert initiator.state is HandshakeState.SPLIT
    expect(HandshakeStateError, r"^initiator cannot session in state 'split'$", initiator.session)
    expect(HandshakeStateError, STATE_ERROR, initiator.write_message1)
    expect(HandshakeStateError, STATE_ERROR, initiator.read_message2, mode_vector.message2)


def test_responder_calls_out_of_order(mode_vector):
    responder = mode_vector.responder()
    expect(
        HandshakeStateError,
        r"^responder cannot write_message2 in state 'start'$",
        responder.write_message2,
    )
    expect(HandshakeStateError, r"^responder cannot session in state 'start'$", responder.session)
    expect(HandshakeStateError, r"^nothing to sign in state 'start'", responder.sign_transcript)
    assert responder.state is HandshakeState.START
    responder.read_message1(mode_vector.message1)
    expect(
        HandshakeStateError,
        r"^responder cannot read_message1 in state 'respond'$",
        responder.read_message1,
        mode_vector.message1,
    )
    expect(HandshakeStateError, r"^responder cannot session in state 'respond'$", responder.session)
    assert responder.state is HandshakeState.RESPOND
    responder.write_message2()
    expect(
        HandshakeStateError,
        r"^responder cannot write_message2 in state 'done'$",
        responder.write_message2,
    )
    expect(
        HandshakeStateError,
        r"^responder cannot read_message1 in state 'done'$",
        responder.read_message1,
        mode_vector.message1,
    )
    expect(HandshakeStateError, r"^nothing to sign in state 'done'", responder.sign_transcript)
    session = responder.session()
    assert session._send.key == mode_vector.session_keys["responder_send_key"]
    expect(HandshakeStateError, r"^responder cannot session in state 'split'$", responder.session)
    expect(HandshakeStateError, STATE_ERROR, responder.read_message1, mode_vector.message1)
    expect(HandshakeStateError, STATE_ERROR, responder.write_message2)


def test_roles_cannot_call_the_other_sides_methods(mode_vector):
    assert not hasattr(mode_vector.initiator(), "read_message1")
    assert not hasattr(mode_vector.responder(), "read_message2")


def test_secrets_wiped_after_split(mode_vector):
    initiator = mode_vector.initiator()
    responder = mode_vector.responder()
    responder.read_message1(initiator.write_message1())
    if mode_vector.is_pq:
        assert initiator._ss is not None and responder._ss is not None
        assert responder._transcript is not None
    assert initiator._e is not None
    initiator.read_message2(responder.write_message2())
    si, sr = initiator.session(), responder.session()
    for party in (initiator, responder):
        assert party.handshake_hash == b""
        assert party._sym.ck == b""
        assert party._sym.k is None
        assert party._keys is None
    assert initiator._e is None and initiator._ss is None and initiator._ct == b""
    assert responder._ss is None and responder._transcript is None and responder._prefix == b""
    assert responder.transcript is None
    # The sessions themselves still work.
    assert sr.decrypt(si.encrypt(b"ping"), 0.0) == b"ping"


def test_invalid_mode_refused_at_construction(load_vector):
    vector = load_vector("pq_seed1")
    expect(
        InvalidEncryptionMode,
        r"unknown encryption mode 'quantum'",
        Initiator,
        vector.bundle,
        "quantum",
    )
    expect(
        InvalidEncryptionMode,
        r"unknown encryption mode 'quantum'",
        Responder,
        vector.keypair,
        "quantum",
    )
