"""Nothing destroys a worker's identity by mistake: real ``leapcore-hub``, ``leapcore-worker``
and ``leapcore`` processes on loopback (harness in ``support/procs.py``).

A worker that reaches a hub which does not know it — another hub, or its own hub restarted
on an empty database — exits 9 and leaves ``state.json`` and ``hub.json`` byte for byte as
they were. A registered worker without ``--hub`` dials the hub it registered with; an
unregistered one without ``--hub`` is a usage error. A real deregistration retires the
identity into a renamed copy (0600) and exits 0. ``leapcore-worker identity`` prints the
fingerprint a client pins.

No fixed sleeps: every wait is a bounded poll on a condition, or a process exit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from pathlib import Path
from typing import Any

from support.procs import Env, Proc, env_fixture, wait_for  # noqa: F401 (env_fixture)

from leapcore.store.workerstate import HUB_FILE, STATE_FILE

CLASSIC = ("--encryption-mode", "classic")
#: How the hub logs its id at start.
HUB_ID_LINE = re.compile(r"hub id ([0-9a-f]+) \(database ")


def _files(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir()) if p.is_file()}


def _hub_id(hub: Proc) -> str:
    match = wait_for(lambda: HUB_ID_LINE.search(hub.stderr()), "the hub to log its id")
    return match.group(1)


def _registered(env: Env, name: str) -> tuple[Proc, dict[str, Any]]:
    """A classic worker NAME registered with ``env``'s hub and online; (process, hub.json)."""
    worker = env.start_worker(name, env.reg_key(), flags=CLASSIC)
    env.wait_online(name)
    record = json.loads((env.worker_dir(name) / HUB_FILE).read_text())
    return worker, record


def _stop(worker: Proc) -> None:
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.stderr()


def _mismatch(worker: Proc, *, url: str, hub_id: str, registered: dict[str, Any]) -> str:
    """The worker exits 9 with one ``error:`` line naming both hubs; that line."""
    assert worker.wait() == 9, worker.stderr()
    line = worker.stderr().splitlines()[-1]
    assert line.startswith(f"error: hub at {url} (hub id {hub_id}) does not know this worker ")
    assert f"it registered with hub {registered['hub_id']} at {registered['hub_url']}" in line
    assert line.endswith("; state.json left untouched")
    return line


def test_a_different_hub_leaves_the_worker_untouched(env: Env) -> None:
    """(a) A worker pointed at another hub (another data directory) exits 9; every file of
    its data directory is byte-identical, and its own hub still knows it."""
    env.start_hub()
    env.login()
    worker, record = _registered(env, "box")
    assert record["hub_id"] == _hub_id(env.hub)  # type: ignore[arg-type]
    assert record["hub_url"] == env.url
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["registered_at"])
    _stop(worker)
    data = env.worker_dir("box")
    before = _files(data)
    assert set(before) == {STATE_FILE, HUB_FILE}
    assert stat.S_IMODE(os.stat(data / HUB_FILE).st_mode) == 0o600

    other = Env(env.tmp / "other")
    other.tmp.mkdir()
    try:
        other_hub = other.start_hub()
        stray = env.start("stray", "leapcore-worker", "run", "--hub", other.url,
                          "--data-dir", str(data), "--name", "box", *CLASSIC)  # fmt: skip
        line = _mismatch(stray, url=other.url, hub_id=_hub_id(other_hub), registered=record)
        assert "(unauthenticated: invalid auth token)" in line
        assert _files(data) == before
    finally:
        other.cleanup()

    # Its own hub still knows it: back online, under the same id.
    env.start_worker("box", flags=CLASSIC)
    env.wait_online("box")
    assert (data / STATE_FILE).read_bytes() == before[STATE_FILE]


def test_its_own_hub_restarted_on_an_empty_database(env: Env) -> None:
    """(b) The hub dies and comes back on the same address with an empty data directory: the
    running worker reconnects, is told its token is unknown, and exits 9 untouched."""
    env.start_hub()
    env.login()
    worker, record = _registered(env, "box")
    data = env.worker_dir("box")
    before = _files(data)
    env.kill_hub()
    env.hub_dir = env.tmp / "empty-hub"  # the same address, a fresh database
    fresh = env.start_hub()
    fresh_id = _hub_id(fresh)
    assert fresh_id != record["hub_id"]
    _mismatch(worker, url=env.url, hub_id=fresh_id, registered=record)
    assert _files(data) == before
    assert "identity retired" not in worker.stderr()


def test_a_registered_worker_without_hub_dials_its_hub_and_follows_a_move(env: Env) -> None:
    """(c) Restarted without ``--hub`` the worker dials the URL in hub.json and works. When
    the hub moves (same database, new port), ``--hub NEW`` is used and, once that hub greets
    it with the recorded id, hub.json follows; a later start without ``--hub`` finds it."""
    env.start_hub()
    env.login()
    worker, record = _registered(env, "box")
    _stop(worker)
    data = env.worker_dir("box")

    def bare() -> Proc:
        proc = env.start("bare", "leapcore-worker", "run", "--data-dir", str(data),
                         "--name", "box", *CLASSIC)  # fmt: skip
        env.worker_procs["box"] = proc
        return proc

    worker = bare()
    env.wait_online("box")
    worker.logged(f"no hub URL given: using {env.url}, the hub this worker registered with "
                  f"(hub id {record['hub_id']})")  # fmt: skip
    _stop(worker)

    # The hub moves to another port, keeping its database.
    old_url = env.url
    assert env.hub is not None
    env.hub.signal(signal.SIGTERM)
    assert env.hub.wait() == 0
    env.listen = "127.0.0.1:0"
    env.start_hub()
    assert env.url != old_url
    env.login()  # the client's credentials are per hub URL
    moved = env.start_worker("box", flags=CLASSIC)
    env.wait_online("box")
    moved.logged(f"hub {record['hub_id']} is now at {env.url} (was {old_url}): hub.json updated")
    _stop(moved)
    now = json.loads((data / HUB_FILE).read_text())
    assert now == {**record, "hub_url": env.url}
    worker = bare()
    env.wait_online("box")
    worker.logged(f"no hub URL given: using {env.url}")


