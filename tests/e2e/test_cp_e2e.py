"""``leapcore remote cp`` as a real process, through a real hub to a real ``leapcore-worker``
process (classic mode), like ``scp``: a tree of 1000 small files and one of 64 MiB both
ways (sha256 and modes kept), ``--json``, clear failures, and a ``cp`` killed mid-file
leaving no partial target on the worker."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.procs import Env, Proc, script, wait_for, worker_box

MIB = 1024 * 1024


@pytest.fixture(name="box", scope="module")
def box_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Proc]]:
    with worker_box(tmp_path_factory.mktemp("cp")) as box:
        yield box


def command(env: Env, *args: str) -> list[str]:
    return [script("leapcore"), "remote", "cp", *env.client_flags(), *args]


def cp(env: Env, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(env, *args),
        env={**env.env, "LEAPCORE_HUB": env.url},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def digest(root: Path) -> dict[str, tuple[str, int]]:
    """Every regular file under ``root``: (sha256, mode), by relative name."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            sha = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(MIB):
                    sha.update(block)
            out[path.relative_to(root).as_posix()] = (
                sha.hexdigest(),
                stat.S_IMODE(path.stat().st_mode),
            )
    return out


def test_a_tree_both_ways(box: tuple[Env, Proc], tmp_path: Path) -> None:
    env, _ = box
    source = tmp_path / "tree"
    for index in range(1000):
        sub = source / f"d{index % 10}" / f"e{index % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"f{index}.txt"
        path.write_bytes(os.urandom(index % 700))
        os.chmod(path, 0o600 if index % 2 else 0o644)
    with (source / "big.bin").open("wb") as out:
        for _ in range(64):
            out.write(os.urandom(MIB))
    os.chmod(source / "big.bin", 0o751)
    remote = tmp_path / "on-worker"
    up = cp(env, "-r", "--json", str(source), f"box:{remote}")
    assert up.returncode == 0, up.stderr
    summary = json.loads(up.stdout)
    assert set(summary) == {"files", "bytes", "seconds", "direction"}
    assert (summary["files"], summary["direction"]) == (1001, "put")
    assert summary["bytes"] == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    print(f"\nput 1001 files, {summary['bytes'] / MIB:.1f} MiB: {summary['seconds']:.1f} s")
    expected = digest(source)
    assert digest(remote) == expected
    back = tmp_path / "back"
    down = cp(env, "-r", "--json", f"box:{remote}", str(back))
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["files"] == 1001
    assert json.loads(down.stdout)["direction"] == "get"
    assert digest(back) == expected


def test_one_file_relative_to_the_home_and_failures(box: tuple[Env, Proc], tmp_path: Path) -> None:
    env, _ = box
    local = tmp_path / "one.txt"
    local.write_bytes(b"hello")
    done = cp(env, str(local), "box:one-copy.txt")
    assert done.returncode == 0, done.stderr
    assert (env.tmp / "one-copy.txt").read_bytes() == b"hello"  # the worker's HOME
    missing = cp(env, "box:/no/such/file", str(tmp_path / "x"))
    assert missing.returncode == 3 and "not_found" in missing.stderr
    directory = cp(env, str(tmp_path), "box:somewhere")
    assert directory.returncode == 8 and "is_a_directory" in directory.stderr
    usage = cp(env, str(local), str(tmp_path / "y"))
    assert usage.returncode == 2 and "WORKER:PATH" in usage.stderr


def test_a_killed_cp_leaves_no_partial_target(box: tuple[Env, Proc], tmp_path: Path) -> None:
    env, _ = box
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        for _ in range(256):
            out.write(os.urandom(MIB))
    remote = tmp_path / "remote"
    remote.mkdir()
    proc = subprocess.Popen(
        command(env, str(big), f"box:{remote / 'big.bin'}"),
        env={**env.env, "LEAPCORE_HUB": env.url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def partial() -> bool | None:
            temps = [p for p in remote.iterdir() if p.name.endswith(".leapcore-tmp")]
            return (bool(temps) and temps[0].stat().st_size > 0) or None

        wait_for(partial, "a partly written temporary file", timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: not any(remote.iterdir()) or None, "the temporary file to go", timeout=60)
    assert not (remote / "big.bin").exists()
