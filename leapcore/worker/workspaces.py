"""The worker's ``workspace`` service: git checkouts the worker keeps for its owner, one
clone per repository and one git worktree per branch (:meth:`Channel.workspace
<leapcore.peer.channel.Channel.workspace>`, ``leapcore remote workspace``).

The wire is :mod:`leapcore.proto.workspace_spec` (docs/protocol.md, 4.15); the layout on
disk :mod:`leapcore.store.workspaces`. git runs as the worker's user with the worker's own
configuration and credentials (none pass through the hub), never prompts
(``GIT_TERMINAL_PROMPT=0``, stdin closed), never runs remote helpers
(``protocol.ext.allow=never``, and ``transport::address`` URLs are refused before git
runs), and each command is killed after :data:`~leapcore.proto.limits.WORKSPACE_GIT_TIMEOUT`
seconds. At most :data:`~leapcore.proto.limits.WORKSPACE_GIT_PARALLEL` git commands run at
once; of a command's output only the first and last
:data:`~leapcore.proto.limits.WORKSPACE_GIT_OUTPUT` bytes are kept.

``workspace.open`` of a repository the worker has not cloned yet clones it into ``tmp/``
and renames it into place only once the branch is known to exist: a repository that cannot
be read, or a branch it lacks, leaves nothing behind. Calls for one repository are
serialised, so two callers opening the same workspace at once get one checkout (the second
finds the first's).

Processes and terminal sessions start in a workspace through the ``"workspace"`` field of
``exec`` and ``pty.spawn`` (:meth:`WorkspaceService.directory`); the ``busy`` callable the
service is given reports the directories they run in, which ``workspace.remove`` consults.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from ..errors import InvalidMessage, ServiceError, StorageError
from ..peer.channel import CallContext, Services
from ..proto.limits import (
    WORKSPACE_GIT_OUTPUT,
    WORKSPACE_GIT_PARALLEL,
    WORKSPACE_GIT_TIMEOUT,
    WORKSPACE_MAX,
)
from ..proto.workspace_spec import (
    COMMIT,
    LIST_METHOD,
    OPEN_METHOD,
    REMOVE_METHOD,
    OpenRequest,
    Workspace,
    decode_open,
    decode_remove,
    encode_list,
    encode_workspace,
    repo_key,
)
from ..store.workspaces import WorkspaceRecord, WorkspaceTree
from .spawn import signal_group

__all__ = ["WorkspaceService", "add_workspace_service"]

log = logging.getLogger(__name__)

#: What git says when the repository is not there or cannot be read.
_NO_REPO = re.compile(
    r"does not appear to be a git repository|repository .* not found|not found|"
    r"could not read from remote|unable to access|does not exist|no such file|"
    r"could not resolve host|authentication failed|permission denied",
    re.IGNORECASE,
)


class _GitResult:
    def __init__(self, returncode: int, stdout: bytes, stderr: bytes, timed_out: bool) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace").strip()

    @property
    def why(self) -> str:
        """What went wrong: git's ``fatal:`` / ``error:`` lines (else its last lines)."""
        if self.timed_out:
            return "timed out"
        text = self.stderr.decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
        return " / ".join((fatal or lines)[-3:]) or f"exit status {self.returncode}"


async def _drain(stream: trio.abc.ReceiveStream | None, keep: int, tail: bool) -> bytes:
    """Everything ``stream`` sends, read to the end; only ``keep`` bytes of it kept (the
    first, or with ``tail`` the last)."""
    kept = bytearray()
    if stream is None:
        return b""
    while chunk := await stream.receive_some(65536):
        kept += chunk
        if len(kept) > keep:
            kept = kept[-keep:] if tail else kept[:keep]
    return bytes(kept)


