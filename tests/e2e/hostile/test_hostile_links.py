"""Signed-in abuse against a real hub process: what an account holder (or a worker) can make
the hub hold, revocation taking effect, and untrusted field lengths. Every case ends with
:meth:`Stage.assert_survived` (the hub alive, the bystander's channel round-trips, the hub's
RSS and descriptors back near the baseline).

The budgets are the arena's (:data:`hostile_arena.LIMITS`, given to the hub as
``LEAPCORE_HUB_*`` settings). Attackers are fresh users (``stage.new_user()``) on addresses
other than the bystander's, except where the case needs mallory's real worker ``target``.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from typing import Final

from hostile_arena import ATTACKER, ATTACKERS, LIMITS, Stage, fd_count
from hostile_attacks import (
    BIG_LABELS,
    TINY_RCVBUF,
    RawLink,
    call,
    connect_worker,
    fake_workers,
    mint_key,
    register,
    sign_in,
    wait_stalled,
    ws_ping_flood_blocked_writer,
)

from leapcore.crypto.handshake import Initiator
from leapcore.crypto.keys import PublicKeyBundle
from leapcore.proto.limits import DEFAULT_MAX_MESSAGE_SIZE
from leapcore.proto.link_codec import (
    PROTOCOL_VERSION,
    ChannelOpened,
    ChannelRefused,
    ClientGreeting,
    ClientHello,
    Deregister,
    ErrorMessage,
    HubRequest,
    HubResponse,
    OpenChannel,
    Registered,
    WorkerGreeting,
)

#: Seconds each flood runs at most.
FLOOD_SECONDS: Final = 5.0
#: How much the hub's RSS may grow while one flood runs (KiB).
FLOOD_RSS_KIB: Final = 6 * 1024
#: Seconds a link the hub gave up on may keep its descriptor: the hub's flush of what is queued
#: (``leapcore.hub.server.FLUSH_TIMEOUT``, 2 s) and the WebSocket close handshake
#: (``leapcore.net.websocket.CLOSE_TIMEOUT``, 5 s) towards a peer that reads nothing, plus 3 s.
RELEASE_WITHIN: Final = 10.0
#: Seconds within which revoking a token must close its links (the issue's "at once").
REVOKE_WITHIN: Final = 1.0


def test_websocket_ping_flood_while_the_writer_is_blocked(stage: Stage) -> None:
    """A signed-in peer blocks the hub's writer with answers it does not read, then floods
    PINGs: the PONGs owed must not queue without limit (today ~25 MB/s)."""
    token, _ = stage.new_user()
    fake_workers(stage.arena.address, ATTACKER, token, 16)  # ~5 KB per workers.list answer
    with stage.attack():
        sent = ws_ping_flood_blocked_writer(
            stage.arena.address, ATTACKER, token, requests=60, seconds=FLOOD_SECONDS
        )
    assert sent > 0
    stage.assert_survived(peak_rss_kib=FLOOD_RSS_KIB)


def test_pipelined_requests_without_reading(stage: Stage) -> None:
    """Links that pipeline hub requests and never read: the answers queued for each must stay
    within ``max_link_queue_bytes`` (fewer records than the count cap, so only the byte
    budget can stop them); the hub closes such links."""
    token, _ = stage.new_user()
    # ~100 KB per workers.list answer (under the 128 KiB record limit): ~25 MB per link.
    fake_workers(stage.arena.address, ATTACKER, token, 30, BIG_LABELS)
    budget = int(LIMITS["max_link_queue_bytes"])
    links: list[RawLink] = []
    with stage.attack() as watch:
        try:
            for source in ATTACKERS[:3]:
                link = sign_in(stage.arena.address, source, token, rcvbuf=TINY_RCVBUF)
                links.append(link)
                link.send(*[HubRequest(i, "workers.list", {}) for i in range(1, 251)])
            for link in links:
                wait_stalled(link.sock, FLOOD_SECONDS)
            # The hub must let go of the links (their descriptors) while they are still
            # unread at this end: reading them here would drain what the kernel holds first.
            end = time.monotonic() + RELEASE_WITHIN
            while (held := fd_count(stage.arena.pid) - watch.base_fds) > 0:
                if time.monotonic() > end:
                    break
                time.sleep(0.05)
        finally:
            for link in links:
                link.close()
    assert held <= 0, (
        f"the hub still held {held} of {len(links)} links that were sent ~25 MB of answers "
        f"each and read none, {RELEASE_WITHIN:g}s on (max_link_queue_bytes {budget})"
    )
    stage.assert_survived(peak_rss_kib=FLOOD_RSS_KIB)


def _classic_message1(link: RawLink, worker_id: str) -> bytes:
    keys = call(link, 1, "worker.keys", worker_id=worker_id)
    assert keys.result is not None, keys
    fields = ("public_key", "mlkem_public_key", "slhdsa_public_key")
    bundle = PublicKeyBundle(*(base64.b64decode(keys.result[k]) for k in fields))
    return Initiator(bundle, keys.result["encryption_mode"]).write_message1()


def test_channel_open_flood_beyond_link_and_user_caps(stage: Stage) -> None:
    """Mallory opens channels to her own worker from four links, 12 per link: at most
    ``max_channels_per_link`` per link and ``max_channels_per_user`` in all are opened, the
    rest refused ``quota_exceeded``."""
    arena = stage.arena
    per_link, per_user = int(LIMITS["max_channels_per_link"]), int(LIMITS["max_channels_per_user"])
    opened: list[int] = []
    refused: list[str] = []
    links: list[RawLink] = []
    with stage.attack():
        try:
            for source in ATTACKERS[:4]:
                link = sign_in(arena.address, source, arena.mallory)
                links.append(link)
                requests = range(100, 112)
                link.send(
                    *[
                        OpenChannel(
                            r,
                            arena.target_id,
                            _classic_message1(link, arena.target_id),
                            DEFAULT_MAX_MESSAGE_SIZE,
                        )
                        for r in requests
                    ]
                )
                answers: dict[int, ChannelOpened | ChannelRefused] = {}
                end = time.monotonic() + 15
                while len(answers) < len(requests) and time.monotonic() < end:
                    for m in link.receive(end - time.monotonic()):
                        if isinstance(m, ChannelOpened | ChannelRefused):
                            answers[m.request_id] = m
                assert len(answers) == len(requests), f"answers: {answers}"
                here = [a for a in answers.values() if isinstance(a, ChannelOpened)]
                assert len(here) <= per_link, f"{len(here)} channels on one link (cap {per_link})"
                opened += [a.channel_id for a in here]
                refused += [a.code for a in answers.values() if isinstance(a, ChannelRefused)]
        finally:
            for link in links:
                link.close()
    assert len(opened) <= per_user, f"{len(opened)} channels for one user (cap {per_user})"
    assert len(opened) == per_user, f"only {len(opened)} channels opened: refused {refused}"
    assert refused and set(refused) == {"quota_exceeded"}, refused
    stage.assert_survived()


def test_signed_in_links_per_user_beyond_the_cap(stage: Stage) -> None:
    """One user signs in from many addresses and stays idle: ``max_links_per_user`` links are
    greeted, every further one is refused ``quota_exceeded``."""
    token, _ = stage.new_user()
    cap = int(LIMITS["max_links_per_user"])
    greeted: list[RawLink] = []
    refusals: list[str] = []
    with stage.attack():
        try:
            for source in ATTACKERS[: cap + 4]:
                link = RawLink(stage.arena.address, source)
                link.send(ClientHello(PROTOCOL_VERSION, token))
                answer, _ = link.wait_for(
                    lambda m: isinstance(m, ClientGreeting | ErrorMessage), 5.0
                )
                if isinstance(answer, ClientGreeting):
                    greeted.append(link)
                else:
                    refusals.append(answer.code if isinstance(answer, ErrorMessage) else "none")
                    link.close()
        finally:
            for link in greeted:
                link.close()
    assert len(greeted) == cap, f"{len(greeted)} links greeted (cap {cap}); refused {refusals}"
    assert refusals == ["quota_exceeded"] * 4, refusals
    stage.assert_survived()


def test_registration_key_mint_flood(stage: Stage) -> None:
    """200 ``regkey.create`` calls: at most ``max_live_registration_keys`` live keys, the rest
    refused ``quota_exceeded``; the hub's database holds no more than that."""
    token, user_id = stage.new_user()
    cap = int(LIMITS["max_live_registration_keys"])
    with stage.attack():
        link = sign_in(stage.arena.address, ATTACKER, token)
        try:
            link.send(*[HubRequest(i, "regkey.create", {}) for i in range(1, 201)])
            answers: dict[int, HubResponse] = {}
            end = time.monotonic() + 15
            while len(answers) < 200 and time.monotonic() < end and not link.closed:
                for m in link.receive(end - time.monotonic()):
                    if isinstance(m, HubResponse):
                        answers[m.request_id] = m
        finally:
            link.close()
    assert len(answers) == 200
    minted = [a for a in answers.values() if a.result is not None]
    codes = sorted({a.error_code or "" for a in answers.values() if a.result is None})
    assert len(minted) == cap, f"{len(minted)} keys minted (cap {cap})"
    assert codes == ["quota_exceeded"], codes
    db = sqlite3.connect(stage.arena.env.hub_dir / "hub.db", timeout=10)
    try:
        (rows,) = db.execute(
            "SELECT count(*) FROM registration_keys WHERE created_by = ?", (user_id,)
        ).fetchone()
    finally:
        db.close()
    assert rows <= cap, f"{rows} registration keys stored for the user (cap {cap})"
    stage.assert_survived()


