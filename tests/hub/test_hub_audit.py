"""The hub's audit trail, written by a real hub on loopback: each security event leaves its
row (kind, actor, worker, address, detail) and never a credential; old rows are pruned by
the hub's wall clock (passed in, never slept on)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
import trio.testing
from support.hubpeer import Env, now_ms, running_hub, scrape, value

from leapcore.hub.server import Hub
from leapcore.proto.audit_events import ANONYMOUS, AuditEvent
from leapcore.proto.limits import HubLimits
from leapcore.proto.link_codec import ClientHello, Connect, ErrorMessage, Register
from leapcore.proto.link_state import LinkRole
from leapcore.proto.ratelimit import LOG_LIMIT, LOG_WINDOW
from leapcore.store.hubstore import SQLiteHubStore


def events(store: SQLiteHubStore, kind: str) -> list[AuditEvent]:
    return store.list_audit(kind=kind)


def table_text(path: Path) -> str:
    """Every cell of the audit table, as one text (to look for secrets in)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT * FROM audit_events").fetchall()
    return "\n".join(repr(cell) for row in rows for cell in row)


def is_loopback(address: str | None) -> bool:
    return address is not None and address.startswith("127.0.0.1:")


async def refused(env: Env, role: LinkRole, message: Connect | ClientHello | Register) -> str:
    async with env.link(role) as peer:
        await peer.send(message)
        [error] = await peer.until_closed()
        assert isinstance(error, ErrorMessage)
        return error.code


async def test_registration_is_audited_with_the_new_worker_as_actor(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        key = env.key()
        key_id = env.store.list_registration_keys(now_ms())[0].id
        worker_id, token = await env.register(key, name="box")
        [event] = events(env.store, "worker_registered")
        assert event.actor == f"worker:{worker_id}"
        assert event.worker_id == worker_id
        assert is_loopback(event.address)
        assert event.detail == {
            "user": "alice",
            "name": "box",
            "registration_key_id": key_id,
            "auto_registered": False,
        }
        assert abs(event.at - now_ms() / 1000) < 60
        text = table_text(tmp_path / "hub.db")
        assert key not in text and token not in text


async def test_refused_credentials_are_audited_without_the_credential(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        bad_worker, bad_api, bad_key = "w" * 48, "a" * 48, "k" * 48
        assert await refused(env, LinkRole.WORKER, Connect(1, bad_worker)) == "unauthenticated"
        assert await refused(env, LinkRole.CLIENT, ClientHello(1, bad_api)) == "unauthenticated"
        assert (
            await refused(env, LinkRole.WORKER, Register(1, bad_key, "x", "1.0"))
            == "unauthenticated"
        )
        tokens = events(env.store, "token_refused")
        assert sorted(e.detail["credential"] for e in tokens) == ["api_token", "worker_token"]
        [key] = events(env.store, "registration_key_refused")
        for event in (*tokens, key):
            assert event.actor == ANONYMOUS
            assert event.worker_id is None
            assert is_loopback(event.address)
            assert event.detail["reason"]
        text = table_text(tmp_path / "hub.db")
        for secret in (bad_worker, bad_api, bad_key):
            assert secret not in text


async def test_a_flood_of_bad_tokens_is_folded_into_one_row(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_hub(tmp_path) as env:
        for _ in range(LOG_LIMIT + 5):
            assert await refused(env, LinkRole.WORKER, Connect(1, "w" * 48)) == "unauthenticated"
        assert len(events(env.store, "token_refused")) == LOG_LIMIT
        await trio.sleep(LOG_WINDOW + 1)  # the periodic check reports what was held back
        newest = events(env.store, "token_refused")
        assert len(newest) == LOG_LIMIT + 1
        assert newest[0].detail == {
            "credential": "worker_token",
            "reason": "rate limited",
            "suppressed": 5,
        }


async def test_owner_deregistration_and_key_revocation_are_audited(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, _ = await env.register()
        async with env.client() as client:
            response = await client.request("regkey.create", 1)
            assert response.result is not None
            key = response.result["registration_key"]
            response = await client.request("regkey.revoke", 2, registration_key=key)
            assert response.result is not None
            key_id = response.result["key_id"]
            response = await client.request("worker.deregister", 3, worker_id=worker_id)
            assert response.result is not None
        [created] = events(env.store, "registration_key_created")
        assert created.actor == "user:alice"
        assert created.detail == {"user": "alice", "registration_key_id": key_id}
        [revoked] = events(env.store, "registration_key_revoked")
        assert revoked.actor == "user:alice"
        assert revoked.detail == {"registration_key_id": key_id, "by": "owner"}
        assert is_loopback(revoked.address)
        [deregistered] = events(env.store, "worker_deregistered")
        assert deregistered.actor == "user:alice"
        assert deregistered.worker_id == worker_id
        assert deregistered.detail == {"by": "owner"}
        assert is_loopback(deregistered.address)
        assert key not in table_text(tmp_path / "hub.db")
        # The newest first, and --worker's filter finds the worker's rows only.
        assert [e.kind for e in env.store.list_audit(worker_id=worker_id)] == [
            "worker_deregistered",
            "worker_registered",
        ]


async def test_a_worker_replaced_by_a_newer_link_is_audited(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        worker_id, token = await env.register()
        async with env.worker(token) as first, env.worker(token):
            assert await first.until_closed() == []
        [event] = events(env.store, "worker_replaced")
        assert event.actor == f"worker:{worker_id}"
        assert event.worker_id == worker_id
        assert is_loopback(event.address) and is_loopback(str(event.detail["previous_address"]))


async def test_a_failed_audit_write_never_fails_the_operation(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        with sqlite3.connect(tmp_path / "hub.db") as db:  # the audit table is gone
            db.execute("DROP TABLE audit_events")
        worker_id, token = await env.register()  # registered all the same
        async with env.worker(token):
            assert env.hub.is_online(worker_id)
        assert await refused(env, LinkRole.WORKER, Connect(1, "w" * 48)) == "unauthenticated"
        assert value(await scrape(env), "audit_write_failures_total") == 2


async def test_old_events_are_pruned_by_the_hubs_wall_clock(tmp_path: Path) -> None:
    day = 86400.0
    wall = 2_000_000_000.0
    limits = HubLimits(audit_retention_days=2)
    hub = Hub(tmp_path / "hub.db", limits=limits, wall_clock=lambda: wall)
    for age in (3 * day, 2 * day + 1, 2 * day - 1, 0):
        assert hub.store.record_audit(AuditEvent(wall - age, "token_refused", ANONYMOUS))
    await hub.purge()
    assert sorted(wall - e.at for e in hub.store.list_audit()) == [0, 2 * day - 1]
    wall += day  # a day later, the next purge takes one more
    await hub.purge()
    assert [wall - e.at for e in hub.store.list_audit()] == [day]
    hub.store.close()


async def test_the_hub_prunes_when_it_starts(tmp_path: Path) -> None:
    wall = 2_000_000_000.0
    store = SQLiteHubStore(tmp_path / "hub.db")
    store.record_audit(AuditEvent(wall - 400 * 86400, "token_refused", ANONYMOUS))
    store.record_audit(AuditEvent(wall - 300 * 86400, "token_refused", ANONYMOUS))
    store.close()
    hub = Hub(tmp_path / "hub.db", wall_clock=lambda: wall)  # the default: 365 days
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: hub.serve(task_status=task_status))
        assert [round((wall - e.at) / 86400) for e in hub.store.list_audit()] == [300]
        await hub.shutdown()
