"""The hub tests' clocks: pytest-trio's, made to wait for the hub's store threads
(:mod:`support.threadclock`)."""

from __future__ import annotations

import pytest
import trio.testing
from support.threadclock import thread_aware


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return thread_aware(trio.testing.MockClock())


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return thread_aware(trio.testing.MockClock(autojump_threshold=0))
