"""The hub's audit trail: the fixed vocabulary of its security events and one event's shape.

An :class:`AuditEvent` is what the hub (or the admin CLI, working on the hub's database)
records for a security-relevant act: a worker registered, deregistered or replaced by a
newer link; a credential refused; a registration key or API token made or revoked. The
store (:meth:`leapcore.store.hubstore.SQLiteHubStore.record_audit`) keeps it in the
database's ``audit_events`` table; ``leapcore-hub admin audit list`` shows it.

Rules kept here, sans-IO (no clock, no database; the caller passes the time in):

* ``kind`` is one of :data:`KINDS` (stable: scripts match on them);
* ``actor`` says who acted: ``user:<name>``, ``worker:<id>``, :data:`ADMIN_CLI` (the
  offline admin CLI) or :data:`ANONYMOUS` (a link that had not signed in);
* ``detail`` is a small JSON object whose keys are a closed list (:data:`DETAIL_FIELDS`)
  and whose values are short scalars: a key or field naming a secret is refused
  (:class:`ValueError`), a text longer than :data:`MAX_DETAIL_TEXT` is cut, and the
  encoded object is at most :data:`MAX_DETAIL_BYTES`. A token or key is named by its id,
  never by its value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

import attrs

__all__ = [
    "ADMIN_CLI",
    "ANONYMOUS",
    "DETAIL_FIELDS",
    "KINDS",
    "MAX_DETAIL_BYTES",
    "MAX_DETAIL_TEXT",
    "AuditEvent",
    "Origin",
    "decode_detail",
    "encode_detail",
    "user_actor",
    "worker_actor",
]

#: Kind -> what happened. The names are stable.
KINDS: Final[dict[str, str]] = {
    "worker_registered": "a worker registered with a registration key (actor: the new worker)",
    "worker_deregistered": "a worker was deregistered, by its owner or by an administrator",
    "worker_replaced": "a worker connected again while its older link was live; the older "
    "link was closed",
    "token_refused": "a worker token or API token was refused (detail.credential says which)",
    "token_expired": "a worker token or API token past its expiry was refused "
    "(detail.credential says which)",
    "worker_token_rotated": "a worker's new token became its token and the old one was retired "
    "(detail.reason: acknowledged, or used at connect)",
    "registration_key_refused": "a registration was refused: the key is unknown, expired, "
    "revoked or already used",
    "registration_key_created": "a user minted a registration key",
    "registration_key_revoked": "a registration key was revoked, by its owner or an administrator",
    "api_token_created": "an API token was made (with a new user, or for one)",
    "api_token_revoked": "an API token was revoked",
}

#: The keys a detail object may hold. None of them is a secret.
DETAIL_FIELDS: Final = frozenset(
    {
        "credential",  # token_refused, token_expired: "worker_token" or "api_token"
        "reason",
        "user",
        "name",
        "by",  # "owner" or "administrator"
        "registration_key_id",
        "token_id",
        "auto_registered",
        "previous_address",
        "suppressed",  # refusals of this kind past the rate limit, folded into this row
    }
)
#: Characters kept of a text value in a detail (longer ones are cut, marked with "…").
MAX_DETAIL_TEXT: Final = 128
#: The encoded detail object's size bound, in bytes of UTF-8 JSON. With at most
#: ``len(DETAIL_FIELDS)`` values of :data:`MAX_DETAIL_TEXT` characters (6 bytes each at
#: worst, as a ``\uXXXX`` escape) every valid detail fits.
MAX_DETAIL_BYTES: Final = 8192
#: Characters kept of an actor or an address.
MAX_FIELD_TEXT: Final = 200

#: The actor of a link that had not signed in (a refused credential, a registration).
ANONYMOUS: Final = "anonymous"
#: The actor of what ``leapcore-hub admin`` did, offline, on the hub's database.
ADMIN_CLI: Final = "admin-cli"

Detail = Mapping[str, str | int | bool | None]


def worker_actor(worker_id: str) -> str:
    return f"worker:{worker_id}"


def user_actor(name: str) -> str:
    return f"user:{name}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _detail(detail: Detail) -> dict[str, str | int | bool]:
    unknown = sorted(set(detail) - DETAIL_FIELDS)
    if unknown:
        raise ValueError(f"audit detail: unknown field(s) {', '.join(unknown)}")
    out: dict[str, str | int | bool] = {}
    for key, value in sorted(detail.items()):
        if value is None:
            continue
        if isinstance(value, str):
            out[key] = _cut(value, MAX_DETAIL_TEXT)
        elif isinstance(value, (bool, int)):
            out[key] = value
        else:
            raise ValueError(f"audit detail {key!r}: a str, int or bool, not {type(value)}")
    return out


def _kind(instance: object, attribute: object, value: str) -> None:  # attrs validator
    if value not in KINDS:
        raise ValueError(f"unknown audit event kind {value!r}")


def _actor(text: str) -> str:
    return _cut(text, MAX_FIELD_TEXT)


def _optional_text(value: str | None) -> str | None:
    return None if value is None or value == "" else _cut(value, MAX_FIELD_TEXT)


@attrs.frozen
class AuditEvent:
    """One security event. ``at`` is the hub's wall clock (seconds since the Unix epoch,
    UTC), passed in; ``id`` is the store's row id (``None`` before it is recorded)."""

    at: float
    kind: str = attrs.field(validator=_kind)
    actor: str = attrs.field(converter=_actor)
    worker_id: str | None = None
    address: str | None = attrs.field(default=None, converter=_optional_text)
    detail: Mapping[str, str | int | bool] = attrs.field(factory=dict, converter=_detail)
    id: int | None = None

    def __attrs_post_init__(self) -> None:
        encode_detail(self.detail)  # within MAX_DETAIL_BYTES, or ValueError


@attrs.frozen
class Origin:
    """Who asks a store operation that is audited, and from where: the hub passes the
    signed-in link's actor and peer address, the admin CLI :data:`ADMIN_CLI`."""

    actor: str
    address: str | None = None


def encode_detail(detail: Mapping[str, str | int | bool]) -> str:
    """The detail as compact JSON (sorted keys); :class:`ValueError` past
    :data:`MAX_DETAIL_BYTES`."""
    text = json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode("utf-8")) > MAX_DETAIL_BYTES:
        raise ValueError(f"audit detail is larger than {MAX_DETAIL_BYTES} bytes")
    return text


def decode_detail(text: str) -> dict[str, str | int | bool]:
    """A stored detail back as a dict: its known fields of a known type (an unreadable
    detail is ``{}``: a listing never fails on one bad row)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {
        key: item
        for key, item in value.items()
        if key in DETAIL_FIELDS and isinstance(item, (str, int, bool))
    }