class WorkspaceService:
    """The ``workspace.*`` methods (see the module docstring) over the workspaces under
    ``root``. ``busy()``: the directories processes and terminal sessions started in now
    run in (``workspace.remove`` refuses a workspace one of them is inside)."""

    def __init__(
        self,
        root: Path,
        *,
        busy: Callable[[], Iterable[str]] = tuple,
        git: str = "git",
        timeout: float = WORKSPACE_GIT_TIMEOUT,
        max_workspaces: int = WORKSPACE_MAX,
        parallel: int = WORKSPACE_GIT_PARALLEL,
    ) -> None:
        self.tree = WorkspaceTree(root)
        self.busy = busy
        self.git = git
        self.timeout = timeout
        self.max_workspaces = max_workspaces
        self._git_slots = trio.Semaphore(parallel)
        self._repo_locks: dict[str, trio.Lock] = {}
        self._records: dict[str, WorkspaceRecord] | None = None
        #: Held while the records load: the root is prepared (and ``tmp/`` cleared of a
        #: crash's leftovers) once, never while a clone is being made there.
        self._loading = trio.Lock()

    def install(self, services: Services) -> None:
        services.add_rpc(OPEN_METHOD, self._open)
        services.add_rpc(LIST_METHOD, self._list)
        services.add_rpc(REMOVE_METHOD, self._remove)

    # -- state ---------------------------------------------------------------------------

    async def _known(self) -> dict[str, WorkspaceRecord]:
        async with self._loading:
            if self._records is None:

                def load() -> dict[str, WorkspaceRecord]:
                    self.tree.prepare()
                    return {r.id: r for r in self.tree.records()}

                try:
                    self._records = await trio.to_thread.run_sync(load)
                except (OSError, StorageError) as exc:
                    raise ServiceError(
                        "git_failed", f"the workspace root {self.tree.root} is not usable: {exc}"
                    ) from None
            return self._records

    def _lock(self, repo: str) -> trio.Lock:
        return self._repo_locks.setdefault(repo_key(repo), trio.Lock())

    async def directory(self, workspace_id: str, cwd: str | None) -> str:
        """Where a process asked to run in ``workspace_id`` (at ``cwd``, if relative, taken
        from the workspace) starts; ``workspace_not_found`` if there is no such workspace."""
        record = (await self._known()).get(workspace_id)
        if record is None:
            raise ServiceError("workspace_not_found", f"no workspace {workspace_id!r}")
        path = str(self.tree.tree_path(workspace_id))
        return path if cwd is None else os.path.join(path, cwd)

    # -- git -----------------------------------------------------------------------------

    async def _run_git(self, *args: str, cwd: Path | None = None) -> _GitResult:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "LANGUAGE": ""}
        command = [self.git, "-c", "protocol.ext.allow=never", *args]
        async with self._git_slots:
            try:
                proc = await trio.lowlevel.open_process(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                if exc.errno == errno.ENOENT and exc.filename in (self.git, None):
                    raise ServiceError(
                        "git_missing", f"git ({self.git}) is not installed on the worker"
                    ) from None
                raise ServiceError("git_failed", f"cannot run git: {exc}") from None
            out: list[bytes] = [b"", b""]

            async def read(index: int, stream: trio.abc.ReceiveStream | None) -> None:
                out[index] = await _drain(stream, WORKSPACE_GIT_OUTPUT, tail=index == 1)

            timed_out = False
            try:
                with trio.move_on_after(self.timeout) as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(read, 0, proc.stdout)
                        nursery.start_soon(read, 1, proc.stderr)
                        await proc.wait()
                timed_out = scope.cancelled_caught
            finally:
                with trio.CancelScope(shield=True):
                    if proc.returncode is None:
                        signal_group(proc.pid, signal.SIGKILL)
                        await proc.wait()
                    for pipe in (proc.stdout, proc.stderr):
                        if pipe is not None:
                            await pipe.aclose()
        code = proc.returncode if proc.returncode is not None else -1
        result = _GitResult(code, out[0], out[1], timed_out)
        if not result.ok:
            log.debug("git %s failed: %s", args[0] if args else "", result.why)
        return result

    async def _git_ok(self, *args: str, cwd: Path | None = None, what: str) -> _GitResult:
        result = await self._run_git(*args, cwd=cwd)
        if not result.ok:
            raise ServiceError("git_failed", f"{what}: {result.why}")
        return result

    async def _has_ref(self, clone: Path, ref: str) -> bool:
        result = await self._run_git("rev-parse", "--verify", "-q", ref + "^{commit}", cwd=clone)
        return result.ok

    async def _fetch(self, clone: Path, repo: str) -> None:
        result = await self._run_git("fetch", "-q", "--prune", "origin", cwd=clone)
        if not result.ok:
            said = result.stderr.decode("utf-8", "replace")
            code = "repo_not_found" if _NO_REPO.search(said) else "git_failed"
            raise ServiceError(code, f"{repo}: {result.why}")

    async def _state(self, path: Path) -> tuple[str | None, bool | None]:
        """``(head, dirty)`` of the worktree at ``path`` (None where git cannot say)."""
        if not path.is_dir():
            return None, None
        head = await self._run_git("rev-parse", "HEAD", cwd=path)
        status = await self._run_git("status", "--porcelain", "-z", cwd=path)
        return (
            head.text if head.ok and COMMIT.fullmatch(head.text) else None,
            bool(status.stdout) if status.ok else None,
        )

    async def _describe(self, record: WorkspaceRecord, *, new: bool = False) -> Workspace:
        path = self.tree.tree_path(record.id)
        head, dirty = await self._state(path)
        return Workspace(
            record.id, record.repo, record.branch, str(path), head, dirty, record.created, new
        )

    # -- workspace.open ------------------------------------------------------------------

    async def _open(self, ctx: CallContext, payload: bytes) -> bytes:
        try:
            request = decode_open(payload)
        except InvalidMessage as exc:
            raise ServiceError("invalid_argument", str(exc)) from None
        return encode_workspace(await self.open(request))

    async def open(self, request: OpenRequest) -> Workspace:
        """Get or create the workspace ``request`` names (see the module docstring)."""
        known = await self._known()
        async with self._lock(request.repo):
            record = known.get(request.id)
            if record is not None and self.tree.tree_path(record.id).is_dir():
                return await self._describe(record)
            if record is None and len(known) >= self.max_workspaces:
                raise ServiceError(
                    "resource_exhausted",
                    f"this worker keeps {self.max_workspaces} workspaces, the limit; remove one",
                )
            clone = self.tree.clone_path(request.repo)
            if clone.is_dir():
                await self._fetch(clone, request.repo)
                await self._branch(clone, request)
            else:
                await self._clone(clone, request)
            record = await self._add_tree(clone, request)
            known[record.id] = record
            log.info("workspace %s created (%s)", record.id, request.branch)
            return await self._describe(record, new=True)

    async def _clone(self, clone: Path, request: OpenRequest) -> None:
        """A new bare clone of ``request.repo`` at ``clone`` holding ``request.branch``,
        made in ``tmp/`` and renamed in only when complete (else nothing is left)."""
        staging = self.tree.tmp / f"{clone.name}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            await self._git_ok("init", "-q", "--bare", str(staging), what="git init")
            await self._git_ok(
                "remote", "add", "origin", request.repo, cwd=staging, what="git remote add"
            )
            await self._fetch(staging, request.repo)
            await self._branch(staging, request)
            await trio.to_thread.run_sync(os.rename, staging, clone)
        finally:
            if staging.exists():
                await trio.to_thread.run_sync(shutil.rmtree, staging, True)

    async def _branch(self, clone: Path, request: OpenRequest) -> None:
        """Make sure the clone has the local branch ``request.branch``: the remote's branch
        (tracked; a local one already there is fast-forwarded to it when it can be), or a
        new one at ``request.base``; ``branch_not_found`` otherwise."""
        local = f"refs/heads/{request.branch}"
        remote = f"refs/remotes/origin/{request.branch}"
        has_remote = await self._has_ref(clone, remote)
        if await self._has_ref(clone, local):
            if has_remote:
                ancestor = await self._run_git(
                    "merge-base", "--is-ancestor", local, remote, cwd=clone
                )
                if ancestor.ok:
                    await self._git_ok("update-ref", local, remote, cwd=clone, what="update-ref")
            return
        if has_remote:
            await self._git_ok(
                "branch", "-q", "--track", request.branch, remote, cwd=clone, what="git branch"
            )
            return
        if request.base is not None:
            for start in (f"refs/remotes/origin/{request.base}", f"refs/heads/{request.base}"):
                if await self._has_ref(clone, start):
                    await self._git_ok(
                        "branch", "-q", "--no-track", request.branch, start,
                        cwd=clone, what="git branch",
                    )  # fmt: skip
                    return
            raise ServiceError(
                "branch_not_found", f"{request.repo} has no branch {request.base!r} (base)"
            )
        raise ServiceError(
            "branch_not_found",
            f"{request.repo} has no branch {request.branch!r} (give a base to create it)",
        )

    async def _add_tree(self, clone: Path, request: OpenRequest) -> WorkspaceRecord:
        path = self.tree.tree_path(request.id)
        if path.exists():  # a crash between worktree and record: start again
            await trio.to_thread.run_sync(shutil.rmtree, path, True)
        await self._run_git("worktree", "prune", cwd=clone)
        try:
            await self._git_ok(
                "worktree", "add", "-q", str(path), request.branch, cwd=clone,
                what="git worktree add",
            )  # fmt: skip
            record = WorkspaceRecord(request.id, request.repo, request.branch, time.time())
            await trio.to_thread.run_sync(self.tree.save, record)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, path, True)
                await self._run_git("worktree", "prune", cwd=clone)
            raise
        return record

    # -- workspace.list and workspace.remove ---------------------------------------------

    async def _list(self, ctx: CallContext, payload: bytes) -> bytes:
        if payload.strip() not in (b"", b"{}"):
            raise ServiceError("invalid_argument", "workspace.list takes {}")
        return encode_list(await self.list())

    async def list(self) -> list[Workspace]:
        """Every workspace, oldest first, with its head commit and whether it is dirty."""
        records = sorted((await self._known()).values(), key=lambda r: (r.created, r.id))
        return [await self._describe(record) for record in records]

    async def _remove(self, ctx: CallContext, payload: bytes) -> bytes:
        try:
            workspace_id, force = decode_remove(payload)
        except InvalidMessage as exc:
            raise ServiceError("invalid_argument", str(exc)) from None
        return encode_workspace(await self.remove(workspace_id, force=force))

    async def remove(self, workspace_id: str, *, force: bool = False) -> Workspace:
        """Remove the worktree of ``workspace_id`` (its branch and clone stay)."""
        known = await self._known()
        record = known.get(workspace_id)
        if record is None:
            raise ServiceError("workspace_not_found", f"no workspace {workspace_id!r}")
        async with self._lock(record.repo):
            if known.get(workspace_id) is not record:
                raise ServiceError("workspace_not_found", f"no workspace {workspace_id!r}")
            path = self.tree.tree_path(workspace_id)
            described = await self._describe(record)
            if not force:
                inside = [d for d in self.busy() if _within(d, path)]
                if inside:
                    raise ServiceError(
                        "workspace_busy",
                        f"{len(inside)} process(es) or terminal session(s) run in "
                        f"{workspace_id}; end them, or remove with force",
                    )
                if described.dirty:
                    raise ServiceError(
                        "workspace_dirty",
                        f"{workspace_id} has uncommitted changes; commit them, or remove "
                        "with force",
                    )
            await trio.to_thread.run_sync(self.tree.forget, workspace_id)
            del known[workspace_id]
            clone = self.tree.clone_path(record.repo)
            removed = await self._run_git("worktree", "remove", "--force", str(path), cwd=clone)
            if not removed.ok or path.exists():
                await trio.to_thread.run_sync(shutil.rmtree, path, True)
                await self._run_git("worktree", "prune", cwd=clone)
            log.info("workspace %s removed%s", workspace_id, " (forced)" if force else "")
            return described


def _within(directory: str, top: Path) -> bool:
    real = os.path.realpath(directory)
    root = os.path.realpath(top)
    return real == root or real.startswith(root + os.sep)


def add_workspace_service(
    services: Services, root: Path, *, busy: Callable[[], Iterable[str]] = tuple
) -> WorkspaceService:
    """Register ``workspace.open``, ``workspace.list`` and ``workspace.remove`` (owner-only)
    on ``services`` for the workspaces under ``root``; returns the service."""
    service = WorkspaceService(root, busy=busy)
    service.install(services)
    return service
