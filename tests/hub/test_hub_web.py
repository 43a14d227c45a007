"""The hub's web page (leapcore.hub.web) driven over real loopback sockets against a real
hub: static answers and their headers, sign-in, cookies, CSRF and cross-site refusals,
registration keys, the live event stream, admins, revocation, sign-out and the budgets."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from support.hubpeer import Env, now_ms, scrape, value

from leapcore.hub.server import Hub
from leapcore.hub.web import WebOptions, worker_command
from leapcore.proto.limits import REG_KEY_LIFETIME_MS
from leapcore.proto.link_codec import Register, Registered
from leapcore.proto.link_state import LinkRole
from leapcore.proto.web_http import CONTENT_SECURITY_POLICY

Reply = tuple[int, dict[str, str], bytes]


class Web:
    """A real hub with its web page, and a raw HTTP/1.1 client for it."""

    def __init__(self, env: Env, address: tuple[str, int], clock: list[float]) -> None:
        self.env = env
        self.hub = env.hub
        self.host, self.port = address
        self.origin = f"http://{self.host}:{self.port}"
        self.clock = clock

    async def raw(self, data: bytes) -> Reply:
        stream = await trio.open_tcp_stream(self.host, self.port)
        with trio.fail_after(10):
            await stream.send_all(data)
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
        await stream.aclose()
        head, _, body = reply.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, text = line.partition(":")
            key = name.strip().lower()
            headers[key] = (headers[key] + "\n" if key in headers else "") + text.strip()
        return int(status_line.split(" ")[1]), headers, body

    def request_bytes(
        self,
        method: str,
        path: str,
        *,
        cookie: str | None = None,
        csrf: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> bytes:
        headers = {"Host": f"{self.host}:{self.port}"}
        if cookie is not None:
            headers["Cookie"] = f"leapcore_session={cookie}"
        if csrf is not None:
            headers["X-Leapcore-CSRF"] = csrf
        if content_type is not None:
            headers["Content-Type"] = content_type
        if body or method == "POST":
            headers["Content-Length"] = str(len(body))
        headers.update(extra or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        return head.encode() + b"\r\n" + body

    async def call(self, method: str, path: str, **kw: Any) -> Reply:
        return await self.raw(self.request_bytes(method, path, **kw))

    async def sign_in(self, token: str | None = None) -> tuple[str, str]:
        """(session cookie, CSRF token) of a successful sign-in."""
        status, headers, body = await self.call(
            "POST",
            "/api/sign-in",
            csrf="x",
            body=f"token={token or self.env.token}".encode(),
            content_type="application/x-www-form-urlencoded",
        )
        assert status == 200, body
        cookie = headers["set-cookie"].split(";")[0].split("=", 1)[1]
        return cookie, json.loads(body)["csrf"]

    async def mint(self, cookie: str, csrf: str) -> dict[str, Any]:
        status, _, body = await self.call("POST", "/api/regkey", cookie=cookie, csrf=csrf)
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result


@asynccontextmanager
async def web_hub(tmp_path: Path, **web: Any) -> AsyncIterator[Web]:
    clock = [time.time()]
    hub = Hub(tmp_path / "hub.db", wall_clock=lambda: clock[0])
    async with trio.open_nursery() as nursery:
        options = WebOptions(("127.0.0.1", 0))
        host, port = await nursery.start(
            lambda task_status: hub.serve(web=options, task_status=task_status)
        )
        assert hub.web is not None and hub.web_bound is not None
        for name, setting in web.items():
            setattr(hub.web, name, setting)
        env = Env.__new__(Env)
        env.hub, env.url, env.store = hub, f"http://{host}:{port}", hub.store
        user, env.token = hub.store.create_user("alice", int(clock[0] * 1000))
        env.user_id = user.id
        try:
            yield Web(env, hub.web_bound, clock)
        finally:
            await hub.shutdown()


class Events:
    """An open ``GET /api/events``: its ``workers`` events, one at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.head_text: str | None = None

    async def head(self) -> str:
        if self.head_text is not None:
            return self.head_text
        while b"\r\n\r\n" not in self.buf:
            self.buf += await self._chunk()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head_text = head.decode()
        return self.head_text

    async def _chunk(self) -> bytes:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise EOFError
        return chunk

    async def event(self) -> tuple[str, Any]:
        """The next event (a comment is ``("comment", text)``)."""
        with trio.fail_after(10):
            await self.head()
            while True:
                while b"\n\n" not in self.buf:
                    self.buf += await self._chunk()
                block, _, self.buf = self.buf.partition(b"\n\n")
                fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if line)
                if "event" in fields:
                    return fields["event"], json.loads(fields["data"])
                if block.startswith(b":"):
                    return "comment", block.decode()

    async def workers(self) -> list[dict[str, Any]]:
        kind, data = await self.event()
        while kind != "workers":
            kind, data = await self.event()
        workers: list[dict[str, Any]] = data["workers"]
        return workers


