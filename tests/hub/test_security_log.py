"""Security events are logged once each, with their name, reason and peer, never a secret;
the websockets library's per-connection lines stay out of INFO; ``--log-format json``.

The hub's events are provoked on a real hub on loopback (:mod:`support.hubpeer`); the
worker's key mismatch on a real pin store; the log formats with the real ``leapcore-hub``
and ``leapcore-worker`` processes (:mod:`support.procs`).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from support.hubpeer import Env, now_ms, running_hub, until_closed, wait_until
from support.procs import Env as ProcEnv
from support.procs import env_fixture  # noqa: F401 (env_fixture: the fixture)

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import ConfigError, KeyMismatch
from leapcore.net.security_log import EVENTS, FIELDS, security_event
from leapcore.proto.limits import HubLimits
from leapcore.proto.link_codec import ClientHello, Connect, Register
from leapcore.proto.link_state import LinkRole
from leapcore.store.config import hub_settings, worker_settings
from leapcore.store.hubstore import SQLiteHubStore
from leapcore.worker.daemon import Worker
from leapcore_cli.logs import JsonFormatter, TextFormatter, fields_of, quiet_libraries

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
PEER = re.compile(r"^127\.0\.0\.1:\d+$")


def events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "event")]


def everything(caplog: pytest.LogCaptureFixture) -> str:
    """Every record's message and fields, as one text."""
    return "\n".join(
        r.getMessage() + " " + json.dumps(fields_of(r), default=str) for r in caplog.records
    )


def other_store(env: Env) -> SQLiteHubStore:
    """A second connection to the hub's database: what the admin CLI uses."""
    return SQLiteHubStore(env.store.path, create=False)


async def refused(env: Env, role: LinkRole, message: ClientHello | Connect | Register) -> None:
    async with env.link(role) as peer:
        await peer.send(message)
        await until_closed(peer, 5)


async def test_each_hub_security_event_is_logged_once_with_reason_and_peer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limits = HubLimits(revocation_check_interval=0.05)
    async with running_hub(tmp_path, limits=limits) as env:
        presented = "B" * 48  # a credential nobody minted
        # Refused sign-ins: one API token, two worker tokens, three registration keys.
        await refused(env, LinkRole.CLIENT, ClientHello(1, presented))
        await refused(env, LinkRole.WORKER, Connect(1, presented))
        record, revoked_key = env.store.mint_registration_key(env.user_id, now_ms())
        env.store.revoke_registration_key(record.id, now_ms())
        expired_key = env.key(at=now_ms() - 3_600_000)
        used_key = env.key()
        await env.register(used_key, name="first")
        for key in (revoked_key, expired_key, used_key):
            await refused(env, LinkRole.WORKER, Register(1, key, "box", "1.0"))
        gone_id, gone_token = await env.register(name="gone")
        admin = other_store(env)
        note = admin.deregister_worker(gone_id, now_ms(), requested_by=None)
        admin.notification_delivered(note.id, now_ms())
        await refused(env, LinkRole.WORKER, Connect(1, gone_token))

        # Revocations seen on live links: a revoked API token, a deleted worker, a worker
        # deregistered by the administrator.
        second = env.store.create_token("alice", now_ms())
        second_id = env.store.find_token(second).id
        deleted_id, deleted_token = await env.register(name="deleted")
        leaving_id, leaving_token = await env.register(name="leaving")
        async with env.client(second) as client, env.worker(deleted_token) as deleted:
            env.store.revoke_token(second_id, now_ms())
            note = admin.deregister_worker(deleted_id, now_ms(), requested_by=None)
            admin.notification_delivered(note.id, now_ms())
            await until_closed(client, 5)
            await until_closed(deleted, 5)
        async with env.worker(leaving_token):
            admin.deregister_worker(leaving_id, now_ms(), requested_by=None)

            def seen() -> bool:
                return any(getattr(r, "worker_id", "") == leaving_id for r in events(caplog))

            await wait_until(seen)
        admin.close()

        # Deliberate actions of an owner through the hub.
        owned_id, _ = await env.register(name="owned")
        revocable = env.key()
        async with env.client() as client:
            answer = await client.request("worker.deregister", 1, worker_id=owned_id)
            assert answer.error_code is None, answer
            answer = await client.request("regkey.revoke", 2, registration_key=revocable)
            assert answer.error_code is None, answer

    logged = events(caplog)
    assert Counter(r.event for r in logged) == {  # type: ignore[attr-defined]
        "api_token_rejected": 1,
        "worker_token_rejected": 2,
        "registration_key_rejected": 3,
        "api_token_revoked": 1,
        "worker_deleted": 1,
        "worker_deregistered": 2,
        "registration_key_revoked": 1,
    }
    for r in logged:
        event = r.event  # type: ignore[attr-defined]
        assert r.levelno == EVENTS[event][0], (event, r.levelname)
        assert r.reason, event  # type: ignore[attr-defined]
        assert PEER.match(r.peer), (event, r.peer)  # type: ignore[attr-defined]
        assert r.peer in r.getMessage(), (event, r.getMessage())  # type: ignore[attr-defined]
        assert set(fields_of(r)) <= FIELDS | {"event"}, fields_of(r)

    def one(event: str, **fields: str) -> logging.LogRecord:
        found = [
            r
            for r in logged
            if r.event == event  # type: ignore[attr-defined]
            and all(getattr(r, k, None) == v for k, v in fields.items())
        ]
        assert len(found) == 1, (event, fields, [fields_of(r) for r in logged])
        return found[0]

    one("api_token_rejected", reason="invalid API token", transport="websocket")
    one("worker_token_rejected", reason="invalid auth token")
    one("worker_token_rejected", reason="token of a deleted worker")
    one("api_token_revoked", token_id=second_id, user="alice")
    one("worker_deleted", worker_id=deleted_id)
    one("worker_deregistered", worker_id=leaving_id, reason="worker deregistered by administrator")
    one("worker_deregistered", worker_id=owned_id, user="alice")
    one("registration_key_revoked", user="alice")

    text = everything(caplog)
    secrets = [env.token, second, presented, revoked_key, expired_key, used_key, revocable]
    secrets += [gone_token, deleted_token, leaving_token]
    leaked = [s[:4] for s in secrets if s in text]
    assert leaked == []


