"""Dialling a hub: a link pipe over WebSocket or HTTP/2, on TCP, TLS or a Unix socket (trio)."""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from ..errors import ConfigError, LinkClosed
from .http2 import open_h2_link
from .pipe import (
    HANDSHAKE_TIMEOUT,
    LINK_PATH,
    HubAddress,
    LinkPipe,
    open_stream,
    parse_hub_url,
)
from .trioutil import single_exception
from .websocket import open_websocket

__all__ = ["TRANSPORTS", "connect_link", "tls_context"]

TRANSPORTS: Final = ("websocket", "h2")
#: Seconds a graceful close of the link may take when the block ends normally.
CLOSE_TIMEOUT: Final = 5.0


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or only ``ca_file`` when given."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {ca_file!r}: {exc}") from None


@asynccontextmanager
async def connect_link(
    url: str, *, transport: str = "websocket", ca_file: str | None = None
) -> AsyncIterator[LinkPipe]:
    """Open a link to the hub at ``url``; closed when the block ends.

    ``https://`` always means TLS, verified against the system's CAs or ``ca_file``.
    Failures to connect raise :class:`~leapcore.errors.LinkClosed`.
    """
    if transport not in TRANSPORTS:
        raise ConfigError(f"unknown transport {transport!r}: use websocket or h2")
    address = parse_hub_url(url)
    context = tls_context(ca_file) if address.tls else None
    with single_exception():
        async with _connected(address, transport, context) as pipe:
            yield pipe


@asynccontextmanager
async def _connected(
    address: HubAddress, transport: str, context: ssl.SSLContext | None
) -> AsyncIterator[LinkPipe]:
    url = address.url
    async with trio.open_nursery() as nursery:
        if transport == "websocket":
            stream = await open_stream(address, ssl_context=context, alpn=["http/1.1"])
            try:
                pipe: LinkPipe = await open_websocket(
                    stream,
                    host=address.host,
                    port=address.port,
                    tls=address.tls,
                    path=LINK_PATH,
                    timeout=HANDSHAKE_TIMEOUT,
                )
            except (LinkClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                await trio.aclose_forcefully(stream)
                why = str(exc).removeprefix("WebSocket handshake failed: ")
                raise LinkClosed(f"WebSocket handshake with {url} failed: {why}") from None
        else:
            stream = await open_stream(address, ssl_context=context, alpn=["h2"])
            authority = address.host if not address.port else f"{address.host}:{address.port}"
            pipe = await open_h2_link(
                stream, nursery, authority=authority, scheme="https" if address.tls else "http"
            )
        try:
            yield pipe
        finally:
            # A graceful close needs this nursery's reader; when the block is left by a
            # cancellation that reader is cancelled too, so close at once instead of
            # waiting (shielded) for a close handshake that can never complete.
            cancelled = trio.current_effective_deadline() == -math.inf
            with trio.move_on_after(0 if cancelled else CLOSE_TIMEOUT, shield=True):
                await pipe.aclose()
            nursery.cancel_scope.cancel()
