"""A worker whose Ping answers are lost: ``leapcore-worker --services hostile_lossy:install``.

The channel endpoint answers a ``ping`` itself (:mod:`leapcore.proto.channel_mux`); this installer
makes every endpoint of the worker answer only the first one (the round trip the client makes
before a channel is handed out) and drop the rest without a trace, as a lost or misrouted frame
would. Test-support code (it patches the endpoint class in the worker process only).
"""

from __future__ import annotations

from typing import Any

from leapcore.peer.channel import Services
from leapcore.proto import channel_mux
from leapcore.proto.channel_codec import Request
from leapcore.worker.daemon import Worker


def install(services: Services, worker: Worker) -> None:
    endpoint = channel_mux.ChannelEndpoint
    if getattr(endpoint, "_hostile_lossy", False):
        return
    original = endpoint._on_open

    def on_open(self: Any, cid: int, message: Any) -> None:
        if isinstance(message, Request) and message.method == channel_mux.PING_METHOD:
            answered = getattr(self, "_hostile_pings", 0)
            self._hostile_pings = answered + 1
            if answered >= 1:
                registry = self._registry
                registry.max_peer_cid = max(registry.max_peer_cid, cid)
                return  # lost: no answer, ever
        original(self, cid, message)

    endpoint._on_open = on_open  # type: ignore[method-assign]
    endpoint._hostile_lossy = True  # type: ignore[attr-defined]
