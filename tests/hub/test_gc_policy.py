"""The hub process's garbage-collector policy (:mod:`leapcore.hub.gcpolicy`): a pass freezes
what is alive, so later collections do not walk it; frozen cyclic garbage stays until a
reclaim, which comes after enough links closed or a period; a hub given a policy runs it
while it serves and leaves the collector as it found it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio.testing
from support.hubpeer import running_hub, wait_until

from leapcore.hub.gcpolicy import GcPolicy, GcState


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    """A reference cycle: ``node.me is node``."""

    def __init__(self) -> None:
        self.me = self


def cycle() -> tuple[Node, weakref.ref[Node]]:
    node = Node()
    return node, weakref.ref(node)


def is_frozen(obj: object) -> bool:
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def test_a_pass_freezes_what_is_alive_and_collects_the_young_garbage() -> None:
    state = GcState(GcPolicy(), last_reclaim=0.0)
    alive, _ = cycle()
    young = cycle()[1]  # garbage already: the pass's young collection frees it
    assert state.step(1.0, open_links=10, closed_links=0) is False
    assert young() is None
    assert is_frozen(alive)
    assert gc.get_freeze_count() > 0
    assert (state.passes, state.reclaims) == (1, 0)


def test_frozen_cyclic_garbage_stays_until_enough_links_closed() -> None:
    policy = GcPolicy(reclaim_fraction=0.25, reclaim_min_links=8)
    state = GcState(policy, last_reclaim=0.0, open_at_reclaim=20)
    node, ref = cycle()
    state.step(1.0, open_links=20, closed_links=0)
    del node  # a link's cycle that ends after it was frozen
    gc.collect()
    assert ref() is not None  # the price of freezing: kept, not walked
    # 4 closes of 20 open: below a quarter, a freeze again.
    assert state.step(2.0, open_links=16, closed_links=4) is False
    assert ref() is not None
    # The fifth: a quarter of the 20 open at the last reclaim: unfreeze, collect, freeze.
    assert state.step(3.0, open_links=15, closed_links=5) is True
    assert ref() is None
    assert (state.reclaims, state.closed_at_reclaim, state.open_at_reclaim) == (1, 5, 15)
    assert state.last_reclaim == 3.0
    # The count starts again from that reclaim.
    assert state.step(4.0, open_links=15, closed_links=6) is False


def test_the_interval_is_positive() -> None:
    with pytest.raises(ValueError):
        GcPolicy(interval=0)


def test_a_small_hub_counts_at_least_min_links_and_a_period_reclaims_anyway() -> None:
    policy = GcPolicy(reclaim_min_links=256, reclaim_period=60.0)
    state = GcState(policy, last_reclaim=0.0)
    assert not state.due(1.0, open_links=2, closed_links=63)
    assert state.due(1.0, open_links=2, closed_links=64)  # a quarter of 256
    assert state.due(60.0, open_links=2, closed_links=0)
    node, ref = cycle()
    state.step(1.0, open_links=2, closed_links=0)
    del node
    assert state.step(61.0, open_links=2, closed_links=0) is True
    assert ref() is None


async def test_a_hub_runs_its_policy_while_it_serves(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    policy = GcPolicy(interval=5.0, reclaim_min_links=8)
    async with running_hub(tmp_path, gc_policy=policy) as env:
        state = env.hub.gc_state
        assert state is not None
        assert (state.passes, state.reclaims) == (1, 1)  # the first pass, at start: a reclaim
        assert gc.get_freeze_count() > 0
        _, token = await env.register()
        async with env.worker(token):
            await wait_until(lambda: env.hub.links_closed == 1)  # the registration's
        await wait_until(lambda: env.hub.links_closed == 2)  # registration's and worker's
        # Two closes: a quarter of 8 (the policy's least count): the next pass reclaims.
        await wait_until(lambda: state.reclaims == 2)
        assert state.closed_at_reclaim == 2
        passes = state.passes
        await wait_until(lambda: state.passes == passes + 1)
        assert state.reclaims == 2  # no more closes: a freeze
    assert gc.get_freeze_count() == 0  # the collector as it was
