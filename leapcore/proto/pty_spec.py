"""Terminal sessions' wire payloads (sans-IO: no terminals, no processes, no clock).

Every payload is a UTF-8 JSON object; anything malformed (an unknown field, a wrong type,
a NUL byte, a size out of bounds) is :class:`~leapcore.errors.InvalidMessage`, which the
worker answers with the code ``invalid_argument``. A session is named by its ``"id"``, a
string of 1 .. 64 characters of ``[A-Za-z0-9_.-]`` the worker chose.

* ``pty.spawn`` (RPC) :func:`decode_spawn_request`: at most one of ``"argv"`` (a non-empty
  list of strings) and ``"shell"`` (a string for ``/bin/sh -c``; neither: the worker's
  login shell), ``"env"`` / ``"env_mode"`` / ``"cwd"`` / ``"workspace"`` as for ``exec``,
  ``"cols"`` and ``"rows"`` (default 80 x 24). Answer: the session's :class:`SessionInfo`.
* ``pty.resize`` (RPC) ``{"id", "cols", "rows"}``; answer ``{}``.
* ``pty.send`` (RPC) ``{"id", "data"}`` (text, sent as UTF-8) or ``{"id", "data_b64"}``
  (any bytes, base64), at most :data:`~leapcore.proto.limits.PTY_MAX_SEND` bytes;
  answer ``{}`` once written to the terminal.
* ``pty.capture`` (RPC) ``{"id", "scrollback"?: N, "ansi"?: bool}``: the rendered screen,
  :class:`Capture`.
* ``pty.list`` (RPC) ``{}``: ``{"sessions": [SessionInfo, ...]}``, oldest first.
* ``pty.kill`` (RPC) ``{"id"}``: ends the session and forgets it; answer its last
  :class:`SessionInfo`.
* ``pty.wait`` (RPC) ``{"id"}``: answered with the :class:`SessionInfo` once the session's
  process has exited.
* ``pty.attach`` (byte stream) ``{"id", "cols"?, "rows"?}``: a screen snapshot, then the
  live output; the opener's bytes are keys.

Sizes: ``cols`` 1 .. :data:`~leapcore.proto.limits.PTY_MAX_COLS`, ``rows`` 1 ..
:data:`~leapcore.proto.limits.PTY_MAX_ROWS`, and ``cols * rows`` at most
:data:`~leapcore.proto.limits.PTY_MAX_CELLS`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from ..errors import InvalidMessage
from .exec_spec import (
    DEFAULT_COLS,
    DEFAULT_ROWS,
    check_command,
    check_int,
    check_size,
    command_fields,
    json_object,
    optional_workspace,
)
from .limits import PTY_MAX_SEND, PTY_SCROLLBACK_LINES

__all__ = [
    "ATTACH_METHOD",
    "CAPTURE_METHOD",
    "DEFAULT_COLS",
    "DEFAULT_ROWS",
    "KILL_METHOD",
    "LIST_METHOD",
    "RESIZE_METHOD",
    "SEND_METHOD",
    "SPAWN_METHOD",
    "WAIT_METHOD",
    "AttachRequest",
    "Capture",
    "CaptureRequest",
    "SessionInfo",
    "SpawnRequest",
    "check_session_id",
    "check_size",
    "decode_attach_request",
    "decode_capture",
    "decode_capture_request",
    "decode_info",
    "decode_list",
    "decode_resize_request",
    "decode_send_request",
    "decode_session_ref",
    "decode_spawn_request",
    "encode_attach_request",
    "encode_capture",
    "encode_capture_request",
    "encode_info",
    "encode_list",
    "encode_resize_request",
    "encode_send_request",
    "encode_session_ref",
    "encode_spawn_request",
]

SPAWN_METHOD: Final = "pty.spawn"
RESIZE_METHOD: Final = "pty.resize"
SEND_METHOD: Final = "pty.send"
CAPTURE_METHOD: Final = "pty.capture"
LIST_METHOD: Final = "pty.list"
KILL_METHOD: Final = "pty.kill"
WAIT_METHOD: Final = "pty.wait"
#: The byte stream that shows a session's screen and output and carries keys to it.
ATTACH_METHOD: Final = "pty.attach"


_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SPAWN_FIELDS: Final = frozenset(
    {"argv", "shell", "env", "env_mode", "cwd", "workspace", "cols", "rows"}
)


def _only(data: Mapping[str, Any], allowed: frozenset[str] | set[str], what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidMessage(f"{what}: unknown field(s): {', '.join(unknown)}")


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def check_session_id(value: Any) -> str:
    """``value`` if it is a session id (1 .. 64 characters of ``[A-Za-z0-9_.-]``)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidMessage(f"a session id is 1..64 characters of [A-Za-z0-9_.-], got {value!r}")
    return value


# -- pty.spawn --------------------------------------------------------------------------


