"""The worker's ``exec`` service: run a process for the owner, its stdin, stdout and stderr
carried as flow-controlled byte streams of the channel (``leapcore remote exec``,
:meth:`~leapcore.peer.channel.Channel.run_command`).

The wire (the payloads: :mod:`leapcore.proto.exec_spec`; docs/protocol.md, 4.11):

* ``exec`` (byte stream, owner-only, accepted by hand): the payload says what to run. The
  worker starts the process in a session (and process group) of its own, with pipes for
  its stdin, stdout and stderr, and accepts the stream only once it runs; a failure
  refuses the open (``invalid_argument``, ``command_not_found``, ``not_executable``,
  ``bad_cwd``, ``spawn_failed``, ``resource_exhausted``). The opener's data is the
  process's stdin (its EOF closes the pipe); the worker's data is its stdout, then EOF.
* ``exec.stderr`` (byte stream) ``{"process": ID}``, ``ID`` being the correlation id of
  the ``exec`` stream: the process's stderr, then EOF.
* ``exec.wait`` (RPC) ``{"process": ID}``: answered once the process has exited and all
  of its output was sent, with ``{"exit_status", "exit_signal", "timed_out"}``; it reaps
  the process (a second ``exec.wait`` is ``not_found``), like ``waitpid``.
* ``exec.signal`` (RPC) ``{"process": ID, "signal": N}``: ``kill(pid, N)`` (a process that
  already exited ignores it).

Everything is driven by trio (``trio.lowlevel.open_process``, pidfd waits): no threads.
Memory: each pipe is read :data:`~leapcore.proto.limits.EXEC_READ_SIZE` bytes at a time
and the next read waits for the byte stream's window, so a process that writes faster
than its reader reads blocks in its own ``write``, and nothing grows here.

Ending: a ``timeout``, a reset of the ``exec`` stream by its opener, or the channel closing
(every handler is cancelled) terminates the process group: SIGTERM, then
:data:`~leapcore.proto.limits.EXEC_KILL_GRACE` seconds (less if the process exits), then
SIGKILL to the group. After a normal exit, the group is watched until it is empty, so that
background children the command left are killed when the channel closes. A process that
leaves its process group (``setsid``) is not tracked. One channel runs at most
:data:`~leapcore.proto.limits.EXEC_MAX_PROCESSES` processes (groups) at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
from collections.abc import Callable
from typing import Final

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
from ..proto.exec_spec import (
    EXEC_METHOD,
    RESIZE_METHOD,
    SIGNAL_METHOD,
    STDERR_METHOD,
    WAIT_METHOD,
    ExecRequest,
    ExitReport,
    decode_exec_request,
    decode_process_ref,
    decode_resize,
    decode_signal_request,
    encode_exit,
)
from ..proto.limits import EXEC_KILL_GRACE, EXEC_MAX_PROCESSES, EXEC_READ_SIZE, PTY_EXIT_DRAIN
from ..proto.worker_policy import ExecRules
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

__all__ = ["ExecService", "add_exec_service"]

log = logging.getLogger(__name__)

#: Seconds between checks that a finished command's process group is empty.
GROUP_POLL: Final = 1.0


class _Run:
    """One process an ``exec`` stream started (and its group)."""

    def __init__(
        self,
        proc: trio.Process,
        request: ExecRequest,
        cid: int,
        master: trio.lowlevel.FdStream | None = None,
    ) -> None:
        self.proc = proc
        #: The terminal's master, for a process on a pty (its stdin and stdout).
        self.master = master
        self.master_closed = False
        self.pgid = proc.pid
        self.request = request
        self.cid = cid
        self.stderr_attached = False
        self.stderr_scope = trio.CancelScope()
        self.stderr_done = trio.Event()
        if request.stderr != "stream":
            self.stderr_done.set()
        self.timed_out = False
        self.report: ExitReport | None = None
        self.reported = trio.Event()
        self.collected = trio.Event()
        self.finished = trio.Event()

    @property
    def stdin(self) -> trio.abc.SendStream:
        sink = self.proc.stdin if self.master is None else self.master
        assert sink is not None
        return sink

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        source = self.proc.stdout if self.master is None else self.master
        assert source is not None
        return source

    def groups(self) -> set[int]:
        """The groups to signal: the process's, and its terminal's foreground one."""
        if self.master is None:
            return {self.pgid}
        return terminal_groups(self.pgid, None if self.master_closed else self.master.fileno())

    async def terminate(self, grace: float) -> None:
        """SIGTERM the group(s), wait up to ``grace`` for the process, SIGKILL them."""
        groups = self.groups()
        alive = [signal_group(pgid, signal.SIGTERM) for pgid in groups]
        if not any(alive) and self.proc.returncode is not None:
            return
        with trio.move_on_after(grace):
            await self.proc.wait()
        for pgid in groups:
            signal_group(pgid, signal.SIGKILL)
        await self.proc.wait()

    async def close_master(self) -> None:
        """Close a pty's master (the terminal hangs up; a read of it ends)."""
        if self.master is not None and not self.master_closed:
            self.master_closed = True
            with contextlib.suppress(OSError):
                await self.master.aclose()

    async def close_pipes(self) -> None:
        await self.close_master()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await pipe.aclose()


