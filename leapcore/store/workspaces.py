"""Where a worker keeps its workspaces on disk, and the record of each (no git here: the
service that runs git is :mod:`leapcore.worker.workspaces`).

Under the workspace root (mode 0700)::

    repos/<repo_key>.git   one bare clone per repository (git init --bare + fetch)
    trees/<id>/            one git worktree per workspace (a branch of a repository)
    meta/<id>.json         the workspace's record: {"id", "repo", "branch", "created"}
    tmp/                   clones being made; a failed one is deleted, never renamed in

A record is written atomically (0600) after its worktree is complete and deleted before its
worktree is, so a record always names a whole checkout; a worktree without a record (a crash
in between) is not listed and is replaced by the next create of that workspace. A record
that cannot be read is skipped and logged, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import attrs

from ..errors import InvalidMessage, StorageError
from ..proto.exec_spec import check_workspace_ref
from ..proto.workspace_spec import check_branch, check_repo, repo_key
from .atomicfile import ensure_private_dir, write_atomic

__all__ = ["WorkspaceRecord", "WorkspaceTree"]

log = logging.getLogger(__name__)


@attrs.frozen
class WorkspaceRecord:
    """What ``meta/<id>.json`` holds."""

    id: str
    repo: str
    branch: str
    created: float


class WorkspaceTree:
    """The directories and records under one workspace ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def repos(self) -> Path:
        return self.root / "repos"

    @property
    def trees(self) -> Path:
        return self.root / "trees"

    @property
    def meta(self) -> Path:
        return self.root / "meta"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def prepare(self) -> None:
        """Make the root and its directories (0700); clear what a crash left in ``tmp``."""
        for directory in (self.root, self.repos, self.trees, self.meta, self.tmp):
            ensure_private_dir(directory)
        for leftover in self.tmp.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    def clone_path(self, repo: str) -> Path:
        return self.repos / f"{repo_key(repo)}.git"

    def tree_path(self, workspace_id: str) -> Path:
        return self.trees / check_workspace_ref(workspace_id)

    def _record_path(self, workspace_id: str) -> Path:
        return self.meta / f"{check_workspace_ref(workspace_id)}.json"

    def save(self, record: WorkspaceRecord) -> None:
        data = json.dumps(attrs.asdict(record), sort_keys=True).encode()
        write_atomic(self._record_path(record.id), data)

    def forget(self, workspace_id: str) -> None:
        try:
            os.unlink(self._record_path(workspace_id))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete the record of {workspace_id}: {exc}") from exc

    def load(self, workspace_id: str) -> WorkspaceRecord | None:
        """The record of ``workspace_id``; None if there is none (or it is unreadable)."""
        path = self._record_path(workspace_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("workspace record %s cannot be read: %s", path, exc)
            return None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or set(data) != {"id", "repo", "branch", "created"}:
                raise InvalidMessage("not a workspace record")
            created = data["created"]
            if isinstance(created, bool) or not isinstance(created, (int, float)):
                raise InvalidMessage("created must be a number")
            record = WorkspaceRecord(
                check_workspace_ref(data["id"]),
                check_repo(data["repo"]),
                check_branch(data["branch"]),
                float(created),
            )
        except (ValueError, InvalidMessage) as exc:
            log.warning("workspace record %s is damaged (%s); skipped", path, exc)
            return None
        if record.id != workspace_id:
            log.warning("workspace record %s names another id; skipped", path)
            return None
        return record

    def records(self) -> list[WorkspaceRecord]:
        """Every readable record, oldest first."""
        try:
            names = sorted(os.listdir(self.meta))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            stem, dot, ext = name.rpartition(".")
            if not dot or ext != "json":
                continue
            try:
                check_workspace_ref(stem)
            except InvalidMessage:
                continue
            record = self.load(stem)
            if record is not None:
                found.append(record)
        return sorted(found, key=lambda r: (r.created, r.id))
