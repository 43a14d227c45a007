"""Tunnel destination rules and the ``tcp`` payload (leapcore.proto.tunnel_policy), and the
worker settings that carry the rules (tunnel_allow / tunnel_deny)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leapcore.errors import ConfigError, InvalidMessage
from leapcore.proto.tunnel_policy import (
    ALLOW_ALL,
    TunnelPolicy,
    decode_dial_request,
    encode_dial_request,
    parse_rule,
)
from leapcore.store.config import worker_settings

# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "network", "low", "high"),
    [
        ("example.com", "example.com", None, 1, 65535),
        ("Example.COM.:22", "example.com", None, 22, 22),
        ("*.corp.example:8000-8999", "*.corp.example", None, 8000, 8999),
        ("*", "*", None, 1, 65535),
        ("*:443", "*", None, 443, 443),
        ("10.0.0.0/8", None, "10.0.0.0/8", 1, 65535),
        ("10.1.2.3:*", None, "10.1.2.3/32", 1, 65535),
        ("[::1]:22", None, "::1/128", 22, 22),
        ("[fd00::/8]", None, "fd00::/8", 1, 65535),
        ("  192.168.0.0/16:5432  ", None, "192.168.0.0/16", 5432, 5432),
    ],
)
def test_rules_parse(text: str, name: str | None, network: str | None, low: int, high: int) -> None:
    rule = parse_rule(text)
    assert rule.name == name
    assert (str(rule.network) if rule.network else None) == network
    assert (rule.low, rule.high) == (low, high)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "::1",
        "::1:22",
        "[::1",
        "[::1]22",
        "[10.0.0.1]:22",
        "host:0",
        "host:65536",
        "host:22-21",
        "host:abc",
        "host:",
        "bad host",
        "under_score..com",
        "10.0.0.300/8",
        "10.0.0.0/33",
        "*.",
        "a.*.com",
    ],
)
def test_bad_rules_are_config_errors_quoting_the_rule(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rule(text)
    if text.strip():
        assert repr(text) in str(info.value)


def test_policy_parse_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^tunnel_deny: tunnel rule 'x:y'"):
        TunnelPolicy.parse(allow=["*"], deny=["ok.example", "x:y"])
    with pytest.raises(ConfigError, match="must be a list"):
        TunnelPolicy.parse(allow="example.com")


# -- matching ---------------------------------------------------------------------------------


def test_default_allows_everything() -> None:
    assert ALLOW_ALL.precheck("anything.example", 1) is None
    assert ALLOW_ALL.filter("x", 80, ["10.0.0.1", "::1"]) == (["10.0.0.1", "::1"], None)


def test_name_rules() -> None:
    policy = TunnelPolicy.parse(allow=["db.example.com:5432", "*.corp.example"])
    assert policy.precheck("DB.Example.com.", 5432) is None
    assert policy.precheck("db.example.com", 5433) is not None
    assert policy.precheck("a.b.corp.example", 1) is None
    refusal = policy.precheck("corp.example", 1)  # the apex is not a subdomain
    assert refusal is not None
    assert refusal.message == "tunnel_allow (no rule matches): corp.example:1"
    assert policy.precheck("evilcorp.example", 1) is not None


def test_address_rules_check_literals_and_resolved_addresses() -> None:
    policy = TunnelPolicy.parse(allow=["10.0.0.0/8:22"], deny=["10.9.0.0/16"])
    # a name cannot be judged before it is resolved (an address rule covers the port)
    assert policy.precheck("git.example", 22) is None
    assert policy.precheck("git.example", 80) is not None  # no rule covers port 80
    allowed, refusal = policy.filter("git.example", 22, ["10.9.1.1", "10.1.1.1", "192.0.2.1"])
    assert (allowed, refusal) == (["10.1.1.1"], None)
    allowed, refusal = policy.filter("git.example", 22, ["10.9.1.1"])
    assert allowed == []
    assert refusal is not None
    assert refusal.message == "tunnel_deny 10.9.0.0/16: git.example:22"
    # a literal is its own address, judged at once
    denied = policy.precheck("10.9.3.4", 22)
    assert denied is not None and denied.rule == "tunnel_deny 10.9.0.0/16"
    assert policy.precheck("::ffff:10.1.2.3", 22) is None  # IPv4-mapped counts as IPv4
    assert policy.precheck("::ffff:10.9.2.3", 22) is not None  # for deny rules too
    # ... and as itself: an IPv6 rule that contains the mapped address covers it
    everything6 = TunnelPolicy.parse(deny=["[::/0]:1-1"])
    assert everything6.precheck("::ffff:0:0", 1) is not None
    assert everything6.precheck("::ffff:0:0", 2) is None
    six = TunnelPolicy.parse(deny=["[::1]:22"])
    assert six.precheck("::1", 22) is not None
    assert six.precheck("::1", 23) is None
    assert six.check("localhost", 22, "::1") is not None


def test_name_deny_applies_to_every_address() -> None:
    policy = TunnelPolicy.parse(deny=["*.internal"])
    assert policy.precheck("db.internal", 5432) is not None
    assert policy.filter("db.internal", 5432, ["192.0.2.1"])[0] == []


# -- properties -------------------------------------------------------------------------------

ports = st.integers(1, 65535)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
names = st.lists(label, min_size=1, max_size=4).map(".".join)


@st.composite
def address_rules(draw: st.DrawFn) -> tuple[str, str, int, int]:
    """(rule text, network, low port, high port)."""
    if draw(st.booleans()):
        net = ipaddress.ip_network(f"{draw(ipv4)}/{draw(st.integers(0, 32))}", strict=False)
        host = str(net)
    else:
        net = ipaddress.ip_network(f"{draw(ipv6)}/{draw(st.integers(0, 128))}", strict=False)
        host = f"[{net}]"
    low = draw(ports)
    high = draw(st.integers(low, 65535))
    return f"{host}:{low}-{high}", str(net), low, high


@given(address_rules(), st.one_of(ipv4, ipv6), ports)
def test_an_address_rule_matches_what_it_says(
    spec: tuple[str, str, int, int], address: str, port: int
) -> None:
    text, net, low, high = spec
    rule = parse_rule(text)
    network = ipaddress.ip_network(net)
    ip = ipaddress.ip_address(address)
    # An IPv4-mapped IPv6 address is judged as itself and as the IPv4 address it maps.
    forms = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        forms.append(ip.ipv4_mapped)
    inside = any(f.version == network.version and f in network for f in forms)
    expected = inside and low <= port <= high
    assert rule.matches("some.name", port, address) is expected
    assert rule.matches(address, port, None) is expected
    policy = TunnelPolicy.parse(allow=[text])
    assert (policy.check("some.name", port, address) is None) is expected


@given(names, st.booleans(), ports, names, ports)
def test_a_name_rule_matches_what_it_says(
    name: str, wildcard: bool, port: int, asked: str, asked_port: int
) -> None:
    text = f"*.{name}:{port}" if wildcard else f"{name}:{port}"
    rule = parse_rule(text)
    for host in (asked, f"x.{name}", name, name.upper()):
        expected = asked_port == port and (
            host.lower().endswith("." + name) if wildcard else host.lower() == name
        )
        assert rule.matches(host, asked_port, "192.0.2.1") is expected


@given(
    st.lists(st.one_of(address_rules().map(lambda s: s[0]), names), max_size=4),
    st.lists(st.one_of(address_rules().map(lambda s: s[0]), names), min_size=1, max_size=4),
    st.one_of(names, ipv4),
    ports,
    st.lists(st.one_of(ipv4, ipv6), max_size=4),
)
def test_deny_wins(
    allow: list[str], deny: list[str], host: str, port: int, addresses: list[str]
) -> None:
    policy = TunnelPolicy.parse(allow=allow, deny=deny)
    allow_all_too = TunnelPolicy.parse(allow=[*allow, "*"], deny=deny)
    for p in (policy, allow_all_too):
        for address in addresses:
            denied = any(parse_rule(r).matches(host, port, address) for r in deny)
            if denied:
                assert p.check(host, port, address) is not None
        if any(parse_rule(r).matches(host, port, None) for r in deny):
            assert p.precheck(host, port) is not None
        allowed, refusal = p.filter(host, port, addresses)
        assert all(p.check(host, port, a) is None for a in allowed)
        assert (refusal is None) == (bool(allowed) or not addresses)
    # with "*" allowed, only a deny rule refuses
    for address in addresses:
        denied = any(parse_rule(r).matches(host, port, address) for r in deny)
        assert (allow_all_too.check(host, port, address) is not None) is denied


# -- the tcp payload --------------------------------------------------------------------------


@given(st.one_of(names, ipv4, ipv6), ports)
def test_dial_request_round_trip(host: str, port: int) -> None:
    request = decode_dial_request(encode_dial_request(host, port))
    assert (request.host, request.port) == (host, port)


def test_dial_request_brackets_and_target() -> None:
    request = decode_dial_request(b'{"host": "[::1]", "port": 22}')
    assert request.host == "::1"
    assert request.target == "[::1]:22"


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "JSON object"),
        (b"\xff", "JSON object"),
        (b"null", "got NoneType"),
        (b'{"host": "x"}', "missing field(s): port"),
        (b'{"port": 1}', "missing field(s): host"),
        (b'{"host": "x", "port": 1, "extra": 0}', "unknown field(s): extra"),
        (b'{"host": 1, "port": 1}', "host must be a string"),
        (b'{"host": "x", "port": 1.0}', "port must be an integer"),
        (b'{"host": "x", "port": false}', "port must be an integer"),
        (b'{"host": "", "port": 1}', "host is required"),
        (b'{"host": "x", "port": 0}', "port must be 1-65535"),
        (b'{"host": "x", "port": 65536}', "port must be 1-65535"),
        (b'{"host": "' + b"a" * 256 + b'", "port": 1}', "at most 255"),
        (b'{"host": "a\\nb", "port": 1}', "not a host name"),
    ],
)
def test_dial_request_is_strict(payload: bytes, words: str) -> None:
    with pytest.raises(InvalidMessage, match=words.replace("(", r"\(").replace(")", r"\)")):
        decode_dial_request(payload)


# -- worker settings --------------------------------------------------------------------------


def test_worker_settings_carry_the_rules(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('tunnel_allow = ["*.corp.example:22", "10.0.0.0/8"]\n')
    settings, _ = worker_settings(
        flags={},
        env={"LEAPCORE_WORKER_TUNNEL_DENY": "10.9.0.0/16, [::1]:22 ,"},
        home=tmp_path,
        config_path=config,
    )
    assert settings["tunnel_allow"] == ["*.corp.example:22", "10.0.0.0/8"]
    assert settings["tunnel_deny"] == ["10.9.0.0/16", "[::1]:22"]
    policy = TunnelPolicy.parse(settings["tunnel_allow"], settings["tunnel_deny"])
    assert len(policy.allow) == 2 and len(policy.deny) == 2
    defaults, _ = worker_settings(flags={}, env={}, home=tmp_path / "none", config_path=None)
    assert (defaults["tunnel_allow"], defaults["tunnel_deny"]) == ([], [])


def test_a_bad_rule_in_the_settings_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('tunnel_deny = ["ok.example", "bad host:22"]\n')
    with pytest.raises(ConfigError) as info:
        worker_settings(flags={}, env={}, home=tmp_path, config_path=config)
    assert str(config) in str(info.value)
    assert "tunnel_deny" in str(info.value) and "'bad host:22'" in str(info.value)
    with pytest.raises(ConfigError, match=r"LEAPCORE_WORKER_TUNNEL_ALLOW.*'x:0'"):
        worker_settings(
            flags={}, env={"LEAPCORE_WORKER_TUNNEL_ALLOW": "x:0"}, home=tmp_path, config_path=None
        )
