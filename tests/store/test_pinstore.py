"""The file-backed pin store: format, persistence rules, refusal of bad files, and a stateful
model of random verify/remove/reload/concurrent-writer sequences checked against a plain dict."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from support.helpers import expect

from leapcore.crypto.fingerprint import fingerprint
from leapcore.crypto.keys import PublicKeyBundle
from leapcore.crypto.primitives import (
    MLKEM_PUBLIC_KEY_SIZE,
    SLHDSA_PUBLIC_KEY_SIZE,
    X25519_KEY_SIZE,
)
from leapcore.errors import CorruptPinStore, KeyMismatch, PinStoreError, StorageError
from leapcore.proto.pins import Pin, PinOutcome, format_time
from leapcore.store.atomicfile import write_atomic
from leapcore.store.pinstore import PinStore

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, 125_000, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
HINT = "clear with `pins remove --id={worker_id}`"


def _key(label: str, n: int, size: int) -> bytes:
    return hashlib.shake_256(f"{label}{n}".encode()).digest(size)


def bundle(x: int = 0, m: int = 0, s: int = 0) -> PublicKeyBundle:
    return PublicKeyBundle(
        _key("x25519-", x, X25519_KEY_SIZE),
        _key("mlkem-", m, MLKEM_PUBLIC_KEY_SIZE),
        _key("slhdsa-", s, SLHDSA_PUBLIC_KEY_SIZE),
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def entry_json(keys: PublicKeyBundle, first: str, last: str, *, classic: bool = False) -> dict:
    return {
        "x25519_public_key": b64(keys.x25519),
        "mlkem_public_key": "" if classic else b64(keys.mlkem),
        "slhdsa_public_key": "" if classic else b64(keys.slhdsa),
        "first_seen_at": first,
        "last_used_at": last,
    }


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "pins.json"


@pytest.fixture
def store(path: Path, clock: Clock) -> PinStore:
    return PinStore(path, hint=HINT, clock=clock)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def leftovers(directory: Path) -> list[str]:
    """Temporary files left behind by writes (there should be none)."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- format and first use ------------------------------------------------------------------------


def test_first_verify_creates_the_file_in_the_documented_format(
    store: PinStore, path: Path, clock: Clock
) -> None:
    assert not path.parent.exists()
    decision = store.verify("w1", bundle())
    assert decision.outcome is PinOutcome.NEW and decision.persist
    clock.now = T0 + MINUTE
    store.verify("a0", bundle(2, 2, 2))
    text = path.read_text("utf-8")
    expected = {
        "pins": {
            "a0": entry_json(
                bundle(2, 2, 2), "2026-03-01T12:01:00.125000Z", "2026-03-01T12:01:00.125000Z"
            ),
            "w1": entry_json(
                bundle(), "2026-03-01T12:00:00.125000Z", "2026-03-01T12:00:00.125000Z"
            ),
        }
    }
    assert text == json.dumps(expected, indent=2) + "\n"  # 2-space indent, sorted by worker id
    assert list(json.loads(text)["pins"]) == ["a0", "w1"]


def test_modes_are_0600_and_0700_whatever_the_umask(store: PinStore, path: Path) -> None:
    old = os.umask(0)
    try:
        store.verify("w1", bundle())
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    lock = path.with_name("pins.json.lock")
    assert mode(lock) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["pins.json", "pins.json.lock"]


def test_missing_file_is_an_empty_store_and_reading_creates_nothing(
    store: PinStore, path: Path
) -> None:
    assert store.load() == {}
    assert store.get("w1") is None
    assert store.remove("w1") is False
    assert not path.parent.exists()


def test_pins_null_is_an_empty_store(store: PinStore, path: Path) -> None:
    path.parent.mkdir()
    path.write_text('{"pins": null}')
    assert store.load() == {}
    store.verify("w1", bundle())
    assert list(store.load()) == ["w1"]


