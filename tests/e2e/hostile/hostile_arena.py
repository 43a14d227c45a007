"""The stage for the hostile suite: a real hub process on loopback, its users and workers, a
bystander with a channel open, and the hub process's memory and descriptors watched.

:class:`Arena` starts (with :class:`procs.Env`) one ``leapcore-hub serve`` on 127.0.0.1 with
the budgets in :data:`HUB_ENV` (``LEAPCORE_HUB_*``) and its web page (:attr:`Arena.web`), two
users — ``alice``, the bystander, and ``mallory``, the attacker — and two real
``leapcore-worker`` processes in classic mode (the tests are not about post-quantum signatures,
which cost ~125 ms each here): ``quiet`` (alice's) and ``target`` (mallory's).
:class:`Bystander` is alice's client in its own process (``hostile_bystander.py``), with one
channel open to ``quiet``. :class:`Watch` samples the hub process's ``VmRSS`` and open
descriptors (``/proc/PID``) in a thread while an attack runs.

Attack traffic comes from other loopback addresses (:data:`ATTACKER` …), never 127.0.0.1,
so a per-address budget the attacker exhausts is never the bystander's.

Shared by ``tests/e2e/hostile`` and ``benchmarks/hub_abuse_bench.py``. Test-support code, not part
of leapcore.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

from support.procs import TIMEOUT, Env, Proc, wait_for

HERE: Final = Path(__file__).resolve().parent
#: Where attacks come from (the hub and its honest peers are on 127.0.0.1).
ATTACKER: Final = "127.0.0.2"
#: More attacker addresses, for budgets counted per address.
ATTACKERS: Final = tuple(f"127.0.0.{n}" for n in range(2, 40))

#: The hub's budgets for this suite, as its environment settings (``LEAPCORE_HUB_<NAME>``);
#: small so that a flood reaches them fast. A setting the hub does not know is ignored.
LIMITS: Final[dict[str, int | float]] = {
    "max_links_per_user": 8,
    "max_links_per_address": 64,
    "max_channels_per_link": 8,
    "max_channels_per_user": 20,
    "max_channels_per_worker": 48,
    "max_live_registration_keys": 10,
    "max_link_queue_bytes": 1024 * 1024,
    "revocation_check_interval": 0.2,
    "deregister_grace": 3.0,
    "handshake_timeout": 2.0,
}
HUB_ENV: Final = {f"LEAPCORE_HUB_{k.upper()}": str(v) for k, v in LIMITS.items()}

#: After an attack, the hub's descriptors must come back to at most baseline + this ...
FD_SLACK: Final = 4
#: ... and its resident memory to at most baseline + this many KiB ...
RSS_SLACK_KIB: Final = 24 * 1024
#: ... within this many seconds of the attack's end.
SETTLE: Final = 10.0


def rss_kib(pid: int) -> int:
    """The process's resident set (``VmRSS``), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ProcessLookupError(pid)


def fd_count(pid: int) -> int:
    """The process's open descriptors."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Watch:
    """Samples a process's RSS and descriptors every few milliseconds in a thread (``with``)."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.base_rss = rss_kib(pid)
        self.base_fds = fd_count(pid)
        self.peak_rss = self.base_rss
        self.peak_fds = self.base_fds
        self.after_rss = self.base_rss
        self.after_fds = self.base_fds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        rss, fds = rss_kib(self.pid), fd_count(self.pid)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_fds = max(self.peak_fds, fds)
        return rss, fds

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except (FileNotFoundError, ProcessLookupError):
                return  # the process is gone: the test says so
            self._stop.wait(self.interval)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def settle(self, seconds: float = SETTLE) -> bool:
        """Wait (bounded) until RSS and descriptors are back within the slack of the baseline;
        records the last reading either way. True when they came back."""
        end = time.monotonic() + seconds
        while True:
            self.after_rss, self.after_fds = self.sample()
            if self.recovered:
                return True
            if time.monotonic() > end:
                return False
            time.sleep(0.05)

    @property
    def recovered(self) -> bool:
        return (
            self.after_fds <= self.base_fds + FD_SLACK
            and self.after_rss <= self.base_rss + RSS_SLACK_KIB
        )

    def report(self) -> dict[str, int]:
        return {
            "base_rss_kib": self.base_rss,
            "peak_rss_kib": self.peak_rss,
            "after_rss_kib": self.after_rss,
            "base_fds": self.base_fds,
            "peak_fds": self.peak_fds,
            "after_fds": self.after_fds,
        }


