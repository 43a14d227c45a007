"""Tunnel listeners (trio) with a fake opener that dials real loopback sockets: round trips,
half-close both ways, errors, the accept backoff, the channel pool and stopping."""

from __future__ import annotations

import errno
import functools
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio
import trio.testing
from support import tunnelkit
from support.tunnelkit import running_pair

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import (
    ChannelLost,
    ConfigError,
    LeapcoreError,
    TunnelDenied,
    TunnelDialFailed,
    WorkerOffline,
)
from leapcore.peer import socks5, tunnel
from leapcore.peer.socks5 import serve_socks5
from leapcore.peer.tunnel import channel_pool, forward_local

# -- helpers -------------------------------------------------------------------------------


def dial_failed(reason: str) -> LeapcoreError:
    """The error ``open_tcp`` raises when the worker's dial fails."""
    if reason == "denied_by_policy":
        return TunnelDenied(reason, "no rule allows it")
    return TunnelDialFailed(reason, f"dial failed: {reason}")


class FakeOpener:
    """``open_tcp`` dials the real loopback target; names map to failures."""

    def __init__(self, failures: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.streams: list[trio.SocketStream] = []
        self.failures = failures or {}

    async def open_tcp(self, host: str, port: int) -> trio.abc.HalfCloseableStream:
        self.calls.append((host, port))
        if host in self.failures:
            raise dial_failed(self.failures[host])
        stream = await trio.open_tcp_stream(host, port)
        self.streams.append(stream)
        return stream


async def recv_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def recv_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return data


async def echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        await stream.send_eof()
    except trio.BrokenResourceError:
        pass


async def start_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def connect(address: tuple[str, int]) -> trio.SocketStream:
    return await trio.open_tcp_stream(*address)


def connect_request(host: str, port: int) -> bytes:
    name = host.encode()
    return (
        b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port)
    )


async def socks_connect(proxy: tuple[str, int], host: str, port: int) -> tuple[Any, bytes]:
    """(stream, the 10-byte reply) after a no-auth CONNECT to ``host:port``."""
    stream = await connect(proxy)
    await stream.send_all(connect_request(host, port))
    assert await recv_exactly(stream, 2) == b"\x05\x00"
    return stream, await recv_exactly(stream, 10)


def bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Fail a real-socket test after 10 s instead of hanging on a lost EOF."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        with trio.fail_after(10):
            await test(*args, **kwargs)

    return run


SUCCESS = b"\x05\x00\x00\x01" + bytes(6)

# -- port forwarding -------------------------------------------------------------------------


@bounded
async def test_forward_round_trip_and_eof() -> None:
    opener = FakeOpener()
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, echo)
        bound = await nursery.start(forward_local, opener, ("127.0.0.1", 0), ("127.0.0.1", port))
        assert bound[0] == "127.0.0.1" and bound[1] > 0
        for round_ in range(3):
            client = await connect(bound)
            payload = bytes(range(256)) * 1000 + bytes([round_])
            async with trio.open_nursery() as inner:
                inner.start_soon(client.send_all, payload)
                echoed = await recv_exactly(client, len(payload))
            assert echoed == payload
            await client.send_eof()
            assert await recv_all(client) == b""  # the echo's EOF came back
            await client.aclose()
        assert opener.calls == [("127.0.0.1", port)] * 3
        nursery.cancel_scope.cancel()


@bounded
async def test_half_close_client_to_target() -> None:
    """The client's FIN reaches the target, and the target's answer still comes back."""

    async def count_then_answer(stream: trio.SocketStream) -> None:
        data = await recv_all(stream)
        await stream.send_all(f"got {len(data)} bytes".encode())
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, count_then_answer)
        bound = await nursery.start(
            forward_local, FakeOpener(), ("127.0.0.1", 0), ("127.0.0.1", port)
        )
        client = await connect(bound)
        await client.send_all(b"x" * 100_000)
        await client.send_eof()
        assert await recv_all(client) == b"got 100000 bytes"
        nursery.cancel_scope.cancel()


