"""The hub's read-only web page, on its own listener (trio driver).

``leapcore-hub serve --web-listen HOST:PORT`` (hub setting ``web_listen``, off by default)
starts a :class:`WebServer` beside the hub's link listener: a page where a user signs in
with an API token and sees their workers (an administrator: every worker, with its owner)
— online dot, name, version, os/arch, labels, capabilities, last seen, key fingerprint —
updated live from the hub's :class:`~leapcore.hub.presence.Presence` over server-sent
events, and a "Register worker" panel that mints a registration key, shows the command
that uses it and keeps the key alive while the panel is open. The page (HTML, CSS, plain
DOM JavaScript) is package data in ``leapcore/hub/static/``: no external asset, no build.

HTTP (:mod:`leapcore.proto.web_http`): one request per connection, answered and closed,
except the event stream. Routes:

========================  ======  ===========================================================
``/``                     GET     the page
``/app.js``, ``/app.css`` GET     its script and style
``/api/session``          GET     who is signed in, the CSRF token; 401 when nobody
``/api/sign-in``          POST    form ``token=API_TOKEN``: a session cookie; 401 if refused
``/api/sign-out``         POST    ends the session
``/api/workers``          GET     the workers (``workers.list``'s view; ``owner`` for admins)
``/api/events``           GET     ``text/event-stream``: a ``workers`` event at once and at
                                  every change, a keep-alive comment every 15 s
``/api/regkey``           POST    mints a registration key (as ``regkey.create``)
``/api/regkey/keepalive`` POST    JSON ``{"registration_key": K}``: its state, extended when
                                  less than 2 minutes are left (as the CLI's ``reg-key create``)
========================  ======  ===========================================================

**Security.** The session cookie is ``HttpOnly; SameSite=Strict; Path=/`` (``Secure`` over
TLS) and holds a random id only; sessions live in memory
(:class:`~leapcore.proto.web_session.SessionTable`: 12 h idle, at most 16 per user and 1024
in all) and end when
their API token is revoked or its user deleted (checked with every request and every
``revocation_check_interval``). Every POST needs the ``X-Leapcore-CSRF`` header (the
session's CSRF token; for the sign-in, any value: a custom header cannot be sent
cross-site without a CORS preflight, which is never granted) and is refused when
``Sec-Fetch-Site`` or ``Origin`` says it comes from another site. Every answer carries a
``Content-Security-Policy`` allowing only this origin's script, style and fetches and
``frame-ancestors 'none'``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer`` and ``Cache-Control: no-store``. A refused token is a ``token_refused``
audit event (credential ``api_token``) and a security log line, rate-limited like a
link's; the token is never logged nor echoed.

**Budgets** (:mod:`leapcore.proto.limits`, ``WEB_*``): connections at once (503 beyond),
the request's head, header count and body (431, 413), the time to send a request (408)
and to take each write, event streams in all and per session (429 beyond) and each
stream's queue of changes (a stream that falls behind is closed; the browser reconnects).
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import ssl
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ..errors import (
    HttpRequestError,
    LeapcoreError,
    RequestError,
    StorageError,
    TokenExpired,
    Unauthenticated,
)
from ..net.accept import accept_connections
from ..net.listen import peer_address
from ..proto.audit_events import Origin, user_actor
from ..proto.limits import (
    REG_KEY_EXTEND_WINDOW_MS,
    WEB_KEEPALIVE,
    WEB_MAX_CONNECTIONS,
    WEB_MAX_STREAMS,
    WEB_MAX_STREAMS_PER_SESSION,
    WEB_REGKEY_KEEPALIVE,
    WEB_REQUEST_TIMEOUT,
    WEB_SEND_TIMEOUT,
)
from ..proto.web_http import Request, RequestReader, parse_cookies, parse_form, response
from ..proto.web_session import (
    COOKIE_NAME,
    CSRF_HEADER,
    Session,
    SessionTable,
    clear_cookie,
    cross_site,
    csrf_ok,
    session_cookie,
)
from ..store.hubstore import User
from .presence import ALL
from .rpc import call, worker_view

if TYPE_CHECKING:
    from .server import Hub

__all__ = ["STATIC_FILES", "WebOptions", "WebServer", "worker_command"]

log = logging.getLogger(__name__)

#: Path -> (file in ``leapcore/hub/static``, content type).
STATIC_FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
#: Path -> the methods it answers.
_API: Final = {
    "/api/session": "GET",
    "/api/sign-in": "POST",
    "/api/sign-out": "POST",
    "/api/workers": "GET",
    "/api/events": "GET",
    "/api/regkey": "POST",
    "/api/regkey/keepalive": "POST",
}
_JSON: Final = "application/json"
_FORM: Final = "application/x-www-form-urlencoded"
#: How long the browser waits before reconnecting an event stream that ended, in ms.
_RETRY_MS: Final = 3000


@attrs.frozen
class WebOptions:
    """Where a hub serves its web page: ``listen`` (host, port), over TLS with
    ``ssl_context`` (HTTP/1.1 only), its command for new workers naming ``public_url`` (None:
    the hub's TCP listener's URL)."""

    listen: tuple[str, int]
    ssl_context: ssl.SSLContext | None = None
    public_url: str | None = None


def worker_command(hub_url: str, key: str) -> str:
    """The command the page shows: the same as ``leapcore remote worker reg-key create``."""
    return shlex.join(["leapcore-worker", "--hub", hub_url, "--registration-key", key])


def _static() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("leapcore.hub") / "static"
    return {
        path: ((folder / name).read_bytes(), kind) for path, (name, kind) in STATIC_FILES.items()
    }


class _EventStream:
    """The answer to ``GET /api/events``: served by :meth:`WebServer._events`."""

    def __init__(self, session: Session) -> None:
        self.session = session


class WebServer:
    """The web page of one :class:`~leapcore.hub.server.Hub`."""

    def __init__(
        self,
        hub: Hub,
        *,
        hub_url: str,
        ssl_context: ssl.SSLContext | None = None,
        sessions: SessionTable | None = None,
        new_id: Callable[[], str] = lambda: secrets.token_urlsafe(32),
        request_timeout: float = WEB_REQUEST_TIMEOUT,
        send_timeout: float = WEB_SEND_TIMEOUT,
        keepalive: float = WEB_KEEPALIVE,
        max_connections: int = WEB_MAX_CONNECTIONS,
        max_streams: int = WEB_MAX_STREAMS,
        max_streams_per_session: int = WEB_MAX_STREAMS_PER_SESSION,
    ) -> None:
        self.hub = hub
        #: The hub's address as workers dial it, in the page's command.
        self.hub_url = hub_url
        self.ssl_context = ssl_context
        self.sessions = sessions or SessionTable()
        self._new_id = new_id
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        self.keepalive = keepalive
        self.max_connections = max_connections
        self.max_streams = max_streams
        self.max_streams_per_session = max_streams_per_session
        #: Connections being served now, and event streams open now.
        self.connections = 0
        self.streams = 0
        #: Session id -> the cancel scopes of its open event streams.
        self._stream_scopes: dict[str, set[trio.CancelScope]] = {}
        self._files = _static()

    # -- listening ----------------------------------------------------------------------

    async def serve(
        self, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on TCP until cancelled; ``task_status.started`` gets the bound (host, port)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[:2]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._check_sessions_forever)
            for listener in listeners:
                nursery.start_soon(self._accept, listener, nursery)
            task_status.started(bound)

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            await accept_connections(listener, nursery, self.handle, name="web listener")

    async def _check_sessions_forever(self) -> None:
        while True:
            await trio.sleep(self.hub.limits.revocation_check_interval)
            await self.check_sessions()

    async def check_sessions(self) -> None:
        """End the sessions idle too long, or whose API token was revoked (their streams
        too)."""
        self.sessions.expire(trio.current_time())
        try:
            live = await self.hub.store_call(
                self.hub.store.live_token_ids, self.sessions.token_ids()
            )
        except StorageError as exc:
            log.error("web: session check failed: %s", exc)
            return
        self.sessions.revoke_tokens(live)
        for session_id in list(self._stream_scopes):
            if self.sessions.peek(session_id) is None:
                self._end_streams(session_id)

    def _end_streams(self, session_id: str) -> None:
        for scope in self._stream_scopes.pop(session_id, set()):
            scope.cancel()

    # -- one connection -----------------------------------------------------------------

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection: one request and its answer (or an event stream)."""
        try:
            peer = peer_address(stream)[1]
        except OSError:
            peer = "?"
        self.connections += 1
        if self.ssl_context is not None and self.connections <= self.max_connections:
            stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
        try:
            if self.connections > self.max_connections:
                if self.ssl_context is None:  # over TLS: closed without a handshake
                    await self._send(stream, _text(503, "too many connections\n"))
                return
            await self._serve_one(stream, peer)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
            OSError,
            ssl.SSLError,
        ) as exc:
            log.debug("web: connection from %s ended: %s", peer, exc)
        except Exception:  # a bug must cost one connection, never the hub
            log.exception("web: connection from %s: internal error", peer)
        finally:
            self.connections -= 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _serve_one(self, stream: trio.abc.Stream, peer: str) -> None:
        reader = RequestReader()
        request: Request | None = None
        try:
            with trio.fail_after(self.request_timeout):
                while request is None:
                    request = reader.feed(await stream.receive_some(4096))
        except trio.TooSlowError:
            log.info("web: request from %s not sent within %gs", peer, self.request_timeout)
            await self._send(stream, _text(408, "request not sent in time\n"))
            return
        except HttpRequestError as exc:
            log.info("web: bad request from %s: %s", peer, exc.message)
            await self._send(stream, _text(exc.status, exc.message + "\n"))
            return
        try:
            answer = await self.answer(request, peer)
        except HttpRequestError as exc:
            answer = _json(exc.status, {"error": exc.message})
        except StorageError as exc:
            log.error("web: %s %s: %s", request.method, request.path, exc)
            answer = _json(500, {"error": "hub storage error"})
        if isinstance(answer, _EventStream):
            await self._events(stream, answer.session)
        else:
            await self._send(stream, answer)

    async def _send(self, stream: trio.abc.Stream, data: bytes) -> None:
        with trio.move_on_after(self.send_timeout):
            await stream.send_all(data)

    # -- answers --------------------------------------------------------------------------

    async def answer(self, request: Request, peer: str) -> bytes | _EventStream:
        """The answer to one request (bytes), or the event stream to serve."""
        static = self._files.get(request.path)
        allowed = "GET" if static is not None else _API.get(request.path)
        if allowed is None:
            return _text(404, "not found\n")
        if request.method != allowed:
            return _text(405, "method not allowed\n", [("Allow", allowed)])
        if static is not None:
            body, kind = static
            return response(200, body, kind)
        if request.method == "POST":
            why = cross_site(request.headers)
            if why is not None:
                log.info("web: %s from %s refused: %s", request.path, peer, why)
                return _json(403, {"error": "cross-site request refused"})
        if request.path == "/api/sign-in":
            return await self._sign_in(request, peer)
        session = await self._session(request)
        if session is None:
            return _json(401, {"error": "not signed in"})
        if request.method == "POST" and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
            log.info("web: %s from %s refused: no or wrong CSRF token", request.path, peer)
            return _json(403, {"error": "missing or wrong CSRF token"})
        if request.path == "/api/session":
            return _json(200, self._session_view(session))
        if request.path == "/api/sign-out":
            self.sessions.remove(session.id)
            self._end_streams(session.id)
            log.info("web: %s signed out", session.user_name)
            cookie = clear_cookie(secure=self.ssl_context is not None)
            return response(204, headers=[("Set-Cookie", cookie)])
        if request.path == "/api/workers":
            return _json(200, await self.workers(session))
        if request.path == "/api/events":
            return _EventStream(session)
        if request.path == "/api/regkey":
            return await self._mint(session, peer)
        return await self._keepalive(session, request)

    async def _session(self, request: Request) -> Session | None:
        """The request's live session (its token still live), or None."""
        session_id = parse_cookies(request.headers.get("cookie", "")).get(COOKIE_NAME)
        if not session_id:
            return None
        session = self.sessions.get(session_id, trio.current_time())
        if session is None:
            return None
        if not await self.hub.store_call(self.hub.store.live_token_ids, [session.token_id]):
            self.sessions.remove(session.id)
            self._end_streams(session.id)
            return None
        return session

    def _session_view(self, session: Session) -> dict[str, Any]:
        return {
            "user": session.user_name,
            "admin": session.is_admin,
            "csrf": session.csrf,
            "hub_url": self.hub_url,
            "regkey_keepalive": WEB_REGKEY_KEEPALIVE,
        }

    async def _sign_in(self, request: Request, peer: str) -> bytes:
        # Before any session there is no CSRF token to check: the header must be there (a
        # cross-site page cannot add it without a preflight), and the Origin checked above.
        if not request.headers.get(CSRF_HEADER):
            return _json(403, {"error": "missing CSRF header"})
        if request.headers.get("content-type", "").split(";")[0].strip() != _FORM:
            return _json(415, {"error": f"send the token as {_FORM}"})
        token = parse_form(request.body).get("token", "").strip()
        try:
            if not token:
                raise Unauthenticated("no API token given")
            user, token_id, _expires = await self.hub.store_call(
                self.hub.store.authenticate_client, token, self.hub.now_ms()
            )
        except TokenExpired as exc:
            await self.hub.web_sign_in_failed(peer, str(exc), expired=True)
            return _json(401, {"error": str(exc)})
        except Unauthenticated as exc:
            await self.hub.web_sign_in_failed(peer, str(exc))
            return _json(401, {"error": "this API token is not valid"})
        session = self.sessions.create(
            self._new_id,
            trio.current_time(),
            user_id=user.id,
            user_name=user.name,
            is_admin=user.is_admin,
            token_id=token_id,
        )
        log.info("web: %s signed in from %s", user.name, peer)
        cookie = session_cookie(session.id, secure=self.ssl_context is not None)
        body = json.dumps(self._session_view(session)).encode()
        return response(200, body, _JSON, [("Set-Cookie", cookie)])

    async def workers(self, session: Session) -> dict[str, Any]:
        """The session's worker list: its user's, or every active worker for an admin."""
        store = self.hub.store
        if session.is_admin:
            every = await self.hub.store_call(store.list_workers)
            views = [{**worker_view(self.hub, w), "owner": w.owner_name} for w in every]
        else:
            own = await self.hub.store_call(store.list_workers, owner_id=session.user_id)
            views = [worker_view(self.hub, w) for w in own]
        return {"admin": session.is_admin, "workers": views}

    def _user(self, session: Session) -> tuple[User, Origin]:
        user = User(session.user_id, session.user_name, 0, session.is_admin)
        return user, Origin(user_actor(session.user_name), None)

    async def _mint(self, session: Session, peer: str) -> bytes:
        user, origin = self._user(session)
        origin = Origin(origin.actor, peer if peer not in ("?", "local") else None)
        try:
            result = await call(self.hub, user, "regkey.create", {}, origin)
        except RequestError as exc:
            return _json(409 if exc.error_code == "quota_exceeded" else 400, {"error": exc.message})
        key = result["registration_key"]
        log.info("web: %s minted a registration key", session.user_name)
        return _json(
            200,
            {
                "registration_key": key,
                "expires_at": result["expires_at"],
                "command": worker_command(self.hub_url, key),
            },
        )

    async def _keepalive(self, session: Session, request: Request) -> bytes:
        try:
            params = json.loads(request.body)
        except (UnicodeDecodeError, ValueError):
            return _json(400, {"error": "send a JSON object"})
        if not isinstance(params, dict) or set(params) != {"registration_key"}:
            return _json(400, {"error": 'send exactly {"registration_key": KEY}'})
        user, origin = self._user(session)
        try:
            state = (await call(self.hub, user, "regkey.state", params, origin))["state"]
            out: dict[str, Any] = {"state": state}
            if state == "live":
                try:
                    extended = await call(self.hub, user, "regkey.extend", params, origin)
                    out["expires_at"] = extended["expires_at"]
                except RequestError as exc:
                    if exc.error_code != "failed_precondition":  # not yet: more than 2 min left
                        raise
        except RequestError as exc:
            return _json(404 if exc.error_code == "not_found" else 400, {"error": exc.message})
        out["extend_window_ms"] = REG_KEY_EXTEND_WINDOW_MS
        return _json(200, out)

    # -- the event stream -------------------------------------------------------------------

    async def _events(self, stream: trio.abc.Stream, session: Session) -> None:
        if self.streams >= self.max_streams or session.streams >= self.max_streams_per_session:
            await self._send(stream, _json(429, {"error": "too many event streams"}))
            return
        changes = self.hub.presence.subscribe()
        if changes is None:
            await self._send(stream, _json(429, {"error": "too many event streams"}))
            return
        self.streams += 1
        session.streams += 1
        scope = trio.CancelScope()
        self._stream_scopes.setdefault(session.id, set()).add(scope)
        try:
            with scope, changes:
                head = response(200, content_type="text/event-stream", stream=True)
                await self._write(stream, head + f"retry: {_RETRY_MS}\n\n".encode())
                await self._write(stream, await self._workers_event(session))
                await self._stream_changes(stream, session, changes)
        finally:
            self.streams -= 1
            session.streams -= 1
            scopes = self._stream_scopes.get(session.id)
            if scopes is not None:
                scopes.discard(scope)
                if not scopes:
                    del self._stream_scopes[session.id]

    async def _stream_changes(
        self, stream: trio.abc.Stream, session: Session, changes: trio.MemoryReceiveChannel[str]
    ) -> None:
        while True:
            owner = None
            with trio.move_on_after(self.keepalive):
                try:
                    owner = await changes.receive()
                except trio.EndOfChannel:  # fell behind and was dropped: the browser reconnects
                    log.info("web: %s's event stream fell behind; closed", session.user_name)
                    return
            if self.sessions.get(session.id, trio.current_time()) is not session:
                return
            if owner is None:
                await self._write(stream, b": keep-alive\n\n")
                continue
            relevant = self._concerns(session, owner)
            while True:  # a burst of changes is one event
                try:
                    relevant = self._concerns(session, changes.receive_nowait()) or relevant
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if relevant:
                await self._write(stream, await self._workers_event(session))

    @staticmethod
    def _concerns(session: Session, owner: str) -> bool:
        return session.is_admin or owner in (session.user_id, ALL)

    async def _workers_event(self, session: Session) -> bytes:
        try:
            data = json.dumps(await self.workers(session), separators=(",", ":"))
        except LeapcoreError as exc:
            log.error("web: worker list failed: %s", exc)
            return b""
        return f"event: workers\ndata: {data}\n\n".encode()

    async def _write(self, stream: trio.abc.Stream, data: bytes) -> None:
        """Write within the send timeout; a client that does not read is dropped."""
        if not data:
            return
        with trio.fail_after(self.send_timeout):
            await stream.send_all(data)


def _json(status: int, value: object, headers: list[tuple[str, str]] | None = None) -> bytes:
    return response(status, json.dumps(value).encode(), _JSON, headers or [])


def _text(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    return response(status, text.encode(), "text/plain; charset=utf-8", headers or [])
