"""Channels end to end with real processes on loopback: a ``leapcore-hub``, two
``leapcore-worker`` daemons serving their owner's own methods (``--services
e2e_services:install``), a client program written with ``import leapcore``
(``e2e_client.py``) and the ``leapcore remote`` CLI — once over WebSocket, once over HTTP/2.

One worker is post-quantum, one classic (``--encryption-mode classic``). Per worker the client
program calls, streams and byte-streams on one channel (a chunked RPC of 16 MiB, a 1 MiB byte
stream with a half-close) and closes it; the CLI then sees the added methods in ``info``,
pings, and lists the pins the library made. The key-mismatch refusal (exit 6) is
``test_remote_channels_cli``'s; in-process channel behaviour is ``test_channels_e2e``'s.

No fixed sleeps: every wait is a bounded poll on a condition, or a process exit.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Any

import pytest
from support.e2e_client import REQUEST_OVERHEAD, payload
from support.procs import H2, TESTS_DIR, WEBSOCKET, Env, Setup, env_fixture  # noqa: F401 (the fixture)

import leapcore
from leapcore.errors import MessageTooLarge
from leapcore.proto.limits import DEFAULT_MAX_MESSAGE_SIZE
from leapcore.store.pinstore import PinStore

CLIENT = TESTS_DIR / "e2e_client.py"
SERVICES = ("--services", "e2e_services:install")
ADDED = ["count", "echo", "hello", "invert", "sha256"]
#: Worker name -> encryption mode.
WORKERS = {"pq": "post-quantum", "classic": "classic"}
#: Seconds one client program may take (it also has its own, shorter, deadline).
CLIENT_TIMEOUT = 90.0


def _client(env: Env, worker_id: str, seed: int) -> subprocess.Popen[str]:
    """The client program against ``worker_id``, as a background process."""
    args = ["--hub", env.url, "--worker-id", worker_id, "--seed", str(seed), "--timeout", "75"]
    return subprocess.Popen(
        [sys.executable, str(CLIENT), *args, *env.client_flags()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env.env,
    )


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=CLIENT_TIMEOUT)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    document: dict[str, Any] = json.loads(lines[0])
    return document


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("setup", [WEBSOCKET, H2], ids=lambda s: s.name)
def test_own_methods_over_real_processes(env: Env, setup: Setup) -> None:
    env.setup = setup
    env.start_hub()
    env.login()
    path = env.tests_on_path()
    procs = {
        name: env.start_worker(
            name, env.reg_key(), flags=[*SERVICES, "--encryption-mode", mode], PYTHONPATH=path
        )
        for name, mode in WORKERS.items()
    }
    listed = env.wait_online(*WORKERS)
    ids = {name: listed[name]["id"] for name in WORKERS}
    for name, mode in WORKERS.items():
        assert listed[name]["encryption_mode"] == mode
        procs[name].logged(f"services: e2e_services:install added {', '.join(ADDED)}")

    # The client program, against both workers at once (its first contact: it pins them).
    seeds = {name: n for n, name in enumerate(WORKERS, start=1)}
    clients = {name: _client(env, ids[name], seeds[name]) for name in WORKERS}
    results = {name: _result(proc) for name, proc in clients.items()}
    for name, mode in WORKERS.items():
        got = results[name]
        assert got["worker_id"] == ids[name]
        # The installer was handed this worker: its name and mode.
        assert got["hello"] == {"name": name, "encryption_mode": mode}
        assert got["too_large"] == "MessageTooLarge"
        size = DEFAULT_MAX_MESSAGE_SIZE - REQUEST_OVERHEAD - len("sha256")
        digest = _sha(payload(seeds[name], "echo", size))
        assert got["echo"]["bytes"] == size  # 16 MiB less 8 bytes: 257 chunks each way
        assert got["echo"]["sha256"] == got["echo"]["worker_sha256"] == digest
        assert got["echo"]["returned_sha256"] == digest
        assert got["stream"] == {"items": 1000}
        sent = payload(seeds[name], "bytes", 1024 * 1024)
        assert got["byte_stream"] == {
            "sent": len(sent),
            "received": len(sent),
            "worker": {"received": len(sent), "sha256": _sha(sent)},
        }
        assert got["closed"] is True

    # The CLI, after the library: same token, same pins (a mismatch would exit 6).
    for name, mode in WORKERS.items():
        info = env.json("worker", "info", "--worker-id", ids[name])
        assert info["worker_id"] == ids[name]
        assert info["fingerprint"] == listed[name]["fingerprint"]
        assert info["info"]["encryption_mode"] == mode
        assert info["info"]["name"] == name
        builtin = ["info", "ping", "tcp"]
        builtin += [f"exec{m}" for m in ("", ".resize", ".signal", ".stderr", ".wait")]
        builtin += [f"files.{m}" for m in ("list", "mkdir", "read", "stat", "write")]
        pty = ["attach", "capture", "kill", "list", "resize", "send", "spawn", "wait"]
        builtin += [f"pty.{m}" for m in pty]
        builtin += [f"workspace.{m}" for m in ("list", "open", "remove")]
        assert info["info"]["capabilities"] == sorted([*builtin, *ADDED])
        ping = env.json("worker", "ping", "--count", "3", "--worker-id", ids[name])
        assert ping["worker_id"] == ids[name] and ping["count"] == 3
        assert len(ping["rtt_ms"]) == 3 and all(rtt > 0 for rtt in ping["rtt_ms"])

    pins = env.run("leapcore", "remote", "worker", "pins", "list", "--hub", env.url, "--json")
    assert pins.returncode == 0, pins.stderr
    pinned = {pin["worker_id"]: pin["fingerprint"] for pin in json.loads(pins.stdout)["pins"]}
    assert pinned == {ids[name]: listed[name]["fingerprint"] for name in WORKERS}

    for proc in procs.values():
        assert proc.popen.poll() is None, proc.stderr()
        assert "Traceback" not in proc.stderr()
        assert " ERROR " not in proc.stderr()


async def test_a_hub_configured_for_one_mebibyte_refuses_two_end_to_end(env: Env) -> None:
    """``leapcore-hub serve`` with ``max_message_size`` = 1 MiB (from its environment): a
    channel through it negotiates 1 MiB, a 2 MiB request is refused before it is sent, and
    the channel goes on. (The setting used to be read and then dropped.)"""
    env.env["LEAPCORE_HUB_MAX_MESSAGE_SIZE"] = str(1 << 20)
    env.start_hub()
    env.login()
    env.start_worker("box", env.reg_key(), flags=["--encryption-mode", "classic"])
    worker_id = env.wait_online("box")["box"]["id"]
    pins = PinStore(env.tmp / "pins.json", hint="clear {worker_id}")
    async with (
        leapcore.connect(env.url, token=env.token, pins=pins) as hub,
        hub.open_channel(worker_id) as channel,
    ):
        assert channel.endpoint.max_message_size == 1 << 20
        with pytest.raises(MessageTooLarge):
            await channel.call("info", bytes(2 << 20))
        assert json.loads(await channel.call("info"))["name"] == "box"
