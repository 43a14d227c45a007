"""Link transports (trio): one ordered, bidirectional byte pipe per link, whatever carries it.

A :class:`LinkPipe` moves chunks of link bytes (``leapcore.proto.link_codec`` frames;
the decoder does not care how they are split). Two carriers implement it:

* :class:`~leapcore.net.websocket.WebSocketPipe` (:mod:`leapcore.net.websocket`) — a WebSocket
  connection (binary messages; boundaries mean nothing);
* ``H2StreamPipe`` (:mod:`leapcore.net.http2`) — one long-lived HTTP/2 stream.

Either runs over TCP, TLS or a Unix socket. :func:`open_stream` dials a hub URL
(``http://``, ``https://`` — always TLS — or ``unix:<path>``).
"""

from __future__ import annotations

import ssl
from typing import Final, Protocol
from urllib.parse import urlsplit

import trio

from ..errors import ConfigError, LinkClosed, TLSCertificateError

__all__ = [
    "LINK_PATH",
    "WRITE_BATCH",
    "HubAddress",
    "LinkPipe",
    "PrefixedStream",
    "open_stream",
    "parse_hub_url",
    "send_joined",
]

#: The HTTP path of the link endpoint (WebSocket upgrade, or the HTTP/2 stream).
LINK_PATH: Final = "/link"
#: Link messages queued together are joined into one transport write up to about this size.
WRITE_BATCH: Final = 256 * 1024
#: Seconds allowed for a TLS handshake, either side.
HANDSHAKE_TIMEOUT: Final = 30.0


class LinkPipe(Protocol):
    """An ordered byte pipe to the other end of a link."""

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes | bytearray | memoryview:
        """The next chunk (never empty); :class:`LinkClosed` once the peer is gone. A
        ``memoryview`` is of immutable bytes: it may be kept."""
        ...

    async def aclose(self) -> None: ...


async def send_joined(pipe: LinkPipe, parts: list[bytes]) -> None:
    """Write ``parts`` in one transport write: a pipe with ``send_parts`` (the WebSocket
    pipe) joins them while framing them, one copy less than joining them here first."""
    if len(parts) == 1:
        await pipe.send(parts[0])
        return
    send_parts = getattr(pipe, "send_parts", None)
    if send_parts is not None:
        await send_parts(parts)
    else:
        await pipe.send(b"".join(parts))


class PrefixedStream(trio.abc.Stream):
    """A stream that first replays bytes already read from it (after sniffing a protocol)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class HubAddress:
    """A parsed hub URL: where to dial and whether to speak TLS."""

    def __init__(self, url: str, *, scheme: str, host: str, port: int, unix_path: str) -> None:
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port
        self.unix_path = unix_path

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def parse_hub_url(url: str) -> HubAddress:
    """``http://host[:port]``, ``https://host[:port]`` (TLS, always) or ``unix:<path>``."""
    text = url.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ConfigError(f"hub URL {url!r} names no socket path")
        return HubAddress(text, scheme="unix", host="localhost", port=0, unix_path=path)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"hub URL {url!r} must start with http://, https:// or unix:")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"hub URL {url!r} is malformed: {exc}") from None
    if not parts.hostname:
        raise ConfigError(f"hub URL {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"hub URL {url!r} must not have a path, query or fragment")
    default = 443 if parts.scheme == "https" else 80
    return HubAddress(
        text,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port if port is not None else default,
        unix_path="",
    )


async def open_stream(
    address: HubAddress, *, ssl_context: ssl.SSLContext | None = None, alpn: list[str] | None = None
) -> trio.abc.Stream:
    """Dial the hub: TCP, TLS over TCP (for ``https://``, verified), or a Unix socket.

    :class:`~leapcore.errors.LinkClosed` if it cannot be reached (retry later);
    :class:`~leapcore.errors.TLSCertificateError` if its certificate does not verify."""
    try:
        if address.scheme == "unix":
            return await trio.open_unix_socket(address.unix_path)
        if address.tls:
            context = ssl_context or ssl.create_default_context()
            if alpn:
                context.set_alpn_protocols(alpn)
            tcp = await trio.open_tcp_stream(address.host, address.port)
            tls = trio.SSLStream(tcp, context, server_hostname=address.host, https_compatible=True)
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
            return tls
        return await trio.open_tcp_stream(address.host, address.port)
    except OSError as exc:
        raise LinkClosed(f"cannot reach the hub at {address.url}: {exc.strerror or exc}") from None
    except trio.TooSlowError:
        raise LinkClosed(f"TLS handshake with the hub at {address.url} timed out") from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__ or exc
        text = f"TLS with the hub at {address.url} failed: {cause}"
        if isinstance(cause, ssl.SSLCertVerificationError):  # possibly an impostor
            raise TLSCertificateError(text) from None
        raise LinkClosed(text) from None
