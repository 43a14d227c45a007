"""The bystander: an honest user's client, in its own process, with one channel open to its own
worker through the hub under attack.

    LEAPCORE_TOKEN=... python hostile_bystander.py --hub URL --worker-id ID [--transport T]

It signs in with ``import leapcore`` (the token from ``$LEAPCORE_TOKEN``, never the command
line), opens one end-to-end channel (no pinning: the test's worker is fresh), makes one Ping
round trip and prints ``ready``. Then it obeys one command per stdin line, answering each with
one JSON line on stdout:

* ``ping`` -> ``{"ok": true, "rtt_ms": X}``, or ``{"ok": false, "error": "..."}`` when the
  round trip failed or took more than ``--deadline`` seconds;
* ``pingfor SECONDS`` -> ``{"ok": true, "rtt_ms": [...]}``: back-to-back round trips for that
  long (the benchmark's latency samples), or ``{"ok": false, ...}`` at the first failure;
* ``quit`` (or end of input) -> closes the channel and the link, exit 0.

Test-support code, not part of leapcore.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import trio

import leapcore


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def _ping(channel: Any, deadline: float) -> float:
    start = time.perf_counter()
    with trio.fail_after(deadline):
        await channel.ping()
    return (time.perf_counter() - start) * 1000


async def _serve(args: argparse.Namespace) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffered = b""
    async with (
        leapcore.connect(args.hub, transport=args.transport, pins=None) as hub,
        hub.open_channel(args.worker_id) as channel,
    ):
        await _ping(channel, args.deadline)
        _emit({"ready": True})
        while True:
            while b"\n" not in buffered:
                chunk = await stdin.receive_some(4096)
                if not chunk:
                    return
                buffered += chunk
            line, _, buffered = buffered.partition(b"\n")
            command, *rest = line.decode().split()
            if command == "quit":
                return
            try:
                if command == "ping":
                    _emit({"ok": True, "rtt_ms": await _ping(channel, args.deadline)})
                elif command == "pingfor":
                    end = time.perf_counter() + float(rest[0])
                    rtts = []
                    while time.perf_counter() < end:
                        rtts.append(await _ping(channel, args.deadline))
                    _emit({"ok": True, "rtt_ms": rtts})
                else:
                    _emit({"ok": False, "error": f"unknown command {command!r}"})
            except (trio.TooSlowError, leapcore.LeapcoreError) as exc:
                _emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--transport", default="websocket")
    parser.add_argument("--deadline", type=float, default=5.0, help="seconds per round trip")
    args = parser.parse_args()
    try:
        trio.run(_serve, args)
    except Exception as exc:  # report, for the test's failure message
        _emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
