"""``leapcore remote tunnel forward`` and ``socks`` as real processes, through a real solo hub
and its worker, to real TCP and HTTP servers on loopback: curl and python-socks as clients,
dial failures as SOCKS replies, 100 concurrent connections on one channel, hostile clients."""

from __future__ import annotations

import json
import random
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from support.procs import Env, Proc, env_fixture, wait_for  # noqa: F401 (env_fixture: the fixture)

TIMEOUT = 20.0
MIB = 1024 * 1024


# -- servers on the worker's side --------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


@pytest.fixture(name="echo_port")
def echo_port_fixture() -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(name="http_port")
def http_port_fixture(tmp_path: Any) -> Iterator[int]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello through the tunnel\n")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
         "--directory", str(site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # Serving HTTP on 127.0.0.1 port N (http://…/) ...
        yield int(line.split(" port ")[1].split()[0])
    finally:
        proc.kill()
        proc.wait(10)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the tunnel processes ------------------------------------------------------------------------


def start_solo(env: Env) -> str:
    """A solo hub (classic mode) whose worker ``box`` is online; the hub's URL."""
    hub = env.start("solo", "leapcore-hub", "--solo", "--listen", "127.0.0.1:0",
                    "--data-dir", str(env.hub_dir), "--solo-name", "box",
                    "--solo-encryption-mode", "classic")  # fmt: skip
    env.hub = hub
    env.url = hub.line("leapcore-hub listening on ").split()[-1]
    hub.line("solo worker box ")
    return env.url


def tunnel(env: Env, name: str, *args: str) -> Proc:
    return env.start(name, "leapcore", "remote", "tunnel", *args, "--worker", "box", "--json",
                     *env.client_flags(), LEAPCORE_HUB=env.url)  # fmt: skip


def records(proc: Proc, count: int) -> list[dict[str, Any]]:
    """The first ``count`` JSON lines the tunnel printed (waits for them)."""

    def enough() -> list[dict[str, Any]] | None:
        lines = [line for line in proc.stdout().splitlines() if line.startswith("{")]
        assert proc.popen.poll() is None, f"exited: {proc.stdout()} {proc.stderr()}"
        return [json.loads(line) for line in lines] if len(lines) >= count else None

    return wait_for(enough, f"{count} listener records", TIMEOUT)


def stop(proc: Proc) -> None:
    proc.signal(signal.SIGINT)
    assert proc.wait(TIMEOUT) == 0, proc.stderr()


def curl(*args: str) -> str:
    out = subprocess.run(["curl", "-sS", "--max-time", "15", *args], capture_output=True,
                         text=True, timeout=TIMEOUT, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def socks_request(port: int, request: bytes) -> tuple[socket.socket, bytes]:
    """A raw SOCKS5 exchange: greeting, then ``request``; the socket and the 10-byte reply."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(b"\x05\x01\x00" + request)
    reply = b""
    while len(reply) < 12:
        chunk = sock.recv(12 - len(reply))
        assert chunk, f"closed after {reply!r}"
        reply += chunk
    assert reply[:2] == b"\x05\x00"
    return sock, reply[2:]


def connect_domain(host: str, port: int) -> bytes:
    name = host.encode()
    return b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port)


# -- port forwarding -------------------------------------------------------------------------------


def test_forward_echo_and_http(env: Env, echo_port: int, http_port: int) -> None:
    start_solo(env)
    proc = tunnel(env, "forward", "forward",
                  f"0:127.0.0.1:{echo_port}", f"127.0.0.1:0:127.0.0.1:{http_port}")  # fmt: skip
    echo, http = records(proc, 2)
    assert echo["type"] == "port_forward" and echo["bind_addr"] == "127.0.0.1"
    assert (echo["target_addr"], echo["target_port"]) == ("127.0.0.1", echo_port)
    assert (http["target_addr"], http["target_port"]) == ("127.0.0.1", http_port)
    assert echo["worker_id"] == http["worker_id"] and echo["bind_port"] > 0

    payload = random.Random(1).randbytes(3 * MIB)
    assert roundtrip(echo["bind_port"], payload) == payload
    assert curl(f"http://127.0.0.1:{http['bind_port']}/hello.txt") == "hello through the tunnel\n"

    stop(proc)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", echo["bind_port"]), timeout=TIMEOUT)


def test_forward_refuses_a_non_loopback_bind(env: Env) -> None:
    start_solo(env)
    done = env.remote("tunnel", "forward", "--worker", "box", "0.0.0.0:0:127.0.0.1:80")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: bindAddr must be a loopback address (the tunnel listener is "
        'unauthenticated), got "0.0.0.0" (--allow-remote-bind allows it)'
    )
    done = env.remote("tunnel", "socks", "--worker", "box", "localhost:1080")
    assert done.returncode == 2
    assert 'bindAddr must be an IP address, got "localhost"' in done.stderr


def test_forward_to_a_refusing_target_resets_and_a_taken_port_exits_1(env: Env) -> None:
    start_solo(env)
    proc = tunnel(env, "forward", "forward", "-v", f"0:127.0.0.1:{free_port()}")
    port = records(proc, 1)[0]["bind_port"]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
        pytest.raises(ConnectionResetError),
    ):
        sock.recv(10)
    proc.logged("connection_refused")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        done = env.remote("tunnel", "forward", "--worker", "box", f"{busy}:127.0.0.1:80")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{busy}: "), done.stderr
    stop(proc)


# -- SOCKS5 ----------------------------------------------------------------------------------------


def test_socks_curl_python_socks_and_dial_failures(
    env: Env, echo_port: int, http_port: int
) -> None:
    from python_socks import ProxyError
    from python_socks.sync import Proxy

    start_solo(env)
    proc = tunnel(env, "socks", "socks", "0")
    (record,) = records(proc, 1)
    assert record["type"] == "socks5" and "target_addr" not in record
    port = record["bind_port"]

    hello = curl(
        "--socks5-hostname", f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}/hello.txt"
    )
    assert hello == "hello through the tunnel\n"
    hello = curl("--socks5", f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}/hello.txt")
    assert hello == "hello through the tunnel\n"

    proxy = Proxy.from_url(f"socks5://127.0.0.1:{port}", rdns=True)
    sock = proxy.connect(dest_host="localhost", dest_port=echo_port, timeout=TIMEOUT)
    try:
        payload = random.Random(2).randbytes(MIB)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data == payload
    finally:
        sock.close()

    # A target refusing: 0x05; a name that does not resolve: 0x04.
    with pytest.raises(ProxyError) as caught:
        proxy.connect(dest_host="127.0.0.1", dest_port=free_port(), timeout=TIMEOUT)
    assert caught.value.error_code == 5
    sock, reply = socks_request(port, connect_domain("no-such-host.invalid", 80))
    assert reply == b"\x05\x04\x00\x01" + bytes(6)
    assert sock.recv(10) == b""
    sock.close()
    sock, reply = socks_request(port, b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")  # BIND
    assert reply == b"\x05\x07\x00\x01" + bytes(6)
    sock.close()

    stop(proc)


def test_hostile_socks_clients_lose_only_their_connection(env: Env, echo_port: int) -> None:
    start_solo(env)
    proc = tunnel(env, "socks", "socks", "127.0.0.1:0")
    port = records(proc, 1)[0]["bind_port"]
    good, reply = socks_request(port, connect_domain("127.0.0.1", echo_port))
    assert reply == b"\x05\x00\x00\x01" + bytes(6)
    try:
        for garbage in (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(50),  # a TLS hello
            b"\x05",  # a truncated greeting
            b"\x05\x01\x00\x05\x01\x00\x03\x04abc",  # a domain length of 4 with 3 bytes
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as bad:
                bad.sendall(garbage)
                bad.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := bad.recv(100):
                    answer += chunk
                assert answer in (b"", b"\x05\x00"), answer
            good.sendall(b"still here")
            assert good.recv(100) == b"still here"
    finally:
        good.close()
    assert proc.popen.poll() is None
    stop(proc)


# -- load: 100 connections on one channel, 1 MiB each way ----------------------------------------


async def _many(port: int, count: int, size: int) -> list[float]:
    times: list[float] = []

    async def one(index: int) -> None:
        payload = random.Random(index).randbytes(size)
        start = time.monotonic()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        received = bytearray()
        async with stream, trio.open_nursery() as nursery:

            async def send() -> None:
                for offset in range(0, size, 65536):
                    await stream.send_all(payload[offset : offset + 65536])
                await stream.send_eof()

            nursery.start_soon(send)
            while chunk := await stream.receive_some(65536):
                received += chunk
        assert bytes(received) == payload, f"connection {index}: {len(received)} bytes differ"
        times.append(time.monotonic() - start)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index)
    return times


def test_hundred_concurrent_connections_on_one_channel(env: Env, echo_port: int) -> None:
    start_solo(env)
    proc = tunnel(env, "forward", "forward", "-v", f"0:127.0.0.1:{echo_port}")
    port = records(proc, 1)[0]["bind_port"]
    start = time.monotonic()
    times = trio.run(_many, port, 100, MIB)
    elapsed = time.monotonic() - start
    assert len(times) == 100
    assert elapsed < 40, f"100 x 1 MiB each way took {elapsed:.1f}s"
    err = proc.logged(" closed", 100)  # -v: each connection logged, opened and closed
    assert err.count(": connection from 127.0.0.1:") == 200
    # One channel carried them all.
    assert err.count("channel to ") == 1 and "(1 opened so far)" in err
    stop(proc)
