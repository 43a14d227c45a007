"""Methods for ``leapcore remote call`` and ``remote worker services`` tests, loaded with
``leapcore-worker --services call_services:install`` (``tests/support`` on ``PYTHONPATH``).

* ``demo.echo`` (RPC) — the payload, unchanged.
* ``demo.add`` (RPC) — ``{"a": N, "b": N}`` → ``{"sum": N}``; anything else is
  ``invalid_argument``.
* ``demo.fail`` (RPC) — always the error ``bad_thing`` ``"it went wrong"``.
* ``demo.binary`` (RPC) — :data:`BINARY`, bytes that are not UTF-8.
* ``demo.text`` (RPC) — :data:`TEXT`, UTF-8 text that is not JSON (with an escape sequence).
* ``demo.hang`` (RPC) — never answers.
* ``demo.calls`` (RPC, public) — ``{"calls": N}``: how many calls the other ``demo.*``
  methods have had in this worker.
* ``demo.ticks`` (stream) and ``demo.pipe`` (byte stream) — for the listing's kinds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio

from leapcore.errors import ServiceError
from leapcore.peer.channel import ByteStream, CallContext, Services
from leapcore.worker.daemon import Worker

#: What ``demo.binary`` answers: not UTF-8.
BINARY = b"\xff\xfe\x00\x80leapcore"
#: What ``demo.text`` answers: text, a tab, a newline and an ANSI escape sequence.
TEXT = "plain text\tand a tab\n\x1b[31mred\n"
#: Every method :func:`install` adds, with its kind and whether it is public.
METHODS = {
    "demo.add": ("rpc", False),
    "demo.binary": ("rpc", False),
    "demo.calls": ("rpc", True),
    "demo.echo": ("rpc", False),
    "demo.fail": ("rpc", False),
    "demo.hang": ("rpc", False),
    "demo.pipe": ("byte_stream", False),
    "demo.text": ("rpc", False),
    "demo.ticks": ("stream", False),
}


def install(services: Services, worker: Worker) -> None:
    calls = 0

    def called() -> None:
        nonlocal calls
        calls += 1

    async def echo(ctx: CallContext, payload: bytes) -> bytes:
        called()
        return payload

    async def add(ctx: CallContext, payload: bytes) -> bytes:
        called()
        try:
            request = json.loads(payload)
            total = request["a"] + request["b"]
        except (ValueError, TypeError, KeyError):
            raise ServiceError("invalid_argument", 'demo.add takes {"a": N, "b": N}') from None
        return json.dumps({"sum": total}).encode()

    async def fail(ctx: CallContext, payload: bytes) -> bytes:
        called()
        raise ServiceError("bad_thing", "it went wrong")

    async def binary(ctx: CallContext, payload: bytes) -> bytes:
        called()
        return BINARY

    async def text(ctx: CallContext, payload: bytes) -> bytes:
        called()
        return TEXT.encode()

    async def hang(ctx: CallContext, payload: bytes) -> bytes:
        called()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def count(ctx: CallContext, payload: bytes) -> bytes:
        return json.dumps({"calls": calls}).encode()

    async def ticks(ctx: CallContext, payload: bytes) -> AsyncIterator[bytes]:
        called()
        yield b"tick"

    async def pipe(ctx: CallContext, payload: bytes, stream: ByteStream) -> None:
        called()
        while data := await stream.receive_some():
            await stream.send_all(data)

    services.add_rpc("demo.echo", echo)
    services.add_rpc("demo.add", add)
    services.add_rpc("demo.fail", fail)
    services.add_rpc("demo.binary", binary)
    services.add_rpc("demo.text", text)
    services.add_rpc("demo.hang", hang)
    services.add_rpc("demo.calls", count, public=True)
    services.add_stream("demo.ticks", ticks)
    services.add_byte_stream("demo.pipe", pipe)
