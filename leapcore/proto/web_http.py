"""HTTP/1.1 for the hub's web page, sans-IO: strict request parsing and response bytes.

The web listener (:mod:`leapcore.hub.web`) serves one request per connection and then
closes it (``Connection: close``), so this is the whole of its HTTP: a
:class:`RequestReader` is fed bytes until it returns a :class:`Request` or raises
:class:`~leapcore.errors.HttpRequestError`, whose ``status`` is the answer:

* a request line that is not ``METHOD SP /path SP HTTP/1.x``, a header line without a
  colon, a header name that is not a token, a folded (obsolete) header line, a repeated or
  non-numeric ``Content-Length``, a missing ``Host``: 400;
* a request line and headers longer than ``max_head`` bytes, or more than ``max_headers``
  headers: 431;
* a body longer than ``max_body`` bytes (by its ``Content-Length``): 413;
* ``Transfer-Encoding`` (chunked bodies are not accepted): 501; ``HTTP/2`` or later: 505.

Header names are folded to lower case; a repeated header's values are joined with ``", "``
(``Cookie`` with ``"; "``). Nothing here reads a clock: the driver bounds the time a
request may take. :func:`response` builds the bytes of an answer with the headers every
answer carries (:data:`SECURITY_HEADERS`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import parse_qsl

import attrs

from ..errors import HttpRequestError
from .limits import WEB_MAX_BODY, WEB_MAX_HEADERS, WEB_MAX_REQUEST_HEAD

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "REASONS",
    "SECURITY_HEADERS",
    "Request",
    "RequestReader",
    "parse_cookies",
    "parse_form",
    "response",
]

#: What a page may load and who may frame it: only this origin's own script, style and
#: images, fetches to itself, no framing at all, forms posting to itself.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
#: Headers on every answer, whatever its status.
SECURITY_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
REASONS: Final = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE: Final = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[!-~]*) HTTP/(\d)\.(\d)")


@attrs.frozen
class Request:
    """One parsed request: ``path`` without its query, ``query`` the text after ``?``."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


class RequestReader:
    """Feed it a connection's bytes until it returns the :class:`Request`."""

    def __init__(
        self,
        *,
        max_head: int = WEB_MAX_REQUEST_HEAD,
        max_headers: int = WEB_MAX_HEADERS,
        max_body: int = WEB_MAX_BODY,
    ) -> None:
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_body = max_body
        self._buf = bytearray()
        self._head: tuple[str, str, str, dict[str, str]] | None = None
        self._length = 0

    def feed(self, data: bytes | bytearray) -> Request | None:
        """Take ``data``; the request once it is whole, else None. An empty ``data`` is the
        peer's end of stream: a request cut short is a 400."""
        if not data:
            raise HttpRequestError(400, "the connection ended in the middle of a request")
        self._buf += data
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self.max_head:
                    raise HttpRequestError(431, "request head too large")
                return None
            if end + 4 > self.max_head:
                raise HttpRequestError(431, "request head too large")
            self._head = self._parse_head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
        if len(self._buf) < self._length:
            return None
        if len(self._buf) > self._length:
            raise HttpRequestError(400, "bytes after the request (pipelining is not supported)")
        method, path, query, headers = self._head
        return Request(method, path, query, headers, bytes(self._buf))

    def _parse_head(self, head: bytes) -> tuple[str, str, str, dict[str, str]]:
        request_line, *lines = head.split(b"\r\n")
        match = _REQUEST_LINE.fullmatch(request_line)
        if match is None:
            raise HttpRequestError(400, "malformed request line")
        method, target, major, _minor = match.groups()
        if major != b"1":
            raise HttpRequestError(505, "only HTTP/1.x is served here")
        if len(lines) > self.max_headers:
            raise HttpRequestError(431, f"more than {self.max_headers} headers")
        headers: dict[str, str] = {}
        for line in lines:
            if line[:1] in (b" ", b"\t"):
                raise HttpRequestError(400, "folded header lines are not accepted")
            name, sep, value = line.partition(b":")
            if not sep or _TOKEN.fullmatch(name) is None:
                raise HttpRequestError(400, "malformed header line")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in text):
                raise HttpRequestError(400, "control character in a header value")
            if key in headers:
                if key in ("content-length", "host"):
                    raise HttpRequestError(400, f"repeated {key} header")
                text = headers[key] + ("; " if key == "cookie" else ", ") + text
            headers[key] = text
        if "host" not in headers:
            raise HttpRequestError(400, "no Host header")
        if "transfer-encoding" in headers:
            raise HttpRequestError(501, "Transfer-Encoding is not supported; send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isascii() or not length_text.isdigit():
            raise HttpRequestError(400, "malformed Content-Length")
        length = int(length_text)
        if length > self.max_body:
            raise HttpRequestError(413, f"request body larger than {self.max_body} bytes")
        self._length = length
        path, _, query = target.decode("ascii").partition("?")
        return method.decode("ascii"), path, query, headers


def parse_cookies(header: str) -> dict[str, str]:
    """``name=value`` pairs of a ``Cookie`` header (the first of a repeated name wins)."""
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in out:
            out[name] = value.strip('"')
    return out


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; a repeated field is a 400."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise HttpRequestError(400, "malformed form body") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise HttpRequestError(400, f"repeated form field {name!r}")
        out[name] = value
    return out


def response(
    status: int,
    body: bytes = b"",
    content_type: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    *,
    stream: bool = False,
) -> bytes:
    """The bytes of an answer: status line, :data:`SECURITY_HEADERS`, ``headers``,
    ``Connection: close`` and the body (``stream``: no length, the body follows as it comes,
    and the connection's end ends it)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in SECURITY_HEADERS]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{name}: {value}" for name, value in headers]
    if not stream:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError("line break in a response header")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
