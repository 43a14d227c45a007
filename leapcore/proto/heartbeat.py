"""Heartbeat, liveness and the identity watchdog, as timers with time passed in.

* :class:`HeartbeatSchedule` (worker): a check every 2 s from connect; an
  idle heartbeat is due when nothing was *sent* for 5 s. Any outbound frame
  counts (pass its enqueue time to :meth:`~HeartbeatSchedule.on_sent`);
  received frames do not. On a silent link that is one heartbeat about every
  6 s; under steady outbound traffic, none.
* :class:`Liveness` (hub, per link): the peer is dead after 10 s with no
  inbound message of any kind.
* :class:`GreetingWatchdog` (worker): the hub's identity greeting must
  arrive within 10 s of connect, or the worker reconnects.
* :class:`LatencyMeter`: round trips of heartbeat probes, matched by
  sequence number.

The driver sleeps until ``next_deadline()`` and then asks the object. The times are
:mod:`leapcore.proto.limits`' (``HEARTBEAT_CHECK_INTERVAL``, ``HEARTBEAT_IDLE_AFTER``,
``LIVENESS_TIMEOUT``, ``GREETING_TIMEOUT``).
"""

from __future__ import annotations

import math
from typing import Final

from ..errors import LocalError
from .limits import (
    GREETING_TIMEOUT,
    HEARTBEAT_CHECK_INTERVAL,
    HEARTBEAT_IDLE_AFTER,
    LIVENESS_TIMEOUT,
)

__all__ = ["GreetingWatchdog", "HeartbeatSchedule", "LatencyMeter", "Liveness"]


class HeartbeatSchedule:
    CHECK_INTERVAL: Final = HEARTBEAT_CHECK_INTERVAL
    IDLE_AFTER: Final = HEARTBEAT_IDLE_AFTER

    def __init__(self, connected_at: float) -> None:
        self._start = connected_at
        self.last_sent = connected_at
        self._next_check = connected_at + self.CHECK_INTERVAL

    def on_sent(self, now: float) -> None:
        """Any outbound frame was enqueued at ``now``."""
        self.last_sent = max(self.last_sent, now)

    def next_deadline(self) -> float:
        return self._next_check

    def poll(self, now: float) -> bool:
        """Run every check due by ``now``; True when an idle heartbeat should be sent.

        The caller then sends it and reports it with :meth:`on_sent`.
        """
        if now < self._next_check:
            return False
        # Checks fall on connected_at + 2k; skip any that a late wake-up missed.
        elapsed = math.floor((now - self._start) / self.CHECK_INTERVAL)
        self._next_check = self._start + (elapsed + 1) * self.CHECK_INTERVAL
        return now - self.last_sent >= self.IDLE_AFTER


class Liveness:
    TIMEOUT: Final = LIVENESS_TIMEOUT

    def __init__(self, now: float, timeout: float = TIMEOUT) -> None:
        if timeout <= 0:
            raise LocalError("liveness timeout must be positive")
        self.timeout = timeout
        self.last_received = now

    def on_received(self, now: float) -> None:
        """Any inbound message re-arms the timer."""
        self.last_received = max(self.last_received, now)

    def deadline(self) -> float:
        return self.last_received + self.timeout

    def expired(self, now: float) -> bool:
        return now >= self.deadline()


class GreetingWatchdog:
    TIMEOUT: Final = GREETING_TIMEOUT

    def __init__(self, connected_at: float, timeout: float = TIMEOUT) -> None:
        self._deadline = connected_at + timeout
        self.greeted = False

    def on_greeting(self) -> None:
        self.greeted = True

    def deadline(self) -> float | None:
        return None if self.greeted else self._deadline

    def expired(self, now: float) -> bool:
        return not self.greeted and now >= self._deadline


class LatencyMeter:
    """Round-trip times of heartbeat probes. Keeps at most ``window`` outstanding probes."""

    def __init__(self, window: int = 8) -> None:
        self._outstanding: dict[int, float] = {}
        self._next_seq = 1
        self._window = window
        self.last: float | None = None
        self.samples = 0

    def probe(self, now: float) -> int:
        """Start a probe; returns the sequence number to put in the heartbeat."""
        seq = self._next_seq
        self._next_seq += 1
        self._outstanding[seq] = now
        while len(self._outstanding) > self._window:
            del self._outstanding[min(self._outstanding)]
        return seq

    def on_echo(self, seq: int, now: float) -> float | None:
        """The peer echoed ``seq``; returns the round trip, or None for an unknown probe."""
        sent = self._outstanding.pop(seq, None)
        if sent is None:
            return None
        self.last = max(0.0, now - sent)
        self.samples += 1
        return self.last
