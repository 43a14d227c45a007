"""A blocking client API, for scripts and asyncio programs: ``leapcore.sync``.

::

    from leapcore import sync

    with sync.connect("http://127.0.0.1:4327") as hub:
        print([w["name"] for w in hub.list_workers()])
        with hub.open_channel("box") as ch:
            result = ch.run(["uname", "-a"])
            print(result.stdout.decode())
            with ch.open_tcp("127.0.0.1", 5432) as conn:
                conn.send_all(b"hello")
                print(conn.recv())

Each :func:`connect` starts one background thread running a trio event loop (an
:func:`anyio.from_thread.start_blocking_portal`) and drives the trio client API
(:func:`leapcore.peer.connect.connect`, :class:`~leapcore.peer.channel.Channel`) in it; every
method here hands one call to that loop and waits for its result. Names, arguments and
errors are the async API's: an error raised on the loop reaches the caller as itself (a
``CommandNotFound`` is a ``CommandNotFound``, never an ``ExceptionGroup`` holding one).

**Threads.** Every method of :class:`SyncHub` and :class:`SyncChannel` may be called from
several threads at once (the calls run concurrently on the one loop): several threads may
share one hub, or one channel, e.g. each running commands. A :class:`SyncStream` is one
connection: one thread may send while another receives, but two threads sending (or two
receiving) at once is the async stream's ``trio.BusyResourceError``.

**Closing.** Leaving a ``with`` block (or ``close()``) closes: a stream closes its
connection, a channel its streams and then itself, the hub its channels, then the session,
then stops the thread. Closing twice is harmless. After ``close()`` every method raises
:class:`~leapcore.errors.SyncClosed`, and so does a call still waiting when another
thread closes its stream, channel or hub. An interrupted caller (``KeyboardInterrupt``,
or any exception raised in the waiting thread) cancels the call it was waiting for, and
leaving the ``with`` block then closes everything and stops the thread, the block's
exception going on unchanged (an error while closing is then only logged). Best effort:
each orderly end gets :data:`STOP_WAIT` seconds, then what is left on the loop is
cancelled and the thread joined; should that join itself be interrupted (a second
Ctrl-C), the thread is left to finish on its own -- it is a daemon thread, so it never
keeps the interpreter alive.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Final, Generic, TypeVar

import trio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ..errors import DeadlineExceeded, SyncClosed
from ..proto.limits import DEFAULT_MAX_MESSAGE_SIZE, OPEN_TIMEOUT, TUNNEL_OPEN_TIMEOUT
from ..proto.workspace_spec import Workspace
from ..store.pinstore import PinStore
from .channel import CALL_TIMEOUT, ByteStream, Channel
from .connect import _DEFAULT, _Default
from .connect import connect as _async_connect
from .files import CopyResult
from .hubsession import KEEPALIVE_INTERVAL, HubSession
from .process import ProcessResult

__all__ = ["STOP_WAIT", "SyncChannel", "SyncHub", "SyncStream", "connect"]

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound="_Closable")

#: Seconds ``close()`` waits for a channel's or the session's orderly end (each bounds its
#: own flush at 5 s) before cancelling what is left.
STOP_WAIT: Final = 15.0
#: What a single ``recv`` returns at most, unless told otherwise.
RECV_SIZE: Final = 65536


def _unwrap(exc: BaseException) -> BaseException:
    """A group of one exception (nested or not) is that exception; anything else itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _wait(future: concurrent.futures.Future[T], closed: str, timeout: float | None = None) -> T:
    """The future's result, raised errors unwrapped; the caller being interrupted (any
    exception in this thread, ``KeyboardInterrupt`` included) cancels the call on the loop;
    a call the loop cancelled (its hub closed meanwhile) is :class:`SyncClosed`."""
    try:
        return future.result(timeout)
    except concurrent.futures.CancelledError:
        raise SyncClosed(closed) from None
    except BaseExceptionGroup as group:
        inner = _unwrap(group)
        if inner is group:
            raise
        raise inner from inner.__cause__
    except BaseException:
        if not future.done():
            future.cancel()  # anyio cancels the task's scope on the loop
        raise


