"""Starting processes for the worker's ``exec`` and ``pty`` services: the environment a
process gets, why a start failed, process groups, and processes on a pseudo-terminal.

A process always starts in a session (and process group) of its own, so that its whole
group can be signalled. One on a terminal (:func:`open_on_terminal`) gets a new
``os.openpty`` pair: the slave as its stdin, stdout, stderr and controlling terminal
(``TIOCSCTTY`` in the child), the master as a :class:`trio.lowlevel.FdStream` for the
caller (no threads). Reading the master raises :class:`trio.BrokenResourceError` (EIO)
once every holder of the slave has closed it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import termios
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Final, Literal

import trio

from ..errors import ServiceError
from ..proto.exec_spec import EXEC_FAILURES

__all__ = [
    "DEFAULT_TERM",
    "WorkspaceDir",
    "live_dirs",
    "open_on_terminal",
    "process_env",
    "set_terminal_size",
    "signal_group",
    "spawn_failure",
    "start_dir",
    "terminal_groups",
]

#: The terminal type a process on a terminal gets unless its ``env`` names one.
DEFAULT_TERM: Final = "xterm-256color"
#: Variables of the worker's environment a process on a terminal does not inherit (they
#: would override the terminal's size).
_SIZE_ENV: Final = ("COLUMNS", "LINES")


#: Where a process asked to run in workspace ``id`` at ``cwd`` starts (raises
#: :class:`~leapcore.errors.ServiceError` ``workspace_not_found``):
#: :meth:`leapcore.worker.workspaces.WorkspaceService.directory`.
WorkspaceDir = Callable[[str, str | None], Awaitable[str]]


async def start_dir(
    workspace_dir: WorkspaceDir | None, workspace: str | None, cwd: str | None
) -> str | None:
    """The directory a process starts in: ``cwd``, or (with ``workspace``) ``cwd`` taken
    from that workspace's directory. A workspace on a worker that keeps none is
    ``workspace_not_found``."""
    if workspace is None:
        return cwd
    if workspace_dir is None:
        raise ServiceError("workspace_not_found", "this worker keeps no workspaces")
    return await workspace_dir(workspace, cwd)


def live_dirs(cwds: Iterable[str | None]) -> list[str]:
    """The absolute directories among ``cwds`` (None: the worker's own, left out)."""
    return [os.path.abspath(cwd) for cwd in cwds if cwd is not None]


def spawn_failure(exc: OSError, program: str, cwd: str | None) -> tuple[str, str]:
    """The error code and message for a process that could not be started."""
    if cwd is not None and exc.filename == cwd:
        return "bad_cwd", f"cwd {cwd}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        return "command_not_found", f"{program}: {EXEC_FAILURES['command_not_found']}"
    if isinstance(exc, PermissionError) or exc.errno == errno.ENOEXEC:
        return "not_executable", f"{program}: {exc.strerror or EXEC_FAILURES['not_executable']}"
    return "spawn_failed", f"{program}: {exc.strerror or exc}"


def process_env(
    env: Mapping[str, str] | None,
    env_mode: Literal["merge", "replace"],
    *,
    terminal: bool,
) -> dict[str, str] | None:
    """The environment to start a process with (None: the worker's own). ``env`` is laid
    over the worker's environment, or replaces it. On a ``terminal``, ``TERM`` is
    :data:`DEFAULT_TERM` unless ``env`` names one (the worker's own ``TERM`` describes
    another terminal), and the worker's ``COLUMNS`` and ``LINES`` are dropped."""
    given = dict(env or {})
    if not terminal:
        if env is None:
            return None
        return given if env_mode == "replace" else {**os.environ, **given}
    if env_mode == "replace":
        out = given
    else:
        out = {k: v for k, v in os.environ.items() if k not in _SIZE_ENV}
        out.update(given)
    out["TERM"] = given.get("TERM", DEFAULT_TERM)
    return out


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to process group ``pgid``; False if it has no member left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials: signal what we may
        return True
    return True


def set_terminal_size(fd: int, cols: int, rows: int) -> None:
    """Set the size of the terminal ``fd`` (master or slave); its foreground process
    group gets SIGWINCH."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def terminal_groups(leader: int, master: int | None) -> set[int]:
    """The process groups to signal for a process on a terminal: the session leader's
    (``leader``, its pid) and the terminal's foreground one (while ``master`` is open)."""
    groups = {leader}
    if master is not None:
        with contextlib.suppress(OSError):
            groups.add(os.tcgetpgrp(master))
    return groups


def _take_terminal() -> None:  # pragma: no cover - runs in the child before exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def open_on_terminal(
    command: Sequence[str],
    *,
    cols: int,
    rows: int,
    env: Mapping[str, str] | None,
    cwd: str | None,
) -> tuple[trio.Process, trio.lowlevel.FdStream]:
    """Start ``command`` on a new pseudo-terminal of ``cols`` x ``rows``, in a session of
    its own; returns the process and the terminal's master. :class:`OSError` when it
    cannot start (see :func:`spawn_failure`); nothing is left open then."""
    master, slave = os.openpty()
    try:
        set_terminal_size(slave, cols, rows)
        proc = await trio.lowlevel.open_process(
            list(command),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_take_terminal,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return proc, trio.lowlevel.FdStream(master)
