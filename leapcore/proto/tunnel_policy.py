"""Tunnels' wire payload and destination policy (sans-IO: no sockets, no DNS, no clock).

**The ``tcp`` request.** A client opens a byte stream to the worker's ``tcp`` method with
the JSON object ``{"host": str, "port": int}`` (:func:`encode_dial_request`,
:func:`decode_dial_request`: exactly those two fields; ``host`` 1..255 characters, an
IPv6 literal with or without one pair of brackets; ``port`` 1..65535). The worker resolves
the name, dials, and accepts the stream only once the TCP connection is up; otherwise it
refuses the open with one of :data:`DIAL_FAILURES` as the error code.

**Destination rules.** A rule is ``HOST_OR_CIDR[:PORTS]``:

* ``HOST_OR_CIDR`` is ``*`` (any destination), a host name (``db.example.com``, matched
  exactly and case-insensitively, a trailing dot ignored), ``*.example.com`` (any
  subdomain of example.com, not example.com itself), an IP address (``10.1.2.3``) or a
  network (``10.0.0.0/8``); IPv6 goes in brackets (``[::1]``, ``[fd00::/8]:22``);
* ``PORTS`` is ``N``, ``N-M`` or ``*``; without it, every port.

A name rule matches the host the client asked for; an address rule matches the address
the client asked for (an IP literal) and every address the name resolved to, each checked
before it is dialled. The worker's ``tunnel_deny`` rules win over its ``tunnel_allow``
rules; an empty ``tunnel_allow`` allows every destination (:class:`TunnelPolicy`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from ..errors import ConfigError, InvalidMessage

__all__ = [
    "ALLOW_ALL",
    "DENIED_BY_POLICY",
    "DIAL_FAILURES",
    "MAX_HOST_LENGTH",
    "TCP_METHOD",
    "DialRequest",
    "Refusal",
    "Rule",
    "TunnelPolicy",
    "decode_dial_request",
    "encode_dial_request",
    "parse_rule",
]

#: The worker's byte-stream method that dials a TCP connection.
TCP_METHOD: Final = "tcp"
#: Longest host name (or address) a ``tcp`` request may carry.
MAX_HOST_LENGTH: Final = 255
#: The reason a destination rule refused a dial.
DENIED_BY_POLICY: Final = "denied_by_policy"
#: Why a dial failed (the error code of a refused ``tcp`` open) -> what it means.
DIAL_FAILURES: Final[dict[str, str]] = {
    "connection_refused": "connection refused",
    "network_unreachable": "network unreachable",
    "host_unreachable": "host unreachable",
    "timed_out": "timed out",
    "name_not_found": "name not found",
    DENIED_BY_POLICY: "denied by policy",
}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_PORTS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")


# -- the request ------------------------------------------------------------------------------


@attrs.frozen
class DialRequest:
    """A ``tcp`` open's destination (``host`` without brackets)."""

    host: str
    port: int

    @property
    def target(self) -> str:
        """``host:port``, an IPv6 host in brackets."""
        return join_host_port(self.host, self.port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_request(host: object, port: object) -> DialRequest:
    if type(host) is not str:
        raise InvalidMessage(f"host must be a string, got {type(host).__name__}")
    if type(port) is not int:
        raise InvalidMessage(f"port must be an integer, got {type(port).__name__}")
    if not 1 <= port <= 65535:
        raise InvalidMessage(f"port must be 1-65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise InvalidMessage("host is required")
    if len(host) > MAX_HOST_LENGTH:
        raise InvalidMessage(f"host must be at most {MAX_HOST_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ch in "[]/" for ch in host):
        raise InvalidMessage(f"host {host!r} is not a host name or IP address")
    return DialRequest(host, port)


def encode_dial_request(host: str, port: int) -> bytes:
    """The ``tcp`` payload for ``host:port`` (:class:`InvalidMessage` if either is bad)."""
    request = _check_request(host, port)
    return json.dumps({"host": request.host, "port": request.port}).encode()


def decode_dial_request(payload: bytes) -> DialRequest:
    """The peer's ``tcp`` payload, strictly: a JSON object with exactly ``host`` and
    ``port``; anything else is :class:`InvalidMessage` saying what is wrong."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise InvalidMessage(
            'the payload must be a JSON object {"host": ..., "port": ...}'
        ) from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"the payload must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"host", "port"})
    if unknown:
        raise InvalidMessage(f"unknown field(s): {', '.join(unknown)}")
    missing = [name for name in ("host", "port") if name not in data]
    if missing:
        raise InvalidMessage(f"missing field(s): {', '.join(missing)}")
    return _check_request(data["host"], data["port"])


# -- rules ------------------------------------------------------------------------------------


def _ip(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _normal_name(host: str) -> str:
    return host.lower().rstrip(".")


@attrs.frozen
class Rule:
    """One destination rule (see the module docstring); ``text`` is how it was written."""

    text: str
    #: A host name (lower case), ``*.suffix`` or ``*``; None for an address rule.
    name: str | None
    network: Network | None
    low: int
    high: int

    def matches_port(self, port: int) -> bool:
        return self.low <= port <= self.high

    def matches_name(self, host: str, port: int) -> bool:
        """Whether the rule matches by the host asked for (any-host and name rules)."""
        if self.name is None or not self.matches_port(port):
            return False
        if self.name == "*":
            return True
        host = _normal_name(host)
        if self.name.startswith("*."):
            return host.endswith(self.name[1:]) and len(host) > len(self.name) - 1
        return host == self.name

    def matches_address(self, address: str, port: int) -> bool:
        """Whether an address rule matches ``address`` (an IP literal)."""
        if self.network is None or not self.matches_port(port):
            return False
        ip = _ip(address.split("%", 1)[0])
        if ip is None:
            return False
        # An IPv4-mapped IPv6 address is the IPv4 address it maps (an IPv4 rule covers it)
        # and is still itself (so is an IPv6 rule that contains it, e.g. ``::/0``).
        forms = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)
        return any(f.version == self.network.version and f in self.network for f in forms)

    def matches(self, host: str, port: int, address: str | None) -> bool:
        """Whether the rule matches a dial of ``host:port`` to ``address`` (``None``: not
        resolved yet; a literal host is its own address)."""
        if self.matches_name(host, port):
            return True
        if self.matches_address(host, port):
            return True
        return address is not None and self.matches_address(address, port)


def _parse_ports(text: str, rule: str) -> tuple[int, int]:
    if text == "*":
        return 1, 65535
    match = _PORTS.fullmatch(text)
    if match is None:
        raise ConfigError(f"tunnel rule {rule!r}: ports must be N, N-M or *, got {text!r}")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if not 1 <= low <= high <= 65535:
        raise ConfigError(f"tunnel rule {rule!r}: ports must be within 1-65535, low to high")
    return low, high


def _parse_network(text: str, rule: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(
            f"tunnel rule {rule!r}: {text!r} is not an IP address or network"
        ) from None


def _parse_name(text: str, rule: str) -> str:
    name = _normal_name(text)
    labels = name[2:].split(".") if name.startswith("*.") else name.split(".")
    if name == "*" and text == "*":
        return name
    if (
        name == "*"
        or not name
        or len(name) > MAX_HOST_LENGTH
        or not all(_LABEL.fullmatch(x) for x in labels)
    ):
        raise ConfigError(
            f"tunnel rule {rule!r}: {text!r} is not a host name, *.domain, *, an IP address "
            "or a network"
        )
    return name


def parse_rule(text: str) -> Rule:
    """``HOST_OR_CIDR[:PORTS]`` as a :class:`Rule`; :class:`ConfigError` quoting the rule."""
    if type(text) is not str:
        raise ConfigError(f"tunnel rule must be a string, got {type(text).__name__}")
    rule = text.strip()
    if not rule:
        raise ConfigError("tunnel rule is empty")
    ports = "*"
    if rule.startswith("["):
        end = rule.find("]")
        if end < 0:
            raise ConfigError(f"tunnel rule {text!r}: missing ']'")
        host, rest = rule[1:end], rule[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"tunnel rule {text!r}: expected ':PORTS' after ']'")
            ports = rest[1:]
        network = _parse_network(host, text)
        if network.version != 6:
            raise ConfigError(f"tunnel rule {text!r}: brackets are for IPv6 only")
        low, high = _parse_ports(ports, text)
        return Rule(rule, None, network, low, high)
    if rule.count(":") > 1:
        raise ConfigError(f"tunnel rule {text!r}: write IPv6 in brackets, e.g. [::1]:22")
    host, sep, port_text = rule.partition(":")
    if sep:
        ports = port_text
    low, high = _parse_ports(ports, text)
    if host and (host[0].isdigit() or "/" in host) and (_ip(host.split("/")[0]) is not None):
        network = _parse_network(host, text)
        return Rule(rule, None, network, low, high)
    if "/" in host:
        raise ConfigError(f"tunnel rule {text!r}: {host!r} is not an IP network")
    return Rule(rule, _parse_name(host, text), None, low, high)


# -- the policy -------------------------------------------------------------------------------


@attrs.frozen
class Refusal:
    """Why a dial is refused: ``message`` is ``<setting> <rule>: <host:port>``."""

    rule: str
    message: str


@attrs.frozen
class TunnelPolicy:
    """The worker's destination rules: deny wins; no allow rule allows everything."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    #: The settings' names, as refusals and errors show them.
    names: tuple[str, str] = ("tunnel_allow", "tunnel_deny")

    @classmethod
    def parse(
        cls,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        *,
        names: tuple[str, str] = ("tunnel_allow", "tunnel_deny"),
    ) -> TunnelPolicy:
        """From the ``tunnel_allow`` and ``tunnel_deny`` settings (ConfigError naming the
        setting and the rule); ``names``: the settings' names where they came from
        elsewhere (the policy file's ``tunnel.allow`` and ``tunnel.deny``)."""
        return cls(_parse_list(allow, names[0]), _parse_list(deny, names[1]), names)

    def _refusal(self, rule: str, host: str, port: int) -> Refusal:
        return Refusal(rule, f"{rule}: {join_host_port(host, port)}")

    def precheck(self, host: str, port: int) -> Refusal | None:
        """What can be refused before any name is resolved: a deny rule matching the host
        asked for (its name, or the literal address), or an allow list no rule of which
        can match (no name rule matches and no address rule covers the port)."""
        for rule in self.deny:
            if rule.matches(host, port, None):
                return self._refusal(f"{self.names[1]} {rule.text}", host, port)
        if not self.allow:
            return None
        if any(r.matches(host, port, None) for r in self.allow):
            return None
        if _ip(host) is None and any(
            r.network is not None and r.matches_port(port) for r in self.allow
        ):
            return None  # an address rule may match what the name resolves to
        return self._refusal(f"{self.names[0]} (no rule matches)", host, port)

    def check(self, host: str, port: int, address: str) -> Refusal | None:
        """Whether ``host:port`` may be dialled at ``address`` (one resolved address)."""
        for rule in self.deny:
            if rule.matches(host, port, address):
                return self._refusal(f"{self.names[1]} {rule.text}", host, port)
        if not self.allow or any(r.matches(host, port, address) for r in self.allow):
            return None
        return self._refusal(f"{self.names[0]} (no rule matches)", host, port)

    def filter(
        self, host: str, port: int, addresses: Sequence[str]
    ) -> tuple[list[str], Refusal | None]:
        """The addresses that may be dialled, in order; when none may, the first one's
        refusal."""
        allowed: list[str] = []
        first: Refusal | None = None
        for address in addresses:
            refusal = self.check(host, port, address)
            if refusal is None:
                allowed.append(address)
            elif first is None:
                first = refusal
        return allowed, (None if allowed else first)


def _parse_list(rules: Iterable[str], setting: str) -> tuple[Rule, ...]:
    if isinstance(rules, str):
        raise ConfigError(f"{setting} must be a list of rules, got a string")
    out: list[Rule] = []
    for text in rules:
        try:
            out.append(parse_rule(text))
        except ConfigError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
    return tuple(out)


#: The default: every destination allowed (like sshd's ``AllowTcpForwarding yes``).
ALLOW_ALL: Final = TunnelPolicy()