def test_load_returns_pins_with_their_keys_and_times(store: PinStore, clock: Clock) -> None:
    store.verify("w1", bundle())
    assert store.load() == {"w1": Pin(*attrs.astuple(bundle()), T0, T0)}
    pins = store.load()
    pins.clear()
    assert list(store.load()) == ["w1"]


def test_foreign_files_with_nanoseconds_and_offsets_are_read(store: PinStore, path: Path) -> None:
    path.parent.mkdir()
    document = {
        "pins": {
            "w1": entry_json(
                bundle(), "2026-03-01T12:00:00.123456789Z", "2026-03-01T14:00:00+02:00"
            )
        }
    }
    path.write_text(json.dumps(document))
    pin = store.get("w1")
    assert pin is not None
    assert pin.first_seen_at == dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    assert pin.last_used_at == dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


# -- match, refresh, mismatch, remove ----------------------------------------------------------


def test_match_refreshes_last_used_on_disk_at_most_every_ten_minutes(
    store: PinStore, path: Path, clock: Clock
) -> None:
    store.verify("w1", bundle())
    inode, data = path.stat().st_ino, path.read_bytes()

    clock.now = T0 + 10 * MINUTE - dt.timedelta(microseconds=1)
    decision = store.verify("w1", bundle())
    assert decision.outcome is PinOutcome.MATCH and not decision.persist
    assert decision.pin.last_used_at == clock.now
    assert (path.stat().st_ino, path.read_bytes()) == (inode, data)  # not rewritten

    clock.now = T0 + 10 * MINUTE
    decision = store.verify("w1", bundle())
    assert decision.outcome is PinOutcome.MATCH and decision.persist
    pin = store.get("w1")
    assert pin is not None
    assert (pin.first_seen_at, pin.last_used_at) == (T0, T0 + 10 * MINUTE)
    assert path.stat().st_ino != inode  # replaced by rename, never edited in place


@pytest.mark.parametrize(
    "presented",
    [bundle(x=1), bundle(m=1), bundle(s=1)],
    ids=["x25519", "mlkem", "slhdsa"],
)
def test_a_single_differing_key_raises_and_changes_nothing(
    store: PinStore, path: Path, clock: Clock, presented: PublicKeyBundle
) -> None:
    store.verify("w1", bundle())
    before = path.read_bytes(), path.stat().st_ino
    clock.now = T0 + 60 * MINUTE
    exc = expect(
        KeyMismatch,
        r"^worker w1 key mismatch \u2014 clear with `pins remove --id=w1`$",
        store.verify,
        "w1",
        presented,
    )
    assert isinstance(exc, KeyMismatch)
    assert str(exc) == "worker w1 key mismatch \u2014 clear with `pins remove --id=w1`"
    assert exc.code == "key_mismatch"
    assert exc.worker_id == "w1"
    assert exc.expected == bundle().fingerprint
    assert exc.actual == presented.fingerprint
    assert exc.expected != exc.actual
    assert exc.hint == "clear with `pins remove --id=w1`"
    assert (path.read_bytes(), path.stat().st_ino) == before
    assert leftovers(path.parent) == []


def test_hint_substitutes_a_shell_quoted_id_and_leaves_other_braces(path: Path) -> None:
    store = PinStore(path, hint="run `forget --dir '/srv/{odd}' {worker_id}` ({worker_id})")
    store.verify("a b", bundle())
    exc = expect(KeyMismatch, "key mismatch", store.verify, "a b", bundle(x=1))
    assert str(exc) == (
        "worker a b key mismatch \u2014 run `forget --dir '/srv/{odd}' 'a b'` ('a b')"
    )
    store.verify("w-1.ok", bundle())
    exc = expect(KeyMismatch, "key mismatch", store.verify, "w-1.ok", bundle(x=1))
    assert str(exc).endswith("run `forget --dir '/srv/{odd}' w-1.ok` (w-1.ok)")


