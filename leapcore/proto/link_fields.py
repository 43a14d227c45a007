"""Field limits of the link's control records: every string a peer controls is bounded.

Sans-IO data and pure checks, used by the link codec (:mod:`leapcore.proto.link_codec`)
in both directions and by anyone who builds a record ahead of sending it (the worker
checks its name and labels at start-up). Limits are in characters, by field name
(:data:`FIELD_LIMITS`; the same name means the same thing in every record): names
(:data:`MAX_NAME`), ids (:data:`MAX_ID`), versions (:data:`MAX_VERSION`), secrets
(:data:`MAX_SECRET`), codes (:data:`MAX_CODE`), method names (:data:`MAX_METHOD`), free
text -- messages and reasons -- (:data:`MAX_TEXT`); labels are at most
:data:`MAX_LABELS`, each key 1 .. :data:`MAX_LABEL_KEY` and each value at most
:data:`MAX_LABEL_VALUE` characters; names, ids, versions and labels are printable (no
control characters, :data:`PRINTABLE_FIELDS`); a worker's ``capabilities`` are at most
:data:`~leapcore.proto.limits.MAX_CAPABILITIES` names
(:func:`~leapcore.proto.capabilities.capability_problem`), its ``os`` and ``arch`` at most
:data:`~leapcore.proto.limits.MAX_PLATFORM` printable characters; ``hub_request.params`` is at most
:data:`MAX_PARAMS` bytes of JSON (``hub_response.result`` is bounded by the record,
:data:`~leapcore.proto.link_codec.MAX_CONTROL_BODY`).

The rule: :func:`check_fields` raises the error class it is given, naming the field --
the decoder passes :class:`~leapcore.errors.LinkProtocolError` (a breach from the peer
closes the link), the encoder :class:`~leapcore.errors.LocalError`. Free text
(:data:`TEXT_FIELDS`) is the one exception on the way out: :func:`clip_text` cuts it to
:data:`MAX_TEXT` rather than refusing it, so that an error message that quotes a peer's
input can always be sent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

import attrs

from ..errors import LeapcoreError, LocalError
from .capabilities import capability_problem
from .limits import MAX_CAPABILITIES, MAX_PLATFORM

if TYPE_CHECKING:
    from .link_codec import ControlMessage

__all__ = [
    "FIELD_LIMITS",
    "MAX_CODE",
    "MAX_ID",
    "MAX_LABELS",
    "MAX_LABEL_KEY",
    "MAX_LABEL_VALUE",
    "MAX_METHOD",
    "MAX_NAME",
    "MAX_PARAMS",
    "MAX_SECRET",
    "MAX_TEXT",
    "MAX_VERSION",
    "PRINTABLE_FIELDS",
    "TEXT_FIELDS",
    "check_fields",
    "clip_text",
]

#: Worker names and user names (``name``, ``owner_name``, ``user_name``).
MAX_NAME: Final = 128
#: Worker, user and hub ids (``worker_id``, ``owner_id``, ``user_id``, ``hub_id``); the
#: hub's worker and user ids are 48 characters, its own id 16.
MAX_ID: Final = 128
#: A worker's ``version``.
MAX_VERSION: Final = 64
#: Credentials: ``auth_token``, ``api_token``, ``registration_key``.
MAX_SECRET: Final = 256
#: Error, open, close and refusal codes, and ``encryption_mode``.
MAX_CODE: Final = 64
#: A ``hub_request`` method name.
MAX_METHOD: Final = 128
#: Free text: ``message``, ``reason``, ``error_message`` (a sender clips, a receiver refuses).
MAX_TEXT: Final = 1024
#: Labels per worker.
MAX_LABELS: Final = 16
#: One label key (at least one character).
MAX_LABEL_KEY: Final = 64
#: One label value.
MAX_LABEL_VALUE: Final = 256
#: ``hub_request.params``, as compact JSON (UTF-8 bytes).
MAX_PARAMS: Final = 16 * 1024

#: Field name -> its maximum length in characters (the same name means the same thing in
#: every record).
FIELD_LIMITS: Final[dict[str, int]] = {
    "name": MAX_NAME,
    "owner_name": MAX_NAME,
    "user_name": MAX_NAME,
    "worker_id": MAX_ID,
    "owner_id": MAX_ID,
    "user_id": MAX_ID,
    "hub_id": MAX_ID,
    "version": MAX_VERSION,
    "auth_token": MAX_SECRET,
    "api_token": MAX_SECRET,
    "registration_key": MAX_SECRET,
    "code": MAX_CODE,
    "error_code": MAX_CODE,
    "encryption_mode": MAX_CODE,
    "method": MAX_METHOD,
    "message": MAX_TEXT,
    "reason": MAX_TEXT,
    "error_message": MAX_TEXT,
    "os": MAX_PLATFORM,
    "arch": MAX_PLATFORM,
}
#: Free-text fields: :func:`~leapcore.proto.link_codec.encode` clips them (:func:`clip_text`)
#: instead of refusing them.
TEXT_FIELDS: Final = frozenset({"message", "reason", "error_message"})
#: Fields that must be printable (shown to people in tables and logs).
PRINTABLE_FIELDS: Final = frozenset(
    {
        "name",
        "owner_name",
        "user_name",
        "worker_id",
        "owner_id",
        "user_id",
        "hub_id",
        "version",
        "os",
        "arch",
    }
)


def _field_problem(name: str, value: object) -> str | None:
    """What is wrong with one field's value, if anything (limits only; types are checked
    by the strict converter)."""
    if isinstance(value, str):
        limit = FIELD_LIMITS.get(name)
        if limit is not None and len(value) > limit:
            return f"is {len(value)} characters long; the limit is {limit}"
        if name in PRINTABLE_FIELDS and not value.isprintable():
            return "contains control or non-printable characters"
        return None
    if name == "labels" and isinstance(value, dict):
        if len(value) > MAX_LABELS:
            return f"has {len(value)} labels; the limit is {MAX_LABELS}"
        for key, item in value.items():
            if not 1 <= len(key) <= MAX_LABEL_KEY or not key.isprintable():
                return (
                    f"has a key of {len(key)} characters; keys are 1..{MAX_LABEL_KEY} "
                    "printable characters"
                )
            if len(item) > MAX_LABEL_VALUE or not item.isprintable():
                return (
                    f"has a value of {len(item)} characters for {key!r}; values are at most "
                    f"{MAX_LABEL_VALUE} printable characters"
                )
        return None
    if name == "capabilities" and isinstance(value, list):
        if len(value) > MAX_CAPABILITIES:
            return f"has {len(value)} capabilities; the limit is {MAX_CAPABILITIES}"
        for item in value:
            problem = capability_problem(item)
            if problem is not None:
                return f"has a bad name: {problem}"
        return None
    if name == "params" and isinstance(value, dict):
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_PARAMS:
            return f"is {size} bytes of JSON; the limit is {MAX_PARAMS}"
    return None


def check_fields(message: ControlMessage, *, error: type[LeapcoreError] = LocalError) -> None:
    """Raise ``error`` if a field of ``message`` breaks a field limit (the module docstring)."""
    for field in attrs.fields(type(message)):  # type: ignore[arg-type]
        problem = _field_problem(field.name, getattr(message, field.name))
        if problem is not None:
            raise error(f"{message.type}.{field.name} {problem}")


def clip_text(message: ControlMessage) -> ControlMessage:
    """``message`` with its free-text fields cut to :data:`MAX_TEXT` characters."""
    long = {
        name: value[:MAX_TEXT]
        for name in TEXT_FIELDS
        if isinstance(value := getattr(message, name, None), str) and len(value) > MAX_TEXT
    }
    return attrs.evolve(message, **long) if long else message  # type: ignore[misc]
