"""``leapcore remote exec --worker W [options] -- CMD [ARG...]``: run a command on a worker,
like ``ssh host cmd``.

The command runs as an argv (no shell: what you type is what runs) unless ``--shell``,
which joins the arguments with spaces and runs them with ``/bin/sh -c`` on the worker
(as ssh does). Its stdout and stderr are copied to the local ones as they come; local
stdin is forwarded (then EOF) unless ``-n`` is given or stdin is a terminal, in which case
the command gets EOF at once.

``-t`` runs the command on a pseudo-terminal on the worker, of the local terminal's size
(80x24 when stdin is not one), with the local ``TERM`` unless ``--env TERM=...``: its
output (stderr included: a terminal has one output) comes on stdout. When stdin is a
terminal, it is put in raw mode and joined to the remote one: keys are typed there
(Ctrl-C included), window-size changes are forwarded, and ``~.`` after Enter closes the
connection (the command is killed; exit 255), as ``ssh -t`` does. Otherwise stdin is
forwarded as without ``-t`` (like ``ssh -tt``).

Exit status: the command's own (0 .. 255), or 128 + N when signal N killed it; 255 when
``leapcore`` itself failed (usage, hub, channel, a command that could not be started:
``error: ...`` on stderr says which, with the failure's code), as ssh does. A command
that exits 255 looks the same: a script that must tell them apart reads stderr, whose
last line is ``error: ...`` only for a failure of leapcore. Ctrl-C (SIGINT) or SIGTERM
ends the command: the channel closes and the worker kills the process group (exit 130 /
143).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

import trio

from leapcore.errors import ConfigError, KeyMismatch, LeapcoreError
from leapcore.peer.hubsession import HubSession
from leapcore.peer.process import ProcessResult, RemoteProcess, create_process
from leapcore.proto.exec_spec import DEFAULT_COLS, DEFAULT_ROWS, check_env

from .common import Parser
from .localtty import bridge, local_size, raw_terminal, write_all
from .workspace import workspace_flag

#: The exit status of a failure of leapcore itself (ssh's choice).
EXIT_EXEC_FAILURE: Final = 255
#: Bytes read from local stdin at once.
STDIN_READ: Final = 256 * 1024


class ExecParser(Parser):
    """``remote exec``'s parser: a usage error exits 255 (not 2: that is the command's)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_EXEC_FAILURE)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:  # here, not in the top-level parser (which would exit 2)
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def exit_status(exit_code: int | None, exit_signal: int | None) -> int:
    """The local exit status for a remote result: its status, or 128 + the signal."""
    if exit_signal is not None:
        return 128 + exit_signal
    assert exit_code is not None
    return exit_code


def parse_env(
    pairs: Sequence[str], parser_error: Callable[[str], NoReturn]
) -> dict[str, str] | None:
    """``--env NAME=VALUE`` flags as an environment (checked as the worker would), or
    ``None`` when there are none; a bad one is a usage error."""
    if not pairs:
        return None
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            parser_error(f"--env takes NAME=VALUE, got {pair!r}")
        env[name] = value
    try:
        return check_env(env)
    except LeapcoreError as exc:
        parser_error(f"--env: {exc.message}")


def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


async def _read_stdin() -> bytes:
    """One read of local stdin in a thread (a pipe, a file or a socket; a cancelled read is
    abandoned: the process is ending)."""
    try:
        data: bytes = await trio.to_thread.run_sync(os.read, 0, STDIN_READ, abandon_on_cancel=True)
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.EINVAL):
            return b""  # stdin closed
        raise
    return data


async def _copy_out(stream: trio.abc.ReceiveStream, fd: int, broken: list[int]) -> None:
    while data := await stream.receive_some():
        try:
            await trio.to_thread.run_sync(write_all, fd, data)
        except BrokenPipeError:
            # The local reader went away (`| head`): end, as ssh does when SIGPIPE kills
            # it; the channel closes and the worker kills the command.
            broken.append(fd)
            raise


async def _forward_stdin(proc: RemoteProcess, forward: bool) -> None:
    try:
        if forward:
            while data := await _read_stdin():
                await proc.stdin.send_all(data)
        await proc.stdin.send_eof()
    except trio.BrokenResourceError:
        pass  # the command is over


