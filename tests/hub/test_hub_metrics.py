"""The hub's ``GET /metrics``: Prometheus text over HTTP/1.1 and HTTP/2, values following events."""

from __future__ import annotations

from pathlib import Path

import h2.config
import h2.connection
import h2.events
import trio
from support.hubpeer import (
    CONTENT_TYPE,
    get_http1,
    parse,
    running_hub,
    scrape,
    value,
    wait_until,
)

from leapcore.hub.metrics import HubMetrics, Snapshot
from leapcore.net.pipe import parse_hub_url
from leapcore.proto.link_codec import ErrorMessage, Heartbeat, OpenChannel, Register, encode
from leapcore.proto.link_state import LinkRole


async def get_h2(url: str, path: str = "/metrics") -> tuple[int, dict[str, str], bytes]:
    """One GET over cleartext HTTP/2 with prior knowledge."""
    address = parse_hub_url(url)
    stream = await trio.open_tcp_stream(address.host, address.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
        end_stream=True,
    )
    status, headers, body = 0, {}, b""
    with trio.fail_after(10):
        await stream.send_all(conn.data_to_send())
        done = False
        while not done:
            data = await stream.receive_some(65536)
            assert data, "connection closed before the response ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    for name, val in event.headers or []:
                        key = name.decode() if isinstance(name, bytes) else name
                        text = val.decode() if isinstance(val, bytes) else val
                        headers[key] = text
                    status = int(headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data or b""
                    conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
            await stream.send_all(conn.data_to_send())
    await stream.aclose()
    return status, headers, body


def test_registry_is_per_instance_and_every_series_starts_at_zero() -> None:
    first, second = HubMetrics(), HubMetrics()
    first.registration("ok")
    first.frame_rejected("frame_too_large")
    one = parse(first.render(Snapshot(workers_online=3, worker_links=4, client_links=1)).decode())
    two = parse(second.render(Snapshot(0, 0, 0)).decode())
    assert value(one, "registrations_total", outcome="ok") == 1
    assert value(two, "registrations_total", outcome="ok") == 0
    assert value(one, "frames_rejected_total", reason="frame_too_large") == 1
    assert value(one, "workers_online") == 3
    assert value(one, "links", kind="worker") == 4 and value(one, "links", kind="client") == 1
    for outcome in ("rejected", "quota", "error"):
        assert value(two, "registrations_total", outcome=outcome) == 0
    for reason in ("link_protocol_error", "unexpected_message", "relay_violation"):
        assert value(two, "frames_rejected_total", reason=reason) == 0
    assert value(two, "channel_opens_total", result="unavailable") == 0
    assert value(two, "channels") == 0 and value(two, "frames_dropped_total") == 0
    for direction in ("to_worker", "to_client"):
        assert value(two, "relayed_bytes_total", direction=direction) == 0
    for result in ("opened", "rejected", "not_found", "not_owner", "worker_offline", "timeout"):
        assert value(two, "channel_opens_total", result=result) == 0


async def test_metrics_over_http1_and_h2_agree(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as env:
        status1, headers1, body1 = await get_http1(env.url)
        status2, headers2, body2 = await get_h2(env.url)
        assert (status1, status2) == (200, 200)
        assert headers1["content-type"] == headers2["content-type"] == CONTENT_TYPE
        assert int(headers2["content-length"]) == len(body2)
        assert parse(body1.decode()).keys() == parse(body2.decode()).keys()
        assert b"# TYPE leapcore_hub_workers_online gauge" in body1
        assert b"# TYPE leapcore_hub_frames_rejected_total counter" in body2
        # Only GET.
        address = parse_hub_url(env.url)
        stream = await trio.open_tcp_stream(address.host, address.port)
        await stream.send_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        reply = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 405")


async def test_values_follow_workers_registrations_and_garbage(tmp_path: Path) -> None:
    async with running_hub(tmp_path, max_workers_per_user=2) as env:
        before = await scrape(env)
        assert value(before, "workers_online") == 0
        assert value(before, "links", kind="worker") == 0

        # Registrations: two succeed, a bad key is rejected, the third hits the quota.
        worker_id, token = await env.register(name="first")
        await env.register(name="second")
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Register(1, "not-a-key", "w", "1.0"))
            [error] = await peer.until_closed()
            assert isinstance(error, ErrorMessage) and error.code == "unauthenticated"
        async with env.link(LinkRole.WORKER) as peer:
            await peer.send(Register(1, env.key(), "w", "1.0"))
            [error] = await peer.until_closed()
            assert isinstance(error, ErrorMessage) and error.code == "quota_exceeded"
        after = await scrape(env)
        assert value(after, "registrations_total", outcome="ok") == 2
        assert value(after, "registrations_total", outcome="rejected") == 1
        assert value(after, "registrations_total", outcome="quota") == 1

        # A worker connects, a client connects and opens a channel (refused), then both leave.
        async with env.worker(token), env.client() as client:
            online = await scrape(env)
            assert value(online, "workers_online") == 1
            assert value(online, "links", kind="worker") == 1
            assert value(online, "links", kind="client") == 1
            await client.send(OpenChannel(4, "no-such-worker", b"m1", 65519))
            refused = await client.recv()
            assert refused.type == "channel_refused"
            opened = await scrape(env)
            assert value(opened, "channel_opens_total", result="not_found") == 1
            assert value(opened, "channel_opens_total", result="opened") == 0
            assert value(opened, "channels") == 0
        await wait_until(lambda: not env.hub.is_online(worker_id))
        await wait_until(lambda: not env.hub._links)
        gone = await scrape(env)
        assert value(gone, "workers_online") == 0
        assert value(gone, "links", kind="worker") == value(gone, "links", kind="client") == 0

        # Garbage from raw clients: each bad frame is counted by the code sent back.
        junk = {
            b"\x00\x00\x00\x05\x01{no}": "link_protocol_error",
            b"\xff\xff\xff\xff": "frame_too_large",
            encode(Heartbeat(1)): "unexpected_message",  # not a valid first frame
        }
        for data, code in junk.items():
            async with env.link(LinkRole.CLIENT) as bad:
                await bad.pipe.send(data)
                [error] = await bad.until_closed()
                assert isinstance(error, ErrorMessage) and error.code == code
        garbage = await scrape(env)
        for code in junk.values():
            assert value(garbage, "frames_rejected_total", reason=code) == 1, code
        assert value(garbage, "frames_rejected_total", reason="relay_violation") == 0
        for direction in ("to_worker", "to_client"):
            assert value(garbage, "relayed_bytes_total", direction=direction) == 0
        assert value(garbage, "frames_dropped_total") == 0
