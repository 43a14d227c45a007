"""Run until SIGINT or SIGTERM: the one signal watcher of the hub, the worker and solo (trio).

The rule it holds, for every long-running leapcore process: the first signal asks for a
graceful stop and allows :data:`~leapcore.proto.limits.STOP_GRACE` seconds (10) for
everything to finish; a second signal, or the grace running out, cancels outright; a run
that ends by itself stops watching. ::

    result = trio.run(functools.partial(run_until_signal, worker.run, worker.stop,
                                        default=WorkerExit.STOPPED))

Signals are received with :func:`trio.open_signal_receiver` (so the main thread only), and
only while :func:`run_until_signal` runs: a signal before or after it does what the process
does by default.
"""

from __future__ import annotations

import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, TypeVar

import trio

from ..proto.limits import STOP_GRACE
from .trioutil import single_exception

__all__ = ["DEFAULT_SIGNALS", "call_on_signal", "run_until_signal"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What stops a hub, a worker or a solo hub.
DEFAULT_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


async def _watch(
    signals: AsyncIterator[int],
    nursery: trio.Nursery,
    stop: Callable[[], Awaitable[object] | None] | None,
    grace: float,
) -> None:
    scope = nursery.cancel_scope
    signum = await anext(signals)
    if stop is None:
        log.info("%s: stopping", _name(signum))
        scope.cancel()
        return
    log.info("%s: stopping (within %gs; another signal stops at once)", _name(signum), grace)
    scope.deadline = min(scope.deadline, trio.current_time() + grace)
    pending = stop()
    if inspect.isawaitable(pending):

        async def finish() -> None:
            await pending

        nursery.start_soon(finish)
    signum = await anext(signals)
    log.info("%s again: stopping at once", _name(signum))
    scope.cancel()


async def run_until_signal(
    main: Callable[[], Awaitable[T]],
    stop: Callable[[], Awaitable[object] | None] | None = None,
    *,
    default: T,
    signals: Sequence[int] = DEFAULT_SIGNALS,
    grace: float = STOP_GRACE,
) -> T:
    """``await main()`` and return what it returns, unless a signal ends it first.

    The first of ``signals`` calls ``stop()`` — a graceful stop that makes ``main`` return;
    it may be a coroutine function, then run beside ``main`` — and gives the whole run
    ``grace`` more seconds. A second signal, or the grace running out, cancels ``main``
    outright, and so does the first signal when ``stop`` is None; a cancelled run returns
    ``default``. When ``main`` returns, a stop still in progress is cancelled. An exception
    from ``main`` or ``stop`` propagates as itself, not in an exception group.
    """
    result = default
    with single_exception(), trio.open_signal_receiver(*signals) as receiver:
        async with trio.open_nursery() as nursery:

            async def run_main() -> None:
                nonlocal result
                result = await main()
                nursery.cancel_scope.cancel()

            nursery.start_soon(_watch, receiver, nursery, stop, grace)
            nursery.start_soon(run_main)
    return result


async def call_on_signal(signum: int, action: Callable[[], object]) -> None:
    """Call ``action()`` each time ``signum`` arrives, until cancelled (the worker's
    ``SIGHUP``: reload the policy). A burst of the same signal may be taken as one call
    (trio keeps one of each signal pending), which is enough for a reload."""
    with trio.open_signal_receiver(signum) as signals:
        async for _ in signals:
            log.info("%s received", _name(signum))
            action()
