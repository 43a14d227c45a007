"""A MockClock whose autojump waits for worker threads.

trio's autojump moves the clock to the next deadline as soon as every task is blocked, and a
task waiting for ``trio.to_thread.run_sync`` counts as blocked: a hub store call (which runs
in a worker thread, :meth:`leapcore.hub.server.Hub.store_call`) would let the clock jump
past idle timeouts while SQLite answers. This clock does not jump while a thread started by
``trio.to_thread`` runs (:func:`trio.testing.active_thread_count`); virtual time stands
still while real work is done, as it does for work on the event loop.
"""

from __future__ import annotations

import trio
import trio.testing


def thread_aware(clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """``clock``, its autojump held while a ``trio.to_thread`` thread runs."""
    jump = clock._autojump  # MockClock cannot be subclassed: its run loop hook is wrapped

    def autojump() -> None:
        if not trio.testing.active_thread_count():
            jump()

    clock._autojump = autojump  # type: ignore[method-assign]
    return clock


async def settle() -> None:
    """Wait until every other task is blocked and no ``trio.to_thread`` thread runs:
    :func:`trio.testing.wait_all_tasks_blocked` for code whose store calls run in threads
    (a task waiting for its thread counts as blocked)."""
    await trio.testing.wait_all_tasks_blocked()
    while trio.testing.active_thread_count():
        await trio.testing.wait_all_threads_completed()
        await trio.testing.wait_all_tasks_blocked()
