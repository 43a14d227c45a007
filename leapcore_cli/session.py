"""``leapcore remote session list|spawn|send-keys|capture|resize|kill|attach --worker W``
and ``leapcore remote shell``: terminal sessions kept by a worker, like tmux's, for scripts
and agents (``--json``) and people (``attach``, ``shell``).

* ``spawn [--cols N] [--rows N] [--env NAME=VALUE] [--cwd DIR] [--workspace ID] [--shell]
  [-- CMD ARG...]``
  starts CMD (an argv; ``--shell``: the words joined and run by ``/bin/sh -c``; nothing:
  the worker's login shell) in a new session and prints its id (``--json``: the session).
* ``send-keys ID KEY...`` types the keys: each argument is sent as text, except tmux's key
  names (``Enter``, ``Tab``, ``Escape``, ``Space``, ``BSpace``, ``Up``, ``Down``,
  ``Left``, ``Right``, ``Home``, ``End``, ``PageUp``, ``PageDown``, ``C-a`` .. ``C-z``),
  which are those keys; ``-l`` sends every argument as text.
* ``capture ID [--scrollback N] [--ansi]`` prints the screen as the worker's terminal
  emulator renders it (``--ansi``: as escape sequences that redraw it).
* ``list``, ``resize ID COLS ROWS``, ``kill ID`` (ends the session and forgets it).
* ``attach ID`` and ``leapcore remote shell [-- CMD...]`` (a new session of the local
  terminal's size, forgotten when it ends): the local terminal in raw mode attached to
  the session, SIGWINCH forwarded as a resize, ``~.`` after Enter detaching (the session
  runs on); the exit status is the session's (128 + N for signal N).

JSON (stable): a session is ``{"id", "command", "pid", "cols", "rows", "running",
"exit_status", "exit_signal", "created", "attached"}``; ``list`` → ``{"sessions": [...]}``;
``spawn``, ``kill`` → the session; ``capture`` → ``{"session", "lines", "scrollback",
"cursor": [col, row], "ansi"?}``; ``send-keys``, ``resize`` → ``{"id", "ok": true}``. An
unknown session id exits 3 (``terminal_not_found``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import trio

from leapcore.peer.channel import Channel
from leapcore.peer.hubsession import HubSession
from leapcore.peer.terminal import (
    attach,
    capture,
    kill_terminal,
    list_terminals,
    resize_terminal,
    send_keys,
    spawn_terminal,
    wait_terminal,
)
from leapcore.proto.pty_spec import DEFAULT_COLS, DEFAULT_ROWS, SessionInfo

from .common import EXIT_OK, emit_json, print_table, verb_group
from .exec import parse_env
from .localtty import bridge, local_size, raw_terminal
from .workspace import workspace_flag

#: tmux's names for keys that are not text.
KEY_NAMES: Final[dict[str, str]] = {
    "Enter": "\r",
    "Tab": "\t",
    "Escape": "\x1b",
    "Space": " ",
    "BSpace": "\x7f",
    "Up": "\x1b[A",
    "Down": "\x1b[B",
    "Right": "\x1b[C",
    "Left": "\x1b[D",
    "Home": "\x1b[H",
    "End": "\x1b[F",
    "PageUp": "\x1b[5~",
    "PageDown": "\x1b[6~",
    **{f"C-{chr(c)}": chr(c - ord("a") + 1) for c in range(ord("a"), ord("z") + 1)},
}


def keys_of(words: Sequence[str], *, literal: bool = False) -> str:
    """The text ``send-keys`` types for ``words`` (key names translated unless ``literal``)."""
    if literal:
        return "".join(words)
    return "".join(KEY_NAMES.get(word, word) for word in words)


def session_json(info: SessionInfo) -> dict[str, Any]:
    return attrs.asdict(info)


def _state(info: SessionInfo) -> str:
    if info.running:
        return "running"
    if info.exit_signal is not None:
        return f"killed by signal {info.exit_signal}"
    return f"exited {info.exit_status}"


def _when(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _on_channel(args: argparse.Namespace, work: Callable[[Channel], Awaitable[int]]) -> int:
    from .remote import _channel_verb, _resolved, _timeout, worker_ref

    ref = worker_ref(args)
    timeout = _timeout(args)

    async def body(session: HubSession) -> int:
        worker_id = await _resolved(session, ref)
        async with session.open_channel(worker_id, timeout=timeout) as channel:
            return await work(channel)

    return _channel_verb(args, body)


def run_list(args: argparse.Namespace) -> int:
    async def work(channel: Channel) -> int:
        infos = await list_terminals(channel)
        if args.json:
            emit_json({"sessions": [session_json(info) for info in infos]})
        elif infos:
            rows = [
                [
                    i.id,
                    f"{i.cols}x{i.rows}",
                    _state(i),
                    str(i.attached),
                    _when(i.created),
                    i.command,
                ]
                for i in infos
            ]
            print_table(["ID", "SIZE", "STATE", "ATTACHED", "CREATED (UTC)", "COMMAND"], rows)
        return EXIT_OK

    return _on_channel(args, work)


def run_spawn(args: argparse.Namespace) -> int:
    words: list[str] = list(args.command)
    if words[:1] == ["--"]:
        words = words[1:]
    if args.shell and not words:
        args.parser_error("--shell needs the words to run")
    command: str | list[str] | None = (" ".join(words) if args.shell else words) or None
    env = parse_env(args.env, args.parser_error)

    async def work(channel: Channel) -> int:
        info = await spawn_terminal(
            channel,
            command,
            env=env,
            cwd=args.cwd,
            cols=args.cols,
            rows=args.rows,
            workspace=args.workspace,
        )
        if args.json:
            emit_json(session_json(info))
        else:
            print(info.id)
        return EXIT_OK

    return _on_channel(args, work)


def run_send_keys(args: argparse.Namespace) -> int:
    text = keys_of(args.keys, literal=args.literal)
    if not text:
        args.parser_error("no keys given")

    async def work(channel: Channel) -> int:
        await send_keys(channel, args.id, text)
        if args.json:
            emit_json({"id": args.id, "ok": True})
        return EXIT_OK

    return _on_channel(args, work)


def run_capture(args: argparse.Namespace) -> int:
    async def work(channel: Channel) -> int:
        shot = await capture(channel, args.id, scrollback=args.scrollback, ansi=args.ansi)
        if args.json:
            doc: dict[str, Any] = {
                "session": session_json(shot.info),
                "lines": list(shot.lines),
                "scrollback": list(shot.scrollback),
                "cursor": list(shot.cursor),
            }
            if shot.ansi is not None:
                doc["ansi"] = shot.ansi
            emit_json(doc)
        elif args.ansi:
            assert shot.ansi is not None
            sys.stdout.write(shot.ansi)
            sys.stdout.flush()
        else:
            for line in shot.scrollback:
                print(line)
            print(shot.text)
        return EXIT_OK

    return _on_channel(args, work)


def run_resize(args: argparse.Namespace) -> int:
    async def work(channel: Channel) -> int:
        await resize_terminal(channel, args.id, args.cols, args.rows)
        if args.json:
            emit_json({"id": args.id, "ok": True})
        return EXIT_OK

    return _on_channel(args, work)


def run_kill(args: argparse.Namespace) -> int:
    async def work(channel: Channel) -> int:
        info = await kill_terminal(channel, args.id)
        if args.json:
            emit_json(session_json(info))
        else:
            print(f"session {info.id}: {_state(info)}")
        return EXIT_OK

    return _on_channel(args, work)


# -- interactive: session attach, shell ---------------------------------------------------


async def interact(channel: Channel, session_id: str, fd_in: int = 0, fd_out: int = 1) -> bool:
    """Attach the local terminal to the session until it ends (False) or ``~.`` (True):
    raw keys in, its output out, window-size changes (SIGWINCH) forwarded."""
    stream = await attach(channel, session_id, size=local_size(fd_in))
    try:
        return await bridge(
            stream,
            stream,
            lambda cols, rows: resize_terminal(channel, session_id, cols, rows),
            fd_in,
            fd_out,
        )
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


def _exit_status(info: SessionInfo) -> int:
    if info.exit_signal is not None:
        return 128 + info.exit_signal
    return info.exit_status or 0


async def _attached(channel: Channel, session_id: str, worker: str, *, forget: bool) -> int:
    with raw_terminal(0):
        detached = await interact(channel, session_id)
    if detached:
        print(
            f"\r\ndetached; session {session_id} keeps running "
            f"(leapcore remote session attach --worker {worker} {session_id})",
            file=sys.stderr,
        )
        return EXIT_OK
    info = await wait_terminal(channel, session_id, timeout=30)
    if forget:
        await kill_terminal(channel, session_id)
    return _exit_status(info)


def run_attach(args: argparse.Namespace) -> int:
    async def work(channel: Channel) -> int:
        return await _attached(channel, args.id, args.worker, forget=False)

    return _on_channel(args, work)


def run_shell(args: argparse.Namespace) -> int:
    words: list[str] = list(args.command)
    if words[:1] == ["--"]:
        words = words[1:]
    command: list[str] | None = words or None
    env = parse_env(args.env, args.parser_error)
    size = local_size(0) or (DEFAULT_COLS, DEFAULT_ROWS)

    async def work(channel: Channel) -> int:
        info = await spawn_terminal(
            channel,
            command,
            env=env,
            cwd=args.cwd,
            cols=size[0],
            rows=size[1],
            workspace=args.workspace,
        )
        return await _attached(channel, info.id, args.worker, forget=True)

    return _on_channel(args, work)


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return value


def add_verbs(
    remote_sub: Any,
    session_flags: Callable[[argparse.ArgumentParser], None],
    timeout_flag: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``remote session ...`` under ``remote_sub``."""
    verb = verb_group(
        remote_sub,
        "session",
        "terminal sessions on a worker (like tmux): spawn, send keys, capture, kill",
        "Terminal sessions the worker keeps (they outlive this command): spawn one, type "
        "into it, read its screen, resize it, list them, kill one.",
        (session_flags, timeout_flag),
    )
    verb("list", run_list, "list the worker's terminal sessions")
    p = verb("spawn", run_spawn, "start a command in a new terminal session; print its id")
    p.add_argument("--cols", type=_size, default=DEFAULT_COLS, help="columns (default 80)")
    p.add_argument("--rows", type=_size, default=DEFAULT_ROWS, help="rows (default 24)")
    p.add_argument("--shell", action="store_true", help="run the words with /bin/sh -c")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an environment variable (repeatable; laid over the worker's)",
    )
    p.add_argument("--cwd", metavar="DIR", help="start in DIR on the worker")
    workspace_flag(p)
    p.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]", help="default: a shell"
    )
    p = verb("send-keys", run_send_keys, "type keys into a session (tmux's key names work)")
    p.add_argument("-l", "--literal", action="store_true", help="no key names: text only")
    p.add_argument("id", metavar="ID")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p = verb("capture", run_capture, "print a session's screen")
    p.add_argument("id", metavar="ID")
    p.add_argument(
        "--scrollback", type=_size, default=0, metavar="N", help="lines that scrolled off, too"
    )
    p.add_argument("--ansi", action="store_true", help="as escape sequences that redraw it")
    p = verb("resize", run_resize, "resize a session's terminal")
    p.add_argument("id", metavar="ID")
    p.add_argument("cols", type=_size, metavar="COLS")
    p.add_argument("rows", type=_size, metavar="ROWS")
    p = verb("kill", run_kill, "end a session and forget it")
    p.add_argument("id", metavar="ID")
    p = verb("attach", run_attach, "attach this terminal to a session (~. detaches)")
    p.add_argument("id", metavar="ID")

    text = (
        "an interactive shell (or CMD) on the worker, in a terminal session: keys as typed, "
        "window-size changes forwarded; ~. after Enter detaches (the session keeps "
        "running); exits with the shell's exit status (128+N for signal N)"
    )
    p = remote_sub.add_parser("shell", help="an interactive shell on a worker", description=text)
    session_flags(p)
    timeout_flag(p)
    p.set_defaults(handler=run_shell, parser_error=p.error)
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an environment variable (repeatable; laid over the worker's)",
    )
    p.add_argument("--cwd", metavar="DIR", help="start in DIR on the worker")
    workspace_flag(p)
    p.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]", help="default: a shell"
    )
