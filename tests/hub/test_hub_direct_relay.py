"""The hub's reader writes the frames of one read straight to an idle receiver's socket
(``_Link.flush_ready``) instead of waking its writer. Over a real socket pair and a real
WebSocket pipe: every frame arrives once, in each channel's order; a socket too full to take
anything hands the frames back to the writer, which sends a control record queued meanwhile
first, as always, then the frames in order; each frame's credit comes back once."""

from __future__ import annotations

import os

import trio
from websockets.client import ClientProtocol
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from leapcore.hub.server import _Flow, _Link
from leapcore.net.websocket import MAX_WS_MESSAGE, WebSocketPipe
from leapcore.proto.link_codec import ChannelCredit, ChannelData, LinkDecoder
from leapcore.proto.link_state import LinkState
from leapcore.proto.relay import RelayDirection

Seen = tuple[str, int, int]


def _link(near: trio.socket.SocketType) -> tuple[_Link, list[tuple[int, int]]]:
    written: list[tuple[int, int]] = []
    pipe = WebSocketPipe(
        trio.SocketStream(near), ServerProtocol(state=OPEN, max_size=MAX_WS_MESSAGE)
    )
    link = _Link(pipe, "websocket", lambda flow, cost: written.append((flow.channel_id, cost)))
    link.conn.state = LinkState.CLIENT_ACTIVE
    return link, written


def _queue(link: _Link, frames: list[tuple[int, int]], size: int) -> None:
    for channel, n in frames:
        flow = link.flows.get(channel)
        if flow is None:
            flow = link.flows[channel] = _Flow(channel, RelayDirection.TO_CLIENT)
        data = ChannelData(channel, n, 0, bytes([n]) * size)
        assert link.enqueue_data(flow, data, size, wake=False)


async def _read(far: trio.socket.SocketType, count: int, skip: int = 0) -> list[Seen]:
    """What the far end receives after ``skip`` filler bytes: ("data", channel, id) and
    ("credit", channel, amount), as a client would decode them."""
    client = ClientProtocol(parse_uri("ws://hub/link"), state=OPEN, max_size=MAX_WS_MESSAGE)
    decoder = LinkDecoder()
    seen: list[Seen] = []
    while len(seen) < count:
        data = await far.recv(1 << 20)
        assert data, "the link closed early"
        cut = min(skip, len(data))
        skip -= cut
        client.receive_data(data[cut:])
        for event in client.events_received():
            decoder.receive_data(bytes(event.data))
        while (message := decoder.next_message()) is not None:
            if isinstance(message, ChannelData):
                seen.append(("data", message.channel_id, message.correlation_id))
            elif isinstance(message, ChannelCredit):
                seen.append(("credit", message.channel_id, message.credit))
    return seen


async def test_the_frames_of_a_read_go_out_from_the_reader_in_order() -> None:
    near, far = trio.socket.socketpair()
    link, written = _link(near)
    _queue(link, [(1, 0), (2, 0), (1, 1), (1, 2), (2, 1)], 1000)
    link._idle = True  # the writer waits for work (it does not run in this test)
    link.flush_ready()
    assert not link._wake.is_set()  # all written from here: nothing for the writer
    # round-robin between the channels, each channel's frames in order
    assert await _read(far, 5) == [
        ("data", 1, 0),
        ("data", 2, 0),
        ("data", 1, 1),
        ("data", 2, 1),
        ("data", 1, 2),
    ]
    assert sorted(written) == [(1, 1000)] * 3 + [(2, 1000)] * 2
    assert all(flow.queued == 0 for flow in link.flows.values())
    near.close()
    far.close()


async def test_a_full_socket_hands_the_frames_back_to_the_writer() -> None:
    near, far = trio.socket.socketpair()
    near.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4096)
    filler = 0
    while True:  # fill the socket until it takes nothing more
        try:
            filler += os.write(near.fileno(), b"\0" * 4096)
        except BlockingIOError:
            break
    link, written = _link(near)
    _queue(link, [(1, n) for n in range(6)], 30_000)
    link._idle = True
    link.flush_ready()
    assert link._wake.is_set()  # nothing written: the writer is woken for the frames
    assert written == []
    assert [data for data, _ in link.flows[1].frames] and len(link.flows[1].frames) == 6
    link.enqueue(ChannelCredit(1, 4096))  # a control record queued after them
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.writer)
        seen = await _read(far, 7, skip=filler)
        nursery.cancel_scope.cancel()
    assert seen == [("credit", 1, 4096)] + [("data", 1, n) for n in range(6)]
    assert written == [(1, 30_000)] * 6
    assert link.flows[1].queued == 0
    near.close()
    far.close()
