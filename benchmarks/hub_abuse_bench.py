"""A real hub process under each flood of the hostile suite: its memory and descriptor peaks,
and what the flood costs an honest user's channel.

    .venv/bin/python benchmarks/hub_abuse_bench.py                 # 4 s per side, 2 rounds
    .venv/bin/python benchmarks/hub_abuse_bench.py --quick         # 2 s per side, 1 round
    .venv/bin/python benchmarks/hub_abuse_bench.py --only h2_ping --json

The stage is the hostile suite's (``tests/e2e/hostile/hostile_arena.py``): one ``leapcore-hub
serve`` process on loopback with the suite's budgets, two classic-mode ``leapcore-worker``
processes, and the bystander — alice's client process with one channel open to her worker.
The floods are the suite's (``tests/e2e/hostile/hostile_attacks.py``), sent from 127.0.0.2 and
up while the bystander makes back-to-back Ping round trips on its channel.

For each flood, per round: the bystander's round trips for ``--seconds`` with no flood, and for
``--seconds`` with the flood running (the order alternates between rounds), the hub's
``VmRSS`` and open descriptors sampled every 5 ms (``/proc/PID``). Reported:

* ``rss_peak_kib`` / ``fds_peak``: the largest growth over the reading taken just before
  the flood, over all rounds;
* ``p50_ratio`` / ``p99_ratio``: the bystander's median and 99th-percentile round trip under
  the flood divided by the same without it, in the same round (the median of the rounds'
  ratios); absolute milliseconds for context only — machines here are noisy, so no
  absolute figure is judged;
* ``pings_ratio``: round trips made under the flood / without it.

Not a module of leapcore; it stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e" / "hostile")]

import hostile_attacks as attacks  # noqa: E402
from hostile_arena import ATTACKER, ATTACKERS, Arena, Watch  # noqa: E402

Flood = Callable[[Arena, float, dict[str, Any]], None]


def _h2_ping(arena: Arena, seconds: float, prep: dict[str, Any]) -> None:
    attacks.h2_ping_flood(arena.address, ATTACKER, seconds=seconds)


def _h2_settings(arena: Arena, seconds: float, prep: dict[str, Any]) -> None:
    attacks.h2_settings_flood(arena.address, ATTACKER, seconds=seconds)


def _h2_continuation(arena: Arena, seconds: float, prep: dict[str, Any]) -> None:
    attacks.h2_continuation_flood(arena.address, ATTACKER, seconds=seconds)


def _h2_preface(arena: Arena, seconds: float, prep: dict[str, Any]) -> None:
    end = time.monotonic() + seconds
    socks = attacks.h2_preface_only(arena.address, list(ATTACKERS[:4]), 300)
    with attacks.held(socks):
        while time.monotonic() < end:
            attacks.drain(socks[0], min(0.2, max(0.0, end - time.monotonic())))


def _ws_ping(arena: Arena, seconds: float, prep: dict[str, Any]) -> None:
    attacks.ws_ping_flood(arena.address, ATTACKER, seconds=seconds)


def _ws_ping_blocked(arena: Arena, seconds: float, prep: dict[str, Any]) -> None:
    attacks.ws_ping_flood_blocked_writer(
        arena.address, ATTACKER, prep["token"], requests=60, seconds=seconds
    )


def _pipelined(arena: Arena, seconds: float, prep: dict[str, Any]) -> None:
    links = []
    end = time.monotonic() + seconds
    try:
        for source in ATTACKERS[:3]:
            link = attacks.sign_in(arena.address, source, prep["token"], rcvbuf=attacks.TINY_RCVBUF)
            links.append(link)
            link.send(*[attacks.HubRequest(i, "workers.list", {}) for i in range(1, 251)])
        while time.monotonic() < end:  # hold the links, unread, for the measured time
            time.sleep(0.05)
    finally:
        for link in links:
            link.close()


FLOODS: dict[str, tuple[str, Flood]] = {
    "h2_ping": ("HTTP/2 PING frames from a peer that never reads", _h2_ping),
    "h2_settings": ("HTTP/2 SETTINGS frames from a peer that never reads", _h2_settings),
    "h2_continuation": ("a header block of endless CONTINUATION frames", _h2_continuation),
    "h2_preface_only": ("300 connections sending only the HTTP/2 preface, held", _h2_preface),
    "ws_ping": ("WebSocket PINGs before any link record, never reading", _ws_ping),
    "ws_ping_blocked": ("WebSocket PINGs while the hub's writer is blocked", _ws_ping_blocked),
    "pipelined": ("3 links x 250 workers.list (~100 KB answers), never read", _pipelined),
}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _side(arena: Arena, bystander: Any, seconds: float, flood: Flood | None, prep: Any) -> Any:
    """The bystander's round trips for ``seconds`` (with ``flood`` running in a thread)."""
    watch = Watch(arena.pid)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            assert flood is not None
            flood(arena, seconds, prep)
        except BaseException as exc:  # reported, not fatal: the figures say what happened
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True) if flood is not None else None
    with watch:
        if thread is not None:
            thread.start()
        answer = bystander.pingfor(seconds)
        if thread is not None:
            thread.join(seconds + 30)
    if not answer.get("ok"):
        raise RuntimeError(f"the bystander's channel failed: {answer.get('error')}")
    return answer["rtt_ms"], watch, errors


