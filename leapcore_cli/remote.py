"""``leapcore``: the client-side command (``leapcore remote …``) and ``leapcore demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import demo
from .common import Parser, make_parser, not_yet, run


def build_parser() -> Parser:
    parser = make_parser(
        "leapcore",
        "Reach machines behind NAT through a leapcore hub, end-to-end encrypted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    remote = sub.add_parser("remote", help="talk to workers through a hub (not implemented yet)")
    remote.set_defaults(handler=not_yet("leapcore remote"))
    demo.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None)
    if handler is None:
        build_parser().print_help()
        return 0
    result: int = handler(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _dispatch, argv)
