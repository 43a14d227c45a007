"""``leapcore-worker identity``: who this worker is, read from its files (no worker needed).

Prints the worker id, whether it is registered, its public keys and their fingerprint —
computed exactly as a client computes it when it pins the worker
(:attr:`leapcore.crypto.keys.PublicKeyBundle.fingerprint`, the same function as
:attr:`leapcore.proto.pins.Pin.fingerprint`) — the configured encryption mode, and the hub it
registered with (``hub.json``). Nothing is written: reading an empty directory creates
nothing.

JSON schema (``--json``; stable)::

    {"data_dir": PATH, "state_file": PATH, "registered": BOOL, "worker_id": ID or "",
     "encryption_mode": "classic"|"post-quantum", "fingerprint": WORDS,
     "keys": {"x25519"|"mlkem"|"slhdsa": {"size": N, "blake2b_256": HEX, "base64": B64}},
     "hub": {"hub_id": ID, "hub_url": URL, "registered_at": TIME or null} or null}

``keys`` has the shape of ``pins show``'s, so the two can be compared field by field.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leapcore.crypto.keys import PublicKeyBundle
from leapcore.crypto.mode import parse_encryption_mode
from leapcore.errors import NotFound
from leapcore.records import b64encode
from leapcore.store.config import worker_settings
from leapcore.store.workerstate import HUB_FILE, STATE_FILE, load_hub, load_state

from .common import EXIT_OK, add_json_flag, emit_json

__all__ = ["add_parser", "identity_document", "show_identity"]

#: (name in the document, attribute of :class:`PublicKeyBundle`, field in state.json).
_KEYS = (
    ("x25519", "x25519", "public_key"),
    ("mlkem", "mlkem", "mlkem_public_key"),
    ("slhdsa", "slhdsa", "slhdsa_public_key"),
)


def identity_document(
    data_dir: Path, encryption_mode: str
) -> tuple[dict[str, Any], PublicKeyBundle]:
    """The ``--json`` document for the worker in ``data_dir`` (and its public keys).

    :class:`~leapcore.errors.NotFound` when the directory holds no keys yet;
    :class:`~leapcore.errors.KeyFileError` when ``state.json`` or ``hub.json`` is unreadable.
    """
    state = load_state(data_dir)
    if state.keys is None:
        raise NotFound(
            f"no worker identity in {data_dir}: {data_dir / STATE_FILE} holds no keys "
            "(`leapcore-worker run` makes them at its first start)"
        )
    public = state.keys.public
    hub = load_hub(data_dir) if state.registered else None
    keys = {
        name: {
            "size": len(getattr(public, attr)),
            "blake2b_256": hashlib.blake2b(getattr(public, attr), digest_size=32).hexdigest(),
            "base64": b64encode(getattr(public, attr)),
        }
        for name, attr, _ in _KEYS
    }
    document = {
        "data_dir": str(data_dir),
        "state_file": str(data_dir / STATE_FILE),
        "registered": state.registered,
        "worker_id": state.worker_id,
        "encryption_mode": str(parse_encryption_mode(encryption_mode)),
        "fingerprint": public.fingerprint,
        "keys": keys,
        "hub": hub.to_json() if hub is not None else None,
    }
    return document, public


def _human(document: dict[str, Any]) -> list[str]:
    """``identity``'s text: ``pins show``'s layout (its key lines are the same, to compare)."""
    lines = []
    if document["registered"]:
        lines.append(f"worker id     {document['worker_id']}")
        lines.append("registered    yes")
    else:
        lines.append("worker id     none (unregistered)")
        lines.append("registered    no: `leapcore-worker run --registration-key KEY` registers it")
    lines.append(f"fingerprint   {document['fingerprint']}")
    lines.append(f"mode          {document['encryption_mode']} (configured)")
    hub = document["hub"]
    if hub is not None:
        lines.append(f"hub id        {hub['hub_id'] or 'not given by the hub'}")
        lines.append(f"hub url       {hub['hub_url']}")
        lines.append(f"registered at {hub['registered_at'] or 'not recorded'}")
    elif document["registered"]:
        lines.append(
            f"hub           not recorded (no {HUB_FILE}: registered before hubs had ids; "
            "recorded at its next connection)"
        )
    for name, info in document["keys"].items():
        lines.append(
            f"{name + ' key':<13} {info['size']:>5} bytes  blake2b-256 {info['blake2b_256']}"
        )
    lines.append(f"state file    {document['state_file']}")
    for name, _, field in _KEYS:
        lines.append(f"{field:<17} {document['keys'][name]['base64']}")
    return lines


def show_identity(args: argparse.Namespace) -> int:
    """``leapcore-worker identity``: read the data directory the worker would use."""
    flags = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    settings, _ = worker_settings(
        flags=flags, env=os.environ, home=Path.home(), config_path=args.config
    )
    document, _ = identity_document(Path(settings["data_dir"]), settings["encryption_mode"])
    if args.json:
        emit_json(document)
    else:
        print("\n".join(_human(document)))
    return EXIT_OK


def add_parser(sub: Any, *, add_location: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``identity`` to ``leapcore-worker``'s sub-commands."""
    text = (
        "print this worker's id, public keys and fingerprint (as a client pins them) and the "
        "hub it registered with, from its files; no worker or hub needs to run"
    )
    parser = sub.add_parser("identity", help=text, description=text)
    add_location(parser)
    add_json_flag(parser)
    parser.set_defaults(handler=show_identity)
