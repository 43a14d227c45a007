"""The hub's identity on the wire (sans-IO): ``hub_id`` in ``registered``, both greetings
and ``error``; a worker's ``name`` and ``labels`` in ``connect``; the ``worker_deleted``
and ``already_exists`` link error codes."""

from __future__ import annotations

import json
import re
import struct

import pytest
from support.helpers import expect

from leapcore.errors import LinkProtocolError, LocalError
from leapcore.proto.link_codec import (
    LINK_ERRORS,
    ClientGreeting,
    ClientHello,
    Connect,
    ErrorMessage,
    LinkDecoder,
    LinkMessage,
    Registered,
    WorkerGreeting,
    encode,
)
from leapcore.proto.link_fields import MAX_ID, MAX_LABELS, MAX_NAME
from leapcore.proto.link_state import LinkConnection, LinkRole, LinkState

HUB_ID = "0123456789abcdef"


def control(record: dict[str, object]) -> bytes:
    body = json.dumps(record).encode()
    return struct.pack(">I", len(body) + 1) + b"\x01" + body


def decode_all(data: bytes) -> list[LinkMessage]:
    return LinkDecoder().feed(data)


def body(message: LinkMessage) -> dict[str, object]:
    data: dict[str, object] = json.loads(encode(message)[5:])
    return data


NEW_FIELDS: list[LinkMessage] = [
    Registered("w1", "t" * 48, HUB_ID),
    WorkerGreeting("w1", "u1", "alice", HUB_ID),
    ClientGreeting("u1", "alice", HUB_ID),
    ErrorMessage("worker_deleted", "this worker was deregistered or deleted on this hub", HUB_ID),
    ErrorMessage("already_exists", "another worker is called 'box'", HUB_ID),
    Connect(1, "t" * 48, "box", {"site": "lab"}),
    Connect(1, "t" * 48, "box"),
    Connect(1, "t" * 48, labels={}),
    Connect(1, "t" * 48, "", {"k": ""}),
]


@pytest.mark.parametrize("message", NEW_FIELDS, ids=lambda m: m.type)
def test_new_fields_round_trip(message: LinkMessage) -> None:
    assert decode_all(encode(message)) == [message]


def test_wire_spelling() -> None:
    assert body(WorkerGreeting("w1", "u1", "alice", HUB_ID)) == {
        "type": "worker_greeting",
        "worker_id": "w1",
        "owner_id": "u1",
        "owner_name": "alice",
        "hub_id": HUB_ID,
    }
    assert body(ErrorMessage("worker_deleted", "gone", HUB_ID)) == {
        "type": "error",
        "code": "worker_deleted",
        "message": "gone",
        "hub_id": HUB_ID,
    }
    assert body(Registered("w1", "t", HUB_ID))["hub_id"] == HUB_ID
    assert body(ClientGreeting("u1", "alice", HUB_ID))["hub_id"] == HUB_ID
    assert body(Connect(1, "t", "box", {"a": "b"})) == {
        "type": "connect",
        "protocol_version": 1,
        "auth_token": "t",
        "name": "box",
        "labels": {"a": "b"},
    }
    # A connect without a profile is spelled exactly as before.
    assert body(Connect(1, "t")) == {"type": "connect", "protocol_version": 1, "auth_token": "t"}


ABSENT = [
    ({"type": "registered", "worker_id": "w", "auth_token": "t"}, Registered("w", "t")),
    (
        {"type": "worker_greeting", "worker_id": "w", "owner_id": "u", "owner_name": "a"},
        WorkerGreeting("w", "u", "a"),
    ),
    ({"type": "client_greeting", "user_id": "u", "user_name": "a"}, ClientGreeting("u", "a")),
    ({"type": "error", "code": "internal", "message": "m"}, ErrorMessage("internal", "m")),
    ({"type": "connect", "protocol_version": 1, "auth_token": "t"}, Connect(1, "t")),
    (
        {"type": "connect", "protocol_version": 1, "auth_token": "t", "name": None, "labels": None},
        Connect(1, "t"),
    ),
]


@pytest.mark.parametrize(("record", "expected"), ABSENT, ids=lambda x: str(x)[:30])
def test_absent_new_fields_take_their_defaults(
    record: dict[str, object], expected: LinkMessage
) -> None:
    assert decode_all(control(record)) == [expected]
    assert getattr(expected, "hub_id", "") == ""


def _connect(**fields: object) -> dict[str, object]:
    return {"type": "connect", "protocol_version": 1, "auth_token": "t", **fields}


