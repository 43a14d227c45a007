"""The hub's budgets for what signed-in peers may make it hold, and how often it re-checks them.

:class:`HubLimits` is one frozen value passed to ``Hub(..., limits=HubLimits(...))``; every
field has a documented default (the module constants below) and an accepted range
(:data:`LIMIT_RANGES`), which the hub's configuration (``hub.toml``, ``LEAPCORE_HUB_*``,
``leapcore-hub serve`` flags) uses under the same names. What happens when each is
exceeded:

* ``signin_timeout`` (:data:`SIGNIN_TIMEOUT`, 10 s): a new link must send its first record
  (``register``, ``connect`` or ``client_hello``) within this long of becoming a link, or
  it is closed. (The listener's ``handshake_timeout`` bounds the time before that.)
* ``client_idle_timeout`` (:data:`CLIENT_IDLE_TIMEOUT`, 600 s, at least 60 s): a client
  link that sends nothing (a heartbeat counts) for that long is closed with an ``error``
  record ``unavailable``.
* ``max_links_per_user`` (:data:`MAX_LINKS_PER_USER`, 32): a user's signed-in client
  links; one more is refused with ``error`` ``quota_exceeded``.
* ``max_links_per_address`` (:data:`MAX_LINKS_PER_ADDRESS`, 256): signed-in links (client
  and worker) from one IP address; one more is refused with ``error`` ``quota_exceeded``.
  Unix-socket peers are not counted (they are local). Every link is also a connection, so
  the listener's ``max_connections_per_address`` (128 by default) applies first: raise both
  for many users behind one NAT address.
* ``max_channels_per_link`` (:data:`MAX_CHANNELS_PER_LINK`, 256), ``max_channels_per_user``
  (:data:`MAX_CHANNELS_PER_USER`, 1024), ``max_channels_per_worker``
  (:data:`MAX_CHANNELS_PER_WORKER`, 256): channels opened by one link, opened by one user's
  links (its clients and its workers), and served by one worker — live and still opening;
  one more is ``channel_refused`` ``quota_exceeded``.
* ``max_pending_opens_per_worker`` (:data:`MAX_PENDING_OPENS_PER_WORKER`, 64): opens
  waiting for one worker's answer, whoever asked; one more is ``channel_refused``
  ``unavailable`` (as for the per-link :data:`leapcore.hub.server.MAX_PENDING_OPENS`).
* ``max_link_queue_bytes`` (:data:`MAX_LINK_QUEUE_BYTES`, 4 MiB): control records queued
  for one link's writer, in bytes (besides :data:`leapcore.hub.server.SEND_QUEUE` records); a
  peer that lets more pile up is not reading, and its link is closed.
* ``max_live_registration_keys`` (:data:`MAX_LIVE_REGISTRATION_KEYS`, 16): a user's
  unexpired registration keys; minting one more is refused ``quota_exceeded``.
* ``registration_key_retention`` (:data:`REGISTRATION_KEY_RETENTION`, 1 day) and
  ``purge_interval`` (:data:`PURGE_INTERVAL`, 1 h): keys expired (or used, or revoked) for
  longer than the retention are deleted when the hub starts and then every interval.
* ``revocation_check_interval`` (:data:`REVOCATION_CHECK_INTERVAL`, 0.5 s): how often the
  hub asks the store whether the API tokens of its client links are still live and its
  workers still active (the admin CLI, or another hub, may change them at any time).
* ``deregister_grace`` (:data:`DEREGISTER_GRACE`, 10 s): how long a deregistering worker's
  link may stay after its ``deregister`` was sent, waiting for the acknowledgement.

The listener's budgets (:class:`leapcore.net.listen.ServerLimits`, defaults and effects in
:mod:`leapcore.net.listen`) are hub settings too, under the same names, so that an operator
sets every budget in one place: ``handshake_timeout``, ``max_connections_per_address``,
``max_header_list_size``, ``max_concurrent_streams``, ``max_pending_output``,
``max_control_frames`` and ``max_pending_connections``
(:meth:`HubLimits.server_limits` hands them to the listener).

Sans-IO: values only.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from ..errors import ConfigError
from .limits import (
    HANDSHAKE_TIMEOUT,
    MAX_CONCURRENT_STREAMS,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_CONTROL_FRAMES,
    MAX_HEADER_LIST_SIZE,
    MAX_PENDING_CONNECTIONS,
    MAX_PENDING_OUTPUT,
    ServerLimits,
)

__all__ = [
    "CLIENT_IDLE_TIMEOUT",
    "DEREGISTER_GRACE",
    "LIMIT_RANGES",
    "MAX_CHANNELS_PER_LINK",
    "MAX_CHANNELS_PER_USER",
    "MAX_CHANNELS_PER_WORKER",
    "MAX_LINKS_PER_ADDRESS",
    "MAX_LINKS_PER_USER",
    "MAX_LINK_QUEUE_BYTES",
    "MAX_LIVE_REGISTRATION_KEYS",
    "MAX_PENDING_OPENS_PER_WORKER",
    "PURGE_INTERVAL",
    "REGISTRATION_KEY_RETENTION",
    "REVOCATION_CHECK_INTERVAL",
    "SERVER_FIELDS",
    "SIGNIN_TIMEOUT",
    "HubLimits",
]

#: Seconds a new link has to send its first record (sign in, connect or register).
SIGNIN_TIMEOUT: Final = 10.0
#: Seconds a client link may send nothing before it is closed.
CLIENT_IDLE_TIMEOUT: Final = 600.0
#: Signed-in client links per user.
MAX_LINKS_PER_USER: Final = 32
#: Signed-in links (client and worker) per peer IP address.
MAX_LINKS_PER_ADDRESS: Final = 256
#: Channels (live or opening) one link has opened.
MAX_CHANNELS_PER_LINK: Final = 256
#: Channels (live or opening) one user's links have opened.
MAX_CHANNELS_PER_USER: Final = 1024
#: Channels (live or opening) one worker serves.
MAX_CHANNELS_PER_WORKER: Final = 256
#: Channel opens waiting for one worker's answer at once.
MAX_PENDING_OPENS_PER_WORKER: Final = 64
#: Bytes of control records queued for one link's writer.
MAX_LINK_QUEUE_BYTES: Final = 4 * 1024 * 1024
#: A user's unexpired registration keys.
MAX_LIVE_REGISTRATION_KEYS: Final = 16
#: Seconds an expired registration key is kept before it is purged.
REGISTRATION_KEY_RETENTION: Final = 24 * 3600.0
#: Seconds between purges of expired registration keys.
PURGE_INTERVAL: Final = 3600.0
#: Seconds between checks for revoked API tokens and deregistered or deleted workers.
REVOCATION_CHECK_INTERVAL: Final = 0.5
#: Seconds a deregistering worker's link may wait for its acknowledgement.
DEREGISTER_GRACE: Final = 10.0

#: Field -> (type, minimum, maximum), both bounds inclusive. A ``float`` field takes an
#: ``int`` too; an ``int`` field only an ``int``.
LIMIT_RANGES: Final[dict[str, tuple[type, float, float]]] = {
    "signin_timeout": (float, 1.0, 600.0),
    "client_idle_timeout": (float, 60.0, 7 * 24 * 3600.0),
    "max_links_per_user": (int, 1, 1_000_000),
    "max_links_per_address": (int, 1, 1_000_000),
    "max_channels_per_link": (int, 1, 1_000_000),
    "max_channels_per_user": (int, 1, 1_000_000),
    "max_channels_per_worker": (int, 1, 1_000_000),
    "max_pending_opens_per_worker": (int, 1, 1_000_000),
    # At least two of the largest control records (128 KiB each).
    "max_link_queue_bytes": (int, 256 * 1024, 1024 * 1024 * 1024),
    "max_live_registration_keys": (int, 1, 1_000_000),
    "registration_key_retention": (float, 0.0, 365 * 24 * 3600.0),
    "purge_interval": (float, 1.0, 7 * 24 * 3600.0),
    "revocation_check_interval": (float, 0.05, 60.0),
    "deregister_grace": (float, 1.0, 600.0),
    # The listener's (leapcore.net.listen.ServerLimits), within that class's own checks.
    "handshake_timeout": (float, 1.0, 600.0),
    "max_connections_per_address": (int, 1, 1_000_000),
    "max_header_list_size": (int, 1024, 1024 * 1024),
    "max_concurrent_streams": (int, 1, 10_000),
    "max_pending_output": (int, 64 * 1024, 256 * 1024 * 1024),
    "max_control_frames": (int, 1, 1_000_000),
    "max_pending_connections": (int, 1, 1_000_000),
}
#: The fields of :class:`HubLimits` that configure the listener.
SERVER_FIELDS: Final = (
    "handshake_timeout",
    "max_connections_per_address",
    "max_header_list_size",
    "max_concurrent_streams",
    "max_pending_output",
    "max_control_frames",
    "max_pending_connections",
)


def check_limit(name: str, value: Any) -> str | None:
    """None when ``value`` is acceptable for field ``name``, else what is required."""
    kind, low, high = LIMIT_RANGES[name]
    allowed = (int, float) if kind is float else (int,)
    if type(value) not in allowed:
        return "must be a number" if kind is float else "must be an integer"
    if not low <= value <= high:
        return f"must be between {describe(low)} and {describe(high)}"
    return None


def describe(value: float) -> str:
    """A bound or default as messages and help write it: ``600``, ``0.5``, ``31536000``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _validate(instance: Any, attribute: Any, value: Any) -> None:
    problem = check_limit(attribute.name, value)
    if problem is not None:
        raise ConfigError(f"HubLimits.{attribute.name} {problem}, got {value!r}")


