"""The listener's budgets: what one peer can make a :class:`~leapcore.net.listen.LinkServer` hold.

Values and one counter (:class:`FrameBudget`), no I/O, so that the hub's configuration
(:mod:`leapcore.proto.hub_limits`) can name and check them without importing the listener. What
each one does is described in :mod:`leapcore.net.listen`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs

__all__ = [
    "ACCEPT_BACKOFF_INITIAL",
    "ACCEPT_BACKOFF_MAX",
    "HANDSHAKE_TIMEOUT",
    "MAX_CONCURRENT_STREAMS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "MAX_CONTROL_FRAMES",
    "MAX_HEADER_LIST_SIZE",
    "MAX_PENDING_CONNECTIONS",
    "MAX_PENDING_OUTPUT",
    "FrameBudget",
    "ServerLimits",
]

#: Seconds from accept to a link (TLS, HTTP/1 head or HTTP/2 preface, upgrade or link stream).
HANDSHAKE_TIMEOUT: Final = 10.0
#: Live connections from one IP address (an IPv6 peer counts by its /64 prefix; Unix-socket
#: peers: one address, "unix").
MAX_CONNECTIONS_PER_ADDRESS: Final = 128
#: Connections accepted that are not yet a link (TLS, HTTP head, upgrade or link stream, or
#: serving only routes), from all addresses together.
MAX_PENDING_CONNECTIONS: Final = 512
#: Bytes of an HTTP/1 request head; HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE.
MAX_HEADER_LIST_SIZE: Final = 16 * 1024
#: HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
MAX_CONCURRENT_STREAMS: Final = 100
#: Bytes an HTTP/2 connection may hold to send before it is closed (the peer is not reading).
MAX_PENDING_OUTPUT: Final = 1024 * 1024
#: Control frames (WebSocket ping/pong; HTTP/2 PING and PING ACK, SETTINGS and SETTINGS ACK,
#: RST_STREAM, PRIORITY, DATA without data) one connection may send per second.
MAX_CONTROL_FRAMES: Final = 100
#: First wait after accept fails for lack of descriptors or memory; doubles while it persists.
ACCEPT_BACKOFF_INITIAL: Final = 0.005
#: Longest wait between accept attempts while descriptors or memory are short.
ACCEPT_BACKOFF_MAX: Final = 1.0


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _at_least(minimum: int) -> Callable[[object, attrs.Attribute[Any], int], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value!r}")

    return check


@attrs.frozen
class ServerLimits:
    """What one peer can make a listener hold (:mod:`leapcore.net.listen` says what each does)."""

    handshake_timeout: float = attrs.field(default=HANDSHAKE_TIMEOUT, validator=_positive)
    max_connections_per_address: int = attrs.field(
        default=MAX_CONNECTIONS_PER_ADDRESS, validator=_at_least(1)
    )
    max_pending_connections: int = attrs.field(
        default=MAX_PENDING_CONNECTIONS, validator=_at_least(1)
    )
    max_header_list_size: int = attrs.field(default=MAX_HEADER_LIST_SIZE, validator=_at_least(1024))
    max_concurrent_streams: int = attrs.field(
        default=MAX_CONCURRENT_STREAMS, validator=_at_least(1)
    )
    max_pending_output: int = attrs.field(default=MAX_PENDING_OUTPUT, validator=_at_least(65536))
    max_control_frames: int = attrs.field(default=MAX_CONTROL_FRAMES, validator=_at_least(1))
    accept_backoff_initial: float = attrs.field(default=ACCEPT_BACKOFF_INITIAL, validator=_positive)
    accept_backoff_max: float = attrs.field(default=ACCEPT_BACKOFF_MAX, validator=_positive)


class FrameBudget:
    """At most ``limit`` events (a connection's control frames) per fixed window of
    ``window`` seconds; time is the ``now`` argument."""

    __slots__ = ("_count", "_start", "limit", "window")

    def __init__(self, limit: int, window: float = 1.0) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._start = -float("inf")
        self._count = 0

    def spend(self, now: float, n: int = 1) -> bool:
        """Count ``n`` events at ``now``; False once this window holds more than ``limit``."""
        if n <= 0:
            return True
        if now >= self._start + self.window:
            self._start, self._count = now, 0
        self._count += n
        return self._count <= self.limit