def test_mismatch_after_a_mismatch_still_reports_the_pinned_keys(store: PinStore) -> None:
    store.verify("w1", bundle())
    for attacker in (bundle(x=1), bundle(x=2)):
        exc = expect(KeyMismatch, "^worker w1 key mismatch", store.verify, "w1", attacker)
        assert isinstance(exc, KeyMismatch)
        assert exc.expected == bundle().fingerprint
    assert store.verify("w1", bundle()).outcome is PinOutcome.MATCH


def test_empty_worker_id_is_refused(store: PinStore, path: Path) -> None:
    expect(PinStoreError, "^worker id required$", store.verify, "", bundle())
    assert not path.parent.exists()


def test_remove_is_idempotent_and_the_next_verify_pins_again(
    store: PinStore, path: Path, clock: Clock
) -> None:
    store.verify("w1", bundle())
    store.verify("w2", bundle(2, 2, 2))
    assert store.remove("w1") is True
    assert list(store.load()) == ["w2"]
    inode, data = path.stat().st_ino, path.read_bytes()
    assert store.remove("w1") is False
    assert store.remove("never-pinned") is False
    assert (path.stat().st_ino, path.read_bytes()) == (inode, data)  # no write at all
    clock.now = T0 + MINUTE
    decision = store.verify("w1", bundle(x=1))  # a cleared pin accepts new keys
    assert decision.outcome is PinOutcome.NEW
    assert decision.pin.first_seen_at == T0 + MINUTE
    assert store.remove("w2") is True
    assert store.remove("w1") is True
    assert json.loads(path.read_text()) == {"pins": {}}


def test_classic_pin_from_an_older_file_is_upgraded_once(
    store: PinStore, path: Path, clock: Clock
) -> None:
    path.parent.mkdir()
    first = "2025-01-01T00:00:00Z"
    path.write_text(json.dumps({"pins": {"w1": entry_json(bundle(), first, first, classic=True)}}))
    pin = store.get("w1")
    assert pin is not None and pin.is_classic_only
    decision = store.verify("w1", bundle())
    assert decision.outcome is PinOutcome.UPGRADE
    assert json.loads(path.read_text()) == {
        "pins": {"w1": entry_json(bundle(), "2025-01-01T00:00:00.000000Z", format_time(T0))}
    }
    assert store.verify("w1", bundle()).outcome is PinOutcome.MATCH
    expect(KeyMismatch, "^worker w1 key mismatch", store.verify, "w1", bundle(m=1))


def test_classic_pin_with_another_x25519_key_is_a_mismatch(store: PinStore, path: Path) -> None:
    path.parent.mkdir()
    when = "2025-01-01T00:00:00Z"
    path.write_text(json.dumps({"pins": {"w1": entry_json(bundle(), when, when, classic=True)}}))
    before = path.read_bytes()
    exc = expect(KeyMismatch, "^worker w1 key mismatch", store.verify, "w1", bundle(x=1))
    assert isinstance(exc, KeyMismatch)
    assert exc.expected == fingerprint(bundle().x25519, b"", b"")
    assert path.read_bytes() == before


# -- crash safety of a single write ----------------------------------------------------------


