"""The worker's terminal sessions (``pty.*``): PTY-backed sessions that agents and people
drive -- spawn, send keys, capture the screen, stream the output, resize, kill -- like tmux.

The wire (payloads: :mod:`leapcore.proto.pty_spec`; docs/protocol.md, 4.12): ``pty.spawn``,
``pty.resize``, ``pty.send``, ``pty.capture``, ``pty.list``, ``pty.kill``, ``pty.wait``
(RPCs) and ``pty.attach`` (a byte stream), all owner-only.

**Sessions belong to the worker, not to a channel**: they outlive the channel that
created them, and any channel of the owner lists, captures and attaches them. Their tasks
run in a nursery of the service (:meth:`PtyService.run`, or, when nothing started it, a
trio system task started at the first spawn); leaving it ends every session.

**One session**: ``os.openpty``; the child runs in a new session (``setsid``) with the
terminal as its stdin, stdout, stderr and controlling terminal (``TIOCSCTTY``), started by
``trio.lowlevel.open_process``; the master is a :class:`trio.lowlevel.FdStream` (no
threads). A pump task reads the master at all times (attached or not) and feeds the output
to the session's :class:`~leapcore.worker.pty_screen.TerminalScreen` and to each attached
stream. When the process exits, what is left of its output is read (at most
:data:`~leapcore.proto.limits.PTY_EXIT_DRAIN` seconds), the master is closed, and the
session stays listed, ``running: false``, its screen still capturable, until ``pty.kill``
forgets it (or a spawn needs its slot: the oldest exited session goes first).

**Memory** per session: the screen (``cols x rows`` cells, at most
:data:`~leapcore.proto.limits.PTY_MAX_CELLS`), the scrollback as text
(:data:`~leapcore.proto.limits.PTY_SCROLLBACK_LINES` lines), one read
(:data:`~leapcore.proto.limits.PTY_READ_SIZE`) and, per attached stream, at most
:data:`~leapcore.proto.limits.PTY_ATTACH_BACKLOG` bytes not yet sent: a stream that falls
further behind loses them and gets a fresh snapshot instead. No raw history is kept.

**Attach**: the stream first gets a snapshot (escape sequences that redraw the screen: see
:meth:`~leapcore.worker.pty_screen.TerminalScreen.snapshot`), then the output as it
comes; the opener's bytes are keys. Its EOF stops the keys only; closing (resetting) it
detaches. Once the session's process has exited and its output is sent, the worker sends
EOF.

**Killing** (``pty.kill``, or the service ending): SIGHUP (and SIGCONT) to the session's
process group and the terminal's foreground group, the master closed,
:data:`~leapcore.proto.limits.PTY_KILL_GRACE` seconds for the process to exit, then SIGKILL
to those groups.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ..errors import InvalidMessage, ServiceError
from ..peer.channel import (
    ByteStream,
    ByteStreamOpening,
    CallContext,
    Services,
    wait_byte_stream_broken,
)
from ..proto.capabilities import BUSY, busy_message
from ..proto.limits import (
    PTY_ATTACH_BACKLOG,
    PTY_EXIT_DRAIN,
    PTY_KILL_GRACE,
    PTY_MAX_ATTACHED,
    PTY_MAX_SESSIONS,
    PTY_READ_SIZE,
    PTY_SCROLLBACK_LINES,
)
from ..proto.pty_spec import (
    ATTACH_METHOD,
    CAPTURE_METHOD,
    KILL_METHOD,
    LIST_METHOD,
    RESIZE_METHOD,
    SEND_METHOD,
    SPAWN_METHOD,
    WAIT_METHOD,
    Capture,
    SessionInfo,
    SpawnRequest,
    decode_attach_request,
    decode_capture_request,
    decode_resize_request,
    decode_send_request,
    decode_session_ref,
    decode_spawn_request,
    encode_capture,
    encode_info,
    encode_list,
)
from ..proto.worker_policy import ExecRules
from .pty_screen import TerminalScreen
from .spawn import (
    WorkspaceDir,
    live_dirs,
    no_exec_rules,
    open_on_terminal,
    plan_launch,
    process_env,
    set_terminal_size,
    signal_group,
    spawn_failure,
    start_dir,
    terminal_groups,
)

__all__ = ["PtyService", "add_pty_service"]

log = logging.getLogger(__name__)


class _Attached:
    """One attached stream's output not yet sent (or a redraw owed instead)."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.redraw = True  # the first thing sent is a snapshot
        self.changed = trio.Event()

    def kick(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def push(self, data: bytes) -> None:
        if not self.redraw:
            if len(self.pending) + len(data) > PTY_ATTACH_BACKLOG:
                self.pending.clear()
                self.redraw = True
            else:
                self.pending += data
        self.kick()


class _Session:
    """One terminal session."""

    def __init__(
        self,
        session_id: str,
        request: SpawnRequest,
        proc: trio.Process,
        master: trio.lowlevel.FdStream,
        scrollback: int,
    ) -> None:
        self.id = session_id
        self.request = request
        self.proc = proc
        self.master = master
        self.fd = master.fileno()
        self.cols, self.rows = request.cols, request.rows
        self.screen = TerminalScreen(request.cols, request.rows, scrollback=scrollback)
        self.created = time.time()
        self.attached: set[_Attached] = set()
        self.write_lock = trio.Lock()
        self.scope = trio.CancelScope()
        self.exited = trio.Event()
        self.finished = trio.Event()
        self.closed = False
        self.killed = False

    def info(self) -> SessionInfo:
        code = self.proc.returncode
        status = code if code is not None and code >= 0 else None
        signum = -code if code is not None and code < 0 else None
        return SessionInfo(
            self.id,
            self.request.display,
            self.proc.pid,
            self.cols,
            self.rows,
            code is None,
            status,
            signum,
            self.created,
            len(self.attached),
        )

    def output(self, data: bytes) -> None:
        self.screen.feed(data)
        for attached in self.attached:
            attached.push(data)

    def resize(self, cols: int, rows: int) -> None:
        if not self.closed:
            set_terminal_size(self.fd, cols, rows)
        self.cols, self.rows = cols, rows
        self.screen.resize(cols, rows)

    async def write(self, data: bytes) -> None:
        async with self.write_lock:
            if self.closed:
                raise ServiceError("failed_precondition", f"session {self.id} has exited")
            try:
                await self.master.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ServiceError("failed_precondition", f"session {self.id} has exited") from None

    def groups(self) -> set[int]:
        """The process groups to signal: the session leader's and the foreground one."""
        return terminal_groups(self.proc.pid, None if self.closed else self.fd)

    def wake_attached(self) -> None:
        for attached in self.attached:
            attached.kick()


class PtyService:
    """The ``pty.*`` methods and the worker's table of sessions."""

    def __init__(
        self,
        *,
        max_sessions: int = PTY_MAX_SESSIONS,
        kill_grace: float = PTY_KILL_GRACE,
        scrollback: int = PTY_SCROLLBACK_LINES,
        workspace_dir: WorkspaceDir | None = None,
        policy: Callable[[], ExecRules] = no_exec_rules,
    ) -> None:
        self.workspace_dir = workspace_dir
        #: The worker's ``[exec]`` rules, read at each spawn.
        self.policy = policy
        self.max_sessions = max_sessions
        self.kill_grace = kill_grace
        self.scrollback = scrollback
        self.sessions: dict[str, _Session] = {}
        self._counter = 0
        #: Spawns between their check of the limit and their entry in ``sessions``.
        self._spawning = 0
        self._nursery: trio.Nursery | None = None
        self._token: Any = None
        self._starting: trio.Event | None = None
        #: The worker's concurrency limits (its method table's; see :meth:`install`).
        self._limits: dict[str, int] = {}

    @property
    def live_sessions(self) -> int:
        """Sessions whose process has not exited (kept exited ones are not counted)."""
        return sum(1 for s in self.sessions.values() if not s.exited.is_set())

    def cwds(self) -> list[str]:
        """The directories running sessions were started in (given ones only)."""
        return live_dirs(s.request.cwd for s in self.sessions.values() if not s.exited.is_set())

    def install(self, services: Services) -> None:
        services.add_rpc(SPAWN_METHOD, self._guard(self._spawn))
        services.add_rpc(RESIZE_METHOD, self._guard(self._resize))
        services.add_rpc(SEND_METHOD, self._guard(self._send))
        services.add_rpc(CAPTURE_METHOD, self._guard(self._capture))
        services.add_rpc(LIST_METHOD, self._guard(self._list))
        services.add_rpc(KILL_METHOD, self._guard(self._kill))
        services.add_rpc(WAIT_METHOD, self._guard(self._wait))
        services.add_byte_stream(ATTACH_METHOD, self._attach, accept="manual")
        # The pty limit counts live sessions (checked by pty.spawn), not calls.
        services.uncounted.update(
            {SPAWN_METHOD, RESIZE_METHOD, SEND_METHOD, CAPTURE_METHOD, LIST_METHOD}
        )
        services.uncounted.update({KILL_METHOD, WAIT_METHOD, ATTACH_METHOD})
        self._limits = services.limits

    @staticmethod
    def _guard(
        handler: Callable[[bytes], Awaitable[bytes]],
    ) -> Callable[[CallContext, bytes], Awaitable[bytes]]:
        async def call(ctx: CallContext, payload: bytes) -> bytes:
            try:
                return await handler(payload)
            except InvalidMessage as exc:
                raise ServiceError("invalid_argument", str(exc)) from None

        return call

    # -- where the sessions' tasks run -------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the sessions' tasks here until cancelled (then every session is killed)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def _sessions_nursery(self) -> trio.Nursery:
        token = trio.lowlevel.current_trio_token()
        if self._nursery is not None and self._token is token:
            return self._nursery
        if self._token is not token:  # a new trio run: the old sessions are gone
            self.sessions.clear()
            self._nursery, self._starting = None, None
            self._token = token
        if self._starting is None:
            self._starting = trio.Event()
            trio.lowlevel.spawn_system_task(self._system_run, self._starting)
        await self._starting.wait()
        assert self._nursery is not None
        return self._nursery

    async def _system_run(self, ready: trio.Event) -> None:
        async with trio.open_nursery() as outer:
            await outer.start(self.run)
            ready.set()

    async def aclose(self) -> None:
        """Kill every session and wait for them to end."""
        for session in list(self.sessions.values()):
            await self._dispose(session)

    # -- helpers -------------------------------------------------------------------------

    def _find(self, session_id: str) -> _Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise ServiceError("not_found", f"no terminal session {session_id!r} on this worker")
        return session

    def _check_limit(self) -> None:
        """The worker's ``concurrency`` limit of ``pty``: live sessions (spawning included)."""
        limit = self._limits.get("pty")
        if limit is None:
            return
        live = self._spawning + sum(not s.exited.is_set() for s in self.sessions.values())
        if live >= limit:
            raise ServiceError(BUSY, busy_message("pty", live, limit))

    def _make_room(self) -> None:
        if len(self.sessions) + self._spawning < self.max_sessions:
            return
        exited = [s for s in self.sessions.values() if s.finished.is_set()]
        if not exited:
            raise ServiceError(
                "resource_exhausted",
                f"this worker runs {self.max_sessions} terminal sessions, the limit; kill one",
            )
        oldest = min(exited, key=lambda s: s.created)
        del self.sessions[oldest.id]
        log.info("pty session %s forgotten to make room", oldest.id)

    # -- pty.spawn -----------------------------------------------------------------------

    async def _spawn(self, payload: bytes) -> bytes:
        request = decode_spawn_request(payload)
        cwd = await start_dir(self.workspace_dir, request.workspace, request.cwd)
        request = attrs.evolve(request, cwd=cwd)
        login_shell = os.environ.get("SHELL") or "/bin/sh"
        command = request.command(login_shell)
        env = process_env(request.env, request.env_mode, terminal=True)
        launch = plan_launch(self.policy(), command, env, request.cwd)
        self._check_limit()
        nursery = await self._sessions_nursery()
        self._make_room()
        self._spawning += 1
        try:
            proc, master = await open_on_terminal(
                command,
                cols=request.cols,
                rows=request.rows,
                env=env,
                cwd=request.cwd,
                launch=launch,
            )
        except OSError as exc:
            raise ServiceError(*spawn_failure(exc, command[0], request.cwd)) from None
        finally:
            self._spawning -= 1
        self._counter += 1
        session_id = str(self._counter)
        session = _Session(session_id, request, proc, master, self.scrollback)
        self.sessions[session_id] = session
        nursery.start_soon(self._pump, session)
        log.info("pty session %s: %s, pid %d", session_id, request.display, proc.pid)
        return encode_info(session.info())

    async def _pump(self, session: _Session) -> None:
        reader_done = trio.Event()

        async def read() -> None:
            try:
                while data := await session.master.receive_some(PTY_READ_SIZE):
                    session.output(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # EIO: every holder of the terminal closed it
            finally:
                reader_done.set()

        try:
            with session.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    await session.proc.wait()
                    session.exited.set()
                    with trio.move_on_after(PTY_EXIT_DRAIN):
                        await reader_done.wait()
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("pty session %s failed", session.id)
        finally:
            with trio.CancelScope(shield=True):
                await self._end(session)

    async def _end(self, session: _Session) -> None:
        proc = session.proc
        running = proc.returncode is None
        groups = session.groups()
        if running:  # a kill: hang up, as a closed terminal window does
            for pgid in groups:
                signal_group(pgid, signal.SIGHUP)
                signal_group(pgid, signal.SIGCONT)
        session.closed = True
        with contextlib.suppress(OSError):
            await session.master.aclose()
        if running:
            with trio.move_on_after(self.kill_grace):
                await proc.wait()
            for pgid in groups:
                signal_group(pgid, signal.SIGKILL)
        await proc.wait()
        session.exited.set()
        session.finished.set()
        session.wake_attached()
        log.info("pty session %s ended (%s)", session.id, proc.returncode)

    async def _dispose(self, session: _Session) -> SessionInfo:
        session.killed = True
        session.scope.cancel()
        await session.finished.wait()
        self.sessions.pop(session.id, None)
        return session.info()

    # -- the other RPCs ------------------------------------------------------------------

    async def _resize(self, payload: bytes) -> bytes:
        session_id, cols, rows = decode_resize_request(payload)
        self._find(session_id).resize(cols, rows)
        await trio.lowlevel.checkpoint()
        return b"{}"

    async def _send(self, payload: bytes) -> bytes:
        session_id, data = decode_send_request(payload)
        await self._find(session_id).write(data)
        return b"{}"

    async def _capture(self, payload: bytes) -> bytes:
        request = decode_capture_request(payload)
        session = self._find(request.id)
        screen = session.screen
        await trio.lowlevel.checkpoint()
        capture = Capture(
            session.info(),
            tuple(screen.lines()),
            tuple(screen.scrollback(request.scrollback)),
            screen.cursor,
            screen.snapshot() if request.ansi else None,
        )
        return encode_capture(capture)

    async def _list(self, payload: bytes) -> bytes:
        if payload.strip() not in (b"", b"{}"):
            raise InvalidMessage("pty.list takes {}")
        await trio.lowlevel.checkpoint()
        infos = sorted((s.info() for s in self.sessions.values()), key=lambda i: i.created)
        return encode_list(infos)

    async def _kill(self, payload: bytes) -> bytes:
        session = self._find(decode_session_ref(payload))
        return encode_info(await self._dispose(session))

    async def _wait(self, payload: bytes) -> bytes:
        session = self._find(decode_session_ref(payload))
        await session.exited.wait()
        await session.proc.wait()
        return encode_info(session.info())

    # -- pty.attach ----------------------------------------------------------------------

    async def _attach(self, ctx: CallContext, payload: bytes, opening: ByteStreamOpening) -> None:
        try:
            request = decode_attach_request(payload)
        except InvalidMessage as exc:
            await opening.refuse("invalid_argument", str(exc))
            return
        session = self.sessions.get(request.id)
        if session is None:
            await opening.refuse("not_found", f"no terminal session {request.id!r}")
            return
        if len(session.attached) >= PTY_MAX_ATTACHED:
            await opening.refuse(
                "resource_exhausted",
                f"{PTY_MAX_ATTACHED} streams are attached to session {session.id}, the limit",
            )
            return
        if request.size is not None:
            session.resize(*request.size)
        stream = await opening.accept()
        attached = _Attached()
        session.attached.add(attached)
        log.info("channel %d: attached to pty session %s", ctx.channel_id, session.id)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keys, session, stream, nursery.cancel_scope)
                await self._show(session, stream, attached)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # detached
        finally:
            session.attached.discard(attached)
            log.info("channel %d: detached from pty session %s", ctx.channel_id, session.id)

    @staticmethod
    async def _show(session: _Session, stream: ByteStream, attached: _Attached) -> None:
        while True:
            if attached.redraw:
                attached.redraw = False
                attached.pending.clear()
                data = session.screen.snapshot().encode()
            elif attached.pending:
                data = bytes(attached.pending)
                attached.pending.clear()
            elif session.finished.is_set():
                await stream.send_eof()
                return
            else:
                await attached.changed.wait()
                continue
            await stream.send_all(data)

    @staticmethod
    async def _keys(session: _Session, stream: ByteStream, scope: trio.CancelScope) -> None:
        try:
            while data := await stream.receive_some(PTY_READ_SIZE):
                if session.closed:
                    continue  # the session is over: keys go nowhere
                try:
                    await session.write(data)
                except ServiceError:
                    continue
            # EOF: no more keys, but the output goes on until the opener closes the stream.
            await wait_byte_stream_broken(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # the opener reset (closed) the stream: detach


def add_pty_service(
    services: Services,
    *,
    max_sessions: int = PTY_MAX_SESSIONS,
    kill_grace: float = PTY_KILL_GRACE,
    scrollback: int = PTY_SCROLLBACK_LINES,
    workspace_dir: WorkspaceDir | None = None,
    policy: Callable[[], ExecRules] = no_exec_rules,
) -> PtyService:
    """Register the ``pty.*`` methods (owner-only) on ``services``; returns the service
    (its table of sessions). ``workspace_dir`` and ``policy``: as for
    :func:`~leapcore.worker.exec.add_exec_service`."""
    service = PtyService(
        max_sessions=max_sessions,
        kill_grace=kill_grace,
        scrollback=scrollback,
        workspace_dir=workspace_dir,
        policy=policy,
    )
    service.install(services)
    return service
