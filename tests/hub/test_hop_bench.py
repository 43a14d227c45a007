"""``benchmarks/hub_hop_bench.py`` runs at a tiny size, so the script cannot rot: two real
``leapcore-hub serve`` processes on one database, a worker linked to the second, pings and a
byte stream through one hub and through both, every figure in the JSON report. (The figures
themselves come from running the script: docs/benchmarks.md, "The extra hub hop".)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hub_hop_bench.py"


def test_hub_hop_bench_smoke() -> None:
    args = ["--rounds", "1", "--pings", "5", "--bulk-mib", "1", "--json"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,  # a hung run fails instead of stalling the suite; not a speed check
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    ping, bulk = report["ping"], report["bulk"]
    assert ping["rounds"] == 1 and ping["pings_per_round"] == 5
    assert ping["ratio"] > 0 and ping["p99_ratio"] > 0
    assert bulk["rounds"] == 1 and bulk["mib_per_round"] == 1 and bulk["ratio"] > 0
    for side in ("one_hub", "a_to_b"):
        assert ping[side]["median_us"] > 0 and ping[side]["p99_us"] >= ping[side]["median_us"]
        assert bulk[side]["mb_s"] > 0
    # Hub A carries only the A->B side; both sides have hub B, the worker and the client.
    assert set(bulk["a_to_b"]["cpu_s_per_gib"]) == {"hub_a", "hub_b", "worker", "client"}
    assert set(bulk["one_hub"]["cpu_s_per_gib"]) == {"hub_b", "worker", "client"}
    assert report["load"]["busy_cores"] >= 0
