"""SLH-DSA signing off the event loop: a trio-friendly pool of worker processes.

A post-quantum message 2 needs one SLH-DSA-SHAKE-256f signature: ~125 ms of CPU that holds
the GIL. Signed on the event loop, a burst of channel opens would stall every other task of
the worker (heartbeats, open channels) for a multiple of that. :class:`SigningPool` signs in
child processes instead::

    async with SigningPool() as pool:          # os.cpu_count() processes
        transcript = responder.read_message1(message1)
        message2 = responder.write_message2(await pool.sign(keypair.slhdsa_private, transcript))

:class:`InlineSigner` has the same ``async sign`` and signs on the loop (tests, classic
paths, single-core machines); both satisfy the :class:`Signer` protocol, so callers take a
``Signer`` and are handed either. (Not to be confused with
:data:`leapcore.crypto.primitives.Signer`,
the synchronous ``sign(message)`` callable a :class:`~leapcore.crypto.handshake.Responder` takes.)

How the pool behaves:

* The processes are started with a non-fork start method ("forkserver" on Linux, "spawn"
  elsewhere, and "spawn" on Linux too when the temporary directory is so deep that the
  forkserver's socket path would not fit): forking a process whose trio threads are running
  is unsafe. Each child lowers its priority (``os.nice(10)``) so that the event-loop process
  wins the CPU on a busy machine, and ignores SIGINT (the parent handles signals and shuts
  the pool down).
* Entering the pool starts every process and waits until each has imported the signing
  code, so the first real open does not pay the start-up cost. Entering and leaving run
  their blocking parts in a thread: the event loop keeps running.
* Results are awaited without a thread: the future's done-callback wakes the waiting task
  through the trio token. Cancelling a waiting :meth:`SigningPool.sign` cancels the
  submission if no process has taken it yet; otherwise the signature is computed and dropped.
* At most ``processes * 4`` submissions are outstanding; further callers wait their turn.
  A slot is held until the child is done with the job, even when its caller was cancelled.
* If a child process dies (``BrokenProcessPool``: every job in flight fails), the pool is
  recreated and the signature retried once; a second failure raises
  :class:`SigningPoolBroken`. The next call starts over (one recreation and one retry).
* :meth:`SigningPool.sign` before entering or after leaving the pool raises
  :class:`SigningPoolClosed`, a :class:`~leapcore.errors.LocalError` (using a closed
  pool is a bug of the caller), as do callers still waiting when the pool closes.
* :class:`OnDemandSigner` (what the worker daemon uses) falls back to signing on the event
  loop, with one warning in the log, when the system will not start the processes (an
  ``OSError``: no process or descriptor left): the worker keeps accepting channels.
* Secret-key bytes only travel over the pool's pipe to a child; they are never logged
  or put into an error message.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Protocol, Self, TypeVar, runtime_checkable

import trio

from ..crypto.primitives import SLHDSA_SECRET_KEY_SIZE, slhdsa_sign
from ..errors import LocalError, SigningPoolBroken, SigningPoolClosed

__all__ = [
    "InlineSigner",
    "OnDemandSigner",
    "Signer",
    "SigningPool",
    "SigningPoolBroken",
    "SigningPoolClosed",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Outstanding submissions allowed per process (running + queued).
SUBMISSIONS_PER_PROCESS = 4
#: The priority increment of the children.
CHILD_NICENESS = 10


@runtime_checkable
class Signer(Protocol):
    """Anything that signs with SLH-DSA-SHAKE-256f: :class:`SigningPool`, :class:`InlineSigner`."""

    async def sign(self, secret_key: bytes, message: bytes) -> bytes:
        """The SLH-DSA-SHAKE-256f signature of ``message`` under ``secret_key`` (128 bytes)."""
        ...


def _check_key(secret_key: bytes) -> bytes:
    key = bytes(secret_key)
    if len(key) != SLHDSA_SECRET_KEY_SIZE:
        raise LocalError(
            f"SLH-DSA secret key must be {SLHDSA_SECRET_KEY_SIZE} bytes, got {len(key)}"
        )
    return key


class InlineSigner:
    """Signs on the event loop (blocks it ~125 ms per signature): tests, classic paths."""

    async def sign(self, secret_key: bytes, message: bytes) -> bytes:
        key = _check_key(secret_key)
        await trio.lowlevel.checkpoint()
        return slhdsa_sign(key, bytes(message))


# ---------------------------------------------------------------------------
# Child side (module-level functions: they are pickled by reference)


#: In a child: the barrier its pre-warm job waits on (see :meth:`SigningPool._new_executor`).
_warm_barrier: threading.Barrier | None = None
#: How long a pre-warm job waits for the other processes to start.
WARM_TIMEOUT = 60.0


def _init_child(barrier: threading.Barrier | None, alive: Connection | None) -> None:
    """Runs once in every child: lower the priority, leave SIGINT to the parent, and die
    with the parent (``alive`` reaches end-of-file when the parent process is gone)."""
    global _warm_barrier
    _warm_barrier = barrier
    with contextlib.suppress(OSError):  # not permitted / not supported: run at normal priority
        os.nice(CHILD_NICENESS)
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if alive is not None:
        threading.Thread(
            target=_exit_with_parent, args=(alive,), name="signpool-parent-watch", daemon=True
        ).start()


def _exit_with_parent(alive: Connection) -> None:
    """A child's watchdog. ProcessPoolExecutor's children block forever on their job queue
    when the parent is killed (they hold its write end themselves), and with forkserver they
    also keep the fork server alive: without this, a SIGKILLed worker leaks its pool."""
    with contextlib.suppress(EOFError, OSError):
        alive.recv_bytes()  # the parent never writes: returns only by end-of-file
    os._exit(0)


def _warm() -> int:
    """The pre-warm job. Starting the process and importing this module (to run it) is the
    real work; waiting on the barrier makes every one of the jobs run in its own process."""
    if _warm_barrier is not None:
        _warm_barrier.wait(WARM_TIMEOUT)
    return os.getpid()


def _sign_in_child(secret_key: bytes, message: bytes) -> bytes:
    return slhdsa_sign(secret_key, message)


#: The longest Unix-socket path the kernel takes (``sun_path`` holds 108 bytes with its NUL).
UNIX_PATH_MAX = 107
#: What the forkserver adds to the temporary directory for its listening socket
#: (``/pymp-XXXXXXXX/listener-XXXXXXXX``).
FORKSERVER_SOCKET_SUFFIX = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def _mp_context() -> multiprocessing.context.BaseContext:
    """ "forkserver" on Linux when its socket's path fits under the temporary directory
    (a deep ``TMPDIR`` makes it fail with "AF_UNIX path too long"), else "spawn"."""
    fits = len(os.fsencode(tempfile.gettempdir())) + FORKSERVER_SOCKET_SUFFIX <= UNIX_PATH_MAX
    if (
        fits
        and sys.platform.startswith("linux")
        and "forkserver" in multiprocessing.get_all_start_methods()
    ):
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


# ---------------------------------------------------------------------------
# Parent side


class SigningPool:
    """A pool of ``processes`` signing processes (default ``os.cpu_count()``, at least 1).

    Use as ``async with SigningPool() as pool: sig = await pool.sign(secret_key, message)``.
    A pool is entered once; it cannot be reopened after it is closed.
    """

    def __init__(self, processes: int | None = None) -> None:
        if processes is None:
            processes = os.cpu_count() or 1
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise LocalError(f"processes must be a positive integer, got {processes!r}")
        self._processes = processes
        self._max_outstanding = processes * SUBMISSIONS_PER_PROCESS
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._state = "new"  # -> "open" -> "closed"
        self._slots = trio.Semaphore(self._max_outstanding)
        self._recover_lock = trio.Lock()
        self._restarts = 0
        #: Per executor, both ends of the pipe whose end-of-file tells its children to exit.
        self._alive: dict[
            concurrent.futures.ProcessPoolExecutor, tuple[Connection, Connection]
        ] = {}
        #: The function run in the child; replaceable by tests (must be picklable).
        self._child_fn: Callable[[bytes, bytes], bytes] = _sign_in_child

    # -- properties ---------------------------------------------------------

    @property
    def processes(self) -> int:
        return self._processes

    @property
    def max_outstanding(self) -> int:
        """Submissions allowed at once (running or queued): ``processes * 4``."""
        return self._max_outstanding

    @property
    def restarts(self) -> int:
        """How many times the process pool was recreated after a child died."""
        return self._restarts

    @property
    def pids(self) -> frozenset[int]:
        """The process ids of the current children (diagnostics and tests)."""
        executor = self._executor
        if executor is None:
            return frozenset()
        return frozenset(executor._processes or ())

    # -- lifecycle ----------------------------------------------------------

    def _new_executor(
        self,
    ) -> tuple[concurrent.futures.ProcessPoolExecutor, list[concurrent.futures.Future[int]]]:
        """Create an executor and start all its processes (blocking: run it in a thread).

        With a non-fork start method, ProcessPoolExecutor starts a process for a submission
        when none is idle. The ``processes`` warm-up jobs all wait on one barrier, so none
        finishes before every process has started, imported the signing code and run its
        initializer: each submission starts a process, and each process takes one job.
        """
        context = _mp_context()
        alive_r, alive_w = context.Pipe(duplex=False)
        executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=self._processes,
            mp_context=context,
            initializer=_init_child,
            initargs=(context.Barrier(self._processes), alive_r),
        )
        self._alive[executor] = (alive_r, alive_w)
        return executor, [executor.submit(_warm) for _ in range(self._processes)]

    def _release(self, executor: concurrent.futures.ProcessPoolExecutor) -> None:
        """Close the watchdog pipe of a shut-down executor (its children exit with it)."""
        for connection in self._alive.pop(executor, ()):
            connection.close()

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise SigningPoolClosed(f"a SigningPool cannot be entered twice (it is {self._state})")
        self._state = "starting"
        try:
            self._executor, warmups = await trio.to_thread.run_sync(self._new_executor)
            for future in warmups:
                await self._wait(future)
        except BaseException:
            self._state = "closed"
            await self._shutdown()
            raise
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool: queued submissions are cancelled, signatures already being
        computed are finished (at most about two signatures' time) and dropped."""
        self._state = "closed"
        await self._shutdown()

    async def _shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            with trio.CancelScope(shield=True):  # bounded: only in-progress jobs are awaited
                await trio.to_thread.run_sync(
                    lambda: executor.shutdown(wait=True, cancel_futures=True)
                )
            self._release(executor)

    # -- signing ------------------------------------------------------------

    async def sign(self, secret_key: bytes, message: bytes) -> bytes:
        """The SLH-DSA-SHAKE-256f signature of ``message``, computed in a child process.

        Raises :class:`SigningPoolClosed` if the pool is not open, :class:`SigningPoolBroken`
        if the child computing it died twice, :class:`~leapcore.errors.LocalError` for a
        secret key of the wrong length.
        """
        key = _check_key(secret_key)
        message = bytes(message)
        executor = self._open_executor()
        try:
            return await self._submit_and_wait(executor, key, message)
        except BrokenProcessPool:
            pass
        executor = await self._recover(executor)
        try:
            return await self._submit_and_wait(executor, key, message)
        except BrokenProcessPool:
            raise SigningPoolBroken(
                "a signing process died twice while computing the same signature"
            ) from None

    def _open_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._state != "open" or self._executor is None:
            what = "closed" if self._state == "closed" else "not open yet (use async with)"
            raise SigningPoolClosed(f"the signing pool is {what}")
        return self._executor

    async def _recover(
        self, broken: concurrent.futures.ProcessPoolExecutor
    ) -> concurrent.futures.ProcessPoolExecutor:
        """Replace ``broken`` by a fresh executor, unless another task already did."""
        async with self._recover_lock:
            current = self._open_executor()
            if current is broken:
                # The warm-up jobs are not awaited: the retry simply queues behind them.
                current, _warmups = await trio.to_thread.run_sync(self._new_executor)
                if self._state != "open":  # closed while we were starting it
                    self._executor = current
                    await self._shutdown()
                    raise SigningPoolClosed("the signing pool is closed")
                self._executor = current
                self._restarts += 1
                broken.shutdown(wait=False, cancel_futures=True)
                self._release(broken)  # any child still alive exits
            return current

    async def _submit_and_wait(
        self, executor: concurrent.futures.ProcessPoolExecutor, key: bytes, message: bytes
    ) -> bytes:
        await self._slots.acquire()
        try:
            if self._state != "open":
                raise SigningPoolClosed("the signing pool is closed")
            future = executor.submit(self._child_fn, key, message)
        except BaseException:
            self._slots.release()
            raise
        # The slot is given back when the child is done with the job, not when we stop
        # waiting for it: a cancelled caller does not free a busy process.
        return await self._wait(future, release=self._slots.release)

    async def _wait(
        self,
        future: concurrent.futures.Future[_T],
        release: Callable[[], None] | None = None,
    ) -> _T:
        """Await ``future`` without blocking the loop and without a thread."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake() -> None:  # in the trio thread
            if release is not None:
                release()
            done.set()

        def callback(_future: concurrent.futures.Future[_T]) -> None:  # any thread
            with contextlib.suppress(trio.RunFinishedError):  # the run is gone: nobody waits
                token.run_sync_soon(wake)

        future.add_done_callback(callback)
        try:
            await done.wait()
        except BaseException:
            future.cancel()  # only succeeds while no process has taken the job
            raise
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise SigningPoolClosed("the signing pool closed before signing") from None


class OnDemandSigner:
    """A :class:`SigningPool` started by the first signature it is asked for.

    What the worker daemon uses: a worker that is never asked for a post-quantum channel
    never starts processes, and the first open pays the pool's start-up (a few hundred ms)
    once. Use as ``async with OnDemandSigner() as signer``; closing closes the pool.
    """

    def __init__(self, processes: int | None = None) -> None:
        self._processes = processes
        self._pool: SigningPool | InlineSigner | None = None
        self._lock = trio.Lock()
        self._closed = False

    @property
    def pool(self) -> SigningPool | None:
        """The pool, once started (None too when it could not start: see :meth:`sign`)."""
        return self._pool if isinstance(self._pool, SigningPool) else None

    async def sign(self, secret_key: bytes, message: bytes) -> bytes:
        signer = self._pool
        if signer is None:
            async with self._lock:
                if self._closed:
                    raise SigningPoolClosed("the signer is closed")
                if self._pool is None:
                    self._pool = await self._start()
                signer = self._pool
        return await signer.sign(secret_key, message)

    async def _start(self) -> SigningPool | InlineSigner:
        """A started pool or, when this system will not start its processes (no process
        or descriptor left, no usable temporary directory), signing on the event loop: the
        worker keeps serving, each post-quantum open stalling it for one signature."""
        started = SigningPool(self._processes)
        try:
            await started.__aenter__()
        except OSError as exc:
            log.warning(
                "signing processes could not start (%s): signing on the event loop instead",
                exc.strerror or exc,
            )
            return InlineSigner()
        return started

    async def aclose(self) -> None:
        self._closed = True
        if isinstance(self._pool, SigningPool):
            await self._pool.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