def test_write_is_temp_fsync_rename_fsync_dir(
    store: PinStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.verify("w1", bundle())
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        assert Path(src).parent == path.parent  # the temp file is beside the target
        assert Path(src).exists() and json.loads(Path(src).read_text())["pins"].keys() == {
            "w1",
            "w2",
        }
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.verify("w2", bundle(2, 2, 2))
    assert events == [("fsync", "file"), ("replace", "pins.json"), ("fsync", "dir")]


def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(
    store: PinStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.verify("w1", bundle())
    before = path.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    expect(
        StorageError,
        f"^{re.escape(str(path))}: cannot write: No space left on device$",
        store.verify,
        "w2",
        bundle(2, 2, 2),
    )
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(path.parent) == []
    assert list(store.load()) == ["w1"]


# -- files that are not a pin store ------------------------------------------------------------

_GOOD = entry_json(bundle(), "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z")


def _with(**changes: Any) -> bytes:
    return json.dumps({"pins": {"w1": {**_GOOD, **changes}}}).encode()


CORRUPT = [
    ("empty", b"", "not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    (
        "truncated",
        b'{\n  "pins": {\n    "w1": {\n      "x25519_',
        "not valid JSON (Unterminated string starting at: line 4 column 7 (char 32))",
    ),
    (
        "not-utf8",
        b'{"pins": {"\xff": {}}}',
        "not valid JSON ('utf-8' codec can't decode byte 0xff in position 11: invalid start byte)",
    ),
    (
        "bom",
        b"\xef\xbb\xbf{}",
        "not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0))",
    ),
    (
        "deep",
        b"[" * 100_000,
        "not valid JSON (maximum recursion depth exceeded while decoding a JSON array from a "
        "unicode string)",
    ),
    ("list", b"[]", "pin file must be a JSON object, got list"),
    ("null", b"null", "pin file must be a JSON object, got NoneType"),
    ("string", b'"pins"', "pin file must be a JSON object, got str"),
    ("unknown-top", b'{"pins": {}, "version": 2}', "invalid pin file: unknown field(s) 'version'"),
    ("pins-list", b'{"pins": []}', "invalid pin file: field 'pins': expected dict, got list"),
    ("pin-int", b'{"pins": {"w1": 1}}', "pin 'w1' must be a JSON object, got int"),
    ("pin-null", b'{"pins": {"w1": null}}', "pin 'w1' must be a JSON object, got NoneType"),
    ("pin-list", b'{"pins": {"w1": []}}', "pin 'w1' must be a JSON object, got list"),
    (
        "key-int",
        _with(x25519_public_key=5),
        "invalid pin file: field 'pins': key 'w1': field 'x25519_public_key': expected str, "
        "got int",
    ),
    (
        "time-int",
        _with(first_seen_at=0),
        "invalid pin file: field 'pins': key 'w1': field 'first_seen_at': expected str, got int",
    ),
    (
        "extra-field",
        _with(comment="hi"),
        "invalid pin file: field 'pins': key 'w1': unknown field(s) 'comment'",
    ),
    (
        "missing-field",
        json.dumps({"pins": {"w1": {k: v for k, v in _GOOD.items() if k != "last_used_at"}}}),
        "invalid pin file: field 'pins': key 'w1': missing field 'last_used_at'",
    ),
    (
        "bad-base64",
        _with(slhdsa_public_key="not base64!"),
        "pin 'w1': field 'slhdsa_public_key' is not valid standard base64",
    ),
    (
        "urlsafe-base64",
        _with(x25519_public_key=base64.urlsafe_b64encode(b"\xfb" * 32).decode()),
        "pin 'w1': field 'x25519_public_key' is not valid standard base64",
    ),
    (
        "short-key",
        _with(x25519_public_key=b64(b"\x01" * 31)),
        "pin 'w1': x25519_public_key must be 32 bytes, got 31",
    ),
    (
        "short-mlkem",
        _with(mlkem_public_key=b64(b"\x01" * 1567)),
        "pin 'w1': mlkem_public_key must be 0 or 1568 bytes, got 1567",
    ),
    (
        "half-pq",
        _with(slhdsa_public_key=""),
        "pin 'w1': post-quantum keys must both be present or both be empty",
    ),
    (
        "bad-time",
        _with(last_used_at="2026-01-01 00:00:00"),
        "pin 'w1': not an RFC 3339 timestamp: '2026-01-01 00:00:00'",
    ),
    (
        "no-zone",
        _with(first_seen_at="2026-01-01T00:00:00"),
        "pin 'w1': not an RFC 3339 timestamp: '2026-01-01T00:00:00'",
    ),
    (
        "bad-date",
        _with(first_seen_at="2026-02-30T00:00:00Z"),
        "pin 'w1': day is out of range for month",
    ),
    ("empty-id", json.dumps({"pins": {"": _GOOD}}), "empty worker id"),
]


@pytest.mark.parametrize(
    ("content", "problem"), [(c, p) for _, c, p in CORRUPT], ids=[n for n, _, _ in CORRUPT]
)
def test_corrupt_file_is_a_clear_error_and_never_overwritten(
    store: PinStore, path: Path, content: bytes | str, problem: str
) -> None:
    path.parent.mkdir(mode=0o700)
    raw = content.encode() if isinstance(content, str) else content
    path.write_bytes(raw)
    before = path.stat()
    message = f"{path}: corrupt pin store: {problem}"
    for call, args in (
        (store.load, ()),
        (store.get, ("w1",)),
        (store.verify, ("w1", bundle())),
        (store.verify, ("w2", bundle())),
        (store.remove, ("w1",)),
        (store.remove, ("w2",)),
    ):
        exc = expect(CorruptPinStore, "", call, *args)
        assert str(exc) == message
        assert exc.code == "pin_store_corrupt"
    after = path.stat()
    assert path.read_bytes() == raw
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert leftovers(path.parent) == []


def test_a_store_truncated_anywhere_is_corrupt_never_partial(store: PinStore, path: Path) -> None:
    store.verify("w1", bundle())
    whole = path.read_bytes()
    assert whole.endswith(b"}\n")
    victim = PinStore(path.with_name("cut.json"))
    for size in range(len(whole) - 2):  # whole[:-1] and whole are both complete documents
        victim.path.write_bytes(whole[:size])
        with pytest.raises(CorruptPinStore) as info:
            victim.load()
        assert str(info.value).startswith(f"{victim.path}: corrupt pin store: not valid JSON (")


def test_a_directory_in_place_of_the_file_is_an_unreadable_store(
    store: PinStore, path: Path
) -> None:
    path.mkdir(parents=True)
    (path / "keep").write_text("x")
    message = f"^{re.escape(str(path))}: cannot read pin store: Is a directory$"
    expect(PinStoreError, message, store.load)
    expect(PinStoreError, message, store.verify, "w1", bundle())
    expect(PinStoreError, message, store.remove, "w1")
    assert [p.name for p in path.iterdir()] == ["keep"]


def test_a_file_in_place_of_the_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    store = PinStore(blocker / "pins.json")
    expect(
        PinStoreError,
        f"^{re.escape(str(blocker))}/pins.json: cannot read pin store: Not a directory$",
        store.load,
    )
    expect(PinStoreError, "cannot read pin store: Not a directory$", store.remove, "w1")
    # Creating the directory fails before any read: the lock cannot be taken.
    expect(
        PinStoreError,
        f"^{re.escape(str(blocker))}/pins.json: cannot lock pin store: Not a directory$",
        store.verify,
        "w1",
        bundle(),
    )
    assert blocker.read_text() == "not a directory"


_AS_NOBODY = r"""
import json, os, sys
from pathlib import Path
from leapcore.errors import LeapcoreError
from leapcore.crypto.keys import PublicKeyBundle
from leapcore.store.pinstore import PinStore

path = Path(sys.argv[1])
keys = PublicKeyBundle(bytes(32), bytes(1568), bytes(64))
if os.geteuid() == 0:  # drop to nobody only now: the interpreter itself lives under /root
    os.setgroups([])
    os.setgid(int(sys.argv[2]))
    os.setuid(int(sys.argv[2]))
results = {}
for name, call in (
    ("load", lambda: PinStore(path).load()),
    ("verify", lambda: PinStore(path).verify("w2", keys)),
    ("remove", lambda: PinStore(path).remove("w1")),
):
    try:
        call()
        results[name] = None
    except LeapcoreError as exc:
        results[name] = [type(exc).__name__, str(exc)]
print(json.dumps({"uid": os.geteuid(), "results": results}))
"""


@pytest.fixture
def world_traversable_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="leapcore-eacces-"))
    try:
        base.chmod(0o711)
        yield base
    finally:
        for p in [base, *base.rglob("*")]:
            p.chmod(0o700)
        shutil.rmtree(base)