@attrs.frozen
class SpawnRequest:
    """What a session runs: ``argv``, a ``shell`` string, or (neither) the login shell."""

    argv: tuple[str, ...] | None = None
    shell: str | None = None
    env: Mapping[str, str] | None = None
    env_mode: Literal["merge", "replace"] = "merge"
    cwd: str | None = None
    cols: int = DEFAULT_COLS
    rows: int = DEFAULT_ROWS
    #: The id of the workspace to run in (``cwd`` then relative to it).
    workspace: str | None = None

    def command(self, login_shell: str) -> list[str]:
        """The argv to start (``login_shell`` when neither ``argv`` nor ``shell``)."""
        if self.argv is not None:
            return list(self.argv)
        if self.shell is not None:
            return ["/bin/sh", "-c", self.shell]
        return [login_shell]

    @property
    def display(self) -> str:
        """The command for listings and log lines (the program's name only)."""
        if self.argv is not None:
            return self.argv[0]
        return "/bin/sh -c ..." if self.shell is not None else "(login shell)"


def _check_spawn(data: Mapping[str, Any]) -> SpawnRequest:
    _only(data, _SPAWN_FIELDS, "pty.spawn")
    argv, shell, env, env_mode, cwd = check_command(data, required=False)
    cols, rows = check_size(data.get("cols", DEFAULT_COLS), data.get("rows", DEFAULT_ROWS))
    return SpawnRequest(argv, shell, env, env_mode, cwd, cols, rows, optional_workspace(data))


def encode_spawn_request(request: SpawnRequest) -> bytes:
    """``request`` as the ``pty.spawn`` payload (checked as the worker will check it)."""
    data = command_fields(
        request.argv, request.shell, request.env, request.env_mode, request.cwd, request.workspace
    )
    data["cols"], data["rows"] = request.cols, request.rows
    _check_spawn(data)
    return _dump(data)


def decode_spawn_request(payload: bytes) -> SpawnRequest:
    return _check_spawn(json_object(payload, "pty.spawn"))


# -- session references, resize, send ----------------------------------------------------


def encode_session_ref(session_id: str) -> bytes:
    return _dump({"id": check_session_id(session_id)})


def decode_session_ref(payload: bytes) -> str:
    data = json_object(payload, "session reference")
    _only(data, {"id"}, "session reference")
    return check_session_id(data.get("id"))


def encode_resize_request(session_id: str, cols: int, rows: int) -> bytes:
    cols, rows = check_size(cols, rows)
    return _dump({"id": check_session_id(session_id), "cols": cols, "rows": rows})


def decode_resize_request(payload: bytes) -> tuple[str, int, int]:
    data = json_object(payload, "pty.resize")
    _only(data, {"id", "cols", "rows"}, "pty.resize")
    session_id = check_session_id(data.get("id"))
    if "cols" not in data or "rows" not in data:
        raise InvalidMessage("pty.resize needs cols and rows")
    cols, rows = check_size(data["cols"], data["rows"])
    return session_id, cols, rows


def encode_send_request(session_id: str, data: bytes | str) -> bytes:
    """Text goes as ``"data"``, bytes as ``"data_b64"``."""
    body: dict[str, Any] = {"id": check_session_id(session_id)}
    size = len(data.encode()) if isinstance(data, str) else len(data)
    if size > PTY_MAX_SEND:
        raise InvalidMessage(f"at most {PTY_MAX_SEND} bytes of keys at once, got {size}")
    if isinstance(data, str):
        body["data"] = data
    else:
        body["data_b64"] = base64.b64encode(bytes(data)).decode("ascii")
    return _dump(body)


