"""The per-role link state machines: the table, the greeting rule, heartbeat keys."""

from __future__ import annotations

import itertools

import pytest
from support.helpers import expect

from leapcore.errors import (
    LinkProtocolError,
    LocalError,
    UnexpectedMessage,
    UnsupportedProtocolVersion,
)
from leapcore.proto.link_codec import (
    CONTROL_TYPES,
    ChannelAccept,
    ChannelClose,
    ChannelCredit,
    ChannelData,
    ChannelOpened,
    ChannelRefused,
    ChannelReject,
    ChannelRequest,
    ClientGreeting,
    ClientHello,
    Connect,
    Deregister,
    DeregisterAck,
    ErrorMessage,
    GoAway,
    Heartbeat,
    HeartbeatAck,
    HubRequest,
    HubResponse,
    LinkMessage,
    OpenChannel,
    Register,
    Registered,
    RotateToken,
    RotateTokenAck,
    WorkerGreeting,
    encode,
)
from leapcore.proto.link_state import (
    LINK_TRANSITIONS,
    Direction,
    LinkConnection,
    LinkRole,
    LinkState,
)

KEYS = {
    "public_key": bytes(range(32)),
    "mlkem_public_key": bytes(1568),
    "slhdsa_public_key": bytes(64),
}
KEYED = Heartbeat(1, encryption_mode="pq", **KEYS)

#: One sample of every message type.
SAMPLES: dict[str, LinkMessage] = {
    m.type: m
    for m in [
        Register(1, "k" * 48, "box", "0.1.0"),
        Registered("w" * 48, "t" * 48),
        Connect(1, "t" * 48),
        WorkerGreeting("w1", "u1", "alice"),
        ClientHello(1, "api"),
        ClientGreeting("u1", "alice"),
        Heartbeat(2),
        HeartbeatAck(2),
        OpenChannel(1, "w1", bytes(1616), 2**24),
        ChannelRequest(1, 5, "u1", bytes(1616), 2**24),
        ChannelAccept(1, 5, bytes(48), 2**24),
        ChannelReject(1, 5, "handshake_failed", "bad"),
        ChannelOpened(1, 5, bytes(48), 2**24),
        ChannelRefused(1, "not_found", "no such worker"),
        ChannelClose(5, "closed", "bye"),
        ChannelCredit(5, 65536),
        GoAway(10, "hub is shutting down"),
        Deregister(3, "worker deregistered by owner"),
        DeregisterAck(3),
        RotateToken(4, "n" * 48, 1_800_000_000_000),
        RotateTokenAck(4),
        HubRequest(1, "workers.list", {}),
        HubResponse(1, {"workers": []}),
        ErrorMessage("unauthenticated", "invalid auth token"),
        ChannelData(5, 1, 0, bytes(16)),
    ]
}


def test_samples_cover_every_type() -> None:
    assert set(SAMPLES) == {*CONTROL_TYPES, "data"}


def at(role: LinkRole, state: LinkState, *, keyed: bool = True) -> LinkConnection:
    conn = LinkConnection(role)
    conn.state = state
    conn._keyed_heartbeat_seen = keyed
    if role is LinkRole.HUB:
        worker_side = state in (
            LinkState.REGISTERING,
            LinkState.AUTHENTICATING_WORKER,
            LinkState.WORKER_ACTIVE,
        )
        conn.peer_role = LinkRole.WORKER if worker_side else LinkRole.CLIENT
    return conn


CASES = list(itertools.product(LinkRole, LinkState, Direction, SAMPLES))


@pytest.mark.parametrize(
    ("role", "state", "way", "kind"),
    CASES,
    ids=[f"{r.value}-{s.value}-{w.value}-{k}" for r, s, w, k in CASES],
)
def test_the_table_is_the_whole_machine(
    role: LinkRole, state: LinkState, way: Direction, kind: str
) -> None:
    """Every (role, state, direction, type): allowed exactly when the table says so, and
    then the state becomes the table's target; refused otherwise, as the documented
    error (send: LocalError, state unchanged; receive: UnexpectedMessage, link closed)."""
    message = SAMPLES[kind]
    target = LINK_TRANSITIONS.get((role, state, way, kind))
    conn = at(role, state)
    if way is Direction.SEND:
        if target is None:
            expect(LocalError, rf"^{role.value} link cannot send {kind!r}", conn.send, message)
            assert conn.state is state
        else:
            assert conn.send(message) == encode(message)
            assert conn.state is target
    else:
        if target is None:
            expect(UnexpectedMessage, "cannot receive", conn.receive, encode(message))
            assert conn.state is LinkState.CLOSED
        else:
            assert conn.receive(encode(message)) == [message]
            assert conn.state is target


