"""The tunnel bind-address truth table of spec §6.1, and the tunnel specs' validation."""

from __future__ import annotations

import pytest

from leapcore.errors import ConfigError
from leapcore.proto.bindaddr import (
    ForwardSpec,
    check_bind_address,
    parse_forward_spec,
    parse_socks_spec,
    validate_tunnel,
)

NOT_IP = "bindAddr must be an IP address, got {}"
NOT_LOOPBACK = (
    "bindAddr must be a loopback address (the tunnel listener is unauthenticated), got {}"
)

ACCEPTED = [
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.0", "127.0.0.0"),
    ("127.1.2.3", "127.1.2.3"),
    ("127.255.255.255", "127.255.255.255"),
    ("::1", "::1"),
    ("0:0:0:0:0:0:0:1", "::1"),
    ("0::1", "::1"),
    ("::0:1", "::1"),
    ("::0001", "::1"),
    ("0000:0000:0000:0000:0000:0000:0000:0001", "::1"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("::ffff:127.9.8.7", "127.9.8.7"),
    ("::ffff:7f00:1", "127.0.0.1"),
    ("::FFFF:7F00:0001", "127.0.0.1"),
    ("[::1]", "::1"),
    ("[::ffff:127.0.0.1]", "127.0.0.1"),
    (" 127.0.0.1 ", "127.0.0.1"),
    ("\t::1\n", "::1"),
]

REJECTED_NOT_LOOPBACK = [
    "0.0.0.0",
    "::",
    "::2",
    "::127.0.0.1",
    "fe80::1",
    "10.0.0.1",
    "128.0.0.1",
    "126.255.255.255",
    "::ffff:10.0.0.1",
    "::ffff:0.0.0.0",
    "[::]",
]

REJECTED_NOT_IP = [
    "::1%lo",
    "fe80::1%eth0",
    "[::1%1]",
    "127.0.0.01",
    "0177.0.0.1",
    "127.1",
    "2130706433",
    "0x7f.0.0.1",
    "127.0.0.1/8",
    "::1/128",
    "127.0.0.1:80",
    "[::1]:80",
    "localhost",
    "LOCALHOST",
    "[[::1]]",
    "",
    "   ",
    "[]",
    "127.0.0.1.",
    "1:2:3:4:5:6:7:8:9",
]


@pytest.mark.parametrize(("text", "bound"), ACCEPTED)
def test_loopback_literals_are_accepted(text: str, bound: str) -> None:
    assert check_bind_address(text) == bound


@pytest.mark.parametrize("text", REJECTED_NOT_LOOPBACK)
def test_other_addresses_are_refused_as_not_loopback(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_bind_address(text)
    assert str(caught.value) == NOT_LOOPBACK.format(f'"{text}"')


@pytest.mark.parametrize("text", REJECTED_NOT_IP)
def test_non_literals_are_refused_as_not_ip(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_bind_address(text)
    quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert str(caught.value) == NOT_IP.format(quoted.replace("\t", "\\t").replace("\n", "\\n"))


def test_the_message_quotes_like_go() -> None:
    with pytest.raises(ConfigError, match=r'got "a\\"b"$'):
        check_bind_address('a"b')


def test_allow_remote_lifts_only_the_loopback_rule() -> None:
    assert check_bind_address("0.0.0.0", allow_remote=True) == "0.0.0.0"
    assert check_bind_address("[::]", allow_remote=True) == "::"
    assert check_bind_address("::ffff:10.0.0.1", allow_remote=True) == "10.0.0.1"
    with pytest.raises(ConfigError, match="must be an IP address"):
        check_bind_address("localhost", allow_remote=True)


# -- whole configurations, in LeapMux's order -------------------------------------------------


def test_tunnel_defaults() -> None:
    assert validate_tunnel(
        worker_id="w", type="port_forward", target_addr="127.0.0.1", target_port=5432
    ) == ForwardSpec("127.0.0.1", 5432, "127.0.0.1", 5432)
    assert validate_tunnel(worker_id="w", type="socks5") == ForwardSpec("127.0.0.1", 1080)
    assert validate_tunnel(worker_id="w", type="socks5", bind_port=0).bind_port == 0
    assert validate_tunnel(worker_id="w", type="socks5", bind_addr="[::1]").bind_host == "::1"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"worker_id": "", "type": "socks5"}, "workerId is required"),
        ({"worker_id": "w", "type": "vpn"}, "type must be 'port_forward' or 'socks5'"),
        ({"worker_id": "w", "type": "port_forward"}, "targetAddr is required for port_forward"),
        (
            {"worker_id": "w", "type": "port_forward", "target_addr": ""},
            "targetAddr is required for port_forward",
        ),
        (
            {"worker_id": "w", "type": "port_forward", "target_addr": "db"},
            "targetPort must be 1-65535",
        ),
        (
            {"worker_id": "w", "type": "port_forward", "target_addr": "db", "target_port": 0},
            "targetPort must be 1-65535",
        ),
        (
            {"worker_id": "w", "type": "port_forward", "target_addr": "db", "target_port": 65536},
            "targetPort must be 1-65535",
        ),
        (
            {"worker_id": "w", "type": "socks5", "bind_port": 65536},
            "bindPort must be 1-65535, or 0 for a free port",
        ),
        (
            {"worker_id": "w", "type": "socks5", "bind_port": -1},
            "bindPort must be 1-65535, or 0 for a free port",
        ),
        (
            {"worker_id": "w", "type": "socks5", "bind_addr": "localhost"},
            'bindAddr must be an IP address, got "localhost"',
        ),
        (
            {"worker_id": "w", "type": "socks5", "bind_addr": "0.0.0.0"},
            "bindAddr must be a loopback address (the tunnel listener is unauthenticated), "
            'got "0.0.0.0"',
        ),
    ],
)
def test_tunnel_validation_messages(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_tunnel(**fields)  # type: ignore[arg-type]
    assert str(caught.value) == message


# -- command-line specs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("8080:db.internal:5432", ForwardSpec("127.0.0.1", 8080, "db.internal", 5432)),
        ("0:127.0.0.1:80", ForwardSpec("127.0.0.1", 0, "127.0.0.1", 80)),
        ("127.0.0.2:8080:db:5432", ForwardSpec("127.0.0.2", 8080, "db", 5432)),
        ("[::1]:8080:[2001:db8::5]:22", ForwardSpec("::1", 8080, "2001:db8::5", 22)),
        ("[::1]:8080:[::1]:22", ForwardSpec("::1", 8080, "::1", 22)),
        ("8080:[fe80::1%eth0]:22", ForwardSpec("127.0.0.1", 8080, "fe80::1%eth0", 22)),
    ],
)
def test_forward_specs(text: str, spec: ForwardSpec) -> None:
    assert parse_forward_spec(text) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8080:db", "a forward is [BIND_ADDR:]BIND_PORT:HOST:PORT"),
        ("a:b:c:d:e", "a forward is"),
        ("::1:8080:db:22", "a forward is"),
        ("8080::5432", "targetAddr is required for port_forward"),
        ("8080:db:0", "targetPort must be 1-65535"),
        ("8080:db:x", "targetPort must be 1-65535"),
        ("8080:db:99999", "targetPort must be 1-65535"),
        ("70000:db:22", "bindPort must be 1-65535, or 0 for a free port"),
        ("-1:db:22", "bindPort must be 1-65535"),
        ("0.0.0.0:8080:db:22", "bindAddr must be a loopback address"),
        ("localhost:8080:db:22", "bindAddr must be an IP address"),
        ("[::1:8080:db:22", "unbalanced brackets"),
        ("::1]:8080:db:22", "unbalanced brackets"),
    ],
)
def test_bad_forward_specs(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_forward_spec(text)
    assert str(caught.value).startswith(message)


def test_socks_specs() -> None:
    assert parse_socks_spec(None) == ForwardSpec("127.0.0.1", 1080)
    assert parse_socks_spec("1081") == ForwardSpec("127.0.0.1", 1081)
    assert parse_socks_spec("0") == ForwardSpec("127.0.0.1", 0)
    assert parse_socks_spec("[::1]:1080") == ForwardSpec("::1", 1080)
    assert parse_socks_spec("127.0.0.5:9") == ForwardSpec("127.0.0.5", 9)
    assert parse_socks_spec("0.0.0.0:1080", allow_remote=True) == ForwardSpec("0.0.0.0", 1080)
    for bad, message in [
        ("0.0.0.0:1080", "bindAddr must be a loopback address"),
        ("::1:1080", "a SOCKS listener is"),
        ("x", "bindPort must be"),
        ("", "bindPort must be"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_socks_spec(bad)
        assert str(caught.value).startswith(message)
