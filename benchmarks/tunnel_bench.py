"""Tunnels (port forward, SOCKS5) through a real hub, against OpenSSH and asyncssh, one run.

    .venv/bin/python benchmarks/tunnel_bench.py [--quick] [--json] [--check] [--only NAME]
    .venv/bin/python benchmarks/tunnel_bench.py --only bulk --size-mib 64 --rounds 3
    .venv/bin/python benchmarks/tunnel_bench.py --only bulk --profile-dir /tmp/prof
    .venv/bin/python benchmarks/tunnel_bench.py --floor

Every side forwards to the same target server process (loopback): a sink that reads a
length-prefixed stream and answers one byte when it has it all, and an echo port. This
process is the load generator (plain trio sockets, the same for every side). The sides:

==========  =======================================================================
leapcore    a forwarder process (``forward_local`` and ``serve_socks5`` of
            :mod:`leapcore.peer.tunnel` on a ``ChannelPool``), a hub process and a
            classic-mode worker process, over WebSocket links. The worker's ``tcp``
            service (``Channel.open_tcp``) when it exists, else a byte-stream service
            ``bench_tcp`` registered here that dials and copies the same way (said in
            the output).
ssh -L      ``ssh -N -L`` against an ``sshd`` this script starts on a loopback port
            (temporary host and user keys, ``UsePAM no``, ``StrictModes no``, as the
            current user), chacha20-poly1305@openssh.com.
ssh -D      the same ``ssh`` with ``-D`` (SOCKS5).
ssh -J      ``ssh -J`` through the same ``sshd`` as the jump host, forwarding at the
            destination: the like-for-like relay hop (two encrypted hops).
asyncssh    a process running asyncssh's ``forward_local_port`` against that ``sshd``
            (chacha20-poly1305).
py floor    with ``--floor``: three bare trio processes
            of leapcore's shape with no crypto, no flow control and no checks
            (``benchmarks/relay_floor.py``): how fast any Python tunnel through a
            relay can be here, so a target below it is known to be out of reach.
==========  =======================================================================

==============  ==============================================================  ==========
benchmark       what is timed                                                    target
==============  ==============================================================  ==========
bulk            ``--size-mib`` (256) MiB one way through the forward, until the  >= 1.0 x
                sink's one-byte answer: throughput ratio leapcore / each side    asyncssh,
                                                                                 >= 0.7 x
                                                                                 ssh -L
connect         connect to the forward's port, send one byte, get the echo back  <= 1.0 x
                (a new forwarded connection to first byte back): time ratio      ssh -L
socks           connect to the SOCKS5 port, greeting + CONNECT, one byte echoed  <= 1.0 x
                (the client pipelines nothing: it waits for each reply)          ssh -D
==============  ==============================================================  ==========

Ratios are per round (each side timed once per round, in rotating order), the median over
the rounds. CPU seconds of each side's processes (whole process trees: sshd's session
children included) are reported per GiB / per connection. Skips, with the reason, whatever
is absent (``sshd``, ``ssh``, ``ssh-keygen``, asyncssh). Results: docs/benchmarks.md.
This file must stay import-side-effect free (spawned processes re-import it).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import trio

NAMES = ["bulk", "connect", "socks"]
TARGETS = {
    ("bulk", "asyncssh"): 1.0,
    ("bulk", "ssh -L"): 0.7,
    ("connect", "ssh -L"): 1.0,
    ("socks", "ssh -D"): 1.0,
}
CIPHER = "chacha20-poly1305@openssh.com"
_LEN = struct.Struct(">Q")
CHUNK = 256 * 1024
BENCH_METHOD = "bench_tcp"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
            out.extend(int(x) for x in f.read().split())
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (plus children they reaped)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += _cpu(p)
        todo.extend(_children(p))
    return total


@contextlib.contextmanager
def profiled(directory: str | None, name: str) -> Iterator[None]:
    if directory is None:
        yield
        return
    os.makedirs(directory, exist_ok=True)
    # CPU time, not wall time: a process that waits (epoll) or is preempted inside a system
    # call would otherwise be charged for it.
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(os.path.join(directory, f"{name}.prof"))


async def _wait_stop(conn: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)


def _run_profiled(
    directory: str | None, name: str, fn: Callable[..., Awaitable[None]], *args: Any
) -> None:
    from leapcore.net.allocator import tune_allocator

    tune_allocator()  # as the CLIs' hub, worker and tunnel processes do
    with profiled(directory, name):
        trio.run(fn, *args)


# -- the target server (shared by every side) ---------------------------------------------------


async def _sink(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        async with stream:
            while True:
                head = b""
                while len(head) < 8:
                    data = await stream.receive_some(8 - len(head))
                    if not data:
                        return
                    head += data
                (left,) = _LEN.unpack(head)
                while left:
                    data = await stream.receive_some(min(left, CHUNK))
                    if not data:
                        return
                    left -= len(data)
                await stream.send_all(b"k")


async def _echo(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        async with stream:
            while data := await stream.receive_some(CHUNK):
                await stream.send_all(data)


async def _target(conn: Connection) -> None:
    async with trio.open_nursery() as nursery:
        sink = await nursery.start(partial(trio.serve_tcp, _sink, 0, host="127.0.0.1"))
        echo = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
        conn.send((sink[0].socket.getsockname()[1], echo[0].socket.getsockname()[1]))
        await _wait_stop(conn)
        nursery.cancel_scope.cancel()


def target_main(conn: Connection) -> None:
    trio.run(_target, conn)


# -- leapcore: hub, worker, forwarder ---------------------------------------------------------


async def _hub(conn: Connection, tmp: Path) -> None:
    from leapcore.crypto.keys import WorkerKeyPair
    from leapcore.hub.server import Hub
    from leapcore.store.workerstate import WorkerState, save_state

    hub = Hub(tmp / "hub.db")
    user, token = hub.store.create_user("bench", _now_ms())
    _, key = hub.store.mint_registration_key(user.id, _now_ms())
    worker, auth = hub.store.register_worker(
        key, name="tunnel", version="1", labels={}, now_ms=_now_ms()
    )
    save_state(tmp / "w", WorkerState(worker.id, auth, WorkerKeyPair.generate()))
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(hub.serve)
        conn.send(
            {
                "url": f"http://{host}:{port}",
                "token": token,
                "worker": worker.id,
                "data": str(tmp / "w"),
            }
        )
        await _wait_stop(conn)
        nursery.cancel_scope.cancel()


def hub_main(conn: Connection, tmp: str, profile_dir: str | None) -> None:
    _run_profiled(profile_dir, "hub", _hub, conn, Path(tmp))


def _has_tcp_service() -> bool:
    from leapcore.peer.channel import Channel

    return hasattr(Channel, "open_tcp")


async def _worker(conn: Connection, url: str, data: str) -> None:
    from leapcore.peer.channel import ByteStream, CallContext
    from leapcore.peer.tunnel import pipe
    from leapcore.worker.daemon import Worker

    daemon = Worker(data, hub_url=url, name="tunnel", encryption_mode="classic")
    if not _has_tcp_service():

        async def bench_tcp(ctx: CallContext, payload: bytes, stream: ByteStream) -> None:
            host, _, port = payload.decode().rpartition(":")
            remote = await trio.open_tcp_stream(host, int(port))
            await pipe(remote, stream)

        daemon.services.add_byte_stream(BENCH_METHOD, bench_tcp)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await daemon.wait_online()
        conn.send("online")
        await _wait_stop(conn)
        daemon.stop()


def worker_main(conn: Connection, url: str, data: str, profile_dir: str | None) -> None:
    _run_profiled(profile_dir, "worker", _worker, conn, url, data)


class _BenchOpener:
    """``open_tcp`` over the stand-in byte-stream service (before the worker's ``tcp``)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    async def open_tcp(self, host: str, port: int) -> Any:
        return await self.channel.open_byte_stream(BENCH_METHOD, f"{host}:{port}".encode())


async def _forwarder(conn: Connection, setup: dict[str, Any], targets: dict[str, int]) -> None:
    import leapcore
    from leapcore.peer.socks5 import serve_socks5
    from leapcore.peer.tunnel import forward_local

    async with (
        leapcore.connect(setup["url"], token=setup["token"], pins=None) as session,
        session.open_channel(setup["worker"]) as channel,
        trio.open_nursery() as nursery,
    ):
        opener: Any = channel if _has_tcp_service() else _BenchOpener(channel)
        sink = await nursery.start(
            forward_local, opener, ("127.0.0.1", 0), ("127.0.0.1", targets["sink"])
        )
        echo = await nursery.start(
            forward_local, opener, ("127.0.0.1", 0), ("127.0.0.1", targets["echo"])
        )
        socks = await nursery.start(serve_socks5, opener, ("127.0.0.1", 0))
        conn.send({"sink": sink[1], "echo": echo[1], "socks": socks[1]})
        await _wait_stop(conn)
        nursery.cancel_scope.cancel()


def forwarder_main(
    conn: Connection, setup: dict[str, Any], targets: dict[str, int], profile_dir: str | None
) -> None:
    _run_profiled(profile_dir, "client", _forwarder, conn, setup, targets)


# -- asyncssh: a local forward in its own process ----------------------------------------------


def asyncssh_main(conn: Connection, port: int, key: str, targets: dict[str, int]) -> None:
    import asyncio

    import asyncssh

    async def run() -> None:
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            username=os.environ.get("USER") or _user(),
            client_keys=[key],
            known_hosts=None,
            encryption_algs=[CIPHER],
        ) as ssh:
            sink = await ssh.forward_local_port("127.0.0.1", 0, "127.0.0.1", targets["sink"])
            echo = await ssh.forward_local_port("127.0.0.1", 0, "127.0.0.1", targets["echo"])
            conn.send({"sink": sink.get_port(), "echo": echo.get_port()})
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    with contextlib.suppress(EOFError, OSError):
        asyncio.run(run())


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


