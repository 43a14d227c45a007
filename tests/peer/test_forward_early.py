"""``forward_local`` over a real channel pair, which opens its byte streams with early data
(the client's first bytes go out with the open): a refused dial then shows on the stream and
the local connection is reset, with a log line; a target that speaks first still works."""

from __future__ import annotations

import functools
import logging
import socket

import pytest
import trio
from support.tunnelkit import echo_server, running_pair

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.peer.tunnel import forward_local


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some(65536):
        out += data
    return bytes(out)


async def test_forward_sends_the_first_bytes_with_the_open(
    generated_keypair: WorkerKeyPair,
) -> None:
    async with running_pair(generated_keypair) as pair, echo_server() as server:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                forward_local, pair.client, ("127.0.0.1", 0), ("127.0.0.1", server.port)
            )
            for size in (1, 70_000, 300_000):  # within, past, far past the early window
                payload = bytes(range(256)) * (size // 256) + b"!" * (size % 256)
                async with await trio.open_tcp_stream(*bound) as conn:
                    await conn.send_all(payload)  # before the forward even accepted
                    await conn.send_eof()
                    assert await _read_all(conn) == payload
            nursery.cancel_scope.cancel()
        assert server.accepted == 3


async def test_forward_to_a_target_that_speaks_first(generated_keypair: WorkerKeyPair) -> None:
    """Nothing comes from the client: the open still goes out (no waiting for data)."""

    async def greeter(stream: trio.SocketStream) -> None:
        await stream.send_all(b"220 hello\r\n")
        await stream.send_eof()
        await _read_all(stream)

    async with running_pair(generated_keypair) as pair, trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, greeter, 0))
        port = listeners[0].socket.getsockname()[1]
        bound = await nursery.start(
            forward_local, pair.client, ("127.0.0.1", 0), ("127.0.0.1", port)
        )
        async with await trio.open_tcp_stream(*bound) as conn:
            with trio.fail_after(10):
                assert await _read_all(conn) == b"220 hello\r\n"
        nursery.cancel_scope.cancel()


async def test_a_refused_dial_resets_the_local_connection(
    generated_keypair: WorkerKeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leapcore.peer.tunnel")
    port = _closed_port()
    async with running_pair(generated_keypair) as pair, trio.open_nursery() as nursery:
        bound = await nursery.start(
            forward_local, pair.client, ("127.0.0.1", 0), ("127.0.0.1", port)
        )
        for first in (b"early bytes", b""):  # with data behind the open, and without
            async with await trio.open_tcp_stream(*bound) as conn:
                if first:
                    await conn.send_all(first)
                with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as info:
                    await conn.receive_some(100)  # a reset, not a clean EOF
                assert isinstance(info.value.__cause__, ConnectionResetError)

        def failed_lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if " failed: " in r.getMessage()]

        # The handler logs after the local end saw its reset: wait for the second line.
        with trio.fail_after(10):
            while len(failed_lines()) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    failed = failed_lines()
    assert len(failed) == 2, failed
    assert all("connection_refused" in line and f"127.0.0.1:{port}" in line for line in failed)
    # Nothing was left behind on either end of the channel.
    assert pair.client.endpoint.streams == {} and pair.worker.endpoint.streams == {}
