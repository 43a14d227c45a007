"""Workspaces (``Channel.workspace`` and friends) against the worker's ``workspace``
service through real channel pairs (real handshake and ciphers, classic mode), running the
real git on local bare repositories (``file://``): get-or-create, concurrent creates,
list with head and dirty, remove refused while busy or dirty, processes and terminals
started in a workspace, and bad input that leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import trio
from support.execkit import wait_until
from support.gitkit import Origin, git, origin_with_branches, workspace_worker
from support.ptykit import screen_until

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import InvalidMessage, RemoteCallError, ServiceError, WorkspaceError
from leapcore.proto.workspace_spec import (
    OPEN_METHOD,
    REMOVE_METHOD,
    OpenRequest,
    Workspace,
    workspace_id,
)
from leapcore.worker.workspaces import WorkspaceService

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def leftovers(root: Path) -> list[str]:
    """Everything under the workspace root but its (empty) top directories."""
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not (p.parent == root and p.is_dir() and not any(p.iterdir()))
    )


async def test_open_creates_then_returns_the_same(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    origin, heads = origin_with_branches(tmp_path)
    root = tmp_path / "ws"
    async with workspace_worker(root) as worker, worker.channel(generated_keypair) as ch:
        first = await ch.workspace(origin.url, "feature")
        assert isinstance(first, Workspace)
        assert first.new is True
        assert first.id == workspace_id(origin.url, "feature")
        assert first.id.startswith("proj-feature-")
        assert (first.branch, first.repo, first.head, first.dirty) == (
            "feature",
            origin.url,
            heads["feature"],
            False,
        )
        path = Path(first.path)
        assert path.parent == root / "trees"
        assert (path / "feature.txt").read_text() == "new\n"
        assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=path) == "feature"
        again = await ch.workspace(origin.url, "feature")
        assert again.new is False
        assert (again.id, again.path, again.head) == (first.id, first.path, first.head)
        main = await ch.workspace(origin.url, "main")
        assert main.new and main.head == heads["main"] and main.id != first.id
        # one clone for the repository, a worktree per branch
        assert len(list((root / "repos").iterdir())) == 1
        assert sorted(p.name for p in (root / "trees").iterdir()) == sorted([first.id, main.id])
        assert oct(root.stat().st_mode & 0o777) == "0o700"
        record = root / "meta" / f"{first.id}.json"
        assert oct(record.stat().st_mode & 0o777) == "0o600"
        assert json.loads(record.read_text())["branch"] == "feature"


async def test_concurrent_opens_make_one_checkout(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    origin, _ = origin_with_branches(tmp_path)
    root = tmp_path / "ws"
    got: list[Workspace] = []
    async with workspace_worker(root) as worker:

        async def one() -> None:
            async with worker.channel(generated_keypair) as ch:
                got.append(await ch.workspace(origin.url, "main"))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
    assert len(got) == 4
    assert len({(w.id, w.path, w.head) for w in got}) == 1
    assert sorted(w.new for w in got) == [False, False, False, True]
    assert len(list((root / "trees").iterdir())) == 1
    assert len(list((root / "repos").iterdir())) == 1


async def test_list_reports_head_and_dirty(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    origin, heads = origin_with_branches(tmp_path)
    async with workspace_worker(tmp_path / "ws") as worker, worker.channel(generated_keypair) as ch:
        assert await ch.workspaces() == []
        a = await ch.workspace(origin.url, "main")
        b = await ch.workspace(origin.url, "feature")
        (Path(b.path) / "scratch.txt").write_text("uncommitted\n")
        listed = await ch.workspaces()
        assert [(w.id, w.branch, w.head, w.dirty, w.new) for w in listed] == [
            (a.id, "main", heads["main"], False, False),
            (b.id, "feature", heads["feature"], True, False),
        ]


async def test_remove_refuses_dirty_unless_forced_and_keeps_the_branch(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    origin, _ = origin_with_branches(tmp_path)
    root = tmp_path / "ws"
    async with workspace_worker(root) as worker, worker.channel(generated_keypair) as ch:
        ws = await ch.workspace(origin.url, "feature")
        (Path(ws.path) / "feature.txt").write_text("edited\n")
        git("commit", "-q", "-am", "local work", cwd=Path(ws.path))
        local_head = git("rev-parse", "HEAD", cwd=Path(ws.path))
        (Path(ws.path) / "more.txt").write_text("x\n")
        with pytest.raises(WorkspaceError) as info:
            await ch.remove_workspace(ws.id)
        assert info.value.reason == "workspace_dirty"
        assert Path(ws.path).is_dir()
        removed = await ch.remove_workspace(ws.id, force=True)
        assert removed.id == ws.id and removed.dirty is True
        assert not Path(ws.path).exists()
        assert await ch.workspaces() == []
        with pytest.raises(WorkspaceError) as info:
            await ch.remove_workspace(ws.id)
        assert info.value.reason == "workspace_not_found"
        # the branch (with its unpushed commit) survives in the clone; a new workspace of
        # it has the local work back
        again = await ch.workspace(origin.url, "feature")
        assert again.new and again.head == local_head
        assert (Path(again.path) / "feature.txt").read_text() == "edited\n"


async def test_remove_refused_while_a_process_runs_in_it(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    origin, _ = origin_with_branches(tmp_path)
    async with workspace_worker(tmp_path / "ws") as worker, worker.channel(generated_keypair) as ch:
        ws = await ch.workspace(origin.url, "main")
        result = await ch.run_command(["pwd"], workspace=ws.id)
        assert result.stdout.decode().strip() == ws.path
        sub = await ch.run_command("pwd", workspace=ws.id, cwd="src")
        assert sub.stdout.decode().strip() == os.path.join(ws.path, "src")
        async with ch.create_process(["sleep", "60"], workspace=ws.id, cwd="src") as proc:
            await wait_until(lambda: bool(worker.exec.cwds()), "the process to be listed")
            with pytest.raises(WorkspaceError) as info:
                await ch.remove_workspace(ws.id)
            assert info.value.reason == "workspace_busy"
            assert "1 process" in str(info.value)
            await proc.kill()
            await proc.wait()
        await wait_until(lambda: not worker.exec.cwds(), "the process to end")
        removed = await ch.remove_workspace(ws.id)
        assert removed.id == ws.id
        with pytest.raises(WorkspaceError) as info:
            await ch.run_command(["pwd"], workspace=ws.id)
        assert info.value.reason == "workspace_not_found"


async def test_terminal_sessions_start_in_a_workspace(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    origin, _ = origin_with_branches(tmp_path)
    async with workspace_worker(tmp_path / "ws") as worker, worker.channel(generated_keypair) as ch:
        ws = await ch.workspace(origin.url, "main")
        info = await ch.spawn_terminal("pwd; exec sleep 60", workspace=ws.id, cols=250)
        await screen_until(ch, info.id, lambda s: ws.path in s.text, "the workspace's path")
        with pytest.raises(WorkspaceError) as refused:
            await ch.remove_workspace(ws.id)
        assert refused.value.reason == "workspace_busy"
        forced = await ch.remove_workspace(ws.id, force=True)  # the session keeps running
        assert forced.id == ws.id and not Path(ws.path).exists()
        assert (await ch.terminals())[0].running
        await ch.kill_terminal(info.id)
        with pytest.raises(WorkspaceError) as refused:
            await ch.spawn_terminal(workspace=ws.id)
        assert refused.value.reason == "workspace_not_found"


async def test_a_missing_branch_can_start_from_a_base(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    origin, heads = origin_with_branches(tmp_path)
    root = tmp_path / "ws"
    async with workspace_worker(root) as worker, worker.channel(generated_keypair) as ch:
        with pytest.raises(WorkspaceError) as info:
            await ch.workspace(origin.url, "topic/new")
        assert info.value.reason == "branch_not_found"
        assert "give a base" in str(info.value)
        assert leftovers(root) == []  # not even the clone: nothing is written
        ws = await ch.workspace(origin.url, "topic/new", base="feature")
        assert ws.new and ws.head == heads["feature"] and ws.branch == "topic/new"
        with pytest.raises(WorkspaceError) as info:
            await ch.workspace(origin.url, "other", base="nope")
        assert info.value.reason == "branch_not_found"
        assert [w.id for w in await ch.workspaces()] == [ws.id]


async def test_new_commits_are_fetched_for_a_new_workspace(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    origin, _ = origin_with_branches(tmp_path)
    async with workspace_worker(tmp_path / "ws") as worker, worker.channel(generated_keypair) as ch:
        await ch.workspace(origin.url, "main")
        later = origin.commit("later", {"later.txt": "1\n"})
        moved = origin.commit("feature", {"feature.txt": "v2\n"})
        ws = await ch.workspace(origin.url, "later")
        assert ws.head == later
        feature = await ch.workspace(origin.url, "feature")
        assert feature.head == moved


async def test_a_repository_that_does_not_exist_leaves_nothing(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    root = tmp_path / "ws"
    async with workspace_worker(root) as worker, worker.channel(generated_keypair) as ch:
        for url in ((tmp_path / "nope.git").as_uri(), str(tmp_path / "nope")):
            with pytest.raises(WorkspaceError) as info:
                await ch.workspace(url, "main")
            assert info.value.reason == "repo_not_found"
            assert "nope" in str(info.value)
        assert leftovers(root) == []
        assert await ch.workspaces() == []


@pytest.mark.parametrize(
    ("repo", "branch", "says"),
    [
        ("ext::sh -c touch% /tmp/pwned", "main", "transport::address"),
        ("--upload-pack=touch /tmp/pwned", "main", "must not start with '-'"),
        ("relative/path", "main", "not a repository URL"),
        ("ftp://example.invalid/r.git", "main", "scheme 'ftp'"),
        ("file:///tmp/r.git", "-b", "starts with -"),
        ("file:///tmp/r.git", "a..b", ".."),
        ("file:///tmp/r.git", "a b", "space"),
        ("file:///tmp/r.git", "x.lock", ".lock"),
    ],
)
async def test_bad_requests_are_refused_before_anything_runs(
    tmp_path: Path, generated_keypair: WorkerKeyPair, repo: str, branch: str, says: str
) -> None:
    root = tmp_path / "ws"
    async with workspace_worker(root) as worker, worker.channel(generated_keypair) as ch:
        with pytest.raises(InvalidMessage) as local:
            await ch.workspace(repo, branch)
        assert says in str(local.value)
        raw = json.dumps({"repo": repo, "branch": branch}).encode()
        with pytest.raises(RemoteCallError) as remote:
            await ch.call(OPEN_METHOD, raw)
        assert remote.value.remote_code == "invalid_argument"
        assert says in remote.value.remote_message
    assert leftovers(root) == []


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"repo": "file:///r"}',
        b'{"repo": "file:///r", "branch": "main", "extra": 1}',
        b'{"repo": 5, "branch": "main"}',
        b'{"repo": "file:///r", "branch": "main", "base": 7}',
    ],
)
async def test_malformed_open_payloads(
    tmp_path: Path, generated_keypair: WorkerKeyPair, payload: bytes
) -> None:
    async with workspace_worker(tmp_path / "ws") as worker, worker.channel(generated_keypair) as ch:
        with pytest.raises(RemoteCallError) as info:
            await ch.call(OPEN_METHOD, payload)
        assert info.value.remote_code == "invalid_argument"
        for bad in (b'{"id": "../x"}', b'{"id": "x", "force": "yes"}', b"{}"):
            with pytest.raises(RemoteCallError) as info:
                await ch.call(REMOVE_METHOD, bad)
            assert info.value.remote_code == "invalid_argument"


async def test_workspaces_are_owner_only(tmp_path: Path, generated_keypair: WorkerKeyPair) -> None:
    origin, _ = origin_with_branches(tmp_path)
    async with (
        workspace_worker(tmp_path / "ws") as worker,
        worker.channel(generated_keypair, user_id="u-someone-else") as ch,
    ):
        with pytest.raises(RemoteCallError) as info:
            await ch.workspace(origin.url, "main")
        assert info.value.remote_code == "permission_denied"
    assert not (tmp_path / "ws").exists()  # refused before the service touched anything


async def test_the_workspace_limit(tmp_path: Path, generated_keypair: WorkerKeyPair) -> None:
    origin, _ = origin_with_branches(tmp_path)
    async with workspace_worker(tmp_path / "ws") as worker, worker.channel(generated_keypair) as ch:
        worker.workspaces.max_workspaces = 1
        first = await ch.workspace(origin.url, "main")
        with pytest.raises(RemoteCallError) as info:
            await ch.workspace(origin.url, "feature")
        assert info.value.remote_code == "resource_exhausted"
        assert (await ch.workspace(origin.url, "main")).id == first.id  # an existing one: fine


async def test_git_missing_and_a_damaged_record(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    origin, _ = origin_with_branches(tmp_path)
    root = tmp_path / "ws"
    async with workspace_worker(root) as worker, worker.channel(generated_keypair) as ch:
        ws = await ch.workspace(origin.url, "main")
        worker.workspaces.git = str(tmp_path / "no-such-git")
        with pytest.raises(WorkspaceError) as info:
            await ch.workspace(origin.url, "feature")
        assert info.value.reason == "git_missing"
    (root / "meta" / f"{ws.id}.json").write_text("{broken")
    (root / "meta" / "other.json").write_text(json.dumps({"id": "x"}))
    fresh = WorkspaceService(root)
    assert await fresh.list() == []  # damaged records are skipped, not fatal


async def test_a_hung_git_is_killed(tmp_path: Path) -> None:
    fake = tmp_path / "git"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    origin = Origin(tmp_path)
    service = WorkspaceService(tmp_path / "ws", git=str(fake), timeout=0.5)
    with trio.fail_after(20), pytest.raises(ServiceError) as info:
        await service.open(OpenRequest(origin.url, "main"))
    assert info.value.error_code == "git_failed"
    assert "timed out" in str(info.value)
    assert leftovers(tmp_path / "ws") == []


async def test_the_root_is_prepared_once_however_many_opens_start_together(
    tmp_path: Path,
) -> None:
    """Preparing the root clears ``tmp/`` (a crash's half-made clones): it must happen once,
    before any clone, never while another open's clone is being made there. Four callers
    that find nothing loaded yet start together; the root is prepared once, and a clone
    staged after that is left alone by the others (the race CI once hit: "git remote add:
    not a git repository" in a staging directory another open had just cleared)."""
    root = tmp_path / "ws"
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / "left-by-a-crash").mkdir()
    service = WorkspaceService(root)
    prepared = 0
    real_prepare = service.tree.prepare

    def counting_prepare() -> None:
        nonlocal prepared
        prepared += 1
        real_prepare()

    service.tree.prepare = counting_prepare  # type: ignore[method-assign]
    staged = root / "tmp" / "being-cloned"

    async def open_one(first: bool) -> None:
        await service._known()
        if first:
            staged.mkdir()  # a clone in progress once the records are loaded

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_one, True)
        for _ in range(3):
            nursery.start_soon(open_one, False)
    assert prepared == 1
    assert staged.is_dir()
    assert not (root / "tmp" / "left-by-a-crash").exists()