class ExecService:
    """The ``exec`` methods and their table of running processes (per worker; keyed by
    channel id and the ``exec`` stream's correlation id)."""

    def __init__(
        self,
        *,
        max_processes: int = EXEC_MAX_PROCESSES,
        kill_grace: float = EXEC_KILL_GRACE,
        workspace_dir: WorkspaceDir | None = None,
        policy: Callable[[], ExecRules] = no_exec_rules,
    ) -> None:
        self.max_processes = max_processes
        self.kill_grace = kill_grace
        self.workspace_dir = workspace_dir
        #: The worker's ``[exec]`` rules, read at each start (a reload applies to the next).
        self.policy = policy
        self._runs: dict[tuple[int, int], _Run] = {}
        #: Processes (groups) alive per channel id, watched ones included.
        self._slots: dict[int, int] = {}

    def install(self, services: Services) -> None:
        services.add_byte_stream(EXEC_METHOD, self._exec, accept="manual")
        services.add_byte_stream(STDERR_METHOD, self._stderr, accept="manual")
        services.add_rpc(WAIT_METHOD, self._wait)
        services.add_rpc(SIGNAL_METHOD, self._signal)
        services.add_rpc(RESIZE_METHOD, self._resize)
        # A process counts once toward the exec limit: through its ``exec`` stream.
        services.uncounted.update({STDERR_METHOD, WAIT_METHOD, SIGNAL_METHOD, RESIZE_METHOD})

    def cwds(self) -> list[str]:
        """The directories running processes were started in (given ones only)."""
        return live_dirs(run.request.cwd for run in self._runs.values())

    @property
    def processes(self) -> int:
        """Processes (and watched groups) alive now, on every channel."""
        return sum(self._slots.values())

    def running(self, channel_id: int) -> int:
        """Processes (and watched groups) the channel ``channel_id`` has now."""
        return self._slots.get(channel_id, 0)

    # -- exec ----------------------------------------------------------------------------

    async def _exec(self, ctx: CallContext, payload: bytes, opening: ByteStreamOpening) -> None:
        try:
            request = decode_exec_request(payload)
        except InvalidMessage as exc:
            await opening.refuse("invalid_argument", str(exc))
            return
        channel_id = ctx.channel_id
        if self.running(channel_id) >= self.max_processes:
            await opening.refuse(
                "resource_exhausted",
                f"this channel runs {self.max_processes} processes, the limit; wait for one "
                "(exec.wait) or use another channel",
            )
            return
        self._slots[channel_id] = self.running(channel_id) + 1
        try:
            await self._start(ctx, request, opening)
        finally:
            left = self._slots[channel_id] - 1
            if left:
                self._slots[channel_id] = left
            else:
                del self._slots[channel_id]

    async def _start(
        self, ctx: CallContext, request: ExecRequest, opening: ByteStreamOpening
    ) -> None:
        try:
            cwd = await start_dir(self.workspace_dir, request.workspace, request.cwd)
        except ServiceError as exc:
            await opening.refuse(exc.error_code, exc.error_message)
            return
        request = attrs.evolve(request, cwd=cwd)
        env = process_env(request.env, request.env_mode, terminal=request.pty is not None)
        try:
            launch = plan_launch(self.policy(), request.command, env, request.cwd)
        except ServiceError as exc:
            log.info("channel %d: exec %s refused: %s", ctx.channel_id, request.display, exc)
            await opening.refuse(exc.error_code, exc.error_message)
            return
        master = None
        try:
            if request.pty is not None:
                cols, rows = request.pty
                proc, master = await open_on_terminal(
                    request.command, cols=cols, rows=rows, env=env, cwd=request.cwd, launch=launch
                )
            else:
                stderr = {"stream": subprocess.PIPE, "stdout": subprocess.STDOUT}.get(
                    request.stderr, subprocess.DEVNULL
                )
                proc = await trio.lowlevel.open_process(
                    request.command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    cwd=request.cwd,
                    start_new_session=True,
                    **launch,
                )
        except OSError as exc:
            code, message = spawn_failure(exc, request.command[0], request.cwd)
            log.info("channel %d: exec %s refused: %s", ctx.channel_id, request.display, code)
            await opening.refuse(code, message)
            return
        cid = opening.correlation_id
        run = _Run(proc, request, cid, master)
        key = (ctx.channel_id, cid)
        self._runs[key] = run
        log.info("channel %d: exec %s: pid %d", ctx.channel_id, request.display, proc.pid)
        try:
            stream = await opening.accept()
            if await self._serve(run, stream):
                self._runs.pop(key, None)
                await self._watch_group(run)
        finally:
            self._runs.pop(key, None)
            run.stderr_scope.cancel()
            with trio.CancelScope(shield=True):
                if proc.returncode is None or signal_group(run.pgid, 0):
                    await run.terminate(self.kill_grace)
                await run.close_pipes()
            run.finished.set()
            status = proc.returncode
            if status is not None:  # for the call's report (the worker's audit log)
                ctx.notes["exit_status"] = status if status >= 0 else None
                ctx.notes["exit_signal"] = -status if status < 0 else None
            log.info(
                "channel %d: exec pid %d ended (%s)",
                ctx.channel_id,
                proc.pid,
                proc.returncode,
            )

    async def _serve(self, run: _Run, stream: ByteStream) -> bool:
        """Copy stdin in and stdout out, report the exit; returns True once reaped, False
        at once when the opener reset the stream (the caller then kills the group)."""
        proc = run.proc
        stdout_done = trio.Event()
        abandoned = False

        def abandon() -> None:
            nonlocal abandoned
            abandoned = True
            nursery.cancel_scope.cancel()

        async def copy_in() -> None:
            sink: trio.abc.SendStream | None = run.stdin
            try:
                while data := await stream.receive_some(EXEC_READ_SIZE):
                    if sink is None:
                        continue  # the process closed its stdin: the rest is dropped
                    try:
                        await sink.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        sink = None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                abandon()
                return
            if sink is not None and run.master is None:  # a terminal stays open (ssh -t)
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await sink.aclose()
            # stdin is over, but the opener may still abandon the process: watch for that.
            await wait_byte_stream_broken(stream)
            if run.report is None:
                abandon()

        async def copy_out() -> None:
            source = run.stdout
            while True:
                try:
                    data = await source.receive_some(EXEC_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""  # a terminal's EIO (nobody holds it) or its master closed
                if not data:
                    break
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    abandon()
                    return
            try:
                await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                abandon()
                return
            stdout_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy_in)
            nursery.start_soon(copy_out)
            timer = trio.CancelScope()
            if run.request.timeout is not None:
                nursery.start_soon(self._timer, run, timer)
            await proc.wait()
            if run.master is not None:
                # What the process wrote is read; a background child still holding the
                # terminal is not waited for (as when a terminal session ends).
                with trio.move_on_after(PTY_EXIT_DRAIN):
                    await stdout_done.wait()
                await run.close_master()
            await stdout_done.wait()
            await run.stderr_done.wait()
            timer.cancel()
            code = proc.returncode
            assert code is not None
            if code < 0:
                run.report = ExitReport(None, -code, run.timed_out)
            else:
                run.report = ExitReport(code, None, run.timed_out)
            run.reported.set()
            await run.collected.wait()
            nursery.cancel_scope.cancel()
        if abandoned:
            log.info("exec pid %d: the opener reset its stream", proc.pid)
            return False
        with trio.CancelScope(shield=True):
            await stream.aclose()  # resets the opener's stdin if it did not end it
        return True

    async def _timer(self, run: _Run, scope: trio.CancelScope) -> None:
        assert run.request.timeout is not None
        with scope:
            await trio.sleep(run.request.timeout)
            run.timed_out = True
            log.info("exec pid %d: timed out after %gs", run.proc.pid, run.request.timeout)
            await run.terminate(self.kill_grace)
            if not run.stderr_attached:
                run.stderr_done.set()  # nobody came for stderr: do not wait for it

    async def _watch_group(self, run: _Run) -> None:
        """Hold the slot while the finished command's group has members (background
        children): the channel closing kills them."""
        while signal_group(run.pgid, 0):
            await trio.sleep(GROUP_POLL)

    # -- exec.stderr, exec.wait, exec.signal ----------------------------------------------

    def _find(self, ctx: CallContext, process: int) -> _Run:
        run = self._runs.get((ctx.channel_id, process))
        if run is None:
            raise ServiceError(
                "not_found", f"no process {process} on this channel (ended, or already waited)"
            )
        return run

    async def _stderr(self, ctx: CallContext, payload: bytes, opening: ByteStreamOpening) -> None:
        try:
            run = self._find(ctx, decode_process_ref(payload))
        except InvalidMessage as exc:
            raise ServiceError("invalid_argument", str(exc)) from None
        if run.request.stderr != "stream" or run.stderr_attached:
            raise ServiceError(
                "failed_precondition",
                f"process {run.cid}'s stderr is not a stream, or is already open",
            )
        run.stderr_attached = True
        pipe = run.proc.stderr
        assert pipe is not None
        stream = await opening.accept()
        with run.stderr_scope:
            try:
                while data := await pipe.receive_some(EXEC_READ_SIZE):
                    await stream.send_all(data)
                await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The reader reset its stderr stream: the rest is read and dropped, so the
                # process never blocks on it.
                while await pipe.receive_some(EXEC_READ_SIZE):
                    pass
            run.stderr_done.set()
            return
        await run.finished.wait()

    async def _wait(self, ctx: CallContext, payload: bytes) -> bytes:
        try:
            process = decode_process_ref(payload)
        except InvalidMessage as exc:
            raise ServiceError("invalid_argument", str(exc)) from None
        run = self._find(ctx, process)
        await run.reported.wait()
        if run.collected.is_set():
            raise ServiceError("not_found", f"process {process} was already waited for")
        run.collected.set()
        assert run.report is not None
        return encode_exit(run.report)

    async def _signal(self, ctx: CallContext, payload: bytes) -> bytes:
        try:
            process, signum = decode_signal_request(payload)
        except InvalidMessage as exc:
            raise ServiceError("invalid_argument", str(exc)) from None
        run = self._find(ctx, process)
        if run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.proc.send_signal(signum)
        return b"{}"

    async def _resize(self, ctx: CallContext, payload: bytes) -> bytes:
        try:
            process, cols, rows = decode_resize(payload)
        except InvalidMessage as exc:
            raise ServiceError("invalid_argument", str(exc)) from None
        run = self._find(ctx, process)
        if run.master is None:
            raise ServiceError(
                "failed_precondition", f"process {process} was not started on a terminal (pty)"
            )
        if not run.master_closed:
            with contextlib.suppress(OSError):
                set_terminal_size(run.master.fileno(), cols, rows)
        return b"{}"


def add_exec_service(
    services: Services,
    *,
    max_processes: int = EXEC_MAX_PROCESSES,
    kill_grace: float = EXEC_KILL_GRACE,
    workspace_dir: WorkspaceDir | None = None,
    policy: Callable[[], ExecRules] = no_exec_rules,
) -> ExecService:
    """Register ``exec``, ``exec.stderr``, ``exec.wait`` and ``exec.signal`` (owner-only)
    on ``services``; returns the service (its table of processes). ``workspace_dir``
    resolves the ``"workspace"`` field (None: a worker without workspaces); ``policy``
    gives the ``[exec]`` rules each start is checked against (default: none)."""
    service = ExecService(
        max_processes=max_processes,
        kill_grace=kill_grace,
        workspace_dir=workspace_dir,
        policy=policy,
    )
    service.install(services)
    return service
