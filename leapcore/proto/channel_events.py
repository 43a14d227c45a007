"""What a channel endpoint tells its driver: the events, one frozen attrs class each.

Pure data, no behaviour (sans-IO). :class:`~leapcore.proto.channel_mux.ChannelEndpoint`
returns lists of :data:`Event` from ``receive_frame`` and ``poll``; a driver matches on
the class. Every event that concerns one stream carries its ``correlation_id``;
:class:`ChannelClosed` ends the channel and is the last event it delivers.
:class:`WindowInfo` is not an event: it is the snapshot ``ChannelEndpoint.window``
returns of one byte stream's flow-control counters.
"""

from __future__ import annotations

import attrs

__all__ = [
    "ByteStreamAccepted",
    "ByteStreamEOF",
    "ByteStreamRequested",
    "ByteStreamReset",
    "BytesReceived",
    "Cancelled",
    "ChannelClosed",
    "ErrorReceived",
    "Event",
    "ProtocolViolation",
    "RekeyCompleted",
    "RequestReceived",
    "ResponseReceived",
    "StreamEnded",
    "StreamItemReceived",
    "StreamRequested",
    "WindowInfo",
    "WindowOpened",
]


@attrs.frozen
class RequestReceived:
    """The peer calls ``method``; answer with ``send_response`` or ``send_error``."""

    correlation_id: int
    method: str
    payload: bytes


@attrs.frozen
class ResponseReceived:
    correlation_id: int
    payload: bytes


@attrs.frozen
class ErrorReceived:
    """The peer answered a request, a server stream or a byte-stream open with an error."""

    correlation_id: int
    code: str
    message: str


@attrs.frozen
class StreamRequested:
    """The peer opened a server stream: send items, then ``end_stream`` or ``send_error``."""

    correlation_id: int
    method: str
    payload: bytes


@attrs.frozen
class StreamItemReceived:
    correlation_id: int
    payload: bytes


@attrs.frozen
class StreamEnded:
    correlation_id: int


@attrs.frozen
class Cancelled:
    """The peer cancelled its request or server stream; do not answer it."""

    correlation_id: int


@attrs.frozen
class ByteStreamRequested:
    """The peer opens a byte stream: ``accept_byte_stream`` or ``send_error``. ``early``:
    opened with BYTES_OPEN_EARLY, data (:class:`BytesReceived`) may come before the answer."""

    correlation_id: int
    method: str
    payload: bytes
    early: bool = False


@attrs.frozen
class ByteStreamAccepted:
    correlation_id: int


@attrs.frozen
class BytesReceived:
    """Byte-stream data; call ``consume(cid, n)`` as the application uses it up."""

    correlation_id: int
    data: bytes


@attrs.frozen
class WindowOpened:
    """The peer's window grew: ``send_bytes`` can send more."""

    correlation_id: int


@attrs.frozen
class ByteStreamEOF:
    """The peer sends no more data on this byte stream."""

    correlation_id: int


@attrs.frozen
class ByteStreamReset:
    correlation_id: int
    code: str
    message: str


@attrs.frozen
class RekeyCompleted:
    """Both directions now use new keys."""


@attrs.frozen
class ProtocolViolation:
    """The peer broke the protocol on one correlation id (or a limit was hit). The message
    was dropped; if the id was a live stream, this end tore it down and told the peer."""

    correlation_id: int
    code: str
    message: str


@attrs.frozen
class ChannelClosed:
    """The channel is over. ``code`` is ``closed_by_peer``, ``decrypt_failed``,
    ``rekey_failed``, ``rekey_expired``, ``nonce_exhausted`` or ``outbound_overflow``."""

    code: str
    reason: str


Event = (
    RequestReceived
    | ResponseReceived
    | ErrorReceived
    | StreamRequested
    | StreamItemReceived
    | StreamEnded
    | Cancelled
    | ByteStreamRequested
    | ByteStreamAccepted
    | BytesReceived
    | WindowOpened
    | ByteStreamEOF
    | ByteStreamReset
    | RekeyCompleted
    | ProtocolViolation
    | ChannelClosed
)


@attrs.frozen
class WindowInfo:
    """Flow-control counters of one byte stream, as this end sees them."""

    send_credit: int  # bytes this end may still send
    receive_window: int  # the window this end granted
    receive_credit: int  # bytes the peer may still send
    unconsumed: int  # received, not yet consumed by the application
    pending_update: int  # consumed, not yet granted back with WINDOW_UPDATE
