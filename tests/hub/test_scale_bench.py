"""``benchmarks/hub_scale_bench.py`` runs, at a tiny size, so the script cannot rot: its
simulated links come up through the real hub's link path, its report is JSON with every
figure, and the hub declares no link dead. (The figures themselves are measured by running
the script: docs/benchmarks.md, "Hub scale".)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hub_scale_bench.py"


def test_hub_scale_bench_smoke() -> None:
    args = ["--links", "20", "--processes", "2", "--rate", "400", "--settle", "0"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--seconds", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,  # a hung run fails instead of stalling the suite; not a speed check
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["links"] == 20
    assert report["links_up_at_end"] == 20
    assert report["workers_online_metric"] == 20
    assert report["hub_declared_dead"] == 0
    assert report["drops"] == 0 and report["redials"] == 0
    assert report["ramp"]["handshake_s"]["n"] == 20
    assert report["hub_rss_peak_kib"] > report["hub_rss_idle_kib"] > 0
    assert report["hub_budgets_lifted"]["max_links_per_address"] >= 20
    assert report["targets"]["no_link_declared_dead"] is True
    assert report["targets"]["hub_rss_below_1_gib"] is True
