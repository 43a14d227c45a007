"""leapcore's crypto core against same-run baselines: the ratios are the targets.

    .venv/bin/python benchmarks/handshake_bench.py [--quick] [--json] [--check]
    .venv/bin/python benchmarks/handshake_bench.py --profile transport_1k

Each benchmark times a leapcore operation and its baseline in the same process, alternately,
round after round (after a warm-up); the reported ratio is the median over rounds of the
per-round ratio, which cancels most of the drift of a noisy machine; IQR is the interquartile
range of the per-round ratios. Absolute medians are
printed for context only: they move from machine to machine, the ratios should not.

=====================  =========================================================  ========
benchmark              leapcore operation / baseline                              target
=====================  =========================================================  ========
pq_responder           Responder: read_message1 + sign + write_message2 + session  <= 1.10
                       / one raw pqcrypto SLH-DSA-SHAKE-256f sign
pq_initiator           Initiator: construct + write_message1 + read_message2 +     <= 1.5
                       session (message 2 made once) / one raw SLH-DSA verify
classic_handshake      both sides, both messages, both sessions /                  <= 1.0
                       noiseprotocol Noise_NK_25519_ChaChaPoly_BLAKE2b, same work
transport_64k          throughput of encrypt+decrypt, 65519-byte frames /          >= 0.90
                       raw cryptography ChaCha20Poly1305 with nonce construction
transport_1k           the same with 1024-byte frames                              >= 0.75
=====================  =========================================================  ========

65519 bytes is the largest transport plaintext (65535-byte frame minus the 16-byte tag).
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

from _measure import Pair, Result, fmt_time, make_parser, measure, profile, run_info
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.connection import Keypair, NoiseConnection
from pqcrypto.sign import slh_dsa_shake_256f

from leapcore.crypto.handshake import Initiator, Responder
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.crypto.mode import EncryptionMode
from leapcore.crypto.primitives import mlkem_encapsulate, system_random
from leapcore.crypto.transport import TransportSession
from leapcore.proto.limits import MAX_PLAINTEXT

CLASSIC, PQ = EncryptionMode.CLASSIC, EncryptionMode.POST_QUANTUM
NOISE_NAME = b"Noise_NK_25519_ChaChaPoly_BLAKE2b"
_NONCE = struct.Struct("<4xI4x")
NAMES = ["pq_responder", "pq_initiator", "classic_handshake", "transport_64k", "transport_1k"]


# ---------------------------------------------------------------------------
# The work


class Setup:
    """Everything made once: one worker keypair, one valid post-quantum message 2."""

    def __init__(self) -> None:
        self.keypair = WorkerKeyPair.generate()
        self.public = self.keypair.public
        # A post-quantum initiator whose ephemeral and ML-KEM encapsulation are fixed, so that
        # one message 2 (one real signature) stays valid for every later initiator.
        e = system_random(32)
        ct, ss = mlkem_encapsulate(self.public.mlkem)
        self.fixed_e, self.fixed_kem = e, (ct, ss)
        first = self._pq_initiator()
        self.pq_message1 = first.write_message1()
        responder = Responder(self.keypair, PQ)
        transcript = responder.read_message1(self.pq_message1)
        assert transcript is not None
        self.pq_message2 = responder.write_message2()
        first.read_message2(self.pq_message2)
        first.session()
        self.transcript = transcript
        self.signature = self.pq_message2[48:]
        self.sign_message = secrets.token_bytes(64)  # what the raw sign baseline signs

    def _pq_initiator(self) -> Initiator:
        # The injected callables still do the real work (fresh randomness, a real ML-KEM
        # encapsulation) so its cost is measured; they just hand back the fixed values.
        def random(n: int) -> bytes:
            system_random(n)
            return self.fixed_e

        def encapsulate(ek: bytes) -> tuple[bytes, bytes]:
            mlkem_encapsulate(ek)
            return self.fixed_kem

        return Initiator(self.public, PQ, random=random, encapsulate=encapsulate)

    # -- post-quantum -------------------------------------------------------

    def pq_responder(self) -> object:
        responder = Responder(self.keypair, PQ)
        responder.read_message1(self.pq_message1)
        responder.write_message2()  # signs in-line
        return responder.session()

    def raw_sign(self) -> object:
        return slh_dsa_shake_256f.sign(self.keypair.slhdsa_private, self.sign_message)

    def pq_initiator(self) -> object:
        initiator = self._pq_initiator()
        initiator.write_message1()
        initiator.read_message2(self.pq_message2)
        return initiator.session()

    def raw_verify(self) -> object:
        return slh_dsa_shake_256f.verify(self.public.slhdsa, self.transcript, self.signature)

    # -- classic ------------------------------------------------------------

    def classic_handshake(self) -> object:
        initiator = Initiator(self.public, CLASSIC)
        responder = Responder(self.keypair, CLASSIC)
        responder.read_message1(initiator.write_message1())
        initiator.read_message2(responder.write_message2())
        return initiator.session(), responder.session()

    def noise_handshake(self) -> object:
        initiator = NoiseConnection.from_name(NOISE_NAME)
        initiator.set_as_initiator()
        initiator.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, self.public.x25519)
        initiator.start_handshake()
        responder = NoiseConnection.from_name(NOISE_NAME)
        responder.set_as_responder()
        responder.set_keypair_from_private_bytes(Keypair.STATIC, self.keypair.x25519_private)
        responder.start_handshake()
        responder.read_message(initiator.write_message())
        initiator.read_message(responder.write_message())
        assert initiator.handshake_finished and responder.handshake_finished
        return initiator, responder

    def check_noise_interop(self) -> None:
        """The baseline does the same job: a noise initiator completes a leapcore handshake."""
        noise = NoiseConnection.from_name(NOISE_NAME)
        noise.set_as_initiator()
        noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, self.public.x25519)
        noise.start_handshake()
        responder = Responder(self.keypair, CLASSIC)
        responder.read_message1(bytes(noise.write_message()))  # noise returns bytearray
        noise.read_message(responder.write_message2())
        session = responder.session()
        # leapcore's responder sends with k1, which a stock Noise initiator sends with too:
        # the two cipher states must be swapped to talk (spec/handshake.md §2).
        proto = noise.noise_protocol
        proto.cipher_state_encrypt, proto.cipher_state_decrypt = (
            proto.cipher_state_decrypt,
            proto.cipher_state_encrypt,
        )
        assert noise.decrypt(session.encrypt(b"ping")) == b"ping"
        assert session.decrypt(noise.encrypt(b"pong"), 0.0) == b"pong"


def transport_pair(size: int, frames: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """(leapcore, raw) callables that each encrypt and decrypt ``frames`` frames of ``size``."""
    key_a, key_b = secrets.token_bytes(32), secrets.token_bytes(32)
    sender, receiver = TransportSession(key_a, key_b), TransportSession(key_b, key_a)
    payload = secrets.token_bytes(size)
    rng = range(frames)

    def leap() -> object:
        encrypt, decrypt = sender.encrypt, receiver.decrypt
        for _ in rng:
            decrypt(encrypt(payload), 0.0)
        return None

    enc_aead, dec_aead = ChaCha20Poly1305(key_a), ChaCha20Poly1305(key_a)
    counter = [0, 0]

    def raw() -> object:
        encrypt, decrypt, pack = enc_aead.encrypt, dec_aead.decrypt, _NONCE.pack
        n_send, n_recv = counter
        for _ in rng:
            ciphertext = encrypt(pack(n_send), payload, None)
            n_send += 1
            decrypt(pack(n_recv), ciphertext, None)
            n_recv += 1
        counter[:] = [n_send, n_recv]
        return None

    return leap, raw


def build_pairs(setup: Setup, quick: bool) -> list[Pair]:
    scale = 1 if not quick else 0
    big_frames, small_frames = 100, 2000
    leap64, raw64 = transport_pair(MAX_PLAINTEXT, big_frames)
    leap1, raw1 = transport_pair(1024, small_frames)
    return [
        Pair(
            "pq_responder",
            "post-quantum responder handshake / raw SLH-DSA sign",
            setup.pq_responder,
            setup.raw_sign,
            "time",
            1.10,
            calls=1,
            rounds=5 + 10 * scale,
        ),
        Pair(
            "pq_initiator",
            "post-quantum initiator handshake / raw SLH-DSA verify",
            setup.pq_initiator,
            setup.raw_verify,
            "time",
            1.5,
            calls=10,
            rounds=7 + 14 * scale,
        ),
        Pair(
            "classic_handshake",
            "classic full handshake / noiseprotocol NK",
            setup.classic_handshake,
            setup.noise_handshake,
            "time",
            1.0,
            calls=20,
            rounds=7 + 14 * scale,
        ),
        Pair(
            "transport_64k",
            "transport enc+dec 65519 B frames / raw ChaCha20Poly1305",
            leap64,
            raw64,
            "throughput",
            0.90,
            calls=1,
            rounds=9 + 22 * scale,
            unit_bytes=MAX_PLAINTEXT * big_frames,
        ),
        Pair(
            "transport_1k",
            "transport enc+dec 1024 B frames / raw ChaCha20Poly1305",
            leap1,
            raw1,
            "throughput",
            0.75,
            calls=1,
            rounds=9 + 22 * scale,
            unit_bytes=1024 * small_frames,
        ),
    ]


# ---------------------------------------------------------------------------
# Reporting


def render(results: list[Result]) -> str:
    lines = [
        f"{'benchmark':<18} {'ratio':>7} {'IQR':>13} {'target':>8} {'result':>6}   "
        f"{'leapcore (median)':>18} {'baseline (median)':>18}",
    ]
    for r in results:
        if r.leapcore_mb_s is not None and r.baseline_mb_s is not None:
            leap = f"{r.leapcore_mb_s:,.0f} MB/s"
            base = f"{r.baseline_mb_s:,.0f} MB/s"
        else:
            leap, base = fmt_time(r.leapcore_median_s), fmt_time(r.baseline_median_s)
        verdict = "PASS" if r.passed else "MISS"
        low, high = r.spread
        iqr = f"{low:.3f}-{high:.3f}"
        lines.append(
            f"{r.name:<18} {r.ratio:>7.3f} {iqr:>13} {r.target_text:>8} {verdict:>6}   "
            f"{leap:>18} {base:>18}"
        )
    lines.append("")
    for r in results:
        what = "leapcore/baseline time" if r.kind == "time" else "leapcore/baseline throughput"
        lines.append(
            f"  {r.name}: {r.title}; ratio = median over {r.rounds} rounds of {what} "
            f"({r.calls_per_sample} call(s) per sample)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = make_parser(__doc__ or "", NAMES).parse_args(argv)

    setup = Setup()
    setup.check_noise_interop()
    pairs = build_pairs(setup, args.quick)
    if args.profile:
        profile(pairs, args.profile)
        return 0
    if args.only:
        pairs = [p for p in pairs if p.name in args.only]
    started = time.time()
    results = [measure(pair) for pair in pairs]
    if args.json:
        report = {
            **run_info(args.quick, started),
            "results": [
                {**asdict(r), "target_text": r.target_text, "iqr": list(r.spread)} for r in results
            ],
        }
        print(json.dumps(report, indent=2))
    else:
        print(
            f"leapcore crypto-core benchmarks (Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs{', --quick' if args.quick else ''})\n"
        )
        print(render(results))
    if args.check and not all(r.passed for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