def test_revoked_token_closes_its_links_within_a_second(stage: Stage) -> None:
    """``leapcore-hub admin user token-revoke`` on a token with three live links: each is closed
    within a second of the command; a link signed in with the user's other token stays up."""
    arena = stage.arena
    token, user_id = stage.new_user()
    second = arena.admin("user", "token-create", user_id)
    links = [sign_in(arena.address, source, second["token"]) for source in ATTACKERS[:3]]
    keeper = sign_in(arena.address, ATTACKERS[3], token)
    with stage.attack():
        try:
            arena.admin("user", "token-revoke", "--id", second["token_id"])
            revoked_at = time.monotonic()
            late = [
                i
                for i, link in enumerate(links)
                if not link.wait_closed(max(0.0, revoked_at + REVOKE_WITHIN - time.monotonic()))
            ]
            took = time.monotonic() - revoked_at
            still = call(keeper, 7, "workers.list")
        finally:
            for link in [*links, keeper]:
                link.close()
    assert not late, f"links {late} of 3 still open {took:.2f}s after the token was revoked"
    assert still.result is not None, f"the user's other token lost its link: {still}"
    stage.assert_survived()


def test_deregistered_worker_that_never_acknowledges(stage: Stage) -> None:
    """A worker is deregistered and ignores the ``deregister``: its link is closed (after the
    ``deregister_grace``), and on every reconnect it is never greeted as a working worker nor
    served hub requests."""
    arena = stage.arena
    token, _ = stage.new_user()
    ((worker_id, worker_token),) = fake_workers(arena.address, ATTACKER, token, 1)
    grace = float(LIMITS["deregister_grace"])
    with stage.attack():
        worker = connect_worker(arena.address, ATTACKER, worker_token)
        greeting, _ = worker.wait_for(lambda m: isinstance(m, WorkerGreeting), 5.0)
        assert greeting is not None, "the worker was not greeted before it was deregistered"
        owner = sign_in(arena.address, ATTACKERS[1], token)
        try:
            answer = call(owner, 1, "worker.deregister", worker_id=worker_id)
            assert answer.result is not None, answer
            told, _ = worker.wait_for(lambda m: isinstance(m, Deregister), 5.0)
            assert told is not None, "the worker was not sent deregister"
            assert worker.wait_closed(grace + 3.0), (
                f"the unacknowledging worker's link is still open {grace + 3.0:g}s after "
                f"deregister (deregister_grace {grace:g}s)"
            )
            worker.close()
            for attempt in range(2):
                again = connect_worker(arena.address, ATTACKER, worker_token)
                try:
                    again.send(HubRequest(50 + attempt, "workers.list", {}))
                    seen: list[object] = []
                    end = time.monotonic() + 2.0
                    while time.monotonic() < end and not again.closed:
                        seen += again.receive(end - time.monotonic())
                finally:
                    again.close()
                assert not any(isinstance(m, WorkerGreeting) for m in seen), (
                    f"reconnect {attempt + 1}: greeted as a working worker: {seen}"
                )
                served = [m for m in seen if isinstance(m, HubResponse) and m.result is not None]
                assert not served, f"reconnect {attempt + 1}: served hub requests: {served}"
            listed = call(owner, 2, "workers.list")
            assert listed.result is not None
            assert not any(
                w["id"] == worker_id and w["online"] for w in listed.result["workers"]
            ), listed.result
        finally:
            owner.close()
    stage.assert_survived()


def test_seventy_kilobyte_worker_name_is_refused(stage: Stage) -> None:
    """``register`` with a 70 KB name is refused (not stored), and the owner's
    ``leapcore remote worker list`` still works."""
    arena = stage.arena
    token, user_id = stage.new_user()
    with stage.attack():
        key = mint_key(arena.address, ATTACKER, token)
        answer = register(arena.address, ATTACKER, key, "w" * 70_000)
    assert not isinstance(answer, Registered), "a 70 KB worker name was registered"
    listing = arena.remote_as(token, "worker", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    db = sqlite3.connect(arena.env.hub_dir / "hub.db", timeout=10)
    try:
        (longest,) = db.execute(
            "SELECT coalesce(max(length(name)), 0) FROM workers WHERE owner_id = ?", (user_id,)
        ).fetchone()
    finally:
        db.close()
    assert longest == 0, f"a worker named with {longest} characters was stored"
    stage.assert_survived()