@bounded
async def test_half_close_target_to_client() -> None:
    """The target's FIN reaches the client, and the client can still send afterwards."""
    received = trio.Event()
    got: list[bytes] = []

    async def greet_then_listen(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hello")
        await stream.send_eof()
        got.append(await recv_all(stream))
        received.set()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, greet_then_listen)
        bound = await nursery.start(
            forward_local, FakeOpener(), ("127.0.0.1", 0), ("127.0.0.1", port)
        )
        client = await connect(bound)
        assert await recv_all(client) == b"hello"  # EOF seen, the connection still open
        await client.send_all(b"late words")
        await client.send_eof()
        await received.wait()
        assert got == [b"late words"]
        nursery.cancel_scope.cancel()


@bounded
async def test_an_error_on_one_side_resets_the_other() -> None:
    async def reset(stream: trio.SocketStream) -> None:
        await stream.receive_some(1)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, reset)
        bound = await nursery.start(
            forward_local, FakeOpener(), ("127.0.0.1", 0), ("127.0.0.1", port)
        )
        client = await connect(bound)
        await client.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError):
            while await client.receive_some(100):
                pass
        nursery.cancel_scope.cancel()


@bounded
async def test_a_failed_dial_resets_the_client() -> None:
    opener = FakeOpener({"nowhere": "connection_refused"})
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(forward_local, opener, ("127.0.0.1", 0), ("nowhere", 1))
        client = await connect(bound)
        with pytest.raises(trio.BrokenResourceError):
            while await client.receive_some(100):
                pass
        nursery.cancel_scope.cancel()


# -- SOCKS5 ----------------------------------------------------------------------------------


@bounded
async def test_socks_round_trip_with_early_data() -> None:
    opener = FakeOpener()
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, echo)
        proxy = await nursery.start(serve_socks5, opener, ("127.0.0.1", 0))
        client, reply = await socks_connect(proxy, "localhost", port)
        assert reply == SUCCESS
        await client.send_all(b"ping")
        assert await recv_exactly(client, 4) == b"ping"
        await client.send_eof()
        assert await recv_all(client) == b""
        assert opener.calls == [("localhost", port)]  # the name, unresolved

        # Data sent right behind the request (before the reply) is not lost.
        early = await connect(proxy)
        await early.send_all(connect_request("127.0.0.1", port) + b"early")
        assert await recv_exactly(early, 12) == b"\x05\x00" + SUCCESS
        assert await recv_exactly(early, 5) == b"early"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("connection_refused", 5),
        ("name_not_found", 4),
        ("network_unreachable", 3),
        ("host_unreachable", 4),
        ("timed_out", 4),
        ("denied_by_policy", 2),
    ],
)
@bounded
async def test_socks_dial_failures_answer_by_reason(reason: str, code: int) -> None:
    opener = FakeOpener({"bad.example": reason})
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(serve_socks5, opener, ("127.0.0.1", 0))
        client, reply = await socks_connect(proxy, "bad.example", 80)
        assert reply == bytes([5, code, 0, 1]) + bytes(6)
        assert await recv_all(client) == b""
        nursery.cancel_scope.cancel()


