"""``leapcore``: the client-side command (``leapcore remote …``) and ``leapcore demo``."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from leapcore.paths import client_pins_path
from leapcore.pinstore import PinStore

from . import demo, pincmd
from .common import Parser, make_parser, not_yet, run

MISMATCH_HINT = (
    "clear with `leapcore remote worker pins remove --hub {hub} --worker-id={{worker_id}}`"
)


def _hub_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", metavar="URL", help="the hub's URL (default: $LEAPCORE_HUB)")


def hub_url(args: argparse.Namespace) -> str:
    url: str | None = args.hub or os.environ.get("LEAPCORE_HUB")
    if not url:
        args.parser_error("--hub is required (or set LEAPCORE_HUB)")
    assert url is not None
    return url


def client_pin_store(args: argparse.Namespace) -> PinStore:
    """The remote CLI's pin store for the hub named by ``--hub`` / ``$LEAPCORE_HUB``."""
    hub = hub_url(args)
    path = client_pins_path(os.environ, Path.home(), hub)
    return PinStore(path, hint=MISMATCH_HINT.format(hub=shlex.quote(hub)))


def build_parser() -> Parser:
    parser = make_parser(
        "leapcore",
        "Reach machines behind NAT through a leapcore hub, end-to-end encrypted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    remote = sub.add_parser("remote", help="talk to workers through a hub")
    remote.set_defaults(handler=not_yet("leapcore remote"))
    remote_sub = remote.add_subparsers(
        dest="remote_command", metavar="COMMAND", parser_class=Parser
    )
    worker = remote_sub.add_parser("worker", help="workers reachable through the hub")
    worker.set_defaults(handler=not_yet("leapcore remote worker"))
    worker_sub = worker.add_subparsers(
        dest="worker_command", metavar="COMMAND", parser_class=Parser
    )
    pins = worker_sub.add_parser(
        "pins",
        help="the workers' keys this client trusts (TOFU pins), per hub",
        description="List, show or remove the keys this client pinned for each worker of a hub. "
        "Only local files are touched; no hub is contacted.",
    )
    pincmd.add_verbs(
        pins,
        id_flag="--worker-id",
        id_env="LEAPCORE_WORKER_ID",
        store=client_pin_store,
        add_location=_hub_flag,
    )
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
