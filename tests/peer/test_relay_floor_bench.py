"""``benchmarks/relay_floor.py`` (the ``py floor`` side of ``tunnel_bench.py --floor``) carries
what the benchmark times, so its figures are of a working relay: a forwarded connection and a
SOCKS5 CONNECT each echo their byte through forwarder, relay and dialer, and data sent right
behind the connect is not lost. In one trio run here (the benchmark runs each part in its own
process); the parts talk over real loopback sockets."""

from __future__ import annotations

import functools
import importlib.util
import multiprocessing
import socket
import struct
from pathlib import Path

import trio

_SPEC = importlib.util.spec_from_file_location(
    "relay_floor", Path(__file__).resolve().parents[2] / "benchmarks" / "relay_floor.py"
)
assert _SPEC is not None and _SPEC.loader is not None
relay_floor = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(relay_floor)


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(1024):
            await stream.send_all(data)


async def test_relay_floor_forwards_and_answers_socks() -> None:
    parent, child = multiprocessing.Pipe()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1")
        )
        echo_port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(relay_floor._relay, child)
        relay_port = await trio.to_thread.run_sync(parent.recv)
        nursery.start_soon(relay_floor._forwarder, child, relay_port, {"echo": echo_port})
        nursery.start_soon(relay_floor._dialer, relay_port)
        ports = await trio.to_thread.run_sync(parent.recv)
        with trio.fail_after(30):  # a hang fails the test; not a speed check
            for _ in range(3):
                stream = await trio.open_tcp_stream("127.0.0.1", ports["echo"])
                async with stream:
                    await stream.send_all(b"early bytes")
                    got = b""
                    while len(got) < 11:
                        got += await stream.receive_some(11 - len(got))
                    assert got == b"early bytes"
            stream = await trio.open_tcp_stream("127.0.0.1", ports["socks"])
            async with stream:
                await stream.send_all(b"\x05\x01\x00")
                assert await stream.receive_some(2) == b"\x05\x00"
                await stream.send_all(
                    b"\x05\x01\x00\x01"
                    + socket.inet_aton("127.0.0.1")
                    + struct.pack(">H", echo_port)
                )
                reply = await stream.receive_some(10)
                assert reply[:2] == b"\x05\x00"
                await stream.send_all(b"x")
                assert await stream.receive_some(1) == b"x"
        parent.send("stop")  # ends the forwarder's wait for its stop message
        nursery.cancel_scope.cancel()
