"""Processes on a worker, like asyncssh's ``conn.run`` and ``conn.create_process``.

::

    async with hub.open_channel(worker_id) as ch:
        result = await ch.run_command(["uname", "-a"], check=True)
        print(result.stdout.decode())

        async with ch.create_process("sort") as proc:       # a shell string: /bin/sh -c
            await proc.stdin.send_all(b"b\\na\\n")
            await proc.stdin.send_eof()
            print(await proc.stdout.receive_some())         # b"a\\nb\\n" (read to EOF)
            print((await proc.wait()).exit_status)          # 0

A command is a list of strings (run as is, looked up in the worker's ``PATH``) or one
string (run by ``/bin/sh -c`` on the worker). ``env`` is laid over the worker's own
environment (``env_mode="replace"``: the process gets exactly ``env``); names with ``=``
or NUL, values with NUL are :class:`~leapcore.errors.InvalidMessage` before anything is
sent. ``timeout`` (seconds) is enforced by the worker, which kills the process group.

``pty=(cols, rows)`` runs the process on a pseudo-terminal of that size on the worker
(``ssh -t``): stdout carries what it writes to the terminal (its stderr too), stdin is
typed into it, :meth:`RemoteProcess.resize` changes its size, and ``TERM`` is
``xterm-256color`` unless ``env`` names one. Ending stdin does not hang the terminal up.

The streams are the channel's flow-controlled byte streams: a process whose output is
not read blocks in its own ``write`` once the window (256 KiB .. 4 MiB) is full, as with
a pipe; nothing grows without bound on either side. The wire is in docs/protocol.md (4.11)
and :mod:`leapcore.worker.exec`.
"""

from __future__ import annotations

import math
import signal as signal_module
from collections.abc import Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal

import attrs
import trio

from ..errors import (
    CommandNotFound,
    ExecFailed,
    InvalidMessage,
    LeapcoreError,
    ProcessFailed,
    ProcessOutputTooLarge,
    ProcessTimedOut,
    RemoteCallError,
    StreamUsageError,
    WorkspaceError,
)
from ..proto.exec_spec import (
    EXEC_FAILURES,
    EXEC_METHOD,
    RESIZE_METHOD,
    SIGNAL_METHOD,
    STDERR_METHOD,
    WAIT_METHOD,
    ExecRequest,
    ExitReport,
    check_size,
    decode_exit,
    encode_exec_request,
    encode_process_ref,
    encode_resize,
    encode_signal_request,
)
from ..proto.limits import EXEC_READ_SIZE, EXEC_RUN_MAX_OUTPUT
from .channel import CALL_TIMEOUT, ByteStream, Channel, reset_byte_stream

__all__ = [
    "Command",
    "ProcessResult",
    "ProcessStarter",
    "RemoteProcess",
    "create_process",
    "exec_error",
    "exec_request",
    "run",
]

#: A command: argv (a list of strings, run as is) or a shell string (``/bin/sh -c``).
Command = str | Sequence[str]
#: Where the process's stderr goes: its own stream, merged into stdout, or nowhere.
StderrMode = Literal["stream", "stdout", "discard"]
#: What ``run_command`` may feed the process's stdin.
StdinSource = bytes | bytearray | memoryview | trio.abc.ReceiveStream | None

_NO_STDERR: Final = b""


@attrs.frozen
class ProcessResult:
    """A finished remote process: ``exit_status`` (0 .. 255) or ``exit_signal`` (the signal
    number that killed it; then ``exit_status`` is None), its ``stdout`` and ``stderr``
    (what ``run_command`` collected; ``b""`` from :meth:`RemoteProcess.wait`) and whether
    the worker killed it for its ``timeout``."""

    command: str | tuple[str, ...]
    exit_status: int | None
    exit_signal: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False

    @property
    def returncode(self) -> int | None:
        """As :mod:`subprocess` has it: the exit status, or minus the signal number."""
        if self.exit_signal is not None:
            return -self.exit_signal
        return self.exit_status

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def exec_request(
    command: Command,
    *,
    env: Mapping[str, str] | None = None,
    env_mode: Literal["merge", "replace"] = "merge",
    cwd: str | None = None,
    timeout: float | None = None,
    stderr: StderrMode | None = None,
    pty: tuple[int, int] | None = None,
    workspace: str | None = None,
) -> ExecRequest:
    """The request for ``command`` (checked: :class:`InvalidMessage` when malformed).
    ``stderr`` defaults to ``"stream"``, or ``"stdout"`` with a ``pty`` (the only choice
    there)."""
    mode: StderrMode = stderr if stderr is not None else "stream" if pty is None else "stdout"
    size = None if pty is None else check_size(*pty)
    if isinstance(command, str):
        request = ExecRequest(None, command, env, env_mode, cwd, timeout, mode, size, workspace)
    elif isinstance(command, (bytes, bytearray)) or not isinstance(command, Sequence):
        raise InvalidMessage("a command is a list of strings or one shell string")
    else:
        request = ExecRequest(
            tuple(command), None, env, env_mode, cwd, timeout, mode, size, workspace
        )
    encode_exec_request(request)  # the checks the worker makes
    return request


