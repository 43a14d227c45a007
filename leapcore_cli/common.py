"""What every leapcore command shares: the parser conventions, exit codes and error output.

Exit codes (stable; documented in docs/cli.md):

====  =========================================================
0     success
1     error (anything not listed below)
2     usage: bad flags, arguments or configuration
3     not found
4     corrupt or unreadable local state (key file, pin store)
5     a remote peer broke the protocol (handshake, decrypt)
6     a worker's keys do not match its pin (possible impostor)
7     the hub or a worker did not answer in time (retry later)
====  =========================================================

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
    DeadlineExceeded,
    KeyFileError,
    KeyMismatch,
    LeapcoreError,
    NotFound,
    PinStoreError,
    RemoteProtocolError,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CORRUPT_STATE = 4
EXIT_PROTOCOL = 5
EXIT_KEY_MISMATCH = 6
EXIT_TIMEOUT = 7

#: Error class -> exit code; the first match in this order wins.
EXIT_CODES: tuple[tuple[type[LeapcoreError], int], ...] = (
    (KeyMismatch, EXIT_KEY_MISMATCH),
    (NotFound, EXIT_NOT_FOUND),
    (KeyFileError, EXIT_CORRUPT_STATE),
    (PinStoreError, EXIT_CORRUPT_STATE),
    (ConfigError, EXIT_USAGE),
    (DeadlineExceeded, EXIT_TIMEOUT),
    (RemoteProtocolError, EXIT_PROTOCOL),
)


def exit_code_for(exc: LeapcoreError) -> int:
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


def run(
    parser: Parser, handler: Callable[[argparse.Namespace], int], argv: Sequence[str] | None
) -> int:
    """Parse ``argv``, call ``handler`` and turn leapcore errors into messages and exit codes."""
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
