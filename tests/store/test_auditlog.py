"""The worker's audit log file: JSON lines appended, 0600 in 0700, rotated at its size,
rotated files pruned by age (a fake clock), and a log that cannot be written never raises."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from leapcore.store.auditlog import AuditLog

DAY = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_lines_are_appended_privately(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.log"
    audit = AuditLog(path, max_bytes=1 << 20, retention_days=1)
    assert not path.exists()  # nothing until the first record
    audit.write({"n": 1, "text": "é"})
    audit.write({"n": 2})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"n": 1, "text": "é"},
        {"n": 2},
    ]
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    audit.close()
    again = AuditLog(path, max_bytes=1 << 20, retention_days=1)
    again.write({"n": 3})
    assert len(path.read_text().splitlines()) == 3  # appended, never truncated


def test_rotation_at_the_size_and_pruning_by_age(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    clock = Clock(1_796_000_000.0)
    audit = AuditLog(path, max_bytes=100, retention_days=2, clock=clock)
    record = {"pad": "x" * 60}
    audit.write(record)
    audit.write(record)  # past 100 bytes: rotated
    first = audit.rotated()
    assert [p.name for p in first] == ["audit.log.20261130T005320Z"]
    assert len(first[0].read_text().splitlines()) == 2
    audit.write(record)
    audit.write(record)  # the same second: a second name
    assert [p.name for p in audit.rotated()] == [
        "audit.log.20261130T005320Z",
        "audit.log.20261130T005320Z-2",
    ]
    assert path.read_text() == ""
    clock.now += 3 * DAY
    audit.write(record)
    audit.write(record)  # rotating prunes what is older than 2 days
    assert [p.name for p in audit.rotated()] == ["audit.log.20261203T005320Z"]
    assert sorted(os.listdir(tmp_path)) == ["audit.log", "audit.log.20261203T005320Z"]


def test_a_log_that_cannot_be_written_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    audit = AuditLog(blocker / "audit.log", max_bytes=1 << 20, retention_days=1)
    audit.write({"n": 1})
    audit.write({"n": 2})
    assert audit.failures == 2
    (tmp_path / "real").mkdir()
    audit.path = tmp_path / "real" / "audit.log"  # the problem is fixed: the next one lands
    audit.write({"n": 3})
    assert json.loads(audit.path.read_text()) == {"n": 3}