def exec_error(exc: RemoteCallError) -> LeapcoreError:
    """The worker's refusal to start a process (``exec``, ``pty.spawn``) as the error to
    raise; ``exc`` itself for any other code."""
    code = exc.remote_code
    if code == "command_not_found":
        return CommandNotFound(code, exc.remote_message)
    if code in EXEC_FAILURES:
        return ExecFailed(code, exc.remote_message)
    if code == "invalid_argument":
        return InvalidMessage(f"the worker refused the request: {exc.remote_message}")
    if code == "workspace_not_found":
        return WorkspaceError(code, exc.remote_message)
    return exc


class _Stdin(trio.abc.SendStream):
    """The process's stdin: ``send_eof()`` (or ``aclose()``) closes it on the worker."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        if not (self._stream._eof_sent or self._stream._closed):
            await self._stream.send_eof()
        await trio.lowlevel.checkpoint()


class _Output(trio.abc.ReceiveStream):
    """A process's stdout or stderr: ``receive_some`` returns ``b""`` at its end."""

    def __init__(self, stream: ByteStream | None) -> None:
        self._stream = stream
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._stream is None:
            await trio.lowlevel.checkpoint()
            return _NO_STDERR
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()


class RemoteProcess:
    """A process running on the worker (from :func:`create_process`).

    ``stdin`` is a :class:`trio.abc.SendStream` with ``send_eof()``; ``stdout`` and
    ``stderr`` are :class:`trio.abc.ReceiveStream` (``stderr`` is empty when it was merged
    into stdout or discarded). :meth:`wait` returns the :class:`ProcessResult` once the
    process exited and its output was all sent: read stdout and stderr meanwhile, or a
    chatty process blocks and never exits. Leaving the ``async with`` block (or
    :meth:`aclose`) before :meth:`wait` returned makes the worker kill the process group.
    """

    def __init__(
        self,
        channel: Channel,
        request: ExecRequest,
        stream: ByteStream,
        stderr: ByteStream | None,
    ) -> None:
        self.channel = channel
        self.request = request
        self._stream = stream
        self._stderr = stderr
        self.stdin: _Stdin = _Stdin(stream)
        self.stdout: _Output = _Output(stream)
        self.stderr: _Output = _Output(stderr)
        self._result: ProcessResult | None = None
        self._done = trio.Event()
        self._waiting = False

    @property
    def id(self) -> int:
        """The process's reference on the wire (its ``exec`` stream's correlation id)."""
        return self._stream.correlation_id

    @property
    def command(self) -> str | tuple[str, ...]:
        request = self.request
        return request.shell if request.shell is not None else tuple(request.argv or ())

    @property
    def returncode(self) -> int | None:
        """None until :meth:`wait` returned."""
        return None if self._result is None else self._result.returncode

    async def send_signal(self, sig: int) -> None:
        """Send signal ``sig`` (a number or :class:`signal.Signals`) to the process (not
        its group); one that already exited ignores it."""
        signum = int(sig)
        if self._result is not None:  # reaped: nothing to signal
            await trio.lowlevel.checkpoint()
            return
        await self.channel.call(SIGNAL_METHOD, encode_signal_request(self.id, signum))

    async def resize(self, cols: int, rows: int) -> None:
        """Change the size of the process's terminal (one started with ``pty``): it gets
        SIGWINCH. :class:`InvalidMessage` for a size the worker refuses (see
        :func:`~leapcore.proto.exec_spec.check_size`); :class:`StreamUsageError` without
        a ``pty``."""
        if self.request.pty is None:
            raise StreamUsageError("this process was not started with a pty")
        payload = encode_resize(self.id, cols, rows)
        if self._result is not None:
            await trio.lowlevel.checkpoint()
            return
        await self.channel.call(RESIZE_METHOD, payload)

    async def terminate(self) -> None:
        await self.send_signal(signal_module.SIGTERM)

    async def kill(self) -> None:
        await self.send_signal(signal_module.SIGKILL)

    async def wait(self) -> ProcessResult:
        """The exit status once the process exited and its output was sent (no deadline:
        the worker's ``timeout`` bounds it). Several tasks may wait."""
        if self._waiting:
            await self._done.wait()
            if self._result is None:
                raise StreamUsageError("the task that waited for this process failed")
            return self._result
        self._waiting = True
        try:
            answer = await self.channel.call(WAIT_METHOD, encode_process_ref(self.id), timeout=None)
            report = decode_exit(answer)
            self._result = self._make_result(report)
        finally:
            self._done.set()
        return self._result

    def _make_result(
        self, report: ExitReport, stdout: bytes = b"", stderr: bytes = b""
    ) -> ProcessResult:
        return ProcessResult(
            self.command, report.exit_status, report.exit_signal, stdout, stderr, report.timed_out
        )

    async def aclose(self) -> None:
        """Close the streams; if :meth:`wait` has not returned, the worker kills the
        process group (SIGTERM, 2 s, SIGKILL)."""
        with trio.CancelScope(shield=True):
            if self._result is None:
                await reset_byte_stream(self._stream, "cancelled", "the process was abandoned")
                if self._stderr is not None:
                    await reset_byte_stream(self._stderr, "cancelled", "the process was abandoned")
            else:
                await self._stream.aclose()
                if self._stderr is not None:
                    await self._stderr.aclose()

    async def __aenter__(self) -> RemoteProcess:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ProcessStarter:
    """What :func:`create_process` returns: ``await`` it for the :class:`RemoteProcess`, or
    use it as ``async with`` (the process is closed at the end of the block)."""

    def __init__(self, channel: Channel, request: ExecRequest, timeout: float | None) -> None:
        self._channel = channel
        self._request = request
        self._timeout = timeout
        self._process: RemoteProcess | None = None

    async def start(self) -> RemoteProcess:
        channel, request = self._channel, self._request
        payload = encode_exec_request(request)
        try:
            stream = await channel.open_byte_stream(EXEC_METHOD, payload, timeout=self._timeout)
        except RemoteCallError as exc:
            mapped = exec_error(exc)
            if mapped is exc:
                raise
            raise mapped from None
        stderr = None
        if request.stderr == "stream":
            try:
                stderr = await channel.open_byte_stream(
                    STDERR_METHOD, encode_process_ref(stream.correlation_id), timeout=self._timeout
                )
                await stderr.send_eof()  # nothing flows to the worker on it
            except BaseException:
                with trio.CancelScope(shield=True):
                    await reset_byte_stream(stream, "cancelled", "the process was abandoned")
                raise
        return RemoteProcess(channel, request, stream, stderr)

    def __await__(self) -> Generator[Any, None, RemoteProcess]:
        return self.start().__await__()

    async def __aenter__(self) -> RemoteProcess:
        self._process = await self.start()
        return self._process

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            await self._process.aclose()