def test_permission_denied_is_an_unreadable_store(world_traversable_dir: Path) -> None:
    """Real EACCES: as root the check drops to ``nobody`` in a child process first (root reads
    any file); as another user a mode-000 file in a read-only directory does it."""
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        nobody = -1
    if os.geteuid() == 0 and nobody < 0:
        pytest.skip("running as root and there is no 'nobody' user to drop to")
    directory = world_traversable_dir / "store"
    directory.mkdir()
    path = directory / "pins.json"
    PinStore(path).verify("w1", bundle())
    path.with_name("pins.json.lock").unlink()
    before = path.read_bytes(), path.stat().st_ino
    path.chmod(0o600 if os.geteuid() == 0 else 0o000)
    directory.chmod(0o755 if os.geteuid() == 0 else 0o555)
    proc = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, str(path), str(nobody)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["uid"] != 0
    assert report["results"] == {
        "load": ["PinStoreError", f"{path}: cannot read pin store: Permission denied"],
        "verify": ["PinStoreError", f"{path}: cannot lock pin store: Permission denied"],
        "remove": ["PinStoreError", f"{path}: cannot read pin store: Permission denied"],
    }
    directory.chmod(0o700)
    path.chmod(0o600)
    assert (path.read_bytes(), path.stat().st_ino) == before
    assert sorted(p.name for p in directory.iterdir()) == ["pins.json"]


