"""``Channel.open_tcp``: a TCP connection the worker dials, through a real channel pair, to
real loopback sockets. Dial failures, policy refusals and owner-only checks reach the
client as specific errors before any data."""

from __future__ import annotations

import functools
import socket

import pytest
import trio
import trio.testing
from support.tunnelkit import echo_server, make_pair, running_pair

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import (
    DeadlineExceeded,
    InvalidMessage,
    RemoteCallError,
    TunnelDenied,
    TunnelDialFailed,
)
from leapcore.peer.channel import ByteStream
from leapcore.proto.tunnel_policy import TunnelPolicy


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some(100_000):
        out += data
    return bytes(out)


async def test_echo_through_open_tcp(generated_keypair: WorkerKeyPair) -> None:
    async with running_pair(generated_keypair) as pair, echo_server() as server:
        stream = await pair.client.open_tcp("127.0.0.1", server.port)
        assert isinstance(stream, ByteStream)
        payload = bytes(range(251)) * 12_000  # ~3 MiB: many windows each way
        received = b""

        async def send() -> None:
            await stream.send_all(payload)
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            received = await _read_all(stream)
        assert received == payload
        await stream.aclose()
        assert server.accepted == 1


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_literal(generated_keypair: WorkerKeyPair) -> None:
    async with running_pair(generated_keypair) as pair, echo_server("::1") as server:
        stream = await pair.client.open_tcp("::1", server.port)
        await stream.send_all(b"six")
        await stream.send_eof()
        assert await _read_all(stream) == b"six"
        await stream.aclose()


async def test_half_close_from_the_target_then_from_the_client(
    generated_keypair: WorkerKeyPair, mock_clock: trio.testing.MockClock
) -> None:
    """The target says hello and half-closes; the client sees EOF, stays silent a long
    while (no idle timeout on a half-open connection), then sends and half-closes."""
    # Fake time jumps only after 0.1 s of real idleness: loopback I/O is never skipped over.
    mock_clock.autojump_threshold = 0.1
    got = bytearray()
    done = trio.Event()

    async def handler(conn: trio.SocketStream) -> None:
        await conn.send_all(b"hello")
        await conn.send_eof()
        got.extend(await _read_all(conn))
        done.set()
        await conn.aclose()

    async with running_pair(generated_keypair) as pair, trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await pair.client.open_tcp("127.0.0.1", port)
        assert await _read_all(stream) == b"hello"
        await trio.sleep(1000)  # fake time: far past any idle timeout
        await stream.send_all(b"late reply")
        await stream.send_eof()
        with trio.fail_after(30):
            await done.wait()
        assert bytes(got) == b"late reply"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_open_tcp_passes_trios_half_closeable_stream_checks(
    generated_keypair: WorkerKeyPair,
) -> None:
    """The client's end and the target's accepted socket form a stream pair."""
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = listeners[0]
        port = listener.socket.getsockname()[1]

        async def stream_maker() -> tuple[ByteStream, trio.SocketStream]:
            pair = make_pair(generated_keypair)
            await nursery.start(pair.client.run)
            await nursery.start(pair.worker.run)
            mine = await pair.client.open_tcp("127.0.0.1", port)
            return mine, await listener.accept()

        with trio.fail_after(60):
            await trio.testing.check_half_closeable_stream(stream_maker, None)
        await listener.aclose()
        nursery.cancel_scope.cancel()


async def test_connection_refused(generated_keypair: WorkerKeyPair) -> None:
    port = _closed_port()
    async with running_pair(generated_keypair) as pair:
        with pytest.raises(TunnelDialFailed) as info:
            await pair.client.open_tcp("127.0.0.1", port)
    assert info.value.reason == "connection_refused"
    assert str(info.value) == (f"connection_refused: dial 127.0.0.1:{port}: connection refused")
    assert not isinstance(info.value, TunnelDenied)


async def test_name_not_found(generated_keypair: WorkerKeyPair) -> None:
    async with running_pair(generated_keypair) as pair:
        with pytest.raises(TunnelDialFailed) as info:
            await pair.client.open_tcp("no-such-host.invalid", 80)
    assert info.value.reason == "name_not_found"
    assert str(info.value).startswith(
        "name_not_found: dial no-such-host.invalid:80: name not found"
    )