@asynccontextmanager
async def events(web: Web, cookie: str) -> AsyncIterator[Events]:
    stream = await trio.open_tcp_stream(web.host, web.port)
    async with stream:
        await stream.send_all(web.request_bytes("GET", "/api/events", cookie=cookie))
        yield Events(stream)


# -- static answers and their headers ------------------------------------------------------


async def test_the_page_and_its_headers(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        status, headers, body = await web.call("GET", "/")
        assert status == 200 and b"<title>leapcore hub</title>" in body
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        assert headers["x-frame-options"] == "DENY"
        # No asset from anywhere else: every src and href is this origin's own path.
        assert b"http" not in body.replace(b'name="viewport"', b"")
        status, headers, body = await web.call("GET", "/app.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        status, headers, _ = await web.call("GET", "/app.css")
        assert status == 200 and headers["content-type"].startswith("text/css")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/api/sign-in", 405),
        ("PUT", "/", 405),
        ("DELETE", "/api/regkey", 405),
        ("POST", "/api/workers", 405),
    ],
)
async def test_unknown_paths_and_wrong_methods(
    tmp_path: Path, method: str, path: str, status: int
) -> None:
    async with web_hub(tmp_path) as web:
        got, headers, _ = await web.call(method, path)
        assert got == status
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        if status == 405:
            assert headers["allow"] in ("GET", "POST")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 60 + b"\r\n", 431),
        (b"POST /api/sign-in HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413),
        (b"POST /api/sign-in HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET nothing HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
    ],
)
async def test_bad_requests_get_their_status(
    tmp_path: Path, request_bytes: bytes, status: int
) -> None:
    async with web_hub(tmp_path) as web:
        got, headers, _ = await web.raw(request_bytes)
        assert got == status
        assert headers["connection"] == "close"


# -- signing in ---------------------------------------------------------------------------


