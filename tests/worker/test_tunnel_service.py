"""The worker's ``tcp`` service (leapcore.worker.tcp): the dial-failure mapping, the
relay's abort rules, the stock worker's table and the manual byte-stream acceptance it is
built on. Real channel pairs and real loopback sockets."""

from __future__ import annotations

import errno
import functools
import socket
from pathlib import Path

import pytest
import trio
import trio.testing
from support.tunnelkit import OWNER, echo_server, make_pair, running_pair

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import RemoteCallError, ServiceError, StreamUsageError, TunnelDenied
from leapcore.peer.channel import (
    ByteStreamOpening,
    CallContext,
    Channel,
    Services,
    reset_byte_stream,
)
from leapcore.proto.tunnel_policy import DIAL_FAILURES, TunnelPolicy
from leapcore.worker.daemon import Worker
from leapcore.worker.tcp import dial, dial_failure


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection_refused"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "network_unreachable"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "host_unreachable"),
        (OSError(errno.EHOSTDOWN, "Host is down"), "host_unreachable"),
        (OSError(errno.EACCES, "Permission denied"), "host_unreachable"),
        (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), "timed_out"),
        (trio.TooSlowError(), "timed_out"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "name_not_found"),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), "name_not_found"),
        (socket.gaierror(socket.EAI_NODATA, "No address"), "name_not_found"),
    ],
)
def test_dial_failure_mapping(exc: BaseException, reason: str) -> None:
    code, text = dial_failure(exc)
    assert code == reason
    assert code in DIAL_FAILURES
    assert text.startswith(DIAL_FAILURES[code])


def test_an_unexpected_errno_keeps_its_description() -> None:
    assert dial_failure(OSError(errno.EACCES, "Permission denied")) == (
        "host_unreachable",
        "host unreachable (Permission denied)",
    )


async def test_dial_refuses_by_policy_without_resolving() -> None:
    policy = TunnelPolicy.parse(deny=["*.invalid"])
    with pytest.raises(TunnelDenied) as info:
        await dial("x.invalid", 80, policy=policy)
    assert info.value.reason == "denied_by_policy"  # not name_not_found: never looked up
    assert info.value.detail == "tunnel_deny *.invalid: x.invalid:80"


async def test_a_target_reset_resets_the_byte_stream(generated_keypair: WorkerKeyPair) -> None:
    async def handler(conn: trio.SocketStream) -> None:
        await conn.receive_some()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        await conn.aclose()  # RST

    async with running_pair(generated_keypair) as pair, trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await pair.client.open_tcp("127.0.0.1", port)
        await stream.send_all(b"boom")
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as info:
            while True:
                assert await stream.receive_some() == b""  # never a clean EOF
                pytest.fail("a reset target looked like a clean close")
        cause = info.value.__cause__
        assert isinstance(cause, RemoteCallError)
        assert cause.remote_code == "connection_reset"
        with trio.fail_after(10):
            while pair.worker._handlers:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_client_close_is_a_tcp_close(generated_keypair: WorkerKeyPair) -> None:
    """The client closes before the target's EOF: like closing a TCP socket, the target
    gets the data and a clean EOF; when it then sends, the relay aborts (the target's
    connection is reset) and the worker's handler ends."""
    outcome: list[object] = []
    done = trio.Event()

    async def handler(conn: trio.SocketStream) -> None:
        got = bytearray()
        while data := await conn.receive_some():
            got += data
        outcome.append(bytes(got))
        try:
            for _ in range(1000):
                await conn.send_all(b"nobody is listening" * 100)
                await trio.sleep(0.01)
            outcome.append("never reset")
        except trio.BrokenResourceError:
            outcome.append("reset")
        done.set()
        await conn.aclose()

    async with running_pair(generated_keypair) as pair, trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await pair.client.open_tcp("127.0.0.1", port)
        await stream.send_all(b"data")
        await stream.aclose()  # before the target's EOF
        with trio.fail_after(10):
            await done.wait()
            while pair.worker._handlers:
                await trio.sleep(0.01)
        assert outcome == [b"data", "reset"]
        nursery.cancel_scope.cancel()


