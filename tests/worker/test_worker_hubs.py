"""A worker given several hub URLs (issue 18 §2): real hubs on loopback sharing one SQLite
database (WAL: several connections, one ``hub_id``) and a real worker; the timings of the
passes under a MockClock against scripted fake hubs."""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from support.fakehub import FakeHub, HubLink, Recorder, hub_running
from support.helpers import expect
from support.hubpeer import now_ms, parse, registered_worker, serve_hub, wait_until

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import ConfigError, LinkClosed
from leapcore.hub.server import Hub
from leapcore.net.pipe import LinkPipe
from leapcore.proto.link_codec import GoAway, Register, Registered
from leapcore.store.workerstate import HUB_FILE, STATE_FILE, HubRecord, load_hub, save_hub
from leapcore.worker.daemon import Worker, WorkerExit
from leapcore.worker.metrics import WorkerMetrics
from leapcore.worker.signpool import InlineSigner

A, B, C = "http://a.example:1", "http://b.example:2", "http://c.example:3"


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def worker_at(data: Path, urls: list[str], **kw: object) -> Worker:
    return Worker(
        data,
        hub_urls=urls,
        name="box",
        encryption_mode="classic",
        signer=InlineSigner(),
        **kw,  # type: ignore[arg-type]
    )


def linked_to(hub: Hub, worker: Worker) -> bool:
    state = worker.state
    return state is not None and worker.online and hub.is_online(state.worker_id)


# -- real hubs on one database -------------------------------------------------------------------


async def test_a_worker_moves_between_the_hubs_of_one_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leapcore.worker")
    db = tmp_path / "hub.db"
    hubs = [Hub(db) for _ in range(3)]
    assert len({hub.store.hub_id for hub in hubs}) == 1  # one database, one hub id
    data = tmp_path / "worker"
    async with trio.open_nursery() as nursery:
        served = [await serve_hub(hub, nursery) for hub in hubs]
        urls = [url for url, _scope in served]
        user, _ = hubs[0].store.create_user("alice", now_ms())
        _, key = hubs[0].store.mint_registration_key(user.id, now_ms())
        # The first URL is dead from the start: the worker registers at the next one.
        worker = worker_at(data, [dead_url(), *urls], registration_key=key)
        nursery.start_soon(worker.serve)
        with trio.fail_after(10):
            await wait_until(lambda: linked_to(hubs[0], worker))
        state = worker.state
        assert state is not None
        token = state.auth_token
        record = load_hub(data)
        assert record is not None and (record.hub_id, record.hub_url) == (
            hubs[0].store.hub_id,
            urls[0],
        )

        # A graceful shutdown (go_away, 10 s): the worker moves to the next hub at once.
        before = trio.current_time()
        await hubs[0].shutdown()
        await wait_until(lambda: linked_to(hubs[1], worker))
        assert trio.current_time() - before < 5  # never the go-away's 10 s
        # An abrupt end (no go_away, the links just drop): the next hub, at once again.
        served[1][1].cancel()
        await wait_until(lambda: linked_to(hubs[2], worker))

        assert worker.state is not None and worker.state.auth_token == token
        assert worker.state.worker_id == state.worker_id  # never registered again
        assert [w.id for w in hubs[2].store.list_workers(owner_id=user.id)] == [state.worker_id]
        record = load_hub(data)
        assert record is not None and record.hub_url == urls[2]  # where it last was
        assert "reconnecting in" not in caplog.text  # no backoff wait: every move was at once
        assert f"link to {urls[0]} ended; trying {urls[1]} now" in caplog.text
        assert f"link to {urls[1]} ended; trying {urls[2]} now" in caplog.text
        samples = parse(WorkerMetrics(worker).render().decode())
        assert samples[("leapcore_worker_hub_moves_total", ())] == 2
        assert samples[("leapcore_worker_hub_index", ())] == 3  # the list's fourth URL
        worker.stop()
        await wait_until(lambda: worker.exit is WorkerExit.STOPPED)
        await hubs[2].shutdown()


