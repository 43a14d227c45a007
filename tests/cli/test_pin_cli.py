"""``leapcore remote worker pins`` and ``leapcore-worker cross-worker-pins``, run as real
subprocesses with HOME and the config directory pointed at temporary directories."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.procs import script

from leapcore.crypto.keys import PublicKeyBundle
from leapcore.crypto.primitives import (
    MLKEM_PUBLIC_KEY_SIZE,
    SLHDSA_PUBLIC_KEY_SIZE,
    X25519_KEY_SIZE,
)
from leapcore.errors import KeyMismatch
from leapcore.store.pinstore import PinStore
from leapcore_cli.remote import client_pin_store
from leapcore_cli.worker import cross_worker_store

T1 = dt.datetime(2026, 3, 1, 12, 0, 0, 125_000, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
HUB = "https://hub.example.com:8443"


def bundle(n: int) -> PublicKeyBundle:
    def key(label: str, size: int) -> bytes:
        return hashlib.shake_256(f"{label}{n}".encode()).digest(size)

    return PublicKeyBundle(
        key("x", X25519_KEY_SIZE), key("m", MLKEM_PUBLIC_KEY_SIZE), key("s", SLHDSA_PUBLIC_KEY_SIZE)
    )


class Env:
    """A child environment with its own HOME and config dir, and nothing LEAPCORE_* leaking in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.config = root / "config"
        self.home.mkdir()
        self.vars = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("LEAPCORE_") and k != "XDG_CONFIG_HOME"
        }
        self.vars.update(HOME=str(self.home), LEAPCORE_CONFIG_DIR=str(self.config))

    def run(self, name: str, *args: str, **extra: str | None) -> subprocess.CompletedProcess[str]:
        env = dict(self.vars)
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return subprocess.run(
            [script(name), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
            cwd=self.root,
        )

    def pins(self, *args: str, **extra: str | None) -> subprocess.CompletedProcess[str]:
        return self.run("leapcore", "remote", "worker", "pins", *args, **extra)

    def cross(self, *args: str, **extra: str | None) -> subprocess.CompletedProcess[str]:
        return self.run("leapcore-worker", "cross-worker-pins", *args, **extra)

    def hub_store(self, hub: str = HUB) -> Path:
        from leapcore.store.paths import client_pins_path

        return client_pins_path({"LEAPCORE_CONFIG_DIR": str(self.config)}, self.home, hub)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def json_doc(proc: subprocess.CompletedProcess[str], code: int) -> Any:
    """Exactly one JSON document on stdout, nothing on stderr, the expected exit code."""
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert proc.stderr == ""
    return json.loads(proc.stdout)  # fails on anything after the document


def seed(path: Path) -> None:
    """w-alpha (first seen T1, used an hour later) and beta-worker-long-id (seen at T1+2h)."""
    now = [T1]
    store = PinStore(path, clock=lambda: now[0])
    store.verify("w-alpha", bundle(0))
    now[0] = T1 + 2 * HOUR
    store.verify("beta-worker-long-id", bundle(1))
    now[0] = T1 + HOUR
    store.verify("w-alpha", bundle(0))  # a match more than 10 minutes later: persisted


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


# -- leapcore remote worker pins: reading -------------------------------------------------------


def test_list_human(env: Env) -> None:
    path = env.hub_store()
    seed(path)
    proc = env.pins("list", "--hub", HUB)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    fa, fb = bundle(0).fingerprint, bundle(1).fingerprint
    assert proc.stdout == (
        "WORKER ID            FINGERPRINT          FIRST SEEN            LAST USED\n"
        f"beta-worker-long-id  {fb}  2026-03-01 14:00:00Z  2026-03-01 14:00:00Z\n"
        f"w-alpha              {fa}  2026-03-01 12:00:00Z  2026-03-01 13:00:00Z\n"
    )


def test_list_json(env: Env) -> None:
    path = env.hub_store()
    seed(path)
    doc = json_doc(env.pins("list", "--hub", HUB, "--json"), 0)
    assert doc == {
        "store": str(env.config / "hub.example.com_8443" / "pins.json"),
        "pins": [
            {
                "worker_id": "beta-worker-long-id",
                "fingerprint": bundle(1).fingerprint,
                "first_seen_at": "2026-03-01T14:00:00.125000Z",
                "last_used_at": "2026-03-01T14:00:00.125000Z",
                "classic_only": False,
            },
            {
                "worker_id": "w-alpha",
                "fingerprint": bundle(0).fingerprint,
                "first_seen_at": "2026-03-01T12:00:00.125000Z",
                "last_used_at": "2026-03-01T13:00:00.125000Z",
                "classic_only": False,
            },
        ],
    }


def test_list_of_an_empty_store_creates_nothing(env: Env) -> None:
    path = env.hub_store()
    proc = env.pins("list", "--hub", HUB)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"no pins recorded in {path}\n", "")
    assert json_doc(env.pins("list", "--hub", HUB, "--json"), 0) == {
        "store": str(path),
        "pins": [],
    }
    assert not env.config.exists()


