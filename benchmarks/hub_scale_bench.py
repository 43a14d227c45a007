"""One hub holding ten thousand idle worker links: memory, CPU, heartbeat timing (issue 18 §3).

The hub is :mod:`hub_idle_bench`'s (``hub_main``: a real :class:`~leapcore.hub.server.Hub` in
its own process, its per-address budgets lifted because every simulated worker dials from
127.0.0.1, heartbeat arrivals recorded, idle-timeout log lines counted), and so are the store
set-up (workers registered straight in SQLite, classic mode: no signature per link) and the
``/proc`` readings. What differs is the simulator, made cheap so that the hub is what is
measured:

* a few processes (``--processes``), each one trio loop holding thousands of links over plain
  non-blocking sockets, watched through one ``epoll`` object that trio waits on: no task per
  link; one timer task per process sends every link's heartbeats (a heap of due times) and
  re-dials dropped links;
* each link is a real WebSocket link (RFC 6455 upgrade on the hub's link path), pipelined: the
  upgrade request, ``connect`` and the keyed first heartbeat go in one write; idle heartbeats
  are pre-encoded frames (one per sequence number, shared by all links of a process), masked
  with a zero key (the wire format is the one a real client sends; the key is just not
  random);
* a link keeps the real worker schedule (:class:`~leapcore.proto.heartbeat.HeartbeatSchedule`
  with :mod:`leapcore.proto.limits`' values: a check every 2 s from connect, a heartbeat when
  nothing was sent for 5 s, so one every 6 s on an idle link);
* a link that ends (EOF, ``error``, ``go_away``, a refused upgrade) is counted with its reason
  and dialed again after 1-2 s; re-dials are reported.

Phases: the ramp (links dialed at ``--rate`` per second in all, spread over the processes)
measures the hub's accept / upgrade / sign-in path on its own; then ``--settle`` seconds; then
the steady-state window (``--seconds``) over which CPU, RSS and heartbeat timing are reported.

Figures: links up; hub RSS (total, per link over its RSS before any link); hub CPU share of one
core in the window (``/proc/PID/stat``) and during the ramp (also per connect); heartbeat round
trip (send to ack) and lateness (ack arrival minus the time the schedule made the heartbeat
due: the simulator's timer lateness plus the round trip) p50/p99/max from the simulator; the
gaps between one link's heartbeats arriving at the hub minus 6 s, p50/p99/max; links the hub
declared dead (its 10 s idle timeout); links dropped and re-dialed; simulator CPU. The open
files soft limit is raised to the hard one in every process; the run stops with a clear error
if the hard limit is below what the links need.

Targets (issue 18): hub RSS < 1 GiB, heartbeat lateness p99 < 1 s, 0 links declared dead;
the script exits 1 if one is missed.

Not a module of leapcore; every child has a deadline and is killed at the end if still alive.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import random
import resource
import select
import socket
import struct
import sys
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from hub_idle_bench import (
    IDLE_INTERVAL,
    add_common_options,
    cpu_seconds,
    expect,
    http_get,
    raise_fd_limit,
    reaped,
    rss_kib,
    sample_rss,
    setup_store,
    start_hub,
    stop_hub,
    workers_online,
)

from leapcore.hub.gcpolicy import GcPolicy

#: Seconds between a link's end and its next dial (uniform in this range).
REDIAL = (1.0, 2.0)
#: Descriptors a process needs beyond its links (listeners, pipes, the database, imports).
FD_SPARE = 64
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # any 16 bytes, base64 (RFC 6455 4.1)

# Link states in the simulator.
_DOWN, _CONNECTING, _UPGRADING, _OPEN = range(4)


def ws_masked(payload: bytes) -> bytes:
    """One binary WebSocket message as a client sends it, masked with the key 0000."""
    n = len(payload)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 65536:
        head = bytes((0x82, 0x80 | 126)) + _U16.pack(n)
    else:
        raise ValueError("frame too large for the simulator")
    return head + b"\0\0\0\0" + payload


def percentiles(values: list[float] | array[float]) -> dict[str, float | None]:
    """p50, p99 and max of ``values`` (None when empty)."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "p50": ordered[(n - 1) // 2],
        "p99": ordered[min(n - 1, math.ceil(0.99 * n) - 1)],
        "max": ordered[-1],
        "n": n,
    }


