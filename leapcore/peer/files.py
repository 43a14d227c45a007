"""Copy files between this machine and a worker, end-to-end encrypted inside a channel, like
``scp`` (``leapcore remote cp``)::

    async with hub.open_channel(worker_id) as ch:
        result = await ch.put("build/app.tar", "/srv/app.tar")
        await ch.get("/var/log/app", "logs", recursive=True)
        print(result.files, result.bytes, result.seconds)

The target is chosen as ``cp`` does: an existing directory receives the source under its own
name; anything else is the target itself. ``recursive=True`` copies a directory tree:
directories and regular files, with their permission bits (``preserve_mode``) and files'
mtimes; symlinks and special files are skipped (counted in ``skipped``). A file is
written as a temporary name in its directory and renamed over the target once complete
(on both sides), so an interrupted copy never leaves a half-written target. A remote path
is absolute or relative to the worker's home directory.

Names a worker lists are checked before anything is written here (no ``..``, absolute or
NUL name; no symlink on the way: every directory is opened with ``O_NOFOLLOW``), so a
hostile worker cannot write outside the local target (:class:`FileTransferFailed`
``path_escapes``). The worker applies the same rules to the names sent to it. Refusals are
:class:`~leapcore.errors.FileTransferFailed` (``reason``: ``not_found``,
``permission_denied``, ``is_a_directory``, ...); local I/O failures are
:class:`~leapcore.errors.StorageError` unless they are reasons of their own (a missing
local source is ``not_found``). The wire is in docs/protocol.md (4.14) and
:mod:`leapcore.worker.files`.
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from collections.abc import Callable
from typing import Final

import attrs
import trio

from ..errors import FileTransferFailed, LeapcoreError, RemoteCallError
from ..proto.files_spec import (
    FILE_REASONS,
    LIST_METHOD,
    MKDIR_METHOD,
    READ_METHOD,
    STAT_METHOD,
    WRITE_METHOD,
    Entry,
    PathRequest,
    decode_entries,
    decode_stat,
    encode_mkdir,
    encode_path,
    encode_write,
    split_relative,
)
from ..proto.limits import FILES_MAX_ENTRIES, FILES_PARALLEL, FILES_READ_SIZE
from ..store.safetree import TempWrite, failure, make_dirs, open_dir, open_under, walk_tree
from .channel import CALL_TIMEOUT, ByteStream, Channel

__all__ = ["CopyResult", "Progress", "get", "put", "stat_remote"]

#: ``progress(done, total)``: bytes copied so far, of ``total``.
Progress = Callable[[int, int], None]

_UP: Final = "put"
_DOWN: Final = "get"


@attrs.frozen
class CopyResult:
    """What a copy did: regular ``files`` copied, their ``bytes``, the wall-clock
    ``seconds``, entries ``skipped`` (symlinks and special files of a tree) and the
    ``direction`` (``"put"``: to the worker, ``"get"``: from it)."""

    files: int
    bytes: int
    seconds: float
    skipped: int = 0
    direction: str = _UP


class _Tally:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.files = 0
        self.progress = progress

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def _mapped(exc: LeapcoreError) -> LeapcoreError:
    """A worker's refusal as :class:`FileTransferFailed` (other errors unchanged)."""
    if isinstance(exc, RemoteCallError) and exc.remote_code in FILE_REASONS:
        return FileTransferFailed(exc.remote_code, exc.remote_message)
    return exc


def _broken(exc: trio.BrokenResourceError) -> LeapcoreError:
    cause = exc.__cause__
    if isinstance(cause, LeapcoreError):
        return _mapped(cause)
    return FileTransferFailed("io_error", str(exc))


async def stat_remote(
    channel: Channel, path: str, *, timeout: float | None = CALL_TIMEOUT
) -> Entry | None:
    """The worker's ``stat`` of ``path`` (symlinks followed); None if it does not exist."""
    try:
        return decode_stat(await channel.call(STAT_METHOD, encode_path(path), timeout=timeout))
    except RemoteCallError as exc:
        if exc.remote_code == "not_found":
            return None
        raise _mapped(exc) from None


def _local_stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise failure(exc, path) from None


def _local_tree(top: str) -> list[Entry]:
    entries = []
    for entry in walk_tree(top):
        entries.append(entry)
        if len(entries) > FILES_MAX_ENTRIES:
            raise FileTransferFailed(
                "invalid_argument", f"{top} holds more than {FILES_MAX_ENTRIES} entries"
            )
    return entries


# -- put ---------------------------------------------------------------------------------------


