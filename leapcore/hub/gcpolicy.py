"""The hub process's garbage-collector policy: short pauses with thousands of idle links.

CPython's cyclic collector stops the event loop for as long as a full (generation 2)
collection takes, and a full collection walks every tracked object: about 126 per worker
link, 1.3 million at 10 000 links, 1.2-1.7 s of pause on the project machine (heartbeat
lateness; ``docs/benchmarks.md``, "Hub scale"). Objects that live as long as a link need
not be walked again and again, so the policy keeps them out of the collector's sight:

* every :attr:`GcPolicy.interval` seconds, a *pass*: the young generations are collected
  (``gc.collect(1)``: cheap, and the garbage of requests and heartbeats goes at once), then
  everything still alive is frozen (``gc.freeze()``: moved to the permanent generation,
  which no collection walks). The automatic collections, full ones included, then walk only
  what was created since the last pass: a pause grows with the links that come in one
  interval, not with the links held.
* A frozen object is never collected in a reference cycle until it is unfrozen: the
  objects of a link that goes away after being frozen are freed by reference counting
  when they hold no cycle, and kept otherwise. So a pass *reclaims* instead
  (``gc.unfreeze()``, a full collection, ``gc.freeze()``: one full pause) when the links
  closed since the last reclaim reach :attr:`GcPolicy.reclaim_fraction` of the links open
  then or now (the same 25 % of growth CPython waits for before a full collection), and
  at least every :attr:`GcPolicy.reclaim_period` seconds for garbage that is not a link's.
  What a hub can hold in frozen garbage is thus bounded by a quarter of its links' worth,
  or one period's worth; a hub whose links stay up (the idle case) pays no full pause.

The collector is one per process: only a process that is a hub and nothing else should
run a policy (the ``leapcore-hub`` command does; :class:`~leapcore.hub.server.Hub` runs
the one it is given).
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

log = logging.getLogger(__name__)


@attrs.frozen
class GcPolicy:
    """When to freeze and when to reclaim (see the module's documentation)."""

    #: Seconds between passes (more than 0: a pass freezes what is alive at that moment, so
    #: passes back to back freeze every short-lived cycle before it dies; see docs/benchmarks.md).
    interval: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    #: Reclaim once the links closed since the last reclaim reach this share of the links
    #: open (then or now, the larger), ...
    reclaim_fraction: float = 0.25
    #: ... counting at least this many links open (a small hub reclaims after 64 closes:
    #: its full collection is short).
    reclaim_min_links: int = 256
    #: ... and at least this often.
    reclaim_period: float = 3600.0


@attrs.define
class GcState:
    """What a :class:`GcPolicy` remembers between passes."""

    policy: GcPolicy
    last_reclaim: float
    closed_at_reclaim: int = 0
    open_at_reclaim: int = 0
    passes: int = 0
    reclaims: int = 0
    #: The last reclaim's pause, seconds.
    last_reclaim_s: float = 0.0

    def due(self, now: float, open_links: int, closed_links: int) -> bool:
        """Whether the pass at ``now`` should reclaim."""
        closed = closed_links - self.closed_at_reclaim
        base = max(self.open_at_reclaim, open_links, self.policy.reclaim_min_links)
        return closed >= self.policy.reclaim_fraction * base or (
            now - self.last_reclaim >= self.policy.reclaim_period
        )

    def step(self, now: float, open_links: int, closed_links: int) -> bool:
        """One pass (synchronous: it holds the event loop); True when it reclaimed."""
        self.passes += 1
        if not self.due(now, open_links, closed_links):
            gc.collect(1)
            gc.freeze()
            return False
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.last_reclaim_s = time.perf_counter() - started
        self.reclaims += 1
        self.last_reclaim = now
        self.closed_at_reclaim = closed_links
        self.open_at_reclaim = open_links
        log.debug("garbage collector: reclaimed in %.3f s", self.last_reclaim_s)
        return True


async def run_gc_policy(
    policy: GcPolicy,
    counts: Callable[[], tuple[int, int]],
    *,
    clock: Callable[[], float] = trio.current_time,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``policy`` until cancelled: a first pass now (what start-up made is frozen when
    ``task_status.started`` is called), then one every ``policy.interval`` seconds.
    ``counts()`` is (links open, links closed so far); the first pass is a reclaim."""
    state = GcState(policy, last_reclaim=-math.inf)
    state.step(clock(), *counts())  # a reclaim: start-up's garbage is not frozen
    task_status.started(state)
    try:
        while True:
            await trio.sleep(policy.interval)
            state.step(clock(), *counts())
    finally:
        # Whatever holds the process afterwards gets the usual collector back.
        gc.unfreeze()
