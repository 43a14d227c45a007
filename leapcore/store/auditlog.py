"""The worker's audit log: an append-only JSON-lines file, mode 0600 in a 0700 directory,
rotated by size and pruned by age (records: :mod:`leapcore.proto.call_audit`).

Each record is one ``write`` of one line to a descriptor opened ``O_APPEND`` (a line is
never interleaved with another). When the file reaches ``max_bytes`` it is renamed to
``<name>.<UTC time>`` (``audit.log.20261206T025501Z``; ``-2``, ``-3`` … if taken) and a new
one started; rotated files older than ``retention_days`` are deleted at each rotation and
when the log is opened. The file is opened at the first record, so a worker that serves
no call writes nothing.

Writing never fails the call it records: an error (a full disk, a removed directory) is
logged (once a minute at most) and counted in :attr:`AuditLog.failures`, and the next
record tries again.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from .atomicfile import FILE_MODE, ensure_private_dir

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)

_STAMP: Final = "%Y%m%dT%H%M%SZ"
#: Seconds between two warnings about a log that cannot be written.
_WARN_EVERY: Final = 60.0


class AuditLog:
    """An append-only JSON-lines log at ``path`` (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        retention_days: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.retention_days = retention_days
        self._clock = clock
        self._fd: int | None = None
        self._size = 0
        self._warned_at = -_WARN_EVERY
        #: Records that could not be written.
        self.failures = 0
        self._rotated = re.compile(re.escape(self.path.name) + r"\.(\d{8}T\d{6}Z)(?:-\d+)?")

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line (never raises for the file's sake)."""
        line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode()
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            os.write(self._fd, line)
            self._size += len(line)
            if self._size >= self.max_bytes:
                self._rotate()
        except OSError as exc:
            self.failures += 1
            self._close()
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY:
                self._warned_at = now
                log.warning("audit log %s: cannot write: %s", self.path, exc.strerror or exc)

    def close(self) -> None:
        self._close()

    def _open(self) -> None:
        ensure_private_dir(self.path.parent)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # an existing file made by hand: 0600 too
            self._size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self.prune()

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _rotate(self) -> None:
        self._close()
        stamp = time.strftime(_STAMP, time.gmtime(self._clock()))
        target = self.path.with_name(f"{self.path.name}.{stamp}")
        number = 1
        while target.exists():
            number += 1
            target = self.path.with_name(f"{self.path.name}.{stamp}-{number}")
        os.rename(self.path, target)
        self._open()

    def rotated(self) -> list[Path]:
        """The rotated files beside the log, oldest first."""
        try:
            names = os.listdir(self.path.parent)
        except FileNotFoundError:
            return []
        found = [(m.group(1), name) for name in names if (m := self._rotated.fullmatch(name))]
        return [self.path.with_name(name) for _, name in sorted(found)]

    def prune(self) -> list[Path]:
        """Delete rotated files older than ``retention_days``; returns them."""
        cutoff = self._clock() - self.retention_days * 86400
        gone: list[Path] = []
        for path in self.rotated():
            stamp = self._rotated.fullmatch(path.name)
            assert stamp is not None
            made = calendar.timegm(time.strptime(stamp.group(1), _STAMP))
            if made < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    gone.append(path)
        return gone
