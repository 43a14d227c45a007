"""``leapcore-worker``: the daemon that keeps one outbound link to a hub."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from leapcore.config import worker_settings
from leapcore.paths import cross_worker_pins_path
from leapcore.pinstore import PinStore

from . import pincmd
from .common import Parser, make_parser, not_yet, run

CROSS_WORKER_HINT = (
    "pin previously recorded; clear with `leapcore-worker cross-worker-pins remove "
    "--data-dir {data_dir} --target-worker-id={{worker_id}}`"
)


def _location_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the worker's data directory (default: $LEAPCORE_WORKER_DATA_DIR, then the config "
        "file's data_dir, then ~/.config/leapcore/worker)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="worker config file (default: ~/.config/leapcore/worker/worker.toml if it exists)",
    )


def cross_worker_store(args: argparse.Namespace) -> PinStore:
    """This worker's pins of its siblings, in the data dir the worker itself would use."""
    flags = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    settings, _ = worker_settings(
        flags=flags, env=os.environ, home=Path.home(), config_path=args.config
    )
    data_dir = Path(settings["data_dir"])
    return PinStore(
        cross_worker_pins_path(data_dir),
        hint=CROSS_WORKER_HINT.format(data_dir=shlex.quote(str(data_dir))),
    )


def build_parser() -> Parser:
    parser = make_parser(
        "leapcore-worker",
        "Run a leapcore worker: dial out to a hub, keep the link open and answer "
        "end-to-end encrypted channels from the worker's owner.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    run_parser = sub.add_parser("run", help="run the worker (the default; not implemented yet)")
    run_parser.set_defaults(handler=not_yet("leapcore-worker run"))
    pins = sub.add_parser(
        "cross-worker-pins",
        help="the sibling workers' keys this worker trusts (TOFU pins)",
        description="List, show or remove the keys this worker pinned for sibling workers. "
        "Only local files are touched.",
    )
    pincmd.add_verbs(
        pins,
        id_flag="--target-worker-id",
        id_env=None,
        store=cross_worker_store,
        add_location=_location_flags,
    )
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None) or not_yet("leapcore-worker run")
    result: int = handler(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _dispatch, argv)
