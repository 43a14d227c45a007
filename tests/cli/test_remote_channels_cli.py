"""``leapcore remote worker info`` / ``ping`` against a solo hub: the key-mismatch path at
the CLI level, and ``leapcore demo --once``, all as real processes on loopback."""

from __future__ import annotations

import json
import signal

from support.procs import Env, env_fixture  # noqa: F401 (env_fixture: the fixture)
from support.solokit import start_solo

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.proto.pins import Pin
from leapcore.records import b64encode
from leapcore.store.pinstore import PinStore


def test_key_mismatch_exits_6_until_the_pin_is_removed(env: Env) -> None:
    url, worker_id, fingerprint = start_solo(env, "solo")
    first = env.json("worker", "info", "--worker-id", worker_id)  # pins on first use
    assert first["fingerprint"] == fingerprint
    pins_file = env.config / f"127.0.0.1_{url.rsplit(':', 1)[1]}" / "pins.json"
    document = json.loads(pins_file.read_text())
    assert set(document["pins"]) == {worker_id}

    # Tamper: pin other keys for that worker id.
    other = WorkerKeyPair.generate().public
    store = PinStore(pins_file)
    pinned = store.get(worker_id)
    assert pinned is not None
    record = document["pins"][worker_id]
    record["x25519_public_key"] = b64encode(other.x25519)
    record["mlkem_public_key"] = b64encode(other.mlkem)
    record["slhdsa_public_key"] = b64encode(other.slhdsa)
    pins_file.write_text(json.dumps(document, indent=2) + "\n")
    assert isinstance(store.get(worker_id), Pin)
    assert other.fingerprint != fingerprint

    hint = f"clear with `leapcore remote worker pins remove --hub {url} --worker-id={worker_id}`"
    for verb in ("info", "ping"):
        proc = env.remote("worker", verb, "--worker-id", worker_id)
        assert proc.returncode == 6, proc.stderr
        lines = proc.stderr.splitlines()
        assert lines[0] == f"worker {worker_id} key mismatch \u2014 {hint}"
        assert lines[1] == (
            f"pinned fingerprint {other.fingerprint}, presented fingerprint {fingerprint}"
        )
        assert proc.stdout == ""
    proc = env.remote("worker", "info", "--worker-id", worker_id, "--json")
    assert proc.returncode == 6
    assert json.loads(proc.stdout) == {
        "error": {
            "code": "key_mismatch",
            "message": f"worker {worker_id} key mismatch \u2014 {hint}",
            "expected_fingerprint": other.fingerprint,
            "presented_fingerprint": fingerprint,
        }
    }
    # The tampered pin is untouched by the refusals.
    assert json.loads(pins_file.read_text()) == document

    removed = env.run("leapcore", "remote", "worker", "pins", "remove", "--hub", url,
                      f"--worker-id={worker_id}")  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    again = env.json("worker", "info", "--worker-id", worker_id)
    assert again["fingerprint"] == fingerprint
    repinned = PinStore(pins_file).get(worker_id)
    assert repinned is not None and repinned.fingerprint == fingerprint

    assert env.hub is not None
    env.hub.signal(signal.SIGTERM)
    assert env.hub.wait() == 0


def test_worker_id_from_the_environment_and_usage_errors(env: Env) -> None:
    url, worker_id, _ = start_solo(env, "solo")
    proc = env.run("leapcore", "remote", "worker", "ping", "--count", "1", "--json",
                   LEAPCORE_HUB=url, LEAPCORE_WORKER_ID=worker_id)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == 1
    proc = env.remote("worker", "ping", "--count", "0", "--worker-id", worker_id)
    assert proc.returncode == 2
    proc = env.remote("worker", "info")
    assert proc.returncode == 2
    assert "--worker is required (or set LEAPCORE_WORKER)" in proc.stderr


def test_demo_once_shows_a_real_session(env: Env) -> None:
    proc = env.run("leapcore", "demo", "--once")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "$ leapcore remote worker list --hub http://127.0.0.1:" in out
    assert out.count(" rtt=") == 5
    assert "min/median/max = " in out
    assert "encryption_mode: post-quantum" in out
    assert (
        "capabilities:    exec, exec.resize, exec.signal, exec.stderr, exec.wait, files.list, "
        "files.mkdir, files.read, files.stat, files.write, info, ping, pty.attach, "
        "pty.capture, pty.kill, pty.list, pty.resize, pty.send, pty.spawn, pty.wait, tcp, "
        "workspace.list, workspace.open, workspace.remove"
    ) in out
    assert out.rstrip().endswith("leapcore demo: stopped")
    assert not env.config.exists() or not any(env.config.iterdir())  # --once saves nothing

    doc = json.loads(env.run("leapcore", "demo", "--once", "--json").stdout)
    assert set(doc) == {"hub", "worker", "workers", "ping", "info"}
    assert doc["ping"]["count"] == 5 and len(doc["ping"]["rtt_ms"]) == 5
    assert doc["info"]["worker_id"] == doc["worker"]["id"]
    assert [w["id"] for w in doc["workers"]] == [doc["worker"]["id"]]
    assert len(doc["worker"]["fingerprint"]) == 19
