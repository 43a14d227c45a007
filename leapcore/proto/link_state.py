"""Which link message may go which way, when: the per-role link state machines (sans-IO).

Three roles speak the link protocol: a **worker** and a **client** (each
talking to the hub), and the **hub** (talking to either; it learns which from
the first frame). :data:`LINK_TRANSITIONS` is the whole machine: for every
(role, state, direction, message type) that is legal, the state it leads to.
A received message not in the table is an
:class:`~leapcore.errors.UnexpectedMessage` and breaks the link; sending one
is a :class:`~leapcore.errors.LocalError` and changes nothing.

Rules beyond the table, also enforced here:

* The hub's greeting is the first thing a peer receives; nothing before it.
* A hello must carry :data:`~leapcore.proto.link_codec.PROTOCOL_VERSION`.
* A worker's first heartbeat carries its three public keys and a valid
  encryption mode; later heartbeats and every client heartbeat carry none.
* A ``channel_credit`` grants a positive amount.
* A ``rotate_token`` carries a token (not empty, printable); its ``expires_at``, and a
  ``client_greeting``'s ``token_expires_at``, are at most :data:`MAX_TIME_MS` (the end of
  the year 9999: a time a calendar can show).
* The ``code`` of ``channel_reject``, ``channel_refused``, ``channel_close``
  and ``error`` records comes from a fixed table (:data:`CODE_TABLES`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

from ..crypto.keys import PUBLIC_KEY_FIELDS
from ..crypto.mode import parse_encryption_mode
from ..errors import (
    InvalidEncryptionMode,
    LinkProtocolError,
    LocalError,
    UnexpectedMessage,
    UnsupportedProtocolVersion,
)
from .link_codec import (
    CLOSE_CODES,
    LINK_ERRORS,
    OPEN_ERRORS,
    PROTOCOL_VERSION,
    WORKER_OPEN_ERRORS,
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
    LinkDecoder,
    LinkMessage,
    OpenChannel,
    Register,
    Registered,
    RelayedData,
    RotateToken,
    RotateTokenAck,
    WorkerGreeting,
    encode,
)

__all__ = [
    "LINK_TRANSITIONS",
    "MAX_TIME_MS",
    "Direction",
    "LinkConnection",
    "LinkRole",
    "LinkState",
]

#: The latest expiry a record may carry (ms since the epoch): 9999-12-31T23:59:59.999Z.
MAX_TIME_MS: Final = 253_402_300_799_999


class _Enum(enum.Enum):
    """Hashed by identity: :data:`LINK_TRANSITIONS` is looked up by a tuple of these for
    every message sent and received, and ``Enum.__hash__`` (in Python) costs more than the
    lookup. Members are singletons compared by identity, so nothing else changes."""

    __hash__ = object.__hash__


class LinkRole(_Enum):
    WORKER = "worker"
    CLIENT = "client"
    HUB = "hub"


class LinkState(_Enum):
    START = "start"
    #: Worker: register sent; hub: register received, registering.
    REGISTERING = "registering"
    #: Peer: hello sent, waiting for the hub's greeting.
    AWAIT_GREETING = "await-greeting"
    #: Hub: a worker's connect received, checking its token.
    AUTHENTICATING_WORKER = "authenticating-worker"
    #: Hub: a client's hello received, checking its token.
    AUTHENTICATING_CLIENT = "authenticating-client"
    #: Worker side, or the hub's side of a worker link.
    WORKER_ACTIVE = "worker-active"
    #: Client side, or the hub's side of a client link.
    CLIENT_ACTIVE = "client-active"
    #: A deregistering worker's link: the hub answered its connect with ``deregister``
    #: instead of a greeting; only heartbeats and the acknowledgement may follow.
    WORKER_RETIRING = "worker-retiring"
    CLOSED = "closed"


class Direction(_Enum):
    SEND = "send"
    RECEIVE = "receive"


S, R = Direction.SEND, Direction.RECEIVE
W, C, H = LinkRole.WORKER, LinkRole.CLIENT, LinkRole.HUB
St = LinkState

#: Messages that flow on an established worker link, worker -> hub and hub -> worker. A
#: worker may also open channels to its sibling workers and ask the hub about them.
_WORKER_UP: Final = (
    Heartbeat,
    ChannelAccept,
    ChannelReject,
    ChannelClose,
    DeregisterAck,
    RotateTokenAck,
    OpenChannel,
    HubRequest,
    ChannelData,
)
_WORKER_DOWN: Final = (
    HeartbeatAck,
    ChannelRequest,
    ChannelOpened,
    ChannelRefused,
    ChannelCredit,
    ChannelClose,
    GoAway,
    Deregister,
    RotateToken,
    HubResponse,
    ChannelData,
)
#: Messages that flow on an established client link, client -> hub and hub -> client.
_CLIENT_UP: Final = (Heartbeat, OpenChannel, ChannelClose, HubRequest, ChannelData)
_CLIENT_DOWN: Final = (
    HeartbeatAck,
    ChannelOpened,
    ChannelRefused,
    ChannelCredit,
    ChannelClose,
    HubResponse,
    GoAway,
    ChannelData,
)

Key = tuple[LinkRole, LinkState, Direction, str]


def _stay(
    role: LinkRole, state: LinkState, way: Direction, types: Iterable[type]
) -> dict[Key, LinkState]:
    return {(role, state, way, t.type): state for t in types}  # type: ignore[attr-defined]


def _errors_close() -> dict[Key, LinkState]:
    """An error record, either way, from any live state, closes the link."""
    live = {
        W: (St.START, St.REGISTERING, St.AWAIT_GREETING, St.WORKER_ACTIVE, St.WORKER_RETIRING),
        C: (St.START, St.AWAIT_GREETING, St.CLIENT_ACTIVE),
        H: (
            St.START,
            St.REGISTERING,
            St.AUTHENTICATING_WORKER,
            St.AUTHENTICATING_CLIENT,
            St.WORKER_ACTIVE,
            St.CLIENT_ACTIVE,
            St.WORKER_RETIRING,
        ),
    }
    return {
        (role, state, way, ErrorMessage.type): St.CLOSED
        for role, states in live.items()
        for state in states
        for way in Direction
    }


#: The link state machines: (role, state, direction, message type) -> next state.
LINK_TRANSITIONS: Final[dict[Key, LinkState]] = {
    # Worker side.
    (W, St.START, S, Register.type): St.REGISTERING,
    (W, St.REGISTERING, R, Registered.type): St.CLOSED,
    (W, St.START, S, Connect.type): St.AWAIT_GREETING,
    (W, St.AWAIT_GREETING, S, Heartbeat.type): St.AWAIT_GREETING,
    (W, St.AWAIT_GREETING, R, WorkerGreeting.type): St.WORKER_ACTIVE,
    **_stay(W, St.WORKER_ACTIVE, S, _WORKER_UP),
    **_stay(W, St.WORKER_ACTIVE, R, _WORKER_DOWN),
    # A deregistering worker is never greeted again: it is told to go, and acknowledges.
    (W, St.AWAIT_GREETING, R, Deregister.type): St.WORKER_RETIRING,
    (W, St.WORKER_RETIRING, S, Heartbeat.type): St.WORKER_RETIRING,
    (W, St.WORKER_RETIRING, R, HeartbeatAck.type): St.WORKER_RETIRING,
    (W, St.WORKER_RETIRING, S, DeregisterAck.type): St.CLOSED,
    # Client side.
    (C, St.START, S, ClientHello.type): St.AWAIT_GREETING,
    (C, St.AWAIT_GREETING, R, ClientGreeting.type): St.CLIENT_ACTIVE,
    **_stay(C, St.CLIENT_ACTIVE, S, _CLIENT_UP),
    **_stay(C, St.CLIENT_ACTIVE, R, _CLIENT_DOWN),
    # Hub side: the first frame says who is calling.
    (H, St.START, R, Register.type): St.REGISTERING,
    (H, St.REGISTERING, S, Registered.type): St.CLOSED,
    (H, St.START, R, Connect.type): St.AUTHENTICATING_WORKER,
    (H, St.AUTHENTICATING_WORKER, R, Heartbeat.type): St.AUTHENTICATING_WORKER,
    (H, St.AUTHENTICATING_WORKER, S, WorkerGreeting.type): St.WORKER_ACTIVE,
    (H, St.AUTHENTICATING_WORKER, S, Deregister.type): St.WORKER_RETIRING,
    (H, St.WORKER_RETIRING, R, Heartbeat.type): St.WORKER_RETIRING,
    (H, St.WORKER_RETIRING, S, HeartbeatAck.type): St.WORKER_RETIRING,
    (H, St.WORKER_RETIRING, R, DeregisterAck.type): St.CLOSED,
    (H, St.START, R, ClientHello.type): St.AUTHENTICATING_CLIENT,
    (H, St.AUTHENTICATING_CLIENT, S, ClientGreeting.type): St.CLIENT_ACTIVE,
    **_stay(H, St.WORKER_ACTIVE, R, _WORKER_UP),
    **_stay(H, St.WORKER_ACTIVE, S, _WORKER_DOWN),
    **_stay(H, St.CLIENT_ACTIVE, R, _CLIENT_UP),
    **_stay(H, St.CLIENT_ACTIVE, S, _CLIENT_DOWN),
    **_errors_close(),
}

_HELLOS: Final = (Register, Connect, ClientHello)
#: Records whose ``code`` must come from a fixed table.
CODE_TABLES: Final[dict[type, frozenset[str]]] = {
    ChannelReject: WORKER_OPEN_ERRORS,
    ChannelRefused: OPEN_ERRORS,
    ChannelClose: CLOSE_CODES,
    ErrorMessage: LINK_ERRORS,
}


def _check_code(message: LinkMessage, error: type[LocalError | LinkProtocolError]) -> None:
    table = CODE_TABLES.get(type(message))
    if table is not None and message.code not in table:  # type: ignore[union-attr]
        raise error(
            f"{message.type} code {message.code!r} is not one of "  # type: ignore[union-attr]
            f"{', '.join(sorted(table))}"
        )


def _check_values(message: LinkMessage, error: type[LocalError | LinkProtocolError]) -> None:
    if isinstance(message, ChannelCredit) and message.credit == 0:
        raise error("channel_credit must grant a positive credit")
    if isinstance(message, RotateToken) and not (
        message.auth_token and message.auth_token.isprintable()
    ):
        raise error("rotate_token must carry a non-empty, printable auth_token")
    when = None
    if isinstance(message, RotateToken):
        when = message.expires_at
    elif isinstance(message, ClientGreeting):
        when = message.token_expires_at
    if when is not None and when > MAX_TIME_MS:
        raise error(f"{message.type}: an expiry after the year 9999 ({when} ms)")


class LinkConnection:
    """One end of one link: encodes what it sends, decodes and checks what it receives."""

    def __init__(self, role: LinkRole) -> None:
        self.role = role
        self.state = LinkState.START
        self._decoder = LinkDecoder()
        #: Worker links (either side): whether the first heartbeat, with keys, went by.
        self._keyed_heartbeat_seen = False
        #: Hub side: which kind of peer this is, once its hello arrived.
        self.peer_role: LinkRole | None = None

    def _move(self, way: Direction, message: LinkMessage | RelayedData) -> LinkState:
        target = LINK_TRANSITIONS.get((self.role, self.state, way, message.type))
        if target is None:
            text = (
                f"{self.role.value} link cannot {way.value} {message.type!r} "
                f"in state {self.state.value!r}"
            )
            if way is Direction.SEND:
                raise LocalError(text)
            self.state = LinkState.CLOSED
            raise UnexpectedMessage(text)
        return target

    # -- sending ----------------------------------------------------------------

    def send(self, message: LinkMessage | RelayedData) -> bytes:
        """The bytes of ``message``; raises :class:`LocalError` if it may not be sent now.

        A :class:`RelayedData` (the hub's) goes out as the bytes it came in as."""
        target = self._move(Direction.SEND, message)
        if isinstance(message, RelayedData):
            self.state = target
            return message.frame
        if not isinstance(message, ChannelData):  # no rule beyond the table for data
            _check_code(message, LocalError)
            _check_values(message, LocalError)
            if isinstance(message, Heartbeat):
                self._check_heartbeat(message, LocalError)
        data = encode(message)
        self.state = target
        return data

    # -- receiving --------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._decoder.receive_data(data)

    def next_message(self) -> LinkMessage | None:
        """The next checked message, or ``None`` until more bytes arrive.

        A bad frame or a message out of order raises a :class:`LinkProtocolError` and
        closes this link for good.
        """
        message = self._checked(False)
        assert not isinstance(message, RelayedData)
        return message

    def next_relayed(self) -> LinkMessage | RelayedData | None:
        """:meth:`next_message`, a data frame coming as a :class:`RelayedData` (kept as
        received, for the hub to forward: see :meth:`LinkDecoder.next_relayed`)."""
        return self._checked(True)

    def _checked(self, relay: bool) -> LinkMessage | RelayedData | None:
        try:
            message = self._decoder.next_relayed() if relay else self._decoder.next_message()
        except LinkProtocolError:
            self.state = LinkState.CLOSED
            raise
        if message is None:
            return None
        target = self._move(Direction.RECEIVE, message)
        if message.type == "data":  # no rule beyond the table for data
            self.state = target
            return message
        assert not isinstance(message, RelayedData)
        try:
            self._check_received(message)
        except LinkProtocolError:
            self.state = LinkState.CLOSED
            raise
        self.state = target
        return message

    def receive(self, data: bytes) -> list[LinkMessage]:
        """:meth:`receive_data`, then every whole message (raises at the first bad one)."""
        self.receive_data(data)
        out = []
        while (message := self.next_message()) is not None:
            out.append(message)
        return out

    # -- rules beyond the table ------------------------------------------------------

    def _check_received(self, message: LinkMessage) -> None:
        _check_code(message, LinkProtocolError)
        _check_values(message, LinkProtocolError)
        if isinstance(message, _HELLOS):
            if message.protocol_version != PROTOCOL_VERSION:
                raise UnsupportedProtocolVersion(
                    f"unsupported protocol version {message.protocol_version}; "
                    f"this hub speaks {PROTOCOL_VERSION}"
                )
            self.peer_role = LinkRole.CLIENT if isinstance(message, ClientHello) else W
        if isinstance(message, Heartbeat):
            self._check_heartbeat(message, LinkProtocolError)

    def _check_heartbeat(
        self, beat: Heartbeat, error: type[LocalError | LinkProtocolError]
    ) -> None:
        keys = (beat.public_key, beat.mlkem_public_key, beat.slhdsa_public_key)
        carries = beat.encryption_mode is not None or any(k is not None for k in keys)
        worker_link = self.role is W or self.peer_role is W
        if not worker_link or self._keyed_heartbeat_seen:
            if carries:
                raise error("only a worker's first heartbeat carries keys and a mode")
            return
        if any(k is None for k in keys) or beat.encryption_mode is None:
            raise error("a worker's first heartbeat must carry its three public keys and mode")
        for value, (name, (_, size)) in zip(keys, PUBLIC_KEY_FIELDS.items(), strict=True):
            assert value is not None
            if len(value) != size:
                raise error(f"heartbeat {name} must be {size} bytes, got {len(value)}")
        try:
            parse_encryption_mode(beat.encryption_mode)
        except InvalidEncryptionMode as exc:
            raise error(f"heartbeat: {exc}") from None
        self._keyed_heartbeat_seen = True