def test_show_human(env: Env) -> None:
    path = env.hub_store()
    seed(path)
    keys = bundle(0)
    proc = env.pins("show", "--hub", HUB, "--worker-id", "w-alpha")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == (
        "worker id     w-alpha\n"
        f"fingerprint   {keys.fingerprint}\n"
        "first seen    2026-03-01T12:00:00.125000Z\n"
        "last used     2026-03-01T13:00:00.125000Z\n"
        f"x25519 key       32 bytes  blake2b-256 {digest(keys.x25519)}\n"
        f"mlkem key      1568 bytes  blake2b-256 {digest(keys.mlkem)}\n"
        f"slhdsa key       64 bytes  blake2b-256 {digest(keys.slhdsa)}\n"
        f"store         {path}\n"
    )


def test_show_json(env: Env) -> None:
    path = env.hub_store()
    seed(path)
    keys = bundle(1)
    doc = json_doc(env.pins("show", "--hub", HUB, "--worker-id=beta-worker-long-id", "--json"), 0)

    def key(data: bytes) -> dict[str, Any]:
        return {
            "size": len(data),
            "blake2b_256": digest(data),
            "base64": base64.b64encode(data).decode(),
        }

    assert doc == {
        "store": str(path),
        "pin": {
            "worker_id": "beta-worker-long-id",
            "fingerprint": keys.fingerprint,
            "first_seen_at": "2026-03-01T14:00:00.125000Z",
            "last_used_at": "2026-03-01T14:00:00.125000Z",
            "classic_only": False,
            "keys": {
                "x25519": key(keys.x25519),
                "mlkem": key(keys.mlkem),
                "slhdsa": key(keys.slhdsa),
            },
        },
    }


def test_show_a_classic_only_pin(env: Env) -> None:
    path = env.hub_store()
    path.parent.mkdir(parents=True)
    x = bundle(2).x25519
    entry = {
        "x25519_public_key": base64.b64encode(x).decode(),
        "mlkem_public_key": "",
        "slhdsa_public_key": "",
        "first_seen_at": "2025-06-01T08:00:00.123456789Z",
        "last_used_at": "2025-06-02T08:00:00Z",
    }
    path.write_text(json.dumps({"pins": {"old": entry}}))
    proc = env.pins("show", "--hub", HUB, "--worker-id", "old")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2:8] == [
        "first seen    2025-06-01T08:00:00.123456Z",
        "last used     2025-06-02T08:00:00.000000Z",
        "note          classic-only pin: post-quantum keys not recorded yet",
        f"x25519 key       32 bytes  blake2b-256 {digest(x)}",
        f"mlkem key         0 bytes  blake2b-256 {digest(b'')}",
        f"slhdsa key        0 bytes  blake2b-256 {digest(b'')}",
    ]
    doc = json_doc(env.pins("show", "--hub", HUB, "--worker-id", "old", "--json"), 0)
    assert doc["pin"]["classic_only"] is True
    assert doc["pin"]["keys"]["mlkem"] == {"size": 0, "blake2b_256": digest(b""), "base64": ""}


