"""The sans-IO core imports without any I/O framework (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = [
    "leapcore",
    "leapcore.crypto.handshake",
    "leapcore.crypto.transport",
    "leapcore.crypto.rekey",
    "leapcore.crypto.rekey_policy",
    "leapcore.crypto.keys",
    "leapcore.store.keyfile",
    "leapcore.crypto.fingerprint",
    "leapcore.crypto.mode",
    "leapcore.records",
    "leapcore.crypto.primitives",
    "leapcore.errors",
    "leapcore.proto.chunking",
    "leapcore.proto.channel_codec",
    "leapcore.proto.channel_mux",
    "leapcore.proto.link_codec",
    "leapcore.proto.link_state",
    "leapcore.proto.relay",
    "leapcore.proto.backoff",
    "leapcore.proto.heartbeat",
    "leapcore.proto.pins",
    "leapcore.store.paths",
    "leapcore.proto.ratelimit",
    "leapcore.proto.hub_limits",
    "leapcore.proto.limits",
]
IO_FRAMEWORKS = ["trio", "anyio", "websockets", "h2", "sniffio", "outcome", "h11"]


def _modules_after(imports: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {imports!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout))


def _top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_core_does_not_import_io_frameworks():
    loaded = _modules_after(CORE)
    assert set(CORE) <= loaded
    assert _top_level(loaded) & set(IO_FRAMEWORKS) == set()


def test_the_check_can_fail():
    """The probe does see an I/O framework when one is imported (trio is installed)."""
    loaded = _top_level(_modules_after(["leapcore.errors", "trio"]))
    assert {"trio"} <= loaded
