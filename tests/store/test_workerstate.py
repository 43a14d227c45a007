"""The worker's state.json and its startup decision table."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from support.helpers import expect

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import ConfigError, KeyFileError
from leapcore.store.workerstate import (
    ALREADY_REGISTERED,
    UNREGISTERED,
    StartupAction,
    WorkerState,
    ensure_keys,
    load_state,
    save_state,
    startup_action,
    wipe_state,
)

ORDER = [
    "worker_id",
    "auth_token",
    "public_key",
    "private_key",
    "mlkem_public_key",
    "slhdsa_public_key",
    "slhdsa_private_key",
    "mlkem_private_key",
]


@pytest.fixture(scope="module")
def keys() -> WorkerKeyPair:
    return WorkerKeyPair.generate()


def test_decision_table(keys: WorkerKeyPair) -> None:
    fresh = WorkerState(keys=keys)
    registered = WorkerState("w" * 48, "t" * 48, keys)
    expect(ConfigError, f"^{re.escape(UNREGISTERED)}$", startup_action, fresh, None)
    expect(ConfigError, f"^{re.escape(UNREGISTERED)}$", startup_action, fresh, "")
    assert startup_action(fresh, "k" * 48) is StartupAction.REGISTER
    expect(ConfigError, f"^{re.escape(ALREADY_REGISTERED)}$", startup_action, registered, "k" * 48)
    assert startup_action(registered, None) is StartupAction.CONNECT


def test_messages_match_the_reference() -> None:
    assert UNREGISTERED == (
        "worker is unregistered: pass --registration-key <key> "
        "(mint one with `leapcore remote worker reg-key create`)"
    )
    assert ALREADY_REGISTERED == (
        "worker is already registered; remove --registration-key or wipe local state to re-register"
    )


def test_missing_state_is_empty_and_first_run_saves_keys(tmp_path: Path) -> None:
    data = tmp_path / "data"
    state = load_state(data)
    assert state == WorkerState() and not state.registered
    state = ensure_keys(data, state)
    assert state.keys is not None
    again = load_state(data)
    assert again.keys == state.keys and again.worker_id == ""
    # Keys are not regenerated once present.
    assert ensure_keys(data, again) is again
    assert stat.S_IMODE(os.stat(data / "state.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700


def test_state_json_layout(tmp_path: Path, keys: WorkerKeyPair) -> None:
    path = save_state(tmp_path, WorkerState("w" * 48, "t" * 48, keys))
    text = path.read_text()
    assert list(json.loads(text)) == ORDER
    assert text.startswith('{\n  "worker_id": "') and text.endswith("}\n")
    assert "owner" not in text and "registration" not in text
    assert load_state(tmp_path) == WorkerState("w" * 48, "t" * 48, keys)


def test_repr_hides_secrets(keys: WorkerKeyPair) -> None:
    text = repr(WorkerState("w1", "SECRET-TOKEN", keys))
    assert "SECRET-TOKEN" not in text and "registered=True" in text


def test_wipe(tmp_path: Path, keys: WorkerKeyPair) -> None:
    save_state(tmp_path, WorkerState("w", "t", keys))
    assert wipe_state(tmp_path) is True
    assert wipe_state(tmp_path) is False
    assert load_state(tmp_path) == WorkerState()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"auth_token": ""}', "worker_id must be a string"),
        (b'{"worker_id": "", "auth_token": 5}', "auth_token must be a string"),
        (b'{"worker_id": "w", "auth_token": ""}', "both be set or both be empty"),
        (b'{"worker_id": "w", "auth_token": "t"}', "must hold its keys"),
        (b'{"worker_id": "", "auth_token": "", "public_key": "AA=="}', "worker key material"),
    ],
)
def test_bad_state_files_are_refused_and_untouched(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    exc = expect(KeyFileError, "", load_state, tmp_path)
    assert str(exc).startswith(f"{path}: ") and problem in str(exc)
    assert path.read_bytes() == content
