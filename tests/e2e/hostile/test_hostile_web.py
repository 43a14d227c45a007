"""Abuse of the hub's web page (``--web-listen``) against a real hub process: a slow-loris
flood past the page's connection budget, and a flood of bad API tokens. Every case ends with
:meth:`Stage.assert_survived` (the hub alive, the bystander's channel round-tripping, memory
and descriptors back), and the page itself serves again once the attack ends."""

from __future__ import annotations

import select
import socket
import time
import urllib.parse

from hostile_arena import ATTACKERS, Stage
from hostile_attacks import abort, dial, drain, held

from leapcore.proto.limits import WEB_MAX_CONNECTIONS


def page_status(address: tuple[str, int], source: str) -> int:
    sock = dial(address, source)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = drain(sock, 5)
    finally:
        abort(sock)
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def refusals(socks: list[socket.socket], wanted: int, *, deadline: float) -> set[socket.socket]:
    """The sockets that received a ``503`` reply, once ``wanted`` have (or at ``deadline``)."""
    refused: set[socket.socket] = set()
    while len(refused) < wanted and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([s for s in socks if s not in refused], [], [], left)
        for sock in ready:
            if drain(sock, 1).startswith(b"HTTP/1.1 503 "):
                refused.add(sock)
    return refused


def test_a_slow_loris_flood_past_the_connection_budget(stage: Stage) -> None:
    """More half-sent requests than the page's connection budget: the ones past it get 503
    at once, the hub's links are untouched, and the page answers again afterwards."""
    web = stage.arena.web
    extra = 20
    with stage.attack(), held([]) as socks:
        for n in range(WEB_MAX_CONNECTIONS + extra):
            sock = dial(web, ATTACKERS[n % len(ATTACKERS)])
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            socks.append(sock)
        # Whichever connections the hub accepted first hold the budget (the order the
        # kernel hands them over is not ours to know): exactly ``extra`` of them get a 503.
        refused = refusals(socks, extra, deadline=time.monotonic() + 10)
        assert len(refused) == extra
        waiting = set(socks) - refused
        ready, _, _ = select.select(list(waiting), [], [], 0)
        assert not ready  # the others still wait for the rest of their request
        assert stage.bystander.ping().get("ok")  # the links do not share the page's budget
    stage.assert_survived()
    deadline = time.monotonic() + 10
    while (status := page_status(web, ATTACKERS[0])) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200


def test_a_flood_of_bad_tokens_is_refused_and_audited_within_bounds(stage: Stage) -> None:
    """500 sign-ins with made-up tokens: each is a 401 and no session; the audit trail gets
    at most the log's rate (10 per 10 s) plus one folded row, not 500 rows."""
    web = stage.arena.web
    audit = ("audit", "list", "--kind", "token_refused", "--limit", "1000")
    before = len(stage.arena.admin(*audit)["events"])
    statuses: dict[int, int] = {}
    with stage.attack():
        for n in range(500):
            body = urllib.parse.urlencode({"token": f"guess-{n}"}).encode()
            sock = dial(web, ATTACKERS[n % len(ATTACKERS)])
            try:
                sock.sendall(
                    b"POST /api/sign-in HTTP/1.1\r\nHost: x\r\nX-Leapcore-CSRF: 1\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                reply = drain(sock, 5)
            except OSError:
                reply = b""
            finally:
                abort(sock)
            assert b"Set-Cookie" not in reply
            code = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0
            statuses[code] = statuses.get(code, 0) + 1
    stage.assert_survived()
    assert statuses == {401: 500}
    after = stage.arena.admin(*audit)
    assert len(after["events"]) - before <= 11
    assert "guess-" not in stage.arena.hub.stderr()
    assert not any("guess-" in str(e) for e in after["events"])
