"""``leapcore``: the client-side command (``leapcore remote …``) and ``leapcore demo``.

Hub verbs (they sign in to the hub with an API token; see docs/cli.md):

* ``remote login`` checks a token against the hub and saves ``{"hub", "token",
  "ca_file"?}`` in ``<config dir>/<hub host>.json`` (0600 in a 0700 directory), and makes
  that hub the default one (``<config dir>/default_hub.json``);
* ``remote worker list``, ``remote worker reg-key create|list|revoke``,
  ``remote worker deregister``;
* ``remote worker info`` and ``remote worker ping`` open an end-to-end channel to a worker
  (its keys checked against this client's pin for it first: a mismatch exits 6, never
  prompts).

The hub: ``--hub`` > ``$LEAPCORE_HUB`` > the default hub. The token: ``--token`` /
``--token-file`` / ``--token-stdin`` > ``$LEAPCORE_TOKEN`` > the saved one (``login``
alone prompts for it instead, without echo, when stdin is a terminal). A worker
(``--worker``, alias ``--worker-id``; ``$LEAPCORE_WORKER``, ``$LEAPCORE_WORKER_ID``) is named
by its id, its name or a unique start of its id (:mod:`leapcore.peer.resolve`).

JSON schema (``--json``; stable):

* ``login`` → ``{"hub": URL, "user": {"id", "name"}, "credentials": PATH, "ca_file"?}``
* ``worker list`` → ``{"workers": [{"id", "name", "version", "labels", "capabilities",
  "os"?, "arch"?, "online", "last_seen_at"?, "encryption_mode"?, "fingerprint"?}, …]}``
* ``worker reg-key create`` → ``{"registration_key", "expires_at", "command"}`` printed as
  soon as the key exists (the wait's outcome is the exit status, with a line on stderr)
* ``worker reg-key list`` → ``{"keys": [{"id", "prefix", "created_at", "expires_at",
  "state"}, …]}``; ``worker reg-key revoke`` → ``{"revoked": ID}``
* ``worker deregister`` → ``{"worker_id", "status": "deregistering", "notified"}``
* ``worker info`` → ``{"worker_id", "fingerprint", "info": {"name", "worker_id", "version",
  "commit", "os", "arch", "python", "encryption_mode", "labels", "capabilities",
  "services"}}``
* ``worker services`` and ``call``: :mod:`leapcore_cli.call`
* ``cp`` → ``{"files", "bytes", "seconds", "direction"}`` (:mod:`leapcore_cli.cp`)
* ``workspace list|create|remove`` (:mod:`leapcore_cli.workspace`)
* ``worker ping`` → ``{"worker_id", "count", "rtt_ms": [...], "min_ms", "median_ms",
  "max_ms"}`` (milliseconds, 3 decimals)
* ``tunnel forward|socks`` → one object per listener, one per line as each is up:
  ``{"type", "worker_id", "bind_addr", "bind_port", "target_addr"?, "target_port"?}``
  (:mod:`leapcore_cli.tunnel`)
* a key mismatch → ``{"error": {"code": "key_mismatch", "message", "expected_fingerprint",
  "presented_fingerprint"}}`` (exit 6)
* an ambiguous ``--worker`` → ``{"error": {"code": "ambiguous_reference", "message",
  "candidates": [{"id", "name"}, …]}}`` (exit 2)
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
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
from leapcore.errors import (
    AmbiguousReference,
    ConfigError,
    FailedPrecondition,
    KeyMismatch,
    LeapcoreError,
    LocalError,
    RemoteProtocolError,
)
from leapcore.net.dial import TRANSPORTS
from leapcore.net.trioutil import single_exception
from leapcore.peer.channel import CALL_TIMEOUT
from leapcore.peer.connect import (
    Credentials,
    default_pin_store,
    load_credentials,
    resolve_hub,
    save_credentials,
    save_default_hub,
)
from leapcore.peer.hubsession import HubSession, hub_session
from leapcore.proto.capabilities import capability_problem, parse_label
from leapcore.proto.limits import REG_KEY_EXTEND_WINDOW_MS
from leapcore.store.pinstore import PinStore

from . import call as call_verb
from . import completion, demo, pincmd, tunnel
from . import cp as cp_verb
from . import exec as exec_verb
from . import session as session_verb
from . import workspace as workspace_verb
from .common import (
    EXIT_ERROR,
    EXIT_KEY_MISMATCH,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    Parser,
    emit_json,
    exit_code_for,
    make_parser,
    print_table,
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


#: Environment variables naming the worker when ``--worker`` is not given, in order.
WORKER_ENVS: Final = ("LEAPCORE_WORKER", "LEAPCORE_WORKER_ID")
#: The usage error when no hub is named anywhere.
NO_HUB: Final = (
    "no hub: pass --hub URL (or set LEAPCORE_HUB), or run "
    "`leapcore remote login --hub URL` once to make it the default"
)


def _hub_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hub",
        metavar="URL",
        help="the hub's URL (default: $LEAPCORE_HUB, then the hub `login` saved as default)",
    )


def hub_url(args: argparse.Namespace) -> str:
    """``--hub`` > ``$LEAPCORE_HUB`` > the default hub saved by ``login``; a usage error
    (exit 2) when none is set."""
    url = resolve_hub(args.hub)
    if not url:
        args.parser_error(NO_HUB)
    assert url is not None
    return url


def client_pin_store(args: argparse.Namespace) -> PinStore:
    """The remote CLI's pin store for the hub named by ``--hub`` / ``$LEAPCORE_HUB`` / the
    default hub."""
    return default_pin_store(hub_url(args))


# -- hub credentials -------------------------------------------------------------------------


def given_token(args: argparse.Namespace) -> str | None:
    """The token given on this command line: ``--token``, ``--token-file FILE`` (its first
    line) or ``--token-stdin`` (one line read from stdin); ``None`` when none of them."""
    if args.token:
        token: str = args.token
        return token
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                line = file.readline()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"--token-file {args.token_file}: cannot read it: {reason}") from None
        return _one_token(args, line, f"--token-file {args.token_file}")
    if args.token_stdin:
        return _one_token(args, sys.stdin.readline(), "--token-stdin")
    return None


def _one_token(args: argparse.Namespace, line: str, source: str) -> str:
    token = line.strip()
    if not token:
        args.parser_error(f"{source}: no token (an empty line)")
    return token


def api_token(args: argparse.Namespace, hub: str, saved: Credentials | None = None) -> str:
    """The token given (:func:`given_token`) > ``$LEAPCORE_TOKEN`` > the one ``remote login``
    saved for ``hub`` (``saved``)."""
    token = (
        given_token(args) or os.environ.get("LEAPCORE_TOKEN") or (saved.token if saved else None)
    )
    if not token:
        args.parser_error(
            f"no API token for {hub}: run `leapcore remote login --hub {shlex.quote(hub)}` "
            "(or pass --token, --token-file or --token-stdin, or set LEAPCORE_TOKEN)"
        )
    assert token is not None
    return token


def _connection(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(hub URL, API token, CA file): ``--ca-file``, else the one saved for that hub."""
    hub = hub_url(args)
    saved = load_credentials(hub)
    token = api_token(args, hub, saved)
    ca_file: str | None = args.ca_file or (saved.ca_file if saved else None)
    return hub, token, ca_file


def _token_flags(parser: argparse.ArgumentParser, default: str) -> None:
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"API token (visible to other users in `ps`: prefer the next two; default: {default})",
    )
    tokens.add_argument(
        "--token-file", metavar="FILE", help="read the API token from the first line of FILE"
    )
    tokens.add_argument(
        "--token-stdin", action="store_true", help="read the API token from one line of stdin"
    )


def _session_flags(
    parser: argparse.ArgumentParser,
    *,
    json_flag: bool = True,
    worker_id: bool = False,
    token_default: str = "$LEAPCORE_TOKEN, then the one `login` saved",
) -> None:
    _hub_flag(parser)
    _token_flags(parser, token_default)
    parser.add_argument(
        "--transport", default="websocket", choices=TRANSPORTS, help="websocket (default) or h2"
    )
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        help="trust only this CA for an https:// hub (default: the one `login` saved, if any)",
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON document")
    if worker_id:
        _worker_flag(parser)


def _worker_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--worker",
        "--worker-id",
        dest="worker",
        metavar="WORKER",
        help="the worker: its id, its name or a unique start of its id (at least 4 "
        "characters); default: $LEAPCORE_WORKER, then $LEAPCORE_WORKER_ID",
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
    if token is None:
        hub, secret, ca_file = _connection(args)
    else:
        hub, secret, ca_file = hub_url(args), token, _ca_file(args)
    store = client_pin_store(args) if pins else None

    async def main() -> int:
        with single_exception():
            async with hub_session(
                hub, secret, transport=args.transport, ca_file=ca_file, pins=store
            ) as session:
                return await body(session)

    result: int = trio.run(main)
    return result


# -- login -------------------------------------------------------------------------------------


def _ca_file(args: argparse.Namespace) -> str | None:
    """``--ca-file``, else the CA file saved for the hub (``login`` keeps it on a new login)."""
    if args.ca_file:
        ca_file: str = args.ca_file
        return ca_file
    saved = load_credentials(hub_url(args))
    return saved.ca_file if saved is not None else None


def login_token(args: argparse.Namespace, hub: str) -> str:
    """The token to log in with: given (:func:`given_token`) > ``$LEAPCORE_TOKEN`` > asked
    for without echo when stdin is a terminal; else a usage error."""
    token = given_token(args) or os.environ.get("LEAPCORE_TOKEN")
    if token:
        return token
    if not sys.stdin.isatty():
        args.parser_error(
            "no API token: pass --token-file FILE or --token-stdin (or --token, or set "
            "LEAPCORE_TOKEN); run from a terminal to be asked for it"
        )
    try:
        token = getpass.getpass(f"API token for {hub}: ").strip()
    except EOFError:
        token = ""
    if not token:
        args.parser_error("no API token entered")
    return token


def login(args: argparse.Namespace) -> int:
    hub = hub_url(args)
    token = login_token(args, hub)
    ca_file = _ca_file(args)

    async def body(session: HubSession) -> int:
        path = save_credentials(hub, token, ca_file=ca_file)
        save_default_hub(hub)
        saved = load_credentials(hub)
        user = {"id": session.user_id, "name": session.user_name}
        doc: dict[str, Any] = {"hub": hub, "user": user, "credentials": str(path)}
        if saved is not None and saved.ca_file:
            doc["ca_file"] = saved.ca_file
        if session.token_expires_at is not None:
            doc["token_expires_at"] = json_time(session.token_expires_at)
        if args.json:
            emit_json(doc)
        else:
            print(f"logged in to {hub} as {safe(session.user_name)} (id {session.user_id})")
            print(f"credentials saved in {path}")
            if "token_expires_at" in doc:
                print(
                    f"the API token expires {doc['token_expires_at']} (ask an administrator "
                    "for a new one before then)"
                )
            if "ca_file" in doc:
                print(f"trusting the CA in {doc['ca_file']} for it")
            print(f"{hub} is now the default hub (--hub and LEAPCORE_HUB override it)")
        return EXIT_OK

    return _with_session(args, body, token)


# -- workers -----------------------------------------------------------------------------------


def remote_worker_json(view: dict[str, Any]) -> dict[str, Any]:
    """A ``workers.list`` entry with its time in RFC 3339 and absent values omitted."""
    doc = {k: v for k, v in view.items() if v is not None and k != "last_seen_at"}
    if view.get("last_seen_at") is not None:
        doc["last_seen_at"] = json_time(view["last_seen_at"])
    return doc


def _label_filter(args: argparse.Namespace) -> dict[str, str]:
    """``--label K=V`` (repeatable) as a mapping; a usage error for text without ``=`` or a
    key given twice."""
    labels: dict[str, str] = {}
    for text in args.label or ():
        try:
            key, value = parse_label(text)
        except LocalError as exc:
            args.parser_error(f"--label: {exc}")
        if key in labels:
            args.parser_error(f"--label: {key!r} is given twice")
        labels[key] = value
    return labels


def _capability_filter(args: argparse.Namespace) -> list[str]:
    """``--capability NAME`` (repeatable); a usage error for a name no worker can have."""
    names: list[str] = args.capability or []
    for name in names:
        problem = capability_problem(name)
        if problem is not None:
            args.parser_error(f"--capability: {problem}")
    return names


