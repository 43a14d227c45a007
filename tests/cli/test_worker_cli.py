"""``leapcore-worker run`` as a real subprocess: the startup refusals and how the daemon ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from support.fakehub import FakeHub, HubLink
from support.hubpeer import http1, parse

from leapcore.net.listen import LinkServer
from leapcore.proto.link_codec import Deregister, DeregisterAck, Register, Registered
from leapcore.store.config import WORKER_ENV_PREFIX, WORKER_KEYS, layer
from leapcore.store.workerstate import (
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


async def greeting_hub(
    nursery: trio.Nursery, data: Path, keypair: object
) -> tuple[str, trio.Event]:
    """A fake hub that greets worker ``w-1`` (its state saved in ``data``) and answers its
    heartbeats: ``(its URL, set once the worker is greeted)``."""
    save_state(data, WorkerState("w-1", "tok-1", keypair))  # type: ignore[arg-type]
    greeted = trio.Event()

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        greeted.set()
        await link.drain()

    hub = FakeHub(nursery, script)
    host, port = await nursery.start(LinkServer(hub.on_link).serve_tcp, "127.0.0.1", 0)
    return f"http://{host}:{port}", greeted


async def test_sigterm_stops_gracefully(tmp_path: Path, generated_keypair: object) -> None:
    data = tmp_path / "data"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            url, greeted = await greeting_hub(nursery, data, generated_keypair)
            process = await trio.lowlevel.open_process(
                [_script(), "run", "--hub", url, "--data-dir", str(data)],
                env=_env(tmp_path),
                stderr=subprocess.PIPE,
            )
            await greeted.wait()  # the worker is connected and greeted
            process.send_signal(signal.SIGTERM)
            code = await process.wait()
            nursery.cancel_scope.cancel()
    assert code == 0
    assert json.loads((data / STATE_FILE).read_text())["worker_id"] == "w-1"


# -- --services MODULE:CALLABLE -------------------------------------------------------------

#: Modules the --services tests import (written to a directory put on PYTHONPATH).
SERVICE_MODULES = {
    "good_methods.py": (
        "from leapcore.peer.channel import Services\n"
        "VALUE = 7\n"
        "def install(services, worker):\n"
        "    async def hello(ctx, payload):\n"
        "        return worker.name.encode()\n"
        "    services.add_rpc('hello', hello)\n"
        "def clash(services, worker):\n"
        "    services.add_rpc('info', lambda ctx, payload: b'')\n"
        "async def install_async(services, worker):\n"
        "    pass\n"
        "class Holder:\n"
        "    def install(services, worker):\n"
        "        pass\n"
    ),
    "needs_dep.py": "import leapcore_no_such_dependency\n",
    "boom_at_import.py": "raise RuntimeError('boom at import')\n",
    "broken_syntax.py": "def install(:\n",
}


def _service_env(home: Path, **extra: str) -> dict[str, str]:
    mods = home / "mods"
    mods.mkdir(exist_ok=True)
    for name, text in SERVICE_MODULES.items():
        (mods / name).write_text(text)
    return {**_env(home), "PYTHONPATH": str(mods), **extra}


def services_cli(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``leapcore-worker run`` (unregistered, no key: it would exit 2 after the services)."""
    return subprocess.run(
        [
            _script(),
            "run",
            "--hub",
            "http://127.0.0.1:9",
            "--data-dir",
            str(home / "data"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_service_env(home, **extra),
    )


SERVICE_ERRORS = [
    ("good_methods", "services: 'good_methods' is not MODULE:CALLABLE (for example "
     "mypkg.methods:install)"),
    ("good_methods:", "services: 'good_methods:' is not MODULE:CALLABLE"),
    (":install", "services: ':install' is not MODULE:CALLABLE"),
    ("good methods:install", "services: 'good methods:install' is not MODULE:CALLABLE"),
    ("a:b:c", "services: 'a:b:c' is not MODULE:CALLABLE"),
    ("no_such_module_here:install", "services: no module named 'no_such_module_here' (from "
     "'no_such_module_here:install'); is its directory on PYTHONPATH?"),
    ("good_methods.sub:install", "services: no module named 'good_methods.sub' (from "
     "'good_methods.sub:install'); is its directory on PYTHONPATH?"),
    ("needs_dep:install", "services: importing 'needs_dep' (from 'needs_dep:install') failed: "
     "ModuleNotFoundError: No module named 'leapcore_no_such_dependency'"),
    ("boom_at_import:install", "services: importing 'boom_at_import' (from "
     "'boom_at_import:install') failed: RuntimeError: boom at import"),
    ("broken_syntax:install", "services: importing 'broken_syntax' (from "
     "'broken_syntax:install') failed: SyntaxError: "),
    ("good_methods:nope", "services: module 'good_methods' has no attribute 'nope' (from "
     "'good_methods:nope')"),
    ("good_methods:Holder.nope", "services: module 'good_methods' has no attribute "
     "'Holder.nope' (from 'good_methods:Holder.nope')"),
    ("good_methods:VALUE", "services: 'good_methods:VALUE' is not callable (it is int); name "
     "a function taking (services, worker)"),
    ("good_methods:clash", "services: good_methods:clash failed: StreamUsageError: method "
     "'info' is already registered"),
    ("good_methods:install_async", "services: good_methods:install_async returned an "
     "awaitable; it must be a plain (not async) function that registers methods and returns"),
]  # fmt: skip


def test_services_errors_are_usage_errors_before_any_state(tmp_path: Path) -> None:
    """Each bad ``--services`` exits 2 with one specific line on stderr and no traceback;
    nothing is written (no keys: a registration key would not be consumed either)."""
    procs = {
        spec: subprocess.Popen(
            [
                _script(),
                "run",
                "--hub",
                "http://127.0.0.1:9",
                "--data-dir",
                str(tmp_path / "data"),
                "--services",
                spec,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_service_env(tmp_path),
        )
        for spec, _ in SERVICE_ERRORS
    }
    for spec, message in SERVICE_ERRORS:
        out, err = procs[spec].communicate(timeout=60)
        assert procs[spec].returncode == 2, (spec, err)
        assert err.startswith(f"error: {message}"), (spec, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert out == ""
    assert not (tmp_path / "data").exists()


def test_services_are_installed_before_startup_checks(tmp_path: Path) -> None:
    """Good installers run in order (logged with what they added), then the usual startup
    table applies: here, unregistered without a key exits 2 as before."""
    proc = services_cli(
        tmp_path, "--services", "good_methods:install", "--services", "good_methods:Holder.install"
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].endswith(
        "INFO leapcore.worker.builtin_services: services: good_methods:install added hello"
    )
    assert lines[1].endswith(
        "INFO leapcore.worker.builtin_services: services: "
        "good_methods:Holder.install added no methods"
    )
    assert lines[2:] == [f"error: {UNREGISTERED}"]


def test_services_from_the_environment_and_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('services = ["good_methods:install", "nope_module:x"]\n')
    # The file's list is used...
    proc = services_cli(tmp_path, "--config", str(config))
    assert proc.returncode == 2
    assert "services: good_methods:install added hello" in proc.stderr
    assert "error: services: no module named 'nope_module'" in proc.stderr
    # ...the environment's (comma-separated) replaces it whole...
    proc = services_cli(
        tmp_path,
        "--config",
        str(config),
        LEAPCORE_WORKER_SERVICES=" good_methods:install , , env_module:x",
    )
    assert proc.returncode == 2
    assert "error: services: no module named 'env_module'" in proc.stderr
    assert "nope_module" not in proc.stderr
    # ...and flags replace both.
    proc = services_cli(
        tmp_path,
        "--config",
        str(config),
        "--services",
        "good_methods:install",
        LEAPCORE_WORKER_SERVICES="env_module:x",
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"error: {UNREGISTERED}"
    # An empty variable: no installers at all.
    proc = services_cli(tmp_path, "--config", str(config), LEAPCORE_WORKER_SERVICES="")
    assert proc.stderr == f"error: {UNREGISTERED}\n"

    for text, message in [
        ('services = "good_methods:install"\n', "setting 'services' must be list, got str"),
        ("services = [1]\n", "setting 'services' must be a list of strings, got an item of "
         "type int"),
    ]:  # fmt: skip
        config.write_text(text)
        proc = services_cli(tmp_path, "--config", str(config))
        assert proc.returncode == 2
        assert proc.stderr == f"error: {config}: {message}\n"


def test_services_setting_layers() -> None:
    """Pure: defaults < file < environment < flags, a later layer replacing the list."""

    def services(file: list[str] | None, env: str | None, flag: list[str] | None) -> object:
        return layer(
            WORKER_KEYS,
            file_values=None if file is None else {"services": file},
            env={} if env is None else {"LEAPCORE_WORKER_SERVICES": env},
            prefix=WORKER_ENV_PREFIX,
            flags={} if flag is None else {"services": flag},
        )["services"]

    assert services(None, None, None) == []
    assert services(["f:a"], None, None) == ["f:a"]
    assert services(["f:a"], "e:a, e:b,", None) == ["e:a", "e:b"]
    assert services(["f:a"], "e:a", ["x:y", "x:z"]) == ["x:y", "x:z"]
    assert services(["f:a"], "", None) == []
    first = services(None, None, None)
    assert isinstance(first, list)
    first.append("oops")
    assert services(None, None, None) == []  # the default is never shared


# -- --metrics-listen ---------------------------------------------------------------------


def test_a_remote_metrics_address_is_refused_without_the_escape(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = worker_cli(tmp_path, "run", "--data-dir", str(data), "--metrics-listen", "0.0.0.0:9100")
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: metrics_listen must be a loopback address (the metrics endpoint is "
        'unauthenticated; --metrics-allow-remote lifts this), got "0.0.0.0"\n'
    )
    assert not data.exists()  # refused before anything was touched
    env = _env(tmp_path)
    env["LEAPCORE_WORKER_METRICS_LISTEN"] = "localhost:9100"
    proc = subprocess.run(
        [_script(), "run", "--data-dir", str(data), "--metrics-allow-remote"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 2
    assert 'metrics_listen must be an IP address, got "localhost"' in proc.stderr


async def _line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        assert chunk, f"stdout ended: {bytes(buffer)!r}"
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


@pytest.mark.parametrize(
    ("listen", "extra"),
    [("127.0.0.1:0", []), ("0.0.0.0:0", ["--metrics-allow-remote"])],
    ids=["loopback", "allow-remote"],
)
async def test_the_worker_serves_its_metrics(
    tmp_path: Path, generated_keypair: object, listen: str, extra: list[str]
) -> None:
    data = tmp_path / "data"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            url, greeted = await greeting_hub(nursery, data, generated_keypair)
            process = await trio.lowlevel.open_process(
                [
                    _script(),
                    "run",
                    "--hub",
                    url,
                    "--data-dir",
                    str(data),
                    "--metrics-listen",
                    listen,
                    *extra,
                ],
                env=_env(tmp_path),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert process.stdout is not None and process.stderr is not None
            try:
                line = await _line(process.stdout, bytearray())
            except AssertionError:
                raise AssertionError(await process.stderr.receive_some(65536)) from None
            match = re.fullmatch(r"leapcore-worker metrics on http://([0-9.]+):(\d+)/metrics", line)
            assert match, line
            assert match[1] == listen.rpartition(":")[0]
            address = ("127.0.0.1", int(match[2]))
            await greeted.wait()
            while True:  # the worker has the greeting once it answers so
                status, headers, body = await http1(address, b"GET /metrics HTTP/1.1\r\n\r\n")
                samples = parse(body.decode())
                if samples[("leapcore_worker_up", ())] == 1:
                    break
                await trio.sleep(0.01)
            assert status == 200 and headers["content-type"].startswith("text/plain; version=")
            assert samples[("leapcore_worker_links_greeted_total", ())] == 1
            assert ("process_resident_memory_bytes", ()) in samples
            status, _, body = await http1(address, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert (status, body) == (200, b"ok\nlink online\n")
            process.send_signal(signal.SIGTERM)
            code = await process.wait()
            nursery.cancel_scope.cancel()
    assert code == 0


def test_a_metrics_port_in_use_is_an_error(tmp_path: Path, generated_keypair: object) -> None:
    data = tmp_path / "data"
    save_state(data, WorkerState("w-1", "tok-1", generated_keypair))  # type: ignore[arg-type]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = worker_cli(
            tmp_path,
            "run",
            "--hub",
            "http://127.0.0.1:9",
            "--data-dir",
            str(data),
            "--metrics-listen",
            f"127.0.0.1:{port}",
        )
    assert proc.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port} (metrics_listen): " in proc.stderr
