"""The web page's driver on in-memory streams and a mock clock: the request timeout (a
slow-loris client), the connection cap, and the presence broadcast that never blocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from support.threadclock import settle

from leapcore.hub.presence import Presence
from leapcore.hub.server import Hub
from leapcore.hub.web import WebServer
from leapcore.proto.limits import WEB_REQUEST_TIMEOUT


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    hub = Hub(tmp_path / "hub.db")
    yield WebServer(hub, hub_url="http://127.0.0.1:4327")
    hub.store.close()


async def reply_of(stream: trio.abc.Stream) -> bytes:
    reply = b""
    while chunk := await stream.receive_some(65536):
        reply += chunk
    return reply


async def test_a_slow_loris_is_answered_408_after_the_request_timeout(
    web: WebServer, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.handle, server)
        start = trio.current_time()
        for _ in range(3):  # a byte now and then never makes it last longer
            await client.send_all(b"G")
            await trio.sleep(2)
        reply = await reply_of(client)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - start == pytest.approx(WEB_REQUEST_TIMEOUT)
    assert web.connections == 0


async def test_connections_over_the_cap_get_503(
    web: WebServer, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    web.max_connections = 2
    async with trio.open_nursery() as nursery:
        held = []
        for _ in range(2):
            client, server = trio.testing.memory_stream_pair()
            held.append(client)
            nursery.start_soon(web.handle, server)
        await trio.testing.wait_all_tasks_blocked()
        assert web.connections == 2
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(web.handle, server)
        assert (await reply_of(client)).startswith(b"HTTP/1.1 503 ")
        for stream in held:  # the two held ones time out in their turn
            assert (await reply_of(stream)).startswith(b"HTTP/1.1 408 ")
    assert web.connections == 0


async def test_a_subscriber_that_falls_behind_is_dropped_never_waited_for() -> None:
    presence = Presence(queue=2, max_subscribers=2)
    slow = presence.subscribe()
    fast = presence.subscribe()
    assert slow is not None and fast is not None
    assert presence.subscribe() is None  # the cap
    presence.changed("a")
    presence.changed("b")
    assert [fast.receive_nowait(), fast.receive_nowait()] == ["a", "b"]
    presence.changed("c")  # slow's queue is full: it is dropped, at once
    assert presence.dropped == 1 and len(presence) == 1
    assert [slow.receive_nowait(), slow.receive_nowait()] == ["a", "b"]
    with pytest.raises(trio.EndOfChannel):
        slow.receive_nowait()
    assert fast.receive_nowait() == "c"
    fast.close()
    presence.changed("d")  # a closed subscriber is forgotten
    assert len(presence) == 0


async def test_an_event_stream_that_is_not_read_is_closed_and_never_blocks_the_hub(
    web: WebServer, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    hub = web.hub
    user, token = hub.store.create_user("alice", hub.now_ms())
    _, token_id, _ = hub.store.authenticate_client(token, hub.now_ms())
    session = web.sessions.create(
        lambda: "s1",
        trio.current_time(),
        user_id=user.id,
        user_name="alice",
        is_admin=False,
        token_id=token_id,
    )
    client, server = trio.testing.lockstep_stream_pair()  # a write waits for a read
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.handle, server)
        await client.send_all(
            f"GET /api/events HTTP/1.1\r\nHost: x\r\nCookie: leapcore_session={session.id}"
            "\r\n\r\n".encode()
        )
        await settle()  # its session is checked in a store thread
        assert web.streams == 1 and len(hub.presence) == 1
        for _ in range(hub.presence.queue + 1):  # never waits for the stream
            hub.presence.changed(user.id)
        assert hub.presence.dropped == 1 and len(hub.presence) == 0
        start = trio.current_time()
        with trio.fail_after(60):
            while web.streams:
                await trio.sleep(0.5)
        # The head was never read: the write gave up after the send timeout.
        assert trio.current_time() - start <= web.send_timeout + 0.5
    assert web.connections == 0 and session.streams == 0
