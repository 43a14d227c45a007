"""A sans-IO rate limiter for log lines: a flood of one kind of event logs a few lines and a count.

:class:`LogRateLimiter` lets at most ``limit`` lines of one *kind* (e.g. failed sign-ins
with a bad API token) through per ``window`` seconds (defaults :data:`LOG_LIMIT` lines per
:data:`LOG_WINDOW` s). Every further event in that window is only counted; once the
window is over the count is handed back, so the caller logs one summary line ("N more …
suppressed"): either by :meth:`LogRateLimiter.allow` for the next event of that kind, or
by :meth:`LogRateLimiter.expired`, which a periodic task calls so that the summary of a
flood that stopped is not held back for ever. Nothing is lost and nothing is counted twice.

Sans-IO: time is the ``now`` argument (seconds, any monotonic origin).
"""

from __future__ import annotations

from typing import Final

__all__ = ["LOG_LIMIT", "LOG_WINDOW", "LogRateLimiter"]

#: Lines of one kind let through per window.
LOG_LIMIT: Final = 10
#: The window, in seconds.
LOG_WINDOW: Final = 10.0


class _Window:
    __slots__ = ("count", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.suppressed = 0


class LogRateLimiter:
    """At most ``limit`` lines per ``window`` seconds for each kind, then a count."""

    def __init__(self, limit: int = LOG_LIMIT, window: float = LOG_WINDOW) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._windows: dict[str, _Window] = {}

    def allow(self, kind: str, now: float) -> tuple[bool, int]:
        """An event of ``kind`` at ``now``: (log its line?, lines suppressed in the window
        of this kind that ended before ``now``, to report first; 0 when none)."""
        window = self._windows.get(kind)
        ended = 0
        if window is None or now >= window.start + self.window:
            if window is not None:
                ended = window.suppressed
            window = self._windows[kind] = _Window(now)
        if window.count < self.limit:
            window.count += 1
            return True, ended
        window.suppressed += 1
        return False, ended

    def expired(self, now: float) -> list[tuple[str, int]]:
        """The kinds whose window ended by ``now`` with lines suppressed, and how many;
        each window that ended is forgotten (its next event starts a new one)."""
        out = []
        for kind, window in list(self._windows.items()):
            if now >= window.start + self.window:
                del self._windows[kind]
                if window.suppressed:
                    out.append((kind, window.suppressed))
        return out
