"""``leapcore remote tunnel forward|socks``: local listeners that reach through a worker.

``forward --worker W [BIND_ADDR:]BIND_PORT:HOST:PORT ...`` (``ssh -L``'s form, repeatable,
IPv6 in brackets) and ``socks --worker W [[BIND_ADDR:]PORT]`` (default 127.0.0.1:1080)
open one end-to-end channel to the worker (keys checked against the pin first), bind
their listeners (loopback only unless ``--allow-remote-bind``), print what they bound and
run until SIGINT/SIGTERM (exit 0). Each accepted connection is one TCP connection dialled
from the worker; a broken channel is re-opened for the next connection (a worker that is
offline fails connections until it is back). The link to the hub ending ends the command:
listeners and connections closed, ``error: the link to the hub was lost (...)`` on stderr,
exit 7 (unavailable).

Output: a line per listener, or with ``--json`` one JSON object per line (flushed as soon
as the listener is up, so a script can read the port it got for port 0):
``{"type": "port_forward"|"socks5", "worker_id", "bind_addr", "bind_port",
"target_addr"?, "target_port"?}``. ``-v`` logs each connection on stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import trio

from leapcore.errors import ConfigError, LeapcoreError, LinkClosed, LocalError
from leapcore.net.allocator import tune_allocator
from leapcore.net.signals import run_until_signal
from leapcore.peer.hubsession import HubSession
from leapcore.peer.socks5 import serve_socks5
from leapcore.peer.tunnel import ChannelPool, channel_pool, forward_local
from leapcore.proto.bindaddr import ForwardSpec, parse_forward_spec, parse_socks_spec

from .common import EXIT_OK, Parser, exit_code_for


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _record(worker_id: str, spec: ForwardSpec, bound: tuple[str, int]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "socks5" if spec.target_host is None else "port_forward",
        "worker_id": worker_id,
        "bind_addr": bound[0],
        "bind_port": bound[1],
    }
    if spec.target_host is not None:
        doc["target_addr"] = spec.target_host
        doc["target_port"] = spec.target_port
    return doc


def _line(doc: dict[str, Any]) -> str:
    local = _where(doc["bind_addr"], doc["bind_port"])
    if doc["type"] == "socks5":
        return f"SOCKS5 proxy on {local} through worker {doc['worker_id']}"
    target = _where(doc["target_addr"], doc["target_port"])
    return f"forwarding {local} -> {target} through worker {doc['worker_id']}"


def _verbose(args: argparse.Namespace) -> None:
    if args.verbose:
        logger = logging.getLogger("leapcore.peer.tunnel")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


async def _start(nursery: trio.Nursery, pool: ChannelPool, spec: ForwardSpec) -> Any:
    bind = (spec.bind_host, spec.bind_port)
    try:
        if spec.target_host is None:
            return await nursery.start(serve_socks5, pool, bind)
        assert spec.target_port is not None
        target = (spec.target_host, spec.target_port)
        return await nursery.start(forward_local, pool, bind, target)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise LocalError(f"cannot listen on {_where(*bind)}: {reason}") from None


def _serve(args: argparse.Namespace, specs: list[ForwardSpec]) -> int:
    from .remote import _channel_verb, _resolved, _timeout, worker_ref

    ref = worker_ref(args)
    timeout = _timeout(args)
    _verbose(args)
    tune_allocator()  # this process relays bulk data (leapcore.net.allocator)

    async def body(session: HubSession) -> int:
        worker_id = await _resolved(session, ref)

        async def serve() -> int:
            async with channel_pool(session, worker_id, timeout=timeout) as pool:
                await pool.channel()  # a refusal or a key mismatch ends the command now
                async with trio.open_nursery() as nursery:
                    for spec in specs:
                        bound = await _start(nursery, pool, spec)
                        doc = _record(worker_id, spec, bound)
                        if args.json:
                            print(json.dumps(doc, sort_keys=True), flush=True)
                        else:
                            print(_line(doc), flush=True)
                    if not args.json:
                        print("press Ctrl-C to stop", file=sys.stderr, flush=True)
                    # The worker going away only fails connections until it is back; the
                    # hub link ending ends the command (the listeners and connections close).
                    await session.ended.wait()
                    nursery.cancel_scope.cancel()
            return _link_lost(args, session.failure)

        result: int = await run_until_signal(serve, default=EXIT_OK)
        return result

    return _channel_verb(args, body)


def _link_lost(args: argparse.Namespace, failure: LeapcoreError | None) -> int:
    """Report the hub link's end (``error: ...`` on stderr; with ``--json`` also a JSON
    ``error`` line on stdout) and return its exit code: 7 (unavailable) for a lost link or
    a hub going away."""
    if failure is None:
        failure = LinkClosed("the link to the hub is closed")
    message = f"the link to the hub was lost ({failure.message}); the tunnels are closed"
    if args.json:
        doc = {"error": {"code": failure.code, "message": message}}
        print(json.dumps(doc, sort_keys=True), flush=True)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return exit_code_for(failure)


def _hinted(parse: Callable[[], ForwardSpec]) -> ForwardSpec:
    try:
        return parse()
    except ConfigError as exc:
        if "loopback" not in exc.message:
            raise
        raise ConfigError(f"{exc.message} (--allow-remote-bind allows it)") from None


def forward(args: argparse.Namespace) -> int:
    allow = args.allow_remote_bind
    specs = [
        _hinted(functools.partial(parse_forward_spec, s, allow_remote=allow)) for s in args.spec
    ]
    return _serve(args, specs)


def socks(args: argparse.Namespace) -> int:
    allow = args.allow_remote_bind
    return _serve(args, [_hinted(lambda: parse_socks_spec(args.spec, allow_remote=allow))])


def _common(
    p: argparse.ArgumentParser, add_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    add_flags(p)
    p.add_argument(
        "--allow-remote-bind",
        action="store_true",
        help="allow a bind address that is not loopback (anyone who can reach it uses the "
        "worker's network as you: the listener is unauthenticated)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each connection on stderr")


def add_verbs(
    remote_sub: Any,
    session_flags: Callable[[argparse.ArgumentParser], None],
    timeout_flag: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``remote tunnel forward|socks`` under ``remote_sub``."""

    def flags(p: argparse.ArgumentParser) -> None:
        session_flags(p)
        timeout_flag(p)

    tunnel = remote_sub.add_parser(
        "tunnel", help="port forwarding and a SOCKS5 proxy through a worker"
    )
    sub = tunnel.add_subparsers(
        dest="tunnel_command", metavar="VERB", required=True, parser_class=Parser
    )
    p = sub.add_parser(
        "forward",
        help="forward local ports to addresses the worker reaches (like ssh -L)",
        description="Listen on BIND_ADDR:BIND_PORT (default address 127.0.0.1; port 0: a "
        "free port) and connect each connection to HOST:PORT from the worker, end-to-end "
        "encrypted. Repeat SPEC for several forwards. Runs until Ctrl-C.",
    )
    _common(p, flags)
    p.add_argument(
        "spec",
        nargs="+",
        metavar="[BIND_ADDR:]BIND_PORT:HOST:PORT",
        help="what to forward (IPv6 addresses in brackets)",
    )
    p.set_defaults(handler=forward, parser_error=p.error)

    p = sub.add_parser(
        "socks",
        help="a local SOCKS5 proxy whose connections leave from the worker",
        description="Run a SOCKS5 proxy (CONNECT, no authentication) on BIND_ADDR:PORT "
        "(default 127.0.0.1:1080; port 0: a free port); each connection is dialled from "
        "the worker, names resolved there. Runs until Ctrl-C.",
    )
    _common(p, flags)
    p.add_argument(
        "spec",
        nargs="?",
        metavar="[BIND_ADDR:]PORT",
        help="where to listen (default 127.0.0.1:1080; IPv6 addresses in brackets)",
    )
    p.set_defaults(handler=socks, parser_error=p.error)