def test_worker_session() -> None:
    worker, hub = LinkConnection(LinkRole.WORKER), LinkConnection(LinkRole.HUB)
    assert hub.receive(worker.send(Connect(1, "tok"))) == [Connect(1, "tok")]
    assert hub.state is LinkState.AUTHENTICATING_WORKER and hub.peer_role is LinkRole.WORKER
    # The worker's keyed heartbeat may arrive while the hub checks the token.
    assert hub.receive(worker.send(KEYED)) == [KEYED]
    assert worker.receive(hub.send(WorkerGreeting("w1", "u1", "alice")))
    assert worker.state is hub.state is LinkState.WORKER_ACTIVE
    request = ChannelRequest(1, 5, "u1", bytes(1616), 2**24)
    assert worker.receive(hub.send(request)) == [request]
    accept = ChannelAccept(1, 5, bytes(49904), 2**24)
    assert hub.receive(worker.send(accept)) == [accept]
    assert hub.receive(worker.send(Heartbeat(2))) == [Heartbeat(2)]


def test_registration_link_ends_after_registered() -> None:
    worker, hub = LinkConnection(LinkRole.WORKER), LinkConnection(LinkRole.HUB)
    hub.receive(worker.send(Register(1, "k" * 48, "box", "0.1.0", {"os": "linux"})))
    assert hub.state is LinkState.REGISTERING
    worker.receive(hub.send(Registered("w" * 48, "t" * 48)))
    assert worker.state is hub.state is LinkState.CLOSED


def test_nothing_may_come_before_the_greeting() -> None:
    worker = LinkConnection(LinkRole.WORKER)
    worker.send(Connect(1, "tok"))
    early = ChannelRequest(1, 5, "u1", bytes(1616), 2**24)
    expect(
        UnexpectedMessage,
        r"^worker link cannot receive 'channel_request' in state 'await-greeting'$",
        worker.receive,
        encode(early),
    )
    assert worker.state is LinkState.CLOSED


def test_an_error_record_closes_from_any_live_state() -> None:
    client = LinkConnection(LinkRole.CLIENT)
    client.send(ClientHello(1, "api"))
    error = ErrorMessage("unauthenticated", "invalid api token")
    assert client.receive(encode(error)) == [error]
    assert client.state is LinkState.CLOSED


@pytest.mark.parametrize(
    "hello", [Connect(2, "t"), ClientHello(0, "a"), Register(9, "k", "n", "v")]
)
def test_hub_refuses_other_protocol_versions(hello: LinkMessage) -> None:
    hub = LinkConnection(LinkRole.HUB)
    expect(
        UnsupportedProtocolVersion,
        r"^unsupported protocol version \d+; this hub speaks 1$",
        hub.receive,
        encode(hello),
    )
    assert hub.state is LinkState.CLOSED


def test_garbage_closes_the_link() -> None:
    hub = LinkConnection(LinkRole.HUB)
    expect(LinkProtocolError, "unknown frame kind", hub.receive, b"\x00\x00\x00\x01\x07")
    assert hub.state is LinkState.CLOSED


# -- heartbeat keys -----------------------------------------------------------------


def active_hub_for_worker() -> LinkConnection:
    hub = LinkConnection(LinkRole.HUB)
    hub.receive(encode(Connect(1, "t")))
    hub.send(WorkerGreeting("w1", "u1", "alice"))
    return hub


def test_first_worker_heartbeat_must_carry_keys_and_mode() -> None:
    expect(
        LinkProtocolError,
        r"^a worker's first heartbeat must carry its three public keys and mode$",
        active_hub_for_worker().receive,
        encode(Heartbeat(1)),
    )
    for name in KEYS:
        partial = Heartbeat(1, "pq", **{**KEYS, name: None})
        expect(LinkProtocolError, "must carry", active_hub_for_worker().receive, encode(partial))


@pytest.mark.parametrize(("name", "size"), [("public_key", 32), ("mlkem_public_key", 1568)])
def test_heartbeat_key_sizes(name: str, size: int) -> None:
    bad = Heartbeat(1, "pq", **{**KEYS, name: bytes(size - 1)})
    expect(
        LinkProtocolError,
        rf"^heartbeat {name} must be {size} bytes, got {size - 1}$",
        active_hub_for_worker().receive,
        encode(bad),
    )