# -- the stateful model --------------------------------------------------------------------------

WORKERS = ("w1", "w2", "w3")
#: Key sets that differ from the first in exactly one key, and one that differs in X25519 only.
KEYSETS = ((0, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0))
BUNDLES = {k: bundle(*k) for k in KEYSETS}


@attrs.frozen
class ModelPin:
    keys: tuple[int, int | None, int | None]  # (x, None, None): a classic-only pin
    first: dt.datetime
    last: dt.datetime  # as persisted

    def material(self) -> tuple[bytes, bytes, bytes]:
        x, m, s = self.keys
        b = BUNDLES[(x, m or 0, s or 0)] if m is not None else bundle(x)
        return (b.x25519, b.mlkem, b.slhdsa) if m is not None else (b.x25519, b"", b"")


Model = dict[str, ModelPin]
Op = tuple[str, str, tuple[int, int, int] | None]  # ("verify"|"remove", worker id, key set)


def apply(model: Model, op: Op, now: dt.datetime) -> tuple[Any, Model]:
    """The expected result of ``op`` and the model after it, in plain dict terms."""
    kind, wid, keys = op
    model = dict(model)
    if kind == "remove":
        return model.pop(wid, None) is not None, model
    assert keys is not None
    old = model.get(wid)
    if old is None:
        model[wid] = ModelPin(keys, now, now)
        return "new", model
    if old.keys[0] != keys[0] or (old.keys[1] is not None and old.keys[1:] != keys[1:]):
        x, m, s = old.material()
        return ("mismatch", fingerprint(x, m, s), BUNDLES[keys].fingerprint), model
    if old.keys[1] is None:
        model[wid] = ModelPin(keys, old.first, now)
        return "upgrade", model
    if now - old.last >= 10 * MINUTE:
        model[wid] = ModelPin(keys, old.first, now)
    return "match", model


def perform(store: PinStore, op: Op) -> Any:
    kind, wid, keys = op
    if kind == "remove":
        return store.remove(wid)
    assert keys is not None
    try:
        return store.verify(wid, BUNDLES[keys]).outcome.value
    except KeyMismatch as exc:
        hint = store.hint.replace("{worker_id}", wid)
        assert str(exc) == f"worker {wid} key mismatch \u2014 {hint}"
        return ("mismatch", exc.expected, exc.actual)


OPS = st.one_of(
    st.tuples(st.just("verify"), st.sampled_from(WORKERS), st.sampled_from(KEYSETS)),
    st.tuples(st.just("remove"), st.sampled_from(WORKERS), st.none()),
)


