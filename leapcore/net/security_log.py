"""Security events: one log record each, with a stable name and structured fields.

Every refused credential, every deliberate revocation and every key mismatch is logged
once through :func:`security_event`: a human message (which names the peer and the
reason) and, as attributes of the :class:`logging.LogRecord` (``extra=``), the stable
event name (:data:`EVENTS`) and fields from :data:`FIELDS` — never a credential. A
token is named by its id, a worker by its id, a user by name; the fields a caller may
pass are a closed list, so a ``token=`` or ``key=`` field is refused (:class:`ValueError`)
instead of being logged. ``leapcore-hub --log-format json`` prints the fields as keys of
each line's JSON object (:mod:`leapcore_cli.logs`).

Only the standard library: the hub and the worker (any driver) import it.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["EVENTS", "FIELDS", "security_event"]

#: Event name -> (level, what happened). The names are stable: scripts match on them.
EVENTS: Final[dict[str, tuple[int, str]]] = {
    "api_token_rejected": (
        logging.WARNING,
        "a client signed in with an unknown, revoked or expired API token, or a deleted user's",
    ),
    "worker_token_rejected": (
        logging.WARNING,
        "a worker connected with an unknown or expired token, or the token of a deleted worker",
    ),
    "registration_key_rejected": (
        logging.WARNING,
        "a worker registered with a registration key that is unknown, expired, revoked or "
        "already used",
    ),
    "sign_ins_suppressed": (
        logging.WARNING,
        "more refused sign-ins of one kind than the log shows (10 lines per 10 s per kind)",
    ),
    "api_token_revoked": (
        logging.WARNING,
        "a live client link was closed: its API token was revoked (or its user deleted)",
    ),
    "worker_deleted": (
        logging.WARNING,
        "a live worker link was closed: the worker was deleted",
    ),
    "worker_deregistered": (
        logging.INFO,
        "a worker was deregistered: by its owner through the hub, or (seen on its live "
        "link) by an administrator",
    ),
    "registration_key_revoked": (
        logging.INFO,
        "an owner revoked one of its registration keys through the hub",
    ),
    "key_mismatch": (
        logging.WARNING,
        "a worker's keys, as the hub reported them, do not match the pinned ones (the "
        "channel was not opened)",
    ),
}

#: The structured fields an event may carry (besides ``event``). None of them is a secret.
FIELDS: Final = frozenset(
    {
        "reason",
        "peer",
        "transport",
        "worker_id",
        "user",
        "token_id",
        "kind",
        "count",
        "hub",
        "expected_fingerprint",
        "presented_fingerprint",
    }
)


def security_event(
    logger: logging.Logger,
    event: str,
    message: str,
    *args: object,
    **fields: str | int | None,
) -> None:
    """Log ``message % args`` once at ``event``'s level, with ``event`` and ``fields``
    (``None`` values left out) as record attributes. An unknown event or field is a bug:
    :class:`ValueError`, nothing logged."""
    spec = EVENTS.get(event)
    if spec is None:
        raise ValueError(f"unknown security event {event!r}")
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise ValueError(f"security event {event!r}: unknown field(s) {', '.join(unknown)}")
    extra: dict[str, object] = {"event": event}
    extra.update((key, value) for key, value in fields.items() if value is not None)
    logger.log(spec[0], message, *args, extra=extra)