def create_process(
    channel: Channel,
    command: Command,
    *,
    env: Mapping[str, str] | None = None,
    env_mode: Literal["merge", "replace"] = "merge",
    cwd: str | None = None,
    timeout: float | None = None,
    stderr: StderrMode | None = None,
    pty: tuple[int, int] | None = None,
    workspace: str | None = None,
    open_timeout: float | None = CALL_TIMEOUT,
) -> ProcessStarter:
    """Start ``command`` on the worker: ``async with create_process(ch, cmd) as proc`` or
    ``proc = await create_process(ch, cmd)``. It is running once this returns; a failure
    to start raises :class:`CommandNotFound`, :class:`ExecFailed` (``reason``
    ``not_executable``, ``bad_cwd``, ``spawn_failed``), :class:`RemoteCallError`
    (``permission_denied``: not the owner; ``resource_exhausted``: the channel runs
    :data:`~leapcore.proto.limits.EXEC_MAX_PROCESSES` processes),
    :class:`WorkspaceError` (``workspace_not_found``: ``workspace`` names no workspace of
    the worker) or :class:`DeadlineExceeded` (no answer within ``open_timeout``).
    ``workspace``: run in that workspace (:meth:`Channel.workspace`), ``cwd`` (if
    relative) taken from it."""
    request = exec_request(
        command,
        env=env,
        env_mode=env_mode,
        cwd=cwd,
        timeout=timeout,
        stderr=stderr,
        pty=pty,
        workspace=workspace,
    )
    return ProcessStarter(channel, request, open_timeout)


