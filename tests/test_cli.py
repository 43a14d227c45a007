"""The three console scripts, run as real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import leapcore
from leapcore.keyfile import load_keypair

SCRIPTS = ["leapcore", "leapcore-hub", "leapcore-worker"]


def _script(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"console script {name} is not installed"
    return found


def run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_script(name), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_version(name: str) -> None:
    proc = run(name, "--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"{name} {leapcore.__version__}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name: str) -> None:
    proc = run(name, "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"usage: {name}")
    assert proc.stderr == ""


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_flag_is_a_usage_error(name: str) -> None:
    proc = run(name, "--no-such-flag")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr
    assert proc.stdout == ""


def test_demo_human_output(tmp_path: Path) -> None:
    proc = run("leapcore", "demo", "--data-dir", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr
    identity = tmp_path / "demo" / "worker-identity.json"
    keypair = load_keypair(identity)
    assert f"fingerprint      {keypair.public.fingerprint}" in proc.stdout
    lines = [line.split() for line in proc.stdout.splitlines()]
    rows = {row[0]: row for row in lines if row and row[0] in ("classic", "post-quantum")}
    assert rows["classic"][1:3] == ["48B", "48B"]
    assert rows["post-quantum"][1:3] == ["1616B", "49904B"]
    assert proc.stdout.count("'pong: ping from the client'") == 2
    assert stat.S_IMODE(os.stat(identity).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(identity.parent).st_mode) == 0o700


def test_demo_json_is_one_document() -> None:
    proc = run("leapcore", "demo", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"worker", "handshakes"}
    assert doc["worker"]["identity_file"] is None
    assert len(doc["worker"]["fingerprint"]) == 19
    modes = {h["mode"]: h for h in doc["handshakes"]}
    assert set(modes) == {"classic", "post-quantum"}
    assert modes["post-quantum"]["message2_bytes"] == 49904
    assert all(h["round_trip"] == "pong: ping from the client" for h in doc["handshakes"])


def test_json_usage_error_goes_to_stdout_as_a_document() -> None:
    proc = run("leapcore", "demo", "--json", "--bogus")
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {
        "error": {"code": "usage", "message": "unrecognized arguments: --bogus"}
    }


def test_demo_refuses_an_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run("leapcore", "demo", "--data-dir", str(blocker / "sub"))
    assert proc.returncode == 1
    assert (
        proc.stderr
        == f"error: {blocker / 'sub'}/worker-identity.json: cannot write: Not a directory\n"
    )
    assert blocker.read_text() == "not a directory"
