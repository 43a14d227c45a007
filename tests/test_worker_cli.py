"""``leapcore-worker run`` as a real subprocess: the startup refusals and how the daemon ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import trio
from test_workerd import FakeHub, HubLink

from leapcore.link_codec import Deregister, DeregisterAck, Register, Registered
from leapcore.netserver import LinkServer
from leapcore.workerstate import (
    ALREADY_REGISTERED,
    STATE_FILE,
    UNREGISTERED,
    WorkerState,
    load_state,
    save_state,
)

KEY = "cli-reg-key-secret-0001"


def _script() -> str:
    path = Path(sys.executable).with_name("leapcore-worker")
    found = str(path) if path.exists() else shutil.which("leapcore-worker")
    assert found, "console script leapcore-worker is not installed"
    return found


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAPCORE_")}
    env["HOME"] = str(home)
    return env


def worker_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_script(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_env(home),
    )


def test_unregistered_without_a_key_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = worker_cli(tmp_path, "run", "--hub", "http://127.0.0.1:9", "--data-dir", str(data))
    assert proc.returncode == 2
    assert proc.stderr == f"error: {UNREGISTERED}\n"
    # Keys are made and saved before the check; the ids stay empty.
    state = load_state(data)
    assert state.keys is not None and not state.registered


def test_registered_with_a_key_is_refused_and_the_key_not_consumed(
    tmp_path: Path, generated_keypair: object
) -> None:
    data = tmp_path / "data"
    save_state(data, WorkerState("w-1", "tok-1", generated_keypair))  # type: ignore[arg-type]
    before = (data / STATE_FILE).read_bytes()
    # The hub URL points nowhere: contacting it would fail differently.
    proc = worker_cli(
        tmp_path, "--hub", "http://127.0.0.1:9", "--data-dir", str(data), "--registration-key", KEY
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: {ALREADY_REGISTERED}\n"
    assert (data / STATE_FILE).read_bytes() == before


def test_bad_labels_and_mode_are_usage_errors(tmp_path: Path) -> None:
    proc = worker_cli(tmp_path, "run", "--data-dir", str(tmp_path), "--labels", "a=1,oops")
    assert proc.returncode == 2
    assert "labels: 'oops' is not key=value" in proc.stderr
    proc = worker_cli(tmp_path, "run", "--data-dir", str(tmp_path), "--encryption-mode", "rot13")
    assert proc.returncode == 2
    assert "unknown encryption mode" in proc.stderr


async def test_register_then_deregistered_exits_0(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def script(link: HubLink, n: int) -> None:
        if n == 0:
            register = await link.recv()
            assert isinstance(register, Register)
            assert register.labels == {"site": "lab", "rack": "4"}
            await link.send(Registered("w-3", "tok-3"))
            return
        await link.handshake()
        await link.send(Deregister(9, "worker deregistered by owner"))
        assert await link.recv() == DeregisterAck(9)

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            hub = FakeHub(nursery, script)
            host, port = await nursery.start(LinkServer(hub.on_link).serve_tcp, "127.0.0.1", 0)
            env = _env(tmp_path)
            env["LEAPCORE_WORKER_REGISTRATION_KEY"] = KEY
            env["LEAPCORE_WORKER_LABELS"] = "site=lab, rack=4"
            proc = await trio.run_process(
                [_script(), "--hub", f"http://{host}:{port}", "--data-dir", str(data)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
            nursery.cancel_scope.cancel()
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "deregistered by the hub" in stderr
    assert not (data / STATE_FILE).exists()
    assert len(hub.links) == 2


async def test_sigterm_stops_gracefully(tmp_path: Path, generated_keypair: object) -> None:
    data = tmp_path / "data"
    save_state(data, WorkerState("w-1", "tok-1", generated_keypair))  # type: ignore[arg-type]

    greeted = trio.Event()

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        greeted.set()
        await link.drain()

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            hub = FakeHub(nursery, script)
            host, port = await nursery.start(LinkServer(hub.on_link).serve_tcp, "127.0.0.1", 0)
            process = await trio.lowlevel.open_process(
                [_script(), "run", "--hub", f"http://{host}:{port}", "--data-dir", str(data)],
                env=_env(tmp_path),
                stderr=subprocess.PIPE,
            )
            await greeted.wait()  # the worker is connected and greeted
            process.send_signal(signal.SIGTERM)
            code = await process.wait()
            nursery.cancel_scope.cancel()
    assert code == 0
    assert json.loads((data / STATE_FILE).read_text())["worker_id"] == "w-1"
