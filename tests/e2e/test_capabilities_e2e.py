"""Capabilities end to end: a real ``leapcore-hub`` and real ``leapcore-worker`` processes on
loopback (harness in ``procs.py``). Each worker advertises its capabilities, ``os`` and
``arch`` at connect; the hub lists them (``remote worker list --json``), and both
``find_workers`` (the blocking API, in this process) and ``remote worker list --label …
--capability … --online`` keep only the matching workers.

The workers: ``gpu-box`` (labels ``env=prod,gpu=1``, plus the e2e test services), ``dev-box``
(``env=dev``) and ``gone`` (``env=prod``; stopped, so offline)."""

from __future__ import annotations

import json
import platform
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.procs import Env

from leapcore import sync
from leapcore.errors import LocalError
from leapcore.store.pinstore import PinStore

BUILTIN = ["exec", "files", "info", "pty", "tcp", "workspace"]
#: The groups of the methods ``e2e_services:install`` adds.
CUSTOM = ["count", "echo", "hello", "invert", "sha256"]
CLASSIC = ("--encryption-mode", "classic")


@pytest.fixture(name="env", scope="module")
def env_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    env = Env(tmp_path_factory.mktemp("caps"))
    try:
        env.start_hub()
        env.login()
        gone = env.start_worker("gone", env.reg_key(), flags=[*CLASSIC, "--labels", "env=prod"])
        env.wait_online("gone")
        gone.signal(signal.SIGTERM)  # a clean stop: its link closes, it is offline at once
        assert gone.wait() == 0, gone.stderr()
        gpu_flags = [*CLASSIC, "--labels", "env=prod,gpu=1", "--services", "e2e_services:install"]
        env.start_worker("gpu-box", env.reg_key(), flags=gpu_flags, PYTHONPATH=env.tests_on_path())
        env.start_worker("dev-box", env.reg_key(), flags=[*CLASSIC, "--labels", "env=dev"])
        env.wait_online("gpu-box", "dev-box")
        yield env
    finally:
        env.cleanup()


def names(workers: list[dict[str, Any]]) -> set[str]:
    return {w["name"] for w in workers}


def test_the_hub_lists_what_each_worker_advertised(env: Env) -> None:
    listed = env.workers()
    os_name, arch = platform.system().lower(), platform.machine()
    gpu, dev, gone = listed["gpu-box"], listed["dev-box"], listed["gone"]
    assert gpu["capabilities"] == sorted([*BUILTIN, *CUSTOM])
    assert dev["capabilities"] == gone["capabilities"] == BUILTIN
    for worker in (gpu, dev, gone):
        assert (worker["os"], worker["arch"]) == (os_name, arch)
    assert gpu["labels"] == {"env": "prod", "gpu": "1"}
    assert (gpu["online"], dev["online"], gone["online"]) == (True, True, False)
    # Exactly these keys, as docs/cli.md's WORKER says.
    assert set(gpu) == {
        "id",
        "name",
        "version",
        "labels",
        "capabilities",
        "os",
        "arch",
        "online",
        "last_seen_at",
        "encryption_mode",
        "fingerprint",
    }


def test_find_workers_filters_on_the_hub(env: Env, tmp_path: Path) -> None:
    with sync.connect(env.url, token=env.token, pins=PinStore(tmp_path / "pins.json")) as hub:
        assert names(hub.find_workers()) == {"gpu-box", "dev-box"}  # online by default
        assert names(hub.find_workers(online=None)) == {"gpu-box", "dev-box", "gone"}
        assert names(hub.find_workers(online=False)) == {"gone"}
        assert names(hub.find_workers(labels={"env": "prod"})) == {"gpu-box"}
        assert names(hub.find_workers(labels={"env": "prod"}, online=None)) == {"gpu-box", "gone"}
        assert names(hub.find_workers(capability="echo")) == {"gpu-box"}
        assert names(hub.find_workers(capability=["exec", "pty"])) == {"gpu-box", "dev-box"}
        assert names(hub.find_workers(capability=iter(["pty", "invert"]))) == {"gpu-box"}
        assert hub.find_workers(labels={"env": "dev"}, capability="echo") == []
        assert hub.find_workers(labels={"env": "prod", "gpu": "2"}) == []
        [gpu] = hub.find_workers(labels={"gpu": "1"}, capability="pty")
        assert gpu == next(w for w in hub.list_workers() if w["name"] == "gpu-box")
        with pytest.raises(LocalError, match="capability 'a b' is not"):
            hub.find_workers(capability="a b")


def test_remote_worker_list_filters(env: Env) -> None:
    def listed(*flags: str) -> set[str]:
        return names(env.json("worker", "list", *flags)["workers"])

    assert listed("--label", "env=prod", "--capability", "echo") == {"gpu-box"}
    assert listed("--label", "env=prod") == {"gpu-box", "gone"}
    assert listed("--label", "env=prod", "--online") == {"gpu-box"}
    assert listed("--capability", "pty", "--capability", "exec") == {"gpu-box", "dev-box", "gone"}
    assert listed("--label", "env=prod", "--label", "gpu=1", "--capability", "sha256") == {
        "gpu-box"
    }
    assert listed("--label", "env=staging") == set()
    table = env.remote("worker", "list", "--label", "env=staging")
    assert table.returncode == 0 and "workers match" in table.stdout
    table = env.remote("worker", "list", "--capability", "echo")
    assert table.returncode == 0, table.stderr
    assert "gpu-box" in table.stdout and "dev-box" not in table.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--label", "envprod"], "--label: a label is KEY=VALUE, got 'envprod'"),
        (["--label", "=prod"], "--label: a label is KEY=VALUE, got '=prod'"),
        (["--label", "env=a", "--label", "env=b"], "--label: 'env' is given twice"),
        (["--capability", "a b"], "--capability: 'a b' is not 1..64 characters"),
    ],
)
def test_bad_filters_are_usage_errors(env: Env, flags: list[str], message: str) -> None:
    done = env.remote("worker", "list", *flags)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    as_json = env.remote("worker", "list", *flags, "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["error"]["code"] == "usage"
