"""File copy throughput: ``leapcore remote cp`` against ``scp``, one large file each way.

::

    python benchmarks/cp_bench.py [--size-mib 1024] [--rounds 1]

leapcore: a real hub and a real ``leapcore-worker`` (classic mode) on loopback, started as
the end-to-end tests start them (``tests/support/procs.worker_box``), and the
``leapcore remote cp`` command as a process. scp: an ``sshd`` this script starts on a
loopback port (``tunnel_bench.OpenSSH``, chacha20-poly1305), ``scp -O -F cfg`` (the
legacy protocol: that sshd has no sftp subsystem). Both copy the
same random file to a directory on the same disk and back; the wall time of each command
(its start-up included) gives MB/s (10^6 bytes per second). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from support.procs import script, worker_box  # noqa: E402
from tunnel_bench import OpenSSH, ssh_missing  # noqa: E402

MIB = 1024 * 1024


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--rounds", type=int, default=1, help="copies each way (best kept)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as name:
        tmp = Path(name)
        source = tmp / "source.bin"
        with source.open("wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(MIB))
        expected = sha256(source)
        results: dict[str, dict[str, float]] = {}
        (tmp / "box").mkdir()
        with worker_box(tmp / "box") as (env, _worker):
            cenv = {**env.env, "LEAPCORE_HUB": env.url}
            cp = [script("leapcore"), "remote", "cp", *env.client_flags()]
            best = {"put": float("inf"), "get": float("inf")}
            for index in range(args.rounds):
                up, down = tmp / f"up-{index}.bin", tmp / f"down-{index}.bin"
                best["put"] = min(best["put"], timed([*cp, str(source), f"box:{up}"], cenv))
                best["get"] = min(best["get"], timed([*cp, f"box:{up}", str(down)], cenv))
                assert sha256(down) == expected
                up.unlink()
                down.unlink()
            results["leapcore remote cp"] = best
        missing = ssh_missing()
        if missing is None:
            (tmp / "ssh").mkdir()
            ssh = OpenSSH(tmp / "ssh")
            try:
                scp = ["scp", "-O", "-q", "-F", str(tmp / "ssh" / "ssh_config")]
                best = {"put": float("inf"), "get": float("inf")}
                for index in range(args.rounds):
                    up, down = tmp / f"sup-{index}.bin", tmp / f"sdown-{index}.bin"
                    best["put"] = min(best["put"], timed([*scp, str(source), f"bench:{up}"]))
                    best["get"] = min(best["get"], timed([*scp, f"bench:{up}", str(down)]))
                    assert sha256(down) == expected
                    up.unlink()
                    down.unlink()
                results["scp"] = best
            finally:
                ssh.close()
        else:
            print(f"scp skipped: {missing} not found")
    print(f"{args.size_mib} MiB, best of {args.rounds}:")
    for tool, times in results.items():
        rates = "  ".join(f"{d} {size / t / 1e6:7.1f} MB/s ({t:.2f} s)" for d, t in times.items())
        print(f"  {tool:20} {rates}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
