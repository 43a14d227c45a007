"""``leapcore remote call`` and ``leapcore remote worker services``: a worker's own methods
from the command line.

``remote call --worker W METHOD [PAYLOAD]`` makes one RPC on an end-to-end channel (the
worker's keys checked against their pin first, as for ``worker info``) and prints the
answer. ``PAYLOAD`` is JSON (default ``{}``; ``-`` reads it from stdin), checked here and
sent as its UTF-8 bytes, as typed; a malformed one is a usage error (exit 2) and nothing is
sent. The answer is printed as JSON when it is JSON (indented; with ``--json``, on one
line), else as UTF-8 text (control characters escaped), else it is an error that suggests
``--raw`` (exit 1). ``--raw`` sends ``PAYLOAD`` (or stdin, with ``-``; nothing when absent)
as it is and writes the answer's bytes to stdout unchanged.

An error answer is ``error: CODE: MESSAGE`` on stderr and exit 8 (with ``--json``,
``{"error": {"code": "remote_error", "message", "remote_code", "remote_message"}}`` on
stdout); a method the worker does not serve as an RPC is its ``unimplemented``.

``remote worker services --worker W`` lists what the worker serves, from its ``info``
document: ``NAME KIND ACCESS`` (``--json``: ``{"worker_id", "services": [{"name", "kind",
"public"}, ...]}``). A worker older than the ``services`` field lists its ``capabilities``
with kind and access unknown (``-``; ``null`` in JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

from leapcore.errors import InvalidMessage, LocalError, RemoteCallError
from leapcore.peer.hubsession import HubSession
from leapcore.proto.channel_codec import check_method
from leapcore.proto.limits import DEFAULT_MAX_MESSAGE_SIZE

from .common import EXIT_OK, Parser, emit_json, exit_code_for, print_table
from .hubadmin import safe

#: The payload when none is given (JSON mode).
DEFAULT_PAYLOAD: Final = "{}"
#: The most payload bytes read from stdin (the channel's default message limit; the call's
#: own framing makes the real limit a few bytes less: ``MessageTooLarge``, exit 1).
MAX_PAYLOAD: Final = DEFAULT_MAX_MESSAGE_SIZE


class CallParser(Parser):
    """``remote call``'s parser: ``PAYLOAD`` may also come after an option
    (``call echo --raw -``), which argparse alone leaves unrecognised once ``METHOD`` is
    matched."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and getattr(parsed, "payload", None) is None and not extras[0].startswith("--"):
            parsed.payload, extras = extras[0], extras[1:]
        if extras:  # here, with this verb's usage line
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def check_json(text: str) -> None:
    """Raise ``ValueError`` (what is wrong, and where) unless ``text`` is one JSON value
    (``NaN`` and ``Infinity``, which Python alone accepts, are refused too)."""
    try:
        json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _read_stdin(parser_error: Callable[[str], NoReturn]) -> bytes:
    data = sys.stdin.buffer.read(MAX_PAYLOAD + 1)
    if len(data) > MAX_PAYLOAD:
        parser_error(f"the payload on stdin is more than {MAX_PAYLOAD} bytes")
    return data


def call_payload(args: argparse.Namespace) -> bytes:
    """The bytes to send: ``--raw``: the argument's UTF-8 or stdin's bytes (``-``), nothing
    when absent; else JSON (the argument, stdin, or ``{}``), checked: a usage error
    (exit 2) says what is wrong with it."""
    given: str | None = args.payload
    error: Callable[[str], NoReturn] = args.parser_error
    if args.raw:
        if given == "-":
            return _read_stdin(error)
        return (given or "").encode("utf-8", "surrogateescape")
    where = "the JSON payload"
    if given == "-":
        where = "the JSON payload on stdin"
        try:
            text = _read_stdin(error).decode()
        except UnicodeDecodeError as exc:
            error(f"{where} is not UTF-8 (byte {exc.start}); use --raw to send bytes")
    else:
        text = DEFAULT_PAYLOAD if given is None else given
    try:
        check_json(text)
    except ValueError as exc:
        error(f"{where} is not valid JSON: {exc} (use --raw to send it as it is)")
    try:
        return text.encode()
    except UnicodeEncodeError:  # an argument that was not UTF-8 (surrogate escapes)
        error(f"{where} is not UTF-8; use --raw to send bytes")


def printable(text: str) -> str:
    """``text`` with every non-printable character but newline and tab escaped (an answer
    must not drive the terminal; ``--raw`` writes it unchanged)."""
    return "\n".join(
        "\t".join(safe(part) for part in line.split("\t")) for line in text.split("\n")
    )


def render_answer(answer: bytes, *, compact: bool) -> str:
    """How ``call`` prints ``answer`` (without ``--raw``): its JSON re-encoded (2-space
    indents; ``compact``: one line) and a newline; else its UTF-8 text, escaped, with a
    final newline (nothing for an empty answer; ``compact``: a JSON string); else
    :class:`~leapcore.errors.LocalError` (exit 1) suggesting ``--raw``."""
    try:
        text = answer.decode()
    except UnicodeDecodeError:
        raise LocalError(
            f"the answer is {len(answer)} bytes that are not UTF-8 text; use --raw to write "
            "them as they are"
        ) from None
    try:
        value: Any = json.loads(text, parse_constant=_no_constants)
    except ValueError:
        if compact:
            return json.dumps(text) + "\n"
        if not text:
            return ""
        shown = printable(text)
        return shown if shown.endswith("\n") else shown + "\n"
    if compact:
        return json.dumps(value, separators=(",", ":")) + "\n"
    return json.dumps(value, indent=2) + "\n"


