"""The measuring machinery shared by the benchmark scripts (paired rounds, median of ratios).

A :class:`Pair` is a leapcore operation and a baseline doing the same job. :func:`measure`
warms both up, then times them alternately, round after round, with the garbage collector
paused inside each sample; the reported ratio is the median over rounds of the per-round ratio,
which cancels most of the drift of a noisy machine. Absolute medians are kept for context.

Not a module of leapcore: the scripts next to it import it as ``_measure`` (the script's
directory is on ``sys.path`` when it runs).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Pair", "Result", "fmt_time", "measure", "profile", "run_info", "sample"]


@dataclass(frozen=True)
class Pair:
    """A leapcore operation and its baseline; each call runs ``per_call`` units of work."""

    name: str
    title: str
    leapcore: Callable[[], object]
    baseline: Callable[[], object]
    #: Lower is better ("time" ratio, leapcore/baseline), or higher ("throughput", base/leap).
    kind: str
    #: The ratio's target; ``None``: the ratio is reported, not judged.
    target: float | None
    calls: int  # calls per timed sample
    rounds: int
    unit_bytes: int = 0  # bytes of plaintext per call (throughput benchmarks)
    #: Run, untimed, before every sample of that side (e.g. fresh endpoints for each sample).
    leapcore_setup: Callable[[], object] | None = None
    baseline_setup: Callable[[], object] | None = None


@dataclass
class Result:
    name: str
    title: str
    kind: str
    ratio: float
    target: float | None
    passed: bool
    leapcore_median_s: float  # per call
    baseline_median_s: float
    rounds: int
    calls_per_sample: int
    #: The per-round ratios, in order (their median is ``ratio``).
    round_ratios: list[float] = field(default_factory=list)
    leapcore_mb_s: float | None = None
    baseline_mb_s: float | None = None

    @property
    def spread(self) -> tuple[float, float]:
        """The interquartile range of the per-round ratios."""
        q = statistics.quantiles(self.round_ratios, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'<=' if self.kind == 'time' else '>='} {self.target:.2f}"


def sample(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call over ``calls`` back-to-back calls, with the collector paused."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    finally:
        gc.enable()


def _timed(pair: Pair, leapcore: bool, calls: int) -> float:
    setup = pair.leapcore_setup if leapcore else pair.baseline_setup
    if setup is not None:
        setup()
    return sample(pair.leapcore if leapcore else pair.baseline, calls)


def measure(pair: Pair) -> Result:
    # Warm up both sides (imports, caches, CPU frequency).
    for _ in range(2):
        _timed(pair, True, max(1, pair.calls // 2))
        _timed(pair, False, max(1, pair.calls // 2))
    leap_times, base_times, ratios = [], [], []
    for i in range(pair.rounds):
        # Alternate which side goes first, so neither always runs on a "warmer" machine.
        if i % 2 == 0:
            leap = _timed(pair, True, pair.calls)
            base = _timed(pair, False, pair.calls)
        else:
            base = _timed(pair, False, pair.calls)
            leap = _timed(pair, True, pair.calls)
        leap_times.append(leap)
        base_times.append(base)
        # time: leapcore/baseline (lower is better); throughput: base time / leap time.
        ratios.append(leap / base if pair.kind == "time" else base / leap)
    ratio = statistics.median(ratios)
    if pair.target is None:
        passed = True
    else:
        passed = ratio <= pair.target if pair.kind == "time" else ratio >= pair.target
    leap_med, base_med = statistics.median(leap_times), statistics.median(base_times)
    result = Result(
        name=pair.name,
        title=pair.title,
        kind=pair.kind,
        ratio=ratio,
        target=pair.target,
        passed=passed,
        leapcore_median_s=leap_med,
        baseline_median_s=base_med,
        rounds=pair.rounds,
        calls_per_sample=pair.calls,
        round_ratios=ratios,
    )
    if pair.unit_bytes:
        result.leapcore_mb_s = pair.unit_bytes / leap_med / 1e6
        result.baseline_mb_s = pair.unit_bytes / base_med / 1e6
    return result


def fmt_time(seconds: float) -> str:
    if seconds >= 1e-1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def profile(pairs: list[Pair], name: str) -> None:
    """cProfile the leapcore side of one benchmark and print the top of the profile."""
    pair = next(p for p in pairs if p.name == name)
    profiler = cProfile.Profile()
    for _ in range(max(pair.rounds, 5)):
        if pair.leapcore_setup is not None:
            pair.leapcore_setup()  # not profiled
        profiler.enable()
        for _ in range(pair.calls):
            pair.leapcore()
        profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(15)


def run_info(quick: bool, started: float) -> dict[str, object]:
    """The head of a ``--json`` report: command, interpreter, machine, duration."""
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "quick": quick,
        "seconds": round(time.time() - started, 1),
    }


def make_parser(doc: str, names: list[str]) -> argparse.ArgumentParser:
    """The command line every benchmark script takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument(
        "--only", action="append", choices=names, help="run only this benchmark (repeatable)"
    )
    parser.add_argument("--profile", choices=names, help="cProfile the leapcore side of one")
    return parser
