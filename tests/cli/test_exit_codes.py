"""Exit codes by meaning: retry later (7) never shares a code with a broken protocol (5), a
key mismatch (6), a refusal (3, 8), a hub that does not know the worker (9) or a usage error
(2). The mapping for every error class, then every row of the table produced for real:
``leapcore`` and ``leapcore-worker`` processes against a solo hub on loopback."""

from __future__ import annotations

import inspect
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from support.procs import Env, env_fixture  # noqa: F401 (env_fixture: the fixture)
from support.solokit import start_solo

import leapcore.errors as errors
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import LeapcoreError
from leapcore.store.hubstore import SQLiteHubStore
from leapcore.store.pinstore import PinStore
from leapcore_cli import common
from leapcore_cli.common import (
    EXIT_CORRUPT_STATE,
    EXIT_ERROR,
    EXIT_HUB_MISMATCH,
    EXIT_KEY_MISMATCH,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_REFUSED,
    EXIT_TOKEN_EXPIRED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    exit_code_for,
)

CLASSES = [
    cls
    for cls in vars(errors).values()
    if inspect.isclass(cls) and issubclass(cls, LeapcoreError) and cls.__module__ == errors.__name__
]


def _instance(cls: type[LeapcoreError], reason: str = "some_code") -> LeapcoreError:
    """An instance of ``cls`` whatever its constructor; reason-carrying ones get ``reason``."""
    error = cls.__new__(cls)
    LeapcoreError.__init__(error, "message")
    for attribute in ("reason", "hub_code", "remote_code", "error_code"):
        setattr(error, attribute, reason)
    return error


def _expected(cls: type[LeapcoreError]) -> int:
    if issubclass(cls, errors.KeyMismatch):
        return EXIT_KEY_MISMATCH
    if issubclass(cls, errors.RemoteProtocolError):
        return EXIT_PROTOCOL
    if issubclass(cls, errors.NotFound):
        return EXIT_NOT_FOUND
    if issubclass(cls, errors.HubMismatch):
        return EXIT_HUB_MISMATCH
    if issubclass(cls, errors.WorkerBusy):  # refused for now: retry later
        return EXIT_UNAVAILABLE
    if issubclass(cls, errors.TokenExpired):
        return EXIT_TOKEN_EXPIRED
    if issubclass(cls, errors.Refused):
        return EXIT_REFUSED
    if issubclass(cls, errors.Unavailable):
        return EXIT_UNAVAILABLE
    if issubclass(cls, (errors.KeyFileError, errors.PinStoreError)):
        return EXIT_CORRUPT_STATE
    if issubclass(cls, errors.ConfigError):
        return EXIT_USAGE
    return EXIT_ERROR


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_exits_by_its_branch(cls: type[LeapcoreError]) -> None:
    assert exit_code_for(_instance(cls)) == _expected(cls)


def test_retry_never_shares_a_code_with_attack_refusal_or_usage() -> None:
    by_meaning: dict[str, set[int]] = {"retry": set(), "other": set()}
    for cls in CLASSES:
        code = exit_code_for(_instance(cls))
        retry = issubclass(cls, (errors.Unavailable, errors.WorkerBusy))
        by_meaning["retry" if retry else "other"].add(code)
    assert by_meaning["retry"] == {EXIT_UNAVAILABLE}
    assert EXIT_UNAVAILABLE not in by_meaning["other"]
    assert {
        EXIT_PROTOCOL,
        EXIT_KEY_MISMATCH,
        EXIT_REFUSED,
        EXIT_NOT_FOUND,
        EXIT_HUB_MISMATCH,
        EXIT_USAGE,
    } <= by_meaning["other"]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.ChannelOpenFailed("handshake_failed", "worker rejected channel"), EXIT_PROTOCOL),
        (errors.ChannelOpenFailed("permission_denied", "no"), EXIT_REFUSED),
        (errors.ChannelLost("decrypt_failed", "frame failed authentication"), EXIT_PROTOCOL),
        (errors.ChannelLost("link_lost", "the link to the hub ended"), EXIT_UNAVAILABLE),
        (errors.HubRequestFailed("unexpected_message", "bad record"), EXIT_PROTOCOL),
        (errors.HubRequestFailed("internal", "hub storage error"), EXIT_REFUSED),
    ],
)
def test_a_reported_protocol_failure_exits_5(error: LeapcoreError, code: int) -> None:
    assert exit_code_for(error) == code


