"""Remote exec's wire payloads (sans-IO: no processes, no files, no clock).

**The ``exec`` request** (:func:`encode_exec_request`, :func:`decode_exec_request`) is the
payload of the BYTES_OPEN of the worker's ``exec`` method, a UTF-8 JSON object:

* exactly one of ``"argv"`` (a non-empty list of strings: run as is, the first looked up
  in the worker's ``PATH``) and ``"shell"`` (a string: run by ``/bin/sh -c``);
* ``"env"`` (optional): an object of strings. Names are 1 .. 1024 characters without
  ``=`` or NUL; values have no NUL. ``"env_mode"``: ``"merge"`` (the default: laid over the
  worker's own environment) or ``"replace"`` (the process gets exactly ``env``);
* ``"cwd"`` (optional): the directory to run in (default: the worker's own);
* ``"workspace"`` (optional): the id of one of the worker's workspaces
  (:mod:`leapcore.proto.workspace_spec`, :func:`check_workspace_ref`): the process runs in
  it, ``cwd`` (if given and relative) taken from the workspace's directory; an unknown id
  is refused ``workspace_not_found``;
* ``"timeout"`` (optional): seconds, a number > 0 and at most :data:`MAX_TIMEOUT`; the
  worker kills the process group once it passes;
* ``"stderr"`` (optional): ``"stream"`` (the default: carried by an ``exec.stderr`` byte
  stream the opener opens), ``"stdout"`` (merged into stdout) or ``"discard"``;
* ``"pty"`` (optional): ``{"cols": C, "rows": R}``, a terminal size (:func:`check_size`):
  the process runs on a new pseudo-terminal of that size (``ssh -t``) instead of pipes.
  Its stdin, stdout and stderr are the terminal, so ``"stderr"`` must then be
  ``"stdout"`` (its default with a ``pty``); ``TERM`` is ``xterm-256color`` unless ``env``
  names one. ``exec.resize`` ``{"process": ID, "cols": C, "rows": R}`` changes the size.

Anything else (an unknown field, a wrong type, a NUL byte, ``=`` in a name) is
:class:`~leapcore.errors.InvalidMessage`, which the worker answers with the code
``invalid_argument``.

**The process reference** ``{"process": ID}`` (:func:`encode_process_ref`,
:func:`decode_process_ref`) names a running ``exec`` by the correlation id of its byte
stream, for ``exec.stderr``, ``exec.wait`` and ``exec.signal`` (which adds ``"signal"``, a
signal number 1 .. 64). ``exec.wait`` answers :func:`encode_exit` /
:func:`decode_exit`: ``{"exit_status": int | null, "exit_signal": int | null,
"timed_out": bool}``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from ..errors import InvalidMessage
from .limits import PTY_MAX_CELLS, PTY_MAX_COLS, PTY_MAX_ROWS

__all__ = [
    "DEFAULT_COLS",
    "DEFAULT_ROWS",
    "EXEC_FAILURES",
    "EXEC_METHOD",
    "MAX_ARGS",
    "MAX_ENV",
    "MAX_NAME",
    "MAX_TIMEOUT",
    "RESIZE_METHOD",
    "SIGNAL_METHOD",
    "STDERR_METHOD",
    "STDERR_MODES",
    "WAIT_METHOD",
    "WORKSPACE_ID",
    "ExecRequest",
    "ExitReport",
    "check_env",
    "check_int",
    "check_size",
    "check_workspace_ref",
    "command_fields",
    "decode_exec_request",
    "decode_exit",
    "decode_process_ref",
    "decode_resize",
    "decode_signal_request",
    "encode_exec_request",
    "encode_exit",
    "encode_process_ref",
    "encode_resize",
    "encode_signal_request",
    "optional_workspace",
]

#: The worker's byte-stream method that runs a process (stdin in, stdout out).
EXEC_METHOD: Final = "exec"
#: The byte stream carrying a process's stderr, opened after ``exec`` is accepted.
STDERR_METHOD: Final = "exec.stderr"
#: The RPC answered once a process has exited and its output is all sent.
WAIT_METHOD: Final = "exec.wait"
#: The RPC that sends a process a signal.
SIGNAL_METHOD: Final = "exec.signal"
#: The RPC that changes the size of a process's terminal (one started with a ``pty``).
RESIZE_METHOD: Final = "exec.resize"
#: The default terminal size (a process's ``pty``, a terminal session).
DEFAULT_COLS: Final = 80
DEFAULT_ROWS: Final = 24
#: Arguments of one ``argv``, and variables of one ``env``, at most.
MAX_ARGS: Final = 4096
MAX_ENV: Final = 4096
#: Characters of an environment variable's name, at most.
MAX_NAME: Final = 1024
#: The longest ``timeout`` accepted, in seconds (30 days).
MAX_TIMEOUT: Final = 30 * 86400.0
#: Where a process's stderr goes.
STDERR_MODES: Final = ("stream", "stdout", "discard")
#: Why a process could not be started (the error code refusing an ``exec`` open).
EXEC_FAILURES: Final[dict[str, str]] = {
    "command_not_found": "command not found",
    "not_executable": "permission denied",
    "bad_cwd": "cannot run in that directory",
    "spawn_failed": "cannot start the process",
}

_FIELDS: Final = frozenset(
    {"argv", "shell", "env", "env_mode", "cwd", "workspace", "timeout", "stderr", "pty"}
)
#: A workspace id: what :func:`check_workspace_ref` accepts.
WORKSPACE_ID: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


#: How ``env`` meets the worker's environment.
EnvMode = Literal["merge", "replace"]


@attrs.frozen
class ExecRequest:
    """What to run: ``argv`` (already split) or ``shell`` (a string for ``/bin/sh -c``)."""

    argv: tuple[str, ...] | None = None
    shell: str | None = None
    env: Mapping[str, str] | None = None
    env_mode: Literal["merge", "replace"] = "merge"
    cwd: str | None = None
    timeout: float | None = None
    stderr: Literal["stream", "stdout", "discard"] = "stream"
    #: ``(cols, rows)`` of the terminal the process runs on; None: pipes.
    pty: tuple[int, int] | None = None
    #: The id of the workspace to run in (``cwd`` then relative to it); None: no workspace.
    workspace: str | None = None

    @property
    def command(self) -> list[str]:
        """The argv to start: ``argv`` itself, or ``["/bin/sh", "-c", shell]``."""
        if self.argv is not None:
            return list(self.argv)
        assert self.shell is not None
        return ["/bin/sh", "-c", self.shell]

    @property
    def display(self) -> str:
        """The command for a log line (the program's name only: arguments may be secret)."""
        return self.argv[0] if self.argv is not None else "/bin/sh -c ..."


@attrs.frozen
class ExitReport:
    """How a process ended: ``exit_status`` (0 .. 255) or ``exit_signal`` (the number of
    the signal that killed it); ``timed_out`` if the worker killed it for its timeout."""

    exit_status: int | None
    exit_signal: int | None
    timed_out: bool = False


def check_int(value: Any, what: str) -> int:
    """``value`` if it is an integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(f"{what} must be an integer, got {value!r}")
    return value


def check_size(cols: Any, rows: Any) -> tuple[int, int]:
    """``(cols, rows)`` if they are a terminal size the worker accepts: ``cols`` 1 ..
    :data:`~leapcore.proto.limits.PTY_MAX_COLS`, ``rows`` 1 ..
    :data:`~leapcore.proto.limits.PTY_MAX_ROWS`, at most
    :data:`~leapcore.proto.limits.PTY_MAX_CELLS` cells."""
    cols, rows = check_int(cols, "cols"), check_int(rows, "rows")
    if not 1 <= cols <= PTY_MAX_COLS:
        raise InvalidMessage(f"cols must be 1..{PTY_MAX_COLS}, got {cols}")
    if not 1 <= rows <= PTY_MAX_ROWS:
        raise InvalidMessage(f"rows must be 1..{PTY_MAX_ROWS}, got {rows}")
    if cols * rows > PTY_MAX_CELLS:
        raise InvalidMessage(f"cols x rows must be at most {PTY_MAX_CELLS}, got {cols}x{rows}")
    return cols, rows


def _check_pty(value: Any) -> tuple[int, int]:
    if not isinstance(value, Mapping) or set(value) != {"cols", "rows"}:
        raise InvalidMessage('pty must be {"cols": C, "rows": R}')
    return check_size(value["cols"], value["rows"])


def nul_free(text: str, what: str) -> None:
    if "\0" in text:
        raise InvalidMessage(f"{what} contains a NUL byte")


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as a plain dict, checked: string names of 1 .. :data:`MAX_NAME` characters
    without ``=`` or NUL, string values without NUL, at most :data:`MAX_ENV` entries."""
    if not isinstance(env, Mapping):
        raise InvalidMessage(f"env must be an object of strings, got {type(env).__name__}")
    if len(env) > MAX_ENV:
        raise InvalidMessage(f"env has {len(env)} variables; at most {MAX_ENV}")
    out: dict[str, str] = {}
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidMessage("env names and values must be strings")
        if not 1 <= len(name) <= MAX_NAME:
            raise InvalidMessage(f"an env name must be 1..{MAX_NAME} characters")
        if "=" in name:
            raise InvalidMessage(f"env name {name[:64]!r} contains '='")
        nul_free(name, f"env name {name[:64]!r}")
        nul_free(value, f"the value of env {name[:64]!r}")
        out[name] = value
    return out


def check_argv(argv: Any) -> tuple[str, ...]:
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        raise InvalidMessage("argv must be a list of strings")
    if not argv:
        raise InvalidMessage("argv must not be empty")
    if len(argv) > MAX_ARGS:
        raise InvalidMessage(f"argv has {len(argv)} arguments; at most {MAX_ARGS}")
    for index, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise InvalidMessage(f"argv[{index}] must be a string, got {type(arg).__name__}")
        nul_free(arg, f"argv[{index}]")
    if not argv[0]:
        raise InvalidMessage("argv[0] must not be empty")
    return tuple(argv)


def check_command(
    data: Mapping[str, Any], *, required: bool = True
) -> tuple[
    tuple[str, ...] | None,
    str | None,
    dict[str, str] | None,
    Literal["merge", "replace"],
    str | None,
]:
    """The command fields every process-starting payload shares (``exec``, ``pty.spawn``):
    ``(argv, shell, env, env_mode, cwd)``, checked. ``required``: exactly one of ``argv``
    and ``shell``; otherwise at most one (neither: the caller's default command)."""
    if "argv" in data and "shell" in data:
        raise InvalidMessage(
            "give exactly one of argv and shell"
            if required
            else "give at most one of argv and shell"
        )
    if required and "argv" not in data and "shell" not in data:
        raise InvalidMessage("give exactly one of argv and shell")
    argv = check_argv(data["argv"]) if "argv" in data else None
    shell = data.get("shell")
    if "shell" in data:
        if not isinstance(shell, str) or not shell:
            raise InvalidMessage("shell must be a non-empty string")
        nul_free(shell, "shell")
    env = None if data.get("env") is None else check_env(data["env"])
    env_mode = data.get("env_mode", "merge")
    if env_mode not in ("merge", "replace"):
        raise InvalidMessage(f"env_mode must be 'merge' or 'replace', got {env_mode!r}")
    cwd = data.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd:
            raise InvalidMessage("cwd must be a non-empty string")
        nul_free(cwd, "cwd")
    mode: EnvMode = "merge" if env_mode == "merge" else "replace"
    return argv, shell, env, mode, cwd


def check_workspace_ref(value: Any) -> str:
    """``value`` if it is a workspace id: 1 .. 128 of ``A-Z a-z 0-9 . _ -``, not starting
    with ``.`` or ``-`` (:class:`InvalidMessage` otherwise)."""
    if not isinstance(value, str) or not WORKSPACE_ID.fullmatch(value):
        raise InvalidMessage(
            "workspace must be a workspace id (1..128 of A-Z a-z 0-9 . _ -, not starting "
            "with . or -)"
        )
    return value


def optional_workspace(data: Mapping[str, Any]) -> str | None:
    """The ``"workspace"`` field of a process-starting payload, checked (None if absent)."""
    value = data.get("workspace")
    return None if value is None else check_workspace_ref(value)


def _check(data: Mapping[str, Any]) -> ExecRequest:
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InvalidMessage(f"unknown field(s): {', '.join(unknown)}")
    argv, shell, env, env_mode, cwd = check_command(data)
    timeout = data.get("timeout")
    if timeout is not None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_TIMEOUT
        ):
            raise InvalidMessage(f"timeout must be seconds in (0, {MAX_TIMEOUT:g}]")
        timeout = float(timeout)
    pty = None if data.get("pty") is None else _check_pty(data["pty"])
    stderr = data.get("stderr", "stream" if pty is None else "stdout")
    if stderr not in STDERR_MODES:
        raise InvalidMessage(f"stderr must be one of {', '.join(STDERR_MODES)}")
    if pty is not None and stderr != "stdout":
        raise InvalidMessage(
            "a process on a pty writes its stderr to the terminal: stderr must be 'stdout'"
        )
    workspace = optional_workspace(data)
    return ExecRequest(argv, shell, env, env_mode, cwd, timeout, stderr, pty, workspace)


