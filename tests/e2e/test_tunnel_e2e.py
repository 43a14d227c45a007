"""``leapcore remote tunnel forward`` and ``socks`` as real processes, through a real solo hub
and its worker, to real TCP and HTTP servers on loopback: curl and python-socks as clients,
dial failures as SOCKS replies, 100 concurrent connections on one channel, hostile clients."""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import select
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from support.procs import Env, Proc, env_fixture, wait_for  # noqa: F401 (env_fixture: the fixture)
from support.threadecho import echo_port_fixture, serving  # noqa: F401 (echo_port)

from leapcore.proto.limits import SOCKS_MAX_PENDING_HANDSHAKES

TIMEOUT = 20.0
MIB = 1024 * 1024


# -- servers on the worker's side --------------------------------------------------------------


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


# -- robustness: an idle flood, a channel killed, the hub gone -----------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def raised_nofile() -> Iterator[int]:
    """This process's open-file soft limit raised to its hard limit (processes started
    inside inherit it); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class IdleFlood:
    """Idle connections to ``port``, watched with epoll: each one the server closes (EOF or
    reset) is counted and closed here."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.poll = select.epoll()
        self.open: dict[int, socket.socket] = {}
        self.opened = 0
        self.closed_by_server = 0

    def add(self, count: int) -> None:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
            if self.opened % 2:
                sock.sendall(b"\x05")  # half of them start a greeting, then nothing
            sock.setblocking(False)
            self.open[sock.fileno()] = sock
            self.poll.register(sock, select.EPOLLIN | select.EPOLLRDHUP)
            self.opened += 1

    def reap(self, timeout: float) -> None:
        """Collect what the server closed, waiting at most ``timeout`` for the first."""
        for fd, _ in self.poll.poll(timeout):
            sock = self.open.pop(fd)
            try:
                data = sock.recv(100)
            except ConnectionResetError:
                data = b""
            assert data == b"", f"the server sent {data!r} to an idle connection"
            self.poll.unregister(sock)
            sock.close()
            self.closed_by_server += 1

    def close(self) -> None:
        for sock in self.open.values():
            sock.close()
        self.poll.close()


def test_ten_thousand_idle_socks_connections(env: Env, echo_port: int) -> None:
    """10 000 idle connections to a real ``tunnel socks``: the server holds at most its
    handshake budget of them (the oldest closed as new ones come), a real client still
    gets through, descriptors and memory stay bounded, one warning for the episode."""
    from python_socks.sync import Proxy

    budget = SOCKS_MAX_PENDING_HANDSHAKES
    total, batch = 10_000, 500
    started = time.monotonic()
    with raised_nofile() as limit:
        assert limit >= 2 * budget + 1000, f"RLIMIT_NOFILE hard limit {limit} is too low"
        start_solo(env)
        proc = tunnel(env, "socks", "socks", "0")
        port = records(proc, 1)[0]["bind_port"]
        pid = proc.popen.pid
        base_fds, base_rss = fd_count(pid), rss_mib(pid)
        max_fds, max_rss = base_fds, base_rss
        flood = IdleFlood(port)
        try:
            while flood.opened < total:
                flood.add(min(batch, total - flood.opened))
                max_fds = max(max_fds, fd_count(pid))
                # Wait until the server has caught up: all but the budget closed.
                deadline = time.monotonic() + TIMEOUT
                while flood.closed_by_server < flood.opened - budget:
                    assert time.monotonic() < deadline, (
                        f"{flood.opened} opened, only {flood.closed_by_server} closed"
                    )
                    flood.reap(0.05)
                    max_fds = max(max_fds, fd_count(pid))
                max_rss = max(max_rss, rss_mib(pid))

            # (a) the budget is full of idle connections: a real client still gets through.
            proxy = Proxy.from_url(f"socks5://127.0.0.1:{port}", rdns=True)
            sock = proxy.connect(dest_host="localhost", dest_port=echo_port, timeout=TIMEOUT)
            with sock:
                payload = random.Random(3).randbytes(256 * 1024)
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            assert data == payload
            # It took the oldest idle one's place.
            flood.reap(TIMEOUT)
            assert flood.closed_by_server >= total - budget + 1

            # (d) every idle connection past the budget was closed by the server (EOF or
            # reset, counted above); the budget's worth are still held.
            flood.reap(0.2)
            assert total - budget <= flood.closed_by_server <= total, flood.closed_by_server
            assert len(flood.open) <= budget

            # (b) descriptors and (c) memory stayed bounded.
            max_fds = max(max_fds, fd_count(pid))
            max_rss = max(max_rss, rss_mib(pid))
            print(
                f"\nidle flood: {total} connections in {time.monotonic() - started:.1f}s; "
                f"tunnel process fds {base_fds} -> max {max_fds} (budget {budget}); "
                f"RSS {base_rss:.1f} -> max {max_rss:.1f} MiB"
            )
            assert max_fds <= base_fds + budget + 32, (base_fds, max_fds)
            assert max_rss < 150, f"RSS reached {max_rss:.1f} MiB"

            err = proc.stderr()
            assert err.count("SOCKS5 handshakes pending (the budget)") == 1, err[-2000:]
            assert "Traceback" not in err
        finally:
            flood.close()
        stop(proc)
    assert time.monotonic() - started < 60