def test_an_unregistered_worker_without_hub_is_a_usage_error(env: Env) -> None:
    """(d) No default hub: without --hub (or LEAPCORE_WORKER_HUB, or hub in the config file)
    an unregistered worker exits 2 before it writes anything, its key unused."""
    data = env.tmp / "new"
    proc = env.run("leapcore-worker", "run", "--data-dir", str(data),
                   "--registration-key", "k" * 48, *CLASSIC)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "error: hub URL is required: pass --hub URL (or set LEAPCORE_WORKER_HUB, or hub in "
        "the config file)\n"
    )
    assert not data.exists()


def test_deregistration_keeps_a_private_copy_and_exits_0(env: Env) -> None:
    """A real deregistration by the owner, while the worker is online: it acknowledges,
    renames state.json and hub.json to *.deregistered-<UTC time> (0600) and exits 0."""
    env.start_hub()
    env.login()
    worker, _ = _registered(env, "box")
    data = env.worker_dir("box")
    before = _files(data)
    box = env.workers()["box"]
    assert env.json("worker", "deregister", "--worker-id", box["id"])["notified"] is True
    assert worker.wait() == 0, worker.stderr()
    kept = sorted(data.glob("*.deregistered-*"))
    assert [p.name.split(".deregistered-")[0] for p in kept] == [HUB_FILE, STATE_FILE]
    for path in kept:
        assert re.fullmatch(r"\d{8}T\d{6}Z", path.name.split(".deregistered-")[1])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert path.read_bytes() == before[path.name.split(".deregistered-")[0]]
    assert not (data / STATE_FILE).exists() and not (data / HUB_FILE).exists()
    err = worker.stderr()
    state_copy = next(p for p in kept if p.name.startswith(STATE_FILE))
    hub_copy = next(p for p in kept if p.name.startswith(HUB_FILE))
    assert f"identity retired; kept as {state_copy}, {hub_copy}" in err  # the WARNING line
    assert err.endswith(
        f"leapcore-worker: deregistered by the hub; identity retired, kept as {state_copy}, "
        f"{hub_copy}\n"
    )


def test_identity_shows_the_fingerprint_a_client_pins(env: Env) -> None:
    """``leapcore-worker identity`` on the worker's files (no worker running) prints the
    fingerprint and keys that ``leapcore remote worker info`` pins."""
    env.start_hub()
    env.login()
    worker, record = _registered(env, "box")
    worker_id = env.workers()["box"]["id"]
    info = env.json("worker", "info", "--worker-id", worker_id)
    _stop(worker)
    data = env.worker_dir("box")
    before = _files(data)

    proc = env.run("leapcore-worker", "identity", "--data-dir", str(data), "--json",
                   LEAPCORE_WORKER_ENCRYPTION_MODE="classic")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ident = json.loads(proc.stdout)
    assert ident["fingerprint"] == info["fingerprint"]
    assert ident["worker_id"] == worker_id and ident["registered"] is True
    assert ident["encryption_mode"] == "classic"
    assert ident["hub"] == record
    assert ident["state_file"] == str(data / STATE_FILE)
    shown = env.run("leapcore", "remote", "worker", "pins", "show", "--worker-id", worker_id,
                    "--hub", env.url, "--json")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    pin = json.loads(shown.stdout)["pin"]
    assert pin["fingerprint"] == ident["fingerprint"]
    assert pin["keys"] == ident["keys"]  # sizes, digests and base64, key by key

    text = env.run("leapcore-worker", "identity", "--data-dir", str(data))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert f"worker id     {worker_id}" in lines
    assert f"fingerprint   {info['fingerprint']}" in lines
    assert f"hub id        {record['hub_id']}" in lines
    assert f"hub url       {env.url}" in lines
    shown = env.run("leapcore", "remote", "worker", "pins", "show", "--worker-id", worker_id,
                    "--hub", env.url)  # fmt: skip
    key_lines = [line for line in shown.stdout.splitlines() if " key " in line]
    assert len(key_lines) == 3 and all(line in lines for line in key_lines)
    assert _files(data) == before  # read only

    # An unregistered worker: its keys and fingerprint, registered=false, no hub.
    fresh = env.tmp / "fresh"
    made = env.run("leapcore-worker", "run", "--hub", env.url, "--data-dir", str(fresh),
                   *CLASSIC)  # fmt: skip
    assert made.returncode == 2  # unregistered without a key: but its keys are made
    proc = env.run("leapcore-worker", "identity", "--data-dir", str(fresh), "--json")
    assert proc.returncode == 0, proc.stderr
    unregistered = json.loads(proc.stdout)
    assert (unregistered["registered"], unregistered["worker_id"], unregistered["hub"]) == (
        False,
        "",
        None,
    )
    assert len(unregistered["fingerprint"].split("-")) == 4
    # An empty directory: nothing to show (3), and nothing created.
    empty = env.tmp / "empty"
    proc = env.run("leapcore-worker", "identity", "--data-dir", str(empty))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith(f"error: no worker identity in {empty}")
    assert not empty.exists()
