"""Shared fixtures for the sans-IO crypto core tests.

The known-answer vectors in ``tests/vectors`` come from LeapMux's own
implementation (``spec/handshake.md`` §9). :class:`Vector` wraps one file and
knows how to replay it: the initiator's ephemeral and the ML-KEM encapsulation
``(ct, ss)`` are injected, as are the responder's ephemeral and (optionally)
the vector's own signature, so no SLH-DSA signing is needed to replay.

Post-quantum key generation (~10 ms) and above all SLH-DSA signing (~125 ms)
are expensive: the generated keypair and the one real post-quantum handshake
are session-scoped and shared by every test that needs them.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from leapcore.handshake import Initiator, Responder, Trace
from leapcore.keys import PublicKeyBundle, WorkerKeyPair
from leapcore.mode import EncryptionMode, parse_encryption_mode
from leapcore.primitives import Signer
from leapcore.transport import TransportSession

# Crypto calls vary a lot in time on a loaded 2-core machine: no per-example deadlines. In CI
# (CI=true) examples are derandomized so a run is reproducible; locally they stay random.
settings.register_profile("default", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

VECTOR_DIR = Path(__file__).parent / "vectors"
PQ_VECTORS = ("pq_seed1", "pq_seed2", "pq_seed3")
CLASSIC_VECTORS = ("classic_seed1", "classic_seed2", "classic_seed3")
ALL_VECTORS = PQ_VECTORS + CLASSIC_VECTORS


def fixed(value: bytes) -> Callable[[int], bytes]:
    """A random source that always returns ``value`` and insists on being asked for its size."""

    def draw(n: int) -> bytes:
        assert n == len(value), f"asked for {n} random bytes, the vector has {len(value)}"
        return value

    return draw


class Vector:
    """One known-answer vector file, with replay helpers."""

    def __init__(self, name: str, data: dict[str, Any]) -> None:
        self.name = name
        self.data = data
        self.mode = parse_encryption_mode(data["mode"])
        self.is_pq = self.mode is EncryptionMode.POST_QUANTUM
        self.message1 = self.hex("message1")
        self.message2 = self.hex("message2")
        self.e = self.hex("initiator_ephemeral_private")
        self.f = self.hex("responder_ephemeral_private")
        trace = data["responder_trace"]
        #: The responder's trace points (``mlkem_shared_secret`` and the transcript excluded).
        self.trace = {k: bytes.fromhex(v) for k, v in trace.items() if k.startswith("h")}
        self.ck_before_split = bytes.fromhex(trace["ck_before_split"])
        self.ss = bytes.fromhex(trace.get("mlkem_shared_secret", ""))
        self.transcript = bytes.fromhex(trace["slhdsa_transcript"]) if self.is_pq else None
        self.ct = self.message1[48:]
        self.signature = self.message2[48:]
        keys = data["session_keys"]
        self.session_keys = {k: bytes.fromhex(v) for k, v in keys.items()}
        self.rekey = data["rekey"]

    def __repr__(self) -> str:
        return f"Vector({self.name})"

    def hex(self, key: str) -> bytes:
        return bytes.fromhex(self.data[key])

    @functools.cached_property
    def keypair(self) -> WorkerKeyPair:
        return keypair_from_vector(self.data)

    @property
    def bundle(self) -> PublicKeyBundle:
        return self.keypair.public

    def initiator(
        self, bundle: PublicKeyBundle | None = None, *, trace: Trace | None = None
    ) -> Initiator:
        """A replaying initiator (message 1 not yet written)."""
        return Initiator(
            bundle if bundle is not None else self.bundle,
            self.mode,
            random=fixed(self.e),
            encapsulate=lambda ek: (self.ct, self.ss),
            trace=trace,
        )

    def initiator_after_message1(self, bundle: PublicKeyBundle | None = None) -> Initiator:
        """A replaying initiator waiting for message 2 (its message 1 is the vector's)."""
        initiator = self.initiator(bundle)
        initiator.write_message1()
        return initiator

    def responder(
        self,
        keypair: WorkerKeyPair | None = None,
        *,
        trace: Trace | None = None,
        signer: Signer | None = None,
        real_signing: bool = False,
    ) -> Responder:
        """A replaying responder. Unless given a ``signer`` or asked for ``real_signing`` (with
        the worker's own SLH-DSA key, ~125 ms) it "signs" by returning the vector's signature."""
        if signer is None and self.is_pq and not real_signing:
            signature = self.signature
            signer = lambda _transcript: signature  # noqa: E731
        return Responder(
            keypair if keypair is not None else self.keypair,
            self.mode,
            random=fixed(self.f),
            signer=signer,
            trace=trace,
        )

    def handshake(self) -> tuple[TransportSession, TransportSession]:
        """Replay the whole handshake: (initiator session, responder session)."""
        initiator = self.initiator()
        responder = self.responder()
        responder.read_message1(initiator.write_message1())
        initiator.read_message2(responder.write_message2())
        return initiator.session(), responder.session()


def keypair_from_vector(data: dict[str, Any]) -> WorkerKeyPair:
    """The worker's :class:`WorkerKeyPair` from a vector's ``worker_key`` (hex) section."""
    wk = data["worker_key"]
    h = bytes.fromhex
    return WorkerKeyPair(
        x25519_private=h(wk["x25519"]["private"]),
        x25519_public=h(wk["x25519"]["public"]),
        mlkem_seed=h(wk["mlkem1024"]["seed"]),
        mlkem_public=h(wk["mlkem1024"]["public"]),
        slhdsa_private=h(wk["slhdsa_shake_256f"]["private"]),
        slhdsa_public=h(wk["slhdsa_shake_256f"]["public"]),
    )


@functools.cache
def load_vector(name: str) -> Vector:
    data = json.loads((VECTOR_DIR / f"{name}.json").read_text("utf-8"))
    return Vector(name, data)


@pytest.fixture(params=ALL_VECTORS)
def vector(request: pytest.FixtureRequest) -> Vector:
    """Each of the six known-answer vectors."""
    return load_vector(request.param)


@pytest.fixture(params=PQ_VECTORS)
def pq_vector(request: pytest.FixtureRequest) -> Vector:
    return load_vector(request.param)


@pytest.fixture(params=["pq_seed1", "classic_seed1"])
def mode_vector(request: pytest.FixtureRequest) -> Vector:
    """One vector per mode, for the (expensive) exhaustive hostile-input tests."""
    return load_vector(request.param)


@pytest.fixture(name="load_vector")
def load_vector_fixture() -> Callable[[str], Vector]:
    """Load a vector by name (``pq_seed2``...)."""
    return load_vector


@pytest.fixture(name="keypair_from_vector")
def keypair_from_vector_fixture() -> Callable[[dict[str, Any]], WorkerKeyPair]:
    return keypair_from_vector


@pytest.fixture(scope="session")
def generated_keypair() -> WorkerKeyPair:
    """One freshly generated worker keypair for the whole run (reuse it)."""
    return WorkerKeyPair.generate()


@pytest.fixture(scope="session")
def pq_handshake_keys(generated_keypair: WorkerKeyPair) -> tuple[bytes, bytes]:
    """One real post-quantum handshake (real encapsulation, real SLH-DSA signature).

    Returns the initiator's ``(send_key, receive_key)``; build fresh
    :class:`TransportSession` objects from them instead of sharing sessions.
    """
    initiator = Initiator(generated_keypair.public, EncryptionMode.POST_QUANTUM)
    responder = Responder(generated_keypair, EncryptionMode.POST_QUANTUM)
    responder.read_message1(initiator.write_message1())
    initiator.read_message2(responder.write_message2())
    si, sr = initiator.session(), responder.session()
    assert si._send.key == sr._recv.key and si._recv.key == sr._send.key
    assert si._send.key != si._recv.key
    return si._send.key, si._recv.key