MISTYPED = [
    ({"type": "registered", "worker_id": "w", "auth_token": "t", "hub_id": 5}, "'hub_id'"),
    ({"type": "registered", "worker_id": "w", "auth_token": "t", "hub_id": None}, "'hub_id'"),
    (
        {
            "type": "worker_greeting",
            "worker_id": "w",
            "owner_id": "u",
            "owner_name": "a",
            "hub_id": ["x"],
        },
        "'hub_id'",
    ),
    ({"type": "client_greeting", "user_id": "u", "user_name": "a", "hub_id": 1.5}, "'hub_id'"),
    ({"type": "error", "code": "internal", "message": "m", "hub_id": True}, "'hub_id'"),
    (_connect(name=5), "'name'"),
    (_connect(name=["box"]), "'name'"),
    (_connect(labels=["a", "b"]), "'labels'"),
    (_connect(labels="a=b"), "'labels'"),
    (_connect(labels={"a": 1}), "'labels'"),
    (_connect(labels={"a": None}), "'labels'"),
    (_connect(nickname="box"), "unknown field(s) 'nickname'"),
]


@pytest.mark.parametrize(("record", "problem"), MISTYPED, ids=lambda x: str(x)[:40])
def test_mistyped_new_fields_are_refused(record: dict[str, object], problem: str) -> None:
    exc = expect(LinkProtocolError, "", decode_all, control(record))
    assert problem in str(exc)


OVER_LIMITS = [
    ("connect.name", _connect(name="n" * (MAX_NAME + 1))),
    ("connect.name", _connect(name="box\x1b[2J")),
    ("connect.labels", _connect(labels={f"k{i}": "v" for i in range(MAX_LABELS + 1)})),
    ("connect.labels", _connect(labels={"": "v"})),
    ("connect.labels", _connect(labels={"k": "a\nb"})),
    (
        "registered.hub_id",
        {"type": "registered", "worker_id": "w", "auth_token": "t", "hub_id": "h" * (MAX_ID + 1)},
    ),
    ("error.hub_id", {"type": "error", "code": "internal", "message": "m", "hub_id": "h\x07"}),
]


@pytest.mark.parametrize(("where", "record"), OVER_LIMITS, ids=lambda x: str(x)[:40])
def test_new_fields_have_the_limits_of_their_names(where: str, record: dict[str, object]) -> None:
    """``connect.name``/``labels`` are checked exactly like ``register``'s; ``hub_id`` like
    the other ids."""
    expect(LinkProtocolError, re.escape(where), decode_all, control(record))


def test_encode_checks_the_new_fields_too() -> None:
    expect(LocalError, "connect.name", encode, Connect(1, "t", "n" * (MAX_NAME + 1)))
    expect(LocalError, "connect.labels", encode, Connect(1, "t", labels={"": "v"}))
    expect(LocalError, "worker_greeting.hub_id", encode, WorkerGreeting("w", "u", "a", "\n"))


def test_new_link_error_codes() -> None:
    assert {"worker_deleted", "already_exists", "unauthenticated"} <= LINK_ERRORS


@pytest.mark.parametrize("code", ["worker_deleted", "already_exists", "unauthenticated"])
def test_the_hub_may_answer_a_connect_with_the_new_codes(code: str) -> None:
    worker, hub = LinkConnection(LinkRole.WORKER), LinkConnection(LinkRole.HUB)
    assert hub.receive(worker.send(Connect(1, "t", "box", {"a": "b"}))) == [
        Connect(1, "t", "box", {"a": "b"})
    ]
    error = ErrorMessage(code, "no", HUB_ID)
    assert worker.receive(hub.send(error)) == [error]
    assert worker.state is LinkState.CLOSED and hub.state is LinkState.CLOSED


def test_an_unknown_link_error_code_is_still_refused() -> None:
    worker, hub = LinkConnection(LinkRole.WORKER), LinkConnection(LinkRole.HUB)
    hub.receive(worker.send(Connect(1, "t")))
    expect(LocalError, "worker_gone", hub.send, ErrorMessage("worker_gone", "x", HUB_ID))


def test_client_greeting_carries_the_hub_id_through_the_state_machines() -> None:
    client, hub = LinkConnection(LinkRole.CLIENT), LinkConnection(LinkRole.HUB)
    hub.receive(client.send(ClientHello(1, "api")))
    greeting = ClientGreeting("u1", "alice", HUB_ID)
    assert client.receive(hub.send(greeting)) == [greeting]
    assert client.state is LinkState.CLIENT_ACTIVE