async def test_a_hub_of_another_deployment_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, generated_keypair: WorkerKeyPair
) -> None:
    """A hub on another database (it does not know the token), and one on a copy of the
    worker's database under another hub id (it knows the token): neither is switched to, no
    file changes because of them, and each is said once, clearly."""
    caplog.set_level(logging.INFO, logger="leapcore.worker")
    data = tmp_path / "worker"
    data.mkdir(mode=0o700)
    home = Hub(tmp_path / "home.db")
    worker_id, _ = registered_worker(home, data, generated_keypair)
    await home.flush_last_seen()
    copy = tmp_path / "copy.db"
    with sqlite3.connect(tmp_path / "home.db") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("UPDATE hub_meta SET value = 'c0c0c0c0c0c0c0c0' WHERE key = 'hub_id'")
    stranger, twin = Hub(tmp_path / "other.db"), Hub(copy)
    assert len({home.store.hub_id, stranger.store.hub_id, twin.store.hub_id}) == 3
    # hub.json names a URL not in the list, so the pass starts at the first URL.
    save_hub(data, HubRecord(home.store.hub_id, "http://moved.example:1", None))
    state_bytes = (data / STATE_FILE).read_bytes()
    async with trio.open_nursery() as nursery:
        urls = [(await serve_hub(hub, nursery))[0] for hub in (stranger, twin, home)]
        worker = worker_at(data, urls)
        nursery.start_soon(worker.serve)
        with trio.fail_after(10):
            await wait_until(lambda: linked_to(home, worker))
        assert worker.failover is not None and worker.failover.refused == urls[:2]
        assert (data / STATE_FILE).read_bytes() == state_bytes
        record = load_hub(data)
        assert record is not None and record.hub_id == home.store.hub_id
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2
        assert errors[0].startswith(
            f"hub at {urls[0]} (hub id {stranger.store.hub_id}) does not know this worker "
            "(unauthenticated: "
        )
        assert errors[1].startswith(
            f"hub at {urls[1]} (hub id c0c0c0c0c0c0c0c0) is not the hub this worker registered "
            f"with (hub_id_mismatch: it greeted this worker as hub c0c0c0c0c0c0c0c0); it "
            f"registered with hub {home.store.hub_id} at http://moved.example:1; "
            f"{STATE_FILE} left untouched"
        )
        for url, error in zip(urls, errors, strict=False):
            assert error.endswith(f"{url} is not dialled again: it is not this worker's deployment")
        assert not twin.is_online(worker_id)
        worker.stop()
        await wait_until(lambda: worker.exit is WorkerExit.STOPPED)
        for hub in (stranger, twin, home):
            await hub.shutdown()
    assert (data / HUB_FILE).exists()


# -- the passes, timed under a MockClock -----------------------------------------------------------


Dials = list[tuple[float, str]]


def scripted_worker(
    data: Path, hub: FakeHub, urls: list[str], dead: set[str], dials: Dials, **kw: object
) -> Worker:
    """A worker whose ``dial`` records (time, URL), fails at once for the URLs in ``dead``
    and reaches ``hub`` for the others."""

    @asynccontextmanager
    async def dial() -> AsyncIterator[LinkPipe]:
        url = worker.hub_url
        dials.append((trio.current_time(), url))
        if url in dead:
            raise LinkClosed(f"cannot reach the hub at {url}: Connection refused")
        async with hub.dial() as pipe:
            yield pipe

    worker = Worker(
        data,
        hub_urls=urls,
        name="box",
        uniform=Recorder(),  # 0.5: every wait is its base
        signer=InlineSigner(),
        dial=dial,
        **kw,  # type: ignore[arg-type]
    )
    return worker


@pytest.mark.parametrize("delay", [0, 10])
async def test_go_away_moves_to_the_next_hub_at_once(
    registered_dir: Path, autojump_clock: trio.testing.MockClock, delay: int
) -> None:
    dials: list[tuple[float, str]] = []

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        if n == 0:
            await trio.sleep(5)
            await link.send(GoAway(delay, "hub is shutting down"))
            return  # the hub closes the link
        await link.drain()

    async with hub_running(script) as hub:
        worker = scripted_worker(registered_dir, hub, [A, B], set(), dials)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await wait_until(lambda: len(hub.links) == 2 and worker.online)
            worker.stop()
    assert [url for _, url in dials] == [A, B]
    assert round(dials[1][0] - dials[0][0], 6) == 5.0  # B dialled the instant A went away


