"""``leapcore-hub serve`` and the ``leapcore remote`` hub verbs, as real processes on loopback.

Every wait is a bounded loop on a condition (an output line, a file, a process exit); the
process harness is in ``procs.py`` (shared with ``test_e2e_link.py``).
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from support.procs import (  # noqa: F401 (env_fixture: the fixture)
    Env,
    _healthz,
    env_fixture,
    script,
    wait_for,
)

from leapcore.errors import FailedPrecondition
from leapcore_cli import remote


def test_serve_login_register_list_and_deregister(env: Env) -> None:
    env.start_hub()
    assert _healthz(env.url).endswith(b"\r\n\r\nok\n")

    env.login()
    creds = env.config / f"127.0.0.1_{env.url.rsplit(':', 1)[1]}.json"
    assert json.loads(creds.read_text()) == {"hub": env.url, "token": env.token}
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.parent.stat().st_mode) == 0o700
    assert env.json("worker", "list") == {"workers": []}

    minted = env.json("worker", "reg-key", "create", "--no-wait")
    key = minted["registration_key"]
    assert minted["command"] == shlex.join(
        ["leapcore-worker", "--hub", env.url, "--registration-key", key]
    )
    worker = env.start_worker("box", key)
    box = wait_for(
        lambda: env.workers().get("box", {}).get("online") and env.workers()["box"],
        "the worker to be online",
    )
    assert box["encryption_mode"] == "post-quantum"
    assert box["last_seen_at"].endswith("Z")
    table = env.remote("worker", "list")
    assert table.returncode == 0
    assert table.stdout.split("\n")[0].split() == ["NAME", "ID", "STATE", "LAST", "SEEN", "MODE"]
    assert table.stdout.split("\n")[1].split()[:3] == ["box", box["id"], "online"]

    gone = env.json("worker", "deregister", "--worker-id", box["id"])
    assert gone == {"worker_id": box["id"], "status": "deregistering", "notified": True}
    assert worker.wait() == 0
    assert "deregistered by the hub" in worker.stderr()
    assert env.json("worker", "list") == {"workers": []}

    # Deregistering it again: not found (exit 3), via LEAPCORE_WORKER_ID.
    again = env.run("leapcore", "remote", "worker", "deregister", "--json",
                    LEAPCORE_HUB=env.url, LEAPCORE_WORKER_ID=box["id"])  # fmt: skip
    assert again.returncode == 3
    assert json.loads(again.stdout)["error"]["code"] == "not_found"


def test_reg_key_waits_for_a_worker_then_hub_stops_gracefully(env: Env) -> None:
    hub = env.start_hub()
    creator = env.start(
        "creator", "leapcore", "remote", "worker", "reg-key", "create",
        "--hub", env.url, "--token", env.token, "--poll-interval", "0.05",
    )  # fmt: skip
    command = shlex.split(creator.line("  leapcore-worker "))
    assert command[:3] == ["leapcore-worker", "--hub", env.url]
    worker = env.start_worker("box", command[4])
    assert creator.wait() == 0, creator.stderr()
    assert "a worker registered with the key (state: consumed)" in creator.stdout()

    env.login()
    wait_for(lambda: env.workers().get("box", {}).get("online"), "the worker to be online")
    hub.popen.send_signal(signal.SIGTERM)
    assert hub.wait() == 0, hub.stderr()
    # The worker heard the go-away and keeps trying to reconnect.
    wait_for(lambda: "hub going away" in worker.stderr(), "the worker to log the go-away")
    assert worker.popen.poll() is None


def test_interrupted_reg_key_is_revoked(env: Env) -> None:
    env.start_hub()
    env.login()
    creator = env.start(
        "creator", "leapcore", "remote", "worker", "reg-key", "create", "--hub", env.url,
        "--poll-interval", "0.05",
    )  # fmt: skip
    key = creator.line("registration key ").split()[-1]
    creator.popen.send_signal(signal.SIGINT)
    assert creator.wait() == 130
    assert "interrupted: registration key revoked" in creator.stderr()
    # The key no longer registers anyone.
    listed = env.run("leapcore-hub", "admin", "reg-key", "list", "--json",
                     "--data-dir", str(env.hub_dir))  # fmt: skip
    assert json.loads(listed.stdout) == {"keys": []}
    worker = env.start_worker("late", key)
    assert worker.wait() == 8  # refused
    assert "registration rejected: unauthenticated" in worker.stderr()


def test_errors(env: Env) -> None:
    # No hub listening: the link cannot be made (exit 7: retry later).
    env.url = "http://127.0.0.1:9"
    proc = env.remote("login", "--token", "x", "--json")
    assert proc.returncode == 7
    assert json.loads(proc.stdout)["error"]["code"] == "link_closed"
    # No token anywhere: a usage error that says how to log in.
    proc = env.remote("worker", "list")
    assert proc.returncode == 2
    assert "leapcore remote login" in proc.stderr

    env.start_hub()
    proc = env.remote("login", "--token", "not-a-token")
    assert proc.returncode == 8  # refused
    assert proc.stderr == "error: invalid API token\n"
    assert not env.config.exists()
    proc = env.run("leapcore", "remote", "worker", "list", "--json", LEAPCORE_HUB=env.url,
                   LEAPCORE_TOKEN="wrong")  # fmt: skip
    assert proc.returncode == 8
    assert json.loads(proc.stdout)["error"]["code"] == "unauthenticated"


def test_serve_bad_settings_are_usage_errors(env: Env) -> None:
    for listen in ("nonsense", "127.0.0.1:99999", "127.0.0.1:http"):
        proc = env.run("leapcore-hub", "serve", "--listen", listen, "--data-dir", str(env.hub_dir))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: listen address")
    proc = env.run("leapcore-hub", "--tls-cert", "x.pem", "--data-dir", str(env.hub_dir))
    assert proc.returncode == 2
    assert "'tls_cert' and 'tls_key' must be given together" in proc.stderr
    assert not env.hub_dir.exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = env.run(
            "leapcore-hub", "--listen", f"127.0.0.1:{port}", "--data-dir", str(env.hub_dir)
        )
    assert proc.returncode == 1
    assert proc.stderr.endswith(
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


class FakeSession:
    """States in order; ``extend`` refused once (as when clocks differ), then granted."""

    def __init__(self, states: list[str]) -> None:
        self.states = states
        self.extends: list[str] = []

    async def registration_key_state(self, key: str) -> str:
        return self.states.pop(0)

    async def extend_registration_key(self, key: str) -> int:
        self.extends.append(key)
        if len(self.extends) == 1:
            raise FailedPrecondition("extension not allowed yet")
        return remote._now_ms() + 5 * 60 * 1000


async def test_waiting_extends_the_key_only_near_its_expiry() -> None:
    far = remote._now_ms() + 4 * 60 * 1000
    session = FakeSession(["live", "live", "consumed"])
    assert await remote.wait_until_used(session, "k", far, 0.0) == "consumed"  # type: ignore[arg-type]
    assert session.extends == []
    near = remote._now_ms() + 60 * 1000
    session = FakeSession(["live", "live", "live", "expired"])
    assert await remote.wait_until_used(session, "k", near, 0.0) == "expired"  # type: ignore[arg-type]
    # Refused once, then granted: the new expiry is far again, so no third extension.
    assert session.extends == ["k", "k"]


def test_serve_raises_its_open_file_limit_to_the_hard_limit(tmp_path: Path) -> None:
    """Started with a soft limit of 256 open files (as many systems start daemons), the hub
    raises it to the hard limit: a connection flood meets the budgets, not EMFILE."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    hub = subprocess.Popen(
        [script("leapcore-hub"), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=low_limit,
        env={**os.environ, "HOME": str(tmp_path)},
    )

    def open_files_limit() -> int | None:
        limits = Path(f"/proc/{hub.pid}/limits").read_text()
        row = next(r for r in limits.splitlines() if r.startswith("Max open files"))
        return int(row.split()[3]) if int(row.split()[3]) > 256 else None

    try:
        raised = wait_for(open_files_limit, "the hub to raise its open-file limit")
    finally:
        hub.send_signal(signal.SIGTERM)
        _, err = hub.communicate(timeout=20)
    assert f"open-file limit raised from 256 to {raised}" in err, err
