"""The worker remembers its hub (``hub.json``) and retires its identity only when that hub
says so: against a scripted fake hub, under a MockClock."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path

import pytest
import trio
import trio.testing
from support.fakehub import FakeHub, HubLink, Recorder, hub_running
from support.helpers import expect

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import AlreadyExists, ConfigError, HubMismatch, KeyFileError
from leapcore.proto.link_codec import (
    Connect,
    Deregister,
    DeregisterAck,
    ErrorMessage,
    Heartbeat,
    Register,
    Registered,
    WorkerGreeting,
)
from leapcore.store.workerstate import (
    HUB_FILE,
    STATE_FILE,
    HubRecord,
    WorkerState,
    load_hub,
    save_hub,
    save_state,
)
from leapcore.worker.daemon import HUB_REQUIRED, Worker, WorkerExit
from leapcore.worker.signpool import InlineSigner

TOKEN = "auth-token-hub-identity"
HUB_ID = "0123456789abcdef"
OTHER_ID = "fedcba9876543210"
URL = "http://hub.example:4327"
SAVED = HubRecord(HUB_ID, URL, "2026-12-05T08:15:00Z")


def worker_for(data_dir: Path, hub: FakeHub, *, hub_url: str = URL, **kw: object) -> Worker:
    return Worker(
        data_dir,
        hub_url=hub_url,
        name="box",
        labels={"site": "lab"},
        uniform=Recorder(),
        signer=InlineSigner(),
        dial=hub.dial,
        **kw,  # type: ignore[arg-type]
    )


def files(data_dir: Path) -> dict[str, bytes]:
    """Every file in ``data_dir``, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir()) if p.is_file()}


@pytest.fixture
def registered(tmp_path: Path, generated_keypair: WorkerKeyPair) -> Path:
    """A registered worker with its hub recorded."""
    save_state(tmp_path, WorkerState("w-1", TOKEN, generated_keypair))
    save_hub(tmp_path, SAVED)
    return tmp_path


async def greet(link: HubLink, hub_id: str = HUB_ID) -> Connect:
    connect = await link.recv()
    assert isinstance(connect, Connect)
    assert isinstance(await link.recv(), Heartbeat)
    await link.send(WorkerGreeting("w-1", "u-1", "alice", hub_id))
    return connect


# -- registration ---------------------------------------------------------------------------


