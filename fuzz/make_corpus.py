"""Write each harness's seed corpus to ``fuzz/corpus-<harness>/`` (gitignored) for atheris.

    .venv/bin/python fuzz/make_corpus.py [--mutations N]

The seeds are the valid inputs of :func:`fuzz.harnesses.seeds` (built from the known-answer
vectors: no signing) plus the driver's edge cases and, optionally, N deterministic mutations.
Files are named by the sha1 of their content, as libFuzzer does, so re-running is idempotent.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    from fuzz import driver, harnesses
    from fuzz.mutate import edge_cases

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutations", type=int, default=32, help="extra mutated seeds per harness")
    args = parser.parse_args()
    for name in harnesses.HARNESSES:
        seeds = harnesses.seeds(name)
        inputs = list(seeds) + edge_cases(sorted({len(s) for s in seeds}))
        campaign = list(driver.campaign_inputs(name, seed=1, count=args.mutations))
        inputs += campaign[len(campaign) - args.mutations :]  # the mutations come last
        out = HERE / f"corpus-{name}"
        out.mkdir(exist_ok=True)
        written = 0
        for data in inputs:
            path = out / hashlib.sha1(data).hexdigest()
            if not path.exists():
                path.write_bytes(data)
                written += 1
        print(f"{out}: {written} new, {len(list(out.iterdir()))} in total")


if __name__ == "__main__":
    main()