async def put(
    channel: Channel,
    local_path: str | os.PathLike[str],
    remote_path: str,
    *,
    recursive: bool = False,
    preserve_mode: bool = True,
    progress: Progress | None = None,
    timeout: float | None = CALL_TIMEOUT,
) -> CopyResult:
    """Copy ``local_path`` (a file, or with ``recursive`` a directory tree) to
    ``remote_path`` on the worker (see the module docstring)."""
    started = time.monotonic()
    source = os.fspath(local_path)
    st = await trio.to_thread.run_sync(_local_stat, source)
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_dir and not recursive:
        raise FileTransferFailed("is_a_directory", f"{source} is a directory (use recursive)")
    if not is_dir and not stat.S_ISREG(st.st_mode):
        raise FileTransferFailed("invalid_argument", f"{source} is not a regular file")
    target = remote_path
    existing = await stat_remote(channel, remote_path, timeout=timeout)
    if existing is not None and existing.type == "dir":
        name = os.path.basename(os.path.normpath(source))
        target = posixpath.join(remote_path, name) if name not in ("", ".", "..") else remote_path
    mode = stat.S_IMODE(st.st_mode) if preserve_mode else None
    if not is_dir:
        tally = _Tally(st.st_size, progress)
        request = PathRequest(target, None, mode, st.st_size, st.st_mtime)
        await _send_file(channel, source, request, tally, timeout)
        return CopyResult(1, tally.done, time.monotonic() - started, 0, _UP)
    entries = await trio.to_thread.run_sync(_local_tree, source)
    files = [e for e in entries if e.type == "file"]
    dirs = [e for e in entries if e.type == "dir"]
    skipped = len(entries) - len(files) - len(dirs)
    tally = _Tally(sum(e.size for e in files), progress)
    await _mkdir(channel, PathRequest(target, None, (mode or 0) | 0o700), timeout)
    for entry in dirs:
        dir_mode = (entry.mode if preserve_mode else 0o755) | 0o700
        await _mkdir(channel, PathRequest(entry.path, target, dir_mode), timeout)

    async def one(entry: Entry) -> None:
        request = PathRequest(
            entry.path, target, entry.mode if preserve_mode else None, entry.size, entry.mtime
        )
        await _send_file(channel, os.path.join(source, entry.path), request, tally, timeout)
        tally.files += 1

    await _each(files, one)
    if preserve_mode:  # modes without the owner's rwx, once the files are in
        for entry in reversed(dirs):
            if entry.mode & 0o700 != 0o700:
                await _mkdir(channel, PathRequest(entry.path, target, entry.mode), timeout)
        if mode is not None and mode & 0o700 != 0o700:
            await _mkdir(channel, PathRequest(target, None, mode), timeout)
    return CopyResult(tally.files, tally.done, time.monotonic() - started, skipped, _UP)


async def _each(items: list[Entry], job: Callable[[Entry], object]) -> None:
    """Run ``job`` for every item, :data:`FILES_PARALLEL` at once; the first failure
    cancels the others and is raised."""
    pending = iter(items)

    async def runner() -> None:
        for item in pending:
            await job(item)  # type: ignore[misc]

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(min(FILES_PARALLEL, len(items))):
                nursery.start_soon(runner)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        errors = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        raise (errors or leaves)[0] from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _mkdir(channel: Channel, request: PathRequest, timeout: float | None) -> None:
    try:
        await channel.call(MKDIR_METHOD, encode_mkdir(request), timeout=timeout)
    except RemoteCallError as exc:
        raise _mapped(exc) from None


async def _send_file(
    channel: Channel, source: str, request: PathRequest, tally: _Tally, timeout: float | None
) -> None:
    def open_file() -> int:
        try:
            return os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise failure(exc, source) from None

    fd = await trio.to_thread.run_sync(open_file)
    try:
        try:
            stream = await channel.open_byte_stream(
                WRITE_METHOD, encode_write(request), timeout=timeout
            )
        except RemoteCallError as exc:
            raise _mapped(exc) from None
        try:
            while data := await trio.to_thread.run_sync(os.read, fd, FILES_READ_SIZE):
                await stream.send_all(data)
                tally.add(len(data))
            await stream.send_eof()
            while await stream.receive_some():  # the worker's EOF: the file is in place
                pass
        except trio.BrokenResourceError as exc:
            raise _broken(exc) from None
        except OSError as exc:
            await stream.aclose()
            raise failure(exc, source) from None
        finally:
            await stream.aclose()
    finally:
        os.close(fd)


# -- get ---------------------------------------------------------------------------------------