async def test_sign_in_sets_a_strict_http_only_cookie(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        status, headers, body = await web.call(
            "POST",
            "/api/sign-in",
            csrf="x",
            body=f"token={web.env.token}".encode(),
            content_type="application/x-www-form-urlencoded",
            extra={"Origin": web.origin, "Sec-Fetch-Site": "same-origin"},
        )
        assert status == 200
        cookie = headers["set-cookie"]
        name, _, rest = cookie.partition("=")
        assert name == "leapcore_session"
        flags = {f.strip() for f in rest.split(";")[1:]}
        assert flags == {"Path=/", "HttpOnly", "SameSite=Strict"}  # no Secure: plain HTTP
        session = json.loads(body)
        assert session["user"] == "alice" and session["admin"] is False
        assert session["hub_url"] == web.env.url
        assert web.env.token.encode() not in body  # never echoed
        status, _, body = await web.call("GET", "/api/session", cookie=rest.split(";")[0])
        assert status == 200 and json.loads(body)["csrf"] == session["csrf"]


async def test_a_refused_token_is_audited_and_counted(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        before = value(await scrape(web.env), "sign_ins_refused_total", reason="api_token")
        status, headers, body = await web.call(
            "POST",
            "/api/sign-in",
            csrf="x",
            body=b"token=not-a-real-token",
            content_type="application/x-www-form-urlencoded",
        )
        assert status == 401 and "set-cookie" not in headers
        assert b"not-a-real-token" not in body
        (event,) = web.hub.store.list_audit(kind="token_refused")
        assert event.actor == "anonymous"
        assert event.detail["credential"] == "api_token"
        assert event.address is not None and event.address.startswith("127.0.0.1:")
        assert "not-a-real-token" not in json.dumps(dict(event.detail))
        after = value(await scrape(web.env), "sign_ins_refused_total", reason="api_token")
        assert after == before + 1


async def test_an_expired_token_is_refused_saying_so(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        web.clock[0] += 91 * 86400  # past the API token's 90 days
        status, headers, body = await web.call(
            "POST",
            "/api/sign-in",
            csrf="x",
            body=f"token={web.env.token}".encode(),
            content_type="application/x-www-form-urlencoded",
        )
        assert status == 401 and "set-cookie" not in headers
        assert json.loads(body)["error"].startswith("API token expired on ")
        assert web.env.token.encode() not in body
        (event,) = web.hub.store.list_audit(kind="token_expired")
        assert event.detail["credential"] == "api_token"


@pytest.mark.parametrize(
    ("csrf", "extra", "content_type", "status"),
    [
        (None, {}, "application/x-www-form-urlencoded", 403),  # no CSRF header
        ("x", {"Origin": "http://evil.example"}, "application/x-www-form-urlencoded", 403),
        ("x", {"Sec-Fetch-Site": "cross-site"}, "application/x-www-form-urlencoded", 403),
        ("x", {"Sec-Fetch-Site": "same-site"}, "application/x-www-form-urlencoded", 403),
        ("x", {}, "text/plain", 415),
    ],
)
async def test_cross_site_sign_ins_are_refused(
    tmp_path: Path, csrf: str | None, extra: dict[str, str], content_type: str, status: int
) -> None:
    async with web_hub(tmp_path) as web:
        got, headers, _ = await web.call(
            "POST",
            "/api/sign-in",
            csrf=csrf,
            body=f"token={web.env.token}".encode(),
            content_type=content_type,
            extra=extra,
        )
        assert got == status and "set-cookie" not in headers


async def test_state_changes_need_the_sessions_csrf_token(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        cookie, csrf = await web.sign_in()
        for token in (None, "wrong", csrf[:-1]):
            status, _, _ = await web.call("POST", "/api/regkey", cookie=cookie, csrf=token)
            assert status == 403
        status, _, _ = await web.call(
            "POST", "/api/regkey", cookie=cookie, csrf=csrf, extra={"Origin": "http://evil"}
        )
        assert status == 403
        assert web.hub.store.list_registration_keys(now_ms() * 10, include_expired=True) == []
        # Without a session: 401 whatever the header says.
        status, _, _ = await web.call("POST", "/api/regkey", csrf=csrf)
        assert status == 401
        status, _, _ = await web.call("POST", "/api/regkey", cookie="forged", csrf=csrf)
        assert status == 401
        assert (await web.mint(cookie, csrf))["registration_key"]


# -- registration keys ----------------------------------------------------------------------


async def test_a_key_minted_on_the_page_registers_a_worker(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        cookie, csrf = await web.sign_in()
        minted = await web.mint(cookie, csrf)
        key = minted["registration_key"]
        assert minted["command"] == worker_command(web.env.url, key)
        assert minted["expires_at"] == int(web.clock[0] * 1000) + REG_KEY_LIFETIME_MS
        (event,) = web.hub.store.list_audit(kind="registration_key_created")
        assert event.actor == "user:alice"

        async def keepalive() -> dict[str, Any]:
            status, _, body = await web.call(
                "POST",
                "/api/regkey/keepalive",
                cookie=cookie,
                csrf=csrf,
                body=json.dumps({"registration_key": key}).encode(),
                content_type="application/json",
            )
            assert status == 200, body
            result: dict[str, Any] = json.loads(body)
            return result

        # More than 2 minutes left: live, not extended (the CLI's rule).
        assert "expires_at" not in await keepalive()
        web.clock[0] += 4 * 60  # 1 minute left: extended by 5 minutes from now
        kept = await keepalive()
        assert kept["state"] == "live"
        assert kept["expires_at"] == int(web.clock[0] * 1000) + REG_KEY_LIFETIME_MS

        async with web.env.link(LinkRole.WORKER) as peer:
            await peer.send(Register(1, key, "paged", "1.0"))
            assert isinstance(await peer.recv(), Registered)
        assert (await keepalive())["state"] == "consumed"


async def test_keepalive_checks_its_body(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        cookie, csrf = await web.sign_in()
        for body, status in [
            (b"not json", 400),
            (b"[]", 400),
            (b'{"registration_key": "k", "more": 1}', 400),
            (b'{"registration_key": "unknown"}', 404),
        ]:
            got, _, _ = await web.call(
                "POST", "/api/regkey/keepalive", cookie=cookie, csrf=csrf, body=body
            )
            assert got == status, body


# -- the live list --------------------------------------------------------------------------


async def test_the_event_stream_follows_a_worker_online_and_offline(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        cookie, _ = await web.sign_in()
        async with events(web, cookie) as stream:
            head = await stream.head()
            assert head.startswith("HTTP/1.1 200 ")
            assert "Content-Type: text/event-stream" in head
            assert f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}" in head
            assert await stream.workers() == []
            worker_id, token = await web.env.register(web.env.key())
            (registered,) = await stream.workers()
            assert registered["id"] == worker_id and registered["online"] is False
            async with web.env.worker(token):
                online = await stream.workers()
                while not (online[0]["online"] and "fingerprint" in online[0]):
                    online = await stream.workers()
                assert online[0]["name"].startswith("box-")
            # An event may repeat the state (changes that came while the list was read).
            (offline,) = await stream.workers()
            while offline["online"]:
                (offline,) = await stream.workers()
            assert offline["id"] == worker_id


async def test_an_admin_sees_every_worker_and_a_user_only_theirs(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        store = web.hub.store
        _, admin_token = store.create_user("root", now_ms(), is_admin=True)
        bob, bob_token = store.create_user("bob", now_ms())
        await web.env.register(store.mint_registration_key(bob.id, now_ms())[1], name="bobs")
        await web.env.register(web.env.key(), name="alices")
        cookie, _ = await web.sign_in(admin_token)
        status, _, body = await web.call("GET", "/api/workers", cookie=cookie)
        listed = json.loads(body)
        assert status == 200 and listed["admin"] is True
        assert {(w["name"], w["owner"]) for w in listed["workers"]} == {
            ("bobs", "bob"),
            ("alices", "alice"),
        }
        cookie, _ = await web.sign_in(bob_token)
        listed = json.loads((await web.call("GET", "/api/workers", cookie=cookie))[2])
        assert [w["name"] for w in listed["workers"]] == ["bobs"]
        assert "owner" not in listed["workers"][0]
        # Bob's page is not told about Alice's workers.
        async with events(web, cookie) as stream:
            assert [w["name"] for w in await stream.workers()] == ["bobs"]
            await web.env.register(web.env.key(), name="alices-2")
            await web.env.register(store.mint_registration_key(bob.id, now_ms())[1], name="b2")
            assert sorted(w["name"] for w in await stream.workers()) == ["b2", "bobs"]


# -- ending sessions ------------------------------------------------------------------------


async def test_a_revoked_token_ends_the_session_and_its_streams(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        cookie, _ = await web.sign_in()
        (token,) = web.hub.store.list_tokens("alice")
        async with events(web, cookie) as stream:
            await stream.workers()
            web.hub.store.revoke_token(token.id, now_ms())
            with trio.fail_after(10), pytest.raises(EOFError):
                while True:
                    await stream.event()
        status, _, _ = await web.call("GET", "/api/session", cookie=cookie)
        assert status == 401
        assert len(web.hub.web.sessions) == 0  # type: ignore[union-attr]


async def test_sign_out_clears_the_cookie_and_the_session(tmp_path: Path) -> None:
    async with web_hub(tmp_path) as web:
        cookie, csrf = await web.sign_in()
        status, _, _ = await web.call("POST", "/api/sign-out", cookie=cookie)
        assert status == 403  # no CSRF token: not even signing out
        status, headers, _ = await web.call("POST", "/api/sign-out", cookie=cookie, csrf=csrf)
        assert status == 204
        assert "Max-Age=0" in headers["set-cookie"]
        status, _, _ = await web.call("GET", "/api/workers", cookie=cookie)
        assert status == 401


# -- budgets ---------------------------------------------------------------------------------


async def test_event_streams_per_session_are_capped(tmp_path: Path) -> None:
    async with web_hub(tmp_path, max_streams_per_session=2, keepalive=0.2) as web:
        cookie, _ = await web.sign_in()
        async with events(web, cookie) as one, events(web, cookie) as two:
            await one.workers()
            await two.workers()
            status, _, _ = await web.call("GET", "/api/events", cookie=cookie)
            assert status == 429
            # Another session still gets one.
            other, _ = await web.sign_in()
            async with events(web, other) as three:
                assert await three.workers() == []
        assert web.hub.web is not None
        with trio.fail_after(10):
            while web.hub.web.streams:
                await trio.sleep(0.01)


async def test_a_slow_loris_gets_408(tmp_path: Path) -> None:
    async with web_hub(tmp_path, request_timeout=0.3) as web:
        stream = await trio.open_tcp_stream(web.host, web.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end
            reply = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some(4096):
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 408 ")
