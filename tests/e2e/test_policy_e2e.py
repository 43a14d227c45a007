"""The worker's policy through real processes: a hub, a ``leapcore-worker --policy FILE``
and ``leapcore remote exec``. A denied command fails with ``denied_by_policy: <rule>:
<what>`` and exit 255; ``kill -HUP`` reloads the file; a broken file is logged and the policy
in force stays. ``leapcore-worker policy check`` validates a file like the worker would."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.procs import TIMEOUT, Env, Proc, env_fixture, script  # noqa: F401 (the fixture)

#: ``remote exec``'s own failures exit 255, like ssh's (the command's status is its own).
EXIT_EXEC_FAILED = 255
EXIT_USAGE = 2


@pytest.fixture(name="box")
def box_fixture(tmp_path: Path) -> Iterator[tuple[Env, Proc, Path]]:
    policy = tmp_path / "policy.toml"
    policy.write_text('[exec]\ndeny = ["date"]\n')
    env = Env(tmp_path)
    try:
        env.start_hub()
        env.login()
        worker = env.start_worker(
            "box",
            env.reg_key(),
            flags=["--encryption-mode", "classic", "--policy", str(policy)],
        )
        env.wait_online("box")
        yield env, worker, policy
    finally:
        env.cleanup()


def remote_exec(env: Env, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            script("leapcore"),
            "remote",
            "exec",
            "--worker",
            "box",
            *env.client_flags(),
            "--",
            *words,
        ],
        env={**env.env, "LEAPCORE_HUB": env.url},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_deny_then_reload_then_a_broken_file(box: tuple[Env, Proc, Path]) -> None:
    env, worker, policy = box
    denied = remote_exec(env, "date")
    assert denied.returncode == EXIT_EXEC_FAILED, denied.stderr
    assert "denied_by_policy: exec.deny date: date" in denied.stderr
    assert denied.stdout == ""
    assert remote_exec(env, "true").returncode == 0

    policy.write_text('[exec]\ndeny = ["true"]\n')
    worker.signal(signal.SIGHUP)
    worker.logged(f"policy reloaded from {policy}")
    assert remote_exec(env, "date").returncode == 0
    assert "exec.deny true: true" in remote_exec(env, "true").stderr

    policy.write_text('[exec]\ndeny = "true"\n')  # a string, not a list
    worker.signal(signal.SIGHUP)
    logged = worker.logged("policy not reloaded, the one in force stays")
    assert "exec.deny must be a list of strings, got a string" in logged
    assert remote_exec(env, "true").returncode == EXIT_EXEC_FAILED  # still the old rules
    assert remote_exec(env, "date").returncode == 0


def test_a_broken_policy_stops_the_worker_at_start(env: Env) -> None:
    policy = env.tmp / "policy.toml"
    policy.write_text("[exec]\nallow = [\n")
    env.start_hub()
    env.login()
    worker = env.start_worker("bad", env.reg_key(), flags=["--policy", str(policy)])
    assert worker.wait() == EXIT_USAGE
    assert f"error: {policy}: not valid TOML" in worker.stderr()
    assert not (env.worker_dir("bad") / "state.json").exists()  # refused before registering


def policy_check(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script("leapcore-worker"), "policy", "check", *flags, str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_policy_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[exec]\nallow = ["pytest"]\nmax_open_files = 256\n'
        f'[files]\nroots = ["{tmp_path}"]\n[services]\ndisabled = ["pty"]\n'
    )
    done = policy_check(good)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{good}: ok"
    assert '  exec.allow = ["pytest"]' in lines
    assert "  exec.max_open_files = 256" in lines
    assert f'  files.roots = ["{tmp_path}"]' in lines
    assert '  services.disabled = ["pty"]' in lines

    document = json.loads(policy_check(good, "--json").stdout)
    assert document["ok"] is True
    assert document["policy"]["exec"]["allow"] == ["pytest"]
    assert document["policy"]["tunnel"] is None
    assert document["policy"]["source"] == str(good)

    bad = tmp_path / "bad.toml"
    bad.write_text("[exec]\nmax_cpu_seconds = -5\n")
    done = policy_check(bad)
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert done.stderr == (
        f"error: {bad}: exec.max_cpu_seconds must be 0 (inherit) .. 1000000000, got -5\n"
    )
    document = json.loads(policy_check(bad, "--json").stdout)
    assert document["error"]["code"] == "config_error"

    missing = policy_check(tmp_path / "missing.toml")
    assert missing.returncode == EXIT_USAGE
    assert "does not exist" in missing.stderr
