"""``leapcore-worker``: the daemon that keeps one outbound link to a hub."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from leapcore.errors import ConfigError, LocalError
from leapcore.net.allocator import tune_allocator
from leapcore.net.signals import call_on_signal, run_until_signal
from leapcore.proto.tunnel_policy import TunnelPolicy
from leapcore.store.config import LOG_LEVELS, parse_pairs, worker_settings
from leapcore.store.paths import cross_worker_pins_path
from leapcore.store.pinstore import PinStore
from leapcore.store.policyfile import load_policy
from leapcore.store.workerstate import StartupAction
from leapcore.worker.builtin_services import install_services
from leapcore.worker.daemon import CROSS_WORKER_HINT, Worker, WorkerExit, parse_labels
from leapcore.worker.metrics import parse_metrics_listen, serve_worker_metrics

from . import completion, pincmd, service, workerid
from .common import EXIT_OK, Parser, add_json_flag, emit_json, make_parser, run
from .logs import setup_logging


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
    "log_format",
    "services",
    "workspace_root",
    "policy",
    "concurrency",
    "audit_log",
    "metrics_listen",
)
EXIT_MESSAGES = {
    WorkerExit.DEREGISTERED: "leapcore-worker: deregistered by the hub; identity retired, "
    "kept as {kept}",
    WorkerExit.WIPED: "leapcore-worker: the hub this worker registered with deleted it; "
    "identity retired, kept as {kept}",
}


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """The daemon's flags; SUPPRESS so that an absent flag never hides file or environment."""
    add = parser.add_argument
    hide = argparse.SUPPRESS
    add(
        "--hub",
        metavar="URL",
        action="append",
        default=hide,
        help="the hub's URL (http://, https:// or unix:); repeat it (or separate URLs with "
        "commas) for several hubs of one deployment, tried in order, at most 16; no default: "
        "required to register, and a registered worker without it dials the hub it "
        "registered with (hub.json)",
    )
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
        "--log-format",
        choices=("text", "json"),
        default=hide,
        help="text (default) or json: one JSON object per line",
    )
    add(
        "--services",
        metavar="MODULE:CALLABLE",
        action="append",
        default=hide,
        help="import MODULE and call CALLABLE(services, worker) at start-up to add channel "
        "methods (repeatable; replaces the config file's and environment's list)",
    )
    add(
        "--workspace-root",
        metavar="DIR",
        default=hide,
        help="where workspaces (git clones and worktrees) live (default: DATA_DIR/workspaces)",
    )
    add(
        "--concurrency",
        metavar="CAP=N,...",
        type=_concurrency_flag,
        default=hide,
        help="calls in progress at once per capability, e.g. exec=8,pty=4 (one more is "
        "refused busy; default: no limit)",
    )
    add(
        "--audit-log",
        metavar="FILE",
        default=hide,
        help="where every call is recorded, one JSON line each (default: DATA_DIR/audit.log; "
        "off: nowhere)",
    )
    add(
        "--policy",
        metavar="FILE",
        default=hide,
        help="what the owner may make this worker do (default: DATA_DIR/policy.toml if it "
        "exists; none: everything); kill -HUP reloads it",
    )
    add(
        "--metrics-listen",
        metavar="HOST:PORT",
        default=hide,
        help="serve the worker's own /metrics and /healthz on this loopback address (off by "
        "default; port 0 picks a free port; unauthenticated)",
    )
    add(
        "--metrics-allow-remote",
        action="store_true",
        default=hide,
        help="let --metrics-listen bind a non-loopback address (anyone who can reach it reads "
        "the metrics)",
    )
    add(
        "--config",
        metavar="FILE",
        type=Path,
        default=hide,
        help="worker config file (default: ~/.config/leapcore/worker/worker.toml if it exists)",
    )


