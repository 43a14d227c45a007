"""A worker's identity on disk (``<data-dir>/state.json``) and what it may do at startup.

``state.json`` is 2-space JSON with LeapMux's keys, in this order:
``worker_id``, ``auth_token`` (both always present, possibly ``""``), then the
six key fields of :mod:`leapcore.crypto.keys` (standard base64). It has no owner field
(the hub names the owner on every connect) and never holds a registration key.
It is written atomically, mode 0600, in a 0700 directory.

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
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Final

import attrs

from ..crypto.keys import WorkerKeyPair
from ..errors import ConfigError, KeyFileError, LeapcoreError
from .atomicfile import write_atomic

__all__ = [
    "ALREADY_REGISTERED",
    "STATE_FILE",
    "UNREGISTERED",
    "StartupAction",
    "WorkerState",
    "ensure_keys",
    "load_state",
    "save_state",
    "startup_action",
    "wipe_state",
]

STATE_FILE: Final = "state.json"
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


def wipe_state(data_dir: Path) -> bool:
    """Delete ``state.json`` (a deregistered or deleted worker); False if there was none."""
    try:
        (data_dir / STATE_FILE).unlink()
    except FileNotFoundError:
        return False
    return True
