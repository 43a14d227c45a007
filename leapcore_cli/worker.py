"""``leapcore-worker``: the daemon that keeps one outbound link to a hub."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import Parser, make_parser, not_yet, run


def build_parser() -> Parser:
    parser = make_parser(
        "leapcore-worker",
        "Run a leapcore worker: dial out to a hub, keep the link open and answer "
        "end-to-end encrypted channels from the worker's owner.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the worker (the default; not implemented yet)")
    sub.add_parser("cross-worker-pins", help="manage pins of sibling workers (not yet)")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    return not_yet(f"leapcore-worker {args.command or 'run'}")(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _dispatch, argv)
