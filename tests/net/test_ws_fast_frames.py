"""The WebSocket pipe's own data framing (leapcore.net.websocket): what it writes is what
the ``websockets`` library parses, what it cuts out of reads is what was sent, however the
reads split it, and anything that is not a whole binary frame goes to the library."""

from __future__ import annotations

import random

import pytest
import trio
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from leapcore.net.websocket import MAX_WS_MESSAGE, WebSocketPipe, binary_frame


def _parse_all(data: bytes, *, mask: bool) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=mask, max_size=None)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:  # pragma: no cover - the parser wanted more than there is
            raise AssertionError("incomplete frame")
    return frames


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 300_000])
def test_frames_built_here_parse_as_the_library_reads_them(mask: bool, size: int) -> None:
    payload = random.Random(size).randbytes(size)
    parts = [payload[: size // 3], payload[size // 3 :]]
    [frame] = _parse_all(binary_frame(parts, mask=mask), mask=mask)
    assert (frame.opcode, frame.fin, bytes(frame.data)) == (Opcode.BINARY, True, payload)


class _NoStream(trio.abc.Stream):
    """Writes are recorded; the tests feed reads through :meth:`WebSocketPipe.feed`."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise AssertionError("not read in these tests")

    async def aclose(self) -> None:
        pass


def _pipe(server: bool) -> tuple[WebSocketPipe, _NoStream]:
    stream = _NoStream()
    protocol = (
        ServerProtocol(state=OPEN, max_size=MAX_WS_MESSAGE)
        if server
        else ClientProtocol(parse_uri("ws://hub/link"), state=OPEN, max_size=MAX_WS_MESSAGE)
    )
    return WebSocketPipe(stream, protocol), stream


def _received(pipe: WebSocketPipe) -> bytes:
    out = b"".join(bytes(c) for c in pipe._chunks)
    pipe._chunks.clear()
    return out


@pytest.mark.parametrize("server", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("step", [1, 7, 4096, 300_000])
def test_reads_split_anywhere_give_the_same_bytes(server: bool, step: int) -> None:
    pipe, _ = _pipe(server)
    rng = random.Random(step)
    payloads = [rng.randbytes(n) for n in (3, 200, 70_000, 0, 131_072, 5)]
    wire = b"".join(binary_frame([p], mask=server) for p in payloads)
    got = b""
    for start in range(0, len(wire), step):
        pipe.feed(wire[start : start + step])
        got += _received(pipe)
    assert got == b"".join(payloads)
    assert pipe._fast and not pipe._pending


def test_a_ping_hands_everything_after_it_to_the_library() -> None:
    pipe, _ = _pipe(server=True)
    client = ClientProtocol(parse_uri("ws://hub/link"), state=OPEN)
    client.send_binary(b"before-")
    client.send_ping(b"hi")
    client.send_binary(b"after-", fin=False)
    client.send_continuation(b"fragment", fin=True)
    wire = b"".join(client.data_to_send())
    for start in range(0, len(wire), 5):
        pipe.feed(wire[start : start + 5])
    assert _received(pipe) == b"before-after-fragment"
    assert not pipe._fast
    pong = Frame(Opcode.PONG, b"hi").serialize(mask=False)
    assert pipe._owed == [pong]


@pytest.mark.parametrize("server", [True, False], ids=["masked", "unmasked"])
def test_an_oversized_frame_is_the_librarys_to_refuse(server: bool) -> None:
    pipe, _ = _pipe(server)
    frame = binary_frame([bytes(MAX_WS_MESSAGE + 1)], mask=server)
    pipe.feed(frame[:64])  # the header says it all
    assert not pipe._fast
    assert pipe._protocol.close_sent is not None and pipe._protocol.close_sent.code == 1009
    assert _received(pipe) == b""


async def test_send_parts_writes_one_frame_of_them_joined() -> None:
    pipe, stream = _pipe(server=False)
    await pipe.send_parts([b"ab", b"", b"cdef"])
    await pipe.send(b"gh")
    frames = _parse_all(b"".join(stream.sent), mask=True)
    assert [bytes(f.data) for f in frames] == [b"abcdef", b"gh"]


# With a 4 KiB send buffer, Linux refuses the 1000-byte frame whole once full and takes the
# first 30 000-byte one in part.
@pytest.mark.parametrize("size", [1000, 30_000], ids=["refused-whole", "written-in-part"])
async def test_writes_straight_to_a_full_socket_keep_their_order(size: int) -> None:
    """``send_now`` writes to the socket at once until it is full: then it writes nothing
    (``None``), or holds the rest of a frame it could write only in part, which the next
    write sends first; frames through the usual path (direct writes too) follow in order."""
    near, far = trio.socket.socketpair()
    near.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4096)
    pipe = WebSocketPipe(trio.SocketStream(near), ServerProtocol(state=OPEN))
    assert pipe._direct_fd() >= 0
    expected: list[bytes] = []
    held: int | None = 0
    while held == 0:
        payload = bytes([len(expected) % 256]) * size
        held = pipe.send_now(payload)
        if held is not None:
            expected.append(payload)
    if held:  # a frame written in part: nothing else goes straight out before its rest
        assert pipe.send_now(b"x") is None
    wire = bytearray()

    async def read_all(total: int) -> None:
        while len(wire) < total:
            wire.extend(await far.recv(65536))

    tail = [b"after-1", b"after-2" * 300]
    total = sum(len(binary_frame([p], mask=False)) for p in [*expected, *tail])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all, total)
        await pipe.flush()
        for payload in tail:
            await pipe.send(payload)
    assert [bytes(f.data) for f in _parse_all(bytes(wire), mask=False)] == [*expected, *tail]
    far.close()
    near.close()
