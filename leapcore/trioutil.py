"""Small trio helpers shared by the drivers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["single_exception"]


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
