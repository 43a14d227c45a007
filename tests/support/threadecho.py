"""A TCP echo server on 127.0.0.1 in a plain thread, for tests that are not trio code
(``echo_port``: import ``echo_port_fixture`` into the test module)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from support.procs import TIMEOUT


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := sock.recv(65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # the client's EOF, passed back once all is echoed


@pytest.fixture(name="echo_port", scope="module")
def echo_port_fixture() -> Iterator[int]:
    """Echoes until EOF, then EOF; its port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
