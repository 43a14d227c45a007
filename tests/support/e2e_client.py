"""A client program, written as a tool author would write one with ``import leapcore``: it
exercises a worker that serves ``e2e_services`` through one end-to-end encrypted channel.

    python e2e_client.py --hub URL --worker-id ID [--transport websocket|h2] [--ca-file FILE]

The API token and the pin store are the ones ``leapcore remote`` uses (``LEAPCORE_CONFIG_DIR``
or ``~/.config/leapcore``; ``leapcore remote login`` saved the token). Steps, on one channel:

1. ``hello`` — the worker's name and mode, as the installer saw them;
2. one RPC request of exactly the channel's ``max_message_size`` is refused locally
   (``MessageTooLarge``) and the channel still works;
3. a payload of ``--echo-bytes`` (default: the largest ``sha256`` request that fits in 16 MiB,
   so it is chunked) goes to ``sha256`` (the worker's digest of what it received must match)
   and to ``echo`` (what comes back must match);
4. the ``count`` stream (``--count`` items, in order);
5. the ``invert`` byte stream: ``--stream-bytes`` sent while the answer is read, then a
   half-close; the inverted bytes, the worker's trailer (what it read) and its EOF must follow;
6. the channel is closed; a call on it must then fail with ``ChannelClosedError``.

Prints one JSON line on success (exit 0); on any failure, ``e2e_client: STEP: ERROR`` on
stderr and exit 1. Payloads are ``random.Random(--seed).randbytes(n)``, so a caller can
recompute their digests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from typing import Any

import trio

import leapcore
from leapcore.errors import ChannelClosedError, MessageTooLarge
from leapcore.peer.channel import Channel
from leapcore.proto.limits import DEFAULT_MAX_MESSAGE_SIZE

#: What a REQUEST adds to its payload: kind (1) and method length (1) bytes, then the method.
REQUEST_OVERHEAD = 2
INVERT = bytes(255 - b for b in range(256))
PIECE = 64 * 1024


class Failed(Exception):
    """A check did not hold (the message says which)."""


def payload(seed: int, tag: str, size: int) -> bytes:
    return random.Random(f"{seed}:{tag}").randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


async def run_steps(args: argparse.Namespace, report: dict[str, Any], step: list[str]) -> None:
    async with leapcore.connect(args.hub, transport=args.transport, ca_file=args.ca_file) as hub:
        step[0] = "open"
        async with hub.open_channel(args.worker_id) as ch:
            report["worker_id"] = args.worker_id
            step[0] = "hello"
            report["hello"] = json.loads(await ch.call("hello"))

            step[0] = "too-large"
            limit = DEFAULT_MAX_MESSAGE_SIZE
            try:
                await ch.call("echo", bytes(limit - REQUEST_OVERHEAD - len("echo") + 1))
            except MessageTooLarge as exc:
                report["too_large"] = type(exc).__name__
            else:
                raise Failed(f"a {limit + 1}-byte request was sent")
            await ch.ping()  # the refusal left the channel usable

            step[0] = "echo"
            await _echo(ch, args, report)
            step[0] = "stream"
            async with ch.stream("count", b"%d" % args.count) as items:
                got = [item async for item in items]
            check(got == [b"%d" % i for i in range(args.count)], f"count: got {got[:5]}…")
            report["stream"] = {"items": len(got)}
            step[0] = "byte-stream"
            report["byte_stream"] = await _byte_stream(ch, args)

            step[0] = "close"
            await ch.aclose()
            try:
                await ch.call("echo", b"after close")
            except ChannelClosedError:
                report["closed"] = True
            else:
                raise Failed("a call on the closed channel succeeded")


async def _echo(ch: Channel, args: argparse.Namespace, report: dict[str, Any]) -> None:
    data = payload(args.seed, "echo", args.echo_bytes)
    digest = sha(data)
    started = time.perf_counter()
    worker_digest = (await ch.call("sha256", data)).decode()
    check(worker_digest == digest, f"sha256: the worker read {worker_digest}, sent {digest}")
    back = await ch.call("echo", data)
    check(len(back) == len(data), f"echo: {len(back)} bytes back for {len(data)}")
    check(sha(back) == digest, f"echo: sha256 {sha(back)} back, {digest} sent")
    report["echo"] = {
        "bytes": len(data),
        "sha256": digest,
        "worker_sha256": worker_digest,
        "returned_sha256": sha(back),
        "seconds": round(time.perf_counter() - started, 3),
    }


async def _byte_stream(ch: Channel, args: argparse.Namespace) -> dict[str, Any]:
    data = payload(args.seed, "bytes", args.stream_bytes)
    stream = await ch.open_byte_stream("invert")
    received = bytearray()

    async def send() -> None:
        for start in range(0, len(data), PIECE):
            await stream.send_all(data[start : start + PIECE])
        await stream.send_eof()  # half-close: the answer keeps coming

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while chunk := await stream.receive_some():
            received += chunk
    await stream.aclose()
    body, trailer = bytes(received[: len(data)]), bytes(received[len(data) :])
    check(body == data.translate(INVERT), "invert: the inverted bytes differ")
    check(trailer.endswith(b"\n"), f"invert: no trailer line after the data: {trailer[:80]!r}")
    told = json.loads(trailer)
    check(told == {"received": len(data), "sha256": sha(data)}, f"invert: the worker read {told}")
    return {"sent": len(data), "received": len(body), "worker": told}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="e2e_client", description=__doc__.split("\n")[0])
    parser.add_argument("--hub", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--transport", default="websocket")
    parser.add_argument("--ca-file")
    parser.add_argument(
        "--echo-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_SIZE - REQUEST_OVERHEAD - len("sha256"),
    )
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--stream-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    step = ["connect"]

    async def guarded() -> None:
        with trio.fail_after(args.timeout):
            await run_steps(args, report, step)

    started = time.perf_counter()
    try:
        trio.run(guarded)
    except trio.TooSlowError:
        print(f"e2e_client: {step[0]}: timed out after {args.timeout:g}s", file=sys.stderr)
        return 1
    except Exception as exc:  # any failure: one clear line, no traceback
        while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # a nursery's wrapping of the one real failure
        print(f"e2e_client: {step[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    report["seconds"] = round(time.perf_counter() - started, 3)
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