def start_hub_and_worker(env: Env) -> Proc:
    """A hub and a separate worker process ``box`` (classic), online; the worker."""
    env.start_hub()
    env.login()
    worker = env.start_worker("box", env.reg_key(), flags=["--encryption-mode", "classic"])
    env.wait_online("box")
    return worker


#: What the source server sends, over and over.
BLOCK = random.Random(4).randbytes(MIB)


class _Source(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        with contextlib.suppress(OSError):
            while True:
                sock.sendall(BLOCK)


@pytest.fixture(name="source_port")
def source_port_fixture() -> Iterator[int]:
    """A TCP server that sends :data:`BLOCK` over and over to each connection."""
    with serving(_Source) as port:
        yield port


class Transfer:
    """A forwarded connection to the source server, read (every byte checked) by a thread
    until the tunnel ends it; only reading, so that a reset is seen by the read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.received = 0
        self.progress = threading.Event()
        self.outcome: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        size = len(BLOCK)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                self.outcome.append("reset")
                return
            except TimeoutError:
                self.outcome.append("hung")  # no data, no EOF, no reset for TIMEOUT seconds
                return
            if not chunk:
                self.outcome.append("eof")
                return
            start = self.received % size
            if chunk != (BLOCK * 2)[start : start + len(chunk)]:
                self.outcome.append(f"wrong bytes at offset {self.received}")
                return
            self.received += len(chunk)
            if self.received >= 4 * MIB:
                self.progress.set()

    def wait_progress(self) -> None:
        assert self.progress.wait(TIMEOUT), (self.received, self.outcome)

    def ended(self) -> str:
        """How the connection ended (waits for it)."""
        self._thread.join(TIMEOUT + 5)
        assert not self._thread.is_alive(), "the reader is stuck"
        self.sock.close()
        return self.outcome[0]


def test_a_channel_killed_mid_transfer(env: Env, echo_port: int, source_port: int) -> None:
    """The worker killed (-9) under a transfer: the in-flight connection is reset, the
    tunnel goes on (connections fail while the worker is away), and once the worker is back
    the next connection opens a new channel."""
    worker = start_hub_and_worker(env)
    proc = tunnel(env, "forward", "forward", "-v",
                  f"0:127.0.0.1:{echo_port}", f"0:127.0.0.1:{source_port}")  # fmt: skip
    echo, source = (record["bind_port"] for record in records(proc, 2))
    assert roundtrip(echo, b"first") == b"first"

    transfer = Transfer(source)
    transfer.wait_progress()
    worker.signal(signal.SIGKILL)  # the channel's other end, gone without a word
    assert worker.wait() == -signal.SIGKILL
    assert transfer.ended() == "reset", (transfer.outcome, proc.stderr())
    assert transfer.received >= 4 * MIB
    assert proc.popen.poll() is None, proc.stderr()
    port = echo

    # While the worker is away, a connection fails (reset) and the tunnel stays up.
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
        pytest.raises(ConnectionResetError),
    ):
        sock.recv(10)
    assert proc.popen.poll() is None, proc.stderr()

    # The worker back (same data directory): the next connection opens a new channel.
    env.start_worker("box", flags=["--encryption-mode", "classic"])
    env.wait_online("box")
    payload = random.Random(5).randbytes(2 * MIB)
    assert roundtrip(port, payload) == payload
    err = proc.logged("(2 opened so far)")
    assert "(1 opened so far)" in err
    stop(proc)


def test_the_tunnel_exits_7_when_the_hub_link_dies(env: Env, source_port: int) -> None:
    """The hub killed: ``tunnel forward`` closes its listener and connections and exits 7
    (unavailable) with one clear line on stderr, within a bounded time."""
    start_solo(env)
    proc = tunnel(env, "forward", "forward", f"0:127.0.0.1:{source_port}")
    port = records(proc, 1)[0]["bind_port"]
    transfer = Transfer(port)
    transfer.wait_progress()
    killed = time.monotonic()
    env.kill_hub()
    code = proc.wait(TIMEOUT)
    took = time.monotonic() - killed
    assert code == 7, proc.stderr()
    assert transfer.ended() == "reset", transfer.outcome
    print(f"\nthe tunnel exited {took:.2f}s after the hub was killed")
    assert took < 10
    lines = [line for line in proc.stderr().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr()
    assert lines[0].startswith("error: the link to the hub was lost ("), lines
    assert lines[0].endswith("); the tunnels are closed"), lines
    assert "Traceback" not in proc.stderr()
    last = json.loads(proc.stdout().splitlines()[-1])  # --json: the same as one line
    assert last == {"error": {"code": "link_closed", "message": lines[0].removeprefix("error: ")}}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def test_connections_past_the_channel_stream_limit_fail_alone(env: Env, echo_port: int) -> None:
    """A real worker lets one channel carry 128 streams: the 129th forwarded connection is
    reset, the 128 carry on, and once one ends the next one gets through."""
    start_solo(env)
    proc = tunnel(env, "forward", "forward", "-v", f"0:127.0.0.1:{echo_port}")
    port = records(proc, 1)[0]["bind_port"]
    held: list[socket.socket] = []
    try:
        for index in range(128):
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            held.append(sock)
            sock.sendall(index.to_bytes(2, "big"))
            assert sock.recv(2) == index.to_bytes(2, "big")
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as extra,
            pytest.raises(ConnectionResetError),
        ):
            extra.sendall(b"one too many")
            extra.recv(100)
        for index, sock in enumerate(held):
            sock.sendall(b"still" + index.to_bytes(2, "big"))
            data = b""
            while len(data) < 7:
                data += sock.recv(7 - len(data))
            assert data == b"still" + index.to_bytes(2, "big")

        first = held.pop(0)
        first.shutdown(socket.SHUT_WR)
        assert first.recv(100) == b""  # the echo's EOF: that stream is done
        first.close()

        def gets_through() -> bool:
            try:
                return roundtrip(port, b"next") == b"next"
            except ConnectionResetError:
                return False  # the worker had not yet forgotten the finished stream

        wait_for(gets_through, "a connection after one ended", TIMEOUT)
    finally:
        for sock in held:
            sock.close()
    err = proc.stderr()
    assert err.count("channel to ") == 1  # one channel throughout: it was never broken
    assert "Traceback" not in err
    stop(proc)
