"""Channels through a real hub on loopback, against same-run baselines.

    .venv/bin/python benchmarks/channel_bench.py [--quick] [--json] [--check] [--only NAME]
    .venv/bin/python benchmarks/channel_bench.py --only bulk_16m --profile-dir /tmp/prof
    .venv/bin/python benchmarks/channel_bench.py --transport h2

Three processes on each side, the same layout: this process is the client; a hub process and a
worker process (two workers, ``pq`` and ``classic``, sharing one ``SigningPool(2)``) for
leapcore; a plain trio TCP relay process and an echo/sink server process for the baselines.
All on loopback, over leapcore's default transport (WebSocket) for the hub path, or
HTTP/2 with ``--transport h2`` (the worker's and the client's links alike).

==============  ===========================================================  ==============
benchmark       leapcore / baseline                                          target
==============  ===========================================================  ==============
pq_open         one post-quantum ``open_channel`` through the hub (until the  ratio <= 1.3
                channel is ready; signature by the worker's pool) / one raw
                ``slhdsa_sign`` in this process, timed in the same round
classic_open    classic ``open_channel`` through the hub: p50 and p90 (ms)    reported
ping_rtt        ``Channel.ping()`` round trip through the hub / 64-byte      ratio <= 3.0
                round trip client -> trio TCP relay -> echo server -> back
bulk_16m        one ``call("sink", 16 MiB - 64 KiB)`` (one way; the reply is  ratio >= 0.5
                empty) / the same plaintext as ChaCha20-Poly1305 frames of
                65519 bytes through the trio TCP relay (encrypt here, decrypt
                at the sink, one-byte ack): throughput ratio
open_rate       opens/s of ``OPEN_BURST`` concurrent post-quantum opens to    reported
                one worker / the ideal 2 processes / one raw signature time
==============  ===========================================================  ==============

Time ratios are leapcore/baseline (lower is better), throughput ratios baseline-time /
leapcore-time (higher is better); each is the median of per-round ratios, the sides timed
back to back in alternating order. For ping_rtt and bulk_16m the CPU seconds each of the three
processes spent during the samples are reported too (``/proc/PID/stat``), which shows where the
time goes. ``--profile-dir`` writes cProfile stats of the hub, worker and client processes.

The signing pool uses "forkserver": this file must stay import-side-effect free (the
``__main__`` guard at the bottom). Results: docs/benchmarks.md.
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
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import trio

NAMES = ["pq_open", "classic_open", "ping_rtt", "bulk_16m", "open_rate"]
#: bulk_16m: the payload of one call (the encoded request must fit in 16 MiB).
BULK_PAYLOAD = 16 * 1024 * 1024 - 65536
#: The baseline's frames: the largest transport plaintext, as leapcore's own frames.
FRAME_PLAINTEXT = 65519
PING_BYTES = 64
OPEN_BURST = 24
_LEN = struct.Struct(">I")
_NONCE = struct.Struct("<4xQ")


def _now_ms() -> int:
    return int(time.time() * 1000)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its own threads, not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def profiled(directory: str | None, name: str) -> Iterator[None]:
    if directory is None:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(os.path.join(directory, f"{name}.prof"))


async def _wait_stop(conn: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)


# -- the hub process ---------------------------------------------------------------------------


def hub_main(conn: Connection, tmp: str, profile_dir: str | None) -> None:
    with profiled(profile_dir, "hub"):
        trio.run(_hub, conn, Path(tmp))


async def _hub(conn: Connection, tmp: Path) -> None:
    from leapcore.crypto.keys import WorkerKeyPair
    from leapcore.hub.server import Hub
    from leapcore.store.workerstate import WorkerState, save_state

    hub = Hub(tmp / "hub.db")
    user, token = hub.store.create_user("bench", _now_ms())
    workers = {}
    for name in ("pq", "classic"):
        _, key = hub.store.mint_registration_key(user.id, _now_ms())
        worker, auth = hub.store.register_worker(
            key, name=name, version="1", labels={}, now_ms=_now_ms()
        )
        save_state(tmp / name, WorkerState(worker.id, auth, WorkerKeyPair.generate()))
        workers[name] = {"id": worker.id, "data": str(tmp / name)}
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(hub.serve)
        conn.send({"url": f"http://{host}:{port}", "token": token, "workers": workers})
        await _wait_stop(conn)
        nursery.cancel_scope.cancel()


# -- the worker process ------------------------------------------------------------------------


def worker_main(
    conn: Connection,
    url: str,
    workers: dict[str, dict[str, str]],
    transport: str,
    profile_dir: str | None,
) -> None:
    with profiled(profile_dir, "worker"):
        trio.run(_workers, conn, url, workers, transport)


async def _workers(
    conn: Connection, url: str, workers: dict[str, dict[str, str]], transport: str
) -> None:
    from leapcore.peer.channel import ByteStream, CallContext
    from leapcore.worker.daemon import Worker
    from leapcore.worker.signpool import SigningPool

    async def sink(ctx: CallContext, payload: bytes) -> bytes:
        return b""

    async def echo(ctx: CallContext, payload: bytes) -> bytes:
        return payload

    async def drain(ctx: CallContext, payload: bytes, stream: ByteStream) -> None:
        """A byte stream read to its end; the answer is the count, 8 bytes big-endian."""
        count = 0
        while data := await stream.receive_some(1 << 20):
            count += len(data)
        await stream.send_all(count.to_bytes(8, "big"))
        await stream.aclose()

    # The signing pool only when a post-quantum worker needs it (its start-up is slow).
    pq = any(name == "pq" for name in workers)
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
        pool = await stack.enter_async_context(SigningPool(processes=2)) if pq else None
        daemons = []
        for name, info in workers.items():
            mode = "post-quantum" if name == "pq" else "classic"
            daemon = Worker(
                info["data"],
                hub_url=url,
                name=name,
                encryption_mode=mode,
                signer=pool,
                transport=transport,
            )
            daemon.services.add_rpc("sink", sink)
            daemon.services.add_rpc("echo", echo)
            daemon.services.add_byte_stream("drain", drain)
            nursery.start_soon(daemon.run)
            daemons.append(daemon)
        for daemon in daemons:
            await daemon.wait_online()
        conn.send("online")
        await _wait_stop(conn)
        for daemon in daemons:
            daemon.stop()


# -- the baseline: echo/sink server and plain relay --------------------------------------------


def server_main(conn: Connection, key: bytes) -> None:
    trio.run(_server, conn, key)


async def _echo(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


def _sink(key: bytes) -> Callable[[trio.SocketStream], Awaitable[None]]:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    async def sink(stream: trio.SocketStream) -> None:
        """Per transfer: 8-byte plaintext total, then length-prefixed ChaCha20-Poly1305
        frames (nonce = frame counter); decrypts each, acks with one byte at the end."""
        aead = ChaCha20Poly1305(key)
        buf = bytearray()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                total, got, counter = None, 0, 0
                while total is None or got < total:
                    if total is None and len(buf) >= 8:
                        total = int.from_bytes(buf[:8], "big")
                        del buf[:8]
                        continue
                    if total is not None and len(buf) >= 4:
                        (n,) = _LEN.unpack_from(buf)
                        if len(buf) >= 4 + n:
                            ct = bytes(buf[4 : 4 + n])
                            del buf[: 4 + n]
                            got += len(aead.decrypt(_NONCE.pack(counter), ct, None))
                            counter += 1
                            continue
                    data = await stream.receive_some(262144)
                    if not data:
                        return
                    buf += data
                await stream.send_all(b"k")

    return sink


async def _server(conn: Connection, key: bytes) -> None:
    async with trio.open_nursery() as nursery:
        echo = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
        sink = await nursery.start(partial(trio.serve_tcp, _sink(key), 0, host="127.0.0.1"))
        conn.send([echo[0].socket.getsockname()[1], sink[0].socket.getsockname()[1]])
        await _wait_stop(conn)
        nursery.cancel_scope.cancel()


def relay_main(conn: Connection, targets: list[int]) -> None:
    trio.run(_relay, conn, targets)


async def _pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await src.receive_some(65536):
            await dst.send_all(data)


def _relay_to(port: int) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def relay(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", port)
        async with client, server, trio.open_nursery() as nursery:

            async def one_way(a: trio.SocketStream, b: trio.SocketStream) -> None:
                await _pump(a, b)
                nursery.cancel_scope.cancel()

            nursery.start_soon(one_way, client, server)
            nursery.start_soon(one_way, server, client)

    return relay


async def _relay(conn: Connection, targets: list[int]) -> None:
    async with trio.open_nursery() as nursery:
        ports = []
        for target in targets:
            listeners = await nursery.start(
                partial(trio.serve_tcp, _relay_to(target), 0, host="127.0.0.1")
            )
            ports.append(listeners[0].socket.getsockname()[1])
        conn.send(ports)
        await _wait_stop(conn)
        nursery.cancel_scope.cancel()


# -- measuring ---------------------------------------------------------------------------------


class Sides:
    """Per-side CPU seconds of the three processes of each layout, summed over samples."""

    def __init__(self, pids: dict[str, dict[str, int]]) -> None:
        self.pids = pids
        self.cpu = {side: dict.fromkeys(p, 0.0) for side, p in pids.items()}
        self.wall = dict.fromkeys(pids, 0.0)
        self.units = dict.fromkeys(pids, 0)

    async def sample(self, side: str, fn: Callable[[], Awaitable[None]], units: int) -> float:
        """Run ``fn`` (``units`` operations) with the collector paused; seconds per unit."""
        pids = self.pids[side]
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        gc.disable()
        try:
            started = time.perf_counter()
            await fn()
            elapsed = time.perf_counter() - started
        finally:
            gc.enable()
        for name, pid in pids.items():
            self.cpu[side][name] += cpu_seconds(pid) - before[name]
        self.wall[side] += elapsed
        self.units[side] += units
        return elapsed / units

    def cpu_text(self, side: str, per: float, unit: str) -> str:
        """CPU per ``unit`` (``per`` units make one) for each process of ``side``."""
        n = self.units[side] / per
        parts = [f"{name} {cpu / n * 1e3:.2f}" for name, cpu in self.cpu[side].items()]
        return f"{', '.join(parts)} CPU-ms per {unit}"


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


async def paired(
    rounds: int,
    leap: Callable[[], Awaitable[float]],
    base: Callable[[], Awaitable[float]],
) -> tuple[list[float], list[float]]:
    """One warm-up each, then ``rounds`` rounds in alternating order: per-unit seconds."""
    await leap()
    await base()
    leaps, bases = [], []
    for i in range(rounds):
        if i % 2 == 0:
            leaps.append(await leap())
            bases.append(await base())
        else:
            bases.append(await base())
            leaps.append(await leap())
    return leaps, bases


def result(
    name: str,
    kind: str,
    leaps: list[float],
    bases: list[float],
    target: float | None,
    fmt: Callable[[float], str],
    **extra: Any,
) -> dict[str, Any]:
    """``kind``: "time" (ratio leapcore/baseline, lower is better) or "throughput"
    (baseline time / leapcore time, higher is better)."""
    if kind == "time":
        ratios = [leap / base for leap, base in zip(leaps, bases, strict=True)]
    else:
        ratios = [base / leap for leap, base in zip(leaps, bases, strict=True)]
    ratio = statistics.median(ratios)
    passed = None
    if target is not None:
        passed = ratio <= target if kind == "time" else ratio >= target
    lo, hi = quartiles(ratios)
    return {
        "name": name,
        "kind": kind,
        "ratio": ratio,
        "iqr": [lo, hi],
        "target": target,
        "passed": passed,
        "leapcore": fmt(statistics.median(leaps)),
        "baseline": fmt(statistics.median(bases)),
        "rounds": len(ratios),
        **extra,
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs"


def mb_s(seconds_per_byte: float) -> str:
    return f"{1 / seconds_per_byte / 1e6:.0f} MB/s"


# -- the benchmarks (client side) ------------------------------------------------------------


class Bench:
    def __init__(
        self, setup: dict[str, Any], ports: dict[str, int], quick: bool, transport: str
    ) -> None:
        self.transport = transport
        self.url = setup["url"]
        self.token = setup["token"]
        self.workers = setup["workers"]
        self.ports = ports
        self.quick = quick
        self.key = setup["key"]
        self.sides = Sides(setup["pids"])
        self.slh_key = b""

    def sign_once(self) -> float:
        from leapcore.crypto.primitives import slhdsa_sign

        started = time.perf_counter()
        slhdsa_sign(self.slh_key, os.urandom(64))
        return time.perf_counter() - started

    async def run(self, only: list[str]) -> list[dict[str, Any]]:
        import leapcore
        from leapcore.crypto.keys import WorkerKeyPair

        self.slh_key = WorkerKeyPair.generate().slhdsa_private
        results = []
        async with leapcore.connect(
            self.url, token=self.token, pins=None, transport=self.transport
        ) as session:
            self.session = session
            for name in NAMES:
                if name in only:
                    results.append(await getattr(self, name)())
                    print(line(results[-1]), flush=True)
        return results

    async def _open_once(self, worker: str) -> float:
        started = time.perf_counter()
        async with self.session.open_channel(self.workers[worker]["id"]):
            elapsed = time.perf_counter() - started
        return elapsed

    async def pq_open(self) -> dict[str, Any]:
        async def leap() -> float:
            return await self._open_once("pq")

        async def base() -> float:
            return self.sign_once()

        leaps, bases = await paired(5 if self.quick else 15, leap, base)
        return result("pq_open", "time", leaps, bases, 1.3, ms)

    async def classic_open(self) -> dict[str, Any]:
        times = [await self._open_once("classic") for _ in range(3)]  # warm-up
        times = sorted([await self._open_once("classic") for _ in range(20 if self.quick else 60)])
        p50 = statistics.median(times)
        p90 = times[int(0.9 * len(times))]
        return {
            "name": "classic_open",
            "kind": "report",
            "ratio": None,
            "target": None,
            "passed": None,
            "leapcore": f"p50 {ms(p50)}, p90 {ms(p90)}",
            "baseline": "-",
            "rounds": len(times),
        }

    async def ping_rtt(self) -> dict[str, Any]:
        calls = 100 if self.quick else 200
        message = os.urandom(PING_BYTES)
        async with (
            self.session.open_channel(self.workers["classic"]["id"]) as ch,
            await trio.open_tcp_stream("127.0.0.1", self.ports["echo"]) as stream,
        ):

            async def hub_pings() -> None:
                for _ in range(calls):
                    await ch.ping()

            async def relay_pings() -> None:
                for _ in range(calls):
                    await stream.send_all(message)
                    got = 0
                    while got < PING_BYTES:
                        got += len(await stream.receive_some(65536))

            async def leap() -> float:
                return await self.sides.sample("leapcore", hub_pings, calls)

            async def base() -> float:
                return await self.sides.sample("baseline", relay_pings, calls)

            self.sides = Sides(self.sides.pids)
            leaps, bases = await paired(7 if self.quick else 21, leap, base)
        return result(
            "ping_rtt",
            "time",
            leaps,
            bases,
            3.0,
            us,
            cpu_leapcore=self.sides.cpu_text("leapcore", 1, "round trip"),
            cpu_baseline=self.sides.cpu_text("baseline", 1, "round trip"),
        )

    async def bulk_16m(self) -> dict[str, Any]:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        payload = os.urandom(BULK_PAYLOAD)
        aead = ChaCha20Poly1305(self.key)
        async with (
            self.session.open_channel(self.workers["classic"]["id"]) as ch,
            await trio.open_tcp_stream("127.0.0.1", self.ports["sink"]) as stream,
        ):

            async def hub_call() -> None:
                assert await ch.call("sink", payload) == b""

            async def relay_send() -> None:
                await stream.send_all(len(payload).to_bytes(8, "big"))
                view = memoryview(payload)
                for counter, offset in enumerate(range(0, len(payload), FRAME_PLAINTEXT)):
                    chunk = view[offset : offset + FRAME_PLAINTEXT]
                    ct = aead.encrypt(_NONCE.pack(counter), chunk, None)
                    await stream.send_all(_LEN.pack(len(ct)) + ct)
                assert await stream.receive_some(1) == b"k"

            async def leap() -> float:
                return await self.sides.sample("leapcore", hub_call, len(payload))

            async def base() -> float:
                return await self.sides.sample("baseline", relay_send, len(payload))

            self.sides = Sides(self.sides.pids)
            leaps, bases = await paired(5 if self.quick else 15, leap, base)
        gib = 1024**3
        return result(
            "bulk_16m",
            "throughput",
            leaps,
            bases,
            0.5,
            mb_s,
            cpu_leapcore=self.sides.cpu_text("leapcore", gib, "GiB"),
            cpu_baseline=self.sides.cpu_text("baseline", gib, "GiB"),
        )

    async def open_rate(self) -> dict[str, Any]:
        wid = self.workers["pq"]["id"]

        async def burst() -> float:
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(OPEN_BURST):
                    nursery.start_soon(self._open_once, "pq")
            return (time.perf_counter() - started) / OPEN_BURST  # seconds per open

        async def ideal() -> float:
            return self.sign_once() / 2  # 2 processes: seconds per open at best

        assert wid
        leaps, bases = await paired(3 if self.quick else 7, burst, ideal)
        res = result("open_rate", "throughput", leaps, bases, None, lambda s: f"{1 / s:.2f}/s")
        return res


def line(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        ratio = "-"
    else:
        ratio = f"{r['ratio']:.3f} (IQR {r['iqr'][0]:.3f}-{r['iqr'][1]:.3f})"
    if r["target"] is None:
        target, verdict = "-", "REPORT"
    else:
        target = f"{'<=' if r['kind'] == 'time' else '>='} {r['target']:g}"
        verdict = "PASS" if r["passed"] else "MISS"
    text = (
        f"{r['name']:<13} leapcore {r['leapcore']:<26} baseline {r['baseline']:<12} "
        f"ratio {ratio:<28} target {target:<7} {verdict}"
    )
    for key in ("cpu_leapcore", "cpu_baseline"):
        if key in r:
            text += f"\n{'':<13} {key.split('_')[1]} layout: {r[key]}"
    return text


# -- orchestration -----------------------------------------------------------------------------


def main() -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument("--only", action="append", choices=NAMES, help="run only this one")
    parser.add_argument("--profile-dir", help="write hub/worker/client cProfile stats here")
    parser.add_argument(
        "--transport",
        choices=["websocket", "h2"],
        default="websocket",
        help="the links' transport (default: websocket)",
    )
    args = parser.parse_args()
    only = args.only or NAMES
    started = time.time()
    ctx = mp.get_context("spawn")
    key = os.urandom(32)
    procs: list[tuple[mp.process.BaseProcess, Connection]] = []

    def start(target: Callable[..., None], *targs: Any) -> tuple[Connection, int]:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child, *targs))
        proc.start()
        child.close()
        procs.append((proc, parent))
        assert proc.pid is not None
        return parent, proc.pid

    with tempfile.TemporaryDirectory(prefix="channel-bench-") as tmp:
        try:
            hub_conn, hub_pid = start(hub_main, tmp, args.profile_dir)
            setup = hub_conn.recv()
            worker_conn, worker_pid = start(
                worker_main, setup["url"], setup["workers"], args.transport, args.profile_dir
            )
            assert worker_conn.recv() == "online"
            server_conn, server_pid = start(server_main, key)
            echo_port, sink_port = server_conn.recv()
            relay_conn, relay_pid = start(relay_main, [echo_port, sink_port])
            relay_echo, relay_sink = relay_conn.recv()
            setup["key"] = key
            setup["pids"] = {
                "leapcore": {"client": os.getpid(), "hub": hub_pid, "worker": worker_pid},
                "baseline": {"client": os.getpid(), "relay": relay_pid, "server": server_pid},
            }
            print(
                f"channel_bench: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
                f"{'quick' if args.quick else 'full'} run, {args.transport} links",
                flush=True,
            )
            bench = Bench(
                setup, {"echo": relay_echo, "sink": relay_sink}, args.quick, args.transport
            )
            with profiled(args.profile_dir, "client"):
                results = trio.run(bench.run, only)
        finally:
            for _proc, conn in procs:
                with contextlib.suppress(OSError):
                    conn.send("stop")
            for proc, _ in procs:
                proc.join(15)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
    print(f"({time.time() - started:.0f} s)")
    if args.json:
        print(json.dumps({"python": platform.python_version(), "results": results}, indent=2))
    if args.check and any(r["passed"] is False for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
