"""The suite-wide secret check (:mod:`support.secretlog`, wired in ``tests/conftest.py``):
its scanner, where its secrets and logs come from, and that a leak fails a real run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import secretlog
from support.procs import Env
from support.secretlog import (
    WINDOW,
    find_leaks,
    harvest_secrets,
    mask,
    record_secrets_in,
)

from leapcore.store.hubstore import SQLiteHubStore

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Qx7" + "k" * 40 + "Zz9Lm"  # 48 characters, like a token
OTHER = "R2d2" * 11  # 44 characters, like a base64 key


@pytest.fixture(name="planted")
def planted_fixture() -> Iterator[Path]:
    """A directory outside the session's basetemp, gone after the test: what is planted
    there is not in the session's own check."""
    with tempfile.TemporaryDirectory(prefix="planted-") as name:
        yield Path(name)


def test_a_planted_secret_is_found_masked_with_its_file_and_line(planted: Path) -> None:
    log = planted / "hub1.err"
    log.write_text(
        "INFO all is well\n"
        f"WARNING sign-in refused: token {SECRET}\n"
        f"DEBUG glued{SECRET}to text, and a prefix {OTHER[:WINDOW]}...\n"
        "INFO worker Qx7kkkk is online\n"
    )
    leaks = find_leaks({SECRET, OTHER}, [log])
    assert {leak.path for leak in leaks} == {log}
    assert sorted((leak.line, leak.masked) for leak in leaks) == [
        (2, mask(SECRET)),
        (3, mask(SECRET)),
        (3, mask(OTHER)),
    ]
    for leak in leaks:
        assert SECRET not in leak.text and OTHER[:WINDOW] not in leak.text
    assert mask(SECRET) == "Qx7k\u2026(48)"
    assert find_leaks(set(), [log]) == []
    assert find_leaks({"short-secret"}, [log]) == []  # too short to track


def test_secrets_are_harvested_from_state_credentials_and_json_output(planted: Path) -> None:
    state = planted / "w" / "state.json"
    state.parent.mkdir()
    state.write_text(
        json.dumps(
            {
                "worker_id": "W" * 48,
                "auth_token": SECRET,
                "private_key": OTHER,
                "public_key": "P" * 44,
            }
        )
    )
    (planted / "client.json").write_text(json.dumps({"hub": "http://x", "token": "T" * 48}))
    (planted / "broken.json").write_text("{not json")
    (planted / "deep.json").write_text("[" * 100_000)  # hostile tests leave such files
    assert harvest_secrets(planted) == {SECRET, OTHER, "T" * 48}
    before = secretlog.recorded()
    record_secrets_in({"keys": [{"registration_key": "K" * 48, "id": "I" * 48}]})
    assert secretlog.recorded() - before == {"K" * 48}


def test_the_session_collects_logs_and_minted_secrets(tmp_path: Path) -> None:
    directory = secretlog.log_dir()
    assert directory is not None and directory.is_dir()
    marker = "session-log-marker-" + os.urandom(8).hex()
    logging.getLogger("leapcore.test").info("%s", marker)
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert marker in (directory / "inprocess.log").read_text()

    store = SQLiteHubStore(tmp_path / "hub.db")
    try:
        _, token = store.create_user("carol", 0)
        _, key = store.mint_registration_key("carol", 0)
    finally:
        store.close()
    assert {token, key} <= secretlog.recorded()

    env = Env(tmp_path / "procs")
    (tmp_path / "procs").mkdir()
    bad = env.run("leapcore-hub", "--no-such-flag")
    assert bad.returncode == 2
    assert "==> leapcore-hub --no-such-flag" in (directory / "procs.log").read_text()


LEAKY_TEST = """
import logging

from support.secretlog import record_secret


def test_leaks_a_token() -> None:
    token = record_secret("{secret}")
    logging.getLogger("leapcore.hub.server").warning("oops: %s", token)
"""


def test_a_leak_fails_the_run_and_is_reported_masked(planted: Path) -> None:
    """A real pytest run with this suite's conftest, whose one test passes but logs a
    secret it minted: the run fails, naming the file and line, the secret masked."""
    (planted / "test_leaky.py").write_text(LEAKY_TEST.format(secret=SECRET))
    basetemp = planted / "inner"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "conftest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(planted),
            "--basetemp",
            str(basetemp),
            str(planted / "test_leaky.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=planted,
        check=False,
    )
    out = run.stdout + run.stderr
    assert "1 passed" in out, out
    assert run.returncode == 1, out
    assert "1 secret(s) found in logs" in out, out
    assert f"inprocess.log:1: secret {mask(SECRET)}" in out, out
    assert SECRET not in out
