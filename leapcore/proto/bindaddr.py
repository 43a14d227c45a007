"""Where a tunnel may listen, and how its command-line specs read (pure; spec §6.1).

A tunnel's local listener is **unauthenticated**: whoever can connect to it speaks through
the worker with its owner's rights. So it binds a **loopback IP literal** only, unless the
caller explicitly allows a remote bind. The truth table (Go ``net.ParseIP`` +
``IsLoopback`` semantics, as LeapMux's desktop sidecar applies them):

==============================================  =========================================
text (after trimming whitespace and one pair     outcome
of brackets)
==============================================  =========================================
``127.0.0.0/8`` dotted quads (``127.0.0.1``,     accepted
``127.255.255.254``)
``::1`` in any spelling (``0:0::1``, ``::0001``)  accepted
``::ffff:127.x.y.z`` (also ``::ffff:7f00:1``)    accepted, bound as ``127.x.y.z``
``0.0.0.0``, ``::``, ``::2``, ``::127.0.0.1``,   "bindAddr must be a loopback address
``fe80::1``, ``10.0.0.1``                        (the tunnel listener is unauthenticated),
                                                 got …"
zone ids (``::1%lo``), ``127.0.0.01``,           "bindAddr must be an IP address, got …"
``0177.0.0.1``, ``127.1``, ``2130706433``,
CIDR, ``host:port``, ``localhost``,
``[[::1]]``, the empty string
==============================================  =========================================

Python note: ``IPv6Address("::ffff:127.0.0.1").is_loopback`` is False, so the IPv4-mapped
form is checked through ``ipv4_mapped``; Python accepts zone ids, which Go's ``ParseIP``
does not, so they are refused here by hand.

:func:`validate_tunnel` checks a whole tunnel configuration with LeapMux's exact messages;
:func:`parse_forward_spec` and :func:`parse_socks_spec` read ``ssh -L``-style command-line
specs (``[BIND_ADDR:]BIND_PORT:HOST:PORT`` and ``[BIND_ADDR:]PORT``, IPv6 in brackets).
Every refusal is a :class:`~leapcore.errors.ConfigError`.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from typing import Final

import attrs

from ..errors import ConfigError

__all__ = [
    "DEFAULT_BIND_ADDRESS",
    "DEFAULT_SOCKS_PORT",
    "ForwardSpec",
    "TunnelType",
    "check_bind_address",
    "parse_forward_spec",
    "parse_listen_address",
    "parse_socks_spec",
    "validate_tunnel",
]

#: Where a tunnel listens when no address is given.
DEFAULT_BIND_ADDRESS: Final = "127.0.0.1"
#: The SOCKS5 listener's port when none is given.
DEFAULT_SOCKS_PORT: Final = 1080


class TunnelType(enum.Enum):
    PORT_FORWARD = "port_forward"
    SOCKS5 = "socks5"


def _quoted(text: str) -> str:
    """``text`` quoted as Go's ``%q`` would (double quotes, escapes)."""
    return json.dumps(text, ensure_ascii=False)


