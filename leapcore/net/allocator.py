"""The C allocator's settings for a process that relays bulk data (glibc only).

A byte stream through leapcore allocates and frees a few blocks of 64-512 KiB per 256 KiB
relayed (a socket read, a joined batch, a WebSocket frame). With glibc's defaults such
blocks land at the top of the heap, and each time the free space there passes the trim
threshold (adjusted to about twice the largest block seen, ~1 MiB here) ``free`` gives it
back to the kernel; the next allocation takes it back, page fault by page fault. Measured
with ``benchmarks/tunnel_bench.py --only bulk`` (docs/benchmarks.md, "Tunnels ... fourth
pass"): 10-15 % of the three processes' CPU per GiB.

:func:`tune_allocator` keeps up to :data:`TRIM_THRESHOLD` bytes of free heap in the process
and serves blocks below :data:`MMAP_THRESHOLD` from the heap (setting one of these turns
glibc's own adjustment off, so both are set). What it costs: at most
:data:`TRIM_THRESHOLD` bytes of resident memory kept free for reuse. The programs that own
their process call it at start (``leapcore-hub``, ``leapcore-worker``, ``leapcore remote
tunnel``); importing leapcore never does, so a program that embeds the library keeps its
allocator as it is unless it calls it. glibc's own environment variables
(``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``) win: when one
is set, nothing is changed. Elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Final

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator"]

#: Blocks below this come from the heap, not a mapping of their own.
MMAP_THRESHOLD: Final = 1024 * 1024
#: Free heap kept at its top before ``free`` returns it to the kernel.
TRIM_THRESHOLD: Final = 8 * 1024 * 1024

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_ENVIRONMENT: Final = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_tuned = False


def tune_allocator() -> bool:
    """Apply the settings above once per process; True if they are in force (now or from
    an earlier call), False where they do not apply (not glibc, or glibc's environment
    variables set)."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success, 0 on a refused value
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _tuned
