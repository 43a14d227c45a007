"""Workspace test kit: local bare git repositories (``file://``) with branches and commits
made by the real git, and a worker whose ``exec``, ``pty`` and ``workspace`` services are
joined as a real worker's are, reached through real channel pairs in memory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from leapcore.peer.channel import Services
from leapcore.worker.builtin_services import add_process_services
from support.ptykit import PtyWorker, serving

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git (failing the test on an error); its stdout, stripped."""
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, f"git {' '.join(args)}: {out.stderr}"
    return out.stdout.strip()


class Origin:
    """A bare repository and a working clone that pushes to it."""

    def __init__(self, base: Path, name: str = "proj") -> None:
        self.bare = base / f"{name}.git"
        self.work = base / f"{name}-work"
        git("init", "-q", "--bare", "-b", "main", str(self.bare))
        git("clone", "-q", str(self.bare), str(self.work))
        git("checkout", "-q", "-b", "main", cwd=self.work)
        self.url = self.bare.as_uri()

    def commit(self, branch: str, files: Mapping[str, str], message: str = "change") -> str:
        """Commit ``files`` on ``branch`` (made from main if new), push; the commit id."""
        if self._has(f"refs/heads/{branch}"):
            git("checkout", "-q", branch, cwd=self.work)
        elif self._has("refs/heads/main"):
            git("checkout", "-q", "-b", branch, "main", cwd=self.work)
        # else: the first commit, on the clone's unborn main
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            git("add", name, cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git("push", "-q", "origin", branch, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def _has(self, ref: str) -> bool:
        probe = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", ref],
            cwd=self.work,
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0


def origin_with_branches(base: Path, name: str = "proj") -> tuple[Origin, dict[str, str]]:
    """A repository with ``main`` (README, src/app.py) and ``feature`` (one more file); the
    head commit of each."""
    origin = Origin(base, name)
    heads = {"main": origin.commit("main", {"README": "hello\n", "src/app.py": "print(1)\n"})}
    heads["feature"] = origin.commit("feature", {"feature.txt": "new\n"}, "feature")
    return origin, heads


class WorkspaceWorker(PtyWorker):
    """One worker's joined process services over the workspace root ``root``: ``exec``,
    ``pty`` (``service``) and ``workspaces``."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.services = Services()
        self.exec, self.service, self.workspaces = add_process_services(self.services, root)


def workspace_worker(root: Path) -> AbstractAsyncContextManager[WorkspaceWorker]:
    """A worker for this block (its terminal sessions killed at the end)."""
    return serving(WorkspaceWorker(root))