class Bystander:
    """Alice's client process with one channel open to her worker (``hostile_bystander.py``)."""

    def __init__(self, env: dict[str, str], url: str, worker_id: str, token: str) -> None:
        script = HERE / "hostile_bystander.py"
        self.popen = subprocess.Popen(
            [sys.executable, str(script), "--hub", url, "--worker-id", worker_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, "LEAPCORE_TOKEN": token},
        )
        self._buffer = b""
        first = self._line(TIMEOUT)
        assert first.get("ready"), f"the bystander did not open its channel: {first}"

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = end - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                return {"ok": False, "error": f"no answer within {timeout:g}s"}
            chunk = os.read(fd, 65536)
            if not chunk:
                err = self.popen.stderr.read().decode() if self.popen.stderr else ""
                return {"ok": False, "error": f"bystander exited: {err[-2000:]}"}
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def command(self, text: str, timeout: float) -> dict[str, Any]:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(text.encode() + b"\n")
            self.popen.stdin.flush()
        except BrokenPipeError:
            return {"ok": False, "error": "the bystander process is gone"}
        return self._line(timeout)

    def ping(self) -> dict[str, Any]:
        """One round trip on the existing channel: ``{"ok": True, "rtt_ms": X}`` or why not."""
        return self.command("ping", 10.0)

    def pingfor(self, seconds: float) -> dict[str, Any]:
        return self.command(f"pingfor {seconds}", seconds + 10.0)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.command("quit", 0.0)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


