"""The services a worker offers inside its channels, and what ``info`` reports.

``ping`` is answered by the channel endpoint itself (any caller). :func:`default_services`
adds ``info`` (owner only, as every method unless registered ``public=True``)::

    {"name", "worker_id", "version", "commit", "os", "arch", "python",
     "encryption_mode", "labels", "capabilities"}

An embedding application adds its own methods to the table it passes to the worker::

    services = default_services(worker)
    services.add_rpc("uptime", my_uptime_handler)
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .channel import CallContext, Services

if TYPE_CHECKING:
    from .workerd import Worker

__all__ = ["INFO_METHOD", "build_commit", "default_services", "info_document"]

INFO_METHOD = "info"


@functools.cache
def build_commit() -> str | None:
    """The git commit leapcore runs from (a source checkout), else ``None``."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None


def info_document(worker: Worker) -> dict[str, Any]:
    """What ``info`` answers for ``worker`` (its capabilities: every method it serves)."""
    greeting = worker.greeting
    services = worker.services
    methods = sorted({"ping", *services.rpcs, *services.streams, *services.byte_streams})
    return {
        "name": worker.name,
        "worker_id": greeting.worker_id if greeting is not None else None,
        "version": worker.version,
        "commit": build_commit(),
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "encryption_mode": worker.encryption_mode,
        "labels": dict(worker.labels),
        "capabilities": methods,
    }


def default_services(worker: Worker) -> Services:
    """A table with ``info`` for ``worker``; add more methods to it before running."""
    services = Services()
    build_commit()  # a git subprocess, once, at start-up: never inside a channel call

    async def info(ctx: CallContext, payload: bytes) -> bytes:
        return json.dumps(info_document(worker), sort_keys=True).encode()

    services.add_rpc(INFO_METHOD, info)
    return services
