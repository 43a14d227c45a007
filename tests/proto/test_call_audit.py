"""The worker audit log's records (sans-IO): what a call's line says, and what of its
arguments is kept -- secrets, environment values and keystrokes never."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from leapcore.proto.call_audit import (
    MAX_ARGS,
    MAX_STRING,
    REDACTED,
    call_record,
    channel_record,
    redacted_args,
    utc_time,
)


def args(document: object) -> dict[str, object]:
    return redacted_args(json.dumps(document).encode())


def test_secret_keys_env_values_and_data_are_redacted() -> None:
    kept = args(
        {
            "command": ["mysql", "--password", "hunter2", "-u", "me", "API_TOKEN=abc", "--auth=x"],
            "env": {"AWS_SECRET_ACCESS_KEY": "s3", "HOME": "/root"},
            "auth_token": "t0k",
            "nested": {"privateKey": "k", "name": "n"},
            "data": "typed password\r",
            "cwd": "/srv",
        }
    )
    assert kept == {
        "command": [
            "mysql",
            "--password",
            REDACTED,
            "-u",
            "me",
            f"API_TOKEN={REDACTED}",
            f"--auth={REDACTED}",
        ],
        "env": {"AWS_SECRET_ACCESS_KEY": REDACTED, "HOME": REDACTED},
        "auth_token": REDACTED,
        "nested": {"privateKey": REDACTED, "name": "n"},
        "data": {"length": 15},
        "cwd": "/srv",
    }
    text = json.dumps(kept)
    for secret in ("hunter2", "abc", "s3", "t0k", "typed password"):
        assert secret not in text


def test_long_values_and_large_arguments_are_cut() -> None:
    assert args({"path": "x" * 1000})["path"] == "x" * MAX_STRING + "…"
    big = args({f"k{i}": "v" * 200 for i in range(100)})
    assert big["truncated"] is True
    assert len(json.dumps(big)) <= MAX_ARGS


def test_payloads_that_are_not_a_json_object_are_recorded_by_size() -> None:
    assert redacted_args(b"\x00\x01binary") == {"bytes": 8}
    assert redacted_args(b"[1, 2]") == {"bytes": 6}
    assert redacted_args(b"") == {}


def test_a_call_record() -> None:
    record = call_record(
        at=1_796_000_000.5,
        channel_id=3,
        user_id="u-1",
        method="exec",
        payload=b'{"command": ["false"]}',
        outcome="ok",
        duration=0.0412,
        bytes_in=1,
        bytes_out=2,
        notes={"exit_status": 1, "exit_signal": None, "other": "dropped"},
    )
    assert record == {
        "time": "2026-11-30T00:53:20.500Z",
        "event": "call",
        "channel": 3,
        "user": "u-1",
        "method": "exec",
        "args": {"command": ["false"]},
        "outcome": "ok",
        "duration_ms": 41.2,
        "bytes_in": 1,
        "bytes_out": 2,
        "exit_status": 1,
        "exit_signal": None,
    }
    denied = call_record(
        at=0,
        channel_id=1,
        user_id="u",
        method="pty.spawn",
        payload=b"{}",
        outcome="denied_by_policy",
        message="services.disabled pty: pty.spawn",
    )
    assert denied["security"] is True and denied["message"].startswith("services.disabled")
    assert "security" not in call_record(
        at=0, channel_id=1, user_id="u", method="x", payload=b"", outcome="busy"
    )


def test_a_refused_channel_is_a_security_event() -> None:
    record = channel_record(
        at=0,
        channel_id=5,
        user_id="u-x",
        code="permission_denied",
        message="only the worker owner may open channels",
    )
    assert record["event"] == "channel_refused" and record["security"] is True
    assert utc_time(0) == "1970-01-01T00:00:00.000Z"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(st.dictionaries(st.text(max_size=20), _json, max_size=8))
def test_any_object_gives_bounded_plain_data(document: dict[str, object]) -> None:
    kept = args(document)
    assert json.loads(json.dumps(kept)) == kept
    assert len(json.dumps(kept)) <= MAX_ARGS


@given(st.binary(max_size=200))
def test_any_bytes_give_a_record(payload: bytes) -> None:
    assert isinstance(redacted_args(payload), dict)