async def _pipes(proc: RemoteProcess, forward: bool, broken: list[int]) -> ProcessResult:
    """Local stdin to the process (if ``forward``), its stdout and stderr to the local
    ones, until it exited; its result."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_forward_stdin, proc, forward)
        async with trio.open_nursery() as outputs:
            outputs.start_soon(_copy_out, proc.stdout, 1, broken)
            outputs.start_soon(_copy_out, proc.stderr, 2, broken)
        result = await proc.wait()
        nursery.cancel_scope.cancel()
    return result


def _flags(
    p: argparse.ArgumentParser,
) -> None:
    p.add_argument("--shell", action="store_true", help="run the words with /bin/sh -c")
    p.add_argument(
        "-t",
        dest="tty",
        action="store_true",
        help="run the command on a terminal (PTY) on the worker; a local terminal is "
        "joined to it in raw mode (~. after Enter disconnects)",
    )
    p.add_argument(
        "-n",
        dest="no_stdin",
        action="store_true",
        help="do not read local stdin (the command gets EOF at once)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an environment variable for the command (repeatable; laid over the "
        "worker's environment)",
    )
    p.add_argument("--cwd", metavar="DIR", help="run the command in DIR on the worker")
    workspace_flag(p)
    p.add_argument(
        "--command-timeout",
        type=float,
        metavar="SECONDS",
        help="kill the command's process group after this long (exit 128+15 or 128+9)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]")


def run_exec(args: argparse.Namespace) -> int:
    from .remote import _resolved, _timeout, _with_session, worker_ref

    words: list[str] = list(args.command)
    if words[:1] == ["--"]:
        words = words[1:]
    if not words:
        args.parser_error("no command given (leapcore remote exec --worker W -- CMD [ARG...])")
    command: str | list[str] = " ".join(words) if args.shell else words
    env = parse_env(args.env, args.parser_error)
    limit = args.command_timeout
    if limit is not None and not 0 < limit <= 30 * 86400:
        args.parser_error("--command-timeout must be more than 0 and at most 30 days")
    local_tty = _stdin_is_terminal()
    forward = not args.no_stdin and not local_tty
    interactive = args.tty and local_tty and not args.no_stdin
    pty = None
    if args.tty:
        pty = local_size(0) or (DEFAULT_COLS, DEFAULT_ROWS)
        if os.environ.get("TERM") and not (env and "TERM" in env):
            env = {**(env or {}), "TERM": os.environ["TERM"]}
    detached: list[bool] = []
    ref = worker_ref(args)
    timeout = _timeout(args)
    stopped: list[int] = []
    broken: list[int] = []

    async def stop_on_signal(scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                stopped.append(signum)
                scope.cancel()
                return

    async def body(session: HubSession) -> int:
        async with trio.open_nursery() as watcher:
            watcher.start_soon(stop_on_signal, watcher.cancel_scope)
            worker_id = await _resolved(session, ref)
            async with session.open_channel(worker_id, timeout=timeout) as channel:
                starter = create_process(
                    channel,
                    command,
                    env=env,
                    cwd=args.cwd,
                    timeout=limit,
                    pty=pty,
                    workspace=args.workspace,
                    open_timeout=timeout,
                )
                async with starter as proc:
                    result = None
                    if interactive:
                        with raw_terminal(0):
                            if await bridge(proc.stdout, proc.stdin, proc.resize):
                                detached.append(True)  # leaving kills the command
                            else:
                                result = await proc.wait()
                    else:
                        result = await _pipes(proc, forward, broken)
            watcher.cancel_scope.cancel()
        if stopped:
            return 128 + stopped[0]
        if result is None:  # ~.
            return EXIT_EXEC_FAILURE
        if result.timed_out:
            print(f"error: the command timed out after {limit:g}s", file=sys.stderr)
        return exit_status(result.exit_status, result.exit_signal)

    try:
        status = _with_session(args, body, pins=True)
        if detached:
            print("\r\nconnection closed (~.); the command was killed", file=sys.stderr)
        return status
    except BrokenPipeError:
        if broken:
            return 128 + signal.SIGPIPE
        raise
    except KeyMismatch as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        print(
            f"pinned fingerprint {exc.expected}, presented fingerprint {exc.actual}",
            file=sys.stderr,
        )
        return EXIT_EXEC_FAILURE
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_EXEC_FAILURE
    except LeapcoreError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_EXEC_FAILURE


def add_verbs(
    remote_sub: Any,
    session_flags: Callable[[argparse.ArgumentParser], None],
    timeout_flag: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``remote exec`` under ``remote_sub``."""
    p = remote_sub.add_parser(
        "exec",
        help="run a command on a worker (like ssh host cmd)",
        description="Run CMD on the worker, end-to-end encrypted: its stdout and stderr are "
        "copied here as they come, local stdin is forwarded (not with -n or from a "
        "terminal), and this exits with its exit status (128+N for signal N; 255 when "
        "leapcore itself failed).",
    )
    p.__class__ = ExecParser
    session_flags(p)
    timeout_flag(p)
    _flags(p)
    p.set_defaults(handler=run_exec, parser_error=p.error)