def _strip(text: str) -> str:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return text


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text or "/" in text:
        return None  # zone ids and CIDR: not an IP literal for Go's ParseIP
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def check_bind_address(
    text: str,
    *,
    allow_remote: bool = False,
    name: str = "bindAddr",
    why: str = "the tunnel listener is unauthenticated",
) -> str:
    """The address to bind for ``text`` (canonical; an IPv4-mapped address as its IPv4
    form), or :class:`ConfigError` with the table's message. ``allow_remote`` lifts the
    loopback rule (never the IP-literal rule). ``name`` and ``why`` word the messages for
    another unauthenticated listener (the worker's metrics)."""
    ip = _parse_ip(_strip(text))
    if ip is None:
        raise ConfigError(f"{name} must be an IP address, got {_quoted(text)}")
    if not allow_remote and not _is_loopback(ip):
        raise ConfigError(f"{name} must be a loopback address ({why}), got {_quoted(text)}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _check_port(port: int, what: str, *, zero: bool = False) -> int:
    low = 0 if zero else 1
    if type(port) is not int or not low <= port <= 65535:
        suffix = ", or 0 for a free port" if zero else ""
        raise ConfigError(f"{what} must be 1-65535{suffix}")
    return port


@attrs.frozen
class ForwardSpec:
    """One listener: bind here, and (port forwarding) connect there through the worker."""

    bind_host: str
    bind_port: int
    #: ``None`` for a SOCKS5 listener (the client names each target).
    target_host: str | None = None
    target_port: int | None = None


def validate_tunnel(
    *,
    worker_id: str,
    type: str,
    bind_addr: str | None = None,
    bind_port: int | None = None,
    target_addr: str | None = None,
    target_port: int | None = None,
    allow_remote: bool = False,
) -> ForwardSpec:
    """A tunnel configuration checked in LeapMux's order with its messages. ``bind_addr``
    None means ``127.0.0.1``; ``bind_port`` None means ``target_port`` (port forward) or
    1080 (SOCKS5), and 0 any free port."""
    if not worker_id:
        raise ConfigError("workerId is required")
    try:
        kind = TunnelType(type)
    except ValueError:
        raise ConfigError("type must be 'port_forward' or 'socks5'") from None
    if kind is TunnelType.PORT_FORWARD:
        if not target_addr:
            raise ConfigError("targetAddr is required for port_forward")
        if target_port is None:
            raise ConfigError("targetPort must be 1-65535")
        _check_port(target_port, "targetPort")
    else:
        target_addr = target_port = None
    host = check_bind_address(
        DEFAULT_BIND_ADDRESS if bind_addr is None else bind_addr, allow_remote=allow_remote
    )
    if bind_port is None:
        bind_port = target_port if target_port is not None else DEFAULT_SOCKS_PORT
    _check_port(bind_port, "bindPort", zero=True)
    return ForwardSpec(host, bind_port, target_addr, target_port)


def _split(text: str) -> list[str]:
    """``text`` split at colons outside brackets; each bracketed part unwrapped."""
    parts: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"unbalanced brackets in {_quoted(text)}")
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ConfigError(f"unbalanced brackets in {_quoted(text)}")
    parts.append(current)
    return parts


def _port(text: str, what: str, *, zero: bool = False) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        suffix = ", or 0 for a free port" if zero else ""
        raise ConfigError(f"{what} must be 1-65535{suffix}")
    return _check_port(int(text), what, zero=zero)


def parse_forward_spec(text: str, *, allow_remote: bool = False) -> ForwardSpec:
    """``[BIND_ADDR:]BIND_PORT:HOST:PORT`` (``ssh -L``'s form; an IPv6 address in
    brackets): bind ``BIND_ADDR`` (default 127.0.0.1) port ``BIND_PORT`` (0: any free
    port), connect each accepted connection to ``HOST:PORT`` from the worker."""
    parts = _split(text.strip())
    if len(parts) == 3:
        parts.insert(0, DEFAULT_BIND_ADDRESS)
    if len(parts) != 4:
        raise ConfigError(
            f"a forward is [BIND_ADDR:]BIND_PORT:HOST:PORT (IPv6 in brackets), got {_quoted(text)}"
        )
    bind_addr, bind_port, host, port = parts
    host = _strip(host)
    if not host:
        raise ConfigError("targetAddr is required for port_forward")
    target_port = _port(port, "targetPort")
    return ForwardSpec(
        check_bind_address(bind_addr, allow_remote=allow_remote),
        _port(bind_port, "bindPort", zero=True),
        host,
        target_port,
    )


def parse_socks_spec(text: str | None, *, allow_remote: bool = False) -> ForwardSpec:
    """``[BIND_ADDR:]PORT`` (IPv6 in brackets; None: ``127.0.0.1:1080``) for a SOCKS5
    listener; PORT 0 is any free port."""
    if text is None:
        return ForwardSpec(DEFAULT_BIND_ADDRESS, DEFAULT_SOCKS_PORT)
    parts = _split(text.strip())
    if len(parts) == 1:
        parts.insert(0, DEFAULT_BIND_ADDRESS)
    if len(parts) != 2:
        raise ConfigError(f"a SOCKS listener is [BIND_ADDR:]PORT, got {_quoted(text)}")
    return ForwardSpec(
        check_bind_address(parts[0], allow_remote=allow_remote),
        _port(parts[1], "bindPort", zero=True),
    )


def parse_listen_address(
    text: str, *, name: str, why: str, allow_remote: bool = False
) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 address in brackets; PORT 0: any free port) of an
    unauthenticated listener, ``name`` its setting: ``(host, port)`` with the host checked
    by :func:`check_bind_address` (a loopback IP literal unless ``allow_remote``)."""
    parts = _split(text.strip())
    if len(parts) != 2:
        raise ConfigError(f"{name} must be HOST:PORT (IPv6 in brackets), got {_quoted(text)}")
    host = check_bind_address(parts[0], allow_remote=allow_remote, name=name, why=why)
    return host, _port(parts[1], f"{name} port", zero=True)
