"""The ``pty.*`` payloads: round trips, and every malformed request refused with
``InvalidMessage`` (the worker's ``invalid_argument``)."""

from __future__ import annotations

import pytest

from leapcore.errors import InvalidMessage
from leapcore.proto.limits import PTY_MAX_CELLS, PTY_MAX_COLS, PTY_MAX_ROWS, PTY_MAX_SEND
from leapcore.proto.pty_spec import (
    AttachRequest,
    Capture,
    CaptureRequest,
    SessionInfo,
    SpawnRequest,
    check_size,
    decode_attach_request,
    decode_capture,
    decode_capture_request,
    decode_info,
    decode_list,
    decode_resize_request,
    decode_send_request,
    decode_session_ref,
    decode_spawn_request,
    encode_attach_request,
    encode_capture,
    encode_capture_request,
    encode_info,
    encode_list,
    encode_resize_request,
    encode_send_request,
    encode_session_ref,
    encode_spawn_request,
)

INFO = SessionInfo("7", "sh", 123, 80, 24, False, 3, None, 1.5, 2)


def test_spawn_round_trip() -> None:
    request = SpawnRequest(("vi", "x"), None, {"A": "b"}, "replace", "/tmp", 100, 40)
    assert decode_spawn_request(encode_spawn_request(request)) == request
    assert decode_spawn_request(b"{}") == SpawnRequest()  # the login shell, 80x24
    assert SpawnRequest().command("/bin/zsh") == ["/bin/zsh"]
    assert SpawnRequest(shell="ls -l").command("/bin/zsh") == ["/bin/sh", "-c", "ls -l"]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b'{"argv":[]}',
        b'{"argv":"sh"}',
        b'{"argv":["sh"],"shell":"sh"}',
        b'{"argv":["s\\u0000h"]}',
        b'{"shell":""}',
        b'{"env":{"A":"x\\u0000y"}}',
        b'{"env":{"A=B":"x"}}',
        b'{"env_mode":"other"}',
        b'{"cwd":""}',
        b'{"cols":0}',
        b'{"rows":0}',
        b'{"cols":100000}',
        b'{"cols":true}',
        b'{"cols":80.5}',
        b'{"surprise":1}',
    ],
)
def test_bad_spawn_requests(payload: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode_spawn_request(payload)


def test_sizes() -> None:
    assert check_size(1, 1) == (1, 1)
    assert check_size(PTY_MAX_COLS, PTY_MAX_CELLS // PTY_MAX_COLS) == (
        PTY_MAX_COLS,
        PTY_MAX_CELLS // PTY_MAX_COLS,
    )
    for cols, rows in ((0, 0), (100_000, 24), (80, PTY_MAX_ROWS + 1), (1000, 1000), (-1, 5)):
        with pytest.raises(InvalidMessage):
            check_size(cols, rows)


def test_refs_resize_send() -> None:
    assert decode_session_ref(encode_session_ref("a-1.b_2")) == "a-1.b_2"
    for bad in (b'{"id":""}', b'{"id":"../x"}', b'{"id":7}', b'{"id":"1","x":1}', b"{}"):
        with pytest.raises(InvalidMessage):
            decode_session_ref(bad)
    assert decode_resize_request(encode_resize_request("1", 132, 40)) == ("1", 132, 40)
    with pytest.raises(InvalidMessage):
        decode_resize_request(b'{"id":"1","cols":80}')
    assert decode_send_request(encode_send_request("1", "ls\n")) == ("1", b"ls\n")
    raw = bytes(range(256))
    assert decode_send_request(encode_send_request("1", raw)) == ("1", raw)
    with pytest.raises(InvalidMessage):
        encode_send_request("1", b"x" * (PTY_MAX_SEND + 1))
    for bad in (
        b'{"id":"1"}',
        b'{"id":"1","data":"a","data_b64":"YQ=="}',
        b'{"id":"1","data_b64":"not base64!"}',
        b'{"id":"1","data":3}',
    ):
        with pytest.raises(InvalidMessage):
            decode_send_request(bad)


def test_capture_and_attach() -> None:
    request = CaptureRequest("3", 50, True)
    assert decode_capture_request(encode_capture_request(request)) == request
    with pytest.raises(InvalidMessage):
        decode_capture_request(b'{"id":"3","scrollback":-1}')
    with pytest.raises(InvalidMessage):
        decode_capture_request(b'{"id":"3","ansi":1}')
    shot = Capture(INFO, ("$ ls", "a  b", ""), ("old",), (2, 1), "\x1b[H")
    assert decode_capture(encode_capture(shot)) == shot
    assert shot.text == "$ ls\na  b"
    attach = AttachRequest("3", (100, 30))
    assert decode_attach_request(encode_attach_request(attach)) == attach
    assert decode_attach_request(b'{"id":"3"}') == AttachRequest("3")
    with pytest.raises(InvalidMessage):
        decode_attach_request(b'{"id":"3","cols":100}')


def test_info_and_list() -> None:
    assert decode_info(encode_info(INFO)) == INFO
    assert decode_list(encode_list([INFO, INFO])) == [INFO, INFO]
    with pytest.raises(InvalidMessage):
        decode_list(b'{"sessions":[{"id":"1"}]}')
