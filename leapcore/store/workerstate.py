"""A worker's identity on disk (``<data-dir>/state.json``) and what it may do at startup.

``state.json`` is 2-space JSON with LeapMux's keys, in this order:
``worker_id``, ``auth_token`` (both always present, possibly ``""``), then the
six key fields of :mod:`leapcore.crypto.keys` (standard base64). It has no owner field
(the hub names the owner on every connect) and never holds a registration key.
It is written atomically, mode 0600, in a 0700 directory.

A **token rotation** (the hub's ``rotate_token``) rewrites it whole with the new
``auth_token`` (:func:`save_state`; the format is unchanged, and no pending token is kept on
disk): the atomic, fsynced replace is the swap, so the file always holds the old token or
the new one, and the hub accepts both until it has seen the new one acknowledged or used.

:func:`startup_action` is the startup decision table (``spec/behavior.md``
§3.3), pure:

==============  ====================  ======================================================
auth token      --registration-key    result
==============  ====================  ======================================================
empty           absent                error: unregistered, pass a key
empty           present               register with the key
set             present               error: already registered (the key is not consumed)
set             absent                connect
==============  ====================  ======================================================

A missing file is an empty state; keys are generated (and the state saved) before
the table is consulted, so a first run without a key still leaves a keypair.

**The hub it registered with** is kept beside it, in ``<data-dir>/hub.json`` (so that
``state.json`` stays exactly LeapMux's): ``{"hub_id", "hub_url", "registered_at"}``, 2-space
JSON, written atomically 0600 right after registration and before the credentials
(:func:`save_hub`, :func:`load_hub`; read strictly). ``registered_at`` is the UTC time of the
registration (``2026-12-05T08:15:00Z``), ``null`` when the record was made later, at a
greeting (a worker registered before hub ids were recorded, or whose hub moved).

**Retiring an identity** (:func:`retire_state`: the hub it registered with deregistered or
deleted it) deletes nothing: ``state.json`` and ``hub.json`` are renamed to
``state.json.deregistered-<UTC time>`` (``20261205T081500Z``) and
``hub.json.deregistered-<UTC time>``, mode 0600, so a mistake can be undone by renaming
them back.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import re
from pathlib import Path
from typing import Any, Final

import attrs

from ..crypto.keys import WorkerKeyPair
from ..errors import ConfigError, KeyFileError, LeapcoreError, StorageError
from .atomicfile import FILE_MODE, write_atomic

__all__ = [
    "ALREADY_REGISTERED",
    "HUB_FILE",
    "RETIRED_SUFFIX",
    "STATE_FILE",
    "UNREGISTERED",
    "HubRecord",
    "StartupAction",
    "WorkerState",
    "ensure_keys",
    "format_utc",
    "load_hub",
    "load_state",
    "retire_state",
    "save_hub",
    "save_state",
    "startup_action",
]

STATE_FILE: Final = "state.json"
#: The hub the worker registered with (beside ``state.json``, which stays LeapMux's).
HUB_FILE: Final = "hub.json"
#: A retired file is renamed to ``<name>.deregistered-<UTC time>``.
RETIRED_SUFFIX: Final = ".deregistered-"
#: ``hub.json``'s fields, in the order written.
_HUB_FIELDS: Final = ("hub_id", "hub_url", "registered_at")
#: A UTC time as ``registered_at`` holds it.
_UTC_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
#: The longest hub id accepted from ``hub.json`` (the link protocol's id limit).
_MAX_HUB_ID: Final = 128
#: LeapMux's order of the key fields in state.json.
_KEY_ORDER: Final = (
    "public_key",
    "private_key",
    "mlkem_public_key",
    "slhdsa_public_key",
    "slhdsa_private_key",
    "mlkem_private_key",
)
UNREGISTERED: Final = (
    "worker is unregistered: pass --registration-key <key> "
    "(mint one with `leapcore remote worker reg-key create`)"
)
ALREADY_REGISTERED: Final = (
    "worker is already registered; remove --registration-key or wipe local state to re-register"
)


@attrs.frozen(repr=False)
class WorkerState:
    worker_id: str = ""
    auth_token: str = ""
    keys: WorkerKeyPair | None = None

    @property
    def registered(self) -> bool:
        return bool(self.auth_token)

    def __repr__(self) -> str:  # never the token or private keys
        return f"WorkerState(worker_id={self.worker_id!r}, registered={self.registered})"


class StartupAction(enum.Enum):
    REGISTER = "register"
    CONNECT = "connect"


def startup_action(state: WorkerState, registration_key: str | None) -> StartupAction:
    """The decision table above; the two refusals raise :class:`ConfigError`."""
    has_key = bool(registration_key)
    if state.registered:
        if has_key:
            raise ConfigError(ALREADY_REGISTERED)
        return StartupAction.CONNECT
    if not has_key:
        raise ConfigError(UNREGISTERED)
    return StartupAction.REGISTER


def load_state(data_dir: Path) -> WorkerState:
    """Read ``state.json``; missing is empty; anything unreadable is :class:`KeyFileError`."""
    path = data_dir / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return WorkerState()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read worker state: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise KeyFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{path}: worker state must be a JSON object")
    ids = {}
    for name in ("worker_id", "auth_token"):
        value = data.pop(name, None)
        if not isinstance(value, str):
            raise KeyFileError(f"{path}: {name} must be a string")
        ids[name] = value
    if bool(ids["worker_id"]) != bool(ids["auth_token"]):
        raise KeyFileError(f"{path}: worker_id and auth_token must both be set or both be empty")
    keys = None
    if data:
        try:
            keys = WorkerKeyPair.from_json(data)
        except LeapcoreError as exc:
            raise KeyFileError(f"{path}: {exc}") from None
    if ids["auth_token"] and keys is None:
        raise KeyFileError(f"{path}: a registered worker's state must hold its keys")
    return WorkerState(ids["worker_id"], ids["auth_token"], keys)


def save_state(data_dir: Path, state: WorkerState) -> Path:
    """Write ``state.json`` atomically (0600 in a 0700 directory); returns its path."""
    document: dict[str, str] = {"worker_id": state.worker_id, "auth_token": state.auth_token}
    if state.keys is not None:
        keys = state.keys.to_json()
        document.update((name, keys[name]) for name in _KEY_ORDER)
    path = data_dir / STATE_FILE
    write_atomic(path, (json.dumps(document, indent=2) + "\n").encode("ascii"))
    return path


def ensure_keys(data_dir: Path, state: WorkerState) -> WorkerState:
    """Generate and save a keypair if the state has none (before any registration check)."""
    if state.keys is not None:
        return state
    state = attrs.evolve(state, keys=WorkerKeyPair.generate())
    save_state(data_dir, state)
    return state


# -- hub.json --------------------------------------------------------------------------------


def format_utc(when: dt.datetime) -> str:
    """``when`` as ``registered_at`` holds it: UTC, to the second (``2026-12-05T08:15:00Z``)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class HubRecord:
    """The hub a worker registered with (``hub.json``).

    ``hub_id`` is the hub's database id as it named itself in ``registered`` (``""``: a hub
    too old to name itself); ``hub_url`` the URL the worker last reached it at;
    ``registered_at`` the UTC registration time (:func:`format_utc`), ``None`` when the
    record was made at a later greeting.
    """

    hub_id: str
    hub_url: str
    registered_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"hub_id": self.hub_id, "hub_url": self.hub_url, "registered_at": self.registered_at}


