"""Terminal sessions on a worker, like tmux: spawn, send keys, capture, attach, kill.

::

    async with hub.open_channel(worker_id) as ch:
        session = await ch.spawn_terminal(["sh"], cols=100, rows=30)
        await ch.send_keys(session.id, "echo hello\\n")
        screen = await ch.capture(session.id)       # a Capture: .lines, .text, .cursor
        print(screen.text)
        async with await ch.attach(session.id) as stream:   # a snapshot, then live output
            await stream.send_all(b"exit\\n")                 # keys
            while data := await stream.receive_some():
                ...
        await ch.kill_terminal(session.id)

A session belongs to the worker, not to the channel: it keeps running when the channel
closes, and any later channel of the worker's owner sees it in :func:`list_terminals`,
captures it and attaches to it. The wire is in docs/protocol.md (4.12) and
:mod:`leapcore.worker.pty`.

Errors: an unknown session id is :class:`~leapcore.errors.TerminalNotFound`; a bad size
or key payload is :class:`~leapcore.errors.InvalidMessage` (checked here before anything
is sent); a command that cannot start is :class:`~leapcore.errors.CommandNotFound` or
:class:`~leapcore.errors.ExecFailed`; a worker with its maximum of sessions all running
answers ``resource_exhausted`` (:class:`~leapcore.errors.RemoteCallError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from ..errors import (
    InvalidMessage,
    LeapcoreError,
    RemoteCallError,
    TerminalNotFound,
)
from ..proto.pty_spec import (
    ATTACH_METHOD,
    CAPTURE_METHOD,
    DEFAULT_COLS,
    DEFAULT_ROWS,
    KILL_METHOD,
    LIST_METHOD,
    RESIZE_METHOD,
    SEND_METHOD,
    SPAWN_METHOD,
    WAIT_METHOD,
    AttachRequest,
    Capture,
    CaptureRequest,
    SessionInfo,
    SpawnRequest,
    decode_capture,
    decode_info,
    decode_list,
    encode_attach_request,
    encode_capture_request,
    encode_resize_request,
    encode_send_request,
    encode_session_ref,
    encode_spawn_request,
)
from .channel import CALL_TIMEOUT, ByteStream, Channel, call_mapping
from .process import exec_error

__all__ = [
    "Capture",
    "SessionInfo",
    "attach",
    "capture",
    "kill_terminal",
    "list_terminals",
    "resize_terminal",
    "send_keys",
    "spawn_terminal",
    "wait_terminal",
]


def _mapped(exc: RemoteCallError) -> LeapcoreError:
    code = exc.remote_code
    if code == "not_found":
        return TerminalNotFound(exc.remote_message)
    return exec_error(exc)


async def _call(
    channel: Channel, method: str, payload: bytes, timeout: float | None = CALL_TIMEOUT
) -> bytes:
    return await call_mapping(channel, method, payload, timeout, _mapped)


async def spawn_terminal(
    channel: Channel,
    command: str | Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    env_mode: Literal["merge", "replace"] = "merge",
    cwd: str | None = None,
    cols: int = DEFAULT_COLS,
    rows: int = DEFAULT_ROWS,
    workspace: str | None = None,
) -> SessionInfo:
    """Start ``command`` in a new terminal session on the worker: a list of strings (run
    as is), a string (``/bin/sh -c``) or None (the worker's login shell). ``env`` is laid
    over the worker's environment (``TERM`` is ``xterm-256color`` unless given);
    ``workspace``: start in that workspace (``cwd``, if relative, taken from it)."""
    if command is None:
        request = SpawnRequest(None, None, env, env_mode, cwd, cols, rows, workspace)
    elif isinstance(command, str):
        request = SpawnRequest(None, command, env, env_mode, cwd, cols, rows, workspace)
    elif isinstance(command, (bytes, bytearray)) or not isinstance(command, Sequence):
        raise InvalidMessage("a command is a list of strings, one shell string or None")
    else:
        request = SpawnRequest(tuple(command), None, env, env_mode, cwd, cols, rows, workspace)
    return decode_info(await _call(channel, SPAWN_METHOD, encode_spawn_request(request)))


async def list_terminals(channel: Channel) -> list[SessionInfo]:
    """Every session on the worker (running or exited and not yet killed), oldest first."""
    return decode_list(await _call(channel, LIST_METHOD, b"{}"))


async def send_keys(channel: Channel, session_id: str, data: str | bytes) -> None:
    """Write ``data`` to the session's terminal, as typed (``"\\n"`` is Enter, ``"\\x03"``
    Ctrl-C); at most 64 KiB at once. Returns once the terminal took it."""
    await _call(channel, SEND_METHOD, encode_send_request(session_id, data))


async def capture(
    channel: Channel, session_id: str, *, scrollback: int = 0, ansi: bool = False
) -> Capture:
    """The session's screen as the worker's terminal emulator renders it, with the last
    ``scrollback`` lines that scrolled off (and, with ``ansi``, the escape sequences that
    redraw it)."""
    payload = encode_capture_request(CaptureRequest(session_id, scrollback, ansi))
    return decode_capture(await _call(channel, CAPTURE_METHOD, payload))


async def resize_terminal(channel: Channel, session_id: str, cols: int, rows: int) -> None:
    """Resize the session's terminal (its programs get SIGWINCH)."""
    await _call(channel, RESIZE_METHOD, encode_resize_request(session_id, cols, rows))


async def kill_terminal(channel: Channel, session_id: str) -> SessionInfo:
    """End the session (SIGHUP, then SIGKILL after 2 s) and forget it; returns its last
    state. A session whose process already exited is just forgotten."""
    return decode_info(await _call(channel, KILL_METHOD, encode_session_ref(session_id)))


async def wait_terminal(
    channel: Channel, session_id: str, *, timeout: float | None = None
) -> SessionInfo:
    """Wait until the session's process has exited (at most ``timeout`` seconds, default
    no limit); returns its state with ``exit_status`` or ``exit_signal``."""
    payload = encode_session_ref(session_id)
    return decode_info(await _call(channel, WAIT_METHOD, payload, timeout))


async def attach(
    channel: Channel,
    session_id: str,
    *,
    size: tuple[int, int] | None = None,
    timeout: float | None = CALL_TIMEOUT,
) -> ByteStream:
    """A byte stream attached to the session: it first carries a snapshot (escape
    sequences that redraw the screen), then the output as it comes; what is sent on it is
    keys. ``size`` (cols, rows) resizes the session first. Closing the stream detaches
    (the session keeps running); the worker sends EOF once the session's process has
    exited."""
    payload = encode_attach_request(AttachRequest(session_id, size))
    try:
        return await channel.open_byte_stream(ATTACH_METHOD, payload, timeout=timeout)
    except RemoteCallError as exc:
        mapped = _mapped(exc)
        if mapped is exc:
            raise
        raise mapped from None
