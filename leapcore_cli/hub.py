"""``leapcore-hub``: the relay workers dial out to."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import Parser, make_parser, not_yet, run


def build_parser() -> Parser:
    parser = make_parser(
        "leapcore-hub",
        "Run a leapcore hub: the relay that workers dial out to and clients reach them "
        "through. It routes end-to-end encrypted channels and never sees their content.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="run the hub (the default; not implemented yet)")
    sub.add_parser("admin", help="manage users, workers and registration keys (not yet)")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    return not_yet(f"leapcore-hub {args.command or 'serve'}")(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _dispatch, argv)