def _concurrency_flag(text: str) -> dict[str, int]:
    try:
        return parse_pairs("--concurrency", text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_worker(args: argparse.Namespace) -> int:
    """``leapcore-worker run``: settings, startup checks, then the daemon until it ends."""
    flags = {key: getattr(args, key) for key in RUN_FLAGS if hasattr(args, key)}
    settings, _ = worker_settings(
        flags=flags, env=os.environ, home=Path.home(), config_path=getattr(args, "config", None)
    )
    if settings["log_level"] not in LOG_LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}")
    setup_logging(settings["log_level"], settings["log_format"])
    metrics_at = None
    allow_remote = getattr(args, "metrics_allow_remote", False)
    if settings["metrics_listen"].strip():
        metrics_at = parse_metrics_listen(settings["metrics_listen"], allow_remote=allow_remote)
    data_dir = Path(settings["data_dir"])
    worker = Worker(
        data_dir,
        hub_urls=settings["hub"],  # empty: hub.json's (a registered worker only)
        name=settings["name"] or socket.gethostname(),
        transport=settings["transport"],
        ca_file=settings["ca_file"] or None,
        labels=parse_labels(settings["labels"]),
        encryption_mode=settings["encryption_mode"],
        registration_key=settings["registration_key"] or None,
        max_message_size=settings["max_message_size"],
        max_incomplete_chunked=settings["max_incomplete_chunked"],
        max_channels=settings["max_channels"],
        max_channel_bytes=settings["max_channel_bytes"] or None,
        tunnel_policy=TunnelPolicy.parse(settings["tunnel_allow"], settings["tunnel_deny"]),
        workspace_root=settings["workspace_root"] or None,
        policy_file=settings["policy"] or None,
        concurrency=settings["concurrency"],
        audit_log=settings["audit_log"] or None,
        audit_max_bytes=settings["audit_max_bytes"],
        audit_retention_days=settings["audit_retention_days"],
    )
    install_services(settings["services"], worker)  # before any state is touched
    action = worker.prepare()

    async def start() -> WorkerExit:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_on_signal, signal.SIGHUP, worker.reload_policy)
            if metrics_at is not None:
                try:
                    host, port = await nursery.start(
                        functools.partial(serve_worker_metrics, allow_remote=allow_remote),
                        worker,
                        *metrics_at,
                    )
                except OSError as exc:
                    where = "{}:{}".format(*metrics_at)
                    raise LocalError(
                        f"cannot listen on {where} (metrics_listen): {exc.strerror or exc}"
                    ) from None
                shown = f"[{host}]" if ":" in host else host
                print(f"leapcore-worker metrics on http://{shown}:{port}/metrics", flush=True)
            if action is StartupAction.REGISTER:
                await worker.register()
            result = await worker.run()
            nursery.cancel_scope.cancel()
        return result

    tune_allocator()  # this process relays bulk data (leapcore.net.allocator)
    result = trio.run(
        functools.partial(run_until_signal, start, worker.stop, default=WorkerExit.STOPPED)
    )
    message = EXIT_MESSAGES.get(result)
    if message is not None:
        kept = ", ".join(str(path) for path in worker.retired) or "nothing (no files were left)"
        print(message.format(kept=kept), file=sys.stderr)
    return EXIT_OK


def check_policy(args: argparse.Namespace) -> int:
    """``leapcore-worker policy check FILE``."""
    summary = load_policy(args.file, required=True).summary()
    if args.json:
        emit_json({"ok": True, "policy": summary})
        return EXIT_OK
    print(f"{args.file}: ok")
    for table in ("exec", "files", "tunnel", "services"):
        rules = summary[table]
        if rules is None:
            print(f"  [{table}] not set (the worker's tunnel_allow / tunnel_deny settings)")
            continue
        for key, value in rules.items():
            shown = "not set" if value is None else json.dumps(value)
            print(f"  {table}.{key} = {shown}")
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
    policy = sub.add_parser(
        "policy",
        help="check a policy file",
        description="Work with the worker's policy file (policy.toml).",
    )
    policy_verbs = policy.add_subparsers(dest="policy_verb", metavar="VERB", required=True)
    check = policy_verbs.add_parser(
        "check",
        help="validate a policy file and show what it says",
        description="Read FILE as the worker would (at start-up and on kill -HUP) and show "
        "its rules; exit 2 with the problem when the worker would refuse it.",
    )
    check.add_argument("file", metavar="FILE", type=Path, help="the policy file")
    add_json_flag(check)
    check.set_defaults(handler=check_policy)
    workerid.add_parser(sub, add_location=_location_flags)
    service.add_parser(sub)
    completion.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None) or run_worker
    result: int = handler(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _dispatch, argv)
