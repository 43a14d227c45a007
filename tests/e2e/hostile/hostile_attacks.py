"""Attacker traffic against a hub on loopback, crafted byte by byte (synchronous, stdlib sockets).

Shared by the ``tests/e2e/hostile`` suite and ``benchmarks/hub_abuse_bench.py``. Every function
takes the hub's ``(host, port)`` and a ``source`` address in 127.0.0.0/8 to send from (so the
bystander on 127.0.0.1 never shares an address budget with the attacker), and every flood is
bounded twice: by a byte or frame count and by ``seconds``.

* HTTP/2 frames are made with ``h2`` (a client connection, for the preface and well-formed
  requests) and ``hyperframe`` (the raw PING / SETTINGS / CONTINUATION frames);
* WebSocket frames with ``websockets``' sans-IO client protocol and ``Frame.serialize``;
* link records with leapcore's own codec (:func:`leapcore.proto.link_codec.encode`), so hostile
  *sequences* of well-formed records can be sent without a client state machine in the way.

Non-reading attackers shrink their receive buffer (``SO_RCVBUF``) so the hub's writes block
early: the hub, not the kernel, then has to hold whatever it keeps producing.

Test-support code, not part of leapcore.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import h2.config
import h2.connection
import h2.settings
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from leapcore.crypto.keys import PUBLIC_KEY_FIELDS
from leapcore.proto.link_codec import (
    PROTOCOL_VERSION,
    ClientGreeting,
    ClientHello,
    Connect,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    HubRequest,
    HubResponse,
    LinkDecoder,
    LinkMessage,
    Registered,
    encode,
)

#: The HTTP/2 connection preface (client magic).
H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Receive buffer of an attacker that never reads (the kernel rounds it up to a minimum).
TINY_RCVBUF: Final = 4096
#: Seconds any single socket operation of an attacker may block.
IO_TIMEOUT: Final = 5.0

Address = tuple[str, int]


def dial(hub: Address, source: str, *, rcvbuf: int | None = None) -> socket.socket:
    """A TCP connection to ``hub`` from ``source`` (port chosen by the kernel)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.settimeout(IO_TIMEOUT)
        sock.connect(hub)
    except BaseException:
        sock.close()
        raise
    return sock


def abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): no FIN handshake, no TIME_WAIT left behind."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def drain(sock: socket.socket, seconds: float) -> bytes:
    """Whatever the peer sends within ``seconds`` (stops early at EOF or a reset)."""
    got = b""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return got


def closed_by_peer(sock: socket.socket, seconds: float) -> bool:
    """True when the peer ends the connection (EOF or reset) within ``seconds``; what it sent
    before is read and dropped."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return False
        try:
            if not sock.recv(1 << 20):
                return True
        except OSError:
            return True
    return False


def blast(sock: socket.socket, block: bytes, *, seconds: float, limit: int) -> int:
    """Write ``block`` again and again for at most ``seconds`` and ``limit`` bytes, never
    reading; stops when the peer stops reading (a write blocks for 0.5 s) or goes away.
    Returns the bytes written."""
    sent = 0
    end = time.monotonic() + seconds
    sock.settimeout(0.5)
    try:
        while sent < limit and time.monotonic() < end:
            try:
                sent += sock.send(block)
            except TimeoutError:
                break
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            raise
    finally:
        sock.settimeout(IO_TIMEOUT)
    return sent


# -- HTTP/2 -------------------------------------------------------------------------------------


def _h2_client(settings: dict[int, int] | None = None) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    if settings:
        conn.update_settings(settings)
    return conn


def _get(path: str, hub: Address) -> list[tuple[str, str]]:
    return [
        (":method", "GET"),
        (":path", path),
        (":scheme", "http"),
        (":authority", f"{hub[0]}:{hub[1]}"),
    ]


def h2_get(hub: Address, source: str, path: str = "/healthz", seconds: float = 5.0) -> int:
    """The status of one well-behaved HTTP/2 ``GET`` (0 if none came within ``seconds``)."""
    import h2.events

    conn = _h2_client()
    sock = dial(hub, source)
    try:
        conn.send_headers(1, _get(path, hub), end_stream=True)
        sock.sendall(conn.data_to_send())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            data = drain(sock, min(0.2, max(0.0, end - time.monotonic())))
            if not data:
                continue
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    for name, value in event.headers or ():
                        if name == b":status":
                            return int(value)
            sock.sendall(conn.data_to_send())
        return 0
    finally:
        abort(sock)


def h2_window_zero_get(hub: Address, source: str) -> bytes:
    """Announce an initial window of 0, then ``GET /healthz``: the answer's body cannot be
    sent. Returns what the hub wrote within a second."""
    conn = _h2_client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sock = dial(hub, source)
    try:
        conn.send_headers(1, _get("/healthz", hub), end_stream=True)
        with contextlib.suppress(ConnectionError):  # the hub may drop us: the test checks it
            sock.sendall(conn.data_to_send())
        return drain(sock, 1.0)
    finally:
        abort(sock)


def h2_request_then_reset(hub: Address, source: str) -> bytes:
    """A ``GET /healthz`` and its ``RST_STREAM`` in one write: the hub answers a stream that
    is already closed. Returns what the hub wrote within a second."""
    conn = _h2_client()
    sock = dial(hub, source)
    try:
        conn.send_headers(1, _get("/healthz", hub), end_stream=True)
        conn.reset_stream(1)
        conn.send_headers(3, _get("/metrics", hub), end_stream=False)
        conn.reset_stream(3)
        with contextlib.suppress(ConnectionError):  # the hub may drop us: the test checks it
            sock.sendall(conn.data_to_send())  # preface, settings, both requests, both resets
        return drain(sock, 1.0)
    finally:
        abort(sock)


def h2_preface_only(hub: Address, sources: list[str], count: int) -> list[socket.socket]:
    """``count`` connections (round-robin over ``sources``) that send the HTTP/2 preface and
    nothing else; the caller owns (and must close) the sockets."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            sock = dial(hub, sources[i % len(sources)])
            socks.append(sock)
            sock.sendall(H2_PREFACE)
    except BaseException:
        for sock in socks:
            abort(sock)
        raise
    return socks