def _hub_field_problem(name: str, value: object) -> str | None:
    if name == "registered_at":
        if value is None or (isinstance(value, str) and _UTC_TIME.fullmatch(value)):
            return None
        return "registered_at must be a UTC time like 2026-12-05T08:15:00Z, or null"
    if not isinstance(value, str):
        return f"{name} must be a string"
    if name == "hub_url" and not value.strip():
        return "hub_url must not be empty"
    if name == "hub_id" and (len(value) > _MAX_HUB_ID or not value.isprintable()):
        return f"hub_id must be printable and at most {_MAX_HUB_ID} characters"
    return None


def load_hub(data_dir: Path) -> HubRecord | None:
    """Read ``hub.json``: ``None`` when there is none (a worker never registered, or
    registered before hubs had ids); anything malformed is :class:`KeyFileError` naming the
    file and the problem (the file is left as it is)."""
    path = data_dir / HUB_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the hub record: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise KeyFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{path}: the hub record must be a JSON object")
    missing = [name for name in _HUB_FIELDS if name not in data]
    if missing:
        raise KeyFileError(f"{path}: the hub record lacks {', '.join(missing)}")
    unknown = sorted(set(data) - set(_HUB_FIELDS))
    if unknown:
        raise KeyFileError(f"{path}: unknown field(s) in the hub record: {', '.join(unknown)}")
    for name in _HUB_FIELDS:
        problem = _hub_field_problem(name, data[name])
        if problem is not None:
            raise KeyFileError(f"{path}: {problem}")
    return HubRecord(data["hub_id"], data["hub_url"], data["registered_at"])


def save_hub(data_dir: Path, record: HubRecord) -> Path:
    """Write ``hub.json`` atomically (0600 in a 0700 directory); returns its path."""
    for name, value in record.to_json().items():
        problem = _hub_field_problem(name, value)
        if problem is not None:
            raise ConfigError(f"hub record: {problem}")
    path = data_dir / HUB_FILE
    write_atomic(path, (json.dumps(record.to_json(), indent=2) + "\n").encode("utf-8"))
    return path


# -- retiring an identity ----------------------------------------------------------------------


def retire_state(data_dir: Path, now: dt.datetime | None = None) -> list[Path]:
    """Retire the worker's identity (deregistered or deleted by the hub it registered with),
    keeping a copy: ``state.json`` then ``hub.json`` are renamed to
    ``<name>.deregistered-<UTC time>`` (a number is appended should that name exist), mode
    0600, and the directory is flushed. Returns the new paths (of the files there were);
    :class:`StorageError` if a rename fails."""
    when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    moved: list[Path] = []
    for name in (STATE_FILE, HUB_FILE):
        source = data_dir / name
        if not source.exists():
            continue
        target = data_dir / f"{name}{RETIRED_SUFFIX}{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = data_dir / f"{name}{RETIRED_SUFFIX}{stamp}-{n}"
        try:
            os.rename(source, target)
            os.chmod(target, FILE_MODE)
        except OSError as exc:
            raise StorageError(
                f"{source}: cannot rename to {target}: {exc.strerror or exc}"
            ) from None
        moved.append(target)
    if moved:
        try:
            dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StorageError(f"{data_dir}: cannot flush: {exc.strerror or exc}") from None
    return moved
