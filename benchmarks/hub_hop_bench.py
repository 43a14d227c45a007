"""The cost of the extra hub hop (issue 18 §3): one hub against two hubs of a cluster.

    .venv/bin/python benchmarks/hub_hop_bench.py [--rounds N] [--pings N] [--bulk-mib N] [--json]
    .venv/bin/python benchmarks/hub_hop_bench.py --profile-dir /tmp/prof   # hub_a/hub_b/worker.prof

Two real ``leapcore-hub serve`` processes, A and B, share one SQLite database and one cluster
secret. One classic worker (its own process) links to B. This process is the client, signed
in to both hubs at once, with one channel opened at B (**one hub**: client -> B -> worker) and
one opened at A (**A->B**: client -> A -> hub-to-hub link -> B -> worker). The same worker,
the same hub B and the same processes serve both, so the only difference is the hop.

==========  ===================================================================================
ping        ``Channel.ping()`` round trips, ``--pings`` per round on each side: the median and
            p99 of each side, and the ratio A->B / one hub of the per-round medians
bulk        ``--bulk-mib`` MiB one way on a byte stream (the worker drains it and answers the
            byte count): throughput each side, and the ratio one hub / A->B of the per-round
            times (the A->B share of the one-hub throughput: higher is better)
==========  ===================================================================================

The two set-ups alternate within every round (which one goes first alternates too), after a
warm-up, so the noise of a shared machine falls on both. CPU seconds of each process (hub A,
hub B, the worker, this client) are read from ``/proc/PID/stat`` around every sample and
reported per round trip and per GiB; the machine's own busy share (``/proc/stat``) while
measuring is reported too, with the CPU the bench's processes took out of it.
Results: docs/benchmarks.md, "The extra hub hop".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
from channel_bench import Sides, cpu_seconds, paired, result, worker_main

SIDES = ("one_hub", "a_to_b")
CHUNK = 1 << 20
GIB = 1024**3
HUB = Path(sys.executable).with_name("leapcore-hub")
#: ``python -c`` for the hub CLI when its script is not beside this Python.
PLAIN_HUB = "import sys; from leapcore_cli.hub import main; sys.argv[0] = 'leapcore-hub'; main()"
#: ``python -c`` for a hub under cProfile (cProfile.run writes the stats on SystemExit too).
PROFILED_HUB = (
    "import cProfile, sys; from leapcore_cli.hub import main; "
    "out = sys.argv.pop(1); sys.argv[0] = 'leapcore-hub'; cProfile.run('main()', out)"
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def setup_store(data_dir: Path) -> dict[str, Any]:
    """The shared database: a user with a token, one registered classic worker."""
    from leapcore.crypto.keys import WorkerKeyPair
    from leapcore.store.hubstore import SQLiteHubStore
    from leapcore.store.workerstate import WorkerState, save_state

    data_dir.mkdir()
    store = SQLiteHubStore(data_dir / "hub.db")
    try:
        user, token = store.create_user("bench", _now_ms())
        _, key = store.mint_registration_key(user.id, _now_ms())
        worker, auth = store.register_worker(
            key, name="classic", version="1", labels={}, now_ms=_now_ms()
        )
    finally:
        store.close()
    state = data_dir.parent / "worker"
    save_state(state, WorkerState(worker.id, auth, WorkerKeyPair.generate()))
    return {"token": token, "worker": worker.id, "data": str(state)}


class HubProc:
    """One ``leapcore-hub serve`` process of the cluster, its output in a log file."""

    def __init__(self, name: str, tmp: Path, secret: Path, profile_dir: str | None) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        serve = ["serve", "--data-dir", str(tmp / "hub"), "--listen", "127.0.0.1:0"]
        serve += ["--cluster-listen", "127.0.0.1:0", "--cluster-secret-file", str(secret)]
        serve += ["--node-name", name]
        if profile_dir is None:
            argv = [str(HUB), *serve] if HUB.exists() else [sys.executable, "-c", PLAIN_HUB, *serve]
        else:
            out = os.path.join(profile_dir, f"{name}.prof")
            argv = [sys.executable, "-c", PROFILED_HUB, out, *serve]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.url = ""

    def ready(self) -> HubProc:
        """Wait for the hub's listening lines (started processes come up in parallel)."""
        self.url = self._wait_line("leapcore-hub listening on ").split()[-1]
        self._wait_line("leapcore-hub cluster node ")
        return self

    def _wait_line(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for text in self.log.read_text(errors="replace").splitlines():
                if text.startswith(prefix):
                    return text
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub {self.name} exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"hub {self.name} printed no {prefix!r} within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a graceful shutdown (profile stats written)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class HopBench:
    def __init__(self, args: argparse.Namespace, urls: dict[str, str], setup: dict[str, Any]):
        self.args = args
        self.urls = urls
        self.setup = setup
        self.sides = Sides(setup["pids"])

    async def run(self) -> dict[str, Any]:
        import leapcore

        token, wid = self.setup["token"], self.setup["worker"]
        async with (
            leapcore.connect(self.urls["one_hub"], token=token, pins=None) as at_b,
            leapcore.connect(self.urls["a_to_b"], token=token, pins=None) as at_a,
        ):
            await self._wait_reachable(at_a, wid)
            async with at_b.open_channel(wid) as one, at_a.open_channel(wid) as hop:
                self.channels = {"one_hub": one, "a_to_b": hop}
                return {"ping": await self.ping(), "bulk": await self.bulk()}

    @staticmethod
    async def _wait_reachable(session: Any, wid: str) -> None:
        """Hub A learns the worker's presence from the database: retry for a few seconds."""
        from leapcore.errors import LeapcoreError

        deadline = trio.current_time() + 15
        while True:
            try:
                async with session.open_channel(wid):
                    return
            except LeapcoreError:
                if trio.current_time() > deadline:
                    raise
                await trio.sleep(0.1)

    async def ping(self) -> dict[str, Any]:
        pings = self.args.pings
        each: dict[str, list[float]] = {side: [] for side in SIDES}

        def side_fn(side: str) -> Any:
            channel = self.channels[side]

            async def pinging() -> None:
                times = each[side]
                for _ in range(pings):
                    started = time.perf_counter()
                    await channel.ping()
                    times.append(time.perf_counter() - started)

            async def one_round() -> float:
                await self.sides.sample(side, pinging, pings)
                return statistics.median(each[side][-pings:])

            return one_round

        self.sides = Sides(self.setup["pids"])
        hops, ones = await paired(self.args.rounds, side_fn("a_to_b"), side_fn("one_hub"))
        out = result("ping", "time", hops, ones, None, lambda s: f"{s * 1e6:.0f} µs")
        out["pings_per_round"] = pings
        for side in SIDES:
            measured = each[side][pings:]  # past the warm-up round
            out[side] = {
                "median_us": statistics.median(measured) * 1e6,
                "p99_us": p99(measured) * 1e6,
                "cpu_ms_per_round_trip": self._cpu(side, 1, 1e3),
            }
        out["p99_ratio"] = out["a_to_b"]["p99_us"] / out["one_hub"]["p99_us"]
        return out

    async def bulk(self) -> dict[str, Any]:
        size = self.args.bulk_mib * CHUNK
        block = memoryview(os.urandom(CHUNK))

        def side_fn(side: str) -> Any:
            channel = self.channels[side]

            async def send() -> None:
                stream = await channel.open_byte_stream("drain")
                for _ in range(size // CHUNK):
                    await stream.send_all(block)
                await stream.send_eof()
                answer = b""
                while len(answer) < 8:
                    data = await stream.receive_some(8)
                    if not data:
                        break
                    answer += data
                assert int.from_bytes(answer, "big") == size, answer
                await stream.aclose()

            async def one_round() -> float:
                return await self.sides.sample(side, send, size)

            return one_round

        self.sides = Sides(self.setup["pids"])
        hops, ones = await paired(self.args.rounds, side_fn("a_to_b"), side_fn("one_hub"))
        out = result("bulk", "throughput", hops, ones, None, lambda s: f"{1 / s / 1e6:.0f} MB/s")
        out["mib_per_round"] = self.args.bulk_mib
        for side, times in (("one_hub", ones), ("a_to_b", hops)):
            out[side] = {
                "mb_s": 1 / statistics.median(times) / 1e6,
                "cpu_s_per_gib": self._cpu(side, GIB, 1.0),
            }
        return out

    def _cpu(self, side: str, per: float, scale: float) -> dict[str, float]:
        """CPU of each process of ``side`` per ``per`` units, times ``scale``."""
        n = self.sides.units[side] / per
        return {name: cpu / n * scale for name, cpu in self.sides.cpu[side].items()}


@contextlib.contextmanager
def cluster(tmp: Path, profile_dir: str | None) -> Iterator[tuple[dict[str, Any], list[HubProc]]]:
    setup = setup_store(tmp / "hub")
    secret = tmp / "cluster.secret"
    secret.write_bytes(os.urandom(32).hex().encode() + b"\n")
    secret.chmod(0o600)
    hubs: list[HubProc] = []
    try:
        hubs.append(HubProc("hub_b", tmp, secret, profile_dir))
        hubs.append(HubProc("hub_a", tmp, secret, profile_dir))
        yield setup, hubs
    finally:
        for hub in hubs:
            hub.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="hop-bench-") as name:
        tmp = Path(name)
        with cluster(tmp, args.profile_dir) as (setup, hubs):
            hub_b, hub_a = hubs
            hub_b.ready()
            parent, child = ctx.Pipe()
            workers = {"classic": {"id": setup["worker"], "data": setup["data"]}}
            worker = ctx.Process(
                target=worker_main,
                args=(child, hub_b.url, workers, "websocket", args.profile_dir),
            )
            worker.start()
            child.close()
            try:
                hub_a.ready()
                assert parent.recv() == "online"
                assert worker.pid is not None
                me = os.getpid()
                common = {"hub_b": hub_b.pid, "worker": worker.pid, "client": me}
                setup["pids"] = {"one_hub": common, "a_to_b": {"hub_a": hub_a.pid, **common}}
                urls = {"one_hub": hub_b.url, "a_to_b": hub_a.url}
                load_before = os.getloadavg()
                busy0, total0 = machine_busy()
                ours0 = sum(cpu_seconds(pid) for pid in (hub_a.pid, hub_b.pid, worker.pid, me))
                started = time.perf_counter()
                results = trio.run(HopBench(args, urls, setup).run)
                wall = time.perf_counter() - started
                busy1, total1 = machine_busy()
                ours1 = sum(cpu_seconds(pid) for pid in (hub_a.pid, hub_b.pid, worker.pid, me))
            finally:
                with contextlib.suppress(OSError):
                    parent.send("stop")
                worker.join(15)
                if worker.is_alive():
                    worker.terminate()
                    worker.join()
    cores = os.cpu_count() or 1
    busy_cores = (busy1 - busy0) / (total1 - total0) * cores
    ours = (ours1 - ours0) / wall
    return {
        "python": platform.python_version(),
        "cpus": cores,
        "rounds": args.rounds,
        "processes": "hub A and hub B: leapcore-hub serve each; the worker: one process; "
        "the client: the bench's own process",
        "load": {
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            "busy_cores": busy_cores,
            "bench_cores": ours,
            "other_cores": max(0.0, busy_cores - ours),
            "seconds": wall,
        },
        **results,
    }


def show(report: dict[str, Any]) -> None:
    ping, bulk, load = report["ping"], report["bulk"], report["load"]
    print(
        f"hub_hop_bench: Python {report['python']}, {report['cpus']} CPUs, "
        f"{report['rounds']} rounds, {load['seconds']:.0f} s; machine busy "
        f"{load['busy_cores']:.2f} cores (this bench {load['bench_cores']:.2f}, others "
        f"{load['other_cores']:.2f}); loadavg {load['loadavg_before'][0]:.2f} -> "
        f"{load['loadavg_after'][0]:.2f}"
    )

    def cpu(d: dict[str, float], unit: str) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in d.items()) + f" {unit}"

    for side in SIDES:
        p = ping[side]
        print(
            f"  ping {side:8} median {p['median_us']:.0f} µs, p99 {p['p99_us']:.0f} µs; "
            + cpu(p["cpu_ms_per_round_trip"], "CPU-ms per round trip")
        )
    print(
        f"  ping A->B / one hub: median {ping['ratio']:.2f} "
        f"(IQR {ping['iqr'][0]:.2f}-{ping['iqr'][1]:.2f}), p99 {ping['p99_ratio']:.2f}"
    )
    for side in SIDES:
        b = bulk[side]
        print(f"  bulk {side:8} {b['mb_s']:.0f} MB/s; " + cpu(b["cpu_s_per_gib"], "CPU-s per GiB"))
    print(
        f"  bulk A->B / one hub throughput: {bulk['ratio']:.2f} "
        f"(IQR {bulk['iqr'][0]:.2f}-{bulk['iqr'][1]:.2f}), {bulk['mib_per_round']} MiB a round"
    )


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds per benchmark (9)")
    parser.add_argument("--pings", type=int, default=200, help="pings per side per round")
    parser.add_argument("--bulk-mib", type=int, default=128, help="MiB per side per round")
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    parser.add_argument(
        "--profile-dir", help="write cProfile stats of both hubs and the worker here"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.pings < 1 or args.bulk_mib < 1:
        parser.error("--rounds, --pings and --bulk-mib must be at least 1")
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
