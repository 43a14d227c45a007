"""Running the real ``leapcore-hub``, ``leapcore-worker`` and ``leapcore`` processes on loopback.

Imported by the process suites as ``from procs import …``; the ``env`` fixture is registered
in a test module by importing ``env_fixture``. Every wait is a bounded loop on a condition (an
output line, a file, a process exit) — never a fixed sleep.

:class:`Setup` names how the hub listens and how clients reach it: WebSocket or HTTP/2 over
TCP, TLS (a throwaway CA made with ``trustme``) or a Unix socket. :class:`Env` starts a hub in
that setup, restarts it on the same address, and gives every worker and remote command the
``--transport`` / ``--ca-file`` flags the setup needs.

For the suite's secret check (:mod:`support.secretlog`) the stderr of every command
:meth:`Env.run` runs, and of every background process when :meth:`Env.cleanup` ends it, is
appended to the session's ``procs.log``, and the secrets in a command's ``--json`` output
(tokens, registration keys) are recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest

from support.secretlog import append_log, record_secret, record_secrets_in

T = TypeVar("T")
#: This directory: test-only modules (``e2e_services``) that subprocesses import.
TESTS_DIR = Path(__file__).resolve().parent
TIMEOUT = 20.0
#: What the worker logs before each reconnect wait (the delay, to the millisecond).
RECONNECT = re.compile(r"disconnected; reconnecting in (\d+\.\d{3})s")


def script(name: str) -> str:
    """The path of console script ``name``: beside this Python first, then on PATH."""
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"console script {name} is not installed"
    return found


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
    """Poll ``condition`` until it is true-ish; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


class Proc:
    """A background process whose stdout and stderr go to files."""

    def __init__(self, env: dict[str, str], out: Path, *args: str) -> None:
        self.out, self.err = out.with_suffix(".out"), out.with_suffix(".err")
        with self.out.open("wb") as stdout, self.err.open("wb") as stderr:
            self.popen = subprocess.Popen(args, stdout=stdout, stderr=stderr, env=env)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def _find(self, read: Callable[[], str], prefix: str, where: str) -> str:
        def find() -> str | None:
            for line in read().splitlines():
                if line.startswith(prefix):
                    return line
            assert self.popen.poll() is None, f"exited: {self.stdout()} {self.stderr()}"
            return None

        return wait_for(find, f"a line starting {prefix!r} on {where}")

    def line(self, prefix: str) -> str:
        """The first stdout line starting with ``prefix`` (waits for it)."""
        return self._find(self.stdout, prefix, "stdout")

    def logged(self, text: str, count: int = 1, timeout: float = TIMEOUT) -> str:
        """Wait until ``text`` occurs ``count`` times on stderr (while the process runs)."""

        def enough() -> str | None:
            err = self.stderr()
            if err.count(text) >= count:
                return err
            assert self.popen.poll() is None, f"exited {self.popen.returncode}: {err}"
            return None

        return wait_for(enough, f"{text!r} x{count} on stderr", timeout)

    def delays(self) -> list[float]:
        """Every reconnect delay the worker logged so far, in order."""
        return [float(m) for m in RECONNECT.findall(self.stderr())]

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.popen.wait(timeout)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


@attrs.frozen
class Setup:
    """How the hub listens and how its clients reach it."""

    name: str
    transport: str = "websocket"
    tls: bool = False
    unix: bool = False


WEBSOCKET = Setup("websocket")
H2 = Setup("h2", transport="h2")
TLS_H2 = Setup("tls-h2", transport="h2", tls=True)
UNIX = Setup("unix", unix=True)


