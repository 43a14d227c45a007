"""The hub holding many idle worker links: CPU share, memory per link, heartbeat timing.

One hub runs in its own process (multiprocessing "spawn"); simulated workers run in a few
other processes over real loopback WebSocket links. Each worker is registered straight in the
hub's SQLite store during setup (no registration round trips), then connects: ``connect``
plus the keyed first heartbeat, then idle heartbeats on the real schedule
(:class:`leapcore.proto.heartbeat.HeartbeatSchedule`: a check every 2 s, a heartbeat after 5 s
without sending, so one every 6 s). Connects are spread over a ramp so heartbeat phases are
spread the way independent workers' would be.

Measured over a steady-state window that starts once every link is up plus a settle time:

* hub CPU share: the hub process's user + system CPU seconds / wall seconds (``/proc/PID/stat``);
* RSS per link: (hub VmRSS with the links − VmRSS before any link) / links (``/proc/PID/status``);
* heartbeat timing: the largest gap between consecutive heartbeat arrivals per link at the hub
  and between consecutive ``heartbeat_ack``s at the workers, minus the 6 s schedule, and the
  largest heartbeat round trip seen by a worker;
* links the hub declared dead (its 10 s idle timeout), which must be 0, and links the workers
  saw end before they were told to stop;
* the hub's store calls in the window, by store method (``Hub.store_call``, each one a
  worker-thread hand-off; idle heartbeats make none: their times are written in batches).

Not a module of leapcore; it stops everything it started (children have their own deadlines
and are killed at the end if still alive).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IDLE_INTERVAL = 6.0  # HeartbeatSchedule: checks every 2 s, idle after 5 s -> every 6 s


# -- /proc readings ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is fields[0]; utime and stime are fields 14 and 15 of the line.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; returns (old soft, new soft)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        new = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        return soft, new
    return soft, soft


# -- the hub process ----------------------------------------------------------------------------


def hub_main(
    db: str,
    links: int,
    conn: Any,
    deadline: float,
    profile: str | None = None,
    settings: dict[str, Any] | None = None,
    gc_policy: float | None = None,
) -> None:
    """Serve until told to stop (or ``deadline``, wall clock); report the hub-side figures.
    ``settings``: more :class:`HubLimits` fields (an experiment's, never a default's).
    ``gc_policy``: the hub runs a :class:`GcPolicy` with this interval (``leapcore-hub``'s
    is the default's, 5 s)."""
    import trio

    from leapcore.hub.gcpolicy import GcPolicy
    from leapcore.hub.server import Hub
    from leapcore.proto.limits import HubLimits

    raise_fd_limit()
    dead: list[tuple[float, str]] = []  # (wall clock, log line)

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "idle timeout" in record.getMessage():
                dead.append((record.created, record.getMessage()))

    # The cyclic garbage collector's pauses (wall clock at the end, generation, seconds, and
    # the CPU seconds of the hub's thread in them: less when the process was not running).
    collections: list[tuple[float, int, float, float]] = []
    gc_start = [0.0, 0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[:] = time.perf_counter(), time.thread_time()
        else:
            wall = time.perf_counter() - gc_start[0]
            cpu = time.thread_time() - gc_start[1]
            collections.append((time.time(), info["generation"], wall, cpu))

    gc.callbacks.append(on_gc)
    logger = logging.getLogger("leapcore.hub.server")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(Count())

    class TimedHub(Hub):
        """Records each heartbeat's arrival (wall clock) per worker: the bench's only addition."""

        arrivals: dict[str, list[float]]
        #: (wall time, store method) of each store call made through ``store_call``.
        store_calls: list[tuple[float, str]]

        def _heartbeat(self, link: Any, beat: Any) -> Any:
            if link.worker is not None:
                self.arrivals.setdefault(link.worker.id, []).append(time.time())
            return super()._heartbeat(link, beat)  # (a coroutine since store calls are async)

        async def store_call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            self.store_calls.append((time.time(), fn.__name__))
            return await super().store_call(fn, *args, **kwargs)

    tracked: dict[str, int] = {}  # objects the collector tracks: idle, and frozen
    idle_kinds: Counter[str] = Counter()

    async def main() -> None:
        # Every simulated worker dials from 127.0.0.1: lift the per-address budgets (a
        # listener's connections, signed-in links), which exist for real clients.
        per_address = links + 64
        limits = HubLimits(
            max_connections_per_address=per_address,
            max_links_per_address=per_address,
            **(settings or {}),
        )
        hub = TimedHub(
            db,
            max_workers_per_user=links,
            limits=limits,
            gc_policy=None if gc_policy is None else GcPolicy(interval=gc_policy),
        )
        hub.arrivals = {}
        hub.store_calls = []
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(lambda task_status: hub.serve(task_status=task_status))
            idle_kinds.update(type(o).__qualname__ for o in gc.get_objects())
            tracked["idle"] = idle_kinds.total()
            conn.send(("port", port))
            while time.time() < deadline:
                if conn.poll():
                    if conn.recv() != "gc_freeze":
                        break
                    kinds = Counter(type(o).__qualname__ for o in gc.get_objects())
                    gc.freeze()  # an experiment: what the collector's passes cost
                    tracked["frozen"] = gc.get_freeze_count()
                    for kind, count in (kinds - idle_kinds).most_common(12):
                        tracked[f"kind:{kind}"] = count
                await trio.sleep(0.2)
            await hub.shutdown()
        state = hub.gc_state
        policy = None
        if state is not None:
            policy = {
                "passes": state.passes,
                "reclaims": state.reclaims,
                "last_reclaim_s": state.last_reclaim_s,
            }
        report = {
            "gc_policy": policy,
            "arrivals": hub.arrivals,
            "dead": dead,
            "gc": collections,
            "tracked": tracked,
            "store_calls": hub.store_calls,
        }
        conn.send(("done", report))

    if profile is None:
        trio.run(main)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(trio.run, main)
    profiler.dump_stats(profile)


# -- a worker process -----------------------------------------------------------------------------


def workers_main(url: str, tokens: list[str], ramp: float, conn: Any, deadline: float) -> None:
    """Run one simulated worker per token until told to stop; report per-link timings."""
    import trio

    from leapcore.crypto.keys import PUBLIC_KEY_FIELDS
    from leapcore.errors import LinkClosed, LinkProtocolError
    from leapcore.net.dial import connect_link
    from leapcore.proto.heartbeat import HeartbeatSchedule
    from leapcore.proto.link_codec import (
        PROTOCOL_VERSION,
        Connect,
        ErrorMessage,
        GoAway,
        Heartbeat,
        HeartbeatAck,
        WorkerGreeting,
    )
    from leapcore.proto.link_state import LinkConnection, LinkRole

    raise_fd_limit()
    keys = {name: os.urandom(size) for name, (_, size) in PUBLIC_KEY_FIELDS.items()}
    rng = random.Random()
    stats: list[dict[str, Any]] = [
        {"acks": [], "rtts": [], "send_late": 0.0, "ended": None} for _ in tokens
    ]
    ready = 0

    async def one(i: int, token: str, stop: trio.Event) -> None:
        nonlocal ready
        st = stats[i]
        await trio.sleep(rng.uniform(0, ramp))
        sent: dict[int, float] = {}
        try:
            async with connect_link(url) as pipe:
                lc = LinkConnection(LinkRole.WORKER)
                start = trio.current_time()
                schedule = HeartbeatSchedule(start)
                sent[1] = start
                await pipe.send(
                    lc.send(Connect(PROTOCOL_VERSION, token))
                    + lc.send(Heartbeat(1, "classic", **keys))
                )
                greeted = False

                async def reader() -> None:
                    nonlocal greeted, ready
                    while True:
                        for message in lc.receive(await pipe.receive()):
                            now = trio.current_time()
                            if isinstance(message, WorkerGreeting):
                                greeted = True
                            elif isinstance(message, HeartbeatAck):
                                wall = time.time()
                                st["acks"].append(wall)
                                if message.seq in sent:
                                    st["rtts"].append((wall, now - sent.pop(message.seq)))
                                if message.seq == 1 and greeted:
                                    ready += 1
                            elif isinstance(message, GoAway | ErrorMessage):
                                st["ended"] = type(message).__name__
                                return

                async def beats() -> None:
                    seq = 1
                    while True:
                        due = schedule.next_deadline()
                        await trio.sleep_until(due)
                        now = trio.current_time()
                        st["send_late"] = max(st["send_late"], now - due)
                        if schedule.poll(now):
                            seq += 1
                            sent[seq] = now
                            await pipe.send(lc.send(Heartbeat(seq)))
                            schedule.on_sent(now)

                async with trio.open_nursery() as nursery:

                    async def watch_stop() -> None:
                        await stop.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(watch_stop)
                    nursery.start_soon(beats)
                    await reader()  # returns only if the hub ended the link
                    if not stop.is_set():
                        st["ended"] = st["ended"] or "closed"
                    nursery.cancel_scope.cancel()
        except (LinkClosed, LinkProtocolError, OSError) as exc:
            if not stop.is_set():
                st["ended"] = f"{type(exc).__name__}: {exc}"

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for i, token in enumerate(tokens):
                nursery.start_soon(one, i, token, stop)
            reported = False
            while time.time() < deadline and not conn.poll():
                if not reported and ready == len(tokens):
                    conn.send(("ready", None))
                    reported = True
                await trio.sleep(0.1)
            stop.set()
            nursery.cancel_scope.cancel()
        conn.send(("done", stats))

    trio.run(main)


# -- the parent ----------------------------------------------------------------------------------


def setup_store(db: Path, links: int) -> list[str]:
    """One user and ``links`` registered workers, straight in the store; their tokens."""
    from leapcore.store.hubstore import SQLiteHubStore

    store = SQLiteHubStore(db, max_workers_per_user=links)
    now = int(time.time() * 1000)
    user, _ = store.create_user("bench", now)
    tokens = []
    for i in range(links):
        _, key = store.mint_registration_key(user.id, now)
        _, token = store.register_worker(key, name=f"w{i}", version="1.0", labels={}, now_ms=now)
        tokens.append(token)
    store.close()
    return tokens


def http_get(port: int, path: str) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.partition(b"\r\n\r\n")[2]


def expect(conn: Any, kind: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"no {kind!r} from a child within {timeout:.0f}s")
    got, payload = conn.recv()
    if got != kind:
        raise RuntimeError(f"expected {kind!r}, got {got!r}")
    return payload


def max_gap(times: list[float], start: float, end: float) -> float | None:
    """The largest gap between consecutive times, over pairs ending inside [start, end]."""
    gaps = [b - a for a, b in itertools.pairwise(times) if start <= b <= end]
    return max(gaps) if gaps else None


@contextlib.contextmanager
def reaped() -> Iterator[list[Any]]:
    """A list to put child processes in; any still alive at the end is killed."""
    children: list[Any] = []
    try:
        yield children
    finally:
        for proc in children:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def start_hub(
    ctx: Any,
    db: Path,
    links: int,
    deadline: float,
    profile: str | None,
    children: list[Any],
    quiet: float = 1.0,
    settings: dict[str, Any] | None = None,
    gc_policy: float | None = None,
) -> tuple[Any, Any, int, int]:
    """The hub process (in ``children``), its pipe, its port and its RSS (KiB) before any
    link, ``quiet`` seconds after one ``/healthz`` request (its imports and buffers)."""
    hub_conn, hub_child = ctx.Pipe()
    hub = ctx.Process(
        target=hub_main, args=(str(db), links, hub_child, deadline, profile, settings, gc_policy)
    )
    hub.start()
    children.append(hub)
    port = expect(hub_conn, "port", 60)
    http_get(port, "/healthz")
    time.sleep(quiet)
    return hub, hub_conn, port, rss_kib(hub.pid)


def sample_rss(pid: int, until: float) -> list[int]:
    """``pid``'s RSS (KiB) once a second until the wall-clock time ``until``."""
    samples = []
    while time.time() < until:
        time.sleep(max(0.0, min(1.0, until - time.time())))
        samples.append(rss_kib(pid))
    return samples


def stop_hub(hub_conn: Any, children: list[Any], timeout: float = 30.0) -> dict[str, Any]:
    """Stop the hub, take its report, wait for every child."""
    hub_conn.send("stop")
    report: dict[str, Any] = expect(hub_conn, "done", timeout)
    for proc in children:
        proc.join(15)
    return report


def workers_online(metrics: str) -> float:
    """``leapcore_hub_workers_online`` in a ``/metrics`` page."""
    return next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("leapcore_hub_workers_online ")
    )


def run(
    links: int, seconds: float, per_process: int, settle: float, profile: str | None = None
) -> dict[str, Any]:
    old_soft, new_soft = raise_fd_limit()
    ramp = max(3.0, links / 200)
    ctx = mp.get_context("spawn")
    started = time.time()
    with reaped() as children, tempfile.TemporaryDirectory(prefix="hub-idle-") as tmp:
        db = Path(tmp) / "hub.db"
        t0 = time.perf_counter()
        tokens = setup_store(db, links)
        setup_s = time.perf_counter() - t0
        budget = 60 + ramp + settle + seconds + links / 20
        hard_deadline = time.time() + budget
        hub, hub_conn, port, rss_idle = start_hub(
            ctx, db, links, hard_deadline + 15, profile, children
        )
        url = f"http://127.0.0.1:{port}"
        groups = [tokens[i : i + per_process] for i in range(0, links, per_process)]
        worker_conns = []
        for group in groups:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=workers_main, args=(url, group, ramp, child, hard_deadline))
            proc.start()
            children.append(proc)
            worker_conns.append(parent)
        for c in worker_conns:
            expect(c, "ready", max(10.0, hard_deadline - time.time()))
        all_up = time.time()
        time.sleep(settle)
        win_start, cpu_start = time.time(), cpu_seconds(hub.pid)
        rss_samples = sample_rss(hub.pid, win_start + seconds)
        win_end, cpu_end = time.time(), cpu_seconds(hub.pid)
        metrics = http_get(port, "/metrics").decode()
        for c in worker_conns:
            c.send("stop")
        worker_stats: list[dict[str, Any]] = []
        for c in worker_conns:
            worker_stats += expect(c, "done", 30)
        hub_report = stop_hub(hub_conn, children)

    online_metric = workers_online(metrics)
    hub_gaps = [
        g
        for times in hub_report["arrivals"].values()
        if (g := max_gap(times, win_start, win_end)) is not None
    ]
    ack_gaps = [
        g for st in worker_stats if (g := max_gap(st["acks"], win_start, win_end)) is not None
    ]
    rtts = [r for st in worker_stats for t, r in st["rtts"] if win_start <= t <= win_end]
    ended = [st["ended"] for st in worker_stats if st["ended"] is not None]
    store_calls: dict[str, int] = {}
    for at, name in hub_report["store_calls"]:
        if win_start <= at <= win_end:
            store_calls[name] = store_calls.get(name, 0) + 1
    heartbeats = sum(
        1 for times in hub_report["arrivals"].values() for t in times if win_start <= t <= win_end
    )
    rss_links = max(rss_samples)
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "links": links,
        "worker_processes": len(groups),
        "window_s": round(win_end - win_start, 1),
        "settle_s": settle,
        "ramp_s": ramp,
        "ready_after_s": round(all_up - started, 1),
        "setup_store_s": round(setup_s, 2),
        "nofile_soft_limit": [old_soft, new_soft],
        "hub_cpu_share": (cpu_end - cpu_start) / (win_end - win_start),
        "hub_rss_idle_kib": rss_idle,
        "hub_rss_links_kib": rss_links,
        "rss_per_link_kib": (rss_links - rss_idle) / links,
        "workers_online_metric": online_metric,
        "hub_max_interarrival_late_s": max(hub_gaps) - IDLE_INTERVAL if hub_gaps else math.nan,
        "hub_links_with_gaps": len(hub_gaps),
        "worker_max_ack_gap_late_s": max(ack_gaps) - IDLE_INTERVAL if ack_gaps else math.nan,
        "worker_max_send_late_s": max(st["send_late"] for st in worker_stats),
        "heartbeat_rtt_max_ms": max(rtts) * 1e3 if rtts else math.nan,
        "heartbeat_rtt_median_ms": sorted(rtts)[len(rtts) // 2] * 1e3 if rtts else math.nan,
        "heartbeats_in_window": heartbeats,
        "store_calls_in_window": store_calls,
        "hub_declared_dead": len(hub_report["dead"]),
        "links_ended_early": len(ended),
        "ended_examples": ended[:3],
        "seconds": round(time.time() - started, 1),
    }


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--settle``, ``--json`` and ``--profile-hub``."""
    parser.add_argument("--settle", type=float, default=8.0, help="seconds after all are up (8)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--profile-hub", metavar="FILE", help="cProfile the hub process (whole run) into FILE"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=None, help="idle worker links (1000)")
    parser.add_argument("--seconds", type=float, default=None, help="steady-state window (30)")
    parser.add_argument("--quick", action="store_true", help="200 links, 15 s window")
    parser.add_argument("--per-process", type=int, default=250, help="workers per process")
    add_common_options(parser)
    args = parser.parse_args()
    links = args.links or (200 if args.quick else 1000)
    seconds = args.seconds or (15.0 if args.quick else 30.0)
    result = run(links, seconds, args.per_process, args.settle, args.profile_hub)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"command: {result['command']}")
        print(
            f"{links} idle links ({result['worker_processes']} worker processes), "
            f"window {result['window_s']} s after all up + {args.settle:g} s settle"
        )
        print(f"hub CPU share:            {result['hub_cpu_share'] * 100:.2f} % of one core")
        print(
            f"hub RSS:                  {result['hub_rss_idle_kib']} KiB idle -> "
            f"{result['hub_rss_links_kib']} KiB; {result['rss_per_link_kib']:.1f} KiB per link"
        )
        print(f"/metrics workers_online:  {result['workers_online_metric']:g}")
        print(
            f"heartbeat lateness:       hub max inter-arrival - 6 s = "
            f"{result['hub_max_interarrival_late_s'] * 1e3:.0f} ms; worker max ack gap - 6 s = "
            f"{result['worker_max_ack_gap_late_s'] * 1e3:.0f} ms"
        )
        print(
            f"heartbeat round trip:     median {result['heartbeat_rtt_median_ms']:.2f} ms, "
            f"max {result['heartbeat_rtt_max_ms']:.1f} ms; worker timer lateness max "
            f"{result['worker_max_send_late_s'] * 1e3:.0f} ms"
        )
        print(
            f"links declared dead by the hub: {result['hub_declared_dead']}; "
            f"ended early: {result['links_ended_early']}"
        )
        calls = ", ".join(f"{k} {v}" for k, v in sorted(result["store_calls_in_window"].items()))
        print(
            f"store calls in the window: {calls or 'none'} "
            f"({result['heartbeats_in_window']} heartbeats)"
        )
    ok = result["hub_declared_dead"] == 0 and result["links_ended_early"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