def measure(arena: Arena, bystander: Any, name: str, seconds: float, rounds: int) -> dict[str, Any]:
    title, flood = FLOODS[name]
    prep: dict[str, Any] = {}
    if name in ("ws_ping_blocked", "pipelined"):
        created = arena.admin("user", "create", f"bench-{name}")
        prep["token"] = created["token"]
        if name == "ws_ping_blocked":
            attacks.fake_workers(arena.address, ATTACKER, prep["token"], 16)
        else:
            attacks.fake_workers(arena.address, ATTACKER, prep["token"], 30, attacks.BIG_LABELS)
    p50s, p99s, counts = [], [], []
    rss_peak = fds_peak = 0
    quiet_ms: list[float] = []
    loud_ms: list[float] = []
    errors: list[str] = []
    for i in range(rounds):
        order = [None, flood] if i % 2 == 0 else [flood, None]
        got = {}
        for which in order:
            rtts, watch, errs = _side(arena, bystander, seconds, which, prep)
            got[which is None] = rtts
            if which is not None:
                rss_peak = max(rss_peak, watch.peak_rss - watch.base_rss)
                fds_peak = max(fds_peak, watch.peak_fds - watch.base_fds)
                errors += [f"{type(e).__name__}: {e}" for e in errs]
            watch.settle()
        quiet, loud = got[True], got[False]
        quiet_ms += quiet
        loud_ms += loud
        p50s.append(statistics.median(loud) / statistics.median(quiet))
        p99s.append(_pct(loud, 0.99) / _pct(quiet, 0.99))
        counts.append(len(loud) / len(quiet))
    if not arena.alive():
        errors.append("the hub process exited")
    return {
        "name": name,
        "title": title,
        "rss_peak_kib": rss_peak,
        "fds_peak": fds_peak,
        "p50_ratio": statistics.median(p50s),
        "p99_ratio": statistics.median(p99s),
        "pings_ratio": statistics.median(counts),
        "quiet_p50_ms": statistics.median(quiet_ms),
        "quiet_p99_ms": _pct(quiet_ms, 0.99),
        "flood_p50_ms": statistics.median(loud_ms),
        "flood_p99_ms": _pct(loud_ms, 0.99),
        "hub_alive": arena.alive(),
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per side, 1 round")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--seconds", type=float, help="seconds per side (default 4)")
    parser.add_argument("--rounds", type=int, help="rounds per flood (default 2)")
    parser.add_argument("--only", action="append", choices=list(FLOODS), help="repeatable")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    rounds = args.rounds or (1 if args.quick else 2)
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="hub-abuse-") as tmp:
        arena = Arena(Path(tmp))
        bystander = None
        try:
            arena.start()
            for name in args.only or list(FLOODS):
                if not arena.alive() or arena.healthz() != 200:
                    if bystander is not None:
                        bystander.close()
                        bystander = None
                    arena.stop()
                    arena = Arena(Path(tempfile.mkdtemp(dir=tmp)))
                    arena.start()
                if bystander is None:
                    bystander = arena.bystander()
                try:
                    results.append(measure(arena, bystander, name, seconds, rounds))
                except RuntimeError as exc:
                    results.append({"name": name, "error": str(exc), "hub_alive": arena.alive()})
                    bystander.close()
                    bystander = None
        finally:
            if bystander is not None:
                bystander.close()
            arena.stop()
    info = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds_per_side": seconds,
        "rounds": rounds,
        "seconds": round(time.time() - started, 1),
    }
    if args.json:
        print(json.dumps({"run": info, "results": results}, indent=2))
        return 0
    print(f"hub under abuse: {seconds:g} s per side, {rounds} round(s); {info['seconds']} s")
    head = (
        f"{'flood':17} {'RSS peak':>10} {'fds':>5} {'p50 x':>7} {'p99 x':>7} {'pings x':>8}  alive"
    )
    print(head)
    for r in results:
        if "error" in r:
            print(f"{r['name']:17} failed: {r['error']}")
            continue
        print(
            f"{r['name']:17} {r['rss_peak_kib'] / 1024:8.1f}MiB {r['fds_peak']:5d} "
            f"{r['p50_ratio']:7.2f} {r['p99_ratio']:7.2f} {r['pings_ratio']:8.2f}  "
            f"{'yes' if r['hub_alive'] else 'NO'}"
        )
        for e in r["errors"]:
            print(f"{'':17} attacker saw: {e}")
    print(
        "quiet round trip (ms): "
        + ", ".join(
            f"{r['name']} {r['quiet_p50_ms']:.2f}/{r['quiet_p99_ms']:.2f}"
            for r in results
            if "error" not in r
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