class Env:
    """One isolated hub (data dir, users, listening address) and its clients, in ``tmp``."""

    def __init__(self, tmp: Path, setup: Setup = WEBSOCKET) -> None:
        self.tmp = tmp
        self.setup = setup
        self.config = tmp / "client"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LEAPCORE_")}
        self.env["HOME"] = str(tmp)
        self.env["LEAPCORE_CONFIG_DIR"] = str(self.config)
        self.procs: list[Proc] = []
        #: The latest worker process started under each name.
        self.worker_procs: dict[str, Proc] = {}
        self.hub_dir = tmp / "hub"
        self.url = ""
        self.token = ""
        self.hub: Proc | None = None
        self.hubs = 0
        #: The TCP address the hub listens on (kept across restarts).
        self.listen = "127.0.0.1:0"
        self.ca_file: Path | None = None
        self._tls_files: tuple[Path, Path] | None = None
        self._socket_dir: str | None = None
        #: Extra ``leapcore-hub serve`` flags (``--web-listen ...``).
        self.hub_flags: list[str] = []

    # -- plain commands ---------------------------------------------------------------

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **extra}
        proc = subprocess.run(
            [script(args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            env=env,
        )
        append_log("procs.log", " ".join(args[:3]), proc.stderr)
        if proc.stdout.startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                record_secrets_in(json.loads(proc.stdout))
        return proc

    def client_flags(self) -> list[str]:
        """``--transport`` (and ``--ca-file`` for TLS) for this setup's clients and workers."""
        flags = ["--transport", self.setup.transport]
        if self.ca_file is not None:
            flags += ["--ca-file", str(self.ca_file)]
        return flags

    def remote(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``leapcore remote ARGS`` with the setup's client flags; the hub from LEAPCORE_HUB."""
        return self.run("leapcore", "remote", *args, *self.client_flags(), LEAPCORE_HUB=self.url)

    def json(self, *args: str) -> Any:
        proc = self.remote(*args, "--json")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return json.loads(proc.stdout)

    def admin(self, *args: str) -> Any:
        """``leapcore-hub admin ARGS --json`` on this hub's data directory (no hub needed)."""
        proc = self.run("leapcore-hub", "admin", *args, "--json", "--data-dir", str(self.hub_dir))
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return json.loads(proc.stdout)

    def db(self) -> sqlite3.Connection:
        """The hub's database, opened directly (close it after use)."""
        return sqlite3.connect(self.hub_dir / "hub.db", timeout=TIMEOUT)

    # -- background processes ---------------------------------------------------------

    def start(self, name: str, *args: str, **extra: str) -> Proc:
        proc = Proc({**self.env, **extra}, self.tmp / name, script(args[0]), *args[1:])
        self.procs.append(proc)
        return proc

    def _tls(self) -> tuple[Path, Path]:
        """A CA (its certificate in ``ca_file``) and a server certificate for 127.0.0.1."""
        if self._tls_files is None:
            import trustme

            ca = trustme.CA()
            server = ca.issue_cert("127.0.0.1", "localhost")
            self.ca_file = self.tmp / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            cert, key = self.tmp / "hub-cert.pem", self.tmp / "hub-key.pem"
            cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
            server.private_key_pem.write_to_path(str(key))
            self._tls_files = cert, key
        return self._tls_files

    def unix_path(self) -> str:
        """A short socket path (``sun_path`` holds 108 bytes; ``tmp_path`` may be longer)."""
        if self._socket_dir is None:
            self._socket_dir = tempfile.mkdtemp(prefix="lc-")
        return os.path.join(self._socket_dir, "hub.sock")

    def start_hub(self) -> Proc:
        """Start the hub in this setup; the first time, create user alice (``token``).

        A second call is a restart on the same address: the same TCP port, Unix socket path
        and TLS certificate. ``url`` is what clients dial (``unix:PATH`` for a Unix socket).
        """
        if not self.token:
            created = self.run("leapcore-hub", "admin", "user", "create", "alice", "--json",
                               "--data-dir", str(self.hub_dir))  # fmt: skip
            assert created.returncode == 0, created.stderr
            self.token = record_secret(json.loads(created.stdout)["token"])
        args = ["--listen", self.listen, "--data-dir", str(self.hub_dir)]
        if self.setup.unix:
            args += ["--listen-unix", self.unix_path()]
        if self.setup.tls:
            cert, key = self._tls()
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        args += self.hub_flags
        self.hubs += 1
        hub = self.start(f"hub{self.hubs}", "leapcore-hub", "serve", *args)
        tcp = hub.line("leapcore-hub listening on ").split()[-1]
        scheme = "https" if self.setup.tls else "http"
        assert tcp.startswith(f"{scheme}://127.0.0.1:"), tcp
        if self.listen.endswith(":0"):
            self.listen = tcp.removeprefix(f"{scheme}://")
        assert tcp == f"{scheme}://{self.listen}"
        self.url = tcp
        if self.setup.unix:
            self.url = hub.line("leapcore-hub listening on unix:").split()[-1]
            assert self.url == f"unix:{self.unix_path()}"
        self.hub = hub
        return hub

    def kill_hub(self) -> None:
        """SIGKILL the hub (no go-away) and reap it."""
        assert self.hub is not None
        self.hub.signal(signal.SIGKILL)
        assert self.hub.wait() == -signal.SIGKILL

    def login(self) -> None:
        proc = self.remote("login", "--token", self.token)
        assert proc.returncode == 0, proc.stderr
        assert "logged in to" in proc.stdout

    def reg_key(self) -> str:
        """A fresh registration key, minted through the CLI (``--no-wait``)."""
        key = self.json("worker", "reg-key", "create", "--no-wait")["registration_key"]
        return record_secret(str(key))

    def worker_dir(self, name: str) -> Path:
        return self.tmp / name

    def start_worker(
        self,
        name: str,
        key: str | None = None,
        *,
        data: str | None = None,
        flags: Sequence[str] = (),
        **extra: str,
    ) -> Proc:
        """``leapcore-worker run`` with its data in ``tmp/NAME`` (or ``tmp/DATA``: another
        worker's directory); with ``key``, it registers first. ``flags`` are added to the
        command line, ``extra`` to its environment."""
        data_dir = self.worker_dir(data or name)
        args = ["--hub", self.url, "--data-dir", str(data_dir), "--name", name]
        if key is not None:
            args += ["--registration-key", key]
        args += [*self.client_flags(), *flags]
        proc = self.start(name, "leapcore-worker", "run", *args, **extra)
        self.worker_procs[name] = proc
        return proc

    def tests_on_path(self) -> str:
        """A ``PYTHONPATH`` value: this directory first, then the environment's own."""
        inherited = self.env.get("PYTHONPATH")
        return os.pathsep.join([str(TESTS_DIR), *([inherited] if inherited else [])])

    def workers(self) -> dict[str, dict[str, Any]]:
        """``remote worker list``, by worker name."""
        return {w["name"]: w for w in self.json("worker", "list")["workers"]}

    def wait_online(self, *names: str, timeout: float = TIMEOUT) -> dict[str, dict[str, Any]]:
        """Wait until every named worker is listed online with its encryption mode (the hub
        publishes a worker at its connect and records the mode from the heartbeat that
        follows, so for a moment a worker can be online with no mode yet); returns the
        listing. A worker process of that name that exits meanwhile fails the wait at once."""

        def online() -> dict[str, dict[str, Any]] | None:
            for name in names:
                proc = self.worker_procs.get(name)
                if proc is not None and proc.popen.poll() is not None:
                    raise AssertionError(f"worker {name} exited: {proc.stderr()}")
            listed = self.workers()
            if all(
                listed.get(n, {}).get("online") and "encryption_mode" in listed[n] for n in names
            ):
                return listed
            return None

        return wait_for(online, f"{', '.join(names)} to be online", timeout)

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()
            with contextlib.suppress(OSError):
                append_log("procs.log", str(proc.err), proc.stderr())
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


@pytest.fixture(name="env")
def env_fixture(tmp_path: Path) -> Iterator[Env]:
    """An :class:`Env` in ``tmp_path``; every process it started is killed afterwards."""
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.cleanup()


@contextlib.contextmanager
def worker_box(tmp: Path) -> Iterator[tuple[Env, Proc]]:
    """A hub in ``tmp``, logged in, with one classic-mode worker ``box`` online; every
    process is killed afterwards (for module-scoped fixtures)."""
    env = Env(tmp)
    try:
        env.start_hub()
        env.login()
        worker = env.start_worker("box", env.reg_key(), flags=["--encryption-mode", "classic"])
        env.wait_online("box")
        yield env, worker
    finally:
        env.cleanup()


def _healthz(url: str) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply
