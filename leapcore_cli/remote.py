"""``leapcore``: the client-side command (``leapcore remote …``) and ``leapcore demo``.

Hub verbs (they sign in to the hub with an API token; see docs/cli.md):

* ``remote login`` checks a token against the hub and saves ``{"hub", "token"}`` in
  ``<config dir>/<hub host>.json`` (0600 in a 0700 directory);
* ``remote worker list``, ``remote worker reg-key create``, ``remote worker deregister``;
* ``remote worker info`` and ``remote worker ping`` open an end-to-end channel to a worker
  (its keys checked against this client's pin for it first: a mismatch exits 6, never
  prompts).

JSON schema (``--json``; stable):

* ``login`` → ``{"hub": URL, "user": {"id", "name"}, "credentials": PATH}``
* ``worker list`` → ``{"workers": [{"id", "name", "version", "labels", "online",
  "last_seen_at"?, "encryption_mode"?, "fingerprint"?}, …]}``
* ``worker reg-key create`` → ``{"registration_key", "expires_at", "command"}`` printed as
  soon as the key exists (the wait's outcome is the exit status, with a line on stderr)
* ``worker deregister`` → ``{"worker_id", "status": "deregistering", "notified"}``
* ``worker info`` → ``{"worker_id", "fingerprint", "info": {"name", "worker_id", "version",
  "commit", "os", "arch", "python", "encryption_mode", "labels", "capabilities"}}``
* ``worker ping`` → ``{"worker_id", "count", "rtt_ms": [...], "min_ms", "median_ms",
  "max_ms"}`` (milliseconds, 3 decimals)
* a key mismatch → ``{"error": {"code": "key_mismatch", "message", "expected_fingerprint",
  "presented_fingerprint"}}`` (exit 6)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import trio

from leapcore.crypto.keys import PublicKeyBundle
from leapcore.errors import FailedPrecondition, KeyMismatch, LeapcoreError, RemoteProtocolError
from leapcore.net.dial import TRANSPORTS
from leapcore.net.trioutil import single_exception
from leapcore.peer.channel import CALL_TIMEOUT
from leapcore.peer.connect import default_pin_store, load_token, save_credentials
from leapcore.peer.hubsession import HubSession, hub_session
from leapcore.proto.limits import REG_KEY_EXTEND_WINDOW_MS
from leapcore.store.pinstore import PinStore

from . import demo, pincmd
from .common import (
    EXIT_ERROR,
    EXIT_KEY_MISMATCH,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    Parser,
    emit_json,
    exit_code_for,
    make_parser,
    run,
)
from .hubadmin import human_time, json_time, safe

#: Exit status of ``reg-key create`` when interrupted (the key is revoked first).
EXIT_INTERRUPTED: Final = 130
#: Seconds between ``regkey.state`` polls while ``reg-key create`` waits.
POLL_INTERVAL: Final = 2.0
#: Seconds the revocation of an interrupted ``reg-key create`` may take.
REVOKE_TIMEOUT: Final = 5.0
#: Round trips ``worker ping`` makes by default.
PING_COUNT: Final = 4


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
    return default_pin_store(hub_url(args))


# -- hub credentials -------------------------------------------------------------------------


def api_token(args: argparse.Namespace, hub: str) -> str:
    """``--token`` > ``$LEAPCORE_TOKEN`` > the credentials saved by ``remote login``."""
    token: str | None = args.token or os.environ.get("LEAPCORE_TOKEN") or load_token(hub)
    if not token:
        args.parser_error(
            f"no API token for {hub}: run `leapcore remote login --hub {shlex.quote(hub)} "
            "--token TOKEN` (or pass --token, or set LEAPCORE_TOKEN)"
        )
    assert token is not None
    return token


def _session_flags(
    parser: argparse.ArgumentParser, *, json_flag: bool = True, worker_id: bool = False
) -> None:
    _hub_flag(parser)
    parser.add_argument(
        "--token", metavar="TOKEN", help="API token (default: $LEAPCORE_TOKEN, then `login`'s)"
    )
    parser.add_argument(
        "--transport", default="websocket", choices=TRANSPORTS, help="websocket (default) or h2"
    )
    parser.add_argument("--ca-file", metavar="FILE", help="trust only this CA for an https:// hub")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON document")
    if worker_id:
        parser.add_argument(
            "--worker-id", metavar="ID", help="the worker's id (default: $LEAPCORE_WORKER_ID)"
        )


def _timeout_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=CALL_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on the channel open, or on any answer, after this long "
        f"(default {CALL_TIMEOUT:g}; exit {EXIT_UNAVAILABLE})",
    )


def _timeout(args: argparse.Namespace) -> float:
    timeout: float = args.timeout
    if not 0 < timeout <= 3600:
        args.parser_error("--timeout must be more than 0 and at most 3600 seconds")
    return timeout


def _with_session(
    args: argparse.Namespace,
    body: Callable[[HubSession], Awaitable[int]],
    token: str | None = None,
    *,
    pins: bool = False,
) -> int:
    """Sign in and run ``body``; with ``pins``, the session checks worker keys against this
    client's pin store for the hub (:func:`client_pin_store`) when it opens channels."""
    hub = hub_url(args)
    secret = token if token is not None else api_token(args, hub)
    store = client_pin_store(args) if pins else None

    async def main() -> int:
        with single_exception():
            async with hub_session(
                hub, secret, transport=args.transport, ca_file=args.ca_file, pins=store
            ) as session:
                return await body(session)

    result: int = trio.run(main)
    return result


# -- login -------------------------------------------------------------------------------------


def login(args: argparse.Namespace) -> int:
    hub = hub_url(args)
    token: str | None = args.token or os.environ.get("LEAPCORE_TOKEN")
    if not token:
        args.parser_error("--token is required (or set LEAPCORE_TOKEN)")
    assert token is not None

    async def body(session: HubSession) -> int:
        path = save_credentials(hub, token)
        user = {"id": session.user_id, "name": session.user_name}
        if args.json:
            emit_json({"hub": hub, "user": user, "credentials": str(path)})
        else:
            print(f"logged in to {hub} as {safe(session.user_name)} (id {session.user_id})")
            print(f"credentials saved in {path}")
        return EXIT_OK

    return _with_session(args, body, token)


# -- workers -----------------------------------------------------------------------------------


def remote_worker_json(view: dict[str, Any]) -> dict[str, Any]:
    """A ``workers.list`` entry with its time in RFC 3339 and absent values omitted."""
    doc = {k: v for k, v in view.items() if v is not None and k != "last_seen_at"}
    if view.get("last_seen_at") is not None:
        doc["last_seen_at"] = json_time(view["last_seen_at"])
    return doc


def worker_list(args: argparse.Namespace) -> int:
    async def body(session: HubSession) -> int:
        workers = await session.list_workers()
        if args.json:
            emit_json({"workers": [remote_worker_json(w) for w in workers]})
            return EXIT_OK
        if not workers:
            print(f"{safe(session.user_name)} has no registered workers")
            return EXIT_OK
        rows = [
            (
                safe(w["name"]),
                w["id"],
                "online" if w["online"] else "offline",
                human_time(w.get("last_seen_at"), "never"),
                w.get("encryption_mode") or "-",
            )
            for w in workers
        ]
        headers = ("NAME", "ID", "STATE", "LAST SEEN", "MODE")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        for line in (headers, *rows):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        return EXIT_OK

    return _with_session(args, body)


def _worker_id(args: argparse.Namespace) -> str:
    worker_id: str | None = args.worker_id or os.environ.get("LEAPCORE_WORKER_ID")
    if not worker_id:
        args.parser_error("--worker-id is required (or set LEAPCORE_WORKER_ID)")
    assert worker_id is not None
    return worker_id


def worker_deregister(args: argparse.Namespace) -> int:
    worker_id = _worker_id(args)

    async def body(session: HubSession) -> int:
        result = await session.deregister_worker(worker_id)
        if args.json:
            emit_json(result)
        elif result.get("notified"):
            print(f"worker {worker_id} is deregistering: it was online and has been told")
        else:
            print(f"worker {worker_id} is deregistering: it is told when it next connects")
        return EXIT_OK

    return _with_session(args, body)


# -- channels: info and ping ------------------------------------------------------------------


def info_lines(worker_id: str, fingerprint: str, info: dict[str, Any]) -> list[str]:
    """``worker info``'s human output: aligned ``key: value`` lines."""
    labels = info.get("labels") or {}
    rows: list[tuple[str, str]] = [("worker_id", worker_id), ("fingerprint", fingerprint)]
    for key in ("name", "version", "commit", "os", "arch", "python", "encryption_mode"):
        value = info.get(key)
        rows.append((key, "-" if value is None else safe(str(value))))
    rows.append(("labels", ", ".join(f"{safe(k)}={safe(v)}" for k, v in labels.items()) or "-"))
    rows.append(("capabilities", ", ".join(safe(c) for c in info.get("capabilities", [])) or "-"))
    known = {key for key, _ in rows}
    rows += [(safe(k), safe(json.dumps(v))) for k, v in sorted(info.items()) if k not in known]
    width = max(len(key) for key, _ in rows) + 1
    return [f"{key + ':':<{width}} {value}" for key, value in rows]


def ping_summary(worker_id: str, rtts: list[float]) -> dict[str, Any]:
    """``worker ping``'s JSON document, from round trips in seconds."""
    ms = [round(rtt * 1000, 3) for rtt in rtts]
    return {
        "worker_id": worker_id,
        "count": len(ms),
        "rtt_ms": ms,
        "min_ms": min(ms),
        "median_ms": round(statistics.median(ms), 3),
        "max_ms": max(ms),
    }


def summary_line(doc: dict[str, Any]) -> str:
    return (
        f"{doc['count']} round trips: min/median/max = "
        f"{doc['min_ms']:.3f}/{doc['median_ms']:.3f}/{doc['max_ms']:.3f} ms"
    )


async def fetch_info(
    session: HubSession, worker_id: str, *, timeout: float = CALL_TIMEOUT
) -> tuple[str, dict[str, Any]]:
    """(fingerprint of the pinned keys, the worker's ``info`` document) over a new channel;
    the open and the call each have ``timeout`` seconds (:class:`DeadlineExceeded`)."""
    async with session.open_channel(worker_id, timeout=timeout) as channel:
        raw = await channel.call("info", timeout=timeout)
    try:
        info = json.loads(raw)
    except ValueError:
        raise RemoteProtocolError(f"worker {worker_id} answered info with invalid JSON") from None
    if not isinstance(info, dict):
        raise RemoteProtocolError(f"worker {worker_id} answered info with a non-object")
    return await _fingerprint(session, worker_id), info


async def _fingerprint(session: HubSession, worker_id: str) -> str:
    pin = session.pins.get(worker_id) if session.pins is not None else None
    if pin is not None:
        return pin.fingerprint
    keys = await session.worker_keys(worker_id)
    fields = ("public_key", "mlkem_public_key", "slhdsa_public_key")
    return PublicKeyBundle.from_json({k: keys[k] for k in fields}).fingerprint


async def measure_pings(
    session: HubSession,
    worker_id: str,
    count: int,
    each: Callable[[int, float], None],
    *,
    timeout: float = CALL_TIMEOUT,
) -> list[float]:
    """``count`` end-to-end Ping round trips (seconds) on one new channel; ``each(seq, rtt)``
    is called after every one. The open and each Ping have ``timeout`` seconds."""
    rtts: list[float] = []
    async with session.open_channel(worker_id, timeout=timeout) as channel:
        for seq in range(1, count + 1):
            start = time.perf_counter()
            await channel.ping(timeout=timeout)
            rtts.append(time.perf_counter() - start)
            each(seq, rtts[-1])
    return rtts


def _channel_verb(args: argparse.Namespace, body: Callable[[HubSession], Awaitable[int]]) -> int:
    """:func:`_with_session` with pinning, and a key mismatch reported in full (exit 6)."""
    try:
        return _with_session(args, body, pins=True)
    except KeyMismatch as exc:
        if args.json:
            emit_json(
                {
                    "error": {
                        "code": exc.code,
                        "message": exc.message,
                        "expected_fingerprint": exc.expected,
                        "presented_fingerprint": exc.actual,
                    }
                }
            )
        print(exc.message, file=sys.stderr)
        print(
            f"pinned fingerprint {exc.expected}, presented fingerprint {exc.actual}",
            file=sys.stderr,
        )
        return EXIT_KEY_MISMATCH


def worker_info(args: argparse.Namespace) -> int:
    worker_id = _worker_id(args)

    async def body(session: HubSession) -> int:
        fingerprint, info = await fetch_info(session, worker_id, timeout=_timeout(args))
        if args.json:
            emit_json({"worker_id": worker_id, "fingerprint": fingerprint, "info": info})
        else:
            for line in info_lines(worker_id, fingerprint, info):
                print(line)
        return EXIT_OK

    return _channel_verb(args, body)


def worker_ping(args: argparse.Namespace) -> int:
    worker_id = _worker_id(args)
    count: int = args.count
    if count < 1:
        args.parser_error("--count must be at least 1")

    def each(seq: int, rtt: float) -> None:
        if args.json:
            return
        if seq == 1:  # the channel is open (and the keys matched their pin)
            print(f"ping worker {worker_id}: {count} end-to-end round trips", flush=True)
        print(f"seq={seq} rtt={rtt * 1000:.3f} ms", flush=True)

    async def body(session: HubSession) -> int:
        rtts = await measure_pings(session, worker_id, count, each, timeout=_timeout(args))
        doc = ping_summary(worker_id, rtts)
        if args.json:
            emit_json(doc)
        else:
            print(summary_line(doc))
        return EXIT_OK

    return _channel_verb(args, body)


# -- registration keys ---------------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def wait_until_used(
    session: HubSession, key: str, expires_at: int, poll_interval: float
) -> str:
    """Poll the key's state until it is no longer ``live``, extending it whenever less than
    2 minutes remain; returns ``consumed`` or ``expired``."""
    while True:
        state = await session.registration_key_state(key)
        if state != "live":
            return state
        if expires_at - _now_ms() < REG_KEY_EXTEND_WINDOW_MS:
            # FailedPrecondition: clocks differ, or it just expired; the next poll tells.
            with contextlib.suppress(FailedPrecondition):
                expires_at = await session.extend_registration_key(key)
        await trio.sleep(poll_interval)


def _print_key(args: argparse.Namespace, hub: str, key: str, expires_at: int) -> None:
    command = shlex.join(["leapcore-worker", "--hub", hub, "--registration-key", key])
    if args.json:
        emit_json(
            {"registration_key": key, "expires_at": json_time(expires_at), "command": command}
        )
    else:
        note = "" if args.no_wait else " (extended while this command waits)"
        print(f"registration key  {key}")
        print(f"expires           {human_time(expires_at)}{note}")
        print()
        print("Run this on the machine to add as a worker:")
        print(f"  {command}")
        if not args.no_wait:
            print()
            print("waiting for a worker to register with it (Ctrl-C revokes the key)...")
    sys.stdout.flush()


def reg_key_create(args: argparse.Namespace) -> int:
    hub = hub_url(args)
    token = api_token(args, hub)
    poll: float = args.poll_interval
    printed = False
    interrupted = False

    async def main() -> int:
        nonlocal printed, interrupted
        work = trio.CancelScope()
        waiting = trio.CancelScope()
        minted = False
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        interrupted = True
                        (waiting if minted else work).cancel()

                nursery.start_soon(watch)
                state = "interrupted"
                with work:
                    async with hub_session(
                        hub, token, transport=args.transport, ca_file=args.ca_file
                    ) as session:
                        result = await session.create_registration_key()
                        key, expires_at = result["registration_key"], result["expires_at"]
                        minted = True
                        _print_key(args, hub, key, expires_at)
                        printed = True
                        if args.no_wait:
                            state = "left to expire"
                        else:
                            with waiting:
                                state = await wait_until_used(session, key, expires_at, poll)
                        if interrupted:
                            with trio.move_on_after(REVOKE_TIMEOUT):
                                await session.revoke_registration_key(key)
                                state = "revoked"
                nursery.cancel_scope.cancel()
        if interrupted:
            if not minted:
                what = "no registration key was made"
            elif state == "revoked":
                what = "registration key revoked"
            else:
                what = "the registration key could not be revoked; it expires unused"
            print(f"interrupted: {what}", file=sys.stderr)
            return EXIT_INTERRUPTED
        if args.no_wait:
            return EXIT_OK
        if state == "consumed":
            out = sys.stderr if args.json else sys.stdout
            print("a worker registered with the key (state: consumed)", file=out)
            return EXIT_OK
        print(f"error: the registration key expired unused (state: {state})", file=sys.stderr)
        return EXIT_ERROR

    try:
        with single_exception():
            result: int = trio.run(main)
    except LeapcoreError as exc:
        if not printed:
            raise
        # The one JSON document (or the key) is out: the outcome goes to stderr only.
        print(f"error: {exc.message}", file=sys.stderr)
        return exit_code_for(exc)
    return result


def _add_hub_verbs(worker_sub: Any) -> None:
    p = worker_sub.add_parser(
        "list",
        help="list your workers: online or not, last seen, encryption mode",
        description="List the signed-in user's registered workers, as the hub sees them.",
    )
    _session_flags(p)
    p.set_defaults(handler=worker_list, parser_error=p.error)

    p = worker_sub.add_parser(
        "deregister",
        help="deregister one of your workers (it wipes its state and exits)",
        description="Deregister a worker: the hub tells it now if it is online, else when it "
        "next connects; it then deletes its local state and exits.",
    )
    _session_flags(p, worker_id=True)
    p.set_defaults(handler=worker_deregister, parser_error=p.error)

    p = worker_sub.add_parser(
        "info",
        help="open an end-to-end channel and show the worker's info and fingerprint",
        description="Open an end-to-end encrypted channel to the worker (its keys checked "
        "against this client's pin first; pinned on first use) and print its info document.",
    )
    _session_flags(p, worker_id=True)
    _timeout_flag(p)
    p.set_defaults(handler=worker_info, parser_error=p.error)

    p = worker_sub.add_parser(
        "ping",
        help="time end-to-end round trips to a worker",
        description="Open an end-to-end encrypted channel to the worker (keys checked "
        "against the pin first) and time N Ping round trips through it.",
    )
    _session_flags(p, worker_id=True)
    _timeout_flag(p)
    p.add_argument(
        "--count",
        type=int,
        default=PING_COUNT,
        metavar="N",
        help=f"round trips to make (default {PING_COUNT})",
    )
    p.set_defaults(handler=worker_ping, parser_error=p.error)

    keys = worker_sub.add_parser("reg-key", help="registration keys, to add a worker")
    key_sub = keys.add_subparsers(
        dest="key_command", metavar="VERB", required=True, parser_class=Parser
    )
    p = key_sub.add_parser(
        "create",
        help="mint a registration key and wait until a worker uses it",
        description="Mint a registration key (valid 5 minutes) and print the command that "
        "registers a worker with it; then keep the key alive until a worker has used it "
        "(exit 0), or revoke it when interrupted (exit 130).",
    )
    _session_flags(p)
    p.add_argument(
        "--no-wait", action="store_true", help="print the key and exit; it expires in 5 minutes"
    )
    p.add_argument("--poll-interval", type=float, default=POLL_INTERVAL, help=argparse.SUPPRESS)
    p.set_defaults(handler=reg_key_create, parser_error=p.error)


def build_parser() -> Parser:
    parser = make_parser(
        "leapcore",
        "Reach machines behind NAT through a leapcore hub, end-to-end encrypted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    remote = sub.add_parser("remote", help="talk to workers through a hub")
    remote_sub = remote.add_subparsers(
        dest="remote_command", metavar="COMMAND", required=True, parser_class=Parser
    )
    p = remote_sub.add_parser(
        "login",
        help="check an API token against a hub and save it for the other verbs",
        description="Sign in to the hub with an API token and, if it is accepted, save it "
        "(mode 0600) for later `leapcore remote` commands against that hub.",
    )
    _session_flags(p)
    p.set_defaults(handler=login, parser_error=p.error)
    worker = remote_sub.add_parser("worker", help="workers reachable through the hub")
    worker_sub = worker.add_subparsers(
        dest="worker_command", metavar="COMMAND", required=True, parser_class=Parser
    )
    _add_hub_verbs(worker_sub)
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
