"""Crash-safe writes of secret files: the one place leapcore writes state to disk.

:func:`write_atomic` writes a temporary file in the destination directory,
fsyncs it, renames it over the destination and fsyncs the directory. A crash
at any moment leaves either the old complete file or the new complete file,
never a mixture; on any error the temporary file is removed. Files are mode
0600; directories leapcore creates are mode 0700.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ..errors import StorageError

__all__ = ["ensure_private_dir", "write_atomic"]

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; existing directories are kept."""
    if path.is_dir():
        return
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(parent))
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    # mkdir honours the umask; make the leaf exactly 0700.
    os.chmod(path, DIR_MODE)


def write_atomic(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Any operating-system failure raises :class:`~leapcore.errors.StorageError` naming the
    path; the previous content of ``path``, if any, is then untouched.
    """
    path = Path(path)
    try:
        _write_atomic(path, data, mode)
    except OSError as exc:
        raise StorageError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    ensure_private_dir(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
