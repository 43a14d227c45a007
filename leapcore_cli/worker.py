"""``leapcore-worker``: the daemon that keeps one outbound link to a hub."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from leapcore.channel import Services
from leapcore.config import LOG_LEVELS, worker_settings
from leapcore.errors import ConfigError
from leapcore.paths import cross_worker_pins_path
from leapcore.pinstore import PinStore
from leapcore.workerd import CROSS_WORKER_HINT, Worker, WorkerExit, parse_labels, run_until_signal
from leapcore.workerstate import StartupAction

from . import pincmd
from .common import EXIT_OK, Parser, make_parser, run


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


#: ``run`` flag -> setting key (only flags given explicitly override file and environment).
RUN_FLAGS = (
    "hub",
    "registration_key",
    "name",
    "data_dir",
    "encryption_mode",
    "labels",
    "transport",
    "ca_file",
    "log_level",
    "services",
)
EXIT_MESSAGES = {
    WorkerExit.DEREGISTERED: "leapcore-worker: deregistered by the hub; local state "
    "({path}) deleted",
    WorkerExit.WIPED: "leapcore-worker: the hub rejected this worker's credentials (it was "
    "deleted or deregistered); local state ({path}) deleted",
}
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}
log = logging.getLogger("leapcore.worker")

#: An installer named by ``--services MODULE:CALLABLE``: it adds methods to the table.
Installer = Callable[[Services, Worker], Any]


def _dotted(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def resolve_installer(spec: str) -> Installer:
    """The callable ``spec`` (``MODULE:CALLABLE``, each part a dotted name) names: the module is
    imported, the attribute looked up. Every failure is a :class:`ConfigError` that says which
    step failed for which spec (the traceback only in the debug log)."""
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not _dotted(module_name) or not _dotted(attr):
        raise ConfigError(
            f"services: {spec!r} is not MODULE:CALLABLE (for example mypkg.methods:install)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigError(
                f"services: no module named {missing!r} (from {spec!r}); is its directory "
                "on PYTHONPATH?"
            ) from None
        log.debug("importing %s failed", module_name, exc_info=True)
        raise ConfigError(
            f"services: importing {module_name!r} (from {spec!r}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:
        log.debug("importing %s failed", module_name, exc_info=True)
        raise ConfigError(
            f"services: importing {module_name!r} (from {spec!r}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"services: module {module_name!r} has no attribute {attr!r} (from {spec!r})"
            ) from None
    if not callable(target):
        raise ConfigError(
            f"services: {spec!r} is not callable (it is {type(target).__name__}); name a "
            "function taking (services, worker)"
        )
    installer: Installer = target
    return installer


def install_services(specs: Sequence[str], worker: Worker) -> None:
    """Call each installer in ``specs``, in order, with ``(worker.services, worker)``."""
    services = worker.services
    for spec in specs:
        installer = resolve_installer(spec)
        before = _methods(services)
        try:
            result = installer(services, worker)
        except Exception as exc:
            log.debug("%s failed", spec, exc_info=True)
            raise ConfigError(f"services: {spec} failed: {type(exc).__name__}: {exc}") from None
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()  # never awaited: no "coroutine was never awaited" warning
            raise ConfigError(
                f"services: {spec} returned an awaitable; it must be a plain (not async) "
                "function that registers methods and returns"
            )
        added = sorted(_methods(services) - before)
        log.info("services: %s added %s", spec, ", ".join(added) or "no methods")


def _methods(services: Services) -> set[str]:
    return {*services.rpcs, *services.streams, *services.byte_streams}


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """The daemon's flags; SUPPRESS so that an absent flag never hides file or environment."""
    add = parser.add_argument
    hide = argparse.SUPPRESS
    add("--hub", metavar="URL", default=hide, help="the hub's URL (http://, https:// or unix:)")
    add(
        "--registration-key",
        metavar="KEY",
        default=hide,
        help="register with this key first (only for an unregistered worker; never saved)",
    )
    add("--name", metavar="NAME", default=hide, help="the worker's name (default: the hostname)")
    add("--data-dir", metavar="DIR", default=hide, help="where state.json lives")
    add(
        "--encryption-mode",
        metavar="MODE",
        default=hide,
        help="classic or post-quantum (the default)",
    )
    add("--labels", metavar="K=V,...", default=hide, help="labels shown to the owner")
    add("--transport", metavar="NAME", default=hide, help="websocket (default) or h2")
    add("--ca-file", metavar="FILE", default=hide, help="trust only this CA for https:// hubs")
    add("--log-level", metavar="LEVEL", default=hide, help="debug, info (default), warn, error")
    add(
        "--services",
        metavar="MODULE:CALLABLE",
        action="append",
        default=hide,
        help="import MODULE and call CALLABLE(services, worker) at start-up to add channel "
        "methods (repeatable; replaces the config file's and environment's list)",
    )
    add(
        "--config",
        metavar="FILE",
        type=Path,
        default=hide,
        help="worker config file (default: ~/.config/leapcore/worker/worker.toml if it exists)",
    )


def run_worker(args: argparse.Namespace) -> int:
    """``leapcore-worker run``: settings, startup checks, then the daemon until it ends."""
    flags = {key: getattr(args, key) for key in RUN_FLAGS if hasattr(args, key)}
    settings, _ = worker_settings(
        flags=flags, env=os.environ, home=Path.home(), config_path=getattr(args, "config", None)
    )
    if not settings["hub"].strip():
        raise ConfigError("hub URL is required")
    if settings["log_level"] not in LOG_LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}")
    level = _LOG_LEVELS.get(settings["log_level"], logging.ERROR)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    data_dir = Path(settings["data_dir"])
    worker = Worker(
        data_dir,
        hub_url=settings["hub"],
        name=settings["name"] or socket.gethostname(),
        transport=settings["transport"],
        ca_file=settings["ca_file"] or None,
        labels=parse_labels(settings["labels"]),
        encryption_mode=settings["encryption_mode"],
        registration_key=settings["registration_key"] or None,
    )
    install_services(settings["services"], worker)  # before any state is touched
    action = worker.prepare()

    async def start() -> WorkerExit:
        if action is StartupAction.REGISTER:
            await worker.register()
        return await worker.run()

    result = trio.run(run_until_signal, start, (signal.SIGINT, signal.SIGTERM), worker.stop)
    message = EXIT_MESSAGES.get(result)
    if message is not None:
        print(message.format(path=data_dir / "state.json"), file=sys.stderr)
    return EXIT_OK


def build_parser() -> Parser:
    parser = make_parser(
        "leapcore-worker",
        "Run a leapcore worker: dial out to a hub, keep the link open and answer "
        "end-to-end encrypted channels from the worker's owner.",
    )
    _run_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    run_parser = sub.add_parser(
        "run",
        help="run the worker (the default)",
        description="Register if needed, then keep a link to the hub until stopped "
        "(SIGINT/SIGTERM), deregistered or rejected.",
    )
    _run_flags(run_parser)
    run_parser.set_defaults(handler=run_worker)
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
    handler = getattr(args, "handler", None) or run_worker
    result: int = handler(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _dispatch, argv)
