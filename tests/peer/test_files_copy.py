"""``Channel.put`` / ``Channel.get`` through a real channel pair (real handshake and ciphers,
classic mode, the hub played in memory) whose worker end serves the ``files`` methods on
real files: files and trees with their modes, escapes refused on both sides, and no
half-written target after a reset, a short write or a lost channel."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from support.channelpair import OWNER, MemoryPair, running
from support.execkit import wait_until

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import FileTransferFailed, RemoteCallError
from leapcore.peer.channel import CallContext, Services, reset_byte_stream
from leapcore.proto.files_spec import (
    LIST_METHOD,
    STAT_METHOD,
    WRITE_METHOD,
    Entry,
    PathRequest,
    encode_entries,
    encode_stat,
    encode_write,
)
from leapcore.store.safetree import TEMP_SUFFIX
from leapcore.worker.files import add_files_service

DEADLINE = 30.0


@asynccontextmanager
async def files_pair(
    keypair: WorkerKeyPair, home: Path, *, user_id: str = OWNER, services: Services | None = None
) -> AsyncIterator[MemoryPair]:
    pair = MemoryPair()
    if services is None:
        services = Services()
        add_files_service(services, home=lambda: home)
    pair.join(keypair, services, user_id=user_id)
    with trio.fail_after(DEADLINE):
        async with running(pair):
            yield pair


def temps(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def make_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"top\n")
    (root / "a" / "mid.bin").write_bytes(os.urandom(300_000))
    (root / "a" / "b" / "deep.txt").write_bytes(b"deep")
    (root / "a" / "b" / "empty").write_bytes(b"")
    (root / "empty-dir").mkdir()
    os.chmod(root / "top.txt", 0o640)
    os.chmod(root / "a" / "b" / "deep.txt", 0o600)
    os.chmod(root / "a" / "mid.bin", 0o755)
    os.chmod(root / "empty-dir", 0o750)
    (root / "link").symlink_to("top.txt")


def same_tree(left: Path, right: Path) -> None:
    names = sorted(p.relative_to(left).as_posix() for p in left.rglob("*") if not p.is_symlink())
    other = sorted(p.relative_to(right).as_posix() for p in right.rglob("*"))
    assert names == other
    for name in names:
        a, b = left / name, right / name
        assert mode_of(a) == mode_of(b), name
        if a.is_file():
            assert a.read_bytes() == b.read_bytes(), name
            assert abs(a.stat().st_mtime - b.stat().st_mtime) < 0.01, name


async def test_put_and_get_one_file(generated_keypair: WorkerKeyPair, tmp_path: Path) -> None:
    local, home = tmp_path / "local", tmp_path / "home"
    local.mkdir()
    home.mkdir()
    source = local / "data.bin"
    source.write_bytes(os.urandom(1_000_003))
    os.chmod(source, 0o604)
    seen: list[tuple[int, int]] = []
    async with files_pair(generated_keypair, home) as pair:
        result = await pair.client.put(
            source, "copy.bin", progress=lambda d, t: seen.append((d, t))
        )
        assert (result.files, result.bytes, result.direction) == (1, 1_000_003, "put")
        assert (home / "copy.bin").read_bytes() == source.read_bytes()
        assert mode_of(home / "copy.bin") == 0o604
        assert seen[-1] == (1_000_003, 1_000_003)
        # Into an existing directory: under the source's name; then back.
        (home / "dir").mkdir()
        await pair.client.put(source, str(home / "dir"))
        assert (home / "dir" / "data.bin").read_bytes() == source.read_bytes()
        back = await pair.client.get("dir/data.bin", local / "back.bin")
        assert (back.files, back.bytes, back.direction) == (1, 1_000_003, "get")
        assert (local / "back.bin").read_bytes() == source.read_bytes()
        assert mode_of(local / "back.bin") == 0o604
        empty = local / "empty"
        empty.write_bytes(b"")
        await pair.client.put(empty, "empty")
        assert (home / "empty").read_bytes() == b""
    assert temps(home) == [] and temps(local) == []


async def test_trees_both_ways_keep_modes(generated_keypair: WorkerKeyPair, tmp_path: Path) -> None:
    local, home = tmp_path / "local", tmp_path / "home"
    home.mkdir()
    make_tree(local)
    os.chmod(local / "a" / "b", 0o555)  # the files go in before its mode is applied
    async with files_pair(generated_keypair, home) as pair:
        up = await pair.client.put(local, "tree", recursive=True)
        assert (up.files, up.skipped) == (4, 1)
        same_tree(local, home / "tree")
        assert not (home / "tree" / "link").exists()
        down = await pair.client.get("tree", tmp_path / "down", recursive=True)
        assert down.files == 4 and down.bytes == up.bytes
        same_tree(home / "tree", tmp_path / "down")
        with pytest.raises(FileTransferFailed) as caught:
            await pair.client.put(local, "again")
        assert caught.value.reason == "is_a_directory"
        with pytest.raises(FileTransferFailed) as missing:
            await pair.client.get("nothing-here", tmp_path / "x")
        assert missing.value.reason == "not_found"
    for tree in (local, home / "tree", tmp_path / "down"):
        os.chmod(tree / "a" / "b", 0o755)


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped", "a/../../escaped", "a\0b"])
async def test_the_worker_refuses_names_that_escape(
    generated_keypair: WorkerKeyPair, tmp_path: Path, name: str
) -> None:
    home = tmp_path / "home"
    (home / "root" / "a").mkdir(parents=True)
    payload = json.dumps({"path": name, "root": str(home / "root"), "size": 1}).encode()
    async with files_pair(generated_keypair, home) as pair:
        with pytest.raises(RemoteCallError) as caught:
            await pair.client.open_byte_stream(WRITE_METHOD, payload)
    assert caught.value.remote_code in ("path_escapes", "invalid_argument")
    assert not (tmp_path / "escaped").exists() and not (home / "escaped").exists()


async def test_a_symlink_in_the_target_is_not_followed(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    home, outside, local = tmp_path / "home", tmp_path / "outside", tmp_path / "src" / "dest"
    outside.mkdir()
    (home / "dest").mkdir(parents=True)
    (home / "dest" / "sub").symlink_to(outside)  # planted: points out of the copy
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "file.txt").write_bytes(b"payload")
    async with files_pair(generated_keypair, home) as pair:
        with pytest.raises(FileTransferFailed) as caught:
            await pair.client.put(local, ".", recursive=True)  # into home/dest
        assert caught.value.reason == "path_escapes"
        # A write of one name under the root, through the link, is refused too.
        request = PathRequest("sub/file.txt", str(home / "dest"), 0o644, 1)
        with pytest.raises(RemoteCallError) as direct:
            await pair.client.open_byte_stream(WRITE_METHOD, encode_write(request))
        assert direct.value.remote_code == "path_escapes"
    assert list(outside.iterdir()) == []


async def test_a_hostile_worker_cannot_write_outside_the_local_target(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    services = Services()

    async def fake_stat(ctx: CallContext, payload: bytes) -> bytes:
        return encode_stat(Entry("dir", 0, 0o755, 0.0))

    async def fake_list(ctx: CallContext, payload: bytes) -> AsyncIterator[bytes]:
        yield encode_entries([Entry("file", 4, 0o644, 0.0, "../../evil")])

    services.add_rpc(STAT_METHOD, fake_stat)
    services.add_stream(LIST_METHOD, fake_list)
    async with files_pair(generated_keypair, tmp_path, services=services) as pair:
        with pytest.raises(FileTransferFailed) as caught:
            await pair.client.get("anything", tmp_path / "in" / "target", recursive=True)
    assert caught.value.reason == "path_escapes"
    assert not (tmp_path / "evil").exists() and not (tmp_path / "in" / "evil").exists()


async def test_a_local_symlink_in_the_get_target_is_not_followed(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    home, local, outside = tmp_path / "home", tmp_path / "local", tmp_path / "outside"
    (home / "tree" / "sub").mkdir(parents=True)
    (home / "tree" / "sub" / "f").write_bytes(b"x")
    outside.mkdir()
    (local / "tree").mkdir(parents=True)
    (local / "tree" / "sub").symlink_to(outside)
    async with files_pair(generated_keypair, home) as pair:
        with pytest.raises(FileTransferFailed) as caught:
            await pair.client.get("tree", local, recursive=True)
    assert caught.value.reason == "path_escapes"
    assert list(outside.iterdir()) == []


async def test_a_reset_mid_file_leaves_nothing(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    request = PathRequest(str(home / "big"), None, 0o644, 10_000_000)
    async with files_pair(generated_keypair, home) as pair:
        stream = await pair.client.open_byte_stream(WRITE_METHOD, encode_write(request))
        await stream.send_all(os.urandom(1_000_000))
        await wait_until(lambda: bool(temps(home)), "the temporary file")
        await wait_until(lambda: temps(home)[0].stat().st_size > 0, "data in the temp file")
        assert mode_of(temps(home)[0]) == 0o600
        await reset_byte_stream(stream, "cancelled", "changed my mind")
        await wait_until(lambda: not temps(home), "the temporary file to go")
    assert list(home.iterdir()) == []


async def test_a_short_write_or_a_lost_channel_leaves_nothing(
    generated_keypair: WorkerKeyPair, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "keep").write_bytes(b"old")
    async with files_pair(generated_keypair, home) as pair:
        short = PathRequest("keep", None, 0o644, 100)
        stream = await pair.client.open_byte_stream(WRITE_METHOD, encode_write(short))
        await stream.send_all(b"new")
        await stream.send_eof()
        with pytest.raises(trio.BrokenResourceError) as caught:
            await stream.receive_some()
        assert isinstance(caught.value.__cause__, RemoteCallError)
        assert caught.value.__cause__.remote_code == "invalid_argument"
        assert (home / "keep").read_bytes() == b"old"
        long = PathRequest("keep", None, 0o644, 50_000_000)
        stream = await pair.client.open_byte_stream(WRITE_METHOD, encode_write(long))
        await stream.send_all(b"x" * 500_000)
        await wait_until(lambda: bool(temps(home)), "the temporary file")
        await pair.client.aclose()  # the channel ends: the worker's handler is cancelled
        await wait_until(lambda: not temps(home), "the temporary file to go")
    assert (home / "keep").read_bytes() == b"old"
    assert [p.name for p in home.iterdir()] == ["keep"]


async def test_only_the_owner_may_copy(generated_keypair: WorkerKeyPair, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    async with files_pair(generated_keypair, tmp_path, user_id="u-stranger") as pair:
        with pytest.raises(FileTransferFailed) as put_refused:
            await pair.client.put(tmp_path / "f", "g")
        with pytest.raises(FileTransferFailed) as get_refused:
            await pair.client.get("f", tmp_path / "h")
    assert put_refused.value.reason == get_refused.value.reason == "permission_denied"
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()
