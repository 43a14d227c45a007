"""Methods the process suites' workers serve, loaded with
``leapcore-worker --services e2e_services:install`` (``tests`` on ``PYTHONPATH``).

* ``echo`` (RPC) — the payload, unchanged.
* ``sha256`` (RPC) — the hex SHA-256 of the payload as the worker received it.
* ``hello`` (RPC) — ``{"name", "encryption_mode"}`` of the worker the installer was given.
* ``count`` (stream) — payload ``N`` (ASCII digits): the items ``0`` … ``N-1``.
* ``invert`` (byte stream) — every byte XOR 0xFF, sent back as it arrives; once the caller
  half-closes, one more line, ``{"received": N, "sha256": HEX}`` (what the worker read),
  then the worker's own EOF.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

from leapcore.errors import ServiceError
from leapcore.peer.channel import ByteStream, CallContext, Services
from leapcore.worker.daemon import Worker

#: bytes.translate table for ``invert``.
INVERT = bytes(255 - b for b in range(256))
#: The most items ``count`` yields for one call.
MAX_COUNT = 100_000


def install(services: Services, worker: Worker) -> None:
    """Add the methods above to ``services`` (``worker`` is the daemon serving them)."""

    async def echo(ctx: CallContext, payload: bytes) -> bytes:
        return payload

    async def sha256(ctx: CallContext, payload: bytes) -> bytes:
        return hashlib.sha256(payload).hexdigest().encode()

    async def hello(ctx: CallContext, payload: bytes) -> bytes:
        about = {"name": worker.name, "encryption_mode": worker.encryption_mode}
        return json.dumps(about, sort_keys=True).encode()

    async def count(ctx: CallContext, payload: bytes) -> AsyncIterator[bytes]:
        if not payload.isdigit() or int(payload) > MAX_COUNT:
            raise ServiceError("invalid_argument", f"count takes 0..{MAX_COUNT}")
        for i in range(int(payload)):
            yield b"%d" % i

    async def invert(ctx: CallContext, payload: bytes, stream: ByteStream) -> None:
        received = 0
        digest = hashlib.sha256()
        while data := await stream.receive_some():
            received += len(data)
            digest.update(data)
            await stream.send_all(data.translate(INVERT))
        # The caller's half-close: it can still read what the worker sends now.
        trailer = {"received": received, "sha256": digest.hexdigest()}
        await stream.send_all(json.dumps(trailer, sort_keys=True).encode() + b"\n")
        await stream.send_eof()

    services.add_rpc("echo", echo)
    services.add_rpc("sha256", sha256)
    services.add_rpc("hello", hello)
    services.add_stream("count", count)
    services.add_byte_stream("invert", invert)
