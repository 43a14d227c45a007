"""A TCP echo server on 127.0.0.1 in a plain thread, for tests that are not trio code
(``echo_port``: import ``echo_port_fixture`` into the test module)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from support.procs import TIMEOUT


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the client's EOF, passed back once all is echoed
        except OSError:  # the client reset it: nothing to echo to
            pass


class ThreadedServer(socketserver.ThreadingTCPServer):
    """A threaded TCP server for tests: daemon threads, a deep accept queue."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # tests open a hundred connections at once


@contextmanager
def serving(handler: type[socketserver.BaseRequestHandler]) -> Iterator[int]:
    """A :class:`ThreadedServer` on 127.0.0.1 running ``handler`` in a thread; its port.
    Stopped and closed when the block ends."""
    server = ThreadedServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.fixture(name="echo_port", scope="module")
def echo_port_fixture() -> Iterator[int]:
    """Echoes until EOF, then EOF; its port."""
    with serving(_Echo) as port:
        yield port
