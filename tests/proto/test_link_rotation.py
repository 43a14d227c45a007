"""Token rotation and expiry on the wire (sans-IO): ``rotate_token`` and ``rotate_token_ack``
decoded strictly, their bounds, where the state machines allow them, the ``token_expired``
error code, ``client_greeting.token_expires_at`` and what ``token_expired`` means to a
worker."""

from __future__ import annotations

import json
import struct

import pytest
from support.helpers import expect

from leapcore.errors import LinkProtocolError, LocalError, UnexpectedMessage
from leapcore.proto.backoff import (
    Outcome,
    ReconnectAction,
    ReconnectPolicy,
    classify_link_error,
)
from leapcore.proto.link_codec import (
    LINK_ERRORS,
    ClientGreeting,
    ErrorMessage,
    LinkDecoder,
    LinkMessage,
    RotateToken,
    RotateTokenAck,
    encode,
)
from leapcore.proto.link_fields import MAX_SECRET
from leapcore.proto.link_state import LINK_TRANSITIONS as TABLE
from leapcore.proto.link_state import MAX_TIME_MS, LinkConnection, LinkRole, LinkState
from leapcore.proto.link_state import Direction as Way

TOKEN = "n" * 48
EXPIRES = 1_800_000_000_000


def control(record: dict[str, object]) -> bytes:
    body = json.dumps(record).encode()
    return struct.pack(">I", len(body) + 1) + b"\x01" + body


def decode(record: dict[str, object]) -> LinkMessage:
    decoder = LinkDecoder()
    decoder.receive_data(control(record))
    message = decoder.next_message()
    assert message is not None
    return message


def test_the_records_round_trip_and_never_show_the_token() -> None:
    offer = RotateToken(7, TOKEN, EXPIRES)
    assert json.loads(encode(offer)[5:]) == {
        "type": "rotate_token",
        "request_id": 7,
        "auth_token": TOKEN,
        "expires_at": EXPIRES,
    }
    assert decode(json.loads(encode(offer)[5:])) == offer
    assert TOKEN not in repr(offer)
    ack = RotateTokenAck(7)
    assert decode({"type": "rotate_token_ack", "request_id": 7}) == ack
    assert json.loads(encode(ack)[5:]) == {"type": "rotate_token_ack", "request_id": 7}


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"type": "rotate_token", "request_id": 1, "auth_token": TOKEN}, "expires_at"),
        ({"type": "rotate_token", "request_id": 1, "expires_at": EXPIRES}, "auth_token"),
        (
            {"type": "rotate_token", "request_id": 1, "auth_token": TOKEN, "expires_at": "5"},
            "expires_at",
        ),
        (
            {"type": "rotate_token", "request_id": 1, "auth_token": 5, "expires_at": EXPIRES},
            "auth_token",
        ),
        (
            {"type": "rotate_token", "request_id": True, "auth_token": TOKEN, "expires_at": 1},
            "request_id",
        ),
        (
            {
                "type": "rotate_token",
                "request_id": 1,
                "auth_token": TOKEN,
                "expires_at": EXPIRES,
                "old_token": "x",
            },
            "old_token",
        ),
        (
            {"type": "rotate_token", "request_id": 1, "auth_token": TOKEN, "expires_at": -1},
            "out of range",
        ),
        (
            {
                "type": "rotate_token",
                "request_id": 1,
                "auth_token": "t" * (MAX_SECRET + 1),
                "expires_at": EXPIRES,
            },
            f"the limit is {MAX_SECRET}",
        ),
        ({"type": "rotate_token_ack"}, "request_id"),
        ({"type": "rotate_token_ack", "request_id": "1"}, "request_id"),
        ({"type": "rotate_token_ack", "request_id": 1, "ok": True}, "ok"),
        (
            {"type": "client_greeting", "user_id": "u", "user_name": "a", "token_expires_at": "1"},
            "token_expires_at",
        ),
    ],
)
def test_strict_decoding(record: dict[str, object], problem: str) -> None:
    exc = expect(LinkProtocolError, "", decode, record)
    assert problem in str(exc), str(exc)


