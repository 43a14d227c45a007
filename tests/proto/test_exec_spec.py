"""Remote exec's payloads (leapcore.proto.exec_spec): strict decoding, the env rules (NUL,
``=``), and the exit report."""

from __future__ import annotations

import json
import re

import pytest

from leapcore.errors import InvalidMessage
from leapcore.proto.exec_spec import (
    MAX_ENV,
    ExecRequest,
    ExitReport,
    check_env,
    decode_exec_request,
    decode_exit,
    decode_process_ref,
    decode_resize,
    decode_signal_request,
    encode_exec_request,
    encode_exit,
    encode_process_ref,
    encode_resize,
    encode_signal_request,
)


def test_round_trip_of_a_full_request() -> None:
    request = ExecRequest(
        argv=("ls", "-l", "a b"),
        env={"A": "1", "B": ""},
        env_mode="replace",
        cwd="/tmp",
        timeout=2.5,
        stderr="stdout",
    )
    assert decode_exec_request(encode_exec_request(request)) == request
    shell = ExecRequest(shell="echo $HOME | wc -c")
    assert decode_exec_request(encode_exec_request(shell)) == shell
    assert shell.command == ["/bin/sh", "-c", "echo $HOME | wc -c"]
    assert request.command == ["ls", "-l", "a b"]


def test_a_pty_request_merges_stderr_into_the_terminal() -> None:
    request = ExecRequest(argv=("top",), stderr="stdout", pty=(120, 40))
    payload = encode_exec_request(request)
    assert json.loads(payload) == {"argv": ["top"], "pty": {"cols": 120, "rows": 40}}
    assert decode_exec_request(payload) == request
    with pytest.raises(InvalidMessage, match="stderr must be 'stdout'"):
        encode_exec_request(ExecRequest(argv=("top",), pty=(80, 24)))  # stderr "stream"


def test_resize_requests() -> None:
    assert decode_resize(encode_resize(3, 100, 30)) == (3, 100, 30)
    with pytest.raises(InvalidMessage, match="at most 200000"):
        encode_resize(3, 1000, 1000)
    for bad in (b'{"process": 3, "cols": 80}', b'{"process": 0, "cols": 80, "rows": 24}'):
        with pytest.raises(InvalidMessage):
            decode_resize(bad)


def test_the_defaults_are_left_out_of_the_payload() -> None:
    assert json.loads(encode_exec_request(ExecRequest(argv=("true",)))) == {"argv": ["true"]}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({}, "exactly one of argv and shell"),
        ({"argv": ["a"], "shell": "a"}, "exactly one of argv and shell"),
        ({"argv": []}, "must not be empty"),
        ({"argv": "ls"}, "list of strings"),
        ({"argv": ["ls", 3]}, "argv[1] must be a string"),
        ({"argv": [""]}, "argv[0] must not be empty"),
        ({"argv": ["ls\0x"]}, "NUL"),
        ({"shell": ""}, "non-empty string"),
        ({"shell": "a\0b"}, "NUL"),
        ({"argv": ["x"], "env": {"A\0B": "1"}}, "NUL"),
        ({"argv": ["x"], "env": {"A": "1\0"}}, "NUL"),
        ({"argv": ["x"], "env": {"A=B": "1"}}, "contains '='"),
        ({"argv": ["x"], "env": {"": "1"}}, "1..1024"),
        ({"argv": ["x"], "env": {"A": 1}}, "strings"),
        ({"argv": ["x"], "env": ["A=1"]}, "object of strings"),
        ({"argv": ["x"], "env_mode": "over"}, "env_mode"),
        ({"argv": ["x"], "cwd": ""}, "cwd"),
        ({"argv": ["x"], "cwd": "/t\0"}, "NUL"),
        ({"argv": ["x"], "timeout": 0}, "timeout"),
        ({"argv": ["x"], "timeout": -1}, "timeout"),
        ({"argv": ["x"], "timeout": True}, "timeout"),
        ({"argv": ["x"], "timeout": "5"}, "timeout"),
        ({"argv": ["x"], "timeout": 1e12}, "timeout"),
        ({"argv": ["x"], "stderr": "file"}, "stderr"),
        ({"argv": ["x"], "pty": True}, 'pty must be {"cols": C, "rows": R}'),
        ({"argv": ["x"], "pty": {"cols": 80}}, 'pty must be {"cols": C, "rows": R}'),
        ({"argv": ["x"], "pty": {"cols": 0, "rows": 24}}, "cols must be 1..1000"),
        ({"argv": ["x"], "pty": {"cols": 100000, "rows": 24}}, "cols must be 1..1000"),
        ({"argv": ["x"], "pty": {"cols": 80, "rows": 1.5}}, "rows must be an integer"),
        ({"argv": ["x"], "pty": {"cols": 80, "rows": 24}, "stderr": "stream"}, "stderr must be"),
        ({"argv": ["x"], "tty": True}, "unknown field(s): tty"),
    ],
)
def test_malformed_requests_say_what_is_wrong(data: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidMessage, match=re.escape(words)):
        decode_exec_request(json.dumps(data).encode())


@pytest.mark.parametrize("payload", [b"", b"[]", b"\xff", b"null", b'"argv"'])
def test_a_payload_that_is_not_an_object_is_refused(payload: bytes) -> None:
    with pytest.raises(InvalidMessage, match="JSON object"):
        decode_exec_request(payload)


def test_encoding_checks_what_the_worker_checks() -> None:
    with pytest.raises(InvalidMessage, match="NUL"):
        encode_exec_request(ExecRequest(argv=("env",), env={"X": "a\0b"}))


def test_env_bounds() -> None:
    assert check_env({"A": "1"}) == {"A": "1"}
    with pytest.raises(InvalidMessage, match="at most"):
        check_env({f"V{i}": "" for i in range(MAX_ENV + 1)})


def test_process_references_and_signals() -> None:
    assert decode_process_ref(encode_process_ref(7)) == 7
    assert decode_signal_request(encode_signal_request(7, 15)) == (7, 15)
    for bad in (b'{"process": 0}', b'{"process": true}', b'{"process": 1, "x": 2}', b"[]"):
        with pytest.raises(InvalidMessage):
            decode_process_ref(bad)
    for bad in (b'{"process": 1, "signal": 0}', b'{"process": 1, "signal": 65}'):
        with pytest.raises(InvalidMessage, match="signal"):
            decode_signal_request(bad)


def test_exit_reports() -> None:
    for report in (ExitReport(0, None), ExitReport(None, 9, True), ExitReport(42, None)):
        assert decode_exit(encode_exit(report)) == report
    for bad in (
        b'{"exit_status": 1, "exit_signal": 2}',
        b'{"exit_status": null, "exit_signal": null}',
        b'{"exit_status": true, "exit_signal": null}',
        b'{"exit_status": 0, "exit_signal": null, "timed_out": 1}',
    ):
        with pytest.raises(InvalidMessage):
            decode_exit(bad)