def test_heartbeat_mode_must_be_known() -> None:
    bad = Heartbeat(1, "quantum", **KEYS)
    expect(
        LinkProtocolError,
        "heartbeat: unknown encryption mode 'quantum'",
        active_hub_for_worker().receive,
        encode(bad),
    )


def test_later_heartbeats_and_client_heartbeats_carry_no_keys() -> None:
    hub = active_hub_for_worker()
    hub.receive(encode(KEYED))
    assert hub.receive(encode(Heartbeat(2))) == [Heartbeat(2)]
    expect(LinkProtocolError, "only a worker's first heartbeat", hub.receive, encode(KEYED))
    client_hub = LinkConnection(LinkRole.HUB)
    client_hub.receive(encode(ClientHello(1, "a")))
    client_hub.send(ClientGreeting("u1", "alice"))
    expect(LinkProtocolError, "only a worker's first", client_hub.receive, encode(KEYED))


def test_worker_cannot_send_a_keyless_first_heartbeat() -> None:
    worker = LinkConnection(LinkRole.WORKER)
    worker.send(Connect(1, "t"))
    expect(LocalError, "first heartbeat must carry", worker.send, Heartbeat(1))
    assert worker.state is LinkState.AWAIT_GREETING
    worker.send(KEYED)
    expect(LocalError, "only a worker's first", worker.send, KEYED)


@pytest.mark.parametrize(
    "message",
    [
        ChannelReject(1, 5, "not_found", "the hub's code, not the worker's"),
        ChannelRefused(1, "whatever", "x"),
        ChannelClose(5, "bye", "x"),
        ErrorMessage("oops", "x"),
    ],
    ids=lambda m: m.type,
)
def test_codes_come_from_fixed_tables(message: LinkMessage) -> None:
    # (receiver, sender) connections in states where the record is legal.
    ends = {
        "channel_reject": (
            at(LinkRole.HUB, LinkState.WORKER_ACTIVE),
            at(LinkRole.WORKER, LinkState.WORKER_ACTIVE),
        ),
        "channel_refused": (
            at(LinkRole.CLIENT, LinkState.CLIENT_ACTIVE),
            at(LinkRole.HUB, LinkState.CLIENT_ACTIVE),
        ),
        "channel_close": (
            at(LinkRole.CLIENT, LinkState.CLIENT_ACTIVE),
            at(LinkRole.HUB, LinkState.CLIENT_ACTIVE),
        ),
        "error": (
            at(LinkRole.CLIENT, LinkState.CLIENT_ACTIVE),
            at(LinkRole.HUB, LinkState.CLIENT_ACTIVE),
        ),
    }
    receiver, sender = ends[message.type]
    pattern = f"^{message.type} code .* is not one of "
    expect(LinkProtocolError, pattern, receiver.receive, encode(message))
    assert receiver.state is LinkState.CLOSED
    expect(LocalError, pattern, sender.send, message)
    assert sender.state is LinkState.CLIENT_ACTIVE or sender.state is LinkState.WORKER_ACTIVE


def test_channel_credit_grants_a_positive_amount() -> None:
    from leapcore.proto.link_codec import ChannelCredit

    hub = at(LinkRole.HUB, LinkState.CLIENT_ACTIVE)
    expect(
        LocalError, "^channel_credit must grant a positive credit$", hub.send, ChannelCredit(1, 0)
    )
    assert hub.state is LinkState.CLIENT_ACTIVE
    client = at(LinkRole.CLIENT, LinkState.CLIENT_ACTIVE)
    expect(LinkProtocolError, "positive credit", client.receive, encode(ChannelCredit(1, 0)))
    assert client.state is LinkState.CLOSED
    worker = at(LinkRole.WORKER, LinkState.WORKER_ACTIVE)
    assert worker.receive(encode(ChannelCredit(3, 7))) == [ChannelCredit(3, 7)]


def test_workers_may_open_sibling_channels_and_query_the_hub() -> None:
    worker = at(LinkRole.WORKER, LinkState.WORKER_ACTIVE)
    hub = at(LinkRole.HUB, LinkState.WORKER_ACTIVE)
    for up in (OpenChannel(1, "w2", bytes(48), 2**24), HubRequest(2, "worker.keys", {})):
        assert hub.receive(worker.send(up)) == [up]
    for down in (
        ChannelOpened(1, 5, bytes(48), 2**24),
        ChannelRefused(1, "not_found", "worker not found"),
        HubResponse(2, {"worker_id": "w2"}),
    ):
        assert worker.receive(hub.send(down)) == [down]
    assert worker.state is hub.state is LinkState.WORKER_ACTIVE