def json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise InvalidMessage(f"the {what} payload must be a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"the {what} payload must be a JSON object")
    return data


def command_fields(
    argv: Sequence[str] | None,
    shell: str | None,
    env: Mapping[str, str] | None,
    env_mode: str,
    cwd: str | None,
    workspace: str | None = None,
) -> dict[str, Any]:
    """The command fields of a payload (the reverse of :func:`check_command`), defaults
    left out."""
    data: dict[str, Any] = {}
    if argv is not None:
        data["argv"] = list(argv)
    if shell is not None:
        data["shell"] = shell
    if env is not None:
        data["env"] = dict(env)
    if env_mode != "merge":
        data["env_mode"] = env_mode
    if cwd is not None:
        data["cwd"] = cwd
    if workspace is not None:
        data["workspace"] = workspace
    return data


def encode_exec_request(request: ExecRequest) -> bytes:
    """``request`` as the ``exec`` payload (checked as the worker will check it)."""
    data = command_fields(
        request.argv, request.shell, request.env, request.env_mode, request.cwd, request.workspace
    )
    if request.timeout is not None:
        data["timeout"] = request.timeout
    if request.pty is not None:
        data["pty"] = {"cols": request.pty[0], "rows": request.pty[1]}
    if request.stderr != ("stream" if request.pty is None else "stdout"):
        data["stderr"] = request.stderr  # not the default (with a pty: refused below)
    _check(data)
    return json.dumps(data, separators=(",", ":")).encode()


def decode_exec_request(payload: bytes) -> ExecRequest:
    """The opener's ``exec`` payload, strictly (see the module docstring)."""
    return _check(json_object(payload, "exec"))


def encode_process_ref(process: int) -> bytes:
    return json.dumps({"process": process}).encode()


def _process_id(data: Mapping[str, Any]) -> int:
    process = data.get("process")
    if isinstance(process, bool) or not isinstance(process, int) or process < 1:
        raise InvalidMessage("process must be the correlation id of an exec stream")
    return process


def decode_process_ref(payload: bytes) -> int:
    data = json_object(payload, "process reference")
    if set(data) != {"process"}:
        raise InvalidMessage('the payload must be {"process": ID}')
    return _process_id(data)


def encode_signal_request(process: int, signum: int) -> bytes:
    return json.dumps({"process": process, "signal": signum}).encode()


def decode_signal_request(payload: bytes) -> tuple[int, int]:
    data = json_object(payload, "exec.signal")
    if set(data) != {"process", "signal"}:
        raise InvalidMessage('the payload must be {"process": ID, "signal": N}')
    signum = data["signal"]
    if isinstance(signum, bool) or not isinstance(signum, int) or not 1 <= signum <= 64:
        raise InvalidMessage("signal must be a signal number 1..64")
    return _process_id(data), signum


def encode_resize(process: int, cols: int, rows: int) -> bytes:
    cols, rows = check_size(cols, rows)
    return json.dumps({"process": process, "cols": cols, "rows": rows}).encode()


def decode_resize(payload: bytes) -> tuple[int, int, int]:
    """``(process, cols, rows)`` of an ``exec.resize`` payload."""
    data = json_object(payload, "exec.resize")
    if set(data) != {"process", "cols", "rows"}:
        raise InvalidMessage('the payload must be {"process": ID, "cols": C, "rows": R}')
    cols, rows = check_size(data["cols"], data["rows"])
    return _process_id(data), cols, rows


def encode_exit(report: ExitReport) -> bytes:
    return json.dumps(attrs.asdict(report), sort_keys=True).encode()


def decode_exit(payload: bytes) -> ExitReport:
    data = json_object(payload, "exec.wait answer")
    status, signum, timed_out = (
        data.get("exit_status"),
        data.get("exit_signal"),
        data.get("timed_out", False),
    )
    for value in (status, signum):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidMessage("exit_status and exit_signal must be integers or null")
    if (status is None) == (signum is None) or not isinstance(timed_out, bool):
        raise InvalidMessage("an exit report has exactly one of exit_status and exit_signal")
    return ExitReport(status, signum, timed_out)
