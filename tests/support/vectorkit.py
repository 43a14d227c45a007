"""LeapMux's known-answer vectors (``tests/support/vectors``) and how to replay them.

Plain helpers, importable by any test module (``from vectorkit import load_vector``); the
fixtures built on them live in ``conftest.py``. The initiator's ephemeral and the ML-KEM
encapsulation ``(ct, ss)`` are injected, as are the responder's ephemeral and (optionally)
the vector's own signature, so no SLH-DSA signing is needed to replay.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leapcore.crypto.handshake import Initiator, Responder, Trace
from leapcore.crypto.keys import PublicKeyBundle, WorkerKeyPair
from leapcore.crypto.mode import EncryptionMode, parse_encryption_mode
from leapcore.crypto.primitives import Signer
from leapcore.crypto.transport import TransportSession

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
