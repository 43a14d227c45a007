"""What the worker's audit log says about a call (sans-IO: records from facts, no clock,
no files; the log itself is :mod:`leapcore.store.auditlog`).

One JSON object per line. Every call a channel served or refused (:func:`call_record`)::

    {"time": "2026-12-06T02:55:01.123Z", "event": "call", "channel": 3,
     "user": "u-…", "method": "exec", "args": {...}, "outcome": "ok",
     "duration_ms": 41.2, "bytes_in": 0, "bytes_out": 12,
     "exit_status": 0, "exit_signal": null}

``outcome`` is ``ok`` or the error code the call was answered (or its stream reset) with;
a refusal also carries ``message``, and one of :data:`SECURITY_OUTCOMES` is marked
``"security": true``. A channel the worker refused before any call (``channel_refused``,
:func:`channel_record`) is a security event too.

**Arguments, redacted** (:func:`redacted_args`): a JSON object payload is kept with

* the value of every key whose name says secret (:data:`SECRET_WORDS`: ``token``,
  ``password``, ``secret``, ``key``, …) replaced by ``"<redacted>"``;
* an ``env`` mapping's values replaced (its names kept);
* the data of keystrokes and uploads (``pty.send``'s ``data``, any ``data``, ``keys``,
  ``input`` or ``stdin`` string) replaced by its length;
* a command's words kept, except the value of a secret-looking ``NAME=VALUE`` or
  ``--name=VALUE`` word and the word after a secret-looking ``--flag``;
* strings cut at :data:`MAX_STRING` characters, and the whole at :data:`MAX_ARGS` bytes
  of JSON (past it, only the top-level keys are kept).

Anything else (not JSON, not an object) is recorded as its size only.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "MAX_ARGS",
    "MAX_STRING",
    "REDACTED",
    "SECRET_WORDS",
    "SECURITY_OUTCOMES",
    "call_record",
    "channel_record",
    "redacted_args",
    "utc_time",
]

#: What a redacted value reads as.
REDACTED: Final = "<redacted>"
#: Parts of a key's or flag's name that make its value secret (case-insensitive).
SECRET_WORDS: Final = (
    "token",
    "password",
    "passwd",
    "secret",
    "key",
    "credential",
    "auth",
    "cookie",
    "session",
    "private",
)
#: Keys whose string value is data (keystrokes, file contents): recorded as its length.
_DATA_KEYS: Final = frozenset({"data", "keys", "input", "stdin"})
#: Characters of one string argument kept, at most.
MAX_STRING: Final = 256
#: Bytes of one call's ``args`` (as JSON) kept, at most.
MAX_ARGS: Final = 2048
#: Outcomes that are security events.
SECURITY_OUTCOMES: Final = frozenset({"denied_by_policy", "permission_denied"})

_SECRET: Final = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)


def utc_time(at: float) -> str:
    """``at`` (Unix seconds) as ``2026-12-06T02:55:01.123Z``."""
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _secret(name: str) -> bool:
    return _SECRET.search(name) is not None


def _string(text: str) -> str:
    return text if len(text) <= MAX_STRING else text[:MAX_STRING] + "…"


def _words(words: list[Any]) -> list[Any]:
    out: list[Any] = []
    hide_next = False
    for word in words:
        if not isinstance(word, str):
            out.append(_value("", word))
            continue
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, sep, _ = word.partition("=")
        if sep and _secret(name):
            out.append(f"{name}={REDACTED}")
        elif word.startswith("-") and _secret(word):
            out.append(word)
            hide_next = True
        else:
            out.append(_string(word))
    return out


def _value(key: str, value: Any) -> Any:
    if key and _secret(key):
        return REDACTED
    if isinstance(value, str):
        if key in _DATA_KEYS:
            return {"length": len(value)}
        return _string(value)
    if isinstance(value, dict):
        if key == "env":
            return {str(k): REDACTED for k in value}
        return {str(k): _value(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        if key in ("command", "argv", "args"):
            return _words(value)
        return [_value("", item) for item in value]
    return value


def redacted_args(payload: bytes) -> dict[str, Any]:
    """The call's arguments as the audit log keeps them (see the module docstring)."""
    try:
        document = json.loads(payload) if payload else {}
    except (ValueError, RecursionError):
        return {"bytes": len(payload)}
    if not isinstance(document, dict):
        return {"bytes": len(payload)}
    args = {str(k): _value(str(k), v) for k, v in document.items()}
    if len(json.dumps(args)) > MAX_ARGS:
        return {"keys": sorted(args)[:64], "truncated": True}
    return args


def call_record(
    *,
    at: float,
    channel_id: int,
    user_id: str,
    method: str,
    payload: bytes,
    outcome: str,
    message: str = "",
    duration: float = 0.0,
    bytes_in: int = 0,
    bytes_out: int = 0,
    notes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The line for one call (``at``: when it ended, Unix seconds)."""
    record: dict[str, Any] = {
        "time": utc_time(at),
        "event": "call",
        "channel": channel_id,
        "user": user_id,
        "method": method,
        "args": redacted_args(payload),
        "outcome": outcome,
        "duration_ms": round(duration * 1000, 3),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }
    if message:
        record["message"] = _string(message)
    if outcome in SECURITY_OUTCOMES:
        record["security"] = True
    for name in ("exit_status", "exit_signal"):
        if notes and name in notes:
            record[name] = notes[name]
    return record


def channel_record(
    *, at: float, channel_id: int, user_id: str, code: str, message: str
) -> dict[str, Any]:
    """The line for a channel the worker refused (a security event)."""
    return {
        "time": utc_time(at),
        "event": "channel_refused",
        "channel": channel_id,
        "user": user_id,
        "outcome": code,
        "message": _string(message),
        "security": True,
    }