# -- OpenSSH ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def ssh_missing() -> str | None:
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install openssh-server)"
    return None


class OpenSSH:
    """An ``sshd`` on a loopback port and the client configuration to reach it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        for name in ("host", "user"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)],
                check=True,
            )
        (tmp / "authorized_keys").write_bytes((tmp / "user.pub").read_bytes())
        (tmp / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {tmp / 'host'}\n"
            f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPidFile {tmp / 'sshd.pid'}\n"
            "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "AllowTcpForwarding yes\nPermitOpen any\nLogLevel FATAL\n"
            f"Ciphers {CIPHER}\nMaxStartups 100:30:200\nMaxSessions 100\n"
        )
        (tmp / "ssh_config").write_text(
            "Host *\n"
            f"  HostName 127.0.0.1\n  Port {self.port}\n  User {_user()}\n"
            f"  IdentityFile {tmp / 'user'}\n  IdentitiesOnly yes\n  Ciphers {CIPHER}\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            "  ExitOnForwardFailure yes\n  BatchMode yes\n"
        )
        if os.getuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privsep directory
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")])
        self.procs.append(sshd)
        self.sshd_pid = sshd.pid
        _wait_port(self.port, sshd, "sshd")

    def client(self, *args: str) -> tuple[int, int]:
        """Start ``ssh -N -F cfg ARGS bench``; (local port, pid). ARGS uses ``{port}``."""
        port = _free_port()
        argv = ["ssh", "-N", "-F", str(self.tmp / "ssh_config")]
        argv += [a.format(port=port) for a in args] + ["bench"]
        proc = subprocess.Popen(argv)
        self.procs.append(proc)
        _wait_port(port, proc, " ".join(argv))
        return port, proc.pid

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the load generator ---------------------------------------------------------------------


async def bulk_once(port: int, size: int) -> None:
    block = memoryview(bytes(CHUNK))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(_LEN.pack(size))
        left = size
        while left >= CHUNK:
            await stream.send_all(block)
            left -= CHUNK
        if left:
            await stream.send_all(block[:left])
        if await stream.receive_some(1) != b"k":
            raise RuntimeError("the sink did not answer")


async def connect_once(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"x")
        if await stream.receive_some(1) != b"x":
            raise RuntimeError("no echo")


async def socks_once(port: int, echo_port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"\x05\x01\x00")
        if await _exactly(stream, 2) != b"\x05\x00":
            raise RuntimeError("SOCKS5 greeting refused")
        await stream.send_all(
            b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", echo_port)
        )
        reply = await _exactly(stream, 10)
        if reply[1] != 0:
            raise RuntimeError(f"SOCKS5 CONNECT failed: {reply[1]}")
        await stream.send_all(b"x")
        if await stream.receive_some(1) != b"x":
            raise RuntimeError("no echo")


async def _exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        if not data:
            raise RuntimeError("connection closed")
        buf += data
    return buf


async def timed(
    side: str, pids: list[int], cpu: dict[str, float], fn: Callable[[], Awaitable[None]], n: int
) -> float:
    before = [tree_cpu(p) for p in pids]
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(n):
            await fn()
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    spent = [tree_cpu(p) - b for p, b in zip(pids, before, strict=True)]
    cpu[side] = cpu.get(side, 0.0) + sum(spent)
    for i, x in enumerate(spent):
        cpu[f"{side}#{i}"] = cpu.get(f"{side}#{i}", 0.0) + x
    return elapsed / n


async def measure(
    name: str,
    sides: dict[str, tuple[Callable[[], Awaitable[None]], list[int]]],
    rounds: int,
    per_sample: int,
    kind: str,
) -> dict[str, Any]:
    """Each side once per round, rotating the order; ratios leapcore / each other side."""
    cpu: dict[str, float] = {}
    names = list(sides)
    for side in names:  # warm-up
        fn, pids = sides[side]
        await timed(side, pids, {}, fn, 1)
    times: dict[str, list[float]] = {side: [] for side in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for side in order:
            fn, pids = sides[side]
            times[side].append(await timed(side, pids, cpu, fn, per_sample))
    out: dict[str, Any] = {"name": name, "kind": kind, "rounds": rounds, "sides": {}}
    for side in names:
        units = rounds * per_sample
        out["sides"][side] = {
            "median": statistics.median(times[side]),
            "cpu_per_unit": cpu[side] / units,
            "cpu_split": [cpu[f"{side}#{i}"] / units for i in range(len(sides[side][1]))],
        }
        if side == "leapcore":
            continue
        if kind == "time":
            ratios = [a / b for a, b in zip(times["leapcore"], times[side], strict=True)]
        else:
            ratios = [b / a for a, b in zip(times["leapcore"], times[side], strict=True)]
        q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
        target = TARGETS.get((name, side))
        ratio = statistics.median(ratios)
        passed = None
        if target is not None:
            passed = ratio >= target if kind == "throughput" else ratio <= target
        out["sides"][side].update(
            {"ratio": ratio, "iqr": [q[0], q[-1]], "target": target, "passed": passed}
        )
    return out


def show(result: dict[str, Any], size: int) -> None:
    name, kind = result["name"], result["kind"]
    for side, s in result["sides"].items():
        if kind == "throughput":
            value = f"{size / s['median'] / 1e6:7.0f} MB/s"
            cpu = f"{s['cpu_per_unit'] / size * 2**30:6.2f} CPU-s/GiB"
        else:
            value = f"{s['median'] * 1e3:7.2f} ms"
            cpu = f"{s['cpu_per_unit'] * 1e3:6.2f} CPU-ms/conn"
        line = f"{name:8} {side:9} {value}  {cpu}"
        if "ratio" in s:
            line += f"  leapcore/{side}: {s['ratio']:.3f} (IQR {s['iqr'][0]:.3f}-{s['iqr'][1]:.3f})"
            if s["target"] is not None:
                op = ">=" if kind == "throughput" else "<="
                verdict = "PASS" if s["passed"] else "MISS"
                line += f"  target {op} {s['target']}  {verdict}"
        print(line, flush=True)
        if side in ("leapcore", "py floor"):
            unit = size / 2**30 if kind == "throughput" else 1e-3
            split = ", ".join(
                f"{who} {x / unit:.2f}"
                for who, x in zip(("client", "hub", "worker"), s["cpu_split"], strict=True)
            )
            per = "CPU-s/GiB" if kind == "throughput" else "CPU-ms/conn"
            print(f"{'':18} {side} CPU: {split} {per}")


# -- orchestration -----------------------------------------------------------------------------


def main() -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 32 MiB bulk")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument("--only", action="append", choices=NAMES, help="run only this one")
    parser.add_argument("--size-mib", type=int, default=256, help="bulk size (default 256)")
    parser.add_argument("--rounds", type=int, help="rounds per benchmark")
    parser.add_argument(
        "--profile-dir", help="write hub/worker/client cProfile stats (CPU time) here"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="add the side 'py floor' (benchmarks/relay_floor.py)",
    )
    args = parser.parse_args()
    only = args.only or NAMES
    size = (32 if args.quick else args.size_mib) * 2**20
    rounds = args.rounds or (3 if args.quick else 7)
    missing = ssh_missing()
    if missing:
        print(f"tunnel_bench: skipped: {missing}")
        return 0
    try:
        import asyncssh  # noqa: F401

        have_asyncssh = True
    except ImportError:
        print(
            "tunnel_bench: asyncssh is not installed (pip install -e .[bench]): its side is skipped"
        )
        have_asyncssh = False
    started = time.time()
    ctx = mp.get_context("spawn")
    procs: list[tuple[mp.process.BaseProcess, Connection]] = []

    def start(target: Callable[..., None], *targs: Any) -> tuple[Connection, int]:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child, *targs))
        proc.start()
        child.close()
        procs.append((proc, parent))
        assert proc.pid is not None
        return parent, proc.pid

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tunnel-bench-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "ssh").mkdir()
        ssh = None
        try:
            target_conn, _target_pid = start(target_main)
            sink_port, echo_port = target_conn.recv()
            targets = {"sink": sink_port, "echo": echo_port}
            hub_conn, hub_pid = start(hub_main, tmpdir, args.profile_dir)
            setup = hub_conn.recv()
            worker_conn, worker_pid = start(
                worker_main, setup["url"], setup["data"], args.profile_dir
            )
            assert worker_conn.recv() == "online"
            fwd_conn, fwd_pid = start(forwarder_main, setup, targets, args.profile_dir)
            leap = fwd_conn.recv()
            ssh = OpenSSH(tmp / "ssh")
            L_sink, L_pid = ssh.client("-L", f"{{port}}:127.0.0.1:{sink_port}")
            L_echo, L_echo_pid = ssh.client("-L", f"{{port}}:127.0.0.1:{echo_port}")
            D_port, D_pid = ssh.client("-D", "127.0.0.1:{port}")
            J_sink, J_pid = ssh.client("-J", "bench", "-L", f"{{port}}:127.0.0.1:{sink_port}")
            sshd = [ssh.sshd_pid]
            if have_asyncssh:
                a_conn, a_pid = start(asyncssh_main, ssh.port, str(tmp / "ssh" / "user"), targets)
                a_ports = a_conn.recv()
            service = (
                "worker tcp service"
                if _has_tcp_service()
                else f"stand-in {BENCH_METHOD!r} byte-stream service"
            )
            print(
                f"tunnel_bench: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
                f"bulk {size >> 20} MiB, {rounds} rounds, leapcore via {service}, "
                f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}",
                flush=True,
            )
            leap_pids = [fwd_pid, hub_pid, worker_pid]
            floor: dict[str, int] = {}
            floor_pids: list[int] = []
            if args.floor:
                import relay_floor

                relay_conn, relay_pid = start(relay_floor.relay_main)
                relay_port = relay_conn.recv()
                floor_conn, floor_pid = start(relay_floor.forwarder_main, relay_port, targets)
                dialer = ctx.Process(target=relay_floor.dialer_main, args=(relay_port,))
                dialer.start()
                procs.append((dialer, relay_conn))  # it ends when the relay's link does
                assert dialer.pid is not None
                floor = floor_conn.recv()
                floor_pids = [floor_pid, relay_pid, dialer.pid]

            async def run() -> None:
                if "bulk" in only:
                    sides = {
                        "leapcore": (lambda: bulk_once(leap["sink"], size), leap_pids),
                        "ssh -L": (lambda: bulk_once(L_sink, size), [L_pid, *sshd]),
                        "ssh -J": (lambda: bulk_once(J_sink, size), [J_pid, *sshd]),
                    }
                    if have_asyncssh:
                        sides["asyncssh"] = (
                            lambda: bulk_once(a_ports["sink"], size),
                            [a_pid, *sshd],
                        )
                    if floor:
                        sides["py floor"] = (lambda: bulk_once(floor["sink"], size), floor_pids)
                    r = await measure("bulk", sides, rounds, 1, "throughput")
                    show(r, size)
                    results.append(r)
                if "connect" in only:
                    sides = {
                        "leapcore": (lambda: connect_once(leap["echo"]), leap_pids),
                        "ssh -L": (lambda: connect_once(L_echo), [L_echo_pid, *sshd]),
                    }
                    if have_asyncssh:
                        sides["asyncssh"] = (lambda: connect_once(a_ports["echo"]), [a_pid, *sshd])
                    if floor:
                        sides["py floor"] = (lambda: connect_once(floor["echo"]), floor_pids)
                    r = await measure("connect", sides, rounds * 3, 20, "time")
                    show(r, size)
                    results.append(r)
                if "socks" in only:
                    sides = {
                        "leapcore": (lambda: socks_once(leap["socks"], echo_port), leap_pids),
                        "ssh -D": (lambda: socks_once(D_port, echo_port), [D_pid, *sshd]),
                    }
                    if floor:
                        sides["py floor"] = (
                            lambda: socks_once(floor["socks"], echo_port),
                            floor_pids,
                        )
                    r = await measure("socks", sides, rounds * 3, 20, "time")
                    show(r, size)
                    results.append(r)

            trio.run(run)
        finally:
            for _proc, conn in procs:
                with contextlib.suppress(OSError):
                    conn.send("stop")
            for proc, _ in procs:
                proc.join(15)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
            if ssh is not None:
                ssh.close()
    print(f"({time.time() - started:.0f} s)")
    if args.json:
        print(
            json.dumps(
                {"python": platform.python_version(), "size": size, "results": results}, indent=2
            )
        )
    if args.check and any(s.get("passed") is False for r in results for s in r["sides"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