def check_fd_limit(needed: int, who: str) -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; fail clearly if it is too low."""
    old, new = raise_fd_limit()
    if new < needed:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise SystemExit(
            f"{who} needs {needed} open files but the hard limit is {hard} "
            "(raise it, e.g. `ulimit -Hn`, or run fewer links / more processes)"
        )
    return old, new


# -- a simulator process --------------------------------------------------------------------------


class SimLink:
    """One simulated worker link: its socket, parse buffers and heartbeats in flight."""

    __slots__ = (
        "buf",
        "dialed",
        "gen",
        "greeted",
        "index",
        "pending",
        "seq",
        "sock",
        "state",
        "token",
        "up",
    )

    def __init__(self, index: int, token: str) -> None:
        self.index = index
        self.token = token
        self.sock: socket.socket | None = None
        self.state = _DOWN
        self.gen = 0  # bumped at every dial and drop: stale timer entries are skipped
        self.buf = bytearray()
        self.seq = 0
        #: seq -> (due, sent), trio time.
        self.pending: dict[int, tuple[float, float]] = {}
        self.dialed = 0.0
        self.greeted = False
        self.up = False


def sim_main(tokens: list[str], offset: int, stride: int, conn: Any) -> None:
    """Hold one simulated link per token; report timings when told to stop."""
    import trio

    from leapcore.crypto.keys import PUBLIC_KEY_FIELDS
    from leapcore.net.pipe import LINK_PATH
    from leapcore.proto.heartbeat import HeartbeatSchedule
    from leapcore.proto.link_codec import PROTOCOL_VERSION, Connect, Heartbeat, encode

    check_fd_limit(len(tokens) + FD_SPARE, "a simulator process")
    keys = {name: os.urandom(size) for name, (_, size) in PUBLIC_KEY_FIELDS.items()}
    conn.send(("loaded", None))
    port, start_wall, rate = conn.recv()  # the hub's port, when to start dialing, how fast
    upgrade = (
        (
            f"GET {LINK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: "
        ).encode()
        + _WS_KEY
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    first_beat = encode(Heartbeat(1, "classic", **keys))
    beats: dict[int, bytes] = {}  # seq -> the masked WebSocket frame, shared by every link
    # The real schedule: checks every CHECK_INTERVAL from connect, a heartbeat once nothing
    # was sent for IDLE_AFTER: the first check at or after IDLE_AFTER.
    check = HeartbeatSchedule.CHECK_INTERVAL
    period = math.ceil(HeartbeatSchedule.IDLE_AFTER / check) * check
    rng = random.Random()
    links = [SimLink(i, t) for i, t in enumerate(tokens)]
    by_fd: dict[int, SimLink] = {}
    ep = select.epoll()
    heap: list[tuple[float, int, int, SimLink, int]] = []  # (when, tie, kind, link, gen)
    tie = itertools.count()
    _BEAT, _DIAL = 0, 1
    # Records, trio time (converted to wall time at the end).
    acks = array("d")  # ack arrival
    rtts = array("d")
    lates = array("d")  # ack arrival - due
    timer_late = array("d")
    handshakes: list[tuple[float, float]] = []  # (up at, dial to first ack)
    drops: list[tuple[float, str]] = []
    dials = 0
    dial_errors = 0
    up_count = 0
    stopping = False
    timer_scope: trio.CancelScope | None = None

    def push(when: float, kind: int, link: SimLink) -> None:
        heapq.heappush(heap, (when, next(tie), kind, link, link.gen))
        if timer_scope is not None and when < timer_scope.deadline:
            timer_scope.deadline = when

    def drop(link: SimLink, reason: str) -> None:
        nonlocal up_count
        sock = link.sock
        if sock is None:
            return
        by_fd.pop(sock.fileno(), None)
        with contextlib.suppress(OSError, ValueError):
            ep.unregister(sock)
        sock.close()
        link.sock = None
        link.state = _DOWN
        link.gen += 1
        link.pending.clear()
        link.buf.clear()
        if link.up:
            up_count -= 1
            link.up = False
        if not stopping:
            now = trio.current_time()
            drops.append((now, reason))
            push(now + rng.uniform(*REDIAL), _DIAL, link)

    def dial(link: SimLink) -> None:
        nonlocal dials, dial_errors
        dials += 1
        link.gen += 1
        link.greeted = False
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            dial_errors += 1
            drops.append((trio.current_time(), f"connect: {errno.errorcode.get(err, err)}"))
            push(trio.current_time() + rng.uniform(*REDIAL), _DIAL, link)
            return
        link.sock = sock
        link.state = _CONNECTING
        link.dialed = trio.current_time()
        by_fd[sock.fileno()] = link
        ep.register(sock, select.EPOLLOUT)

    def connected(link: SimLink) -> None:
        sock = link.sock
        assert sock is not None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            drop(link, f"connect: {errno.errorcode.get(err, err)}")
            return
        hello = upgrade + ws_masked(encode(Connect(PROTOCOL_VERSION, link.token)) + first_beat)
        try:
            sent = sock.send(hello)
        except OSError as exc:
            drop(link, f"send: {exc}")
            return
        if sent != len(hello):
            drop(link, "short first write")
            return
        now = trio.current_time()
        ep.modify(sock, select.EPOLLIN)
        link.state = _UPGRADING
        link.seq = 1
        link.pending[1] = (now, now)
        push(now + period, _BEAT, link)

    def beat(link: SimLink, due: float, now: float) -> None:
        sock = link.sock
        assert sock is not None
        link.seq += 1
        seq = link.seq
        frame = beats.get(seq)
        if frame is None:
            frame = beats[seq] = ws_masked(encode(Heartbeat(seq)))
        try:
            sent = sock.send(frame)
        except OSError as exc:  # BlockingIOError included: a 20-byte write to an idle socket
            drop(link, f"send: {exc}")
            return
        if sent != len(frame):
            drop(link, "short heartbeat write")
            return
        link.pending[seq] = (due, now)
        timer_late.append(now - due)
        nxt = due + period
        push(nxt if nxt > now else now + period, _BEAT, link)

    def record(link: SimLink, body: bytes | bytearray) -> None:
        nonlocal up_count
        message = json.loads(body)
        kind = message.get("type")
        if kind == "heartbeat_ack":
            timing = link.pending.pop(message.get("seq"), None)
            if timing is None:
                return
            now = trio.current_time()
            due, sent = timing
            if message["seq"] == 1:
                if link.greeted and not link.up:
                    link.up = True
                    up_count += 1
                    handshakes.append((now, now - link.dialed))
                return
            acks.append(now)
            rtts.append(now - sent)
            lates.append(now - due)
        elif kind == "worker_greeting":
            link.greeted = True
        elif kind in ("error", "go_away"):
            drop(link, f"{kind}: {message.get('code') or message.get('reason') or ''}")

    def received(link: SimLink, data: bytes) -> None:
        buf = link.buf
        buf += data
        if link.state == _UPGRADING:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                drop(link, "upgrade refused: " + bytes(buf[:40]).decode(errors="replace"))
                return
            del buf[: end + 4]
            link.state = _OPEN
        # WebSocket messages (the hub's are unmasked, one or more whole link frames each).
        pos = 0
        size = len(buf)
        frames = bytearray()
        while size - pos >= 2:
            if buf[pos] != 0x82:
                drop(link, f"websocket opcode {buf[pos]:#x}")
                return
            n = buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = _U16.unpack_from(buf, pos + 2)[0]
                head = 4
            elif n == 127:
                drop(link, "unexpectedly large websocket message")
                return
            if size - pos < head + n:
                break
            frames += buf[pos + head : pos + head + n]
            pos += head + n
        del buf[:pos]
        # Link frames: length:u32 kind:u8 body (a WebSocket message holds whole frames).
        at = 0
        while len(frames) - at >= 5:
            length = _U32.unpack_from(frames, at)[0]
            if frames[at + 4] == 0x01:
                record(link, frames[at + 5 : at + 4 + length])
                if link.sock is None:
                    return
            at += 4 + length

    async def io_loop() -> None:
        while True:
            await trio.lowlevel.wait_readable(ep.fileno())
            for fd, events in ep.poll(0, 4096):
                link = by_fd.get(fd)
                if link is None or link.sock is None:
                    continue
                if link.state == _CONNECTING:
                    if events & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                        connected(link)
                    continue
                try:
                    data = link.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    drop(link, f"recv: {exc}")
                    continue
                if not data:
                    drop(link, "closed by the hub")
                    continue
                received(link, data)

    async def timers() -> None:
        nonlocal timer_scope
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                when, _, kind, link, gen = heapq.heappop(heap)
                if gen != link.gen:
                    continue
                if kind == _DIAL:
                    dial(link)
                elif link.state == _OPEN or link.state == _UPGRADING:
                    beat(link, when, now)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as timer_scope:
                await trio.sleep_forever()
            timer_scope = None

    async def main() -> None:
        nonlocal stopping
        trio0, wall0 = trio.current_time(), time.time()
        t0 = trio0 + (start_wall - wall0)
        for i, link in enumerate(links):
            push(t0 + (offset + i * stride) / rate, _DIAL, link)
        window: tuple[float, float] | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(io_loop)
            nursery.start_soon(timers)
            next_report = 0.0
            while True:
                now = trio.current_time()
                if now >= next_report:  # progress for the parent, who stops the ramp
                    recent = Counter(why for _, why in drops[-200:]).most_common(3)
                    conn.send(("progress", (up_count, len(drops), recent)))
                    next_report = now + (0.1 if up_count < len(links) else 2.0)
                if conn.poll():
                    _, window = conn.recv()
                    break
                await trio.sleep(0.1)
            stopping = True
            up_at_stop = up_count
            nursery.cancel_scope.cancel()
        stop_at = trio.current_time()
        for link in links:
            drop(link, "stopped")
        ep.close()

        def wall(t: float) -> float:
            return wall0 + (t - trio0)

        assert window is not None
        start, end = window
        in_window = [i for i, t in enumerate(acks) if start <= wall(t) <= end]
        conn.send(
            (
                "done",
                {
                    "links": len(links),
                    "up_at_stop": up_at_stop,
                    "rtts": [rtts[i] for i in in_window],
                    "lates": [lates[i] for i in in_window],
                    "timer_late_max": max(timer_late, default=0.0),
                    "handshakes": [(wall(t), d) for t, d in handshakes],
                    "drops": [(wall(t), why) for t, why in drops],
                    "dials": dials,
                    "dial_errors": dial_errors,
                    "stopped_after_s": stop_at - trio0,
                },
            )
        )

    trio.run(main)


# -- the parent ----------------------------------------------------------------------------------


def expect_skipping(conn: Any, kind: str, timeout: float) -> Any:
    """:func:`expect`, passing over the simulator's progress reports."""
    deadline = time.time() + timeout
    while True:
        if not conn.poll(max(0.0, deadline - time.time())):
            raise RuntimeError(f"no {kind!r} from a child within {timeout:.0f}s")
        got, payload = conn.recv()
        if got == kind:
            return payload
        if got != "progress":
            raise RuntimeError(f"expected {kind!r}, got {got!r}")