async def test_timed_out_against_a_full_backlog(generated_keypair: WorkerKeyPair) -> None:
    """A listener with backlog 0 whose one slot is taken drops further SYNs: the dial hangs
    until the worker's (here 0.5 s) dial timeout."""
    with socket.socket() as lst, socket.socket() as filler:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        port = lst.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        async with running_pair(generated_keypair, dial_timeout=0.5) as pair:
            with trio.fail_after(20):
                with pytest.raises(TunnelDialFailed) as info:
                    await pair.client.open_tcp("127.0.0.1", port, timeout=10)
    assert info.value.reason == "timed_out"
    assert str(info.value) == f"timed_out: dial 127.0.0.1:{port}: timed out after 0.5s"


async def test_policy_refuses_before_any_dial(generated_keypair: WorkerKeyPair) -> None:
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(8)
        lst.setblocking(False)
        port = lst.getsockname()[1]
        async with running_pair(generated_keypair) as pair:
            cases = [
                (TunnelPolicy.parse(deny=["127.0.0.0/8"]), "127.0.0.1", "tunnel_deny 127.0.0.0/8"),
                (TunnelPolicy.parse(deny=[f"localhost:{port}"]), "LocalHost", "tunnel_deny"),
                # a name whose resolved address a deny rule covers
                (TunnelPolicy.parse(deny=["127.0.0.1"]), "localhost", "tunnel_deny 127.0.0.1"),
                (
                    TunnelPolicy.parse(allow=[f"127.0.0.1:{port + 1}-65535"]),
                    "127.0.0.1",
                    "tunnel_allow (no rule matches)",
                ),
                (
                    TunnelPolicy.parse(allow=["*"], deny=[f"*:{port}"]),
                    "127.0.0.1",
                    f"tunnel_deny *:{port}",
                ),
            ]
            for policy, host, rule in cases:
                pair.policy = policy
                with pytest.raises(TunnelDenied) as info:
                    await pair.client.open_tcp(host, port)
                assert info.value.reason == "denied_by_policy"
                assert str(info.value).startswith(f"denied_by_policy: {rule}")
                assert str(info.value).endswith(f": {host}:{port}")
                assert isinstance(info.value, TunnelDialFailed)
            with pytest.raises(BlockingIOError):
                lst.accept()  # no connection ever reached the listener
            # ... and an allowed destination does get through.
            pair.policy = TunnelPolicy.parse(allow=["127.0.0.0/8"], deny=["10.0.0.0/8"])
            stream = await pair.client.open_tcp("localhost", port)
            conn, _ = lst.accept()
            conn.close()
            await stream.aclose()


async def test_closing_the_channel_closes_its_sockets(generated_keypair: WorkerKeyPair) -> None:
    async with running_pair(generated_keypair) as pair, echo_server() as server:
        streams = [await pair.client.open_tcp("127.0.0.1", server.port) for _ in range(3)]
        for stream in streams:
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
        assert (server.accepted, server.closed) == (3, 0)
        await pair.client.aclose()
        with trio.fail_after(10):
            while server.closed < 3:
                await server.changed.wait()
        assert pair.worker._handlers == {}


async def test_a_non_owner_is_refused(generated_keypair: WorkerKeyPair) -> None:
    async with (
        running_pair(generated_keypair, user_id="u-stranger") as pair,
        echo_server() as server,
    ):
        with pytest.raises(RemoteCallError) as info:
            await pair.client.open_tcp("127.0.0.1", server.port)
        assert info.value.remote_code == "permission_denied"
        assert not isinstance(info.value, TunnelDialFailed)
        await trio.testing.wait_all_tasks_blocked()
        assert server.accepted == 0


async def test_bad_requests(generated_keypair: WorkerKeyPair) -> None:
    async with running_pair(generated_keypair) as pair:
        for host, port in [("", 80), ("x", 0), ("x", 65536), ("a" * 256, 80), ("a b", 1)]:
            with pytest.raises(InvalidMessage):
                await pair.client.open_tcp(host, port)
        for payload, words in [
            (b'{"host": "x"}', "missing field(s): port"),
            (b'{"host": "x", "port": 80, "via": 1}', "unknown field(s): via"),
            (b'{"host": "x", "port": "80"}', "port must be an integer"),
            (b'{"host": "x", "port": true}', "port must be an integer"),
            (b'["x", 80]', "must be a JSON object"),
            (b"not json", "must be a JSON object"),
        ]:
            with pytest.raises(RemoteCallError) as info:
                await pair.client.open_byte_stream("tcp", payload)
            assert info.value.remote_code == "invalid_message"
            assert words in info.value.remote_message