def worker_list(args: argparse.Namespace) -> int:
    labels = _label_filter(args)
    capabilities = _capability_filter(args)
    filtered = bool(labels or capabilities or args.online)

    async def body(session: HubSession) -> int:
        workers = await session.find_workers(
            labels=labels, capability=capabilities, online=True if args.online else None
        )
        if args.json:
            emit_json({"workers": [remote_worker_json(w) for w in workers]})
            return EXIT_OK
        if not workers:
            if filtered:
                print(f"none of {safe(session.user_name)}'s workers match")
            else:
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
        print_table(("NAME", "ID", "STATE", "LAST SEEN", "MODE"), rows)
        return EXIT_OK

    return _with_session(args, body)


def worker_ref(args: argparse.Namespace) -> str:
    """``--worker`` (or ``--worker-id``) > ``$LEAPCORE_WORKER`` > ``$LEAPCORE_WORKER_ID``:
    an id, a name or the start of an id, resolved on the hub by
    :meth:`HubSession.resolve_worker`."""
    ref: str | None = args.worker or next(
        (value for name in WORKER_ENVS if (value := os.environ.get(name))), None
    )
    if not ref:
        args.parser_error("--worker is required (or set LEAPCORE_WORKER)")
    assert ref is not None
    return ref


async def _resolved(session: HubSession, ref: str) -> str:
    """The id of the worker ``ref`` names (one ``workers.list`` call)."""
    worker_id: str = (await session.resolve_worker(ref))["id"]
    return worker_id


def worker_deregister(args: argparse.Namespace) -> int:
    ref = worker_ref(args)

    async def body(session: HubSession) -> int:
        worker_id = await _resolved(session, ref)
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
    known = {key for key, _ in rows} | {"services"}  # `worker services` shows that one
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
    ref = worker_ref(args)

    async def body(session: HubSession) -> int:
        worker_id = await _resolved(session, ref)
        fingerprint, info = await fetch_info(session, worker_id, timeout=_timeout(args))
        if args.json:
            emit_json({"worker_id": worker_id, "fingerprint": fingerprint, "info": info})
        else:
            for line in info_lines(worker_id, fingerprint, info):
                print(line)
        return EXIT_OK

    return _channel_verb(args, body)


def worker_ping(args: argparse.Namespace) -> int:
    ref = worker_ref(args)
    count: int = args.count
    if count < 1:
        args.parser_error("--count must be at least 1")
    worker_id = ref

    def each(seq: int, rtt: float) -> None:
        if args.json:
            return
        if seq == 1:  # the channel is open (and the keys matched their pin)
            print(f"ping worker {worker_id}: {count} end-to-end round trips", flush=True)
        print(f"seq={seq} rtt={rtt * 1000:.3f} ms", flush=True)

    async def body(session: HubSession) -> int:
        nonlocal worker_id
        worker_id = await _resolved(session, ref)
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
    hub, token, ca_file = _connection(args)
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
                        hub, token, transport=args.transport, ca_file=ca_file
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


def key_prefix(prefix: str) -> str:
    """How a list shows a registration key: its first characters and an ellipsis (``-`` for
    a key minted before the hub kept them)."""
    return f"{prefix}\u2026" if prefix else "-"


def remote_key_json(key: dict[str, Any]) -> dict[str, Any]:
    """A ``regkey.list`` entry with its times in RFC 3339."""
    return {
        **key,
        "created_at": json_time(key["created_at"]),
        "expires_at": json_time(key["expires_at"]),
    }


def reg_key_list(args: argparse.Namespace) -> int:
    async def body(session: HubSession) -> int:
        keys = await session.list_registration_keys()
        if not args.include_expired:
            keys = [k for k in keys if k["state"] == "live"]
        if args.json:
            emit_json({"keys": [remote_key_json(k) for k in keys]})
            return EXIT_OK
        if not keys:
            print("no registration keys" if args.include_expired else "no live registration keys")
            return EXIT_OK
        rows = [
            (
                k["id"],
                key_prefix(k["prefix"]),
                human_time(k["created_at"]),
                human_time(k["expires_at"]),
                k["state"],
            )
            for k in keys
        ]
        print_table(("ID", "KEY", "CREATED", "EXPIRES", "STATE"), rows)
        return EXIT_OK

    return _with_session(args, body)


