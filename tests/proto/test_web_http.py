"""The web page's HTTP/1.1, sans-IO: strict requests, bounded sizes, specific statuses."""

from __future__ import annotations

import pytest

from leapcore.errors import HttpRequestError
from leapcore.proto.limits import WEB_MAX_BODY, WEB_MAX_HEADERS, WEB_MAX_REQUEST_HEAD
from leapcore.proto.web_http import (
    CONTENT_SECURITY_POLICY,
    Request,
    RequestReader,
    parse_cookies,
    parse_form,
    response,
)


def read(data: bytes, **kw: int) -> Request:
    request = RequestReader(**kw).feed(data)
    assert request is not None
    return request


def status_of(data: bytes, **kw: int) -> int:
    with pytest.raises(HttpRequestError) as caught:
        reader = RequestReader(**kw)
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
    return caught.value.status


def test_a_request_in_pieces() -> None:
    data = (
        b"POST /api/sign-in?x=1 HTTP/1.1\r\nHost: h:1\r\nCookie: a=1\r\ncookie: b=2\r\n"
        b"Content-Length: 7\r\n\r\ntoken=t"
    )
    reader = RequestReader()
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) is None
    request = reader.feed(data[-1:])
    assert request == Request(
        "POST",
        "/api/sign-in",
        "x=1",
        {"host": "h:1", "cookie": "a=1; b=2", "content-length": "7"},
        b"token=t",
    )
    assert parse_cookies(request.headers["cookie"]) == {"a": "1", "b": "2"}
    assert parse_form(request.body) == {"token": "t"}


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * WEB_MAX_REQUEST_HEAD + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * WEB_MAX_HEADERS + b"\r\n", 431),
        (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {WEB_MAX_BODY + 1}\r\n\r\n".encode(), 413),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad name: v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET http://elsewhere/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nextra", 400),  # no pipelining
    ],
)
def test_bad_requests_have_specific_statuses(data: bytes, status: int) -> None:
    assert status_of(data) == status


def test_a_head_without_its_end_is_bounded() -> None:
    reader = RequestReader(max_head=64)
    assert reader.feed(b"GET / HTTP/1.1\r\n") is None
    with pytest.raises(HttpRequestError) as caught:
        reader.feed(b"X: " + b"a" * 64)
    assert caught.value.status == 431


def test_the_end_of_stream_in_a_request_is_400() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(HttpRequestError) as caught:
        reader.feed(b"")
    assert caught.value.status == 400


def test_repeated_form_fields_are_refused() -> None:
    with pytest.raises(HttpRequestError):
        parse_form(b"token=a&token=b")
    with pytest.raises(HttpRequestError):
        parse_form(b"\xff")


def test_every_response_carries_the_security_headers() -> None:
    data = response(404, b"no", "text/plain", [("Allow", "GET")])
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 404 Not Found"
    assert f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}" in lines
    for line in (
        "X-Content-Type-Options: nosniff",
        "Referrer-Policy: no-referrer",
        "Cache-Control: no-store",
        "Connection: close",
        "Content-Length: 2",
        "Allow: GET",
    ):
        assert line in lines
    assert body == b"no"
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    streamed = response(200, content_type="text/event-stream", stream=True)
    assert b"Content-Length" not in streamed
    with pytest.raises(ValueError):
        response(200, headers=[("Set-Cookie", "a\r\nInjected: yes")])