async def test_a_client_abort_resets_the_target(generated_keypair: WorkerKeyPair) -> None:
    """A reset before the client's EOF (reset_byte_stream) aborts the relay at once, while
    the target sits silent: its connection is reset."""
    outcome: list[str] = []
    done = trio.Event()

    async def handler(conn: trio.SocketStream) -> None:
        try:
            while await conn.receive_some():
                pass
            outcome.append("eof")
        except trio.BrokenResourceError:
            outcome.append("reset")
        done.set()
        await conn.aclose()

    async with running_pair(generated_keypair) as pair, trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await pair.client.open_tcp("127.0.0.1", port)
        await stream.send_all(b"x")
        await reset_byte_stream(stream, "cancelled", "changed my mind")
        with trio.fail_after(10):
            await done.wait()
            while pair.worker._handlers:
                await trio.sleep(0.01)
        assert outcome == ["reset"]
        nursery.cancel_scope.cancel()


async def test_the_stock_worker_serves_tcp_under_its_policy(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    worker = Worker(tmp_path, name="tunnels", encryption_mode="classic")
    assert "tcp" in worker.services.byte_streams
    assert "tcp" in worker.services.manual_accept
    pair = make_pair(generated_keypair)
    pair.worker._services = worker.services
    async with trio.open_nursery() as nursery, echo_server() as server:
        await nursery.start(pair.client.run)
        await nursery.start(pair.worker.run)
        stream = await pair.client.open_tcp("127.0.0.1", server.port)
        await stream.send_all(b"hi")
        await stream.send_eof()
        assert await stream.receive_some() == b"hi"
        await stream.aclose()
        worker.tunnel_policy = TunnelPolicy.parse(deny=[f"127.0.0.1:{server.port}"])
        with pytest.raises(TunnelDenied):
            await pair.client.open_tcp("127.0.0.1", server.port)
        assert server.accepted == 1
        nursery.cancel_scope.cancel()


# -- manual acceptance (Services.add_byte_stream(..., accept="manual")) -----------------------


async def test_manual_acceptance(generated_keypair: WorkerKeyPair) -> None:
    seen: list[str] = []

    async def gate(ctx: CallContext, payload: bytes, opening: ByteStreamOpening) -> None:
        if payload == b"no":
            await opening.refuse("not_today", "try tomorrow")
            with pytest.raises(StreamUsageError):
                await opening.accept()
            seen.append("refused")
        elif payload == b"raise":
            raise ServiceError("gone", "raised before accepting")
        elif payload == b"nothing":
            return
        else:
            stream = await opening.accept()
            with pytest.raises(StreamUsageError):
                await opening.refuse("late", "")
            await stream.send_all(b"welcome")
            seen.append("accepted")

    pair = make_pair(generated_keypair)
    services = Services()
    services.add_byte_stream("gate", gate, accept="manual")
    pair.worker._services = services
    async with trio.open_nursery() as nursery:
        await nursery.start(pair.client.run)
        await nursery.start(pair.worker.run)
        client: Channel = pair.client
        with pytest.raises(RemoteCallError) as info:
            await client.open_byte_stream("gate", b"no")
        assert (info.value.remote_code, info.value.remote_message) == ("not_today", "try tomorrow")
        with pytest.raises(RemoteCallError) as info:
            await client.open_byte_stream("gate", b"raise")
        assert info.value.remote_code == "gone"
        with pytest.raises(RemoteCallError) as info:
            await client.open_byte_stream("gate", b"nothing")
        assert info.value.remote_code == "internal"
        stream = await client.open_byte_stream("gate", b"yes")
        assert await stream.receive_some() == b"welcome"
        assert await stream.receive_some() == b""  # the handler returned: EOF
        await stream.aclose()
        assert seen == ["refused", "accepted"]
        nursery.cancel_scope.cancel()
    with pytest.raises(StreamUsageError):
        services.add_byte_stream("other", gate, accept="later")  # type: ignore[call-overload]
    assert OWNER  # the pair's owner is the caller
