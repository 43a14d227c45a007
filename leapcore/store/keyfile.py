"""Saving and loading a worker's keypair as a JSON file (mode 0600, atomic)."""

from __future__ import annotations

import json
from pathlib import Path

from ..crypto.keys import WorkerKeyPair
from ..errors import KeyFileError
from .atomicfile import write_atomic

__all__ = ["load_keypair", "save_keypair"]


def save_keypair(path: Path | str, keypair: WorkerKeyPair) -> None:
    """Write the six §7 fields as 2-space JSON, atomically, mode 0600 (directory 0700)."""
    text = json.dumps(keypair.to_json(), indent=2) + "\n"
    write_atomic(Path(path), text.encode("ascii"))


def load_keypair(path: Path | str) -> WorkerKeyPair:
    """Read a keypair file; any problem raises :class:`KeyFileError` naming the path."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting or numbers
        raise KeyFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{path}: key file must hold a JSON object")
    try:
        return WorkerKeyPair.from_json(data)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