def wait_ramp(conns: list[Any], links: int, deadline: float) -> tuple[float, bool]:
    """Until every link is up or ``deadline``: (when the ramp ended, whether all came up).
    Progress goes to stderr every 5 s."""
    progress: dict[int, tuple[int, int, list[tuple[str, int]]]] = {}
    up = 0
    shown = time.time()
    while time.time() < deadline:
        for i, c in enumerate(conns):
            while c.poll():
                got, payload = c.recv()
                if got != "progress":
                    raise RuntimeError(f"expected progress, got {got!r}")
                progress[i] = payload
        up = sum(p[0] for p in progress.values())
        if up == links:
            return time.time(), True
        if time.time() - shown >= 5:
            shown = time.time()
            drops = sum(p[1] for p in progress.values())
            reasons = [r for p in progress.values() for r in p[2]]
            print(f"ramp: {up}/{links} up, {drops} drops {reasons}", file=sys.stderr)
        time.sleep(0.05)
    print(f"ramp: not every link came up by the deadline; measuring {up}", file=sys.stderr)
    return time.time(), False


def run(args: argparse.Namespace) -> dict[str, Any]:
    links: int = args.links
    nproc = max(1, min(args.processes, links))
    load_start = os.getloadavg()
    old_soft, new_soft = check_fd_limit(links + FD_SPARE, "the hub process")
    ctx = mp.get_context("spawn")
    settings: dict[str, Any] = {}
    if args.revocation_check_interval is not None:  # an experiment: what the check costs
        settings["revocation_check_interval"] = args.revocation_check_interval
    started = time.time()
    ramp_guess = links / args.rate
    with reaped() as children, tempfile.TemporaryDirectory(prefix="hub-scale-") as tmp:
        db = Path(tmp) / "hub.db"
        t0 = time.perf_counter()
        tokens = setup_store(db, links)
        setup_s = time.perf_counter() - t0
        hard_deadline = time.time() + 120 + 3 * ramp_guess + args.settle + args.seconds
        sims = []  # started first: they load while the hub does
        for p in range(nproc):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=sim_main, args=(tokens[p::nproc], p, nproc, child), daemon=True
            )
            proc.start()
            children.append(proc)
            sims.append((proc, parent))
        hub, hub_conn, port, rss_idle = start_hub(
            ctx,
            db,
            links,
            hard_deadline + 15,
            args.profile_hub,
            children,
            quiet=0.3,
            settings=settings,
            gc_policy=None if args.no_gc_policy else args.gc_interval,
        )
        for _, c in sims:
            expect(c, "loaded", 60)
        ramp_start = time.time() + 0.1
        for _, c in sims:
            c.send((port, ramp_start, args.rate))
        time.sleep(max(0.0, ramp_start - time.time()))
        hub_cpu_ramp0 = cpu_seconds(hub.pid)
        ramp_end, ramp_complete = wait_ramp(
            [c for _, c in sims], links, ramp_start + args.ramp_timeout + 1.5 * ramp_guess
        )
        hub_cpu_ramp1 = cpu_seconds(hub.pid)
        rss_ramp = rss_kib(hub.pid)
        if args.gc_freeze:
            hub_conn.send("gc_freeze")
        time.sleep(args.settle)
        win_start = time.time()
        hub_cpu0 = cpu_seconds(hub.pid)
        sim_cpu0 = [cpu_seconds(proc.pid) for proc, _ in sims]
        rss_samples = sample_rss(hub.pid, win_start + args.seconds)
        win_end = time.time()
        hub_cpu1 = cpu_seconds(hub.pid)
        sim_cpu1 = [cpu_seconds(proc.pid) for proc, _ in sims]
        load_end = os.getloadavg()
        try:
            metrics = http_get(port, "/metrics").decode()
        except OSError as exc:  # a hub too busy to accept (its listen queue full)
            print(f"/metrics not read: {exc}", file=sys.stderr)
            metrics = ""
        stop_sent = time.time()
        for _, c in sims:
            c.send(("stop", (win_start, win_end)))
        reports = [expect_skipping(c, "done", 60) for _, c in sims]
        hub_report = stop_hub(hub_conn, children, 60)

    window = win_end - win_start
    online_metric = workers_online(metrics) if metrics else math.nan
    hub_gaps = [
        b - a - IDLE_INTERVAL
        for times in hub_report["arrivals"].values()
        for a, b in itertools.pairwise(times)
        if win_start <= b <= win_end
    ]
    rtts = [r for rep in reports for r in rep["rtts"]]
    lates = [x for rep in reports for x in rep["lates"]]
    handshakes = [d for rep in reports for t, d in rep["handshakes"] if t <= ramp_end]
    drops = [(t, why) for rep in reports for t, why in rep["drops"] if why != "stopped"]
    rss_peak = max([rss_ramp, *rss_samples])
    ramp_s = ramp_end - ramp_start
    late = percentiles(lates)
    result: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in load_end],
        "links": links,
        "simulator_processes": nproc,
        "nofile_soft_limit": [old_soft, new_soft],
        "hub_settings_changed": settings,
        "hub_gc_frozen_after_ramp": args.gc_freeze,
        # The hub runs leapcore-hub's garbage-collector policy (leapcore.hub.gcpolicy), unless
        # --no-gc-policy: passes made, reclaims (full pauses) and the last one's length.
        "hub_gc_policy": hub_report["gc_policy"],
        # With --gc-freeze: objects the collector tracked once every link was up, per link
        # over those tracked before any link.
        "hub_gc_tracked_per_link": (
            round((hub_report["tracked"]["frozen"] - hub_report["tracked"]["idle"]) / links, 1)
            if "frozen" in hub_report["tracked"]
            else None
        ),
        "hub_gc_tracked_kinds_per_link": {
            key[5:]: round(n / links, 2)
            for key, n in hub_report["tracked"].items()
            if key.startswith("kind:")
        },
        "hub_budgets_lifted": {
            "max_connections_per_address": links + 64,
            "max_links_per_address": links + 64,
            "max_workers_per_user": links,
        },
        "setup_store_s": round(setup_s, 2),
        "ramp": {
            "rate_asked_per_s": args.rate,
            "all_up": ramp_complete,
            "seconds": round(ramp_s, 2),
            "links_per_s": round(links / ramp_s, 1) if ramp_s > 0 else None,
            "hub_cpu_share": (hub_cpu_ramp1 - hub_cpu_ramp0) / ramp_s if ramp_s > 0 else None,
            "hub_cpu_ms_per_link": (hub_cpu_ramp1 - hub_cpu_ramp0) * 1e3 / links,
            "handshake_s": percentiles(handshakes),
            "drops": sum(1 for t, _ in drops if t <= ramp_end),
            "hub_rss_kib": rss_ramp,
        },
        "settle_s": args.settle,
        "window_s": round(window, 1),
        "links_up_at_end": sum(rep["up_at_stop"] for rep in reports),
        "workers_online_metric": online_metric,
        "hub_rss_idle_kib": rss_idle,
        "hub_rss_peak_kib": rss_peak,
        "hub_rss_peak_mib": round(rss_peak / 1024, 1),
        "rss_per_link_kib": round((rss_peak - rss_idle) / links, 2),
        "hub_cpu_share": (hub_cpu1 - hub_cpu0) / window,
        "simulator_cpu_share": sum(b - a for a, b in zip(sim_cpu0, sim_cpu1, strict=True)) / window,
        "simulator_cpu_share_each": [
            round((b - a) / window, 4) for a, b in zip(sim_cpu0, sim_cpu1, strict=True)
        ],
        "heartbeat_rtt_s": percentiles(rtts),
        "heartbeat_lateness_s": late,
        "hub_interarrival_late_s": percentiles(hub_gaps),
        "simulator_timer_late_max_s": max(rep["timer_late_max"] for rep in reports),
        # Until the simulators were told to stop; a hub far behind may time out more links
        # while they close (counted apart).
        "hub_gc_in_window": gc_pauses(hub_report["gc"], win_start, win_end),
        # Every full (generation 2) collection of the run: (seconds after every link was up,
        # negative during the ramp; pause in seconds), and the phases' counts.
        "hub_gc_full": [
            (round(t - ramp_end, 1), round(d, 3)) for t, g, d, _ in hub_report["gc"] if g == 2
        ],
        "hub_gc_by_phase": {
            phase: gc_pauses(hub_report["gc"], a, b)["gen2"]
            for phase, (a, b) in {
                "ramp": (ramp_start, ramp_end),
                "settle": (ramp_end, win_start),
                "window": (win_start, win_end),
            }.items()
        },
        "hub_declared_dead": sum(1 for t, _ in hub_report["dead"] if t <= stop_sent),
        "hub_declared_dead_at_teardown": sum(1 for t, _ in hub_report["dead"] if t > stop_sent),
        "hub_declared_dead_in_ramp": sum(1 for t, _ in hub_report["dead"] if t <= ramp_end),
        "drops": len(drops),
        "drops_in_window": sum(1 for t, _ in drops if win_start <= t <= win_end),
        "drop_reasons": dict(Counter(why for _, why in drops).most_common(5)),
        "redials": sum(rep["dials"] for rep in reports) - links,
        "dial_errors": sum(rep["dial_errors"] for rep in reports),
        "seconds": round(time.time() - started, 1),
    }
    result["targets"] = {
        "hub_rss_below_1_gib": rss_peak < 1024 * 1024,
        "lateness_p99_below_1_s": late["p99"] is not None and late["p99"] < 1.0,
        "no_link_declared_dead": result["hub_declared_dead"] == 0,
        "every_link_up": ramp_complete and result["links_up_at_end"] == links,
    }
    if late["p99"] is None:  # a window shorter than the heartbeat period: nothing to judge
        result["targets"]["lateness_p99_below_1_s"] = None
    return result