async def get(
    channel: Channel,
    remote_path: str,
    local_path: str | os.PathLike[str],
    *,
    recursive: bool = False,
    preserve_mode: bool = True,
    progress: Progress | None = None,
    timeout: float | None = CALL_TIMEOUT,
) -> CopyResult:
    """Copy ``remote_path`` (a file, or with ``recursive`` a directory tree) from the worker
    to ``local_path`` (see the module docstring)."""
    started = time.monotonic()
    source = await stat_remote(channel, remote_path, timeout=timeout)
    if source is None:
        raise FileTransferFailed("not_found", f"{remote_path}: no such file or directory")
    if source.type == "dir" and not recursive:
        raise FileTransferFailed("is_a_directory", f"{remote_path} is a directory (use recursive)")
    if source.type not in ("dir", "file"):
        raise FileTransferFailed("invalid_argument", f"{remote_path} is not a regular file")
    target = os.fspath(local_path)
    if os.path.isdir(target):
        name = posixpath.basename(posixpath.normpath(remote_path))
        if name not in ("", ".", "..", "/"):
            split_relative(name)
            target = os.path.join(target, name)
    parent, leaf = os.path.split(os.path.abspath(target))
    mode = source.mode if preserve_mode else None
    if source.type == "file":
        tally = _Tally(source.size, progress)
        root_fd = await trio.to_thread.run_sync(open_dir, parent)
        await _receive_file(channel, remote_path, root_fd, (leaf,), target, source, mode, tally)
        return CopyResult(1, tally.done, time.monotonic() - started, 0, _DOWN)
    entries = await _list(channel, remote_path, timeout)
    files = [e for e in entries if e.type == "file"]
    dirs = [e for e in entries if e.type == "dir"]
    skipped = len(entries) - len(files) - len(dirs)
    tally = _Tally(sum(e.size for e in files), progress)

    def make_root() -> int:
        fd = open_dir(parent)
        try:
            make_dirs(fd, (leaf,), (mode or 0o755) | 0o700)
            return open_under(fd, (leaf,))
        finally:
            os.close(fd)

    root_fd = await trio.to_thread.run_sync(make_root)
    try:
        for entry in dirs:
            dir_mode = (entry.mode if preserve_mode else 0o755) | 0o700
            await trio.to_thread.run_sync(make_dirs, root_fd, split_relative(entry.path), dir_mode)

        async def one(entry: Entry) -> None:
            parts = split_relative(entry.path)
            dir_fd = await trio.to_thread.run_sync(open_under, root_fd, parts[:-1])
            await _receive_file(
                channel,
                posixpath.join(remote_path, entry.path),
                dir_fd,
                parts[-1:],
                os.path.join(target, *parts),
                entry,
                entry.mode if preserve_mode else None,
                tally,
            )
            tally.files += 1

        await _each(files, one)
        if preserve_mode:
            for entry in reversed(dirs):
                if entry.mode & 0o700 != 0o700:
                    parts = split_relative(entry.path)
                    await trio.to_thread.run_sync(make_dirs, root_fd, parts, entry.mode)
            if mode is not None and mode & 0o700 != 0o700:
                await trio.to_thread.run_sync(make_dirs, root_fd, (), mode)
    finally:
        os.close(root_fd)
    return CopyResult(tally.files, tally.done, time.monotonic() - started, skipped, _DOWN)


async def _list(channel: Channel, path: str, timeout: float | None) -> list[Entry]:
    entries: list[Entry] = []
    try:
        async with channel.stream(LIST_METHOD, encode_path(path), timeout=timeout) as items:
            async for item in items:
                for entry in decode_entries(item):
                    split_relative(entry.path)  # a hostile name fails the copy here
                    entries.append(entry)
                if len(entries) > FILES_MAX_ENTRIES:
                    raise FileTransferFailed(
                        "invalid_argument", f"{path} holds more than {FILES_MAX_ENTRIES} entries"
                    )
    except RemoteCallError as exc:
        raise _mapped(exc) from None
    return entries


async def _receive_file(
    channel: Channel,
    remote: str,
    dir_fd: int,
    parts: tuple[str, ...],
    shown: str,
    entry: Entry,
    mode: int | None,
    tally: _Tally,
) -> None:
    """Read ``remote`` into ``parts[-1]`` of the directory ``dir_fd`` (owned: closed here)."""
    temp = await trio.to_thread.run_sync(TempWrite.create, dir_fd, parts[-1], shown)
    try:
        try:
            stream: ByteStream = await channel.open_byte_stream(READ_METHOD, encode_path(remote))
        except RemoteCallError as exc:
            raise _mapped(exc) from None
        try:
            await stream.send_eof()
            while data := await stream.receive_some(FILES_READ_SIZE):
                await trio.to_thread.run_sync(temp.write, data)
                tally.add(len(data))
        except trio.BrokenResourceError as exc:
            raise _broken(exc) from None
        finally:
            await stream.aclose()
        await trio.to_thread.run_sync(temp.commit, mode, entry.mtime)
    finally:
        temp.discard()
