"""The suite-wide check that no secret reaches a log.

During a test session (set up by ``tests/conftest.py``):

* every log record emitted in the pytest process goes to ``<basetemp>/session-logs/
  inprocess.log`` (a root handler, at INFO);
* :mod:`support.procs` appends the stderr of every command it runs, and of every
  background process it started, to ``<basetemp>/session-logs/procs.log``
  (:func:`append_log`); a process's own ``*.err`` file under the basetemp is read too;
* the secrets are what the tests minted — :func:`record_secret`, called by the minting
  helpers, and the hub store's minting methods (wrapped by ``conftest.py``) — plus those
  found at the end in the basetemp's JSON files: worker ``state.json`` (``auth_token``
  and the private keys), client credentials and ``solo.json`` (``token``)
  (:func:`harvest_secrets`).

At the end :func:`find_leaks` reads every collected log once and reports each line that
holds a secret, or the first :data:`WINDOW` characters of one, masked (:func:`mask`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs

#: Secrets shorter than this are not tracked (a 48-character token is the usual size).
MIN_SECRET: Final = 20
#: A leak is a secret, or its first WINDOW characters, found in a log line.
WINDOW: Final = 20
#: JSON keys whose string values are secrets, wherever they are found.
SECRET_KEYS: Final = frozenset(
    {
        "token",
        "auth_token",
        "api_token",
        "registration_key",
        "private_key",
        "mlkem_private_key",
        "slhdsa_private_key",
    }
)
#: Runs of characters a secret is made of (ids: letters and digits; keys: base64, hex).
_RUN: Final = re.compile(rf"[A-Za-z0-9+/=_\-]{{{WINDOW},}}")
#: JSON files larger than this are not read for secrets.
_MAX_JSON: Final = 1 << 20

_secrets: set[str] = set()
_log_dir: Path | None = None


def record_secret(value: str) -> str:
    """Remember ``value`` as a secret no log may contain; returns it unchanged."""
    if isinstance(value, str) and len(value) >= MIN_SECRET:
        _secrets.add(value)
    return value


def record_secrets_in(document: Any) -> None:
    """Remember every secret-named string value in a JSON document (``--json`` output)."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key in SECRET_KEYS and isinstance(value, str):
                record_secret(value)
            else:
                record_secrets_in(value)
    elif isinstance(document, list):
        for item in document:
            record_secrets_in(item)


def recorded() -> frozenset[str]:
    return frozenset(_secrets)


def set_log_dir(path: Path | None) -> None:
    global _log_dir
    _log_dir = path


def log_dir() -> Path | None:
    """The session's log directory (``None`` outside a test session)."""
    return _log_dir


def append_log(name: str, origin: str, text: str) -> None:
    """Append ``text`` (output of ``origin``) to the session's log file ``name``."""
    if _log_dir is None or not text:
        return
    with (_log_dir / name).open("a", encoding="utf-8", errors="replace") as out:
        out.write(f"==> {origin}\n{text}")
        if not text.endswith("\n"):
            out.write("\n")


def harvest_secrets(root: Path) -> set[str]:
    """The secrets in the JSON files under ``root`` (state, credentials, solo files)."""
    found: set[str] = set()
    for path in root.rglob("*.json"):
        try:
            if not path.is_file() or path.stat().st_size > _MAX_JSON:
                continue
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # hostile tests write such files
            continue
        stack = [document]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                for key, value in item.items():
                    if key in SECRET_KEYS and isinstance(value, str):
                        if len(value) >= MIN_SECRET:
                            found.add(value)
                    else:
                        stack.append(value)
            elif isinstance(item, list):
                stack.extend(item)
    return found


def log_files(root: Path) -> list[Path]:
    """Every log the session produced: the session log directory's files and every
    process's ``*.err`` under ``root`` (the basetemp)."""
    files = set(root.rglob("*.err"))
    if _log_dir is not None and _log_dir.is_dir():
        files.update(p for p in _log_dir.iterdir() if p.is_file())
    return sorted(files)


@attrs.frozen
class Leak:
    path: Path
    line: int
    #: The secret, masked (:func:`mask`).
    masked: str
    #: The line, with the secret masked.
    text: str


def mask(secret: str) -> str:
    """``abcd…(48)``: enough to find the secret, not enough to use it."""
    return f"{secret[:4]}\u2026({len(secret)})"


def _index(secrets: Iterable[str]) -> dict[str, str]:
    """The first :data:`WINDOW` characters of each secret -> the secret."""
    return {s[:WINDOW]: s for s in secrets if len(s) >= MIN_SECRET}


def _scan_line(line: str, index: dict[str, str]) -> Iterator[str]:
    for run in _RUN.finditer(line):
        text = run.group()
        for start in range(len(text) - WINDOW + 1):
            secret = index.get(text[start : start + WINDOW])
            if secret is not None:
                yield secret


def find_leaks(secrets: Iterable[str], files: Iterable[Path]) -> list[Leak]:
    """Every line of ``files`` holding one of ``secrets`` (or its first :data:`WINDOW`
    characters). One pass: a line is split into runs of secret characters, and each
    window of a run is one dictionary look-up, however many secrets there are."""
    index = _index(secrets)
    leaks: list[Leak] = []
    if not index:
        return leaks
    for path in files:
        try:
            handle = path.open(encoding="utf-8", errors="replace")
        except OSError:
            continue
        with handle:
            for number, line in enumerate(handle, 1):
                found = set(_scan_line(line, index))
                if not found:
                    continue
                shown = line.rstrip("\n")
                for secret in found:  # every secret on the line masked, whole or prefix
                    shown = shown.replace(secret, mask(secret))
                    shown = shown.replace(secret[:WINDOW], mask(secret))
                leaks.extend(Leak(path, number, mask(s), shown[:300]) for s in sorted(found))
    return leaks
