"""``list``, ``show`` and ``remove`` for a pin store: shared by ``leapcore remote worker pins``
and ``leapcore-worker cross-worker-pins`` (they differ only in where the store is, the name of
the id flag and the hint).

``show`` and ``remove`` take a worker id, or a unique start of one among the pinned ids (at
least 4 characters; :func:`leapcore.peer.resolve.resolve_worker`, without names: no hub is
asked). A start that matches no pin is taken as a whole id (``show``: not found; ``remove``:
nothing removed); one that matches several is an error listing them (exit 2).

JSON schema (``--json``; stable):

* ``list``   → ``{"store": PATH, "pins": [PIN, …]}`` sorted by worker id
* ``show``   → ``{"store": PATH, "pin": PIN + {"keys": {"x25519"|"mlkem"|"slhdsa":
  {"size": N, "blake2b_256": HEX, "base64": B64}}}}``
* ``remove`` → ``{"store": PATH, "worker_id": ID, "removed": true|false}``

where ``PIN`` is ``{"worker_id", "fingerprint", "first_seen_at", "last_used_at",
"classic_only"}``. Errors: ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from leapcore.errors import NotFound
from leapcore.peer.resolve import resolve_worker
from leapcore.proto.pins import Pin, format_time
from leapcore.records import b64encode
from leapcore.store.pinstore import PinStore

from .common import EXIT_OK, emit_json

StoreFactory = Callable[[argparse.Namespace], PinStore]


def add_verbs(
    parser: argparse.ArgumentParser,
    *,
    id_flag: str,
    id_env: str | Sequence[str] | None,
    store: StoreFactory,
    add_location: Callable[[argparse.ArgumentParser], None],
    id_aliases: Sequence[str] = (),
) -> None:
    """Add ``list``/``show``/``remove`` under ``parser``. ``id_flag`` (and ``id_aliases``)
    name the worker; ``id_env``: the environment variable(s) that do when it is not given,
    the first set one winning."""
    envs = (id_env,) if isinstance(id_env, str) else tuple(id_env or ())
    verbs = parser.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=type(parser)
    )
    helps = {
        "list": "list every pin",
        "show": "show one pin, with its keys' sizes and digests",
        "remove": "forget one pin (idempotent); the next contact pins again",
    }
    dest = id_flag.removeprefix("--").replace("-", "_")
    for verb, text in helps.items():
        sub = verbs.add_parser(verb, help=text, description=text)
        add_location(sub)
        if verb != "list":
            env_note = f" (default: {', then '.join('$' + e for e in envs)})" if envs else ""
            sub.add_argument(
                id_flag,
                *id_aliases,
                dest=dest,
                metavar="ID",
                help=f"the worker id, or a unique start of it (4 characters or more){env_note}",
            )
        sub.add_argument("--json", action="store_true", help="print one JSON document")
        sub.set_defaults(
            handler=_HANDLERS[verb],
            store=store,
            id_dest=dest,
            id_flag=id_flag,
            id_envs=envs,
            parser_error=sub.error,
        )


def _worker_id(args: argparse.Namespace) -> str | None:
    value: str | None = getattr(args, args.id_dest, None)
    for name in args.id_envs:
        value = value or os.environ.get(name) or None
    return value


def _require_id(args: argparse.Namespace, parser_error: Callable[[str], Any]) -> str:
    value = _worker_id(args)
    if not value:
        hint = f" (or set {args.id_envs[0]})" if args.id_envs else ""
        parser_error(f"{args.id_flag} is required for {args.verb}{hint}")
    assert value is not None
    return value


def _pinned_id(store: PinStore, ref: str) -> str:
    """The pinned worker id ``ref`` names: itself when pinned, else the one pinned id it is
    the start of; ``ref`` unchanged when it names none (so the caller reports "no pin")."""
    pins = store.load()
    if ref in pins:
        return ref
    try:
        worker_id: str = resolve_worker(ref, [{"id": w} for w in pins], what="pinned worker")["id"]
    except NotFound:
        return ref
    return worker_id


def _summary(worker_id: str, pin: Pin) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "fingerprint": pin.fingerprint,
        "first_seen_at": format_time(pin.first_seen_at),
        "last_used_at": format_time(pin.last_used_at),
        "classic_only": pin.is_classic_only,
    }


def _short(when: str) -> str:
    return when[:19].replace("T", " ") + "Z"


def list_pins(args: argparse.Namespace) -> int:
    store: PinStore = args.store(args)
    pins = store.load()
    rows = [_summary(wid, pins[wid]) for wid in sorted(pins)]
    if args.json:
        emit_json({"store": str(store.path), "pins": rows})
        return EXIT_OK
    if not rows:
        print(f"no pins recorded in {store.path}")
        return EXIT_OK
    width = max(len("WORKER ID"), *(len(r["worker_id"]) for r in rows))
    print(f"{'WORKER ID':<{width}}  {'FINGERPRINT':<19}  {'FIRST SEEN':<20}  LAST USED")
    for r in rows:
        print(
            f"{r['worker_id']:<{width}}  {r['fingerprint']:<19}  "
            f"{_short(r['first_seen_at']):<20}  {_short(r['last_used_at'])}"
        )
    return EXIT_OK


def show_pin(args: argparse.Namespace) -> int:
    ref = _require_id(args, args.parser_error)
    store: PinStore = args.store(args)
    worker_id = _pinned_id(store, ref)
    pin = store.get(worker_id)
    if pin is None:
        raise NotFound(f"no pin recorded for worker {worker_id} in {store.path}")
    keys = {
        name: {
            "size": len(value),
            "blake2b_256": hashlib.blake2b(value, digest_size=32).hexdigest(),
            "base64": b64encode(value),
        }
        for name, value in (("x25519", pin.x25519), ("mlkem", pin.mlkem), ("slhdsa", pin.slhdsa))
    }
    document = {**_summary(worker_id, pin), "keys": keys}
    if args.json:
        emit_json({"store": str(store.path), "pin": document})
        return EXIT_OK
    print(f"worker id     {worker_id}")
    print(f"fingerprint   {document['fingerprint']}")
    print(f"first seen    {document['first_seen_at']}")
    print(f"last used     {document['last_used_at']}")
    if pin.is_classic_only:
        print("note          classic-only pin: post-quantum keys not recorded yet")
    for name, info in keys.items():
        print(f"{name + ' key':<13} {info['size']:>5} bytes  blake2b-256 {info['blake2b_256']}")
    print(f"store         {store.path}")
    return EXIT_OK


def remove_pin(args: argparse.Namespace) -> int:
    ref = _require_id(args, args.parser_error)
    store: PinStore = args.store(args)
    worker_id = _pinned_id(store, ref)
    removed = store.remove(worker_id)
    if args.json:
        emit_json({"store": str(store.path), "worker_id": worker_id, "removed": removed})
    elif removed:
        print(f"removed the pin for worker {worker_id} from {store.path}")
    else:
        print(f"no pin recorded for worker {worker_id} in {store.path}; nothing removed")
    return EXIT_OK


_HANDLERS = {"list": list_pins, "show": show_pin, "remove": remove_pin}