def test_an_empty_or_unprintable_token_is_refused_both_ways() -> None:
    for token in ("", "a\nb"):
        hub = LinkConnection(LinkRole.HUB)
        hub.state, hub.peer_role = LinkState.WORKER_ACTIVE, LinkRole.WORKER
        expect(LocalError, "non-empty, printable auth_token", hub.send, RotateToken(1, token, 1))
        worker = LinkConnection(LinkRole.WORKER)
        worker.state = LinkState.WORKER_ACTIVE
        data = control({"type": "rotate_token", "request_id": 1, "auth_token": token,
                        "expires_at": 1})  # fmt: skip
        worker.receive_data(data)
        expect(LinkProtocolError, "non-empty, printable auth_token", worker.next_message)
        assert worker.state is LinkState.CLOSED


def test_only_an_established_worker_link_carries_them() -> None:
    legal = {key for key in TABLE if key[3] in ("rotate_token", "rotate_token_ack")}
    W, H = LinkRole.WORKER, LinkRole.HUB
    active = LinkState.WORKER_ACTIVE
    assert legal == {
        (W, active, Way.RECEIVE, "rotate_token"),
        (W, active, Way.SEND, "rotate_token_ack"),
        (H, active, Way.SEND, "rotate_token"),
        (H, active, Way.RECEIVE, "rotate_token_ack"),
    }
    assert all(TABLE[key] is active for key in legal)
    # Before the greeting, a rotate_token breaks the worker's link.
    worker = LinkConnection(W)
    worker.state = LinkState.AWAIT_GREETING
    worker.receive_data(encode(RotateToken(1, TOKEN, EXPIRES)))
    expect(UnexpectedMessage, "cannot receive 'rotate_token'", worker.next_message)
    # A client never sends an ack.
    client = LinkConnection(LinkRole.CLIENT)
    client.state = LinkState.CLIENT_ACTIVE
    expect(LocalError, "cannot send 'rotate_token_ack'", client.send, RotateTokenAck(1))


def test_token_expired_is_a_link_error_code_and_the_greeting_may_say_when() -> None:
    assert "token_expired" in LINK_ERRORS
    error = ErrorMessage("token_expired", "worker token expired on 2027-03-05 08:15 UTC")
    assert decode(json.loads(encode(error)[5:])) == error
    greeting = ClientGreeting("u", "alice", "0123456789abcdef", EXPIRES)
    assert json.loads(encode(greeting)[5:])["token_expires_at"] == EXPIRES
    assert "token_expires_at" not in json.loads(encode(ClientGreeting("u", "a"))[5:])


@pytest.mark.parametrize("greeted", [False, True])
@pytest.mark.parametrize("error_hub", ["", "0123456789abcdef", "fedcba9876543210"])
def test_token_expired_ends_the_reconnect_loop(greeted: bool, error_hub: str) -> None:
    """Whichever hub says it: the worker exits (10) and changes nothing; it is neither a
    hub mismatch (9) nor a deletion."""
    outcome = classify_link_error("token_expired", error_hub, "0123456789abcdef", greeted=greeted)
    assert outcome is Outcome.TOKEN_EXPIRED
    policy = ReconnectPolicy()
    policy.hub_requested_delay(10)
    assert policy.after_attempt(0, 1, outcome).action is ReconnectAction.TOKEN_EXPIRED


def test_an_expiry_past_the_year_9999_is_refused_both_ways() -> None:
    """A calendar cannot show it (the worker logs the expiry, login prints it)."""
    assert MAX_TIME_MS == 253_402_300_799_999
    for message in (
        RotateToken(1, TOKEN, MAX_TIME_MS + 1),
        ClientGreeting("u", "alice", "", MAX_TIME_MS + 1),
    ):
        role = LinkRole.WORKER if isinstance(message, RotateToken) else LinkRole.CLIENT
        hub = LinkConnection(LinkRole.HUB)
        hub.peer_role = role
        hub.state = (
            LinkState.WORKER_ACTIVE if role is LinkRole.WORKER else LinkState.AUTHENTICATING_CLIENT
        )
        expect(LocalError, "after the year 9999", hub.send, message)
        peer = LinkConnection(role)
        peer.state = (
            LinkState.WORKER_ACTIVE if role is LinkRole.WORKER else LinkState.AWAIT_GREETING
        )
        peer.receive_data(encode(message))
        expect(LinkProtocolError, "after the year 9999", peer.next_message)
    worker = LinkConnection(LinkRole.WORKER)
    worker.state = LinkState.WORKER_ACTIVE
    worker.receive_data(encode(RotateToken(1, TOKEN, MAX_TIME_MS)))
    assert worker.next_message() == RotateToken(1, TOKEN, MAX_TIME_MS)