async def test_registration_records_the_hub_before_the_credentials(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    seen: dict[str, object] = {}

    async def script(link: HubLink, n: int) -> None:
        assert isinstance(await link.recv(), Register)
        await link.send(Registered("w-42", "tok-42", HUB_ID))

    async with hub_running(script) as hub:
        worker = worker_for(tmp_path, hub, registration_key="reg-key-0000000000000000")
        worker.prepare()
        seen["before"] = load_hub(tmp_path)
        await worker.register()
    assert seen["before"] is None
    record = load_hub(tmp_path)
    assert record is not None and worker.hub_record == record
    assert (record.hub_id, record.hub_url) == (HUB_ID, URL)
    assert record.registered_at is not None and record.registered_at.endswith("Z")
    assert stat.S_IMODE(os.stat(tmp_path / HUB_FILE).st_mode) == 0o600
    # state.json is LeapMux's, unchanged in shape: its eight keys, no hub in it.
    document = json.loads((tmp_path / STATE_FILE).read_text())
    assert list(document)[:2] == ["worker_id", "auth_token"] and len(document) == 8
    assert "hub" not in (tmp_path / STATE_FILE).read_text()


# -- which hub ------------------------------------------------------------------------------


async def test_an_unregistered_worker_needs_a_hub_url(tmp_path: Path) -> None:
    worker = Worker(tmp_path / "data", name="box", registration_key="k" * 24)
    expect(ConfigError, f"^{re.escape(HUB_REQUIRED)}$", worker.prepare)
    assert not (tmp_path / "data").exists()  # refused before anything was written


async def test_a_registered_worker_without_a_record_needs_a_hub_url(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    save_state(tmp_path, WorkerState("w-1", TOKEN, generated_keypair))
    before = files(tmp_path)
    exc = expect(ConfigError, "registered before its hub was recorded", Worker(
        tmp_path, name="box").prepare)  # fmt: skip
    assert str(exc).startswith(HUB_REQUIRED)
    assert files(tmp_path) == before


async def test_a_registered_worker_dials_its_recorded_hub(
    registered: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "leapcore.worker")
    worker = Worker(registered, name="box")
    assert worker.prepare().value == "connect"
    assert worker.hub_url == URL
    assert f"no hub URL given: using {URL}" in caplog.text
    # A URL given on the command line wins (hubs move), and that is said.
    caplog.clear()
    moved = Worker(registered, hub_url="http://new.example:1", name="box")
    moved.prepare()
    assert moved.hub_url == "http://new.example:1"
    assert f"this worker registered with hub {HUB_ID} at {URL}" in caplog.text


async def test_a_corrupt_hub_record_is_refused(registered: Path) -> None:
    (registered / HUB_FILE).write_text('{"hub_id": 1}')
    before = files(registered)
    expect(KeyFileError, "hub record lacks", Worker(registered, hub_url=URL, name="box").prepare)
    assert files(registered) == before


async def test_the_fingerprint_is_logged_at_start(
    registered: Path,
    generated_keypair: WorkerKeyPair,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.INFO, "leapcore.worker")

    async def script(link: HubLink, n: int) -> None:
        await greet(link)
        await link.drain()

    async with hub_running(script) as hub:
        worker = worker_for(registered, hub, encryption_mode="classic")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await worker.wait_online()
            worker.stop()
    lines = [r.getMessage() for r in caplog.records if "fingerprint" in r.getMessage()]
    assert lines == [
        f"worker fingerprint {generated_keypair.public.fingerprint} (worker id w-1, classic mode)"
    ]
    assert TOKEN not in caplog.text


# -- rejections: retire only on the registered hub's word ---------------------------------


RETIRES = [
    ("worker_deleted", HUB_ID, SAVED),  # the hub it registered with
    ("worker_deleted", OTHER_ID, None),  # no record: only an issuing database says this
]
KEEPS = [
    ("worker_deleted", OTHER_ID, SAVED),  # another hub claims a deletion it cannot have made
    ("worker_deleted", "", SAVED),
    ("unauthenticated", OTHER_ID, SAVED),  # a different hub, or its own on an empty database
    ("unauthenticated", HUB_ID, SAVED),
    ("unauthenticated", OTHER_ID, None),
]


@pytest.mark.parametrize(("code", "hub_id", "saved"), RETIRES)
async def test_worker_deleted_by_its_hub_retires_the_identity(
    tmp_path: Path,
    generated_keypair: WorkerKeyPair,
    autojump_clock: trio.testing.MockClock,
    code: str,
    hub_id: str,
    saved: HubRecord | None,
) -> None:
    save_state(tmp_path, WorkerState("w-1", TOKEN, generated_keypair))
    if saved is not None:
        save_hub(tmp_path, saved)
    before = files(tmp_path)

    async def script(link: HubLink, n: int) -> None:
        await link.recv()
        await link.send(ErrorMessage(code, "deleted", hub_id))

    async with hub_running(script) as hub:
        worker = worker_for(tmp_path, hub)
        assert await worker.run() is WorkerExit.WIPED
    assert not (tmp_path / STATE_FILE).exists() and not (tmp_path / HUB_FILE).exists()
    kept = {p.name.split(".deregistered-")[0]: p.read_bytes() for p in worker.retired}
    assert kept == before  # every file kept, byte for byte, under its new name
    for path in worker.retired:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize(("code", "hub_id", "saved"), KEEPS)
async def test_any_other_rejection_changes_nothing(
    tmp_path: Path,
    generated_keypair: WorkerKeyPair,
    autojump_clock: trio.testing.MockClock,
    code: str,
    hub_id: str,
    saved: HubRecord | None,
) -> None:
    save_state(tmp_path, WorkerState("w-1", TOKEN, generated_keypair))
    if saved is not None:
        save_hub(tmp_path, saved)
    before = files(tmp_path)

    async def script(link: HubLink, n: int) -> None:
        await link.recv()
        await link.send(ErrorMessage(code, "nope", hub_id))

    async with hub_running(script) as hub:
        worker = worker_for(tmp_path, hub, hub_url="http://other.example:9")
        with pytest.raises(HubMismatch) as info:
            await worker.run()
    assert files(tmp_path) == before
    exc = info.value
    assert exc.code == "hub_mismatch" and exc.hub_code == code
    assert (exc.hub_url, exc.hub_id) == ("http://other.example:9", hub_id)
    text = str(exc)
    assert text.startswith(f"hub at http://other.example:9 (hub id {hub_id or 'not given'}) ")
    assert text.endswith("; state.json left untouched")
    if saved is not None:
        assert (exc.registered_hub_id, exc.registered_url) == (HUB_ID, URL)
        assert f"it registered with hub {HUB_ID} at {URL}" in text
    else:
        assert "it recorded no hub" in text
    assert len(hub.links) == 1  # never retried


async def test_worker_deleted_on_a_live_link_retires(
    registered: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(link: HubLink, n: int) -> None:
        await greet(link)
        await link.send(ErrorMessage("worker_deleted", "deleted", HUB_ID))

    async with hub_running(script) as hub:
        worker = worker_for(registered, hub)
        assert await worker.run() is WorkerExit.WIPED
    assert sorted(p.name.split(".deregistered-")[0] for p in worker.retired) == [
        HUB_FILE,
        STATE_FILE,
    ]


async def test_a_name_clash_at_connect_is_refused_and_changes_nothing(
    registered: Path, autojump_clock: trio.testing.MockClock
) -> None:
    before = files(registered)

    async def script(link: HubLink, n: int) -> None:
        connect = await link.recv()
        assert isinstance(connect, Connect)
        assert (connect.name, connect.labels) == ("box", {"site": "lab"})
        await link.send(
            ErrorMessage("already_exists", "another worker is already called 'box'", HUB_ID)
        )

    async with hub_running(script) as hub:
        worker = worker_for(registered, hub)
        with pytest.raises(AlreadyExists, match="another worker is already called 'box'"):
            await worker.run()
    assert files(registered) == before
    assert len(hub.links) == 1


async def test_deregistration_keeps_both_files(
    registered: Path, autojump_clock: trio.testing.MockClock
) -> None:
    before = files(registered)

    async def script(link: HubLink, n: int) -> None:
        await greet(link)
        await link.send(Deregister(4, "worker deregistered by owner"))
        assert await link.recv() == DeregisterAck(4)
        await link.drain()

    async with hub_running(script) as hub:
        worker = worker_for(registered, hub)
        assert await worker.run() is WorkerExit.DEREGISTERED
    assert {p.name.split(".deregistered-")[0]: p.read_bytes() for p in worker.retired} == before
    assert files(registered).keys() == {p.name for p in worker.retired}


# -- the record follows the hub -------------------------------------------------------------


async def test_a_greeting_records_a_hub_not_yet_recorded(
    tmp_path: Path, generated_keypair: WorkerKeyPair, autojump_clock: trio.testing.MockClock
) -> None:
    save_state(tmp_path, WorkerState("w-1", TOKEN, generated_keypair))
    state_before = (tmp_path / STATE_FILE).read_bytes()

    async def script(link: HubLink, n: int) -> None:
        await greet(link)
        await link.drain()

    recorded: list[HubRecord | None] = []
    async with hub_running(script) as hub:
        worker = worker_for(tmp_path, hub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await worker.wait_online()
            recorded.append(load_hub(tmp_path))
            worker.stop()
    assert recorded == [HubRecord(HUB_ID, URL, None)]
    assert (tmp_path / STATE_FILE).read_bytes() == state_before


MOVED = "http://moved.example:1"


@pytest.mark.parametrize(
    ("greeting_id", "url", "expected"),
    [
        (HUB_ID, URL, SAVED),  # nothing changed: not rewritten
        (HUB_ID, MOVED, HubRecord(HUB_ID, MOVED, SAVED.registered_at)),  # the hub moved
        ("", MOVED, SAVED),  # a hub that does not name itself: kept
        (OTHER_ID, URL, HubRecord(OTHER_ID, URL, None)),  # the token's issuer is the one greeting
    ],
)
async def test_a_greeting_keeps_the_record_true(
    registered: Path,
    autojump_clock: trio.testing.MockClock,
    greeting_id: str,
    url: str,
    expected: HubRecord,
) -> None:
    mtime = os.stat(registered / HUB_FILE).st_mtime_ns
    (registered / HUB_FILE).chmod(0o600)

    async def script(link: HubLink, n: int) -> None:
        await greet(link, greeting_id)
        await link.drain()

    async with hub_running(script) as hub:
        worker = worker_for(registered, hub, hub_url=url)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await worker.wait_online()
            worker.stop()
    assert load_hub(registered) == expected
    if expected == SAVED:
        assert os.stat(registered / HUB_FILE).st_mtime_ns == mtime
