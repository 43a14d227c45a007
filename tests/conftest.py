"""Shared fixtures for the sans-IO crypto core tests.

The known-answer vectors in ``tests/support/vectors`` come from LeapMux's own
implementation (``spec/handshake.md`` §9); :mod:`vectorkit` wraps them (:class:`Vector`)
and replays them without SLH-DSA signing. The fixtures here hand them to tests.

Post-quantum key generation (~10 ms) and above all SLH-DSA signing (~125 ms)
are expensive: the generated keypair and the one real post-quantum handshake
are session-scoped and shared by every test that needs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from support.vectorkit import (
    ALL_VECTORS,
    PQ_VECTORS,
    Vector,
    keypair_from_vector,
    load_vector,
)

from leapcore.crypto.handshake import Initiator, Responder
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.crypto.mode import EncryptionMode

# Crypto calls vary a lot in time on a loaded 2-core machine: no per-example deadlines. In CI
# (CI=true) examples are derandomized so a run is reproducible; locally they stay random.
settings.register_profile("default", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


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