@bounded
async def test_socks_other_failures_answer_general_failure() -> None:
    class Broken(FakeOpener):
        async def open_tcp(self, host: str, port: int) -> trio.abc.HalfCloseableStream:
            raise ChannelLost("link_lost", "gone")

    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(serve_socks5, Broken(), ("127.0.0.1", 0))
        _, reply = await socks_connect(proxy, "x", 80)
        assert reply == b"\x05\x01\x00\x01" + bytes(6)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x05",
        b"\x05\x01\x00\x05\x01\x00\x03\x04abc",  # a domain length of 4 with 3 bytes
        b"\x05\x01\x00\x05\x02\x00\x01" + bytes(6),  # BIND
    ],
)
@bounded
async def test_hostile_clients_lose_only_their_connection(garbage: bytes) -> None:
    opener = FakeOpener()
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, echo)
        proxy = await nursery.start(serve_socks5, opener, ("127.0.0.1", 0))
        good, reply = await socks_connect(proxy, "127.0.0.1", port)
        assert reply == SUCCESS
        bad = await connect(proxy)
        await bad.send_all(garbage)
        await bad.send_eof()
        answer = await recv_all(bad)  # closed (after the reply owed, if any)
        assert answer in (b"", b"\x05\x00", b"\x05\x00\x05\x07\x00\x01" + bytes(6))
        await good.send_all(b"still here")
        assert await recv_exactly(good, 10) == b"still here"
        assert opener.calls == [("127.0.0.1", port)]
        nursery.cancel_scope.cancel()