async def test_the_backoff_waits_after_a_whole_pass(
    registered_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    dials: list[tuple[float, str]] = []

    async def script(link: HubLink, n: int) -> None:
        await link.handshake()
        await link.drain()

    async with hub_running(script) as hub:
        worker = scripted_worker(registered_dir, hub, [A, B, C], {A, B}, dials)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await wait_until(lambda: worker.online)
            assert worker.hub_url == C
            start = dials[0][0]
            worker.stop()
    assert [(round(t - start, 6), url) for t, url in dials] == [(0.0, A), (0.0, B), (0.0, C)]

    # All three dead for a while: each pass is three dials at once, then the backoff.
    dials.clear()
    async with hub_running(script) as hub:
        worker = scripted_worker(registered_dir, hub, [A, B, C], {A, B, C}, dials)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            while len(dials) < 9:
                await trio.sleep(0.25)  # mock seconds: the dials come in bursts at 0, 1 and 3
            worker.stop()
    start = dials[0][0]
    assert [round(t - start, 6) for t, _ in dials] == [0, 0, 0, 1, 1, 1, 3, 3, 3]
    assert [url for _, url in dials] == [A, B, C] * 3


async def test_registration_passes_over_the_list(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every URL dead twice: each pass is tried at once, the backoff only between passes; then
    the first hub that answers takes the registration, and the worker connects there."""
    caplog.set_level(logging.INFO, logger="leapcore.worker")
    dials: Dials = []
    dead = {A, B}

    async def script(link: HubLink, n: int) -> None:
        if n == 0:
            assert isinstance(await link.recv(), Register)
            await link.send(Registered("w-42", "tok-42", "0123456789abcdef"))
            return
        await link.handshake()
        await link.drain()

    async with hub_running(script) as hub:
        worker = scripted_worker(tmp_path, hub, [A, B], dead, dials, registration_key="k" * 24)
        worker.prepare()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.register)
            while len(dials) < 4:
                await trio.sleep(0.25)
            dead.discard(B)
            await wait_until(lambda: worker.state is not None and worker.state.registered)
    start = dials[0][0]
    assert [(round(t - start, 6), url) for t, url in dials] == [
        (0, A), (0, B), (1, A), (1, B), (3, A), (3, B),
    ]  # fmt: skip
    record = load_hub(tmp_path)
    assert record is not None and record.hub_url == B
    assert worker.failover is not None and worker.failover.current == B  # passes start there
    assert f"registration at {A} failed: cannot reach the hub at {A}" in caplog.text
    assert "registration failed: http://a.example:1: cannot reach" in caplog.text


@pytest.fixture
def registered_dir(tmp_path: Path, generated_keypair: WorkerKeyPair) -> Path:
    from leapcore.store.workerstate import WorkerState, save_state

    save_state(tmp_path, WorkerState("w-1", "auth-token-hubs", generated_keypair))
    return tmp_path


# -- the list, as given ----------------------------------------------------------------------------


def test_the_worker_checks_its_hub_urls(tmp_path: Path) -> None:
    expect(
        ConfigError,
        "^hub URLs 'http://h' and 'http://h:80' name the same hub address$",
        worker_at,
        tmp_path,
        ["http://h", "http://h:80"],
    )
    expect(
        ConfigError, "^hub names hub URL 'http://h' twice$", worker_at, tmp_path, ["http://h"] * 2
    )
    expect(ConfigError, "must start with http://", worker_at, tmp_path, ["http://h", "ftp://x"])
    expect(
        ConfigError,
        "^give the hub as hub_url or hub_urls, not both$",
        Worker,
        tmp_path,
        hub_url=A,
        hub_urls=[B],
        name="box",
    )
    worker = Worker(tmp_path, hub_url=f" {A} ", name="box")  # the one-URL keyword still works
    assert (worker.hub_urls, worker.hub_url) == ((A,), A)


# -- one name, several addresses -----------------------------------------------------------------


class TwoAddresses(trio.abc.HostnameResolver):
    """Resolves ``hubs.test`` to a dead loopback address first, then a live one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.asked = 0

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ):  # type: ignore[no-untyped-def]
        assert host == b"hubs.test", host
        self.asked += 1
        tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        return [(*tcp, ("127.0.0.3", self.port)), (*tcp, ("127.0.0.1", self.port))]

    async def getnameinfo(self, sockaddr: tuple[str, int], flags: int) -> tuple[str, str]:
        raise NotImplementedError


async def test_a_dead_address_of_a_name_leads_to_the_next(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    """What :func:`trio.open_tcp_stream` already does for a hub URL whose name has several
    addresses: one that refuses the connection is left for the next, in the same dial."""
    hub = Hub(tmp_path / "hub.db")
    data = tmp_path / "worker"
    registered_worker(hub, data, generated_keypair)
    async with trio.open_nursery() as nursery:
        url, _scope = await serve_hub(hub, nursery)
        resolver = TwoAddresses(int(url.rsplit(":", 1)[1]))
        previous = trio.socket.set_custom_hostname_resolver(resolver)
        try:
            worker = worker_at(data, [f"http://hubs.test:{resolver.port}"])
            nursery.start_soon(worker.serve)
            await wait_until(lambda: linked_to(hub, worker))
            assert (resolver.asked, worker.attempts) == (1, 1)  # one dial, two addresses
        finally:
            trio.socket.set_custom_hostname_resolver(previous)
        worker.stop()
        await wait_until(lambda: worker.exit is WorkerExit.STOPPED)
        await hub.shutdown()
