"""``leapcore``: the client-side command (``leapcore remote …``) and ``leapcore demo``.

Hub verbs (they sign in to the hub with an API token; see docs/cli.md):

* ``remote login`` checks a token against the hub and saves ``{"hub", "token"}`` in
  ``<config dir>/<hub host>.json`` (0600 in a 0700 directory);
* ``remote worker list``, ``remote worker reg-key create``, ``remote worker deregister``.

JSON schema (``--json``; stable):

* ``login`` → ``{"hub": URL, "user": {"id", "name"}, "credentials": PATH}``
* ``worker list`` → ``{"workers": [{"id", "name", "version", "labels", "online",
  "last_seen_at"?, "encryption_mode"?, "fingerprint"?}, …]}``
* ``worker reg-key create`` → ``{"registration_key", "expires_at", "command"}`` printed as
  soon as the key exists (the wait's outcome is the exit status, with a line on stderr)
* ``worker deregister`` → ``{"worker_id", "status": "deregistering", "notified"}``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from leapcore.atomicfile import write_atomic
from leapcore.errors import FailedPrecondition, KeyFileError, LeapcoreError
from leapcore.hubclient import HubSession, hub_session
from leapcore.hubstore import REG_KEY_EXTEND_WINDOW_MS
from leapcore.netclient import TRANSPORTS
from leapcore.paths import client_credentials_path, client_pins_path
from leapcore.pinstore import PinStore
from leapcore.trioutil import single_exception

from . import demo, pincmd
from .common import EXIT_ERROR, EXIT_OK, Parser, emit_json, exit_code_for, make_parser, run
from .hubadmin import human_time, json_time, safe

#: Exit status of ``reg-key create`` when interrupted (the key is revoked first).
EXIT_INTERRUPTED: Final = 130
#: Seconds between ``regkey.state`` polls while ``reg-key create`` waits.
POLL_INTERVAL: Final = 2.0
#: Seconds the revocation of an interrupted ``reg-key create`` may take.
REVOKE_TIMEOUT: Final = 5.0

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


# -- hub credentials -------------------------------------------------------------------------


def credentials_path(hub: str) -> Path:
    return client_credentials_path(os.environ, Path.home(), hub)


def save_credentials(hub: str, token: str) -> Path:
    path = credentials_path(hub)
    write_atomic(path, (json.dumps({"hub": hub, "token": token}, indent=2) + "\n").encode())
    return path


def load_token(hub: str) -> str | None:
    """The token ``remote login`` saved for ``hub``, or ``None`` when there is none."""
    path = credentials_path(hub)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read credentials: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyFileError(f"{path}: credentials file is not valid JSON") from None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise KeyFileError(f"{path}: credentials file has no token")
    return token


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


def _session_flags(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
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


def _with_session(
    args: argparse.Namespace, body: Callable[[HubSession], Awaitable[int]], token: str | None = None
) -> int:
    hub = hub_url(args)
    secret = token if token is not None else api_token(args, hub)

    async def main() -> int:
        with single_exception():
            async with hub_session(
                hub, secret, transport=args.transport, ca_file=args.ca_file
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


def worker_deregister(args: argparse.Namespace) -> int:
    worker_id: str | None = args.worker_id or os.environ.get("LEAPCORE_WORKER_ID")
    if not worker_id:
        args.parser_error("--worker-id is required (or set LEAPCORE_WORKER_ID)")
    assert worker_id is not None

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
    _session_flags(p)
    p.add_argument(
        "--worker-id", metavar="ID", help="the worker's id (default: $LEAPCORE_WORKER_ID)"
    )
    p.set_defaults(handler=worker_deregister, parser_error=p.error)

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
