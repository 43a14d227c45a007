"""Safe writes into a directory tree, for file copies (the worker's ``files`` service and the
client's ``Channel.get``): blocking calls, run in a thread by their trio callers.

* :func:`open_under` walks a name's directories from an open root with
  ``O_DIRECTORY | O_NOFOLLOW`` at every step (``openat``), creating missing ones if asked:
  a symlink anywhere below the root fails with ``path_escapes`` instead of being followed,
  and no rename or symlink swapped in meanwhile can redirect the walk.
* :class:`TempWrite` writes a file as a temporary name in its directory (``O_CREAT |
  O_EXCL | O_NOFOLLOW``, mode 0600 while written) and :meth:`TempWrite.commit` fsyncs it,
  sets its mode and mtime and renames it over the target (which is replaced, never written
  through: a symlink there is replaced, not followed), then fsyncs the directory;
  :meth:`TempWrite.discard` deletes it. A target is never half-written.

Failures raise :class:`~leapcore.errors.FileTransferFailed` with a reason code from the
``errno`` (:func:`reason_for`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from typing import Final

from ..errors import FileTransferFailed
from ..proto.files_spec import Entry, FileType

__all__ = [
    "TEMP_SUFFIX",
    "TempWrite",
    "entry_of",
    "failure",
    "make_dirs",
    "open_dir",
    "open_under",
    "reason_for",
    "walk_tree",
]

#: The suffix of a file being written (``.NAME.<random>.leapcore-tmp``).
TEMP_SUFFIX: Final = ".leapcore-tmp"

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_REASONS: Final = {
    errno.ENOENT: "not_found",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
    errno.EISDIR: "is_a_directory",
    errno.ENOTDIR: "not_a_directory",
    errno.ELOOP: "path_escapes",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EFBIG: "no_space",
    errno.ENAMETOOLONG: "invalid_argument",
}


def reason_for(exc: OSError) -> str:
    """The ``files`` reason code of an operating-system error."""
    return _REASONS.get(exc.errno or 0, "io_error")


def failure(exc: OSError, what: str) -> FileTransferFailed:
    """``exc`` as :class:`FileTransferFailed` naming ``what``."""
    return FileTransferFailed(reason_for(exc), f"{what}: {exc.strerror or exc}")


def open_dir(path: str) -> int:
    """A descriptor of the directory ``path`` (symlinks in it followed: the caller named it)."""
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise failure(exc, path) from None


def _step(fd: int, name: str, shown: str, create: int | None) -> int:
    """Open directory ``name`` in ``fd`` without following a symlink (create it first with
    mode ``create`` if it is missing and ``create`` is given)."""
    for _ in range(2):
        try:
            return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            if create is None:
                raise FileTransferFailed("not_found", f"{shown}: no such directory") from None
            try:
                os.mkdir(name, create, dir_fd=fd)
            except FileExistsError:
                pass  # made meanwhile: open it
            except OSError as exc:
                raise failure(exc, shown) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                with contextlib.suppress(OSError):
                    if stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                        raise FileTransferFailed(
                            "path_escapes", f"{shown} is a symlink; not followed"
                        ) from None
            raise failure(exc, shown) from None
    raise FileTransferFailed("io_error", f"{shown}: cannot open the directory")


def open_under(root_fd: int, parts: Sequence[str], *, create: int | None = None) -> int:
    """A new descriptor of the directory ``parts`` names under ``root_fd`` (``parts`` may be
    empty: the root itself), walked without following symlinks; missing directories are
    made with mode ``create`` when it is given."""
    fd = os.dup(root_fd)
    try:
        for index, name in enumerate(parts):
            shown = "/".join(parts[: index + 1])
            next_fd = _step(fd, name, shown, create)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(root_fd: int, parts: Sequence[str], mode: int | None) -> None:
    """``mkdir -p`` of ``parts`` under ``root_fd`` without following symlinks; the last
    directory gets ``mode`` (also when it existed), missing parents 0700 and up."""
    fd = open_under(root_fd, parts, create=0o700 if mode is None else (mode | 0o700))
    try:
        if mode is not None:
            os.fchmod(fd, mode & 0o7777)
    except OSError as exc:
        raise failure(exc, "/".join(parts) or ".") from None
    finally:
        os.close(fd)


class TempWrite:
    """A file written as a temporary name in the directory ``dir_fd`` and renamed to
    ``name`` by :meth:`commit` (see the module docstring). Takes ownership of ``dir_fd``."""

    def __init__(self, dir_fd: int, name: str, shown: str) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.shown = shown
        self.temp = f".{name[:200]}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        self.fd: int | None = None
        self.done = False
        try:
            self._check_target()
            self.fd = os.open(
                self.temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except BaseException:
            os.close(dir_fd)
            raise

    def _check_target(self) -> None:
        try:
            st = os.lstat(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise failure(exc, self.shown) from None
        if stat.S_ISDIR(st.st_mode):
            raise FileTransferFailed("is_a_directory", f"{self.shown} is a directory")

    @classmethod
    def create(cls, dir_fd: int, name: str, shown: str) -> TempWrite:
        """:class:`TempWrite` with failures as :class:`FileTransferFailed`."""
        try:
            return cls(dir_fd, name, shown)
        except OSError as exc:
            raise failure(exc, shown) from None

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise failure(exc, self.shown) from None

    def commit(self, mode: int | None, mtime: float | None) -> None:
        """Make the file the target: fsync, mode, mtime, rename, fsync of the directory."""
        assert self.fd is not None
        try:
            os.fsync(self.fd)
            if mode is not None:
                os.fchmod(self.fd, mode & 0o7777)
            if mtime is not None:
                os.utime(self.fd, (mtime, mtime))
            os.rename(self.temp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            self.done = True
            os.fsync(self.dir_fd)
        except OSError as exc:
            raise failure(exc, self.shown) from None
        finally:
            if self.done:
                self.close()

    def discard(self) -> None:
        """Delete the temporary file (unless committed) and close; harmless twice."""
        if not self.done:
            self.done = True
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self.dir_fd)
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if self.dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.dir_fd)
            self.dir_fd = -1


def entry_of(st: os.stat_result, path: str = "") -> Entry:
    """The wire entry of a ``stat`` result."""
    mode = st.st_mode
    kind: FileType = "other"
    if stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISLNK(mode):
        kind = "symlink"
    size = st.st_size if kind == "file" else 0
    return Entry(kind, size, stat.S_IMODE(mode), st.st_mtime, path)


def walk_tree(top: str) -> Iterator[Entry]:
    """Every entry below the directory ``top``, parents before their contents, symlinks
    listed and never followed (blocking: run it in a thread)."""
    stack = [""]
    while stack:
        prefix = stack.pop()
        where = os.path.join(top, prefix) if prefix else top
        try:
            with os.scandir(where) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise failure(exc, prefix or top) from None
        subdirs = []
        for item in items:
            name = f"{prefix}/{item.name}" if prefix else item.name
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            entry = entry_of(st, name)
            yield entry
            if entry.type == "dir":
                subdirs.append(name)
        stack.extend(reversed(subdirs))