class Arena:
    """One hub process and its cast (see the module docstring); :meth:`start` sets it up."""

    def __init__(self, tmp: Path) -> None:
        self.env = Env(tmp)
        self.env.env.update(HUB_ENV)
        # The read-only web page too (tests/e2e/hostile/test_hostile_web.py).
        self.env.hub_flags = ["--web-listen", "127.0.0.1:0"]
        self.web: tuple[str, int] = ("127.0.0.1", 0)
        self.tests_path = self.env.tests_on_path()
        self.url = ""
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.alice = ""
        self.mallory = ""
        self.mallory_id = ""
        self.quiet_id = ""
        self.target_id = ""

    @property
    def hub(self) -> Proc:
        assert self.env.hub is not None
        return self.env.hub

    @property
    def pid(self) -> int:
        return self.hub.popen.pid

    def start(self) -> Arena:
        env = self.env
        env.start_hub()
        self.url = env.url
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))
        web = self.hub.line("leapcore-hub web page on ").split()[-1]
        web_host, web_port = web.removeprefix("http://").rsplit(":", 1)
        self.web = (web_host, int(web_port))
        self.alice = env.token
        created = self.admin("user", "create", "mallory")
        self.mallory, self.mallory_id = created["token"], created["user"]["id"]
        env.login()  # alice's token saved for `leapcore remote`
        quiet_key = env.reg_key()
        target_key = self.as_mallory("worker", "reg-key", "create", "--no-wait")
        classic = ["--encryption-mode", "classic"]
        env.start_worker("quiet", quiet_key, flags=classic)
        env.start_worker("target", target_key["registration_key"], flags=classic)
        self.quiet_id = env.wait_online("quiet")["quiet"]["id"]
        self.target_id = self.wait_online_as_mallory("target")["target"]["id"]
        return self

    def alive(self) -> bool:
        return self.env.hub is not None and self.hub.popen.poll() is None

    def stop(self) -> None:
        self.env.cleanup()

    # -- commands -------------------------------------------------------------------------

    def admin(self, *args: str) -> Any:
        """``leapcore-hub admin ARGS --json`` on the hub's data directory."""
        return self.env.admin(*args)

    def remote_as(self, token: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``leapcore remote ARGS`` signed in with ``token`` (from the environment)."""
        return self.env.run(
            "leapcore", "remote", *args, LEAPCORE_HUB=self.url, LEAPCORE_TOKEN=token
        )

    def as_mallory(self, *args: str) -> Any:
        proc = self.remote_as(self.mallory, *args, "--json")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return json.loads(proc.stdout)

    def wait_online_as_mallory(self, *names: str) -> dict[str, dict[str, Any]]:
        def online() -> dict[str, dict[str, Any]] | None:
            listed = {w["name"]: w for w in self.as_mallory("worker", "list")["workers"]}
            return listed if all(listed.get(n, {}).get("online") for n in names) else None

        return wait_for(online, f"mallory's {', '.join(names)} online")

    def healthz(self) -> int:
        """The status of ``GET /healthz`` over HTTP/1.1 from 127.0.0.1 (0: no answer)."""
        try:
            with socket.create_connection(self.address, timeout=5) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
        except OSError:
            return 0
        parts = reply.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

    def bystander(self) -> Bystander:
        return Bystander(self.env.env, self.url, self.quiet_id, self.alice)

    def tail(self) -> str:
        """The end of the hub's stderr, for failure messages."""
        return self.hub.stderr()[-3000:] if self.env.hub is not None else ""


_users = itertools.count(1)


class Stage:
    """One case's view of the arena: the bystander (channel open) and the baseline."""

    def __init__(self, arena: Arena, bystander: Bystander) -> None:
        self.arena = arena
        self.bystander = bystander
        self.watch: Watch | None = None

    def new_user(self) -> tuple[str, str]:
        """A fresh attacker account: (token, user id)."""
        created = self.arena.admin("user", "create", f"eve{next(_users)}")
        return created["token"], created["user"]["id"]

    def attack(self) -> Watch:
        """``with stage.attack():`` samples the hub's RSS and descriptors (baseline: now)."""
        self.watch = Watch(self.arena.pid)
        return self.watch

    def assert_survived(
        self, *, peak_rss_kib: int | None = None, peak_fds: int | None = None
    ) -> None:
        """(a) the hub process is alive and answers ``/healthz``; (b) the bystander's channel,
        opened before the attack, still round-trips; (c) the hub's RSS and descriptors come
        back within the slack of the baseline. With ``peak_rss_kib`` / ``peak_fds``, the peaks
        during the attack must also stay within that much of the baseline."""
        watch = self.watch
        assert watch is not None, "no attack was watched"
        arena = self.arena
        problems = []
        if not arena.alive():
            problems.append(f"(a) the hub exited with {arena.hub.popen.returncode}")
        else:
            status = arena.healthz()
            if status != 200:
                problems.append(f"(a) GET /healthz answered {status or 'nothing'}")
        ping = self.bystander.ping()
        if not ping.get("ok"):
            problems.append(f"(b) the bystander's channel failed: {ping.get('error')}")
        if arena.alive() and not watch.settle():
            problems.append(f"(c) the hub did not come back to its baseline: {watch.report()}")
        if peak_rss_kib is not None and watch.peak_rss - watch.base_rss > peak_rss_kib:
            problems.append(
                f"(c) hub RSS grew {watch.peak_rss - watch.base_rss} KiB during the attack "
                f"(bound {peak_rss_kib} KiB): {watch.report()}"
            )
        if peak_fds is not None and watch.peak_fds - watch.base_fds > peak_fds:
            problems.append(
                f"(c) hub descriptors grew by {watch.peak_fds - watch.base_fds} during the "
                f"attack (bound {peak_fds}): {watch.report()}"
            )
        print(f"hub during the attack: {watch.report()}")
        assert not problems, "\n".join(problems) + "\n--- hub stderr (end) ---\n" + arena.tail()
