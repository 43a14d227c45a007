"""The three console scripts, run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.procs import script

import leapcore

SCRIPTS = ["leapcore", "leapcore-hub", "leapcore-worker"]


def run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script(name), *args], capture_output=True, text=True, timeout=60, check=False
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


def test_demo_once_is_documented_in_help() -> None:
    # The full demo (a solo hub and a real session) runs in test_remote_channels_cli.py.
    proc = run("leapcore", "demo", "--help")
    assert proc.returncode == 0
    assert "--once" in proc.stdout


def test_json_usage_error_goes_to_stdout_as_a_document() -> None:
    proc = run("leapcore", "demo", "--json", "--bogus")
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {
        "error": {"code": "usage", "message": "unrecognized arguments: --bogus"}
    }


def test_demo_refuses_an_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run("leapcore", "demo", "--once", "--data-dir", str(blocker / "sub"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
    assert str(blocker / "sub") in proc.stderr
    assert blocker.read_text() == "not a directory"