def run_call(args: argparse.Namespace) -> int:
    from .remote import _channel_verb, _resolved, _timeout, worker_ref

    method: str = args.method
    if args.raw and args.json:
        args.parser_error("--raw and --json do not go together")
    try:
        check_method(method)
    except InvalidMessage as exc:
        args.parser_error(f"METHOD: {exc.message}")
    ref = worker_ref(args)
    timeout = _timeout(args)
    payload = call_payload(args)

    async def body(session: HubSession) -> int:
        worker_id = await _resolved(session, ref)
        async with session.open_channel(worker_id, timeout=timeout) as channel:
            answer = await channel.call(method, payload, timeout=timeout)
        if args.raw:
            sys.stdout.buffer.write(answer)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(render_answer(answer, compact=args.json))
        return EXIT_OK

    try:
        return _channel_verb(args, body)
    except BrokenPipeError:
        # The reader went away (`| head -c 10`): end as a program killed by SIGPIPE does,
        # without a second error when the interpreter flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except RemoteCallError as exc:
        if not args.json:
            raise  # error: CODE: MESSAGE, exit 8
        error = {
            "code": exc.code,
            "message": exc.message,
            "remote_code": exc.remote_code,
            "remote_message": exc.remote_message,
        }
        emit_json({"error": error})
        return exit_code_for(exc)


# -- worker services ---------------------------------------------------------------------


def services_of(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``{"name", "kind", "public"}`` list of an ``info`` document: its ``services``,
    else (an older worker) its ``capabilities`` with ``kind`` and ``public`` ``None``."""
    listed = info.get("services")
    if isinstance(listed, list):
        return [
            {"name": str(s.get("name")), "kind": s.get("kind"), "public": s.get("public")}
            for s in listed
            if isinstance(s, dict)
        ]
    names = info.get("capabilities")
    return [
        {"name": str(name), "kind": None, "public": None}
        for name in (names if isinstance(names, list) else [])
    ]


def service_rows(services: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``worker services``'s table rows: NAME, KIND, ACCESS (``public`` or ``owner``)."""
    rows = []
    for service in services:
        public = service["public"]
        access = "-" if public is None else "public" if public else "owner"
        rows.append((safe(service["name"]), safe(str(service["kind"] or "-")), access))
    return rows


def worker_services(args: argparse.Namespace) -> int:
    from .remote import _channel_verb, _resolved, _timeout, fetch_info, worker_ref

    ref = worker_ref(args)
    timeout = _timeout(args)

    async def body(session: HubSession) -> int:
        worker_id = await _resolved(session, ref)
        _, info = await fetch_info(session, worker_id, timeout=timeout)
        services = services_of(info)
        if args.json:
            emit_json({"worker_id": worker_id, "services": services})
        elif not services:
            print(f"worker {worker_id} lists no methods")
        else:
            print_table(("NAME", "KIND", "ACCESS"), service_rows(services))
            if "services" not in info:
                print(
                    f"worker {worker_id} does not say the kinds of its methods (an older "
                    "leapcore): kind and access unknown",
                    file=sys.stderr,
                )
        return EXIT_OK

    return _channel_verb(args, body)


def add_verbs(
    remote_sub: Any,
    worker_sub: Any,
    session_flags: Callable[[argparse.ArgumentParser], None],
    timeout_flag: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``remote call`` under ``remote_sub`` and ``worker services`` under ``worker_sub``."""
    p = remote_sub.add_parser(
        "call",
        help="call one of a worker's methods (its own, or those added with --services)",
        description="Call METHOD on the worker over an end-to-end encrypted channel (keys "
        "checked against the pin first) with a JSON payload, and print its answer: as JSON "
        "when it is JSON (one line with --json), else as text; --raw sends and prints bytes "
        "as they are. An error answer prints `error: CODE: MESSAGE` and exits 8.",
    )
    p.__class__ = CallParser
    session_flags(p)
    timeout_flag(p)
    p.add_argument(
        "--raw",
        action="store_true",
        help="send PAYLOAD (or stdin's bytes, with -) as it is, unchecked (none: an empty "
        "payload), and write the answer's bytes to stdout unchanged",
    )
    p.add_argument("method", metavar="METHOD", help="the method's name, e.g. echo or mypkg.add")
    p.add_argument(
        "payload",
        nargs="?",
        metavar="PAYLOAD",
        help=f"the JSON payload (default {DEFAULT_PAYLOAD}); - reads it from stdin",
    )
    p.set_defaults(handler=run_call, parser_error=p.error)

    p = worker_sub.add_parser(
        "services",
        help="list the methods a worker serves: kind and who may call them",
        description="Open an end-to-end encrypted channel to the worker (keys checked "
        "against the pin first), ask for its info document and list the methods it "
        "serves: NAME, KIND (rpc, stream, byte_stream) and ACCESS (public: any caller; "
        "owner: its owner only).",
    )
    session_flags(p)
    timeout_flag(p)
    p.set_defaults(handler=worker_services, parser_error=p.error)