class PinStoreModel(RuleBasedStateMachine):
    """Several store objects on one file (as several processes would have), a shared clock
    that moves both ways, foreign classic pins, and pairs of operations run at the same time
    in two threads, which must agree with one of the two serial orders."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="leapcore-pinstore-model-"))
        self.path = self.dir / "hub" / "pins.json"
        self.clock = Clock()
        self.stores = [
            PinStore(self.path, hint=f"store {i}: forget {{worker_id}}", clock=self.clock)
            for i in range(3)
        ]
        self.model: Model = {}

    def teardown(self) -> None:
        shutil.rmtree(self.dir)

    def snapshot(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None

    @rule(minutes=st.integers(-3, 14), seconds=st.integers(0, 59))
    def time_passes(self, minutes: int, seconds: int) -> None:
        self.clock.now += dt.timedelta(minutes=minutes, seconds=seconds)

    @rule(which=st.integers(0, 2), op=OPS)
    def one_operation(self, which: int, op: Op) -> None:
        before = self.snapshot()
        expected, model = apply(self.model, op, self.clock.now)
        assert perform(self.stores[which], op) == expected
        if model == self.model:
            assert self.snapshot() == before, "an operation that changes nothing wrote"
        self.model = model

    @rule(which=st.integers(0, 2))
    def restart(self, which: int) -> None:
        self.stores[which] = PinStore(self.path, hint=self.stores[which].hint, clock=self.clock)

    @rule(wid=st.sampled_from(WORKERS), x=st.integers(0, 1))
    def foreign_classic_pin(self, wid: str, x: int) -> None:
        """An older client, honouring the lock, pins a worker it has not seen, classic-only.

        (No precondition on the model: after two writers at once the model depends on which
        thread went first, and hypothesis needs the choice of rules to replay exactly.)
        """
        store = self.stores[0]
        with store._locked():
            document = json.loads(self.path.read_text()) if self.path.exists() else {"pins": {}}
            if wid in document["pins"]:
                return
            when = format_time(self.clock.now)
            document["pins"][wid] = entry_json(bundle(x), when, when, classic=True)
            write_atomic(self.path, json.dumps(document).encode())
        self.model[wid] = ModelPin((x, None, None), self.clock.now, self.clock.now)

    @rule(a=OPS, b=OPS)
    def two_writers_at_once(self, a: Op, b: Op) -> None:
        results: list[Any] = [None, None]
        start = threading.Barrier(2)

        def run(i: int, op: Op) -> None:
            start.wait()
            try:
                results[i] = perform(self.stores[i], op)
            except BaseException as exc:  # surfaced below
                results[i] = exc

        threads = [threading.Thread(target=run, args=(i, op)) for i, op in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        now = self.clock.now
        ra, after_a = apply(self.model, a, now)
        rb, after_ab = apply(after_a, b, now)
        rb2, after_b = apply(self.model, b, now)
        ra2, after_ba = apply(after_b, a, now)
        orders = [((ra, rb), after_ab), ((ra2, rb2), after_ba)]
        on_disk = self.on_disk()
        matching = [m for r, m in orders if list(r) == results and self.as_disk(m) == on_disk]
        assert matching, f"{a} and {b} gave {results}, file {on_disk}: no serial order agrees"
        self.model = matching[0]

    def on_disk(self) -> dict[str, tuple[bytes, bytes, bytes, dt.datetime, dt.datetime]]:
        return {
            wid: (p.x25519, p.mlkem, p.slhdsa, p.first_seen_at, p.last_used_at)
            for wid, p in PinStore(self.path).load().items()
        }

    @staticmethod
    def as_disk(model: Model) -> dict[str, tuple[bytes, bytes, bytes, dt.datetime, dt.datetime]]:
        return {wid: (*p.material(), p.first, p.last) for wid, p in model.items()}

    @invariant()
    def file_agrees_with_the_model(self) -> None:
        assert self.on_disk() == self.as_disk(self.model)
        if self.path.exists():
            assert mode(self.path) == 0o600
            assert mode(self.path.parent) == 0o700
            assert leftovers(self.path.parent) == []


PinStoreModel.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_pin_store_model = PinStoreModel.TestCase
