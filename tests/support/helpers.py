"""Assertions shared by the test modules (imported as ``from helpers import …``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from leapcore.errors import LeapcoreError


def expect(
    cls: type[LeapcoreError], pattern: str, fn: Callable[..., Any], *args: Any, **kw: Any
) -> LeapcoreError:
    """``fn(*args, **kw)`` raises exactly ``cls`` (not a subclass), with its stable code and a
    message matching ``pattern``; anything else (another exception, or none) fails."""
    with pytest.raises(LeapcoreError) as info:
        fn(*args, **kw)
    exc = info.value
    assert type(exc) is cls, f"{type(exc).__name__}: {exc}"
    assert exc.code == cls.code
    assert re.search(pattern, str(exc)), str(exc)
    return exc
