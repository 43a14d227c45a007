"""The accept loop every listener here runs: hand each connection to a task, and back off
instead of spinning when the process is out of descriptors or memory.

When ``accept`` fails with EMFILE, ENFILE, ENOBUFS or ENOMEM the loop waits ``initial``
seconds (:data:`~leapcore.proto.limits.ACCEPT_BACKOFF_INITIAL`, 5 ms), doubling the wait
while the error persists up to ``maximum``
(:data:`~leapcore.proto.limits.ACCEPT_BACKOFF_MAX`, 1 s), and starts again from the
beginning after the next success. One warning per episode. Any other accept error is
raised: the listener is broken.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from ..proto.limits import ACCEPT_BACKOFF_INITIAL, ACCEPT_BACKOFF_MAX

__all__ = ["ACCEPT_CAPACITY_ERRNOS", "accept_connections"]

log = logging.getLogger(__name__)

#: accept() errors that mean "out of descriptors or memory for now": back off, never crash.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


async def accept_connections(
    listener: trio.abc.Listener[Any],
    nursery: trio.Nursery,
    handle: Callable[[Any], Awaitable[object]],
    *,
    name: str,
    initial: float = ACCEPT_BACKOFF_INITIAL,
    maximum: float = ACCEPT_BACKOFF_MAX,
) -> None:
    """Accept until cancelled, starting ``handle(stream)`` in ``nursery`` for each
    connection. The caller owns (and closes) the listener."""
    wait = 0.0  # 0: not in a back-off episode
    failures = 0
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                log.warning("%s: accept failed (%s); stopping", name, exc)
                raise
            failures += 1
            if not wait:
                wait = initial
                log.warning(
                    "%s: accept failed: %s; retrying from %g ms, doubling to %g s, "
                    "until it succeeds",
                    name,
                    errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                    wait * 1000,
                    maximum,
                )
            else:
                wait = min(wait * 2, maximum)
            await trio.sleep(wait)
            continue
        if wait:
            log.debug("%s: accepting again after %d failed accepts", name, failures)
            wait, failures = 0.0, 0
        nursery.start_soon(handle, stream)
