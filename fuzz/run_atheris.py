"""Coverage-guided fuzzing of one harness with atheris (libFuzzer).

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/make_corpus.py
    .venv/bin/python fuzz/run_atheris.py message1_pq -max_total_time=300

Everything after the harness name goes to libFuzzer (``-runs=N``, ``-max_total_time=S``,
``-max_len=N``, corpus directories, a crash file to replay...). With no corpus directory given,
``fuzz/corpus-<harness>/`` is used when it exists (new interesting inputs are added to it);
``key_json`` and ``keyfile`` get ``-dict=fuzz/key_json.dict`` and ``message2_pq`` gets
``-max_len=50000`` unless given.
A failing input is written by libFuzzer as ``crash-<sha1>`` in the current directory; replay
it with ``fuzz/run_atheris.py <harness> crash-<sha1>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    # fuzz.harnesses is not imported yet: leapcore must first be imported under
    # instrumentation. Its names are read from the source instead.
    import ast

    tree = ast.parse((HERE / "harnesses.py").read_text())
    names = [
        node.name.removeprefix("check_")
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("check_")
    ]
    if len(sys.argv) < 2 or sys.argv[1] not in names:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(names)}}} [libFuzzer args...]")
    name, fuzzer_args = sys.argv[1], sys.argv[2:]

    import atheris

    sys.path.insert(0, str(HERE.parent))
    with atheris.instrument_imports(include=["leapcore", "fuzz"]):
        from fuzz import harnesses

    check = harnesses.HARNESSES[name]
    harnesses.fixtures()  # build the fixtures before the first input
    if not any(not a.startswith("-") for a in fuzzer_args):
        corpus = HERE / f"corpus-{name}"
        if corpus.is_dir():
            fuzzer_args.append(str(corpus))
    if name in ("key_json", "keyfile") and not any(a.startswith("-dict=") for a in fuzzer_args):
        fuzzer_args.append(f"-dict={HERE / 'key_json.dict'}")
    if name == "message2_pq" and not any(a.startswith("-max_len=") for a in fuzzer_args):
        fuzzer_args.append("-max_len=50000")  # message 2 is 49904 bytes (default max_len 4096)

    atheris.Setup([sys.argv[0], *fuzzer_args], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