# -- early data: open_tcp(early=True) ------------------------------------------------------------


async def test_early_open_sends_before_the_dial_is_known(generated_keypair: WorkerKeyPair) -> None:
    """The stream is returned before the worker dialled; what is written (beyond the early
    window too), and a half-close, reach the target once connected."""
    async with running_pair(generated_keypair) as pair, echo_server() as server:
        stream = await pair.client.open_tcp("127.0.0.1", server.port, early=True)
        assert server.accepted == 0  # not dialled yet: the open has not even left
        assert stream._open_deadline is not None
        payload = bytes(range(256)) * 1000  # 256 kB: past the 64 KiB early window

        async def send() -> None:
            await stream.send_all(payload)
            await stream.send_eof()  # waits for the accept, then half-closes

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            received = await _read_all(stream)
        assert received == payload
        assert stream._open_deadline is None  # accepted
        await stream.aclose()
        assert server.accepted == 1


async def test_early_open_refused_fails_the_stream(generated_keypair: WorkerKeyPair) -> None:
    port = _closed_port()
    async with running_pair(generated_keypair) as pair:
        stream = await pair.client.open_tcp("127.0.0.1", port, early=True)
        await stream.send_all(b"discarded")  # within the early window: taken at once
        with pytest.raises(trio.BrokenResourceError) as info:
            await stream.receive_some()
        cause = info.value.__cause__
        assert isinstance(cause, TunnelDialFailed) and not isinstance(cause, TunnelDenied)
        assert cause.reason == "connection_refused"
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"more")
        await stream.aclose()
        # The worker kept nothing of it, and the channel is fine.
        assert pair.worker._byte_streams == {} and pair.client._byte_streams == {}
        assert pair.worker.endpoint.streams == {} and pair.client.endpoint.streams == {}
        await pair.client.ping()


async def test_early_open_denied_by_policy(generated_keypair: WorkerKeyPair) -> None:
    async with running_pair(generated_keypair) as pair, echo_server() as server:
        pair.policy = TunnelPolicy.parse(deny=["127.0.0.0/8"])
        stream = await pair.client.open_tcp("127.0.0.1", server.port, early=True)
        await stream.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError) as info:
            await stream.receive_some()
        assert isinstance(info.value.__cause__, TunnelDenied)
        assert server.accepted == 0


async def test_early_open_without_an_answer_in_time(generated_keypair: WorkerKeyPair) -> None:
    """No answer within ``timeout``: the stream is reset and fails with DeadlineExceeded."""
    with socket.socket() as lst, socket.socket() as filler:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        port = lst.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # further SYNs are dropped: the dial hangs
        async with running_pair(generated_keypair) as pair:
            stream = await pair.client.open_tcp("127.0.0.1", port, timeout=0.3, early=True)
            with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as info:
                await stream.receive_some()
            assert isinstance(info.value.__cause__, DeadlineExceeded)
            assert "within 0.3s" in str(info.value.__cause__)
            await stream.aclose()
            # The reset reached the worker: its dial is cancelled, nothing stays open.
            with trio.fail_after(10):
                while pair.worker.endpoint.streams or pair.worker._handlers:
                    await trio.sleep(0.01)


async def test_closing_an_unanswered_early_open_resets_it(
    generated_keypair: WorkerKeyPair,
) -> None:
    async with running_pair(generated_keypair) as pair, echo_server() as server:
        stream = await pair.client.open_tcp("127.0.0.1", server.port, early=True)
        await stream.send_all(b"x")
        await stream.aclose()
        assert pair.client.endpoint.streams == {}
        with trio.fail_after(10):
            while pair.worker.endpoint.streams or pair.worker._handlers:
                await trio.sleep(0.01)
        assert pair.worker._byte_streams == {}
        await pair.client.ping()
