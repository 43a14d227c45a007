"""The person's terminal, for the interactive verbs (``remote shell``, ``session attach``,
``exec -t``): raw mode, its size, the ``~.`` escape, and :func:`bridge`, which joins it to
a remote terminal until that ends or the person types the escape."""

from __future__ import annotations

import contextlib
import os
import signal
import termios
import tty
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import trio

from leapcore.errors import LeapcoreError
from leapcore.proto.exec_spec import check_size

__all__ = ["EscapeFilter", "KeySink", "bridge", "local_size", "raw_terminal", "write_all"]


class KeySink(Protocol):
    """Where keys go: a terminal session's attached stream, a process's stdin."""

    async def send_all(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...


class EscapeFilter:
    """The keys typed locally, less the escapes: ``~.`` at the start of a line (after
    Enter, or first) detaches; ``~~`` there types one ``~``; any other ``~`` is typed."""

    def __init__(self) -> None:
        self.at_line_start = True
        self.pending = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """``(keys to send, detach?)`` for ``data`` (what follows a detach is dropped)."""
        out = bytearray()
        for byte in data:
            char = bytes([byte])
            if self.pending:
                self.pending = False
                if char == b".":
                    return bytes(out), True
                out += b"~"
                if char == b"~":
                    self.at_line_start = False
                    continue
            elif self.at_line_start and char == b"~":
                self.pending = True
                continue
            out += char
            self.at_line_start = char in (b"\r", b"\n")
        return bytes(out), False


def local_size(fd: int = 0) -> tuple[int, int] | None:
    """The local terminal's (cols, rows), if ``fd`` is a terminal of an acceptable size."""
    try:
        size = os.get_terminal_size(fd)
        return check_size(size.columns, size.lines)
    except (OSError, LeapcoreError):
        return None


@contextlib.contextmanager
def raw_terminal(fd: int = 0) -> Iterator[None]:
    """``fd`` in raw mode (keys as typed, no local echo) for the block, if a terminal."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSADRAIN)  # keys typed ahead are kept (TCSAFLUSH would drop them)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def bridge(
    output: trio.abc.ReceiveStream,
    keys: KeySink,
    resize: Callable[[int, int], Awaitable[object]],
    fd_in: int = 0,
    fd_out: int = 1,
) -> bool:
    """Join the local terminal (``fd_in``, ``fd_out``) to a remote one until its
    ``output`` ends (False) or the person types ``~.`` (True): keys read from ``fd_in``
    are sent on ``keys`` (its ``send_eof`` at local EOF), the output written to
    ``fd_out``, and each window-size change (SIGWINCH) passed to ``resize``."""
    detached = False
    async with trio.open_nursery() as nursery:

        async def copy_output() -> None:
            while data := await output.receive_some():
                write_all(fd_out, data)
            nursery.cancel_scope.cancel()

        async def copy_keys() -> None:
            nonlocal detached
            escapes = EscapeFilter()
            while True:
                await trio.lowlevel.wait_readable(fd_in)
                data = os.read(fd_in, 4096)
                if not data:  # local EOF: no more keys; the output goes on
                    await keys.send_eof()
                    return
                send, stop = escapes.feed(data)
                if send:
                    await keys.send_all(send)
                if stop:
                    detached = True
                    nursery.cancel_scope.cancel()
                    return

        async def follow_window() -> None:
            with trio.open_signal_receiver(signal.SIGWINCH) as signals:
                async for _ in signals:
                    size = local_size(fd_in)
                    if size is not None:
                        await resize(*size)

        nursery.start_soon(copy_output)
        nursery.start_soon(copy_keys)
        nursery.start_soon(follow_window)
    return detached
