"""The web page's sessions and cross-site rules, sans-IO (time and randomness passed in)."""

from __future__ import annotations

import itertools

from leapcore.proto.web_session import (
    SessionTable,
    clear_cookie,
    cross_site,
    csrf_ok,
    session_cookie,
)

IDS = (f"id{n}" for n in itertools.count())


def new(table: SessionTable, now: float, token: str = "t1", user: str = "u") -> str:
    return table.create(
        lambda: next(IDS), now, user_id=user, user_name="alice", is_admin=False, token_id=token
    ).id


def test_sessions_expire_when_idle_and_are_renewed_by_use() -> None:
    table = SessionTable(idle=100)
    sid = new(table, 0)
    assert table.get(sid, 99) is not None  # renewed at 99
    assert table.get(sid, 198) is not None
    assert table.get(sid, 298) is None  # 100 s idle
    assert len(table) == 0
    other = new(table, 300)
    assert table.expire(399) == 0 and table.expire(400) == 1
    assert table.peek(other) is None


def test_a_full_table_evicts_the_least_recently_used() -> None:
    table = SessionTable(max_sessions=2, idle=1000)
    a, b = new(table, 0), new(table, 1)
    table.get(a, 2)  # b is now the least recently used
    c = new(table, 3)
    assert len(table) == 2
    assert table.peek(b) is None and table.peek(a) and table.peek(c)


def test_one_user_cannot_push_out_the_others_sessions() -> None:
    table = SessionTable(max_sessions=10, max_per_user=3, idle=1000)
    others = [new(table, 0, user=f"other{n}") for n in range(5)]
    mine = [new(table, 1 + n, user="mallory") for n in range(50)]
    assert len(table) == 8
    assert all(table.peek(s) is not None for s in others)
    assert [s for s in mine if table.peek(s) is not None] == mine[-3:]


def test_revoked_tokens_end_their_sessions() -> None:
    table = SessionTable()
    a, b = new(table, 0, "t1"), new(table, 0, "t2")
    assert table.token_ids() == {"t1", "t2"}
    assert table.revoke_tokens({"t2"}) == 1
    assert table.peek(a) is None and table.peek(b) is not None


def test_the_csrf_token_is_compared_exactly() -> None:
    table = SessionTable()
    session = table.get(new(table, 0), 0)
    assert session is not None and session.csrf != session.id
    assert csrf_ok(session, session.csrf)
    for wrong in (None, "", session.csrf[:-1], session.csrf + "x", "\u00e9"):
        assert not csrf_ok(session, wrong)


def test_cross_site_requests_are_recognised() -> None:
    host = {"host": "127.0.0.1:8080"}
    assert cross_site(host) is None  # an old browser, or not a browser
    assert cross_site({**host, "sec-fetch-site": "same-origin"}) is None
    assert cross_site({**host, "sec-fetch-site": "none"}) is None
    assert cross_site({**host, "origin": "http://127.0.0.1:8080"}) is None
    # Behind a proxy that does TLS: the browser's origin is https, the page's is not.
    assert cross_site({**host, "origin": "https://127.0.0.1:8080"}) is None
    for bad in (
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"origin": "http://127.0.0.1:8081"},  # another port is another origin
        {"origin": "http://127.0.0.1:8080.evil.example"},
        {"origin": "ftp://127.0.0.1:8080"},
    ):
        assert cross_site({**host, **bad}) is not None


def test_cookies() -> None:
    assert session_cookie("abc", secure=False) == (
        "leapcore_session=abc; Path=/; HttpOnly; SameSite=Strict"
    )
    assert session_cookie("abc", secure=True).endswith("; Secure")
    assert "Max-Age=0" in clear_cookie(secure=False)
