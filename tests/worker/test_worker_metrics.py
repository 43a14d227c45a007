"""The worker's own ``/metrics`` and ``/healthz`` (:mod:`leapcore.worker.metrics`), served on
a real loopback socket from a real worker linked to a real hub in this process."""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from support.hubpeer import Samples, http1, parse, registered_worker, serve_hub

import leapcore
from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import ConfigError, RemoteCallError
from leapcore.hub.server import Hub
from leapcore.peer.channel import CallReport
from leapcore.proto.limits import (
    METRICS_MAX_CALL_SERIES,
    METRICS_MAX_CONNECTIONS,
    METRICS_MAX_REQUEST_HEAD,
    METRICS_REQUEST_TIMEOUT,
    ServerLimits,
)
from leapcore.store.pinstore import PinStore
from leapcore.worker.channels import OPEN_RESULTS
from leapcore.worker.daemon import Worker, WorkerExit
from leapcore.worker.metrics import (
    CONTENT_TYPE,
    WorkerMetrics,
    metrics_limits,
    parse_metrics_listen,
    serve_worker_metrics,
)
from leapcore.worker.signpool import InlineSigner


def now_ms() -> int:
    return int(time.time() * 1000)


async def get(address: tuple[str, int], path: str) -> tuple[int, dict[str, str], bytes]:
    return await http1(address, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def scrape(address: tuple[str, int]) -> Samples:
    status, headers, body = await get(address, "/metrics")
    assert status == 200 and headers["content-type"] == CONTENT_TYPE
    return parse(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(f"leapcore_worker_{name}", tuple(sorted(labels.items())))]


async def until(address: tuple[str, int], check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds (10 s at most)."""
    with trio.fail_after(10):
        while True:
            samples = await scrape(address)
            if check(samples):
                return samples
            await trio.sleep(0.01)


@attrs.define
class Live:
    hub: Hub
    worker: Worker
    worker_id: str
    token: str
    url: str
    metrics: tuple[str, int]
    nursery: trio.Nursery
    hub_scope: trio.CancelScope
    run_done: trio.Event


@asynccontextmanager
async def live(tmp_path: Path, keypair: WorkerKeyPair) -> AsyncIterator[Live]:
    """A hub, and alice's worker ``box`` (not yet running) with its metrics served."""
    hub = Hub(tmp_path / "hub.db")
    worker_id, token = registered_worker(hub, tmp_path / "box", keypair)
    async with trio.open_nursery() as nursery:
        url, hub_scope = await serve_hub(hub, nursery)
        worker = Worker(
            tmp_path / "box",
            hub_url=url,
            name="box",
            encryption_mode="classic",
            signer=InlineSigner(),
        )
        metrics = await nursery.start(serve_worker_metrics, worker, "127.0.0.1", 0)
        yield Live(hub, worker, worker_id, token, url, metrics, nursery, hub_scope, trio.Event())
        nursery.cancel_scope.cancel()


def start(env: Live) -> None:
    async def run() -> None:
        await env.worker.run()
        env.run_done.set()

    env.nursery.start_soon(run)


async def echo(stream: trio.SocketStream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def test_values_follow_the_worker(tmp_path: Path, generated_keypair: WorkerKeyPair) -> None:
    with trio.fail_after(60):
        async with live(tmp_path, generated_keypair) as env:
            # Before the connect loop: down, and /healthz says it is starting.
            samples = await scrape(env.metrics)
            assert value(samples, "up") == 0
            assert value(samples, "connect_attempts_total") == 0
            assert value(samples, "channels_open") == 0
            for result in OPEN_RESULTS:
                assert value(samples, "channel_opens_total", result=result) == 0
            assert (
                value(
                    samples,
                    "info",
                    version=leapcore.__version__,
                    encryption_mode="classic",
                    transport="websocket",
                )
                == 1
            )
            assert ("process_cpu_seconds_total", ()) in samples
            assert await get(env.metrics, "/healthz") == (503, *_text(b"starting\n"))

            start(env)
            await env.worker.wait_online()
            samples = await until(
                env.metrics, lambda s: ("leapcore_worker_heartbeat_rtt_seconds", ()) in s
            )
            assert value(samples, "up") == 1
            assert value(samples, "offline_seconds") == 0
            assert value(samples, "connect_attempts_total") == 1
            assert value(samples, "reconnects_total") == 0
            assert value(samples, "links_greeted_total") == 1
            assert 0 <= value(samples, "heartbeat_rtt_seconds") < 10
            assert value(samples, "link_bytes_total", direction="sent") > 0
            assert value(samples, "link_bytes_total", direction="received") > 0
            assert value(samples, "exec_processes") == 0
            assert value(samples, "pty_sessions") == 0
            assert value(samples, "tunnels_open") == 0
            assert await get(env.metrics, "/healthz") == (200, *_text(b"ok\nlink online\n"))

            listeners = await env.nursery.start(
                functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1")
            )
            target = listeners[0].socket.getsockname()[:2]
            pins = PinStore(tmp_path / "pins.json", hint="clear {worker_id}")
            async with leapcore.connect(env.url, token=env.token, pins=pins) as session:
                async with session.open_channel(env.worker_id) as channel:
                    samples = await scrape(env.metrics)
                    assert value(samples, "channels_open") == 1
                    assert value(samples, "channel_opens_total", result="opened") == 1
                    stream = await channel.open_tcp(*target)
                    await stream.send_all(b"hello")
                    assert await stream.receive_some(5) == b"hello"
                    samples = await scrape(env.metrics)
                    assert value(samples, "tunnels_open") == 1
                    await stream.aclose()
                    await until(env.metrics, lambda s: value(s, "tunnels_open") == 0)
                    await channel.call("info")
                    with pytest.raises(RemoteCallError):
                        await channel.call("no.such.method")
                    samples = await until(
                        env.metrics,
                        lambda s: ("leapcore_worker_calls_total", CALL_TCP_OK) in s,
                    )
                    assert value(samples, "calls_total", capability="info", outcome="ok") == 1
                    capabilities = {
                        dict(labels)["capability"]
                        for (name, labels) in samples
                        if name == "leapcore_worker_calls_total"
                    }
                    assert capabilities == {"info", "tcp"}  # a method not served: no label
                    assert value(samples, "call_duration_seconds_count") == 2
                await until(env.metrics, lambda s: value(s, "channels_open") == 0)

            # The hub goes away: the worker is down, /healthz still answers 200 and says so.
            env.hub_scope.cancel()
            samples = await until(env.metrics, lambda s: value(s, "up") == 0)
            assert value(samples, "links_greeted_total") == 1
            status, _, body = await get(env.metrics, "/healthz")
            assert status == 200 and body.startswith(b"ok\nlink offline for "), body
            await until(env.metrics, lambda s: value(s, "reconnects_total") >= 1)

            # The loop ends: 503.
            env.worker.stop()
            await env.run_done.wait()
            assert env.worker.exit is WorkerExit.STOPPED
            assert await get(env.metrics, "/healthz") == (503, *_text(b"stopped (stopped)\n"))


CALL_TCP_OK = (("capability", "tcp"), ("outcome", "ok"))


def _text(body: bytes) -> tuple[dict[str, str], bytes]:
    return {
        "content-type": "text/plain; charset=utf-8",
        "content-length": str(len(body)),
        "connection": "close",
    }, body


def idle_worker(tmp_path: Path) -> Worker:
    """A worker that is never run (its metrics and the listener are what is tested)."""
    return Worker(tmp_path / "w", hub_url="http://127.0.0.1:9", name="w", encryption_mode="classic")


async def test_other_paths_and_methods(tmp_path: Path) -> None:
    worker = idle_worker(tmp_path)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_worker_metrics, worker, "127.0.0.1", 0)
            assert (await get(address, "/"))[0] == 404
            assert (await get(address, "/metricsx"))[0] == 404
            assert (await get(address, "/metrics?x=1"))[0] == 200
            for method in ("POST", "PUT", "DELETE", "HEAD"):
                request = f"{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                assert (await http1(address, request))[0] == 405
            # No links here: a WebSocket upgrade to /link is an unknown path, and HTTP/2
            # (prior knowledge) is a bad request.
            upgrade = (
                b"GET /link HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert (await http1(address, upgrade))[0] == 404
            assert (await http1(address, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))[0] == 400
            # A head over the budget: 400.
            # (All of it is read before the answer, so the close sends no reset.)
            big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * METRICS_MAX_REQUEST_HEAD
            assert (await http1(address, big))[0] == 400
            nursery.cancel_scope.cancel()


async def test_a_slow_client_is_closed_and_others_are_served(tmp_path: Path) -> None:
    worker = idle_worker(tmp_path)
    limits = attrs.evolve(metrics_limits(), handshake_timeout=0.5)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                lambda task_status: serve_worker_metrics(
                    worker, "127.0.0.1", 0, limits=limits, task_status=task_status
                )
            )
            slow = await trio.open_tcp_stream(*address)
            await slow.send_all(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            for _ in range(3):
                assert (await get(address, "/metrics"))[0] == 200
            started = trio.current_time()
            with trio.fail_after(5):
                assert await slow.receive_some(100) == b""  # closed, unanswered
            assert trio.current_time() - started < 5
            await slow.aclose()
            nursery.cancel_scope.cancel()


async def test_connections_at_once_are_capped(tmp_path: Path) -> None:
    worker = idle_worker(tmp_path)
    cap = 2
    limits = attrs.evolve(
        metrics_limits(), max_connections_per_address=cap, max_pending_connections=cap
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                lambda task_status: serve_worker_metrics(
                    worker, "127.0.0.1", 0, limits=limits, task_status=task_status
                )
            )
            idle = [await trio.open_tcp_stream(*address) for _ in range(cap + 1)]
            answers: list[bytes] = []

            async def read(stream: trio.SocketStream) -> None:
                answers.append(await stream.receive_some(1000))

            async with trio.open_nursery() as readers:
                for stream in idle:
                    readers.start_soon(read, stream)
                with trio.fail_after(10):
                    while not answers:
                        await trio.sleep(0.01)
                readers.cancel_scope.cancel()
            assert len(answers) == 1 and answers[0].startswith(b"HTTP/1.1 503 "), answers
            for stream in idle:
                await stream.aclose()
            # Once they are gone, a scrape is served again.
            with trio.fail_after(10):
                while (await get(address, "/metrics"))[0] != 200:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


def test_the_default_budgets() -> None:
    limits = metrics_limits()
    assert limits.handshake_timeout == METRICS_REQUEST_TIMEOUT == 5.0
    assert limits.max_connections_per_address == METRICS_MAX_CONNECTIONS == 8
    assert limits.max_pending_connections == METRICS_MAX_CONNECTIONS
    assert limits.max_header_list_size == METRICS_MAX_REQUEST_HEAD
    assert isinstance(limits, ServerLimits)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("127.0.0.2:0", ("127.0.0.2", 0)),
        ("[::1]:9100", ("::1", 9100)),
        (" [::ffff:127.0.0.1]:1 ", ("127.0.0.1", 1)),
    ],
)
def test_loopback_addresses_are_accepted(text: str, expected: tuple[str, int]) -> None:
    assert parse_metrics_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0.0.0:9100", "metrics_listen must be a loopback address"),
        ("[::]:9100", "metrics_listen must be a loopback address"),
        ("10.0.0.1:9100", "metrics_listen must be a loopback address"),
        ("localhost:9100", "metrics_listen must be an IP address"),
        ("9100", "metrics_listen must be HOST:PORT"),
        ("::1:9100", "metrics_listen must be HOST:PORT"),
        ("127.0.0.1:", "metrics_listen port must be 1-65535, or 0"),
        ("127.0.0.1:65536", "metrics_listen port must be 1-65535, or 0"),
    ],
)
def test_other_addresses_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_metrics_listen(text)


