"""``leapcore demo``: a solo hub (hub + its own worker) in this process, and a real session.

It starts :class:`leapcore.solo.SoloHub` on a free loopback port (data in a temporary
directory unless ``--data-dir``), then, as a client over the network, lists the workers,
shows the worker's fingerprint, times end-to-end pings through an encrypted channel and
fetches the worker's ``info``. Then it keeps the hub running until Ctrl-C (the solo user's
token is saved as the local credential, so ``leapcore remote … --hub URL`` works from
another terminal), or stops at once with ``--once``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from leapcore.net.allocator import tune_allocator
from leapcore.net.trioutil import single_exception
from leapcore.peer.hubsession import hub_session
from leapcore.store.pinstore import PinStore

if TYPE_CHECKING:
    from leapcore.solo import SoloHub

from .common import EXIT_OK, emit_json

#: Round trips the demo times.
DEMO_PINGS = 5


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="start a solo hub with its own worker and show a real end-to-end session",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the solo hub's data (hub.db, solo-worker/) in DIR "
        "(default: a temporary directory, removed afterwards)",
    )
    parser.add_argument(
        "--once", action="store_true", help="stop after the showcase instead of serving on"
    )
    parser.add_argument(
        "--classic", action="store_true", help="use the classic (X25519-only) handshake"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.set_defaults(handler=run_demo)


def _say(args: argparse.Namespace, text: str = "") -> None:
    if not args.json:
        print(text, flush=True)


async def _showcase(args: argparse.Namespace, solo: SoloHub, pins: PinStore) -> dict[str, Any]:
    from . import remote  # the output formats of `leapcore remote`

    url, ident = solo.url, solo.identity
    wid = ident.worker_id
    _say(args, f"leapcore demo: a solo hub at {url}, with its own worker\n")
    async with hub_session(url, ident.token, pins=pins) as session:
        _say(args, f"$ leapcore remote worker list --hub {url}")
        workers = await session.list_workers()
        for w in workers:
            state = "online" if w["online"] else "offline"
            _say(args, f"  {w['name']}  {w['id']}  {state}  {w.get('encryption_mode') or '-'}")
        _say(args, f"\nworker fingerprint  {solo.fingerprint}  (pinned on first use)\n")

        _say(args, f"$ leapcore remote worker ping --hub {url} --worker-id {wid}")

        def each(seq: int, rtt: float) -> None:
            _say(args, f"  seq={seq} rtt={rtt * 1000:.3f} ms")

        rtts = await remote.measure_pings(session, wid, DEMO_PINGS, each)
        ping = remote.ping_summary(wid, rtts)
        _say(args, "  " + remote.summary_line(ping))

        _say(args, f"\n$ leapcore remote worker info --hub {url} --worker-id {wid}")
        fingerprint, info = await remote.fetch_info(session, wid)
        for line in remote.info_lines(wid, fingerprint, info):
            _say(args, "  " + line)
    return {
        "hub": url,
        "worker": {"id": wid, "name": ident.worker_name, "fingerprint": fingerprint},
        "workers": [remote.remote_worker_json(w) for w in workers],
        "ping": ping,
        "info": info,
    }


async def _demo(args: argparse.Namespace, solo: SoloHub, pins: PinStore) -> dict[str, Any]:
    document: dict[str, Any] = {}

    async def online() -> None:
        nonlocal document
        document = await _showcase(args, solo, pins)
        if args.json:
            emit_json(document)
            sys.stdout.flush()
        if args.once:
            await solo.shutdown()  # the run ends with the hub
            return
        print(
            f"\nThe hub keeps running. From another terminal:\n"
            f"  leapcore remote worker list --hub {solo.url}\n"
            f"  leapcore remote worker ping --hub {solo.url} "
            f"--worker-id {solo.identity.worker_id}\n"
            f"  leapcore remote worker info --hub {solo.url} "
            f"--worker-id {solo.identity.worker_id}\n"
            f"(the API token is saved in {solo.credentials})\n"
            "Press Ctrl-C to stop.",
            file=sys.stderr if args.json else sys.stdout,
            flush=True,
        )

    await solo.run_until_signal(host="127.0.0.1", port=0, online=online)
    return document


def run_demo(args: argparse.Namespace) -> int:
    # The hub and the worker load here, not when any `leapcore` command starts.
    from leapcore.solo import SoloHub

    with tempfile.TemporaryDirectory(prefix="leapcore-demo-") as tmp:
        data_dir = args.data_dir if args.data_dir is not None else Path(tmp) / "hub"
        solo = SoloHub(
            data_dir,
            encryption_mode="classic" if args.classic else "post-quantum",
            save_credential=not args.once,
        )
        # The demo's own client pins in the demo's directory; other terminals use theirs.
        pins = PinStore(Path(tmp) / "demo-pins.json", hint="clear {worker_id}")
        tune_allocator()  # this process relays bulk data (leapcore.net.allocator)
        with single_exception():
            trio.run(_demo, args, solo, pins)
        if solo.credentials is not None and args.data_dir is None:
            solo.credentials.unlink(missing_ok=True)  # the hub and its token are gone
    if not args.json:
        print("\nleapcore demo: stopped", flush=True)
    return EXIT_OK
