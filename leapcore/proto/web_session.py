"""The web page's sessions and its cross-site request rules, sans-IO.

A :class:`SessionTable` holds the signed-in browsers of :mod:`leapcore.hub.web`: one
:class:`Session` per successful sign-in with an API token, named by a random id (the
``leapcore_session`` cookie) and carrying a second random value, its CSRF token, that the
page sends back in the ``X-Leapcore-CSRF`` header of every state-changing request. The
randomness and the time are the caller's (``new_id`` and ``now`` arguments).

Rules:

* a session unused for ``idle`` seconds (:data:`~leapcore.proto.limits.WEB_SESSION_IDLE`)
  is gone; every request with it (and an open event stream's keep-alive) renews it;
* at most ``max_per_user`` (:data:`~leapcore.proto.limits.WEB_MAX_SESSIONS_PER_USER`) per
  user and ``max_sessions`` (:data:`~leapcore.proto.limits.WEB_MAX_SESSIONS`) in all are
  held: one more evicts the user's own least recently used session, or else the least
  recently used of all (a browser that signs in again and again cannot grow the table, and
  one user cannot push out the others' sessions);
* the session remembers its API token's id: the driver ends it when the token is revoked;
* :func:`cross_site` refuses a state-changing request that a browser says comes from another
  site (``Sec-Fetch-Site`` other than ``same-origin`` or ``none``) or whose ``Origin`` is not
  the page's own; :func:`csrf_ok` compares the header with the session's token in constant
  time. The cookie is ``HttpOnly; SameSite=Strict`` (:func:`session_cookie`), so a
  cross-site request carries no session at all; these checks are the second and third lock.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final

import attrs

from .limits import WEB_MAX_SESSIONS, WEB_MAX_SESSIONS_PER_USER, WEB_SESSION_IDLE

__all__ = [
    "COOKIE_NAME",
    "CSRF_HEADER",
    "Session",
    "SessionTable",
    "clear_cookie",
    "cross_site",
    "csrf_ok",
    "session_cookie",
]

#: The session cookie's name and the header that carries the CSRF token.
COOKIE_NAME: Final = "leapcore_session"
CSRF_HEADER: Final = "x-leapcore-csrf"


@attrs.define
class Session:
    id: str
    csrf: str
    user_id: str
    user_name: str
    is_admin: bool
    #: The API token it was signed in with (revoking the token ends the session).
    token_id: str
    last_used: float
    #: Event streams open with this session now.
    streams: int = 0


class SessionTable:
    """The live sessions, least recently used first."""

    def __init__(
        self,
        *,
        max_sessions: int = WEB_MAX_SESSIONS,
        max_per_user: int = WEB_MAX_SESSIONS_PER_USER,
        idle: float = WEB_SESSION_IDLE,
    ) -> None:
        if max_sessions < 1 or max_per_user < 1 or idle <= 0:
            raise ValueError("max_sessions and max_per_user must be >= 1 and idle > 0")
        self.max_sessions = max_sessions
        self.max_per_user = max_per_user
        self.idle = idle
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(
        self,
        new_id: Callable[[], str],
        now: float,
        *,
        user_id: str,
        user_name: str,
        is_admin: bool,
        token_id: str,
    ) -> Session:
        """A new session (the user's, or else anyone's, least recently used one is evicted
        when the user has ``max_per_user`` or the table is full)."""
        self.expire(now)
        mine = [s.id for s in self._sessions.values() if s.user_id == user_id]
        for session_id in mine[: max(0, len(mine) - self.max_per_user + 1)]:
            del self._sessions[session_id]
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session = Session(new_id(), new_id(), user_id, user_name, is_admin, token_id, now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str, now: float) -> Session | None:
        """The live session named ``session_id``, renewed; None when unknown or idle too long."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if now - session.last_used >= self.idle:
            del self._sessions[session_id]
            return None
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def peek(self, session_id: str) -> Session | None:
        """The session named ``session_id`` if held, without renewing it."""
        return self._sessions.get(session_id)

    def remove(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def expire(self, now: float) -> int:
        """Drop every session idle too long; how many went."""
        gone = 0
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used < self.idle:
                break
            del self._sessions[oldest.id]
            gone += 1
        return gone

    def token_ids(self) -> set[str]:
        return {s.token_id for s in self._sessions.values()}

    def revoke_tokens(self, live: set[str]) -> int:
        """Drop the sessions whose token is not in ``live``; how many went."""
        dead = [s.id for s in self._sessions.values() if s.token_id not in live]
        for session_id in dead:
            del self._sessions[session_id]
        return len(dead)


def csrf_ok(session: Session, header: str | None) -> bool:
    """Whether ``header`` is the session's CSRF token (constant-time comparison)."""
    if not header:
        return False
    return hmac.compare_digest(session.csrf.encode(), header.encode("utf-8", "replace"))


def cross_site(headers: Mapping[str, str]) -> str | None:
    """Why a state-changing request must be refused as coming from another site, or None.

    ``Sec-Fetch-Site`` (sent by current browsers), when present, must be ``same-origin``
    (or ``none``: typed by the user); ``Origin``, when present, must be ``http://`` or
    ``https://`` followed by the ``Host`` the request was sent to. The scheme is not compared:
    behind a proxy that does TLS the browser's ``https`` origin reaches a plain-HTTP page
    (the proxy must pass the browser's ``Host`` on)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site!r}"
    origin = headers.get("origin")
    if origin is not None:
        scheme, sep, authority = origin.partition("://")
        if not sep or scheme not in ("http", "https") or authority != headers.get("host"):
            return "Origin is not this page's"
    return None


def session_cookie(session_id: str, *, secure: bool) -> str:
    """The ``Set-Cookie`` value of a new session (``Secure`` when served over TLS)."""
    flags = "; Secure" if secure else ""
    return f"{COOKIE_NAME}={session_id}; Path=/; HttpOnly; SameSite=Strict{flags}"


def clear_cookie(*, secure: bool) -> str:
    """The ``Set-Cookie`` value that removes the session cookie."""
    flags = "; Secure" if secure else ""
    return f"{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{flags}"
