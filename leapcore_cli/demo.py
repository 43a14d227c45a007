"""``leapcore demo``: a worker identity and two real handshakes, in one process.

Until the hub exists this is the README's main command: it generates a worker
keypair (saved like a worker would, mode 0600), runs a post-quantum and a
classic handshake between an in-process client and worker, and round-trips a
message through each session.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from leapcore import EncryptionMode, Initiator, Responder, WorkerKeyPair
from leapcore.keyfile import load_keypair, save_keypair

from .common import EXIT_OK, emit_json


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="generate a worker identity and run post-quantum and classic handshakes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the worker identity in DIR/worker-identity.json "
        "(default: a temporary directory, removed afterwards)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.set_defaults(handler=run_demo)


def _handshake(keypair: WorkerKeyPair, mode: EncryptionMode) -> dict[str, Any]:
    t0 = time.perf_counter()
    client = Initiator(keypair.public, mode)
    message1 = client.write_message1()
    t1 = time.perf_counter()
    worker = Responder(keypair, mode)
    worker.read_message1(message1)
    message2 = worker.write_message2()  # signs in-line in post-quantum mode
    worker_session = worker.session()
    t2 = time.perf_counter()
    client.read_message2(message2)
    client_session = client.session()
    t3 = time.perf_counter()

    request = b"ping from the client"
    received = worker_session.decrypt(client_session.encrypt(request), now=time.monotonic())
    reply = client_session.decrypt(worker_session.encrypt(b"pong: " + received), time.monotonic())
    return {
        "mode": str(mode),
        "message1_bytes": len(message1),
        "message2_bytes": len(message2),
        "client_ms": round((t1 - t0 + t3 - t2) * 1000, 2),
        "worker_ms": round((t2 - t1) * 1000, 2),
        "round_trip": reply.decode(),
    }


def run_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="leapcore-demo-") as tmp:
        data_dir = args.data_dir if args.data_dir is not None else Path(tmp)
        path = data_dir / "worker-identity.json"
        keypair = WorkerKeyPair.generate()
        save_keypair(path, keypair)
        keypair = load_keypair(path)  # what a restarted worker would do
        results = [_handshake(keypair, m) for m in EncryptionMode]
        identity_file = str(path) if args.data_dir is not None else None
        document = {
            "worker": {"fingerprint": keypair.public.fingerprint, "identity_file": identity_file},
            "handshakes": results,
        }
    if args.json:
        emit_json(document)
        return EXIT_OK
    out = sys.stdout
    out.write("leapcore demo: one worker identity, two end-to-end handshakes\n\n")
    where = identity_file or "a temporary directory (removed)"
    out.write(f"  worker identity  saved to {where}, mode 0600\n")
    out.write(f"  fingerprint      {keypair.public.fingerprint}\n\n")
    out.write(f"  {'mode':<13} {'msg1':>6} {'msg2':>7} {'client':>9} {'worker':>9}  round trip\n")
    for r in results:
        out.write(
            f"  {r['mode']:<13} {r['message1_bytes']:>5}B {r['message2_bytes']:>6}B "
            f"{r['client_ms']:>7.2f}ms {r['worker_ms']:>7.2f}ms  {r['round_trip']!r}\n"
        )
    out.write(
        "\nThe worker's time in post-quantum mode is almost all one SLH-DSA signature.\n"
        "Next: the hub and worker daemons (leapcore-hub, leapcore-worker) are coming.\n"
    )
    return EXIT_OK
