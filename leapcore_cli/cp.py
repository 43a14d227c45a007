"""``leapcore remote cp [-r] [--json] SRC DST``: copy files between here and a worker, end-to-end
encrypted, like ``scp``.

Exactly one of SRC and DST is ``WORKER:PATH`` (WORKER as ``--worker`` takes it: an id, a
name or a unique start of an id; a local path with a ``:`` before any ``/`` is written
``./name``). A remote PATH is absolute or relative to the worker's home directory (empty:
the home directory itself). ``-r`` copies directory trees. A progress line goes to stderr
when stderr is a terminal; ``--json`` prints ``{"files", "bytes", "seconds",
"direction"}`` (``"put"`` or ``"get"``). Exit codes are leapcore's (docs/cli.md); a source
that does not exist exits 3.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from leapcore.errors import FileTransferFailed
from leapcore.peer.files import CopyResult, get, put
from leapcore.peer.hubsession import HubSession

from .common import EXIT_NOT_FOUND, EXIT_OK, emit_json


def split_remote(arg: str) -> tuple[str, str] | None:
    """``(worker, path)`` for ``WORKER:PATH``, else None (a local path)."""
    head, sep, tail = arg.partition(":")
    if not sep or not head or "/" in head:
        return None
    return head, tail or "."


class _Bar:
    """A progress line on stderr, redrawn at most ten times a second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6) / 1e6
        percent = f"{100 * done // total:3d}%" if total else "100%"
        sys.stderr.write(
            f"\r{done / 1e6:10.1f} MB / {total / 1e6:.1f} MB {percent} {rate:8.1f} MB/s"
        )
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")


def run_cp(args: argparse.Namespace) -> int:
    from .remote import _channel_verb, _resolved, _timeout

    source, dest = split_remote(args.source), split_remote(args.dest)
    if (source is None) == (dest is None):
        args.parser_error("exactly one of SRC and DST must be WORKER:PATH")
    ref = (source or dest)[0]  # type: ignore[index]
    timeout = _timeout(args)
    bar = _Bar() if not args.json and _stderr_is_terminal() else None
    outcome: list[CopyResult] = []

    async def body(session: HubSession) -> int:
        worker_id = await _resolved(session, ref)
        async with session.open_channel(worker_id, timeout=timeout) as channel:
            options: dict[str, Any] = {
                "recursive": args.recursive,
                "progress": bar,
                "timeout": timeout,
            }
            if dest is not None:
                outcome.append(await put(channel, args.source, dest[1], **options))
            else:
                assert source is not None
                outcome.append(await get(channel, source[1], args.dest, **options))
        return EXIT_OK

    try:
        status = _channel_verb(args, body)
    except FileTransferFailed as exc:
        if bar is not None and bar.last:
            bar.finish()
        if exc.reason != "not_found":
            raise
        if args.json:
            emit_json({"error": {"code": exc.code, "message": exc.message}})
        else:
            print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if bar is not None and bar.last:
        bar.finish()
    if status == EXIT_OK and args.json:
        result = outcome[0]
        emit_json(
            {
                "files": result.files,
                "bytes": result.bytes,
                "seconds": round(result.seconds, 3),
                "direction": result.direction,
            }
        )
    return status


def _stderr_is_terminal() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False


def add_verbs(
    remote_sub: Any,
    session_flags: Callable[[argparse.ArgumentParser], None],
    timeout_flag: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``remote cp`` under ``remote_sub``."""
    p = remote_sub.add_parser(
        "cp",
        help="copy files to or from a worker (like scp)",
        description="Copy SRC to DST, end-to-end encrypted; exactly one of them is "
        "WORKER:PATH (a remote PATH is absolute or relative to the worker's home). Files "
        "are written to a temporary name and renamed once complete; modes and mtimes are kept.",
    )
    session_flags(p)
    timeout_flag(p)
    p.add_argument("-r", "--recursive", action="store_true", help="copy directory trees")
    p.add_argument("source", metavar="SRC")
    p.add_argument("dest", metavar="DST")
    p.set_defaults(handler=run_cp, parser_error=p.error)
