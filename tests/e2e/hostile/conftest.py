"""Fixtures of the hostile suite: one real hub process shared by every case, a fresh bystander
channel per case, and the three checks every case ends with (:meth:`Stage.assert_survived`).

The hub (:class:`hostile_arena.Arena`) is started once for the directory and reused while it
lives; a case that kills it fails, and the next case gets a new one. Each case gets a
:class:`Stage`: the bystander's channel is opened and round-trips *before* the attack, the
hub's RSS and descriptors are read for the baseline, and :meth:`Stage.attack` samples them
while the attack runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_arena import Arena, Stage


class ArenaHolder:
    """The shared arena, replaced when its hub died."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self.arena: Arena | None = None
        self.started = 0

    def ensure(self) -> Arena:
        if self.arena is not None and not (self.arena.alive() and self.arena.healthz() == 200):
            self.arena.stop()
            self.arena = None
        if self.arena is None:
            self.started += 1
            arena = Arena(Path(self._tmp.mktemp(f"hostile{self.started}")))
            try:
                arena.start()
            except BaseException:
                arena.stop()
                raise
            self.arena = arena
        return self.arena

    def stop(self) -> None:
        if self.arena is not None:
            self.arena.stop()


@pytest.fixture(scope="session")
def arena_holder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArenaHolder]:
    holder = ArenaHolder(tmp_path_factory)
    try:
        yield holder
    finally:
        holder.stop()


@pytest.fixture
def stage(arena_holder: ArenaHolder) -> Iterator[Stage]:
    """The shared arena, a bystander whose channel round-trips now, and the checks."""
    arena = arena_holder.ensure()
    bystander = arena.bystander()
    try:
        ping = bystander.ping()
        assert ping.get("ok"), f"the bystander's channel failed before the attack: {ping}"
        yield Stage(arena, bystander)
    finally:
        bystander.close()