def reg_key_revoke(args: argparse.Namespace) -> int:
    ref: str = args.key
    if not ref:
        args.parser_error("give the registration key, or its id (from `reg-key list`)")

    async def body(session: HubSession) -> int:
        key_id = await session.revoke_registration_key(ref)
        if args.json:
            emit_json({"revoked": key_id})
        else:
            print(f"revoked registration key {key_id}")
        return EXIT_OK

    return _with_session(args, body)


def _add_hub_verbs(worker_sub: Any) -> None:
    p = worker_sub.add_parser(
        "list",
        help="list your workers: online or not, last seen, encryption mode",
        description="List the signed-in user's registered workers, as the hub sees them "
        "(the hub keeps only those matching every filter given).",
    )
    _session_flags(p)
    p.add_argument(
        "--label",
        action="append",
        metavar="K=V",
        help="only workers with this label (repeatable: all must match)",
    )
    p.add_argument(
        "--capability",
        action="append",
        metavar="NAME",
        help="only workers that serve this capability: exec, pty, files, tcp, workspace, info "
        "or a custom service's name (repeatable: all must be present)",
    )
    p.add_argument("--online", action="store_true", help="only workers online now")
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

    p = key_sub.add_parser(
        "list",
        help="list your registration keys: id, first characters, times, state",
        description="List the signed-in user's registration keys, newest first: live ones, "
        "or with --include-expired also expired, used and revoked ones the hub still keeps. "
        "A key is shown by its id and its first 6 characters, never whole.",
    )
    _session_flags(p)
    p.add_argument(
        "--include-expired", action="store_true", help="also list keys that are no longer live"
    )
    p.set_defaults(handler=reg_key_list, parser_error=p.error)

    p = key_sub.add_parser(
        "revoke",
        help="expire one of your registration keys now (by the key or its id)",
        description="Expire one of your registration keys now, named by the key itself or by "
        "its id from `reg-key list`. Revoking a dead key again is accepted.",
    )
    _session_flags(p)
    p.add_argument("key", metavar="KEY_OR_ID", help="the registration key, or its id")
    p.set_defaults(handler=reg_key_revoke, parser_error=p.error)


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
        "(mode 0600) with --ca-file for later `leapcore remote` commands against that hub, "
        "and make that hub the default one (used when neither --hub nor LEAPCORE_HUB is set).",
    )
    _session_flags(p, token_default="$LEAPCORE_TOKEN, then asked for if stdin is a terminal")
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
        id_flag="--worker",
        id_aliases=("--worker-id",),
        id_env=WORKER_ENVS,
        store=client_pin_store,
        add_location=_hub_flag,
    )
    tunnel.add_verbs(remote_sub, lambda p: _session_flags(p, worker_id=True), _timeout_flag)
    exec_verb.add_verbs(
        remote_sub, lambda p: _session_flags(p, json_flag=False, worker_id=True), _timeout_flag
    )
    session_verb.add_verbs(remote_sub, lambda p: _session_flags(p, worker_id=True), _timeout_flag)
    cp_verb.add_verbs(remote_sub, lambda p: _session_flags(p), _timeout_flag)
    workspace_verb.add_verbs(remote_sub, lambda p: _session_flags(p, worker_id=True), _timeout_flag)
    call_verb.add_verbs(
        remote_sub, worker_sub, lambda p: _session_flags(p, worker_id=True), _timeout_flag
    )
    demo.add_parser(sub)
    completion.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None)
    if handler is None:
        build_parser().print_help()
        return 0
    try:
        result: int = handler(args)
    except AmbiguousReference as exc:
        if not getattr(args, "json", False):
            raise
        # The candidates, for a script to choose from.
        candidates = [{"id": wid, "name": name} for wid, name in exc.candidates]
        error = {"code": exc.code, "message": exc.message, "candidates": candidates}
        emit_json({"error": error})
        return exit_code_for(exc)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), _dispatch, argv)
