"""What every leapcore command shares: the parser conventions, exit codes and error output.

Exit codes (stable; documented in docs/cli.md). Each branch of leapcore's error tree has
codes of its own, so a script can tell "retry later" from "possible attack" from "no":

====  ==========================================================================
0     success
1     error not listed below: a local failure (a file could not be written)
2     usage: bad flags, arguments or configuration
3     not found (the hub or a local store says so)
4     corrupt or unreadable local state (key file, pin store)
5     the protocol was broken: a failed handshake, a frame that failed
      authentication, a malformed record, a TLS certificate that does not
      verify — possibly an attack; do not retry blindly
6     a worker's keys do not match its pin (possible impostor)
7     unavailable, retry later: the hub is unreachable, the link dropped,
      the worker is offline, or no answer came in time
8     refused: the hub or the worker said no (credentials, permission,
      quota, state, an error answer)
9     the hub does not know this worker (a different or reset hub); nothing
      was changed (``leapcore-worker``)
====  ==========================================================================

With ``--json``, stdout carries exactly one JSON document — the result, or
``{"error": {"code": ..., "message": ...}}`` — and diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from leapcore import __version__
from leapcore.errors import (
    ConfigError,
    HubMismatch,
    KeyFileError,
    KeyMismatch,
    LeapcoreError,
    NotFound,
    PinStoreError,
    Refused,
    TokenExpired,
    Unavailable,
    WorkerBusy,
)

from .completion import autocomplete

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CORRUPT_STATE = 4
EXIT_PROTOCOL = 5
EXIT_KEY_MISMATCH = 6
EXIT_UNAVAILABLE = 7
EXIT_REFUSED = 8
EXIT_HUB_MISMATCH = 9
EXIT_TOKEN_EXPIRED = 10

#: Error class -> exit code, after the two protocol codes (see :func:`exit_code_for`);
#: the first match in this order wins.
EXIT_CODES: tuple[tuple[type[LeapcoreError], int], ...] = (
    (NotFound, EXIT_NOT_FOUND),
    (HubMismatch, EXIT_HUB_MISMATCH),
    (WorkerBusy, EXIT_UNAVAILABLE),  # a Refused, but retrying later works
    (TokenExpired, EXIT_TOKEN_EXPIRED),
    (Refused, EXIT_REFUSED),
    (Unavailable, EXIT_UNAVAILABLE),
    (KeyFileError, EXIT_CORRUPT_STATE),
    (PinStoreError, EXIT_CORRUPT_STATE),
    (ConfigError, EXIT_USAGE),
)


def exit_code_for(exc: LeapcoreError) -> int:
    """The exit code of ``exc``: 6 for a key mismatch; 5 for anything that says the protocol
    was broken (:attr:`~leapcore.errors.LeapcoreError.protocol_failure`: every
    ``RemoteProtocolError``, and a channel lost or refused, or a hub answer, whose reason
    code says so); then :data:`EXIT_CODES`; else 1."""
    if isinstance(exc, KeyMismatch):
        return EXIT_KEY_MISMATCH
    if exc.protocol_failure:
        return EXIT_PROTOCOL
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


class Parser(argparse.ArgumentParser):
    """argparse with leapcore's usage errors: message on stderr (or JSON on stdout), exit 2."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            emit_json({"error": {"code": "usage", "message": message}})
        else:
            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def make_parser(prog: str, description: str) -> Parser:
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    return parser


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout (for scripts)"
    )


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")


def verb_group(
    parent: Any,
    name: str,
    help_text: str,
    description: str,
    flags: Sequence[Callable[[argparse.ArgumentParser], None]],
) -> Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]:
    """A command ``name`` of verbs under ``parent`` (``remote session``, ``remote
    workspace``); returns ``verb(name, handler, text)``, which adds one verb, each of
    ``flags`` adding its options."""
    top = parent.add_parser(name, help=help_text, description=description)
    sub = top.add_subparsers(dest=f"{name}_verb", metavar="VERB")

    def verb(
        verb_name: str, handler: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(verb_name, help=text, description=text)
        for add in flags:
            add(p)
        p.set_defaults(handler=handler, parser_error=p.error)
        return p

    return verb


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, two spaces apart (the human form of a list)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def run(
    parser: Parser, handler: Callable[[argparse.Namespace], int], argv: Sequence[str] | None
) -> int:
    """Parse ``argv``, call ``handler`` and turn leapcore errors into messages and exit codes."""
    if argv is None:  # the real command: a shell asking for completions is answered here
        autocomplete(parser)
    wants_json = "--json" in (sys.argv[1:] if argv is None else argv)
    Parser.json_errors = wants_json
    args = parser.parse_args(argv)
    try:
        return handler(args)
    except LeapcoreError as exc:
        if getattr(args, "json", False):
            emit_json({"error": {"code": exc.code, "message": exc.message}})
        else:
            print(f"error: {exc.message}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130


def not_yet(name: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        print(f"{name}: not implemented yet in leapcore {__version__}", file=sys.stderr)
        return EXIT_ERROR

    return handler