def test_show_of_an_unknown_id_is_not_found(env: Env) -> None:
    path = env.hub_store()
    seed(path)
    proc = env.pins("show", "--hub", HUB, "--worker-id", "ghost")
    message = f"no pin recorded for worker ghost in {path}"
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", f"error: {message}\n")
    doc = json_doc(env.pins("show", "--hub", HUB, "--worker-id", "ghost", "--json"), 3)
    assert doc == {"error": {"code": "not_found", "message": message}}


# -- remove --------------------------------------------------------------------------------------


def test_remove_human_is_idempotent(env: Env) -> None:
    path = env.hub_store()
    seed(path)
    proc = env.pins("remove", "--hub", HUB, "--worker-id", "w-alpha")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"removed the pin for worker w-alpha from {path}\n"
    assert sorted(PinStore(path).load()) == ["beta-worker-long-id"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before = snapshot(path)
    proc = env.pins("remove", "--hub", HUB, "--worker-id", "w-alpha")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"no pin recorded for worker w-alpha in {path}; nothing removed\n"
    assert snapshot(path) == before


def test_remove_json(env: Env) -> None:
    path = env.hub_store()
    seed(path)
    args = ("remove", "--hub", HUB, "--worker-id", "beta-worker-long-id", "--json")
    assert json_doc(env.pins(*args), 0) == {
        "store": str(path),
        "worker_id": "beta-worker-long-id",
        "removed": True,
    }
    assert json_doc(env.pins(*args), 0) == {
        "store": str(path),
        "worker_id": "beta-worker-long-id",
        "removed": False,
    }
    assert sorted(PinStore(path).load()) == ["w-alpha"]


def test_remove_from_a_store_that_does_not_exist_touches_nothing(env: Env) -> None:
    proc = env.pins("remove", "--hub", "https://typo.example", "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("; nothing removed\n")
    assert not env.config.exists()


# -- where the store is: flags, environment, URLs ----------------------------------------------


def test_hub_and_worker_id_from_the_environment(env: Env) -> None:
    seed(env.hub_store())
    other = "http://other:1"
    seed(env.hub_store(other))
    PinStore(env.hub_store(other)).remove("w-alpha")
    doc = json_doc(env.pins("show", "--json", LEAPCORE_HUB=HUB, LEAPCORE_WORKER_ID="w-alpha"), 0)
    assert (doc["store"], doc["pin"]["worker_id"]) == (str(env.hub_store()), "w-alpha")
    # Flags win over the environment.
    doc = json_doc(
        env.pins(
            "show",
            "--hub",
            other,
            "--worker-id",
            "beta-worker-long-id",
            "--json",
            LEAPCORE_HUB=HUB,
            LEAPCORE_WORKER_ID="w-alpha",
        ),
        0,
    )
    assert (doc["store"], doc["pin"]["worker_id"]) == (
        str(env.config / "other_1" / "pins.json"),
        "beta-worker-long-id",
    )
    proc = env.pins("remove", LEAPCORE_HUB=other, LEAPCORE_WORKER_ID="w-alpha")
    assert proc.stdout.endswith("; nothing removed\n")  # removed from `other` earlier
    assert "w-alpha" in PinStore(env.hub_store()).load()


def test_missing_hub_is_a_usage_error(env: Env) -> None:
    proc = env.pins("list")
    assert (proc.returncode, proc.stdout) == (2, "")
    no_hub = (
        "no hub: pass --hub URL (or set LEAPCORE_HUB), or run "
        "`leapcore remote login --hub URL` once to make it the default"
    )
    assert proc.stderr.splitlines()[-1] == f"leapcore remote worker pins list: error: {no_hub}"
    assert json_doc(env.pins("list", "--json"), 2) == {
        "error": {"code": "usage", "message": no_hub}
    }
    assert env.pins("list", LEAPCORE_HUB="").returncode == 2  # empty counts as unset


@pytest.mark.parametrize("verb", ["show", "remove"])
def test_missing_worker_id_is_a_usage_error(env: Env, verb: str) -> None:
    proc = env.pins(verb, "--hub", HUB)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines()[-1] == (
        f"leapcore remote worker pins {verb}: error: --worker is required for {verb} "
        "(or set LEAPCORE_WORKER)"
    )
    assert json_doc(env.pins(verb, "--hub", HUB, "--json"), 2) == {
        "error": {
            "code": "usage",
            "message": f"--worker is required for {verb} (or set LEAPCORE_WORKER)",
        }
    }


def test_a_hub_url_without_a_host_is_a_usage_error(env: Env) -> None:
    proc = env.pins("list", "--hub", "http:///no-host")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "error: hub URL 'http:///no-host' has no host\n"
    doc = json_doc(env.pins("list", "--json", LEAPCORE_HUB="https://:8443"), 2)
    assert doc == {
        "error": {"code": "config_error", "message": "hub URL 'https://:8443' has no host"}
    }
    assert not env.config.exists()


def test_unix_socket_hub_urls(env: Env) -> None:
    hub = "unix:/run/leapcore/hub.sock"
    expected = env.config / "unix__run_leapcore_hub.sock" / "pins.json"
    seed(expected)
    doc = json_doc(env.pins("list", "--hub", hub, "--json"), 0)
    assert doc["store"] == str(expected)
    assert [p["worker_id"] for p in doc["pins"]] == ["beta-worker-long-id", "w-alpha"]


def test_config_dir_falls_back_to_xdg_then_home(env: Env) -> None:
    xdg = env.root / "xdg"
    doc = json_doc(
        env.pins(
            "list", "--hub", HUB, "--json", LEAPCORE_CONFIG_DIR=None, XDG_CONFIG_HOME=str(xdg)
        ),
        0,
    )
    assert doc["store"] == str(xdg / "leapcore" / "hub.example.com_8443" / "pins.json")
    doc = json_doc(env.pins("list", "--hub", HUB, "--json", LEAPCORE_CONFIG_DIR=None), 0)
    assert doc["store"] == str(
        env.home / ".config" / "leapcore" / "hub.example.com_8443" / "pins.json"
    )


# -- bad stores ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("list",), ("show", "--worker-id", "w-alpha"), ("remove", "--worker-id", "w-alpha")],
    ids=["list", "show", "remove"],
)
def test_a_corrupt_store_exits_4_and_is_left_alone(env: Env, args: tuple[str, ...]) -> None:
    path = env.hub_store()
    seed(path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # as a careless editor or a full disk might
    before = snapshot(path)
    proc = env.pins(*args, "--hub", HUB)
    assert (proc.returncode, proc.stdout) == (4, "")
    assert re.fullmatch(
        rf"error: {re.escape(str(path))}: corrupt pin store: not valid JSON \(.+\)\n",
        proc.stderr,
    ), proc.stderr
    doc = json_doc(env.pins(*args, "--hub", HUB, "--json"), 4)
    assert doc["error"]["code"] == "pin_store_corrupt"
    assert doc["error"]["message"] == proc.stderr.removeprefix("error: ").rstrip("\n")
    assert snapshot(path) == before


def test_a_wrong_type_store_names_the_problem(env: Env) -> None:
    path = env.hub_store()
    path.parent.mkdir(parents=True)
    path.write_text('{"pins": []}')
    proc = env.pins("list", "--hub", HUB)
    assert proc.returncode == 4
    assert proc.stderr == (
        f"error: {path}: corrupt pin store: invalid pin file: field 'pins': expected dict, "
        "got list\n"
    )
    assert path.read_text() == '{"pins": []}'


def test_an_unreadable_store_exits_4(env: Env) -> None:
    path = env.hub_store()
    path.mkdir(parents=True)  # a directory where the file should be: reading it fails
    doc = json_doc(env.pins("list", "--hub", HUB, "--json"), 4)
    assert doc == {
        "error": {
            "code": "pin_store_error",
            "message": f"{path}: cannot read pin store: Is a directory",
        }
    }
    proc = env.pins("remove", "--hub", HUB, "--worker-id", "w1")
    assert (proc.returncode, proc.stderr) == (
        4,
        f"error: {path}: cannot read pin store: Is a directory\n",
    )


# -- leapcore-worker cross-worker-pins -----------------------------------------------------------


def test_worker_default_data_dir_is_under_home(env: Env) -> None:
    path = env.home / ".config" / "leapcore" / "worker" / "cross_worker_pins.json"
    seed(path)
    doc = json_doc(env.cross("list", "--json"), 0)
    assert doc["store"] == str(path)
    assert [p["worker_id"] for p in doc["pins"]] == ["beta-worker-long-id", "w-alpha"]


def test_worker_data_dir_flag_env_and_config_file(env: Env) -> None:
    from_flag, from_env = env.root / "flag", env.root / "env"
    config_dir = env.root / "etc"
    config_dir.mkdir()
    config = config_dir / "worker.toml"
    config.write_text('data_dir = "state"\n')
    for where in (from_flag, from_env, config_dir / "state"):
        seed(where / "cross_worker_pins.json")
        PinStore(where / "cross_worker_pins.json").remove("w-alpha")
        PinStore(where / "cross_worker_pins.json").verify(where.name, bundle(3))

    def store_of(*args: str, **extra: str | None) -> str:
        doc = json_doc(env.cross("list", "--json", *args, **extra), 0)
        assert sorted(p["worker_id"] for p in doc["pins"]) == sorted(
            ["beta-worker-long-id", Path(doc["store"]).parent.name]
        )
        return str(Path(doc["store"]).parent)

    # --config with a relative data_dir: against the config file's directory (not the cwd).
    assert store_of("--config", str(config)) == str(config_dir / "state")
    # Relative --config: resolved from the cwd (env.root), then as above.
    assert store_of("--config", "etc/worker.toml") == str(config_dir / "state")
    # The environment beats the file; the flag beats both.
    env_var = {"LEAPCORE_WORKER_DATA_DIR": str(from_env)}
    assert store_of("--config", str(config), **env_var) == str(from_env)
    assert store_of("--config", str(config), "--data-dir", str(from_flag), **env_var) == str(
        from_flag
    )
    # The default config file is read when there is no --config.
    default = env.home / ".config" / "leapcore" / "worker" / "worker.toml"
    default.parent.mkdir(parents=True)
    default.write_text(f'data_dir = "{from_env}"\n')
    assert store_of() == str(from_env)
    # LEAPCORE_WORKER_ID belongs to the remote CLI: the worker ignores it.
    assert store_of(LEAPCORE_WORKER_ID="w-alpha") == str(from_env)


def test_worker_show_and_remove(env: Env) -> None:
    data = env.root / "data"
    path = data / "cross_worker_pins.json"
    seed(path)
    proc = env.cross("show", "--data-dir", str(data), "--target-worker-id", "w-alpha")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "worker id     w-alpha"
    assert proc.stdout.splitlines()[-1] == f"store         {path}"
    proc = env.cross("remove", "--data-dir", str(data), "--target-worker-id=w-alpha")
    assert (proc.returncode, proc.stdout) == (
        0,
        f"removed the pin for worker w-alpha from {path}\n",
    )
    doc = json_doc(
        env.cross("remove", "--data-dir", str(data), "--target-worker-id=w-alpha", "--json"), 0
    )
    assert doc == {"store": str(path), "worker_id": "w-alpha", "removed": False}
    doc = json_doc(
        env.cross("show", "--data-dir", str(data), "--target-worker-id=w-alpha", "--json"), 3
    )
    assert doc == {
        "error": {"code": "not_found", "message": f"no pin recorded for worker w-alpha in {path}"}
    }


@pytest.mark.parametrize("verb", ["show", "remove"])
def test_worker_target_id_is_required(env: Env, verb: str) -> None:
    proc = env.cross(verb, LEAPCORE_WORKER_ID="w-alpha")  # not a default for this command
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines()[-1] == (
        f"leapcore-worker cross-worker-pins {verb}: error: "
        f"--target-worker-id is required for {verb}"
    )


def test_worker_bad_config_is_a_usage_error(env: Env) -> None:
    missing = env.root / "missing.toml"
    doc = json_doc(env.cross("list", "--config", str(missing), "--json"), 2)
    assert doc == {"error": {"code": "config_error", "message": f"{missing}: no such config file"}}
    bad = env.root / "bad.toml"
    bad.write_text("data_dir = 5\n")
    proc = env.cross("list", "--config", str(bad))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"error: {bad}: setting 'data_dir' must be str, got int\n"


def test_worker_corrupt_store_exits_4(env: Env) -> None:
    data = env.root / "data"
    data.mkdir()
    path = data / "cross_worker_pins.json"
    path.write_text("[]")
    proc = env.cross("list", "--data-dir", str(data))
    assert (proc.returncode, proc.stdout) == (4, "")
    assert (
        proc.stderr
        == f"error: {path}: corrupt pin store: pin file must be a JSON object, got list\n"
    )
    assert path.read_text() == "[]"


# -- the mismatch hint is a command that works ---------------------------------------------------


def _run_hint(env: Env, exc: KeyMismatch) -> subprocess.CompletedProcess[str]:
    m = re.fullmatch(r"worker .+ key mismatch \u2014 .*`([^`]+)`", str(exc))
    assert m, str(exc)
    argv = shlex.split(m.group(1))
    return env.run(*argv)


def test_remote_hint_names_the_command_that_clears_the_pin(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(env.home))
    monkeypatch.setenv("LEAPCORE_CONFIG_DIR", str(env.config))
    for hub, worker_id in ((HUB, "w-alpha"), ("unix:/run/my hub.sock", "id with space")):
        args = argparse.Namespace(hub=hub, parser_error=pytest.fail)
        store = client_pin_store(args)
        store.verify(worker_id, bundle(0))
        store.verify("bystander", bundle(1))
        with pytest.raises(KeyMismatch) as info:
            store.verify(worker_id, bundle(5))
        assert str(info.value) == (
            f"worker {worker_id} key mismatch \u2014 clear with `leapcore remote worker pins "
            f"remove --hub {shlex.quote(hub)} --worker-id={shlex.quote(worker_id)}`"
        )
        proc = _run_hint(env, info.value)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"removed the pin for worker {worker_id} from {store.path}\n"
        assert sorted(store.load()) == ["bystander"]
        assert store.verify(worker_id, bundle(5)).outcome.value == "new"


def test_worker_hint_names_the_command_that_clears_the_pin(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(env.home))
    data = env.root / "my data {dir}"
    args = argparse.Namespace(data_dir=str(data), config=None)
    store = cross_worker_store(args)
    assert store.path == data / "cross_worker_pins.json"
    store.verify("sibling", bundle(0))
    with pytest.raises(KeyMismatch) as info:
        store.verify("sibling", bundle(7))
    assert info.value.hint == (
        "pin previously recorded; clear with `leapcore-worker cross-worker-pins remove "
        f"--data-dir '{data}' --target-worker-id=sibling`"
    )
    proc = _run_hint(env, info.value)
    assert (proc.returncode, proc.stdout) == (
        0,
        f"removed the pin for worker sibling from {store.path}\n",
    )
    assert store.load() == {}