def _h2_flood(hub: Address, source: str, block: bytes, seconds: float, limit: int) -> int:
    sock = dial(hub, source, rcvbuf=TINY_RCVBUF)
    try:
        try:
            sock.sendall(H2_PREFACE + SettingsFrame(0).serialize())
        except ConnectionError:
            return 0
        return blast(sock, block, seconds=seconds, limit=limit)
    finally:
        abort(sock)


def h2_ping_flood(hub: Address, source: str, *, seconds: float, limit: int = 256 << 20) -> int:
    """PING frames (each owes a PING ACK) from a peer that never reads; bytes sent."""
    block = b"".join(
        PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize() for i in range(4096)
    )
    return _h2_flood(hub, source, block, seconds, limit)


def h2_settings_flood(hub: Address, source: str, *, seconds: float, limit: int = 256 << 20) -> int:
    """SETTINGS frames (each owes a SETTINGS ACK) from a peer that never reads; bytes sent."""
    code = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
    frame = SettingsFrame(0, settings={code: 100}).serialize()
    return _h2_flood(hub, source, frame * 4096, seconds, limit)


def h2_continuation_flood(
    hub: Address, source: str, *, seconds: float, limit: int = 256 << 20
) -> int:
    """A HEADERS frame without END_HEADERS, then CONTINUATION frames that never end it (a
    header block growing without bound); bytes sent."""
    sock = dial(hub, source, rcvbuf=TINY_RCVBUF)
    try:
        fragment = b"\x00\x03abc\x03def"  # a literal header field, not indexed
        start = HeadersFrame(1, data=fragment)  # no END_HEADERS, no END_STREAM
        sock.sendall(H2_PREFACE + SettingsFrame(0).serialize() + start.serialize())
        block = ContinuationFrame(1, data=fragment * (16000 // len(fragment))).serialize() * 16
        return blast(sock, block, seconds=seconds, limit=limit)
    finally:
        abort(sock)


# -- WebSocket ----------------------------------------------------------------------------------


def ws_open(hub: Address, source: str, *, rcvbuf: int | None = None) -> tuple[socket.socket, Any]:
    """A WebSocket connection to ``/link`` (the upgrade completed); (socket, protocol)."""
    protocol = ClientProtocol(parse_uri(f"ws://{hub[0]}:{hub[1]}/link"), max_size=None)
    sock = dial(hub, source, rcvbuf=rcvbuf)
    try:
        protocol.send_request(protocol.connect())
        for data in protocol.data_to_send():
            sock.sendall(data)
        end = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < end:
            chunk = sock.recv(65536)
            if not chunk:
                break
            protocol.receive_data(chunk)
            if any(isinstance(e, Response) for e in protocol.events_received()):
                if protocol.handshake_exc is not None:
                    raise protocol.handshake_exc
                return sock, protocol
        raise ConnectionError("no WebSocket handshake response")
    except BaseException:
        abort(sock)
        raise


def ws_ping_flood(hub: Address, source: str, *, seconds: float, limit: int = 256 << 20) -> int:
    """Masked PING frames of 125 bytes (each owes a PONG) from a peer that never reads."""
    sock, _ = ws_open(hub, source, rcvbuf=TINY_RCVBUF)
    try:
        frame = Frame(Opcode.PING, b"p" * 125).serialize(mask=True)
        return blast(sock, frame * 2048, seconds=seconds, limit=limit)
    finally:
        abort(sock)


class RawLink:
    """A link over WebSocket driven by hand: any record, in any order, read only when asked."""

    def __init__(self, hub: Address, source: str, *, rcvbuf: int | None = None) -> None:
        self.sock, self.protocol = ws_open(hub, source, rcvbuf=rcvbuf)
        self.decoder = LinkDecoder()
        self.closed = False

    def send(self, *messages: LinkMessage) -> None:
        self.send_bytes(b"".join(encode(m) for m in messages))

    def send_bytes(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        for out in self.protocol.data_to_send():
            self.sock.sendall(out)

    def receive(self, seconds: float) -> list[LinkMessage]:
        """The records that arrive within ``seconds`` (returns as soon as any did)."""
        messages: list[LinkMessage] = []
        end = time.monotonic() + seconds
        while not messages and not self.closed and (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self.protocol.receive_data(chunk)
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode in (Opcode.BINARY, Opcode.CONT):
                    self.decoder.receive_data(event.data)
                elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                    self.closed = True
            with contextlib.suppress(OSError):
                for out in self.protocol.data_to_send():
                    if out:
                        self.sock.sendall(out)
            while (message := self.decoder.next_message()) is not None:
                messages.append(message)
        return messages

    def wait_for(
        self, accept: Callable[[LinkMessage], bool], seconds: float
    ) -> tuple[LinkMessage | None, list[LinkMessage]]:
        """The first record ``accept`` takes within ``seconds`` (``None``: none came, or the
        link closed), and every record seen up to then."""
        seen: list[LinkMessage] = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not self.closed:
            for message in self.receive(left):
                seen.append(message)
                if accept(message):
                    return message, seen
        return None, seen

    def wait_closed(self, seconds: float) -> bool:
        """True when the hub ends the link within ``seconds`` (records meanwhile dropped)."""
        end = time.monotonic() + seconds
        while not self.closed and (left := end - time.monotonic()) > 0:
            self.receive(left)
        return self.closed

    def close(self) -> None:
        abort(self.sock)


def sign_in(hub: Address, source: str, token: str, **kw: Any) -> RawLink:
    """A raw client link, signed in (``client_greeting`` received)."""
    link = RawLink(hub, source, **kw)
    try:
        link.send(ClientHello(PROTOCOL_VERSION, token))
        greeting, seen = link.wait_for(lambda m: isinstance(m, ClientGreeting), IO_TIMEOUT)
        if greeting is None:
            raise ConnectionError(f"not greeted: {seen!r} (closed: {link.closed})")
    except BaseException:
        link.close()
        raise
    return link


def call(link: RawLink, request_id: int, method: str, **params: Any) -> HubResponse:
    """One ``hub_request`` on a raw link, and its answer (records in between are dropped)."""
    link.send(HubRequest(request_id, method, params))
    answer, seen = link.wait_for(
        lambda m: isinstance(m, HubResponse) and m.request_id == request_id, IO_TIMEOUT
    )
    if not isinstance(answer, HubResponse):
        raise ConnectionError(f"no answer to {method}: {seen!r} (closed: {link.closed})")
    return answer


def mint_key(hub: Address, source: str, token: str) -> str:
    """A registration key minted by ``token``'s user over a short-lived link from ``source``."""
    owner = sign_in(hub, source, token)
    try:
        minted = call(owner, 1, "regkey.create")
    finally:
        owner.close()
    assert minted.result is not None, minted
    return str(minted.result["registration_key"])


def raw_record(record: dict[str, Any]) -> bytes:
    """A control frame around any JSON object: no field checks (leapcore's own encoder
    refuses to write what its decoder would refuse to read)."""
    body = b"\x01" + json.dumps(record).encode()
    return struct.pack(">I", len(body)) + body


def register(
    hub: Address, source: str, key: str, name: str, labels: dict[str, str] | None = None
) -> LinkMessage | None:
    """Send ``register`` with ``key`` and ``name`` (of any length); the hub's answer
    (``registered`` or an ``error``), or ``None`` when it closed the link without one."""
    link = RawLink(hub, source)
    try:
        record = {"type": "register", "protocol_version": PROTOCOL_VERSION}
        record |= {"registration_key": key, "name": name, "version": "0.1.0"}
        record["labels"] = labels or {}
        link.send_bytes(raw_record(record))
        answer, _ = link.wait_for(lambda m: isinstance(m, Registered | ErrorMessage), IO_TIMEOUT)
        return answer
    finally:
        link.close()


def fake_keys() -> dict[str, bytes]:
    """Public keys of the right sizes for a ``heartbeat`` (no worker will ever use them)."""
    return {name: os.urandom(size) for name, (_, size) in PUBLIC_KEY_FIELDS.items()}


def connect_worker(hub: Address, source: str, token: str) -> RawLink:
    """A worker link by hand: ``connect`` and a keyed first heartbeat, nothing read yet."""
    link = RawLink(hub, source)
    link.send(Connect(PROTOCOL_VERSION, token), Heartbeat(1, "classic", **fake_keys()))
    return link


#: Labels as large as a worker may have (16 of them, values of 200 characters): ~3.4 KB of a
#: ``workers.list`` answer per worker.
BIG_LABELS: Final = {f"label{i:02d}": "v" * 200 for i in range(16)}


def fake_workers(
    hub: Address, source: str, user_token: str, count: int, labels: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """Register ``count`` workers (with ``labels``) for the user, keys minted one at a time
    on a raw client link, and report keys for each once; returns their (worker id, token)."""
    made: list[tuple[str, str]] = []
    client = sign_in(hub, source, user_token)
    try:
        for i in range(count):
            minted = call(client, i + 1, "regkey.create")
            assert minted.result is not None, minted
            answer = register(hub, source, minted.result["registration_key"], f"fake-{i}", labels)
            assert isinstance(answer, Registered), answer
            made.append((answer.worker_id, answer.auth_token))
            worker = connect_worker(hub, source, answer.auth_token)
            worker.wait_for(lambda m: isinstance(m, HeartbeatAck), IO_TIMEOUT)
            worker.close()
    finally:
        client.close()
    return made


def unread(sock: socket.socket) -> int:
    """Bytes waiting in the socket's receive queue (``FIONREAD``)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def wait_stalled(sock: socket.socket, seconds: float) -> bool:
    """Wait (bounded) until the peer has stopped sending to us: bytes wait unread and their
    count held still over five polls 20 ms apart. True when it did."""
    end = time.monotonic() + seconds
    last, still = -1, 0
    while time.monotonic() < end:
        now = unread(sock)
        still = still + 1 if now == last and now > 0 else 0
        if still >= 5:
            return True
        last = now
        time.sleep(0.02)
    return False


def ws_ping_flood_blocked_writer(
    hub: Address,
    source: str,
    token: str,
    *,
    requests: int,
    seconds: float,
    limit: int = 256 << 20,
) -> int:
    """Sign in, pipeline ``requests`` ``workers.list`` calls without reading, until their
    answers block the hub's writer; then flood PINGs, each owing a PONG that the blocked writer
    cannot send. A link where the writer did not block (the pongs went out, so the hub's reader
    blocked at once) is dropped and the attack tried again, within ``seconds`` in all.
    Returns the bytes of pings sent."""
    frame = Frame(Opcode.PING, b"p" * 125).serialize(mask=True)
    end = time.monotonic() + seconds
    sent = 0
    while sent < limit and (left := end - time.monotonic()) > 0.5:
        link = sign_in(hub, source, token, rcvbuf=TINY_RCVBUF)
        try:
            link.send(*[HubRequest(i, "workers.list", {}) for i in range(1, requests + 1)])
            wait_stalled(link.sock, min(left, 2.0))
            started = time.monotonic()
            sent += blast(link.sock, frame * 2048, seconds=end - started, limit=limit - sent)
            if time.monotonic() - started > 1.0:
                break  # the hub kept reading pings: the attack took hold
        finally:
            link.close()
    return sent


@contextlib.contextmanager
def held(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            abort(sock)
