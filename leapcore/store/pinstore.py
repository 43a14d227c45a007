"""A TOFU pin store in a JSON file, safe against crashes and concurrent processes.

File format (LeapMux's)::

    {"pins": {"<worker id>": {"x25519_public_key": "<base64>",
                              "mlkem_public_key": "<base64>",
                              "slhdsa_public_key": "<base64>",
                              "first_seen_at": "<RFC 3339 UTC>",
                              "last_used_at": "<RFC 3339 UTC>"}}}

* Every read-modify-write holds an exclusive advisory lock (``flock`` on
  ``<file>.lock`` beside it, a file that is never replaced), so concurrent
  processes never lose each other's pins: each re-reads the file under the
  lock before changing it.
* Writes go through :func:`leapcore.store.atomicfile.write_atomic` (temp file in the
  same directory, fsync, rename, fsync of the directory), mode 0600 in a
  directory of mode 0700. A crash at any moment leaves the old or the new
  file, whole.
* A missing file is an empty store, created on the first write. A file that
  cannot be read or parsed raises :class:`~leapcore.errors.PinStoreError`
  naming the path and the problem, and is never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from ..crypto.keys import PublicKeyBundle
from ..crypto.primitives import MLKEM_PUBLIC_KEY_SIZE, SLHDSA_PUBLIC_KEY_SIZE, X25519_KEY_SIZE
from ..errors import CorruptPinStore, KeyMismatch, LeapcoreError, PinStoreError, RecordError
from ..proto.pins import Pin, PinDecision, PinOutcome, decide, format_time, parse_time
from ..records import b64decode_strict, b64encode, structure_strict
from .atomicfile import ensure_private_dir, write_atomic

__all__ = ["PinStore"]


@attrs.frozen
class _PinRecord:
    x25519_public_key: str
    mlkem_public_key: str
    slhdsa_public_key: str
    first_seen_at: str
    last_used_at: str


@attrs.frozen
class _PinFile:
    pins: dict[str, _PinRecord] | None = None


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PinStore:
    """The pins of one client (per hub) or one worker (of its siblings).

    ``hint`` is the text after the dash in a mismatch error, with ``{worker_id}``
    replaced by the shell-quoted id (other braces are left alone); it names the exact
    command that clears the pin.
    ``clock`` returns the current UTC time (injectable for tests).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        hint: str = "clear this pin with the pin-management command",
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.path = Path(path)
        self.hint = hint
        self._clock = clock

    # -- reading ------------------------------------------------------------------

    def load(self) -> dict[str, Pin]:
        """All pins (a copy). A missing file is an empty store."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise PinStoreError(
                f"{self.path}: cannot read pin store: {exc.strerror or exc}"
            ) from None
        return self._parse(raw)

    def get(self, worker_id: str) -> Pin | None:
        return self.load().get(worker_id)

    def _parse(self, raw: bytes) -> dict[str, Pin]:
        def corrupt(problem: str) -> CorruptPinStore:
            return CorruptPinStore(f"{self.path}: corrupt pin store: {problem}")

        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise corrupt(f"not valid JSON ({exc})") from None
        # Checked here, or cattrs would say "'int' object has no attribute 'keys'".
        entries = data.get("pins") if isinstance(data, dict) else None
        for worker_id, entry in entries.items() if isinstance(entries, dict) else ():
            if not isinstance(entry, dict):
                kind = type(entry).__name__
                raise corrupt(f"pin {worker_id!r} must be a JSON object, got {kind}")
        try:
            record = structure_strict(data, _PinFile, what="pin file")
        except RecordError as exc:
            raise corrupt(str(exc)) from None
        pins = {}
        for worker_id, entry in (record.pins or {}).items():
            if not worker_id:
                raise corrupt("empty worker id")
            try:
                pins[worker_id] = _pin_from_record(entry)
            except (LeapcoreError, ValueError) as exc:
                raise corrupt(f"pin {worker_id!r}: {exc}") from None
        return pins

    # -- changing -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            ensure_private_dir(self.path.parent)
            fd = os.open(
                self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
            )
        except OSError as exc:
            raise PinStoreError(
                f"{self.path}: cannot lock pin store: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, pins: dict[str, Pin]) -> None:
        document = {"pins": {wid: _pin_to_record(pins[wid]) for wid in sorted(pins)}}
        write_atomic(self.path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))

    def verify(self, worker_id: str, keys: PublicKeyBundle) -> PinDecision:
        """Check ``keys`` against the pin for ``worker_id``: pin on first use, refresh on a match.

        A mismatch raises :class:`~leapcore.errors.KeyMismatch` and changes nothing.
        """
        if not worker_id:
            raise PinStoreError("worker id required")
        with self._locked():
            pins = self.load()
            decision = decide(pins, worker_id, keys, self._clock())
            if decision.outcome is PinOutcome.MISMATCH:
                raise KeyMismatch(
                    worker_id,
                    expected=decision.pin.fingerprint,
                    actual=keys.fingerprint,
                    hint=self.hint.replace("{worker_id}", shlex.quote(worker_id)),
                )
            if decision.persist:
                pins[worker_id] = decision.pin
                self._write(pins)
        return decision

    def remove(self, worker_id: str) -> bool:
        """Forget ``worker_id``'s pin; False (and no write) when there was none."""
        if worker_id not in self.load():
            return False  # touch nothing: no directory, no lock file
        with self._locked():
            pins = self.load()
            if pins.pop(worker_id, None) is None:
                return False
            self._write(pins)
            return True


_KEY_FIELDS = (
    ("x25519_public_key", "x25519", (X25519_KEY_SIZE,)),
    ("mlkem_public_key", "mlkem", (0, MLKEM_PUBLIC_KEY_SIZE)),
    ("slhdsa_public_key", "slhdsa", (0, SLHDSA_PUBLIC_KEY_SIZE)),
)


def _pin_from_record(entry: _PinRecord) -> Pin:
    keys: dict[str, Any] = {}
    for field, attr, sizes in _KEY_FIELDS:
        value = b64decode_strict(getattr(entry, field), field=field)
        if len(value) not in sizes:
            allowed = " or ".join(str(s) for s in sizes)
            raise ValueError(f"{field} must be {allowed} bytes, got {len(value)}")
        keys[attr] = value
    if bool(keys["mlkem"]) != bool(keys["slhdsa"]):
        raise ValueError("post-quantum keys must both be present or both be empty")
    return Pin(
        **keys,
        first_seen_at=parse_time(entry.first_seen_at),
        last_used_at=parse_time(entry.last_used_at),
    )


def _pin_to_record(pin: Pin) -> dict[str, str]:
    return {
        "x25519_public_key": b64encode(pin.x25519),
        "mlkem_public_key": b64encode(pin.mlkem),
        "slhdsa_public_key": b64encode(pin.slhdsa),
        "first_seen_at": format_time(pin.first_seen_at),
        "last_used_at": format_time(pin.last_used_at),
    }
