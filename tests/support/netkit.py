"""Small servers for the transport tests: an echo link handler and a health route."""

from __future__ import annotations

from leapcore.errors import LinkClosed
from leapcore.net.pipe import LinkPipe


async def echo(pipe: LinkPipe, transport: str, peer: str = "") -> None:
    """Echo every chunk back; prefix nothing, so the client sees its own frames."""
    try:
        while True:
            await pipe.send(await pipe.receive())
    except LinkClosed:
        pass


def healthz() -> tuple[int, str, bytes]:
    return 200, "text/plain; charset=utf-8", b"ok\n"
