"""The worker's state.json and its startup decision table."""

from __future__ import annotations

import datetime as dt
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
    HUB_FILE,
    STATE_FILE,
    UNREGISTERED,
    HubRecord,
    StartupAction,
    WorkerState,
    ensure_keys,
    format_utc,
    load_hub,
    load_state,
    retire_state,
    save_hub,
    save_state,
    startup_action,
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


WHEN = dt.datetime(2026, 12, 5, 8, 15, 0, 123456, tzinfo=dt.UTC)
HUB = HubRecord("0123456789abcdef", "http://127.0.0.1:4327", "2026-12-05T08:15:00Z")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_retire_keeps_a_renamed_copy_of_both_files(tmp_path: Path, keys: WorkerKeyPair) -> None:
    save_state(tmp_path, WorkerState("w", "t", keys))
    save_hub(tmp_path, HUB)
    state_bytes = (tmp_path / STATE_FILE).read_bytes()
    hub_bytes = (tmp_path / HUB_FILE).read_bytes()
    moved = retire_state(tmp_path, WHEN)
    assert moved == [
        tmp_path / "state.json.deregistered-20261205T081500Z",
        tmp_path / "hub.json.deregistered-20261205T081500Z",
    ]
    assert [path.read_bytes() for path in moved] == [state_bytes, hub_bytes]
    assert all(_mode(path) == 0o600 for path in moved)
    # The live identity is gone: the worker is unregistered, with no hub.
    assert load_state(tmp_path) == WorkerState()
    assert load_hub(tmp_path) is None
    # A second retirement in the same second never overwrites the first copy.
    save_state(tmp_path, WorkerState("w2", "t2", keys))
    again = retire_state(tmp_path, WHEN.astimezone(dt.timezone(dt.timedelta(hours=2))))
    assert again == [tmp_path / "state.json.deregistered-20261205T081500Z-2"]
    assert moved[0].read_bytes() == state_bytes
    assert retire_state(tmp_path) == []


def test_retire_without_hub_json(tmp_path: Path, keys: WorkerKeyPair) -> None:
    save_state(tmp_path, WorkerState("w", "t", keys))
    (tmp_path / STATE_FILE).chmod(0o644)  # a file written by LeapMux with another umask
    (moved,) = retire_state(tmp_path, WHEN)
    assert moved.name == "state.json.deregistered-20261205T081500Z"
    assert _mode(moved) == 0o600


def test_hub_json_round_trip_and_layout(tmp_path: Path) -> None:
    path = save_hub(tmp_path, HUB)
    assert path == tmp_path / HUB_FILE
    assert _mode(path) == 0o600
    text = path.read_text()
    assert list(json.loads(text)) == ["hub_id", "hub_url", "registered_at"]
    assert text.startswith('{\n  "hub_id": "') and text.endswith("}\n")
    assert load_hub(tmp_path) == HUB
    later = HubRecord("", "unix:/run/hub.sock", None)  # a hub too old to name itself
    save_hub(tmp_path, later)
    assert load_hub(tmp_path) == later
    assert json.loads((tmp_path / HUB_FILE).read_text())["registered_at"] is None
    assert format_utc(WHEN) == "2026-12-05T08:15:00Z"


def test_state_json_is_untouched_by_the_hub_record(tmp_path: Path, keys: WorkerKeyPair) -> None:
    """state.json keeps LeapMux's eight keys: the hub lives in its own file."""
    save_state(tmp_path, WorkerState("w" * 48, "t" * 48, keys))
    before = (tmp_path / STATE_FILE).read_bytes()
    save_hub(tmp_path, HUB)
    assert (tmp_path / STATE_FILE).read_bytes() == before
    assert list(json.loads(before)) == ORDER


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"hub_id": "h", "hub_url": "http://x"}', "lacks registered_at"),
        (b'{"hub_url": "http://x", "registered_at": null}', "lacks hub_id"),
        (
            b'{"hub_id": "h", "hub_url": "http://x", "registered_at": null, "extra": 1}',
            "unknown field(s) in the hub record: extra",
        ),
        (b'{"hub_id": 5, "hub_url": "http://x", "registered_at": null}', "hub_id must be a string"),
        (b'{"hub_id": "h", "hub_url": "", "registered_at": null}', "hub_url must not be empty"),
        (b'{"hub_id": "h", "hub_url": null, "registered_at": null}', "hub_url must be a string"),
        (b'{"hub_id": "h\\n", "hub_url": "http://x", "registered_at": null}', "printable"),
        (
            b'{"hub_id": "h", "hub_url": "http://x", "registered_at": "yesterday"}',
            "registered_at must be a UTC time",
        ),
        (
            b'{"hub_id": "h", "hub_url": "http://x", "registered_at": "2026-12-05T08:15:00+01:00"}',
            "registered_at must be a UTC time",
        ),
        (b'{"hub_id": "h", "hub_url": "http://x", "registered_at": 0}', "registered_at"),
    ],
)
def test_bad_hub_files_are_refused_and_untouched(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / HUB_FILE
    path.write_bytes(content)
    exc = expect(KeyFileError, "", load_hub, tmp_path)
    assert str(exc).startswith(f"{path}: ") and problem in str(exc), str(exc)
    assert path.read_bytes() == content


def test_save_hub_refuses_a_bad_record(tmp_path: Path) -> None:
    expect(ConfigError, "hub_url must not be empty", save_hub, tmp_path, HubRecord("h", "", None))
    expect(ConfigError, "registered_at", save_hub, tmp_path, HubRecord("h", "http://x", "now"))
    assert not (tmp_path / HUB_FILE).exists()


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
