"""``tune_allocator`` (glibc): in a fresh interpreter each, blocks of the sizes a relay
allocates are freed and allocated again without a page fault once it ran, where glibc's
defaults give their pages back to the kernel and fault them in again; glibc's own
environment variables win; a second call changes nothing."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the allocator settings are glibc's",
)

_PROBE = """
import resource, sys
from leapcore.net.allocator import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tune" else None
again = tune_allocator() if sys.argv[1] == "tune" else None

def churn():
    for _ in range(200):  # the sizes of a relay's reads, joins and frames
        a = bytes(768 * 1024)
        b = bytes(768 * 1024)
        c = bytes(300 * 1024)
        del a, b, c

churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(tuned, again, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(mode: str, **env: str) -> tuple[str, str, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, **env},
        check=True,
    )
    tuned, again, faults = done.stdout.split()
    return tuned, again, int(faults)


def test_freed_blocks_are_reused_without_page_faults() -> None:
    tuned, again, faults = _probe("tune")
    assert (tuned, again) == ("True", "True")
    _, _, default_faults = _probe("plain")
    assert faults < 200 < default_faults


def test_glibc_environment_variables_win() -> None:
    tuned, again, _ = _probe("tune", MALLOC_TRIM_THRESHOLD_="131072")
    assert (tuned, again) == ("False", "False")