def gc_pauses(
    collections: list[tuple[float, int, float, float]], start: float, end: float
) -> dict[str, Any]:
    """The hub's garbage collections ending in [start, end]: per generation, how many, the
    longest pause and the total (seconds), and the CPU seconds the hub spent in them."""
    out: dict[str, Any] = {}
    for generation in (0, 1, 2):
        pauses = [(d, c) for t, g, d, c in collections if g == generation and start <= t <= end]
        out[f"gen{generation}"] = {
            "count": len(pauses),
            "max_s": round(max((d for d, _ in pauses), default=0.0), 4),
            "total_s": round(sum(d for d, _ in pauses), 4),
            "cpu_total_s": round(sum(c for _, c in pauses), 4),
        }
    return out


def fmt(p: dict[str, float | None], scale: float = 1e3, unit: str = "ms") -> str:
    if p["p50"] is None:
        return "none in the window"
    return (
        f"p50 {p['p50'] * scale:.1f} {unit}, p99 {p['p99'] * scale:.1f} {unit}, "
        f"max {p['max'] * scale:.1f} {unit} ({p['n']} samples)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=10_000, help="idle worker links (10000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="steady-state window (60)")
    parser.add_argument("--processes", type=int, default=3, help="simulator processes (3)")
    parser.add_argument("--rate", type=float, default=250.0, help="dials per second (250)")
    parser.add_argument(
        "--ramp-timeout",
        type=float,
        default=60.0,
        help="seconds beyond 1.5 x links/rate to wait for every link to be up (60)",
    )
    parser.add_argument(
        "--revocation-check-interval",
        type=float,
        metavar="S",
        help="an experiment: the hub's revocation check every S s (default: the hub's, 0.5)",
    )
    parser.add_argument(
        "--no-gc-policy",
        action="store_true",
        help="the hub runs without leapcore-hub's garbage-collector policy (the 'before')",
    )
    parser.add_argument(
        "--gc-interval",
        type=float,
        default=GcPolicy().interval,
        metavar="S",
        help="an experiment: the GC policy's interval (default: leapcore-hub's, 5)",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="an experiment: the hub calls gc.freeze() once every link is up",
    )
    add_common_options(parser)
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        ramp = result["ramp"]
        print(f"command: {result['command']}")
        print(f"load average: {result['loadavg_start']} -> {result['loadavg_end']}")
        print(
            f"{args.links} links ({result['simulator_processes']} simulator processes); "
            f"ramp {ramp['seconds']} s ({ramp['links_per_s']}/s), hub CPU "
            f"{ramp['hub_cpu_share'] * 100:.1f} % ({ramp['hub_cpu_ms_per_link']:.2f} ms per link)"
        )
        print(f"  dial to first ack:      {fmt(ramp['handshake_s'])}")
        print(
            f"window {result['window_s']} s after {args.settle:g} s settle: "
            f"{result['links_up_at_end']} up, /metrics online {result['workers_online_metric']:g}"
        )
        print(
            f"hub RSS:                  {result['hub_rss_idle_kib']} KiB idle -> "
            f"{result['hub_rss_peak_mib']} MiB; {result['rss_per_link_kib']:.1f} KiB per link"
        )
        print(f"hub CPU share:            {result['hub_cpu_share'] * 100:.1f} % of one core")
        print(
            f"simulator CPU share:      {result['simulator_cpu_share'] * 100:.1f} % "
            f"({result['simulator_cpu_share_each']})"
        )
        print(f"heartbeat round trip:     {fmt(result['heartbeat_rtt_s'])}")
        print(f"heartbeat lateness:       {fmt(result['heartbeat_lateness_s'])}")
        print(f"hub inter-arrival - 6 s:  {fmt(result['hub_interarrival_late_s'])}")
        print(
            f"declared dead by the hub: {result['hub_declared_dead']} "
            f"({result['hub_declared_dead_in_ramp']} in the ramp; "
            f"{result['hub_declared_dead_at_teardown']} more at teardown); drops "
            f"{result['drops']} ({result['drops_in_window']} in the window), "
            f"re-dials {result['redials']} {result['drop_reasons'] or ''}"
        )
        print(f"hub garbage collections:  {result['hub_gc_in_window']}")
        print(f"hub full collections (s after all up, pause s): {result['hub_gc_full']}")
        print(f"targets: {result['targets']}")
    return 0 if all(v is not False for v in result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