async def _feed(proc: RemoteProcess, stdin: StdinSource) -> None:
    try:
        if isinstance(stdin, trio.abc.ReceiveStream):
            while data := await stdin.receive_some(EXEC_READ_SIZE):
                await proc.stdin.send_all(data)
        elif stdin is not None:
            await proc.stdin.send_all(stdin)
        await proc.stdin.send_eof()
    except trio.BrokenResourceError:
        pass  # the process is over and the worker closed its stdin: like EPIPE, ignored


async def _collect(
    output: _Output, into: bytearray, limit: int, over: list[str], name: str, stop: trio.CancelScope
) -> None:
    while data := await output.receive_some():
        if len(into) + len(data) > limit:
            into += data[: limit - len(into)]
            over.append(name)
            stop.cancel()  # the other output may never end: the process is killed
            return
        into += data


async def run(
    channel: Channel,
    command: Command,
    *,
    stdin: StdinSource = None,
    env: Mapping[str, str] | None = None,
    env_mode: Literal["merge", "replace"] = "merge",
    cwd: str | None = None,
    timeout: float | None = None,
    check: bool = False,
    stderr: StderrMode | None = None,
    pty: tuple[int, int] | None = None,
    max_output: int = EXEC_RUN_MAX_OUTPUT,
    workspace: str | None = None,
    open_timeout: float | None = CALL_TIMEOUT,
) -> ProcessResult:
    """Run ``command`` on the worker to its end and return the :class:`ProcessResult`.

    ``stdin``: bytes (or a :class:`trio.abc.ReceiveStream`) fed to the process, then EOF;
    None: EOF at once. Up to ``max_output`` bytes of stdout, and of stderr, are kept
    (default :data:`~leapcore.proto.limits.EXEC_RUN_MAX_OUTPUT`, 64 MiB): one byte more
    kills the process and raises :class:`ProcessOutputTooLarge` (``result``: the first
    ``max_output`` bytes, no exit status). A ``timeout`` that passes kills the process
    group and raises :class:`ProcessTimedOut` (``result``: the output until then), with
    or without ``check``. ``check=True`` raises :class:`ProcessFailed` (``result``) for a
    non-zero exit status or a signal. Starting fails as :func:`create_process` says."""
    if type(max_output) is not int or max_output < 0:
        raise StreamUsageError(f"max_output must be an integer >= 0, got {max_output!r}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise InvalidMessage("timeout must be a number of seconds > 0")
    out, err = bytearray(), bytearray()
    over: list[str] = []
    starter = create_process(
        channel,
        command,
        env=env,
        env_mode=env_mode,
        cwd=cwd,
        timeout=timeout,
        stderr=stderr,
        pty=pty,
        workspace=workspace,
        open_timeout=open_timeout,
    )
    async with starter as proc, trio.open_nursery() as nursery:
        nursery.start_soon(_feed, proc, stdin)
        async with trio.open_nursery() as outputs:
            stop = outputs.cancel_scope
            outputs.start_soon(_collect, proc.stdout, out, max_output, over, "stdout", stop)
            outputs.start_soon(_collect, proc.stderr, err, max_output, over, "stderr", stop)
        if over:
            nursery.cancel_scope.cancel()
        else:
            result = await proc.wait()
            nursery.cancel_scope.cancel()
    if over:
        partial = ProcessResult(proc.command, None, None, bytes(out), bytes(err))
        raise ProcessOutputTooLarge(
            f"the process wrote more than {max_output} bytes to {over[0]}; it was killed",
            partial,
        )
    result = attrs.evolve(result, stdout=bytes(out), stderr=bytes(err))
    if result.timed_out:
        raise ProcessTimedOut(f"{_name(result)} timed out after {timeout:g}s", result)
    if check and not result.ok:
        raise ProcessFailed(f"{_name(result)} {_how(result)}", result)
    return result


def _name(result: ProcessResult) -> str:
    command = result.command
    return repr(command) if isinstance(command, str) else repr(command[0])


def _how(result: ProcessResult) -> str:
    if result.exit_signal is not None:
        try:
            name = signal_module.Signals(result.exit_signal).name
        except ValueError:
            name = f"signal {result.exit_signal}"
        return f"was killed by {name}"
    return f"exited with status {result.exit_status}"