async def test_a_silent_socks_client_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(serve_socks5, FakeOpener(), ("127.0.0.1", 0))
        client = await connect(proxy)
        await client.send_all(b"\x05\x01")
        start = trio.current_time()
        assert await recv_all(client) == b""
        assert trio.current_time() - start == pytest.approx(socks5.SOCKS_HANDSHAKE_TIMEOUT)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("idle", "answer"),
    [
        (b"", b""),  # connects, sends nothing
        (b"\x05\x02\x00", b""),  # a truncated greeting (2 methods, 1 sent)
        (b"\x05\x01\x00\x05\x01\x00\x03\x04abc", b"\x05\x00"),  # domain length 4, 3 bytes
    ],
)
async def test_stalled_socks_clients_are_dropped_and_others_go_on(
    idle: bytes, answer: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that stops mid-handshake and stays connected (no EOF) is closed at the
    handshake timeout; a tunnelled connection open all along, idle as long, is untouched."""
    opener = FakeOpener()
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, echo)
        proxy = await nursery.start(serve_socks5, opener, ("127.0.0.1", 0))
        good, reply = await socks_connect(proxy, "127.0.0.1", port)
        assert reply == SUCCESS
        stalled = await connect(proxy)
        await stalled.send_all(idle)
        start = trio.current_time()
        assert await recv_all(stalled) == answer  # then EOF: closed by the server
        assert trio.current_time() - start == pytest.approx(socks5.SOCKS_HANDSHAKE_TIMEOUT)
        await good.send_all(b"after 30 s")
        assert await recv_exactly(good, 10) == b"after 30 s"
        assert opener.calls == [("127.0.0.1", port)]
        nursery.cancel_scope.cancel()


# -- accept backoff --------------------------------------------------------------------------


class FailingListener(trio.abc.Listener[Any]):
    """Fails ``accept`` with ``error`` ``times`` times (recording when), then waits."""

    def __init__(self, error: int, times: int) -> None:
        self.error, self.left = error, times
        self.attempts: list[float] = []
        self.closed = False

    async def accept(self) -> Any:
        self.attempts.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.left:
            self.left -= 1
            raise OSError(self.error, "simulated")
        await trio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
async def test_transient_accept_errors_back_off(
    code: int, autojump_clock: trio.testing.MockClock
) -> None:
    listener = FailingListener(code, 12)

    async def handler(stream: Any) -> None:
        raise AssertionError("nothing is accepted")

    with trio.move_on_after(30):
        await tunnel.accept_loop(listener, handler)
    gaps = [round(b - a, 6) for a, b in zip(listener.attempts, listener.attempts[1:], strict=False)]
    assert gaps == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0, 1.0, 1.0]
    assert listener.closed


async def test_constant_failure_does_not_spin(autojump_clock: trio.testing.MockClock) -> None:
    listener = FailingListener(errno.EMFILE, 10**9)
    with trio.move_on_after(60):
        await tunnel.accept_loop(listener, lambda stream: trio.sleep(0))
    # The first attempt, 8 more until the 1 s cap (by 1.275 s), then one a second.
    assert len(listener.attempts) == 1 + 8 + 58


async def test_a_permanent_accept_error_ends_the_server() -> None:
    listener = FailingListener(errno.EBADF, 1)
    with pytest.raises(OSError) as caught:
        await tunnel.accept_loop(listener, lambda stream: trio.sleep(0))
    assert caught.value.errno == errno.EBADF
    assert listener.closed and len(listener.attempts) == 1


# -- stopping --------------------------------------------------------------------------------


@bounded
async def test_stopping_closes_the_listener_and_every_connection() -> None:
    opener = FakeOpener()
    target_eofs = 0
    all_ended = trio.Event()

    async def hold(stream: trio.SocketStream) -> None:
        nonlocal target_eofs
        with suppress(trio.BrokenResourceError):
            await recv_all(stream)  # until the tunnel closes its end
        target_eofs += 1
        if target_eofs == 3:
            all_ended.set()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, hold)
        scope = trio.CancelScope()

        async def run_forward(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await forward_local(
                    opener, ("127.0.0.1", 0), ("127.0.0.1", port), task_status=task_status
                )

        bound = await nursery.start(run_forward)
        clients = [await connect(bound) for _ in range(3)]
        for client in clients:
            await client.send_all(b"in flight")
        while len(opener.streams) < 3:
            await trio.sleep(0.01)
        scope.cancel()
        for client in clients:
            with trio.fail_after(5):
                with suppress(trio.BrokenResourceError):
                    assert await recv_all(client) == b""
        with trio.fail_after(5):
            await all_ended.wait()
        with pytest.raises(OSError):
            await connect(bound)
        nursery.cancel_scope.cancel()


# -- the channel pool ------------------------------------------------------------------------


class FakeChannel:
    def __init__(self, opener: FakeOpener) -> None:
        self.closed = False
        self.finished = trio.Event()
        self._opener = opener

    async def open_tcp(self, host: str, port: int) -> trio.abc.HalfCloseableStream:
        if self.closed:
            raise ChannelLost("link_lost", "the channel broke")
        return await self._opener.open_tcp(host, port)

    def broke(self) -> None:
        self.closed = True
        self.finished.set()


class FakeSession:
    def __init__(self) -> None:
        self.opened: list[FakeChannel] = []
        self.exited = 0
        self.opener = FakeOpener()

    #: The next open fails with this.
    fail_next: LeapcoreError | None = None

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[FakeChannel]:
        await trio.sleep(0.01)  # the open takes a moment: concurrent users must share it
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        channel = FakeChannel(self.opener)
        self.opened.append(channel)
        try:
            yield channel
        finally:
            self.exited += 1
            if channel.closed:
                raise ChannelLost("closed_by_peer", "the worker closed it")

    def open_channel(self, worker_id: str, *, timeout: float = 30) -> Any:
        assert worker_id == "w1"
        return self._open()


@bounded
async def test_one_channel_per_worker_reopened_after_it_breaks() -> None:
    session = FakeSession()
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, echo)
        async with channel_pool(session, "w1") as pool:
            bound = await nursery.start(forward_local, pool, ("127.0.0.1", 0), ("127.0.0.1", port))

            async def one() -> None:
                client = await connect(bound)
                await client.send_all(b"abc")
                assert await recv_exactly(client, 3) == b"abc"
                await client.aclose()

            async with trio.open_nursery() as clients:
                for _ in range(10):
                    clients.start_soon(one)
            assert len(session.opened) == 1 and pool.opened == 1

            session.opened[0].broke()
            await one()
            assert len(session.opened) == 2
            await one()
            assert len(session.opened) == 2
        assert session.exited == 2
        nursery.cancel_scope.cancel()


@bounded
async def test_a_failed_channel_open_resets_one_connection_only() -> None:
    session = FakeSession()
    session.fail_next = WorkerOffline("worker w1 is offline")
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, echo)
        async with channel_pool(session, "w1") as pool:
            bound = await nursery.start(forward_local, pool, ("127.0.0.1", 0), ("127.0.0.1", port))
            first = await connect(bound)
            with pytest.raises(trio.BrokenResourceError):
                await first.receive_some(10)
            second = await connect(bound)
            await second.send_all(b"ok")
            assert await recv_exactly(second, 2) == b"ok"
            assert len(session.opened) == 1
        nursery.cancel_scope.cancel()


@bounded
async def test_an_opener_may_be_an_async_callable_returning_a_channel() -> None:
    opener = FakeOpener()
    channel = FakeChannel(opener)
    asked = 0

    async def get() -> FakeChannel:
        nonlocal asked
        asked += 1
        return channel

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, echo)
        bound = await nursery.start(forward_local, get, ("127.0.0.1", 0), ("127.0.0.1", port))
        client = await connect(bound)
        await client.send_all(b"hi")
        assert await recv_exactly(client, 2) == b"hi"
        assert asked == 1
        nursery.cancel_scope.cancel()


@bounded
async def test_ipv6_loopback_listener() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, echo)
        try:
            bound = await nursery.start(
                forward_local, FakeOpener(), ("::1", 0), ("127.0.0.1", port)
            )
        except OSError:
            pytest.skip("no IPv6 loopback here")
        assert bound[0] == "::1"
        client = await connect(bound)
        await client.send_all(b"six")
        assert await recv_exactly(client, 3) == b"six"
        nursery.cancel_scope.cancel()


@bounded
async def test_a_failing_handler_ends_its_connection_only() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    address = listeners[0].socket.getsockname()[:2]
    served: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        served.append(len(served))
        if len(served) == 1:
            raise RuntimeError("a bug in one connection")
        await stream.send_all(b"fine")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tunnel.accept_loop, listeners[0], handler)
        first = await connect(address)
        assert await recv_all(first) == b""
        second = await connect(address)
        assert await recv_all(second) == b"fine"
        nursery.cancel_scope.cancel()


# -- budgets: pending SOCKS5 handshakes, streams per channel -----------------------------------


async def greeted(proxy: tuple[str, int]) -> trio.SocketStream:
    """A client that sent its greeting and got the method choice: its handler is running and
    holds a handshake slot (the request is still owed)."""
    stream = await connect(proxy)
    await stream.send_all(b"\x05\x01\x00")
    assert await recv_exactly(stream, 2) == b"\x05\x00"
    return stream


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """The server closed ``stream`` (EOF or reset)."""
    try:
        return await stream.receive_some(100) == b""
    except trio.BrokenResourceError:
        return True


@bounded
async def test_a_full_handshake_budget_closes_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="leapcore.peer.tunnel")
    opener = FakeOpener()
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, echo)
        proxy = await nursery.start(
            functools.partial(serve_socks5, max_pending_handshakes=4), opener, ("127.0.0.1", 0)
        )
        idle = [await greeted(proxy) for _ in range(4)]  # the budget, full
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

        idle.append(await greeted(proxy))  # one more: the oldest goes
        assert await closed_by_server(idle[0])
        idle.append(await greeted(proxy))
        assert await closed_by_server(idle[1])

        # A real client, with the budget full of idle ones: it takes the oldest's place and
        # finishes its handshake at once.
        good, reply = await socks_connect(proxy, "127.0.0.1", port)
        assert reply == SUCCESS
        assert await closed_by_server(idle[2])
        await good.send_all(b"through")
        assert await recv_exactly(good, 7) == b"through"

        # The younger idle ones were left alone: each can still finish its request.
        for stream in idle[3:]:
            await stream.send_all(connect_request("127.0.0.1", port)[3:])
            assert await recv_exactly(stream, 10) == SUCCESS
            await stream.send_all(b"late")
            assert await recv_exactly(stream, 4) == b"late"

        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings  # one line for the whole episode
        assert "4 SOCKS5 handshakes pending (the budget)" in warnings[0]
        # Every idle one answered, the pending count fell to half: the episode is over ...
        ended = [r.getMessage() for r in caplog.records if "closed to make room" in r.message]
        assert len(ended) == 1 and "3 pending handshakes were closed" in ended[0], ended

        # ... and the next one starts with a warning of its own.
        more = [await greeted(proxy) for _ in range(5)]
        assert await closed_by_server(more[0])
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 2, warnings
        nursery.cancel_scope.cancel()


async def test_an_idle_flood_never_holds_more_than_the_budget() -> None:
    """200 idle connections against a budget of 16: all but the youngest 16 are closed by
    the server, a real client still gets through (displacing one more), and the 15 left
    were really held: each can still finish its handshake."""
    opener = FakeOpener()
    budget = 16
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, echo)
            proxy = await nursery.start(
                functools.partial(serve_socks5, max_pending_handshakes=budget),
                opener,
                ("127.0.0.1", 0),
            )
            flood = [await connect(proxy) for _ in range(200)]
            for stream in flood:
                await stream.send_all(b"\x05")  # a greeting that never ends
            good, reply = await socks_connect(proxy, "127.0.0.1", port)
            assert reply == SUCCESS
            await good.send_all(b"ok")
            assert await recv_exactly(good, 2) == b"ok"
            # Accepted in order, so the oldest went first: 184 for the flood, one more for
            # the real client.
            for stream in flood[: 200 - budget + 1]:
                assert await closed_by_server(stream)
            for stream in flood[200 - budget + 1 :]:
                await stream.send_all(connect_request("127.0.0.1", port)[1:])
                assert await recv_exactly(stream, 12) == b"\x05\x00" + SUCCESS
            assert opener.calls == [("127.0.0.1", port)] * budget
            nursery.cancel_scope.cancel()


def test_the_budget_must_be_positive() -> None:
    async def main() -> None:
        with pytest.raises(ConfigError, match="max_pending_handshakes"):
            await serve_socks5(FakeOpener(), ("127.0.0.1", 0), max_pending_handshakes=0)

    trio.run(main)


@bounded
async def test_connections_past_the_workers_stream_limit_fail_alone(
    generated_keypair: WorkerKeyPair,
) -> None:
    """Each forwarded connection is one byte stream on the channel; the worker's per-channel
    stream limit (here 3) refuses one more ``resource_exhausted``: that connection is reset,
    the open ones carry on, and once one ends a new one gets through."""
    async with (
        running_pair(generated_keypair, max_streams=3) as pair,
        tunnelkit.echo_server() as target,
        trio.open_nursery() as nursery,
    ):
        bound = await nursery.start(
            forward_local, pair.client, ("127.0.0.1", 0), ("127.0.0.1", target.port)
        )
        held = []
        for index in range(3):
            client = await connect(bound)
            await client.send_all(bytes([index]) * 10)
            assert await recv_exactly(client, 10) == bytes([index]) * 10
            held.append(client)
        extra = await connect(bound)
        with pytest.raises(trio.BrokenResourceError):
            while await extra.receive_some(100):
                pass
        for client in held:
            await client.send_all(b"still")
            assert await recv_exactly(client, 5) == b"still"
        assert target.accepted == 3  # the refused one never reached the target

        await held[0].send_eof()
        assert await recv_all(held[0]) == b""
        while True:  # the worker forgets the finished stream a moment after its EOF
            again = await connect(bound)
            await again.send_all(b"again")
            try:
                assert await recv_exactly(again, 5) == b"again"
                break
            except trio.BrokenResourceError:
                await trio.sleep(0.01)
        assert not pair.client.closed
        nursery.cancel_scope.cancel()
