"""A small, bounded broadcast of the hub's worker changes (trio), for the web page's streams.

The hub calls :meth:`Presence.changed` with a worker owner's user id whenever what
``workers.list`` shows of that owner's workers may have changed: a worker came online or
went offline, registered, reported its keys, or was deregistered. Each subscriber (an event
stream of :mod:`leapcore.hub.web`) holds a trio memory channel of ``queue`` owner ids.

**It never blocks the hub.** :meth:`changed` only ``send_nowait``\\ s; a subscriber whose
queue is full has fallen behind and is dropped: its channel is closed, so its stream ends
(the browser reconnects and is sent the whole list again). At most ``max_subscribers`` are
held; :meth:`subscribe` refuses one more (None).
"""

from __future__ import annotations

from typing import Final

import trio

from ..proto.limits import WEB_EVENT_QUEUE, WEB_MAX_STREAMS

__all__ = ["ALL", "Presence"]

#: The owner id :meth:`Presence.changed` is given when every owner may be concerned.
ALL: Final = "*"


class Presence:
    """Subscribers to worker changes, each with its own bounded queue."""

    def __init__(self, *, queue: int = WEB_EVENT_QUEUE, max_subscribers: int = WEB_MAX_STREAMS):
        self.queue = queue
        self.max_subscribers = max_subscribers
        self._subscribers: set[trio.MemorySendChannel[str]] = set()
        #: Subscribers dropped because they fell behind (for tests and logs).
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> trio.MemoryReceiveChannel[str] | None:
        """A new subscriber's queue, or None when ``max_subscribers`` are held already.
        Closing the returned channel unsubscribes."""
        if len(self._subscribers) >= self.max_subscribers:
            return None
        send, receive = trio.open_memory_channel[str](self.queue)
        self._subscribers.add(send)
        return receive

    def changed(self, owner_id: str) -> None:
        """Tell every subscriber that ``owner_id``'s workers changed (never waits)."""
        for send in list(self._subscribers):
            try:
                send.send_nowait(owner_id)
            except trio.WouldBlock:
                self.dropped += 1
                self._subscribers.discard(send)
                send.close()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(send)
                send.close()
