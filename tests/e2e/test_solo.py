"""``leapcore-hub --solo`` as a real process on loopback: the hub and its own worker in one
process, reached by ``leapcore remote`` with the credential solo mode saved."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from support.procs import Env, env_fixture  # noqa: F401 (env_fixture: the fixture)
from support.solokit import start_solo


def test_solo_hub_serves_its_own_worker_and_restarts_with_it(env: Env) -> None:
    url, worker_id, fingerprint = start_solo(env, "solo1")
    creds = json.loads((env.config / f"127.0.0.1_{url.rsplit(':', 1)[1]}.json").read_text())
    assert creds["hub"] == url

    # No login: the credential solo mode saved is found.
    listed = env.json("worker", "list")["workers"]
    assert [(w["id"], w["name"], w["online"]) for w in listed] == [(worker_id, "box", True)]
    assert listed[0]["fingerprint"] == fingerprint
    assert listed[0]["encryption_mode"] == "post-quantum"

    info = env.json("worker", "info", "--worker-id", worker_id)
    assert info["worker_id"] == worker_id
    assert info["fingerprint"] == fingerprint
    assert info["info"]["worker_id"] == worker_id
    assert info["info"]["name"] == "box"
    assert {"info", "ping"} <= set(info["info"]["capabilities"])
    human = env.remote("worker", "info", "--worker-id", worker_id)
    assert human.returncode == 0, human.stderr
    assert f"fingerprint:     {fingerprint}" in human.stdout.splitlines()

    ping = env.json("worker", "ping", "--count", "3", "--worker-id", worker_id)
    assert set(ping) == {"worker_id", "count", "rtt_ms", "min_ms", "median_ms", "max_ms"}
    assert ping["worker_id"] == worker_id and ping["count"] == 3
    assert len(ping["rtt_ms"]) == 3 and all(r > 0 for r in ping["rtt_ms"])
    assert ping["min_ms"] <= ping["median_ms"] <= ping["max_ms"]
    human = env.remote("worker", "ping", "--count", "2", "--worker-id", worker_id)
    assert human.returncode == 0, human.stderr
    assert human.stdout.count("seq=") == 2
    assert "min/median/max = " in human.stdout.splitlines()[-1]

    refused = env.remote("worker", "deregister", "--worker-id", worker_id, "--json")
    assert refused.returncode == 8
    assert json.loads(refused.stdout) == {
        "error": {
            "code": "failed_precondition",
            "message": "the solo worker cannot be deregistered",
        }
    }
    missing = env.remote("worker", "info", "--worker-id", "no-such-worker", "--json")
    assert missing.returncode == 3
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"

    assert env.hub is not None
    env.hub.signal(signal.SIGTERM)
    assert env.hub.wait() == 0, env.hub.stderr()

    # Restart on the same data dir: the same worker, not registered again.
    _, again, fingerprint2 = start_solo(env, "solo2")
    assert (again, fingerprint2) == (worker_id, fingerprint)
    assert "registered worker" not in env.hub.stderr()
    assert [w["id"] for w in env.json("worker", "list")["workers"]] == [worker_id]
    env.hub.signal(signal.SIGINT)
    assert env.hub.wait() == 0, env.hub.stderr()


def test_solo_refuses_tls(env: Env, tmp_path: Path) -> None:
    proc = env.run("leapcore-hub", "--solo", "--data-dir", str(tmp_path / "d"),
                   "--tls-cert", "c.pem", "--tls-key", "k.pem")  # fmt: skip
    assert proc.returncode == 2
    assert "--solo serves plain HTTP on loopback" in proc.stderr
