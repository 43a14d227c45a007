"""The worker's ``files`` service: copy files to and from the worker for its owner
(``leapcore remote cp``, :meth:`~leapcore.peer.channel.Channel.put`,
:meth:`~leapcore.peer.channel.Channel.get`), end-to-end encrypted inside the channel.

The wire (the payloads: :mod:`leapcore.proto.files_spec`; docs/protocol.md, 4.14):
``files.stat`` and ``files.mkdir`` (RPCs), ``files.list`` (a server stream of entry
batches), ``files.read`` and ``files.write`` (byte streams, accepted by hand: a path that
cannot be read or written is refused before any data flows). All owner-only.

A relative path is taken from the worker's home directory (``home``, by default
``Path.home()``). Writes go to a temporary name in the target's directory (``O_EXCL``,
0600) and are renamed over the target only after the opener's EOF and an fsync; a reset,
a size that does not match, or the channel ending deletes the temporary file instead
(:class:`~leapcore.store.safetree.TempWrite`). Under a ``root`` (a tree copy) every
directory is walked with ``O_NOFOLLOW``: a symlink on the way is ``path_escapes``.

File I/O runs in trio's worker threads, :data:`~leapcore.proto.limits.FILES_READ_SIZE`
bytes at a time, and a read waits for the byte stream's window: nothing grows here.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import trio

from ..errors import FileTransferFailed, InvalidMessage, ServiceError
from ..peer.channel import ByteStream, ByteStreamOpening, CallContext, Services, reset_byte_stream
from ..proto.files_spec import (
    LIST_METHOD,
    MKDIR_METHOD,
    READ_METHOD,
    STAT_METHOD,
    WRITE_METHOD,
    Entry,
    PathRequest,
    decode_mkdir,
    decode_path,
    decode_write,
    encode_entries,
    encode_stat,
)
from ..proto.limits import FILES_LIST_BATCH, FILES_READ_SIZE
from ..proto.worker_policy import DENIED_BY_POLICY, FilesRules
from ..store.safetree import (
    TempWrite,
    entry_of,
    failure,
    make_dirs,
    open_dir,
    open_under,
    walk_tree,
)

__all__ = ["FilesService", "add_files_service"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class FilesService:
    """The ``files`` methods (see the module docstring)."""

    def __init__(
        self,
        *,
        home: Callable[[], Path] = Path.home,
        policy: Callable[[], FilesRules] = FilesRules,
    ) -> None:
        self.home = home
        #: The worker's ``[files]`` rules, read at each call.
        self.policy = policy

    def install(self, services: Services) -> None:
        services.add_rpc(STAT_METHOD, self._stat)
        services.add_stream(LIST_METHOD, self._list)
        services.add_byte_stream(READ_METHOD, self._read, accept="manual")
        services.add_byte_stream(WRITE_METHOD, self._write, accept="manual")
        services.add_rpc(MKDIR_METHOD, self._mkdir)
        # The files limit counts transfers (reads and writes), not lookups.
        services.uncounted.update({STAT_METHOD, LIST_METHOD, MKDIR_METHOD})

    def resolve(self, path: str) -> str:
        """``path`` made absolute: relative ones are taken from the home directory."""
        return path if os.path.isabs(path) else os.path.join(self.home(), path)

    def allowed(self, path: str) -> str:
        """``path`` (absolute), once the policy's ``files.roots`` allow it, symlinks
        resolved (blocking); :class:`~leapcore.errors.FileTransferFailed`
        ``denied_by_policy`` otherwise."""
        rules = self.policy()
        if rules.roots is not None:
            refusal = rules.check(os.path.realpath(path))
            if refusal is not None:
                raise FileTransferFailed(DENIED_BY_POLICY, refusal.message)
        return path

    # -- RPCs and the listing ------------------------------------------------------------

    async def _stat(self, ctx: CallContext, payload: bytes) -> bytes:
        path = self.resolve(_decoded(decode_path, payload))

        def look() -> Entry:
            self.allowed(path)
            try:
                return entry_of(os.stat(path))
            except OSError as exc:
                raise failure(exc, path) from None

        return encode_stat(await _in_thread(look))

    async def _mkdir(self, ctx: CallContext, payload: bytes) -> bytes:
        request = _decoded(decode_mkdir, payload)

        def make() -> None:
            if request.root is None:
                path = self.allowed(self.resolve(request.path))
                parent, name = os.path.split(os.path.normpath(path))
                os.makedirs(parent, exist_ok=True)
                root_fd, parts = open_dir(parent), tuple[str, ...]((name,))
            else:
                root_fd = open_dir(self.allowed(self.resolve(request.root)))
                parts = request.parts
            try:
                make_dirs(root_fd, parts, request.mode)
            finally:
                os.close(root_fd)

        await _in_thread(make)
        return b"{}"

    async def _list(self, ctx: CallContext, payload: bytes) -> AsyncIterator[bytes]:
        top = self.resolve(_decoded(decode_path, payload))

        def check() -> None:
            self.allowed(top)
            try:
                st = os.stat(top)
            except OSError as exc:
                raise failure(exc, top) from None
            if not stat.S_ISDIR(st.st_mode):
                raise FileTransferFailed("not_a_directory", f"{top} is not a directory")

        await _in_thread(check)
        walker = walk_tree(top)

        def batch() -> list[Entry]:
            out: list[Entry] = []
            for entry in walker:
                out.append(entry)
                if len(out) == FILES_LIST_BATCH:
                    break
            return out

        while entries := await _in_thread(batch):
            yield encode_entries(entries)

    # -- byte streams ----------------------------------------------------------------------

    async def _read(self, ctx: CallContext, payload: bytes, opening: ByteStreamOpening) -> None:
        try:
            path = self.resolve(decode_path(payload))

            def open_file() -> int:
                self.allowed(path)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise failure(exc, path) from None
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    if os.path.isdir(path):
                        raise FileTransferFailed("is_a_directory", f"{path} is a directory")
                    raise FileTransferFailed("invalid_argument", f"{path} is not a regular file")
                return fd

            fd = await trio.to_thread.run_sync(open_file)
        except InvalidMessage as exc:
            await opening.refuse("invalid_argument", str(exc))
            return
        except FileTransferFailed as exc:
            await opening.refuse(exc.reason, exc.detail)
            return
        try:
            stream = await opening.accept()
            try:
                while data := await trio.to_thread.run_sync(os.read, fd, FILES_READ_SIZE):
                    await stream.send_all(data)
                await stream.send_eof()
            except OSError as exc:
                error = failure(exc, path)
                await reset_byte_stream(stream, error.reason, error.detail)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("channel %d: files.read: the reader went away", ctx.channel_id)
        finally:
            os.close(fd)

    async def _write(self, ctx: CallContext, payload: bytes, opening: ByteStreamOpening) -> None:
        try:
            request = decode_write(payload)
            temp = await trio.to_thread.run_sync(self._prepare, request)
        except InvalidMessage as exc:
            await opening.refuse("invalid_argument", str(exc))
            return
        except FileTransferFailed as exc:
            await opening.refuse(exc.reason, exc.detail)
            return
        try:
            stream = await opening.accept()
            await self._receive(ctx, request, temp, stream)
        finally:
            temp.discard()  # no-op once committed; never a thread: runs when cancelled too

    async def _receive(
        self, ctx: CallContext, request: PathRequest, temp: TempWrite, stream: ByteStream
    ) -> None:
        total = 0
        try:
            while data := await stream.receive_some(FILES_READ_SIZE):
                total += len(data)
                if request.size is not None and total > request.size:
                    break
                await trio.to_thread.run_sync(temp.write, data)
            if request.size is not None and total != request.size:
                temp.discard()
                await reset_byte_stream(
                    stream,
                    "invalid_argument",
                    f"{temp.shown}: {total}{'+' if total > request.size else ''} bytes "
                    f"sent, {request.size} promised; nothing written",
                )
                return
            await trio.to_thread.run_sync(temp.commit, request.mode, request.mtime)
            await stream.send_eof()
        except FileTransferFailed as exc:
            temp.discard()
            await reset_byte_stream(stream, exc.reason, exc.detail)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info(
                "channel %d: files.write %s: the writer went away; nothing written",
                ctx.channel_id,
                temp.shown,
            )

    def _prepare(self, request: PathRequest) -> TempWrite:
        """Open the target's directory and create the temporary file (blocking)."""
        if request.root is None:
            path = self.allowed(self.resolve(request.path))
            parent, name = os.path.split(os.path.normpath(path))
            if not name or name in (".", ".."):
                raise FileTransferFailed("is_a_directory", f"{path} is a directory")
            return TempWrite.create(open_dir(parent or "/"), name, path)
        parts = request.parts
        root_fd = open_dir(self.allowed(self.resolve(request.root)))
        try:
            dir_fd = open_under(root_fd, parts[:-1])
        finally:
            os.close(root_fd)
        return TempWrite.create(dir_fd, parts[-1], request.path)


def _decoded(decode: Callable[[bytes], T], payload: bytes) -> T:
    try:
        return decode(payload)
    except InvalidMessage as exc:
        raise ServiceError("invalid_argument", str(exc)) from None
    except FileTransferFailed as exc:
        raise ServiceError(exc.reason, exc.detail) from None


async def _in_thread(function: Callable[[], T]) -> T:
    """Run ``function`` in a thread; its :class:`FileTransferFailed` becomes the answer."""
    try:
        return await trio.to_thread.run_sync(function)
    except FileTransferFailed as exc:
        raise ServiceError(exc.reason, exc.detail) from None


def add_files_service(
    services: Services,
    *,
    home: Callable[[], Path] = Path.home,
    policy: Callable[[], FilesRules] = FilesRules,
) -> FilesService:
    """Register ``files.stat``, ``files.list``, ``files.read``, ``files.write`` and
    ``files.mkdir`` (owner-only) on ``services``; ``policy`` gives the ``[files]`` rules
    every call is checked against before it touches anything (default: none)."""
    service = FilesService(home=home, policy=policy)
    service.install(services)
    return service