class _Loop:
    """The background thread and its portal; one per :func:`connect`."""

    def __init__(self) -> None:
        self._cm: AbstractContextManager[BlockingPortal] | None = start_blocking_portal(
            backend="trio", name="leapcore-sync"
        )
        self.portal: BlockingPortal = self._cm.__enter__()

    def submit(
        self, fn: Callable[..., Awaitable[T]], *args: Any, closed: str
    ) -> concurrent.futures.Future[T]:
        try:
            return self.portal.start_task_soon(fn, *args)
        except RuntimeError:  # the portal stopped under us (closed by another thread)
            raise SyncClosed(closed) from None

    def stop(self) -> None:
        """Cancel whatever still runs on the loop and join the thread (idempotent)."""
        cm, self._cm = self._cm, None
        if cm is None:
            return
        try:
            future = self.portal.start_task_soon(self.portal.stop, True)
            future.result(STOP_WAIT)
        except (RuntimeError, concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            pass
        # Joins the thread; a portal already stopped makes its own stop call a no-op.
        cm.__exit__(None, None, None)


class _Held(Generic[T]):
    """An async context manager entered and left by one task on the loop (trio wants both
    in the same task); the value it yielded is usable from any task meanwhile."""

    def __init__(self, loop: _Loop, cm: AbstractAsyncContextManager[T]) -> None:
        self._loop = loop
        self._cm = cm
        self._release: trio.Event | None = None
        self._done: concurrent.futures.Future[None] | None = None

    async def _run(
        self,
        started: concurrent.futures.Future[tuple[T, trio.Event]],
        timeout: float | None,
        what: str,
    ) -> None:
        release = trio.Event()
        with trio.CancelScope() as scope:
            if timeout is not None:
                scope.deadline = trio.current_time() + timeout
            async with self._cm as value:
                scope.deadline = math.inf
                if not started.set_running_or_notify_cancel():
                    return  # the caller gave up meanwhile: leave at once
                started.set_result((value, release))
                await release.wait()
        if scope.cancelled_caught:
            raise DeadlineExceeded(f"{what}: not done within {timeout:g}s")

    def enter(self, timeout: float | None, what: str, closed: str) -> T:
        started: concurrent.futures.Future[tuple[T, trio.Event]] = concurrent.futures.Future()

        def finished(done: concurrent.futures.Future[None]) -> None:
            """Pass on a failure to start (``started`` is settled already otherwise)."""
            if started.done():
                return
            if done.cancelled():
                started.cancel()
            elif started.set_running_or_notify_cancel():  # False: the caller gave up
                exc = done.exception()
                started.set_exception(exc or SyncClosed(closed))

        self._done = self._loop.submit(self._run, started, timeout, what, closed=closed)
        self._done.add_done_callback(finished)
        try:
            value, self._release = _wait(started, closed)
        except BaseException:
            if not self._done.done():
                self._done.cancel()
            raise
        return value

    def leave(self, closed: str) -> None:
        """Leave the block (the async exit's error, if any, is raised here)."""
        done, release = self._done, self._release
        self._done = self._release = None
        if done is None or release is None:
            return
        if not done.done():
            try:
                self._loop.portal.start_task_soon(_set, release).result(STOP_WAIT)
            except (RuntimeError, concurrent.futures.CancelledError):
                return  # the loop is gone: nothing left to leave
        try:
            _wait(done, closed, STOP_WAIT)
        except SyncClosed:
            pass  # cancelled on the loop: left all the same
        except TimeoutError:  # _wait cancelled it: the loop's cancellation finishes it
            log.warning("%s: no orderly end within %gs; cancelled", closed, STOP_WAIT)


async def _set(event: trio.Event) -> None:
    event.set()


class _Closable:
    """``with`` support and the closed check shared by the three handles."""

    _what = "object"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _closed_text(self) -> str:
        return f"the {self._what} is closed"

    def _check(self) -> None:
        if self._closed:
            raise SyncClosed(self._closed_text())

    def _mark_closed(self) -> bool:
        """Mark closed; True for the one caller that did it."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            return True

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        self._check()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # the block's own exception (a KeyboardInterrupt, say) is the one to see
            self.close()
        except Exception as problem:
            log.debug("closing the %s after %r: %r", self._what, exc, problem)


class SyncStream(_Closable):
    """A blocking byte stream (:meth:`SyncChannel.open_tcp`): the async
    :class:`~leapcore.peer.channel.ByteStream`'s ``send_all``, ``receive_some`` (here
    :meth:`recv`), ``send_eof`` and ``aclose`` (here :meth:`close`); its errors are the
    async stream's (``trio.BrokenResourceError`` for a reset, ...)."""

    _what = "stream"

    def __init__(self, channel: SyncChannel, stream: ByteStream) -> None:
        super().__init__()
        self._channel = channel
        #: The async stream (use it only on the hub's loop: :meth:`SyncHub.run_async`).
        self.stream = stream

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        self._check()
        return self._channel._hub._call(fn, *args, owner=self)

    def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data`` (waits while the channel's window is full)."""
        self._call(self.stream.send_all, data)

    def recv(self, max_bytes: int = RECV_SIZE) -> bytes:
        """Up to ``max_bytes`` bytes, once some arrived; ``b""`` at the far side's EOF."""
        return self._call(self.stream.receive_some, max_bytes)

    def send_eof(self) -> None:
        """Half-close: the far side reads EOF; receiving goes on."""
        self._call(self.stream.send_eof)

    def close(self) -> None:
        """Close the connection (EOF, then a reset of what the far side still sends)."""
        if not self._mark_closed():
            return
        self._channel._forget(self)
        with contextlib.suppress(SyncClosed):  # the hub went first: the stream went with it
            self._channel._hub._call(self.stream.aclose, owner=self)


class SyncChannel(_Closable):
    """A blocking end-to-end encrypted channel to one worker
    (:meth:`SyncHub.open_channel`), over the async :class:`~leapcore.peer.channel.Channel`."""

    _what = "channel"

    def __init__(self, hub: SyncHub, held: _Held[Channel], channel: Channel) -> None:
        super().__init__()
        self._hub = hub
        self._held = held
        self._streams: set[SyncStream] = set()
        #: The async channel (use it only on the hub's loop: :meth:`SyncHub.run_async`).
        self.channel = channel

    @property
    def worker_id(self) -> str:
        return self.channel.worker_id

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        self._check()
        return self._hub._call(fn, *args, owner=self)

    def call(
        self, method: str, payload: bytes = b"", *, timeout: float | None = CALL_TIMEOUT
    ) -> bytes:
        """Call ``method`` on the worker; its answer (``Channel.call``)."""
        return self._call(_kw(self.channel.call, timeout=timeout), method, payload)

    def ping(self, *, timeout: float | None = CALL_TIMEOUT) -> None:
        """One end-to-end round trip (``Channel.ping``)."""
        self._call(_kw(self.channel.ping, timeout=timeout))

    def run(self, command: str | Sequence[str], **options: Any) -> ProcessResult:
        """Run ``command`` on the worker to its end (``Channel.run_command``; the same
        options: ``stdin`` as bytes, ``env``, ``env_mode``, ``cwd``, ``timeout``,
        ``check``, ``stderr``, ``pty``, ``max_output``, ``workspace``, ``open_timeout``)."""
        stdin = options.get("stdin")
        if stdin is not None and not isinstance(stdin, bytes | bytearray | memoryview):
            raise TypeError("stdin must be bytes (or None) in the blocking API")
        result: ProcessResult = self._call(_kw(self.channel.run_command, **options), command)
        return result

    run_command = run

    def workspace(self, repo: str, branch: str, **options: Any) -> Workspace:
        """Get or create the worker's checkout of ``branch`` of ``repo``
        (``Channel.workspace``; options ``base``, ``timeout``)."""
        found: Workspace = self._call(_kw(self.channel.workspace, **options), repo, branch)
        return found

    def workspaces(self, **options: Any) -> list[Workspace]:
        """The worker's workspaces (``Channel.workspaces``)."""
        found: list[Workspace] = self._call(_kw(self.channel.workspaces, **options))
        return found

    def remove_workspace(self, workspace_id: str, **options: Any) -> Workspace:
        """Remove a workspace (``Channel.remove_workspace``; options ``force``, ``timeout``)."""
        gone: Workspace = self._call(_kw(self.channel.remove_workspace, **options), workspace_id)
        return gone

    def put(
        self, local_path: str | os.PathLike[str], remote_path: str, **options: Any
    ) -> CopyResult:
        """Copy a local file (or, ``recursive=True``, a tree) to the worker
        (``Channel.put``; the same options: ``recursive``, ``preserve_mode``, ``progress``,
        ``timeout``). A ``progress`` callback runs in the loop's thread: keep it quick."""
        result: CopyResult = self._call(_kw(self.channel.put, **options), local_path, remote_path)
        return result

    def get(
        self, remote_path: str, local_path: str | os.PathLike[str], **options: Any
    ) -> CopyResult:
        """Copy a file (or, ``recursive=True``, a tree) from the worker (``Channel.get``;
        the options of :meth:`put`)."""
        result: CopyResult = self._call(_kw(self.channel.get, **options), remote_path, local_path)
        return result

    def open_tcp(
        self, host: str, port: int, *, timeout: float | None = TUNNEL_OPEN_TIMEOUT
    ) -> SyncStream:
        """A TCP connection the worker dials to ``host:port`` (``Channel.open_tcp``),
        returned once connected."""
        stream = self._call(_kw(self.channel.open_tcp, timeout=timeout), host, port)
        wrapped = SyncStream(self, stream)
        with self._lock:
            if not self._closed:
                self._streams.add(wrapped)
                return wrapped
        # The channel closed while the dial ran: the stream is already gone with it.
        wrapped._closed = True
        raise SyncClosed(self._closed_text())

    def _forget(self, stream: SyncStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def close(self) -> None:
        """Close the channel's streams, then the channel (``Channel``'s block ends)."""
        if not self._mark_closed():
            return
        with self._lock:
            streams = list(self._streams)
            self._streams.clear()
        for stream in streams:
            stream._closed = True  # the channel's close takes them down on the loop
        self._hub._forget(self)
        self._held.leave(self._closed_text())


class SyncHub(_Closable):
    """A blocking session with the hub (:func:`connect`), over the async
    :class:`~leapcore.peer.hubsession.HubSession`."""

    _what = "hub session"

    def __init__(self, loop: _Loop, held: _Held[HubSession], session: HubSession) -> None:
        super().__init__()
        self._loop = loop
        self._held = held
        self._channels: set[SyncChannel] = set()
        #: The async session (use it only on the loop: :meth:`run_async`).
        self.session = session

    def _call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, owner: _Closable | None = None
    ) -> T:
        """Run ``fn(*args)`` on the loop for ``owner`` (this hub, a channel or a stream):
        a failure because ``owner`` (or the hub) was closed meanwhile, by another thread, is
        :class:`SyncClosed`, whatever the async side raised for it."""
        owner = owner or self
        closed = owner._closed_text()
        if self._closed:
            raise SyncClosed(closed)
        try:
            return _wait(self._loop.submit(fn, *args, closed=closed), closed)
        except SyncClosed:
            raise
        except Exception as exc:
            if owner._closed or self._closed:
                raise SyncClosed(closed) from exc
            raise

    def run_async(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` on the hub's loop and return what it returns: the way to
        any async method this module does not wrap, e.g.
        ``hub.run_async(ch.channel.spawn_terminal, ["top"])``."""
        return self._call(fn, *args)

    def list_workers(self) -> list[dict[str, Any]]:
        """The signed-in user's workers (``HubSession.list_workers``)."""
        return self._call(self.session.list_workers)

    def find_workers(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        capability: str | Iterable[str] | None = None,
        online: bool | None = True,
    ) -> list[dict[str, Any]]:
        """The signed-in user's workers with these labels and capabilities, online (by
        default), offline or either (``HubSession.find_workers``)."""
        if capability is not None and not isinstance(capability, str):
            capability = list(capability)
        find = _kw(self.session.find_workers, labels=labels, capability=capability, online=online)
        return self._call(find)

    def resolve_worker(self, ref: str) -> dict[str, Any]:
        """The worker ``ref`` names: its id, its name or a unique start of its id
        (``HubSession.resolve_worker``: ``NotFound``, ``AmbiguousReference``)."""
        return self._call(self.session.resolve_worker, ref)

    def open_channel(
        self,
        worker: str | Mapping[str, Any],
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        timeout: float = OPEN_TIMEOUT,
    ) -> SyncChannel:
        """An end-to-end encrypted channel to ``worker`` (a reference as
        :meth:`resolve_worker` takes, or one of :meth:`list_workers`' entries), pinned,
        handshaken and pinged (``HubSession.open_channel``). Use it as a context manager,
        or :meth:`SyncChannel.close` it."""
        self._check()
        if isinstance(worker, Mapping):
            worker_id = str(worker["id"])
        else:
            worker_id = str(self.resolve_worker(worker)["id"])
        held: _Held[Channel] = _Held(
            self._loop,
            self.session.open_channel(
                worker_id, max_message_size=max_message_size, timeout=timeout
            ),
        )
        closed = self._closed_text()
        channel = held.enter(None, f"open a channel to worker {worker_id}", closed)
        wrapped = SyncChannel(self, held, channel)
        with self._lock:
            if not self._closed:
                self._channels.add(wrapped)
                return wrapped
        wrapped.close()
        raise SyncClosed(closed)

    def _forget(self, channel: SyncChannel) -> None:
        with self._lock:
            self._channels.discard(channel)

    def close(self) -> None:
        """Close every channel still open, then the session, then stop the thread. Errors
        closing the channels are logged and dropped; the session's own are raised."""
        if not self._mark_closed():
            return
        try:
            with self._lock:
                channels = list(self._channels)
                self._channels.clear()
            for channel in channels:
                try:
                    channel.close()
                except Exception as exc:  # the session's close below is what counts
                    log.debug("closing channel to %s: %r", channel.worker_id, exc)
            self._held.leave(self._closed_text())
        finally:
            self._loop.stop()


def _kw(fn: Callable[..., Awaitable[T]], **options: Any) -> Callable[..., Awaitable[T]]:
    """``fn`` with keyword arguments bound (the portal passes positional ones only)."""

    async def bound(*args: Any) -> T:
        return await fn(*args, **options)

    return bound


def connect(
    hub_url: str | None = None,
    *,
    token: str | None = None,
    transport: str = "websocket",
    ca_file: str | None = None,
    pins: PinStore | _Default | None = _DEFAULT,
    keepalive: float | None = KEEPALIVE_INTERVAL,
    timeout: float | None = OPEN_TIMEOUT,
) -> SyncHub:
    """Sign in to the hub and return a :class:`SyncHub` (use it as a context manager, or
    call :meth:`SyncHub.close`). The arguments are :func:`leapcore.connect`'s (the hub, the
    token, the CA file and the pin store found the same way), plus ``timeout``: seconds the
    dial and the sign-in may take together (``DeadlineExceeded``; ``None``: no bound)."""
    loop = _Loop()
    try:
        held: _Held[HubSession] = _Held(
            loop,
            _async_connect(
                hub_url,
                token=token,
                transport=transport,
                ca_file=ca_file,
                pins=pins,
                keepalive=keepalive,
            ),
        )
        session = held.enter(timeout, "sign in to the hub", "the hub session is closed")
    except BaseException:
        loop.stop()
        raise
    return SyncHub(loop, held, session)
