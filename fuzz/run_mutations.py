"""Run the deterministic mutation driver without pytest or atheris.

    .venv/bin/python fuzz/run_mutations.py                    # every harness, 20000 inputs each
    .venv/bin/python fuzz/run_mutations.py message1_pq --count 200000 --seed 3

A failure prints the harness's report and the reproduction note, and writes the input to
``$TMPDIR/leapcore-fuzz-crash-<harness>-<sha256 prefix>.bin``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from fuzz import driver

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="harness", help=", ".join(driver.PLANS))
    parser.add_argument("--count", type=int, default=20000, help="mutations per harness")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--signature-count",
        type=int,
        default=20,
        help="message2_pq inputs with only the signature mutated (about 3.4 ms each)",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(driver.PLANS))
    if unknown:
        parser.error(
            f"unknown harness(es) {', '.join(unknown)}; choose from {', '.join(driver.PLANS)}"
        )
    status = 0
    for name in args.names or list(driver.PLANS):
        runs = [
            (functools.partial(driver.campaign_inputs, name, seed=args.seed, count=args.count), "")
        ]
        if name == "message2_pq" and args.signature_count:
            sig = functools.partial(
                driver.signature_inputs, seed=args.seed, count=args.signature_count
            )
            runs.append((sig, " (signature region only)"))
        for make_inputs, label in runs:
            status |= _run(name, make_inputs, label)
    return status


def _run(name: str, make_inputs: Callable[[], Iterator[bytes]], label: str) -> int:
    from fuzz import driver, harnesses

    try:
        stats = driver.run_inputs(name, make_inputs(), label=f"{name}{label}")
    except harnesses.HarnessFailure as exc:
        traceback.print_exception(exc)
        for data in make_inputs():  # deterministic: find the failing input again
            try:
                harnesses.HARNESSES[name](data)
            except harnesses.HarnessFailure:
                digest = hashlib.sha256(data).hexdigest()[:16]
                path = Path(tempfile.gettempdir()) / f"leapcore-fuzz-crash-{name}-{digest}.bin"
                path.write_bytes(data)
                print(f"failing input written to {path}", file=sys.stderr)
                break
        return 1
    print(f"{stats}{label}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