def test_the_escape_allows_a_remote_address() -> None:
    assert parse_metrics_listen("0.0.0.0:9100", allow_remote=True) == ("0.0.0.0", 9100)
    with pytest.raises(ConfigError, match="must be an IP address"):
        parse_metrics_listen("example.com:9100", allow_remote=True)


async def test_serving_refuses_a_remote_address_before_binding(tmp_path: Path) -> None:
    worker = idle_worker(tmp_path)
    with pytest.raises(ConfigError, match="--metrics-allow-remote lifts this"):
        await serve_worker_metrics(worker, "0.0.0.0", 0)


async def test_the_exposition_parses_and_labels_carry_no_secrets(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    with trio.fail_after(30):
        async with live(tmp_path, generated_keypair) as env:
            start(env)
            await env.worker.wait_online()
            status, _, body = await get(env.metrics, "/metrics")
            assert status == 200
            text = body.decode()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            for name, kind in [
                ("leapcore_worker_up", "gauge"),
                ("leapcore_worker_connect_attempts", "counter"),
                ("leapcore_worker_channel_opens", "counter"),
                ("leapcore_worker_link_bytes", "counter"),
                ("leapcore_worker_channels_open", "gauge"),
            ]:
                assert families[name].type == kind, name
            state = env.worker.state
            assert state is not None
            for secret in (state.auth_token, env.token, env.worker_id, str(tmp_path)):
                assert secret not in text
            env.worker.stop()


async def test_an_address_in_use_raises_oserror_itself(tmp_path: Path) -> None:
    worker = idle_worker(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError):
                await nursery.start(serve_worker_metrics, worker, *taken.getsockname())


def test_call_labels_are_bounded(tmp_path: Path) -> None:
    worker = idle_worker(tmp_path)
    metrics = WorkerMetrics(worker)
    assert metrics.on_call in worker.services.observers

    def call(method: str, outcome: str) -> None:
        metrics.on_call(CallReport(1, "u", method, b"", outcome, duration=0.2))

    call("exec", "ok")
    call("exec.wait", "ok")
    call("exec", "Not A Code!")
    call("nope.x", "unimplemented")
    for n in range(METRICS_MAX_CALL_SERIES + 20):
        call("info", f"code_{n}")
    samples = parse(metrics.render().decode())
    assert value(samples, "calls_total", capability="exec", outcome="ok") == 2
    assert value(samples, "calls_total", capability="exec", outcome="other") == 1
    assert value(samples, "calls_total", capability="unknown", outcome="unimplemented") == 1
    series = [k for k in samples if k[0] == "leapcore_worker_calls_total"]
    assert len(series) == METRICS_MAX_CALL_SERIES + 1
    assert value(samples, "calls_total", capability="other", outcome="other") == 23
    assert value(samples, "call_duration_seconds_count") == METRICS_MAX_CALL_SERIES + 24
    assert value(samples, "call_duration_seconds_bucket", le="0.25") == METRICS_MAX_CALL_SERIES + 24
    assert value(samples, "call_duration_seconds_bucket", le="0.1") == 0