def test_a_cross_worker_key_mismatch_is_logged_once_on_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers do not report a mismatch to the hub: the worker logs it where it finds it."""
    caplog.set_level(logging.INFO)
    worker = Worker(tmp_path, hub_url="http://127.0.0.1:9", name="box")
    pins = worker.cross_worker_pins
    pinned, presented = WorkerKeyPair.generate(), WorkerKeyPair.generate()
    pins.verify("sibling", pinned.public)
    assert events(caplog) == []
    with pytest.raises(KeyMismatch):
        pins.verify("sibling", presented.public)
    [record] = events(caplog)
    assert record.levelno == logging.WARNING
    assert fields_of(record) == {
        "event": "key_mismatch",
        "reason": "keys differ from the pin",
        "peer": "http://127.0.0.1:9",
        "worker_id": "sibling",
        "expected_fingerprint": pinned.public.fingerprint,
        "presented_fingerprint": presented.public.fingerprint,
    }
    assert presented.public.fingerprint in record.getMessage()


def test_a_field_that_is_not_listed_is_refused_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("leapcore.test")
    with pytest.raises(ValueError, match="unknown field"):
        security_event(log, "api_token_rejected", "x", reason="r", token="secret")
    with pytest.raises(ValueError, match="unknown security event"):
        security_event(log, "nope", "x")
    assert events(caplog) == []


def test_every_event_is_documented() -> None:
    text = DOCS.read_text()
    missing = [name for name in EVENTS if f"`{name}`" not in text]
    assert missing == []


# -- the formats ------------------------------------------------------------------------------


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("leapcore.hub.server", logging.WARNING, "f", 1, "a %s", ("b",), None)
    record.__dict__.update(extra)
    return record


def test_the_json_format_is_one_object_with_the_fields() -> None:
    line = JsonFormatter().format(_record(event="api_token_rejected", peer="127.0.0.1:5"))
    document = json.loads(line)
    assert "\n" not in line
    assert document.pop("ts").endswith("Z")
    assert document == {
        "level": "WARNING",
        "logger": "leapcore.hub.server",
        "msg": "a b",
        "event": "api_token_rejected",
        "peer": "127.0.0.1:5",
    }
    assert TextFormatter().format(_record(event="x")).endswith("a b [event=x]")
    assert TextFormatter().format(_record()).endswith("leapcore.hub.server: a b")


def test_websockets_connection_lines_show_only_at_debug_and_frames_never() -> None:
    server = logging.getLogger("websockets.server")

    def line(msg: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("websockets.server", level, "f", 1, msg, (), None)

    try:
        quiet_libraries(logging.INFO)
        assert not logging.getLogger("websockets").isEnabledFor(logging.INFO)
        assert not server.filter(line("connection open"))
        assert server.filter(line("opening handshake failed", logging.ERROR))
        quiet_libraries(logging.DEBUG)
        shown = line("connection open")
        assert server.filter(shown) and shown.levelname == "DEBUG"
        assert not server.filter(line("< %s", logging.DEBUG))
        assert not server.filter(line("> %s", logging.DEBUG))
    finally:
        quiet_libraries(logging.INFO)  # as the test session has it


def test_log_format_is_a_checked_setting_of_hub_and_worker(tmp_path: Path) -> None:
    hub, _ = hub_settings(flags={}, env={}, home=tmp_path, config_path=None)
    worker, _ = worker_settings(flags={}, env={}, home=tmp_path, config_path=None)
    assert hub["log_format"] == worker["log_format"] == "text"
    env = {"LEAPCORE_HUB_LOG_FORMAT": "json", "LEAPCORE_WORKER_LOG_FORMAT": "json"}
    hub, _ = hub_settings(flags={}, env=env, home=tmp_path, config_path=None)
    worker, _ = worker_settings(flags={}, env=env, home=tmp_path, config_path=None)
    assert hub["log_format"] == worker["log_format"] == "json"
    env = {"LEAPCORE_HUB_LOG_FORMAT": "xml", "LEAPCORE_WORKER_LOG_FORMAT": "xml"}
    with pytest.raises(ConfigError, match=r"LEAPCORE_HUB_LOG_FORMAT.*must be one of text, json"):
        hub_settings(flags={}, env=env, home=tmp_path, config_path=None)
    with pytest.raises(ConfigError, match=r"LEAPCORE_WORKER_LOG_FORMAT.*must be one of text, json"):
        worker_settings(flags={}, env=env, home=tmp_path, config_path=None)


# -- the real processes -----------------------------------------------------------------------


def _connected(env: ProcEnv, *worker_flags: str) -> tuple[str, str]:
    """A hub, alice logged in and one classic worker online; a refused sign-in made with a
    token nobody minted. Returns (hub stderr, worker stderr) once the refusal is logged."""
    hub = env.start_hub()
    env.login()
    env.start_worker("box", env.reg_key(), flags=["--encryption-mode", "classic", *worker_flags])
    env.wait_online("box")
    bad = env.remote("worker", "list", "--token", "C" * 48)
    assert bad.returncode == 8, bad.stderr
    hub_err = hub.logged("api_token_rejected")
    return hub_err, env.worker_procs["box"].stderr()


def test_the_hub_logs_no_websockets_connection_lines_at_info(env: ProcEnv) -> None:
    hub_err, worker_err = _connected(env)
    assert " is online (websocket)" in hub_err  # INFO lines are there
    assert "[event=api_token_rejected]" in hub_err
    for text in (hub_err, worker_err):
        assert "connection open" not in text and "connection closed" not in text
        assert " websockets." not in text
        assert "C" * 48 not in text and env.token not in text


def test_log_format_json_is_one_object_per_line(env: ProcEnv) -> None:
    env.env["LEAPCORE_HUB_LOG_FORMAT"] = "json"  # the hub by its setting, the worker by flag
    hub_err, worker_err = _connected(env, "--log-format", "json")
    documents = []
    for text, prog in ((hub_err, "leapcore-hub"), (worker_err, "leapcore-worker")):
        for line in text.splitlines():
            if line.startswith(f"{prog}: "):
                continue  # the commands' own notes, not log records
            document = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= set(document), line
            assert datetime.fromisoformat(document["ts"]).utcoffset() is not None
            documents.append(document)
    assert any(d["logger"].startswith("leapcore.worker") for d in documents)
    [event] = [d for d in documents if d.get("event") == "api_token_rejected"]
    assert event["level"] == "WARNING"
    assert event["reason"] == "invalid API token"
    assert PEER.match(event["peer"]) and event["transport"] == "websocket"
    assert "C" * 48 not in hub_err and env.token not in hub_err