# -- real processes --------------------------------------------------------------------------

#: Every exit code of ``leapcore_cli.common`` and what makes it happen for real in
#: :func:`test_each_outcome_has_its_exit_code` (which checks that it ran every one).
ROWS: dict[int, str] = {
    EXIT_OK: "a worker list",
    EXIT_ERROR: "`leapcore demo` with a data directory that cannot be made",
    EXIT_USAGE: "no --worker; no hub named anywhere",
    EXIT_NOT_FOUND: "an unknown worker",
    EXIT_CORRUPT_STATE: "saved credentials that are not JSON",
    EXIT_PROTOCOL: "a hub that hands out other keys for the worker, on first contact",
    EXIT_KEY_MISMATCH: "the hub's keys, once right again, against that pin",
    EXIT_UNAVAILABLE: "nothing listening where the hub should be; a worker offline",
    EXIT_REFUSED: "a token the hub refuses; a worker that never reported its keys",
    EXIT_HUB_MISMATCH: "a worker whose token the hub does not know",
    EXIT_TOKEN_EXPIRED: "an API token past its expiry",
}


def test_every_exit_code_has_a_row() -> None:
    codes = {
        value
        for name, value in vars(common).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert set(ROWS) == codes


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Outcomes:
    """Checks a command's exit code (and its ``--json`` error code), noting each code seen."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def exits(self, proc: Any, exit_code: int, error_code: str | None = None) -> str:
        """The ``--json`` error document's message ("" without ``error_code``)."""
        assert proc.returncode == exit_code, (proc.returncode, proc.stdout, proc.stderr)
        self.seen.add(exit_code)
        if error_code is None:
            return ""
        error = json.loads(proc.stdout)["error"]
        assert error["code"] == error_code, error
        return str(error["message"])


def test_each_outcome_has_its_exit_code(env: Env) -> None:
    url, worker_id, _ = start_solo(env, "solo")
    host = f"127.0.0.1_{url.rsplit(':', 1)[1]}"
    check = Outcomes()
    store = SQLiteHubStore(env.hub_dir / "hub.db", create=False)
    try:
        real = store.get_worker(worker_id).keys
        assert real is not None

        # Success (0).
        listed = env.remote("worker", "list", "--json")
        check.exits(listed, EXIT_OK)
        assert [w["id"] for w in json.loads(listed.stdout)["workers"]] == [worker_id]

        # A local failure (1): the demo's data directory cannot be made.
        blocker = env.tmp / "file"
        blocker.write_text("not a directory")
        proc = env.run("leapcore", "demo", "--once", "--data-dir", str(blocker / "sub"))
        check.exits(proc, EXIT_ERROR)
        assert proc.stderr.startswith("error: ") and str(blocker / "sub") in proc.stderr

        # Usage (2): no worker named; no hub named (and none saved).
        proc = env.remote("worker", "info", "--json")
        assert "--worker is required" in check.exits(proc, EXIT_USAGE, "usage")
        proc = env.run("leapcore", "remote", "worker", "list", "--json")
        assert check.exits(proc, EXIT_USAGE, "usage").startswith("no hub: pass --hub URL")

        # Corrupt local state (4): the saved credentials are not JSON.
        broken = env.tmp / "broken-config"
        broken.mkdir(mode=0o700)
        (broken / f"{host}.json").write_text("{")
        proc = env.run("leapcore", "remote", "worker", "list", "--json",
                       LEAPCORE_HUB=url, LEAPCORE_CONFIG_DIR=str(broken))  # fmt: skip
        assert "not valid JSON" in check.exits(proc, EXIT_CORRUPT_STATE, "key_file_error")

        # Unavailable (7): nothing listens where the hub should be.
        proc = env.run("leapcore", "remote", "worker", "list", "--json", "--token", "t",
                       "--hub", f"http://127.0.0.1:{_closed_port()}")  # fmt: skip
        assert "cannot reach the hub" in check.exits(proc, EXIT_UNAVAILABLE, "link_closed")

        # Refused (8): a token the hub does not accept.
        proc = env.run("leapcore", "remote", "worker", "list", "--json",
                       LEAPCORE_HUB=url, LEAPCORE_TOKEN="not-a-token")  # fmt: skip
        check.exits(proc, EXIT_REFUSED, "unauthenticated")

        # A token past its expiry (10): one made 91 days ago lived 90.
        old = store.create_token(store.list_users()[0].id, _now_ms() - 91 * 86_400_000)
        proc = env.run("leapcore", "remote", "worker", "list", "--json",
                       LEAPCORE_HUB=url, LEAPCORE_TOKEN=old)  # fmt: skip
        assert check.exits(proc, EXIT_TOKEN_EXPIRED, "token_expired").startswith(
            "API token expired on "
        )

        # Not found (3): an unknown worker.
        proc = env.remote("worker", "info", "--worker", "no-such-worker", "--json")
        check.exits(proc, EXIT_NOT_FOUND, "not_found")

        # A worker registered behind the solo one's back, never connected.
        owner = store.get_user("solo").id
        _, key = store.mint_registration_key(owner, _now_ms())
        offline, _ = store.register_worker(
            key, name="away", version="1.0", labels={}, now_ms=_now_ms()
        )
        # Refused (8): its keys were never reported.
        proc = env.remote("worker", "info", "--worker", offline.id, "--json")
        check.exits(proc, EXIT_REFUSED, "failed_precondition")
        # Unavailable (7): keys known, but it holds no link.
        store.record_heartbeat(offline.id, _now_ms(), keys=WorkerKeyPair.generate().public)
        proc = env.remote("worker", "ping", "--worker", "away", "--json")
        check.exits(proc, EXIT_UNAVAILABLE, "worker_offline")

        # The hub does not know this worker (9): the solo worker's files, with a token the
        # hub never issued. Nothing is changed.
        stranger = _stranger_worker(env.hub_dir / "solo-worker", env.tmp / "stranger")
        before = {p.name: p.read_bytes() for p in stranger.iterdir()}
        proc = env.run("leapcore-worker", "run", "--hub", url, "--data-dir", str(stranger))
        check.exits(proc, EXIT_HUB_MISMATCH)
        assert "does not know this worker" in proc.stderr
        assert {p.name: p.read_bytes() for p in stranger.iterdir()} == before

        # Broken protocol (5): on first contact the hub hands out other keys for the solo
        # worker; the pin takes them, and the real worker cannot complete the handshake.
        impostor = WorkerKeyPair.generate().public
        store.record_heartbeat(worker_id, _now_ms(), keys=impostor)
        proc = env.remote("worker", "info", "--worker", worker_id, "--json")
        message = check.exits(proc, EXIT_PROTOCOL, "channel_open_failed")
        assert message.startswith("handshake_failed: "), message

        # Key mismatch (6): the hub reports the real keys again, which differ from that pin.
        store.record_heartbeat(worker_id, _now_ms(), keys=real)
        proc = env.remote("worker", "ping", "--worker", worker_id, "--json")
        check.exits(proc, EXIT_KEY_MISMATCH, "key_mismatch")
        pins = PinStore(env.config / host / "pins.json")
        pinned = pins.get(worker_id)
        assert pinned is not None and pinned.fingerprint == impostor.fingerprint
    finally:
        store.close()
    assert check.seen == set(ROWS), sorted(set(ROWS) - check.seen)


def _stranger_worker(source: Path, target: Path) -> Path:
    """A copy of a registered worker's data directory with a token no hub issued."""
    shutil.copytree(source, target)
    state_file = target / "state.json"
    state = json.loads(state_file.read_text())
    state["auth_token"] = "x" * len(state["auth_token"])
    state_file.write_text(json.dumps(state, indent=2) + "\n")
    state_file.chmod(0o600)
    return target
