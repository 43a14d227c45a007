"""What a peer's message on a live stream becomes: the event the endpoint reports, after
the credit rules of :mod:`leapcore.proto.channel_windows` have seen it.

The stream tables (:mod:`leapcore.proto.channel_streams`) have already said the message
is allowed in the stream's state; this module only turns it into its event and charges or
grants credit. A message that breaks the credit rules raises
:class:`~leapcore.errors.FlowControlError`, which the endpoint reports as a violation of
that stream only.
"""

from __future__ import annotations

from .channel_codec import (
    BytesAccept,
    BytesData,
    BytesEof,
    BytesReset,
    Cancel,
    ErrorReply,
    Message,
    Response,
    StreamEnd,
    StreamItem,
    WindowUpdate,
)
from .channel_events import (
    BytesReceived,
    ByteStreamAccepted,
    ByteStreamEOF,
    ByteStreamReset,
    Cancelled,
    ErrorReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamItemReceived,
    WindowOpened,
)
from .channel_streams import Stream, StreamState

__all__ = ["inbound_event"]


def inbound_event(stream: Stream, message: Message) -> Event | None:
    """The event for ``message`` received on ``stream``; raises FlowControlError."""
    cid = stream.cid
    match message:
        case BytesData(data):  # first: by far the most frequent
            credit = stream.window
            assert credit is not None  # STREAM_EVENTS: data on byte streams only
            credit.on_data(cid, len(data))
            return BytesReceived(cid, data)
        case Response(payload):
            return ResponseReceived(cid, payload)
        case ErrorReply(code, text):
            return ErrorReceived(cid, code, text)
        case Cancel():
            return Cancelled(cid)
        case StreamItem(payload):
            return StreamItemReceived(cid, payload)
        case StreamEnd():
            return StreamEnded(cid)
        case BytesAccept(window):
            if stream.state is StreamState.OPENING_EARLY:
                stream.byte_window.on_accept_early(cid, window)
            else:
                stream.byte_window.on_grant(window)
            return ByteStreamAccepted(cid)
        case WindowUpdate(increment):
            stream.byte_window.on_update(cid, increment)
            return WindowOpened(cid)
        case BytesEof():
            return ByteStreamEOF(cid)
        case BytesReset(code, text):
            return ByteStreamReset(cid, code, text)
    return None
