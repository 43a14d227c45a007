"""Worker capabilities: the names (service groups of methods), the optional ``connect``
fields that carry them with ``os`` and ``arch`` (strict and bounded both ways), and the
worker filter of ``workers.list``."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import pytest
from support.helpers import expect

from leapcore.errors import LinkProtocolError, LocalError, RecordError
from leapcore.proto.capabilities import (
    WorkerFilter,
    capabilities_of,
    capability_of,
    capability_problem,
    parse_label,
)
from leapcore.proto.limits import MAX_CAPABILITIES, MAX_CAPABILITY, MAX_PLATFORM
from leapcore.proto.link_codec import Connect, LinkDecoder, encode

BUILTIN = [
    "info",
    "tcp",
    "exec",
    "exec.stderr",
    "exec.wait",
    "exec.signal",
    "exec.resize",
    "pty.spawn",
    "pty.attach",
    "files.get",
    "files.put",
    "workspace.open",
    "workspace.list",
]


def test_a_capability_is_the_group_before_the_first_dot() -> None:
    assert capability_of("exec.wait") == "exec"
    assert capability_of("pty.spawn") == "pty"
    assert capability_of("files.get") == "files"
    assert capability_of("workspace.open.now") == "workspace"
    assert capability_of("tcp") == "tcp"


def test_capabilities_are_sorted_unique_and_leave_out_ping() -> None:
    assert capabilities_of([*BUILTIN, "ping", "echo", "gpu.run", "gpu.stats"]) == [
        "echo",
        "exec",
        "files",
        "gpu",
        "info",
        "pty",
        "tcp",
        "workspace",
    ]
    assert capabilities_of([]) == []
    assert capabilities_of(["ping"]) == []


def test_methods_whose_group_is_no_valid_name_are_left_out_and_the_list_is_bounded() -> None:
    assert capabilities_of(["a b.c", "ok.x", "é", "x" * (MAX_CAPABILITY + 1), ".hidden"]) == ["ok"]
    many = [f"s{i:03d}.m" for i in range(MAX_CAPABILITIES + 10)]
    got = capabilities_of(many)
    assert len(got) == MAX_CAPABILITIES and got == sorted(got) and got[0] == "s000"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("exec", True),
        ("my_svc-2.x", True),
        ("x" * MAX_CAPABILITY, True),
        ("", False),
        ("x" * (MAX_CAPABILITY + 1), False),
        ("a b", False),
        ("a/b", False),
        ("naïve", False),
        (5, False),
    ],
)
def test_capability_names(name: object, ok: bool) -> None:
    assert (capability_problem(name) is None) is ok


def test_parse_label() -> None:
    assert parse_label("env=prod") == ("env", "prod")
    assert parse_label("k=") == ("k", "")
    assert parse_label("url=a=b") == ("url", "a=b")
    expect(LocalError, "a label is KEY=VALUE, got 'env'", parse_label, "env")
    expect(LocalError, "a label is KEY=VALUE, got '=v'", parse_label, "=v")


# -- the connect record -------------------------------------------------------------------


def _frame(record: dict[str, Any]) -> bytes:
    body = json.dumps(record).encode()
    return struct.pack(">I", len(body) + 1) + b"\x01" + body


def _connect(**fields: Any) -> bytes:
    return _frame({"type": "connect", "protocol_version": 1, "auth_token": "t", **fields})


def test_connect_round_trips_its_capabilities_os_and_arch() -> None:
    message = Connect(1, "t", "box", {"env": "prod"}, ["exec", "pty"], os="linux", arch="x86_64")
    assert LinkDecoder().feed(encode(message)) == [message]
    record = json.loads(encode(message)[5:])
    assert (record["capabilities"], record["os"], record["arch"]) == (
        ["exec", "pty"],
        "linux",
        "x86_64",
    )
    edge = Connect(1, "t", capabilities=["x" * MAX_CAPABILITY] * MAX_CAPABILITIES, os="o" * 64)
    assert LinkDecoder().feed(encode(edge)) == [edge]


def test_an_old_workers_connect_has_none_of_them() -> None:
    [message] = LinkDecoder().feed(_connect(name="box"))
    assert isinstance(message, Connect)
    assert (message.capabilities, message.os, message.arch) == (None, None, None)
    assert b"capabilities" not in encode(Connect(1, "t", "box"))  # absent, not null


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"capabilities": "exec"}, "field 'capabilities': expected list, got str"),
        ({"capabilities": ["exec", 5]}, "expected str, got int"),
        ({"capabilities": {"exec": True}}, "expected list, got dict"),
        ({"os": 7}, "field 'os': expected str, got int"),
        ({"arch": ["x86_64"]}, "field 'arch': expected str"),
        ({"platform": "linux"}, "unknown field(s) 'platform'"),
        (
            {"capabilities": [f"c{i}" for i in range(MAX_CAPABILITIES + 1)]},
            f"connect.capabilities has {MAX_CAPABILITIES + 1} capabilities; the limit is 64",
        ),
        ({"capabilities": ["x" * (MAX_CAPABILITY + 1)]}, "connect.capabilities has a bad name"),
        ({"capabilities": [""]}, "connect.capabilities has a bad name"),
        ({"capabilities": ["a b"]}, "connect.capabilities has a bad name"),
        ({"os": "l" * (MAX_PLATFORM + 1)}, "connect.os is 65 characters long; the limit is 64"),
        ({"arch": "x" * (MAX_PLATFORM + 1)}, "connect.arch is 65 characters long"),
        ({"os": "linux\x1b[2J"}, "connect.os contains control or non-printable characters"),
    ],
)
def test_bad_fields_are_a_protocol_error(fields: dict[str, Any], words: str) -> None:
    exc = expect(LinkProtocolError, re.escape(words), LinkDecoder().feed, _connect(**fields))
    assert exc.code == "link_protocol_error"


def test_the_encoder_refuses_what_the_decoder_would() -> None:
    too_many = [f"c{i}" for i in range(MAX_CAPABILITIES + 1)]
    expect(
        LocalError, "connect.capabilities has 65", encode, Connect(1, "t", capabilities=too_many)
    )
    expect(
        LocalError,
        "connect.capabilities has a bad name",
        encode,
        Connect(1, "t", capabilities=["a b"]),
    )
    expect(LocalError, "connect.arch is 65", encode, Connect(1, "t", arch="x" * 65))


# -- the worker filter --------------------------------------------------------------------


def test_a_filter_keeps_workers_matching_every_part() -> None:
    labels, caps = {"env": "prod", "zone": "a"}, ["exec", "pty"]
    assert WorkerFilter().matches(labels, caps, False)
    assert WorkerFilter.of(labels={"env": "prod"}).matches(labels, caps, False)
    assert not WorkerFilter.of(labels={"env": "dev"}).matches(labels, caps, True)
    assert not WorkerFilter.of(labels={"env": "prod", "gpu": "1"}).matches(labels, caps, True)
    assert WorkerFilter.of(capability="pty").matches(labels, caps, True)
    assert WorkerFilter.of(capability=["pty", "exec"]).matches(labels, caps, True)
    assert not WorkerFilter.of(capability=["pty", "files"]).matches(labels, caps, True)
    assert WorkerFilter.of(online=True).matches(labels, caps, True)
    assert not WorkerFilter.of(online=True).matches(labels, caps, False)
    assert WorkerFilter.of(online=False).matches(labels, caps, False)
    assert not WorkerFilter.of(capability="exec").matches(labels, [], True)  # an old worker


def test_filter_params_round_trip_and_only_name_what_filters() -> None:
    assert WorkerFilter.of().params() == {}
    assert WorkerFilter.of(online=None, labels={}, capability=[]).params() == {}
    wanted = WorkerFilter.of(labels={"env": "prod"}, capability=("pty", "exec"), online=True)
    params = wanted.params()
    assert params == {"labels": {"env": "prod"}, "capabilities": ["exec", "pty"], "online": True}
    assert WorkerFilter.from_params(params) == wanted
    assert WorkerFilter.from_params({}) == WorkerFilter()
    expect(LocalError, "capability 'a b' is not", WorkerFilter.of, capability="a b")


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"label": {"a": "b"}}, "unknown field(s) 'label'"),
        ({"labels": ["a=b"]}, "field 'labels': expected dict"),
        ({"labels": {"a": 1}}, "expected str, got int"),
        ({"capabilities": "pty"}, "field 'capabilities': expected list, got str"),
        ({"capabilities": ["pty", None]}, "expected str"),
        ({"capabilities": ["a b"]}, "workers.list capabilities: 'a b' is not"),
        ({"online": 1}, "field 'online': expected bool, got int"),
    ],
)
def test_filter_params_are_decoded_strictly(params: dict[str, Any], words: str) -> None:
    expect(RecordError, re.escape(words), WorkerFilter.from_params, params)
