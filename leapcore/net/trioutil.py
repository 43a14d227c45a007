"""Small trio helpers shared by the drivers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import trio

__all__ = ["WriteLock", "single_exception"]


class WriteLock:
    """``async with lock:`` around a transport write. Unlike :class:`trio.Lock`, taking it
    when it is free does not go through the scheduler: the write it guards checkpoints
    anyway, and on a path taken per message an extra scheduler pass is a real cost."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()


@contextmanager
def single_exception() -> Iterator[None]:
    """Re-raise a nursery's one-exception group as that exception.

    Public leapcore APIs never let a trio ``ExceptionGroup`` escape when only one
    thing went wrong: callers catch ``LinkClosed``, not a group holding it. Groups
    with several exceptions are left as they are.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if exc is group:
            raise
        raise exc from exc.__cause__
