"""``leapcore remote login`` as real processes: the default hub it saves (with its CA file)
so that later commands need no ``--hub``, ``$LEAPCORE_HUB`` between the flag and that
default, and the token read from a file, from stdin or from a prompt that does not echo."""

from __future__ import annotations

import datetime as dt
import json
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.procs import TLS_H2, Env, env_fixture, wait_for  # noqa: F401 (the fixture)

NO_HUB = (
    "no hub: pass --hub URL (or set LEAPCORE_HUB), or run "
    "`leapcore remote login --hub URL` once to make it the default"
)


def _leapcore() -> str:
    path = Path(sys.executable).with_name("leapcore")
    found = str(path) if path.exists() else shutil.which("leapcore")
    assert found, "console script leapcore is not installed"
    return found


def run(
    env: Env, *args: str, stdin: str = "", cwd: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """``leapcore remote ARGS`` with ``stdin`` as its (non-terminal) standard input."""
    return subprocess.run(
        [_leapcore(), "remote", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**env.env, **extra},
        cwd=cwd,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _saved(env: Env, name: str) -> Any:
    return json.loads((env.config / name).read_text())


def test_login_saves_the_default_hub_for_later_commands(env: Env) -> None:
    env.start_hub()
    host = env.url.removeprefix("http://").replace(":", "_")
    (env.tmp / "token").write_text(env.token + "\n")

    # No hub anywhere: a usage error that says what to do.
    proc = run(env, "worker", "list")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines()[-1] == f"leapcore remote worker list: error: {NO_HUB}"
    doc = json.loads(run(env, "worker", "list", "--json").stdout)
    assert doc == {"error": {"code": "usage", "message": NO_HUB}}

    # A refused token saves nothing.
    proc = run(env, "login", "--hub", env.url, "--token-stdin", stdin="not-a-token\n")
    assert proc.returncode == 8, proc.stderr
    assert not env.config.exists()

    proc = run(env, "login", "--hub", env.url, "--token-file", "token", "--json", cwd=env.tmp)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    user_id = doc["user"]["id"]
    # The hub says when the token expires: 90 days (the default lifetime) after it was made.
    expires_text = doc.pop("token_expires_at")
    expires = dt.datetime.fromisoformat(expires_text)
    made = dt.datetime.fromisoformat(
        env.admin("user", "token-list", "alice")["tokens"][0]["created_at"]
    )
    assert expires - made == dt.timedelta(days=90)
    assert doc == {
        "hub": env.url,
        "user": {"id": doc["user"]["id"], "name": "alice"},
        "credentials": str(env.config / f"{host}.json"),
    }
    assert _saved(env, f"{host}.json") == {"hub": env.url, "token": env.token}
    assert _saved(env, "default_hub.json") == {"hub": env.url}
    for name in (f"{host}.json", "default_hub.json"):
        assert stat.S_IMODE((env.config / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(env.config.stat().st_mode) == 0o700

    # Later commands: no --hub, no token.
    proc = run(env, "worker", "list")
    assert (proc.returncode, proc.stdout) == (0, "alice has no registered workers\n")
    # $LEAPCORE_HUB wins over the default (nothing listens there: exit 7) ...
    nowhere = f"http://127.0.0.1:{_closed_port()}"
    proc = run(env, "worker", "list", "--token", env.token, LEAPCORE_HUB=nowhere)
    assert proc.returncode == 7, proc.stderr
    # ... and --hub over $LEAPCORE_HUB.
    proc = run(env, "worker", "list", "--hub", env.url, LEAPCORE_HUB=nowhere)
    assert proc.returncode == 0, proc.stderr
    # The pin commands use the default hub too.
    doc = json.loads(run(env, "worker", "pins", "list", "--json").stdout)
    assert doc == {"store": str(env.config / host / "pins.json"), "pins": []}

    # Human output of login; logging in again replaces what was saved.
    proc = run(env, "login", "--token-stdin", stdin=env.token + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"logged in to {env.url} as alice (id {user_id})",
        f"credentials saved in {env.config / f'{host}.json'}",
        f"the API token expires {expires_text} (ask an administrator for a new one before then)",
        f"{env.url} is now the default hub (--hub and LEAPCORE_HUB override it)",
    ]


def test_token_sources_and_their_usage_errors(env: Env) -> None:
    env.start_hub()
    hub = ("--hub", env.url)
    empty = env.tmp / "empty"
    empty.write_text("\n")

    # No token and stdin is not a terminal: nothing to prompt on.
    proc = run(env, "login", *hub)
    assert proc.returncode == 2
    assert "no API token: pass --token-file FILE or --token-stdin" in proc.stderr
    proc = run(env, "login", *hub, "--token-file", str(env.tmp / "missing"), "--json")
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "config_error" and "missing: cannot read it" in error["message"]
    proc = run(env, "login", *hub, "--token-file", str(empty))
    assert proc.returncode == 2 and "no token (an empty line)" in proc.stderr
    proc = run(env, "login", *hub, "--token-stdin", stdin="")
    assert proc.returncode == 2 and "--token-stdin: no token" in proc.stderr
    proc = run(env, "login", *hub, "--token", "a", "--token-stdin")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    assert not env.config.exists()

    # $LEAPCORE_TOKEN, and the --token-* flags on any other verb.
    assert run(env, "login", *hub, LEAPCORE_TOKEN=env.token).returncode == 0
    (env.config / "default_hub.json").unlink()
    (env.config / f"{env.url.removeprefix('http://').replace(':', '_')}.json").unlink()
    proc = run(env, "worker", "list", *hub)
    assert proc.returncode == 2 and "run `leapcore remote login --hub" in proc.stderr
    proc = run(env, "worker", "list", *hub, "--token-stdin", stdin=env.token + "\n")
    assert proc.returncode == 0, proc.stderr
    (env.tmp / "token").write_text(env.token)  # no newline: fine too
    assert run(env, "worker", "list", *hub, "--token-file", str(env.tmp / "token")).returncode == 0


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (master, slave)."""
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def test_login_prompts_without_echo_on_a_terminal(env: Env, terminal: tuple[int, int]) -> None:
    env.start_hub()
    master, slave = terminal
    # A session of its own (no controlling terminal), stdin on the pseudo-terminal.
    proc = subprocess.Popen(
        [_leapcore(), "remote", "login", "--hub", env.url],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env.env,
        start_new_session=True,
    )
    try:

        def echo_off() -> bool:
            assert proc.poll() is None, proc.communicate()
            return not termios.tcgetattr(slave)[3] & termios.ECHO

        wait_for(echo_off, "the prompt to turn echo off")
        os.write(master, env.token.encode() + b"\n")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.decode().startswith(f"API token for {env.url}: ")
    assert out.decode().startswith(f"logged in to {env.url} as alice")
    assert termios.tcgetattr(slave)[3] & termios.ECHO  # restored
    echoed = b""
    while select.select([master], [], [], 0)[0]:
        chunk = os.read(master, 4096)
        if not chunk:
            break
        echoed += chunk
    assert env.token.encode() not in echoed
    assert _saved(env, "default_hub.json") == {"hub": env.url}


def test_login_keeps_the_ca_file_of_an_https_hub(tmp_path: Path) -> None:
    env = Env(tmp_path, TLS_H2)
    try:
        env.start_hub()
        assert env.ca_file is not None and env.ca_file.parent == tmp_path
        host = env.url.removeprefix("https://").replace(":", "_")
        h2 = ("--transport", "h2")
        # Without the CA the hub's certificate does not verify: exit 5.
        proc = run(env, "worker", "list", *h2, "--hub", env.url, "--token", env.token)
        assert proc.returncode == 5, proc.stderr

        # --ca-file relative to the current directory: saved as an absolute path.
        proc = run(env, "login", "--hub", env.url, *h2, "--ca-file", env.ca_file.name,
                   "--token-stdin", "--json", stdin=env.token, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["ca_file"] == str(env.ca_file)
        assert _saved(env, f"{host}.json") == {
            "hub": env.url,
            "token": env.token,
            "ca_file": str(env.ca_file),
        }
        # Later: no --hub, no --ca-file, from another directory.
        proc = run(env, "worker", "list", *h2, cwd=tmp_path / "client")
        assert proc.returncode == 0, proc.stderr
        # A new login without --ca-file keeps the saved one (a token rotation).
        proc = run(env, "login", *h2, "--token-stdin", stdin=env.token)
        assert proc.returncode == 0, proc.stderr
        assert f"trusting the CA in {env.ca_file} for it" in proc.stdout
        assert _saved(env, f"{host}.json")["ca_file"] == str(env.ca_file)
        # --ca-file wins over the saved one.
        proc = run(env, "worker", "list", *h2, "--ca-file", str(tmp_path / "hub-cert.pem"))
        assert proc.returncode == 5, proc.stderr
    finally:
        env.cleanup()
