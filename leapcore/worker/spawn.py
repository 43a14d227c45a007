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
import pwd
import resource
import shutil
import stat
import struct
import termios
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import trio

from ..errors import ServiceError
from ..proto.exec_spec import EXEC_FAILURES
from ..proto.worker_policy import DENIED_BY_POLICY, ExecRules, Program, program_in

__all__ = [
    "DEFAULT_TERM",
    "WorkspaceDir",
    "live_dirs",
    "locate_program",
    "no_exec_rules",
    "open_on_terminal",
    "plan_launch",
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


# -- the policy's part: which program, which limits, which user ------------------------------

#: ``exec`` settings -> (resource, what one unit of the setting is in the resource's unit).
_RLIMITS: Final = (
    ("max_cpu_seconds", resource.RLIMIT_CPU, 1),
    ("max_memory_mb", resource.RLIMIT_AS, 1024 * 1024),
    ("max_open_files", resource.RLIMIT_NOFILE, 1),
)


def no_exec_rules() -> ExecRules:
    """No ``[exec]`` rules: any program, no limits (a worker without a policy file)."""
    return _NO_RULES


_NO_RULES: Final = ExecRules()


def _executable(path: str) -> bool:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK)


def locate_program(argv0: str, env: Mapping[str, str] | None, cwd: str | None) -> Program:
    """The program ``argv0`` names, found as exec finds it: a name through the ``PATH`` of
    ``env`` (None: the worker's), a path from ``cwd``; with whether it lies in one of the
    worker's own ``PATH`` directories."""
    if "/" in argv0:
        path = os.path.join(cwd or os.getcwd(), argv0)
        found = path if _executable(path) else None
    else:
        search = os.pathsep.join(d or "." for d in os.get_exec_path(env))
        found = shutil.which(argv0, path=search)
    if found is None:
        return Program(argv0)
    found = os.path.normpath(os.path.abspath(found))
    return Program(argv0, found, os.path.realpath(found), program_in(os.get_exec_path(None), found))


def _limits(rules: ExecRules) -> list[tuple[int, int]]:
    return [
        (which, getattr(rules, setting) * unit)
        for setting, which, unit in _RLIMITS
        if getattr(rules, setting)
    ]


def _apply_limits(limits: Sequence[tuple[int, int]]) -> None:  # pragma: no cover - child
    for which, value in limits:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # lowering is always allowed, raising is not
        resource.setrlimit(which, (value, value))


def plan_launch(
    rules: ExecRules,
    command: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
) -> dict[str, Any]:
    """Check ``command`` against the worker's ``[exec]`` rules and return the extra
    keyword arguments to start it with (``executable``: the very file checked; ``env``;
    ``preexec_fn`` setting the resource limits; ``user``, ``group``, ``extra_groups`` for
    ``run_as_user``). Raises :class:`~leapcore.errors.ServiceError` ``denied_by_policy``
    before anything starts; ``spawn_failed`` when ``run_as_user`` names no user."""
    launch: dict[str, Any] = {"env": env}
    if rules.restricts:
        program = locate_program(command[0], env, cwd)
        refusal = rules.check(program)
        if refusal is not None:
            raise ServiceError(DENIED_BY_POLICY, refusal.message)
        if program.found is not None:
            launch["executable"] = program.found
    limits = _limits(rules)
    if limits:
        launch["preexec_fn"] = lambda: _apply_limits(limits)
    if rules.run_as_user is not None:
        try:
            user = pwd.getpwnam(rules.run_as_user)
        except KeyError:
            raise ServiceError(
                "spawn_failed", f"exec.run_as_user: no user {rules.run_as_user!r}"
            ) from None
        launch.update(
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=os.getgrouplist(user.pw_name, user.pw_gid),
        )
        base = dict(os.environ) if env is None else dict(env)
        base.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        launch["env"] = base
    return launch


async def open_on_terminal(
    command: Sequence[str],
    *,
    cols: int,
    rows: int,
    env: Mapping[str, str] | None,
    cwd: str | None,
    launch: Mapping[str, Any] | None = None,
) -> tuple[trio.Process, trio.lowlevel.FdStream]:
    """Start ``command`` on a new pseudo-terminal of ``cols`` x ``rows``, in a session of
    its own; returns the process and the terminal's master. ``launch``: what
    :func:`plan_launch` returned (it replaces ``env``). :class:`OSError` when it cannot
    start (see :func:`spawn_failure`); nothing is left open then."""
    options = {"env": env, **(launch or {})}
    limits = options.pop("preexec_fn", None)

    def preexec() -> None:  # pragma: no cover - runs in the child before exec
        _take_terminal()
        if limits is not None:
            limits()

    master, slave = os.openpty()
    try:
        set_terminal_size(slave, cols, rows)
        proc = await trio.lowlevel.open_process(
            list(command),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
            **options,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return proc, trio.lowlevel.FdStream(master)