def decode_send_request(payload: bytes) -> tuple[str, bytes]:
    data = json_object(payload, "pty.send")
    _only(data, {"id", "data", "data_b64"}, "pty.send")
    session_id = check_session_id(data.get("id"))
    if ("data" in data) == ("data_b64" in data):
        raise InvalidMessage("give exactly one of data and data_b64")
    if "data" in data:
        if not isinstance(data["data"], str):
            raise InvalidMessage("data must be a string")
        keys = data["data"].encode("utf-8", "surrogatepass")
    else:
        if not isinstance(data["data_b64"], str):
            raise InvalidMessage("data_b64 must be a base64 string")
        try:
            keys = base64.b64decode(data["data_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessage("data_b64 is not valid base64") from None
    if len(keys) > PTY_MAX_SEND:
        raise InvalidMessage(f"at most {PTY_MAX_SEND} bytes of keys at once, got {len(keys)}")
    return session_id, keys


# -- pty.capture -----------------------------------------------------------------------


@attrs.frozen
class CaptureRequest:
    id: str
    scrollback: int = 0
    ansi: bool = False


def _check_capture_request(data: Mapping[str, Any]) -> CaptureRequest:
    _only(data, {"id", "scrollback", "ansi"}, "pty.capture")
    session_id = check_session_id(data.get("id"))
    scrollback = check_int(data.get("scrollback", 0), "scrollback")
    if not 0 <= scrollback <= PTY_SCROLLBACK_LINES:
        raise InvalidMessage(f"scrollback must be 0..{PTY_SCROLLBACK_LINES} lines")
    ansi = data.get("ansi", False)
    if not isinstance(ansi, bool):
        raise InvalidMessage("ansi must be true or false")
    return CaptureRequest(session_id, scrollback, ansi)


def encode_capture_request(request: CaptureRequest) -> bytes:
    data: dict[str, Any] = {"id": request.id}
    if request.scrollback:
        data["scrollback"] = request.scrollback
    if request.ansi:
        data["ansi"] = True
    _check_capture_request(data)
    return _dump(data)


def decode_capture_request(payload: bytes) -> CaptureRequest:
    return _check_capture_request(json_object(payload, "pty.capture"))


@attrs.frozen
class SessionInfo:
    """One session as ``pty.list`` shows it. ``created`` is the worker's wall clock (Unix
    seconds); ``exit_status`` / ``exit_signal`` are set once ``running`` is false."""

    id: str
    command: str
    pid: int
    cols: int
    rows: int
    running: bool
    exit_status: int | None
    exit_signal: int | None
    created: float
    attached: int


@attrs.frozen
class Capture:
    """A session's screen as its terminal emulator renders it: ``lines`` (one string per
    row, trailing blanks removed), the last ``scrollback`` lines that scrolled off the top
    (oldest first), the ``cursor`` (column, row; 0-based) and, when asked, ``ansi``: the
    screen as escape sequences that redraw it."""

    info: SessionInfo
    lines: tuple[str, ...]
    scrollback: tuple[str, ...]
    cursor: tuple[int, int]
    ansi: str | None = None

    @property
    def text(self) -> str:
        """The screen as text, trailing blank rows dropped."""
        lines = list(self.lines)
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)


def _info_dict(info: SessionInfo) -> dict[str, Any]:
    return attrs.asdict(info)


def _check_info(data: Any) -> SessionInfo:
    if not isinstance(data, dict):
        raise InvalidMessage("a session must be a JSON object")
    try:
        info = SessionInfo(
            id=check_session_id(data["id"]),
            command=str(data["command"]),
            pid=check_int(data["pid"], "pid"),
            cols=check_int(data["cols"], "cols"),
            rows=check_int(data["rows"], "rows"),
            running=bool(data["running"]),
            exit_status=None
            if data["exit_status"] is None
            else check_int(data["exit_status"], "exit_status"),
            exit_signal=None
            if data["exit_signal"] is None
            else check_int(data["exit_signal"], "exit_signal"),
            created=float(data["created"]),
            attached=check_int(data["attached"], "attached"),
        )
    except (KeyError, TypeError, ValueError):
        raise InvalidMessage("a session lacks a field or has one of the wrong type") from None
    return info


def encode_info(info: SessionInfo) -> bytes:
    return _dump(_info_dict(info))


def decode_info(payload: bytes) -> SessionInfo:
    return _check_info(json_object(payload, "session"))


def encode_list(infos: Sequence[SessionInfo]) -> bytes:
    return _dump({"sessions": [_info_dict(info) for info in infos]})


def decode_list(payload: bytes) -> list[SessionInfo]:
    data = json_object(payload, "pty.list answer")
    sessions = data.get("sessions")
    if not isinstance(sessions, list):
        raise InvalidMessage("pty.list answers {'sessions': [...]}")
    return [_check_info(item) for item in sessions]


def encode_capture(capture: Capture) -> bytes:
    data: dict[str, Any] = {
        "session": _info_dict(capture.info),
        "lines": list(capture.lines),
        "scrollback": list(capture.scrollback),
        "cursor": list(capture.cursor),
    }
    if capture.ansi is not None:
        data["ansi"] = capture.ansi
    return _dump(data)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidMessage(f"{what} must be a list of strings")
    return tuple(value)


def decode_capture(payload: bytes) -> Capture:
    data = json_object(payload, "pty.capture answer")
    cursor = data.get("cursor")
    if not (isinstance(cursor, list) and len(cursor) == 2):
        raise InvalidMessage("cursor must be [column, row]")
    ansi = data.get("ansi")
    if ansi is not None and not isinstance(ansi, str):
        raise InvalidMessage("ansi must be a string")
    return Capture(
        _check_info(data.get("session")),
        _strings(data.get("lines"), "lines"),
        _strings(data.get("scrollback", []), "scrollback"),
        (check_int(cursor[0], "cursor"), check_int(cursor[1], "cursor")),
        ansi,
    )


# -- pty.attach --------------------------------------------------------------------------


@attrs.frozen
class AttachRequest:
    """Attach to ``id``; with a size, the session is resized to it first."""

    id: str
    size: tuple[int, int] | None = None


def encode_attach_request(request: AttachRequest) -> bytes:
    data: dict[str, Any] = {"id": check_session_id(request.id)}
    if request.size is not None:
        data["cols"], data["rows"] = check_size(*request.size)
    return _dump(data)


def decode_attach_request(payload: bytes) -> AttachRequest:
    data = json_object(payload, "pty.attach")
    _only(data, {"id", "cols", "rows"}, "pty.attach")
    session_id = check_session_id(data.get("id"))
    if ("cols" in data) != ("rows" in data):
        raise InvalidMessage("give both cols and rows, or neither")
    size = check_size(data["cols"], data["rows"]) if "cols" in data else None
    return AttachRequest(session_id, size)
