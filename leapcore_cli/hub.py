"""``leapcore-hub``: the relay workers dial out to."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import hubadmin
from .common import Parser, make_parser, not_yet, run


def build_parser() -> Parser:
    parser = make_parser(
        "leapcore-hub",
        "Run a leapcore hub: the relay that workers dial out to and clients reach them "
        "through. It routes end-to-end encrypted channels and never sees their content.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.add_parser("serve", help="run the hub (the default; not implemented yet)")
    hubadmin.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None) or not_yet("leapcore-hub serve")
    result: int = handler(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _dispatch, argv)
