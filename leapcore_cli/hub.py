"""``leapcore-hub``: the relay workers dial out to (``serve``, the default) and ``admin``.

``serve`` reads the hub settings (:func:`leapcore.store.config.hub_settings`: flags given >
``LEAPCORE_HUB_*`` > the config file > defaults), opens ``<data dir>/hub.db`` — creating it
when missing, with a note on stderr, since a new hub must be able to start; users are then
added with ``leapcore-hub admin user create`` — prints ``leapcore-hub listening on URL`` per
listener on stdout, and runs until SIGINT/SIGTERM, which calls :meth:`Hub.shutdown`
(``go_away`` to every link) and exits 0 within
:data:`~leapcore.proto.limits.STOP_GRACE` seconds (:mod:`leapcore.net.signals`).

``serve --solo`` (or ``leapcore-hub --solo``) runs the hub and its own auto-registered worker
in this one process (:class:`leapcore.solo.SoloHub`): the user ``solo`` and the worker are
made on the first start and reused later; the user's API token is saved as the local
credential for the hub's URL, and ``solo worker NAME (ID) online; fingerprint WORDS`` follows
the ``listening`` line once the worker is online.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import resource
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from leapcore.errors import ConfigError, LocalError
from leapcore.proto.limits import LIMIT_RANGES, HubLimits, describe
from leapcore.store.config import hub_settings, hub_store_location

# The hub itself (trio, the server, the cluster, solo mode) loads only for ``serve``: the
# admin commands need the store alone and start several times faster without it.
if TYPE_CHECKING:
    from leapcore.hub.cluster import ClusterOptions
    from leapcore.hub.server import Hub
    from leapcore.hub.web import WebOptions
    from leapcore.solo import SoloHub

from . import completion, hubadmin
from .common import EXIT_OK, Parser, make_parser, run
from .logs import setup_logging

#: Flags of the hub's budgets (:class:`leapcore.proto.limits.HubLimits`): setting -> help.
LIMIT_FLAGS: Final = {
    "signin_timeout": "seconds a new link has to send its first record (sign in)",
    "client_idle_timeout": "seconds a client link may send nothing before it is closed",
    "max_links_per_user": "signed-in client links per user",
    "max_links_per_address": "signed-in links per peer IP address",
    "max_channels_per_link": "channels (live or opening) one link may have opened",
    "max_channels_per_user": "channels (live or opening) one user's links may have opened",
    "max_channels_per_worker": "channels (live or opening) one worker may serve",
    "max_pending_opens_per_worker": "channel opens waiting for one worker at once",
    "max_link_queue_bytes": "bytes of control records queued for one link",
    "max_live_registration_keys": "unexpired registration keys per user",
    "registration_key_retention": "seconds an expired registration key is kept",
    "purge_interval": "seconds between purges of expired registration keys and old audit events",
    "audit_retention_days": "days an audit event is kept",
    "worker_token_lifetime_days": "days a new worker auth token lives",
    "api_token_lifetime_days": "days a new API token lives",
    "token_rotation_window_days": "days before expiry a connected worker gets a new token",
    "revocation_check_interval": "seconds between checks for revoked tokens and workers",
    "deregister_grace": "seconds a deregistering worker has to acknowledge",
    "handshake_timeout": "seconds from accept to a signed-in-ready link (TLS, HTTP, upgrade)",
    "max_connections_per_address": "live connections from one IP address, signed in or not",
    "max_header_list_size": "bytes of an HTTP request head / HTTP/2 header list",
    "max_concurrent_streams": "HTTP/2 streams open at once on one connection",
    "max_pending_output": "bytes an HTTP/2 connection may hold to send to a peer not reading",
    "max_control_frames": "control frames (pings, resets, ...) one connection may send a second",
    "max_pending_connections": "connections, from all addresses, not yet a link (signing in)",
}
#: ``serve`` flag -> setting key (only flags given explicitly override file and environment).
SERVE_FLAGS: Final = (
    "listen",
    "listen_unix",
    "data_dir",
    "store",
    "store_pool_size",
    "tls_cert",
    "tls_key",
    "web_listen",
    "public_url",
    "cluster_listen",
    "cluster_advertise",
    "cluster_secret_file",
    "node_name",
    "cluster_lease",
    "cluster_renew_interval",
    "log_level",
    "log_format",
    "max_message_size",
    *LIMIT_FLAGS,
)
#: Solo-mode flags (not hub settings: flags only).
SOLO_FLAGS: Final = ("solo", "solo_name", "solo_encryption_mode")
#: Destination prefix of the flags given before any subcommand (``leapcore-hub --listen …``).
TOP: Final = "top_"
#: The open-file limit asked for when the hard limit is unlimited.
DESCRIPTOR_CEILING: Final = 1 << 20

log = logging.getLogger("leapcore.hub.server")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); port 0 picks a free one."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(f"listen address {text!r} must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"listen address {text!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen address {text!r}: port must be 0-65535")
    return host, port


def _web_options(settings: dict[str, Any]) -> WebOptions | None:
    """The web page's listener (``web_listen``), None when off. Over TLS when the hub has a
    certificate; a warning when it listens beyond loopback without."""
    from leapcore.hub.web import WebOptions

    if not settings["web_listen"]:
        return None
    listen = parse_listen(settings["web_listen"])
    context = None
    if settings["tls_cert"]:
        # Its own context: the link listener's offers h2, and the page speaks HTTP/1.1 only.
        context = server_tls_context(settings["tls_cert"], settings["tls_key"])
        context.set_alpn_protocols(["http/1.1"])
    elif not _loopback(listen[0]):
        log.warning(
            "the web page listens on %s without TLS: API tokens and session cookies cross the "
            "network in clear; give --tls-cert/--tls-key, or put it behind a TLS proxy",
            settings["web_listen"],
        )
    return WebOptions(listen, context, settings["public_url"] or None)


def cluster_options(settings: dict[str, Any]) -> ClusterOptions | None:
    """The hub's cluster settings; None (a hub alone) when neither ``cluster_listen`` nor
    ``cluster_secret_file`` is set."""
    from leapcore.hub.cluster import ClusterOptions, read_secret_file

    if not settings["cluster_listen"] and not settings["cluster_secret_file"]:
        if settings["cluster_advertise"] or settings["node_name"]:
            raise ConfigError("cluster_advertise and node_name need cluster_secret_file")
        return None
    if not settings["cluster_secret_file"]:
        raise ConfigError("cluster_listen needs cluster_secret_file")
    listen = parse_listen(settings["cluster_listen"]) if settings["cluster_listen"] else None
    if settings["cluster_advertise"]:
        parse_listen(settings["cluster_advertise"])  # HOST:PORT, checked
    if len(settings["node_name"]) > 64 or not settings["node_name"].isprintable():
        raise ConfigError("node_name must be at most 64 printable characters")
    return ClusterOptions(
        listen=listen,
        advertise=settings["cluster_advertise"],
        secret=read_secret_file(settings["cluster_secret_file"]),
        node_name=settings["node_name"],
        lease=settings["cluster_lease"],
        renew_interval=settings["cluster_renew_interval"],
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert!r} / key {key!r}: {exc}") from None
    return context


async def serve_until_signal(
    hub: Hub,
    *,
    host: str,
    port: int,
    unix_path: str | None,
    ssl_context: ssl.SSLContext | None,
    signals: Sequence[int] | None = None,
    web: WebOptions | None = None,
) -> None:
    """Serve until a signal (``signals``: SIGINT and SIGTERM by default): the first one
    shuts the hub down gracefully (go-away to every link) with
    :data:`~leapcore.proto.limits.STOP_GRACE` seconds to finish; a second one cancels
    outright (:func:`leapcore.net.signals.run_until_signal`)."""
    import trio

    from leapcore.hub.server import url_of
    from leapcore.net.signals import DEFAULT_SIGNALS, run_until_signal

    async def main() -> None:
        # serve returns after shutdown: the run, and the watching, end with it.
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                functools.partial(
                    hub.serve,
                    host=host,
                    port=port,
                    unix_path=unix_path,
                    ssl_context=ssl_context,
                    web=web,
                )
            )
            scheme = "https" if ssl_context is not None else "http"
            print(f"leapcore-hub listening on {url_of(scheme, bound)}", flush=True)
            if unix_path:
                print(f"leapcore-hub listening on unix:{unix_path}", flush=True)
            if hub.web_bound is not None:
                print(f"leapcore-hub web page on {url_of(scheme, hub.web_bound)}", flush=True)
            if hub.cluster is not None:
                where = hub.cluster.advertise or "nowhere: no cluster_listen"
                print(
                    f"leapcore-hub cluster node {hub.cluster.node_id}, hub-to-hub links on {where}",
                    flush=True,
                )

    await run_until_signal(main, hub.shutdown, default=None, signals=signals or DEFAULT_SIGNALS)


async def solo_until_signal(
    solo: SoloHub,
    *,
    host: str,
    port: int,
    unix_path: str | None,
    signals: Sequence[int] | None = None,
) -> None:
    """:func:`serve_until_signal` for a solo hub (:meth:`SoloHub.run_until_signal`): the first
    signal stops the worker, then the hub; a second one cancels outright."""
    from leapcore.net.signals import DEFAULT_SIGNALS

    def listening(url: str) -> None:
        print(f"leapcore-hub listening on {url}", flush=True)
        if unix_path:
            print(f"leapcore-hub listening on unix:{unix_path}", flush=True)
        if solo.credentials is not None:
            print(
                f"leapcore-hub: solo user {solo.identity.user_name!r}: API token saved in "
                f"{solo.credentials} (for `leapcore remote ... --hub {url}`)",
                file=sys.stderr,
                flush=True,
            )

    async def online() -> None:
        ident = solo.identity
        print(
            f"solo worker {ident.worker_name} ({ident.worker_id}) online; "
            f"fingerprint {solo.fingerprint}",
            flush=True,
        )

    await solo.run_until_signal(
        host=host,
        port=port,
        unix_path=unix_path,
        listening=listening,
        online=online,
        signals=signals or DEFAULT_SIGNALS,
    )


def _flag(args: argparse.Namespace, key: str) -> Any:
    return getattr(args, key, getattr(args, TOP + key, None))


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit (a hub holds one
    descriptor per connection; many systems start daemons at 1024). Returns (before,
    after); unchanged where it cannot be raised."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = DESCRIPTOR_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def _log_descriptor_limit() -> None:
    before, after = raise_descriptor_limit()
    if after != before:
        logging.getLogger("leapcore.hub.server").info(
            "open-file limit raised from %d to %d (the hard limit)", before, after
        )


def serve(args: argparse.Namespace) -> int:
    """``leapcore-hub serve``: settings, the database, then the hub until a signal."""
    if _flag(args, "solo"):
        return serve_solo(args)
    import trio

    from leapcore.hub.gcpolicy import GcPolicy
    from leapcore.hub.server import Hub
    from leapcore.net.allocator import tune_allocator
    from leapcore.net.trioutil import single_exception

    for key in SOLO_FLAGS[1:]:
        if _flag(args, key) is not None:
            raise ConfigError(f"--{key.replace('_', '-')} needs --solo")
    given = {
        key: getattr(args, key, getattr(args, TOP + key, None))
        for key in (*SERVE_FLAGS, "config")
        if hasattr(args, key) or hasattr(args, TOP + key)
    }
    config = given.pop("config", None)
    settings, _ = hub_settings(flags=given, env=os.environ, home=Path.home(), config_path=config)
    host, port = parse_listen(settings["listen"])
    setup_logging(settings["log_level"], settings["log_format"])
    ssl_context = (
        server_tls_context(settings["tls_cert"], settings["tls_key"])
        if settings["tls_cert"]
        else None
    )
    web = _web_options(settings)
    _log_descriptor_limit()
    db = hub_store_location(settings)
    created = isinstance(db, Path) and not db.exists()
    hub = Hub(
        db,
        store_pool_size=settings["store_pool_size"],
        max_workers_per_user=settings["max_workers_per_user"],
        max_message_size=settings["max_message_size"],
        limits=HubLimits.from_settings(settings),
        cluster=cluster_options(settings),
        # This process is the hub and nothing else: bounded collector pauses.
        gc_policy=GcPolicy(),
    )
    if created and isinstance(db, Path):
        print(
            f"leapcore-hub: created a new, empty hub database {db}; add a user with "
            f"`leapcore-hub admin user create NAME --admin --data-dir {db.parent}`",
            file=sys.stderr,
            flush=True,
        )
    unix_path = settings["listen_unix"] or None
    tune_allocator()  # this process relays bulk data (leapcore.net.allocator)
    try:
        with single_exception():
            trio.run(
                functools.partial(
                    serve_until_signal,
                    hub,
                    host=host,
                    port=port,
                    unix_path=unix_path,
                    ssl_context=ssl_context,
                    web=web,
                )
            )
    except OSError as exc:
        where = f"{host}:{port}" + (f" or unix:{unix_path}" if unix_path else "")
        if web is not None:
            where += f" or {settings['web_listen']} (web page)"
        if settings["cluster_listen"]:
            where += f" or {settings['cluster_listen']} (hub-to-hub links)"
        raise LocalError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    print("leapcore-hub: stopped", file=sys.stderr)
    return EXIT_OK


def serve_solo(args: argparse.Namespace) -> int:
    """``leapcore-hub --solo``: the hub and its own worker in this process, until a signal."""
    import trio

    from leapcore.net.allocator import tune_allocator
    from leapcore.net.trioutil import single_exception
    from leapcore.solo import SoloHub

    given = {
        key: _flag(args, key)
        for key in (*SERVE_FLAGS, "config")
        if hasattr(args, key) or hasattr(args, TOP + key)
    }
    config = given.pop("config", None)
    settings, _ = hub_settings(flags=given, env=os.environ, home=Path.home(), config_path=config)
    if settings["tls_cert"] or settings["tls_key"]:
        raise ConfigError("--solo serves plain HTTP on loopback: drop --tls-cert / --tls-key")
    if settings["web_listen"]:
        raise ConfigError("--solo does not serve the web page: drop --web-listen")
    if settings["store"]:
        raise ConfigError("--solo keeps its state in its data directory: drop --store")
    host, port = parse_listen(settings["listen"])
    setup_logging(settings["log_level"], settings["log_format"])
    _log_descriptor_limit()
    solo = SoloHub(
        Path(settings["data_dir"]),
        name=_flag(args, "solo_name"),
        encryption_mode=_flag(args, "solo_encryption_mode") or "post-quantum",
        max_workers_per_user=settings["max_workers_per_user"],
        max_message_size=settings["max_message_size"],
        limits=HubLimits.from_settings(settings),
    )
    ident = solo.identity
    if ident.registered:
        print(
            f"leapcore-hub: solo mode: registered worker {ident.worker_name} "
            f"({ident.worker_id}) for user {ident.user_name!r} in {solo.data_dir}",
            file=sys.stderr,
            flush=True,
        )
    unix_path = settings["listen_unix"] or None
    tune_allocator()  # this process relays bulk data (leapcore.net.allocator)
    try:
        with single_exception():
            trio.run(
                functools.partial(
                    solo_until_signal, solo, host=host, port=port, unix_path=unix_path
                )
            )
    except OSError as exc:
        where = f"{host}:{port}" + (f" or unix:{unix_path}" if unix_path else "")
        raise LocalError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    print("leapcore-hub: stopped", file=sys.stderr)
    return EXIT_OK


def _serve_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The daemon's flags; SUPPRESS so that an absent flag never hides file or environment.
    Before any subcommand their destinations carry ``prefix``: ``admin`` has flags of the same
    names, and must not silently take (or drop) a ``--data-dir`` meant for ``serve``."""
    hide = argparse.SUPPRESS

    def add(flag: str, **kw: Any) -> None:
        parser.add_argument(flag, dest=prefix + flag[2:].replace("-", "_"), **kw)

    add(
        "--listen",
        metavar="HOST:PORT",
        default=hide,
        help="TCP address to listen on (default 127.0.0.1:4327; port 0 picks a free port)",
    )
    add("--listen-unix", metavar="PATH", default=hide, help="also listen on this Unix socket")
    add(
        "--web-listen",
        metavar="HOST:PORT",
        default=hide,
        help="serve the read-only web page on this TCP address (default: off; keep it on "
        "loopback unless the hub has --tls-cert)",
    )
    add(
        "--public-url",
        metavar="URL",
        default=hide,
        help="the hub URL the web page's worker command names (default: the --listen URL)",
    )
    add(
        "--cluster-listen",
        metavar="HOST:PORT",
        default=hide,
        help="accept hub-to-hub links from the other hubs sharing this database here "
        "(default: off; needs --cluster-secret-file; never open it to clients)",
    )
    add(
        "--cluster-advertise",
        metavar="HOST:PORT",
        default=hide,
        help="the address other hubs dial for this hub (default: the --cluster-listen address)",
    )
    add(
        "--cluster-secret-file",
        metavar="FILE",
        default=hide,
        help="a 0600 file holding the secret every hub of the cluster shares",
    )
    add(
        "--node-name",
        metavar="NAME",
        default=hide,
        help="this hub's node id in the cluster (default: random at each start)",
    )
    for key, text in (
        ("cluster_lease", "seconds a hub's lease and its workers' presence last (default 15)"),
        ("cluster_renew_interval", "seconds between a hub's lease renewals (default 5)"),
    ):
        add("--" + key.replace("_", "-"), metavar="SECONDS", type=float, default=hide, help=text)
    add(
        "--data-dir",
        metavar="DIR",
        default=hide,
        help="the directory holding hub.db (created if missing)",
    )
    add(
        "--store",
        metavar="PATH_OR_URL",
        default=hide,
        help="where the hub's state is: postgresql://USER@HOST/DB (several hubs may share "
        "it), or an SQLite file (default: hub.db in the data directory)",
    )
    add(
        "--store-pool-size",
        metavar="N",
        type=int,
        default=hide,
        help="at most N connections to PostgreSQL (default 8; 1 .. 100)",
    )
    add("--tls-cert", metavar="FILE", default=hide, help="PEM certificate chain (with --tls-key)")
    add("--tls-key", metavar="FILE", default=hide, help="PEM private key (with --tls-cert)")
    add("--log-level", metavar="LEVEL", default=hide, help="debug, info (default), warn, error")
    add(
        "--log-format",
        choices=("text", "json"),
        default=hide,
        help="text (default) or json: one JSON object per line",
    )
    add(
        "--max-message-size",
        metavar="BYTES",
        type=int,
        default=hide,
        help="largest channel message forwarded, 65519 .. 67108864 (default 16777216)",
    )
    defaults = HubLimits()
    for key, text in LIMIT_FLAGS.items():
        kind, low, high = LIMIT_RANGES[key]
        add(
            "--" + key.replace("_", "-"),
            metavar="SECONDS" if kind is float else "N",
            type=kind,
            default=hide,
            help=f"{text} (default {describe(getattr(defaults, key))}; "
            f"{describe(low)} .. {describe(high)})",
        )
    add(
        "--config",
        metavar="FILE",
        type=Path,
        default=hide,
        help="hub config file (default: ~/.config/leapcore/hub/hub.toml if it exists)",
    )
    add(
        "--solo",
        action="store_true",
        default=hide,
        help="also run an auto-registered worker in this process, for user 'solo' (a "
        "one-machine setup; its token is saved for `leapcore remote`)",
    )
    add(
        "--solo-name",
        metavar="NAME",
        default=hide,
        help="the solo worker's name on its first start (default: the host name)",
    )
    add(
        "--solo-encryption-mode",
        metavar="MODE",
        choices=("post-quantum", "classic"),
        default=hide,
        help="the solo worker's handshake: post-quantum (default) or classic",
    )


def build_parser() -> Parser:
    parser = make_parser(
        "leapcore-hub",
        "Run a leapcore hub: the relay that workers dial out to and clients reach them "
        "through. It routes end-to-end encrypted channels and never sees their content.",
    )
    _serve_flags(parser, TOP)
    parser.set_defaults(top_error=parser.error)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    serve_parser = sub.add_parser(
        "serve",
        help="run the hub (the default)",
        description="Listen for workers and clients until SIGINT/SIGTERM, then tell every "
        "link to come back later and exit.",
    )
    _serve_flags(serve_parser)
    serve_parser.set_defaults(handler=serve)
    hubadmin.add_parser(sub)
    completion.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    handler: Any = getattr(args, "handler", None) or serve
    if handler is not serve:
        early = sorted(k[len(TOP) :] for k in vars(args) if k.startswith(TOP) and k != "top_error")
        if early:
            flags = ", ".join("--" + k.replace("_", "-") for k in early)
            args.top_error(f"{flags} before {args.command!r} applies to serve only; give it after")
    result: int = handler(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _dispatch, argv)