@attrs.frozen(kw_only=True)
class HubLimits:
    """The hub's budgets (see the module docstring for each one's default and effect)."""

    signin_timeout: float = attrs.field(default=SIGNIN_TIMEOUT, validator=_validate)
    client_idle_timeout: float = attrs.field(default=CLIENT_IDLE_TIMEOUT, validator=_validate)
    max_links_per_user: int = attrs.field(default=MAX_LINKS_PER_USER, validator=_validate)
    max_links_per_address: int = attrs.field(default=MAX_LINKS_PER_ADDRESS, validator=_validate)
    max_channels_per_link: int = attrs.field(default=MAX_CHANNELS_PER_LINK, validator=_validate)
    max_channels_per_user: int = attrs.field(default=MAX_CHANNELS_PER_USER, validator=_validate)
    max_channels_per_worker: int = attrs.field(default=MAX_CHANNELS_PER_WORKER, validator=_validate)
    max_pending_opens_per_worker: int = attrs.field(
        default=MAX_PENDING_OPENS_PER_WORKER, validator=_validate
    )
    max_link_queue_bytes: int = attrs.field(default=MAX_LINK_QUEUE_BYTES, validator=_validate)
    max_live_registration_keys: int = attrs.field(
        default=MAX_LIVE_REGISTRATION_KEYS, validator=_validate
    )
    registration_key_retention: float = attrs.field(
        default=REGISTRATION_KEY_RETENTION, validator=_validate
    )
    purge_interval: float = attrs.field(default=PURGE_INTERVAL, validator=_validate)
    revocation_check_interval: float = attrs.field(
        default=REVOCATION_CHECK_INTERVAL, validator=_validate
    )
    deregister_grace: float = attrs.field(default=DEREGISTER_GRACE, validator=_validate)
    handshake_timeout: float = attrs.field(default=HANDSHAKE_TIMEOUT, validator=_validate)
    max_connections_per_address: int = attrs.field(
        default=MAX_CONNECTIONS_PER_ADDRESS, validator=_validate
    )
    max_header_list_size: int = attrs.field(default=MAX_HEADER_LIST_SIZE, validator=_validate)
    max_concurrent_streams: int = attrs.field(default=MAX_CONCURRENT_STREAMS, validator=_validate)
    max_pending_output: int = attrs.field(default=MAX_PENDING_OUTPUT, validator=_validate)
    max_control_frames: int = attrs.field(default=MAX_CONTROL_FRAMES, validator=_validate)
    max_pending_connections: int = attrs.field(default=MAX_PENDING_CONNECTIONS, validator=_validate)

    def server_limits(self) -> ServerLimits:
        """The listener's budgets among these."""
        return ServerLimits(**{name: getattr(self, name) for name in SERVER_FIELDS})

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> HubLimits:
        """The limits among ``settings`` (other keys are ignored)."""
        return cls(**{name: settings[name] for name in LIMIT_RANGES if name in settings})
