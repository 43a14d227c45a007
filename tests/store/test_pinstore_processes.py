"""The pin store across real processes: concurrent writers lose nothing, a writer killed with
SIGKILL at any moment leaves a whole file, and a writer waits for the lock before it reads.

Children are ``sys.executable -c CHILD`` subprocesses; they are synchronised through their
stdin/stdout pipes (and, for the lock test, by watching ``/proc/locks``), never by sleeping.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from leapcore.crypto.keys import PublicKeyBundle
from leapcore.store.pinstore import PinStore

# Keys are derived from the worker id, so the parent knows what every child pinned.
_PRELUDE = r"""
import hashlib, sys
from pathlib import Path
from leapcore.crypto.keys import PublicKeyBundle
from leapcore.store.pinstore import PinStore

def keys(worker_id):
    raw = hashlib.shake_256(worker_id.encode()).digest(32 + 1568 + 64)
    return PublicKeyBundle(raw[:32], raw[32:1600], raw[1600:])

store = PinStore(Path(sys.argv[1]))
"""

_CONCURRENT = (
    _PRELUDE
    + r"""
prefix, count = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
assert sys.stdin.readline() == "go\n"
for i in range(count):
    assert store.verify(f"{prefix}-{i:02d}", keys(f"{prefix}-{i:02d}")).outcome.value == "new"
print("done", flush=True)
"""
)

_PIN_UNTIL_KILLED = (
    _PRELUDE
    + r"""
start = int(sys.argv[2])
print("ready", flush=True)
i = start
while True:
    worker_id = f"k{i:05d}"
    store.verify(worker_id, keys(worker_id))
    print(worker_id, flush=True)  # only after verify() returned: this pin is committed
    i += 1
"""
)

_VERIFY_ONE = (
    _PRELUDE
    + r"""
print("ready", flush=True)
store.verify(sys.argv[2], keys(sys.argv[2]))
print("done", flush=True)
"""
)


def expected_keys(worker_id: str) -> tuple[bytes, bytes, bytes]:
    raw = hashlib.shake_256(worker_id.encode()).digest(32 + 1568 + 64)
    return raw[:32], raw[32:1600], raw[1600:]


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        assert proc.stderr is not None
        pytest.fail(f"child exited ({proc.returncode}) early: {proc.stderr.read()}")
    return line.rstrip("\n")


def assert_holds(path: Path, worker_ids: list[str]) -> dict[str, object]:
    """The file parses (as JSON and as a store) and holds each id with exactly its keys."""
    json.loads(path.read_text("utf-8"))
    pins = PinStore(path).load()
    for worker_id in worker_ids:
        pin = pins.get(worker_id)
        assert pin is not None, f"{worker_id} was committed but is missing from {path}"
        assert (pin.x25519, pin.mlkem, pin.slhdsa) == expected_keys(worker_id)
    return dict(pins)


def test_eight_processes_pinning_fifty_workers_each_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "pins.json"
    children = [spawn(_CONCURRENT, str(path), f"p{n}", "50") for n in range(8)]
    try:
        for child in children:
            assert read_line(child) == "ready"
        for child in children:  # a barrier: all are loaded and waiting when the first starts
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            assert read_line(child) == "done"
            assert child.wait(timeout=120) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    every = [f"p{n}-{i:02d}" for n in range(8) for i in range(50)]
    pins = assert_holds(path, every)
    assert sorted(pins) == sorted(every)
    assert len(pins) == 400
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["pins.json", "pins.json.lock"]


def test_a_writer_killed_at_random_moments_never_loses_a_committed_pin(tmp_path: Path) -> None:
    """Forty times: a child pins workers one after another, printing each id once verify()
    has returned; after it has printed k ids (k random, 0 included) and a further random
    fraction of one write, it gets SIGKILL. Every printed id, from this round and all the
    rounds before, must be in a file that parses."""
    seed = int.from_bytes(os.urandom(8), "big")
    rng = random.Random(seed)
    path = tmp_path / "crash" / "pins.json"
    committed: list[str] = []
    killed_mid_write = 0
    pause = threading.Event()  # never set: its wait() is the random delay before the kill
    for round_ in range(40):
        child = spawn(_PIN_UNTIL_KILLED, str(path), str(len(committed)))
        try:
            assert read_line(child) == "ready", f"seed {seed}"
            for _ in range(rng.randrange(0, 5)):
                committed.append(read_line(child))
            pause.wait(rng.uniform(0.0, 0.012))
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL, f"seed {seed}"
            assert child.stdout is not None
            committed.extend(line.rstrip("\n") for line in child.stdout)  # printed before death
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
        assert committed == [f"k{i:05d}" for i in range(len(committed))], f"seed {seed}"
        if not path.exists():
            assert committed == [], f"seed {seed}, round {round_}"
            continue
        pins = assert_holds(path, committed)
        # At most the one pin in flight at the kill may be there without having been reported.
        extra = sorted(set(pins) - set(committed))
        assert extra in ([], [f"k{len(committed):05d}"]), f"seed {seed}: {extra}"
        if extra:
            committed.append(extra[0])  # the next child will find it (a match), like any pin
        temps = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        killed_mid_write += len(temps)
        for temp in temps:  # a kill between mkstemp and rename leaves one behind; tidy up
            temp.unlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Informational: how often the kill landed between creating the temp file and the rename.
    print(f"seed {seed}: {len(committed)} pins, {killed_mid_write} kills during a write")


def _lock_waiters(lock_inode: int) -> set[int]:
    """The pids blocked waiting for a lock on the inode (the ``->`` lines of /proc/locks)."""
    waiters = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[6].endswith(f":{lock_inode}"):
            waiters.add(int(fields[5]))
    return waiters


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks")
def test_a_writer_waits_for_the_lock_and_only_then_reads(tmp_path: Path) -> None:
    """While this process holds the lock, a child's verify() blocks; a pin written meanwhile
    (as another holder of the lock would) survives the child's write. (The child is seen
    blocked in ``/proc/locks`` before anything is written: no sleeping.)"""
    path = tmp_path / "locked" / "pins.json"
    store = PinStore(path)
    store.verify("first", PublicKeyBundle(*expected_keys("first")))
    fd = os.open(path.with_name("pins.json.lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    child = spawn(_VERIFY_ONE, str(path), "child")
    try:
        assert read_line(child) == "ready"
        inode = os.fstat(fd).st_ino
        deadline = time.monotonic() + 30
        while child.pid not in _lock_waiters(inode):  # until the child is blocked in flock()
            assert child.poll() is None, "the child finished without waiting for the lock"
            assert time.monotonic() < deadline, "the child never waited for the lock"
            os.sched_yield()
        # We hold the lock: write as any other writer would, behind the child's back.
        store._write({**store.load(), "meanwhile": store.load()["first"]})
        os.close(fd)  # releases the lock
        fd = -1
        assert read_line(child) == "done"
        assert child.wait(timeout=30) == 0
    finally:
        if fd >= 0:
            os.close(fd)
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert sorted(PinStore(path).load()) == ["child", "first", "meanwhile"]
