"""Naming things the way a person does, through a real hub on loopback: a worker by its
name or the start of its id (``HubSession.resolve_worker``), a registration key by its id or
by the key itself (``list_registration_keys``, ``revoke_registration_key``); and
``leapcore.connect`` finding the hub, the token and the CA file ``remote login`` saved."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from support.hubpeer import now_ms, running_hub

import leapcore
from leapcore.errors import (
    AmbiguousReference,
    ConfigError,
    KeyFileError,
    LinkClosed,
    NotFound,
)
from leapcore.peer.connect import (
    Credentials,
    credentials_path,
    default_hub_path,
    load_credentials,
    load_default_hub,
    load_token,
    resolve_hub,
    save_credentials,
    save_default_hub,
)
from leapcore.peer.hubsession import hub_session


async def test_resolve_worker_by_id_name_and_prefix(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        box, _ = await env.register(name="box")
        laptop, _ = await env.register(name="laptop")
        bob, _ = env.store.create_user("bob", now_ms())
        theirs, _ = await env.register(env.key(bob.id), name="theirs")
        async with hub_session(env.url, env.token) as session:
            assert (await session.resolve_worker(box))["id"] == box
            assert (await session.resolve_worker("laptop"))["id"] == laptop
            assert (await session.resolve_worker(laptop[:8]))["name"] == "laptop"
            # Another user's worker is not among the caller's: by id, name or prefix.
            for ref in (theirs, "theirs", theirs[:8]):
                with pytest.raises(NotFound):
                    await session.resolve_worker(ref)

    # Two ids that share a start: the hub's store is given them directly.
    async with running_hub(tmp_path / "two") as env:
        one, _ = await env.register(name="one")
        two, _ = await env.register(name="two")
        db = sqlite3.connect(tmp_path / "two" / "hub.db")
        try:
            with db:
                db.execute("UPDATE workers SET id = ? WHERE id = ?", ("Samea" + one[5:], one))
                db.execute("UPDATE workers SET id = ? WHERE id = ?", ("Sameb" + two[5:], two))
        finally:
            db.close()
        async with hub_session(env.url, env.token) as session:
            with pytest.raises(AmbiguousReference) as caught:
                await session.resolve_worker("Same")
            assert caught.value.candidates == (
                ("Samea" + one[5:], "one"),
                ("Sameb" + two[5:], "two"),
            )
            assert (await session.resolve_worker("Sameb"))["name"] == "two"


async def test_registration_keys_by_id_or_by_value(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        bob, bob_token = env.store.create_user("bob", now_ms())
        bobs_key = env.key(bob.id)
        async with hub_session(env.url, env.token) as session:
            assert await session.list_registration_keys() == []
            first = (await session.create_registration_key())["registration_key"]
            second = (await session.create_registration_key())["registration_key"]
            keys = await session.list_registration_keys()
            assert [k["prefix"] for k in keys] == [second[:6], first[:6]]  # newest first
            assert [k["state"] for k in keys] == ["live", "live"]
            assert set(keys[0]) == {"id", "prefix", "created_at", "expires_at", "state"}
            assert all(first not in json.dumps(k) and second not in json.dumps(k) for k in keys)
            second_id, first_id = keys[0]["id"], keys[1]["id"]

            # By its value (what `reg-key create` printed) and by its id: the same key.
            assert await session.revoke_registration_key(first) == first_id
            assert await session.revoke_registration_key(first_id) == first_id  # again: fine
            assert await session.registration_key_state(first) == "expired"
            assert await session.revoke_registration_key(second_id) == second_id
            assert [k["state"] for k in await session.list_registration_keys()] == [
                "expired",
                "expired",
            ]
            # Bob's key, by value or by id, is nobody's here; nor is a made-up one.
            bobs_id = next(
                k.id for k in env.store.list_registration_keys(now_ms()) if k.created_by == bob.id
            )
            for ref in (bobs_key, bobs_id, "nope"):
                with pytest.raises(NotFound, match="give its id or the key itself"):
                    await session.revoke_registration_key(ref)
        async with hub_session(env.url, bob_token) as session:
            assert [k["id"] for k in await session.list_registration_keys()] == [bobs_id]
            assert await session.registration_key_state(bobs_key) == "live"


# -- what `remote login` saves, as the library reads it ---------------------------------------


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("LEAPCORE_HUB", "LEAPCORE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEAPCORE_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def test_credentials_and_default_hub_files(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = "https://hub.example:8443"
    assert load_credentials(hub) is None and load_default_hub() is None
    assert resolve_hub() is None
    monkeypatch.chdir(config.parent)
    path = save_credentials(hub, "t" * 48, ca_file="ca.pem")
    assert path == credentials_path(hub) == config / "hub.example_8443.json"
    assert load_credentials(hub) == Credentials(hub, "t" * 48, str(config.parent / "ca.pem"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o700

    save_default_hub(hub)
    assert default_hub_path() == config / "default_hub.json"
    assert stat.S_IMODE(default_hub_path().stat().st_mode) == 0o600
    assert load_default_hub() == hub
    assert resolve_hub() == hub
    monkeypatch.setenv("LEAPCORE_HUB", "http://env:1")
    assert resolve_hub() == "http://env:1"
    assert resolve_hub("http://flag:2") == "http://flag:2"
    monkeypatch.setenv("LEAPCORE_HUB", "")  # empty counts as unset
    assert resolve_hub() == hub

    # A file written before ca_file existed still reads; so does one without it.
    old = credentials_path("http://old:1")
    old.write_text(json.dumps({"hub": "http://old:1", "token": "x" * 48}))
    assert load_credentials("http://old:1") == Credentials("http://old:1", "x" * 48, None)
    assert load_token("http://old:1") == "x" * 48
    save_credentials("http://old:1", "y" * 48)
    assert "ca_file" not in json.loads(old.read_text())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"hub": "h"}', "has no token"),
        ('{"token": "t", "ca_file": 5}', "bad ca_file"),
    ],
)
def test_a_bad_credentials_file_is_a_key_file_error(
    config: Path, content: str, message: str
) -> None:
    config.mkdir(mode=0o700)
    credentials_path("http://h:1").write_text(content)
    with pytest.raises(KeyFileError, match=message):
        load_credentials("http://h:1")


def test_a_bad_default_hub_file_is_a_key_file_error(config: Path) -> None:
    config.mkdir(mode=0o700)
    default_hub_path().write_text('{"hub": ""}')
    with pytest.raises(KeyFileError, match="names no hub"):
        resolve_hub()
    assert resolve_hub("http://given:1") == "http://given:1"  # not read when not needed


async def test_connect_uses_the_default_hub_token_and_ca(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="no hub"):
        async with leapcore.connect():
            pass
    async with running_hub(tmp_path) as env:
        save_credentials(env.url, env.token)
        save_default_hub(env.url)
        async with leapcore.connect() as session:
            assert session.url == env.url and session.user_name == "alice"

    # The CA file saved for an https:// hub is the one trusted (here: one that cannot be
    # loaded, which fails before any connection); without one, the dial itself fails.
    tls_hub = "https://127.0.0.1:1"
    save_credentials(tls_hub, "t" * 48)
    with pytest.raises(LinkClosed):
        async with leapcore.connect(tls_hub):
            pass
    save_credentials(tls_hub, "t" * 48, ca_file=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(ConfigError, match=r"cannot load CA file .*missing-ca\.pem"):
        async with leapcore.connect(tls_hub):
            pass

    # LEAPCORE_HUB wins over the default hub.
    monkeypatch.setenv("LEAPCORE_HUB", "http://127.0.0.1:2")
    with pytest.raises(ConfigError, match=r"no API token for http://127\.0\.0\.1:2"):
        async with leapcore.connect():
            pass
