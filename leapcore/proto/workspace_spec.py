"""Workspaces' wire payloads and names (sans-IO: no git, no files, no clock).

A workspace is a git worktree the worker keeps for one ``(repository URL, branch)``
(:mod:`leapcore.worker.workspaces` runs git; docs/protocol.md, 4.15). Its id is derived
from the pair (:func:`workspace_id`), so two callers asking for the same pair name the same
workspace. Every payload is a UTF-8 JSON object, decoded strictly: an unknown, missing or
mistyped field is :class:`~leapcore.errors.InvalidMessage` (the worker answers
``invalid_argument``).

* ``workspace.open`` (RPC) ``{"repo", "branch", "base"?}`` -> a :class:`Workspace`
  record with ``"new"``: get the workspace of ``branch`` of ``repo``, cloning the
  repository and adding the worktree if it is not there yet. A branch the repository does
  not have is ``branch_not_found``, unless ``base`` names one it has: the new branch then
  starts there.
* ``workspace.list`` (RPC) ``{}`` -> ``{"workspaces": [Workspace, ...]}`` (oldest first,
  at most :data:`~leapcore.proto.limits.WORKSPACE_MAX`).
* ``workspace.remove`` (RPC) ``{"id", "force"?}`` -> the removed :class:`Workspace`.
  Refused ``workspace_busy`` while a process or terminal session started in it runs, and
  ``workspace_dirty`` while it has uncommitted changes, unless ``force``. The branch and
  the clone stay (commits are never lost); only the worktree goes.

A repository URL (:func:`check_repo`) is ``scheme://...`` with a scheme of
:data:`REPO_SCHEMES`, an scp-like ``[user@]host:path``, or an absolute path; at most
:data:`~leapcore.proto.limits.WORKSPACE_MAX_URL` bytes, no control characters, never
starting with ``-`` (git would read an option) and never git's ``transport::address``
form (remote helpers run programs). A branch (:func:`check_branch`) follows
``git check-ref-format --branch``'s rules.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from ..errors import InvalidMessage
from .exec_spec import check_workspace_ref, json_object
from .limits import WORKSPACE_MAX, WORKSPACE_MAX_URL

__all__ = [
    "COMMIT",
    "LIST_METHOD",
    "OPEN_METHOD",
    "REMOVE_METHOD",
    "REPO_SCHEMES",
    "WORKSPACE_REASONS",
    "OpenRequest",
    "Workspace",
    "check_branch",
    "check_repo",
    "decode_list",
    "decode_open",
    "decode_remove",
    "decode_workspace",
    "encode_list",
    "encode_open",
    "encode_remove",
    "encode_workspace",
    "repo_key",
    "workspace_id",
]

OPEN_METHOD: Final = "workspace.open"
LIST_METHOD: Final = "workspace.list"
REMOVE_METHOD: Final = "workspace.remove"

#: The URL schemes a repository may have (``ext::`` and other remote helpers never).
REPO_SCHEMES: Final = ("file", "git", "http", "https", "ssh")

#: Every code a ``workspace`` method answers with (besides the channel's own), and what it
#: means.
WORKSPACE_REASONS: Final[dict[str, str]] = {
    "workspace_not_found": "the worker has no workspace with that id",
    "repo_not_found": "the repository cannot be read (it does not exist, or no access)",
    "branch_not_found": "the repository has no such branch",
    "workspace_busy": "a process or terminal session started in the workspace still runs",
    "workspace_dirty": "the workspace has uncommitted changes",
    "git_missing": "git is not installed on the worker",
    "git_failed": "a git command failed",
    "invalid_argument": "malformed request",
    "resource_exhausted": "the worker keeps as many workspaces as it may",
}

_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_HELPER: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
_SCP: Final = re.compile(r"(?:[A-Za-z0-9._~-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:")
_BRANCH_BAD: Final = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
#: A commit id as the worker reports it (hex).
COMMIT: Final = re.compile(r"[0-9a-f]{4,64}")
_SLUG_BAD: Final = re.compile(r"[^A-Za-z0-9._]+")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{what} must be a non-empty string")
    return value


def check_repo(url: Any) -> str:
    """``url`` if it is a repository URL the worker clones (module docstring), with
    trailing ``/`` removed; :class:`InvalidMessage` that says why otherwise."""
    url = text = _text(url, "repo")
    if len(text.encode("utf-8", "surrogateescape")) > WORKSPACE_MAX_URL:
        raise InvalidMessage(f"repo is longer than {WORKSPACE_MAX_URL} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidMessage("repo contains a control character")
    if url.startswith("-"):
        raise InvalidMessage("repo must not start with '-'")
    shown = url[:200]
    scheme = _SCHEME.match(url)
    if scheme is not None:
        if scheme.group(1).lower() not in REPO_SCHEMES:
            raise InvalidMessage(
                f"repo {shown!r}: the scheme {scheme.group(1)!r} is not one of "
                f"{', '.join(REPO_SCHEMES)}"
            )
        if len(url) == scheme.end():
            raise InvalidMessage(f"repo {shown!r} has nothing after the scheme")
    elif _HELPER.match(url):
        raise InvalidMessage(
            f"repo {shown!r}: git's transport::address form (a remote helper) is refused"
        )
    elif not url.startswith("/") and not _SCP.match(url):
        raise InvalidMessage(
            f"repo {shown!r} is not a repository URL: give scheme://..., "
            "[user@]host:path or an absolute path"
        )
    return text.rstrip("/") or text


def check_branch(name: Any, what: str = "branch") -> str:
    """``name`` if it is a branch name git accepts (``git check-ref-format --branch``);
    :class:`InvalidMessage` otherwise."""
    name = text = _text(name, what)
    problem = None
    if len(text.encode("utf-8", "surrogateescape")) > 255:
        problem = "is longer than 255 bytes"
    elif name.startswith(("-", "/")) or name.endswith(("/", ".", ".lock")):
        problem = "starts with - or /, or ends with /, . or .lock"
    elif name == "@" or "@{" in name or ".." in name or "//" in name:
        problem = "is @, or contains @{, .. or //"
    elif _BRANCH_BAD.search(name):
        problem = "contains a space, a control character or one of ~ ^ : ? * [ \\"
    elif any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        problem = "has a component starting with . or ending with .lock"
    if problem is not None:
        raise InvalidMessage(f"{what} {name[:200]!r} {problem}")
    return text


def _slug(text: str, size: int) -> str:
    return _SLUG_BAD.sub("-", text).strip("-.")[:size].strip("-.") or "x"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _repo_name(repo: str) -> str:
    tail = re.split(r"[/:]", repo.rstrip("/"))[-1]
    return tail[:-4] if tail.endswith(".git") else tail


def repo_key(repo: str) -> str:
    """The directory name of ``repo``'s clone: its last component and a digest of the URL."""
    return f"{_slug(_repo_name(repo), 40)}-{_digest(repo)[:12]}"


def workspace_id(repo: str, branch: str) -> str:
    """The id of the workspace of ``branch`` of ``repo``: readable (the repository's and the
    branch's names) and unique (a digest of both)."""
    return f"{_slug(_repo_name(repo), 40)}-{_slug(branch, 48)}-{_digest(repo, branch)[:10]}"


@attrs.frozen
class OpenRequest:
    """``workspace.open``: the workspace of ``branch`` of ``repo``; ``base``: where a branch
    the repository lacks starts (None: such a branch is ``branch_not_found``)."""

    repo: str
    branch: str
    base: str | None = None

    @property
    def id(self) -> str:
        return workspace_id(self.repo, self.branch)


@attrs.frozen
class Workspace:
    """One workspace: its ``id``, the ``repo`` and ``branch`` it checks out, its ``path``
    on the worker, the ``head`` commit (None if unknown), whether it is ``dirty``
    (uncommitted changes; None if unknown), when it was ``created`` (Unix seconds), and
    (``workspace.open`` only) whether this call made it (``new``)."""

    id: str
    repo: str
    branch: str
    path: str
    head: str | None
    dirty: bool | None
    created: float
    new: bool = False


def _only(data: Mapping[str, Any], required: set[str], optional: set[str], what: str) -> None:
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise InvalidMessage(f"{what}: unknown field(s): {', '.join(unknown)}")
    missing = sorted(required - set(data))
    if missing:
        raise InvalidMessage(f"{what}: missing field(s): {', '.join(missing)}")


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _check_open(data: Mapping[str, Any]) -> OpenRequest:
    _only(data, {"repo", "branch"}, {"base"}, OPEN_METHOD)
    base = data.get("base")
    return OpenRequest(
        check_repo(data["repo"]),
        check_branch(data["branch"]),
        None if base is None else check_branch(base, "base"),
    )


def encode_open(request: OpenRequest) -> bytes:
    data: dict[str, Any] = {"repo": request.repo, "branch": request.branch}
    if request.base is not None:
        data["base"] = request.base
    _check_open(data)
    return _dump(data)


def decode_open(payload: bytes) -> OpenRequest:
    return _check_open(json_object(payload, OPEN_METHOD))


def encode_remove(workspace: str, *, force: bool = False) -> bytes:
    data: dict[str, Any] = {"id": check_workspace_ref(workspace)}
    if force:
        data["force"] = True
    return _dump(data)


def decode_remove(payload: bytes) -> tuple[str, bool]:
    """``(id, force)`` of a ``workspace.remove`` payload."""
    data = json_object(payload, REMOVE_METHOD)
    _only(data, {"id"}, {"force"}, REMOVE_METHOD)
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise InvalidMessage("force must be true or false")
    return check_workspace_ref(data["id"]), force


def _record(workspace: Workspace, with_new: bool) -> dict[str, Any]:
    data = attrs.asdict(workspace)
    if not with_new:
        del data["new"]
    return data


def _workspace(data: Any, with_new: bool) -> Workspace:
    keys = {"id", "repo", "branch", "path", "head", "dirty", "created"} | (
        {"new"} if with_new else set()
    )
    if not isinstance(data, Mapping) or set(data) != keys:
        raise InvalidMessage(f"a workspace is an object of exactly {', '.join(sorted(keys))}")
    head, dirty, created, new = data["head"], data["dirty"], data["created"], data.get("new")
    if head is not None and (
        not isinstance(head, str) or not re.fullmatch(r"[0-9a-f]{4,64}", head)
    ):
        raise InvalidMessage("head must be a hex commit id or null")
    if dirty is not None and not isinstance(dirty, bool):
        raise InvalidMessage("dirty must be true, false or null")
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        raise InvalidMessage("created must be a number (Unix seconds)")
    if with_new and not isinstance(new, bool):
        raise InvalidMessage("new must be true or false")
    return Workspace(
        check_workspace_ref(data["id"]),
        check_repo(data["repo"]),
        check_branch(data["branch"]),
        _text(data["path"], "path"),
        head,
        dirty,
        float(created),
        bool(new),
    )


def encode_workspace(workspace: Workspace) -> bytes:
    """A ``workspace.open`` / ``workspace.remove`` answer."""
    return _dump(_record(workspace, True))


def decode_workspace(payload: bytes) -> Workspace:
    return _workspace(json_object(payload, "workspace"), True)


def encode_list(workspaces: list[Workspace]) -> bytes:
    if len(workspaces) > WORKSPACE_MAX:
        raise InvalidMessage(f"a workspace.list answer holds at most {WORKSPACE_MAX} workspaces")
    return _dump({"workspaces": [_record(w, False) for w in workspaces]})


def decode_list(payload: bytes) -> list[Workspace]:
    data = json_object(payload, LIST_METHOD + " answer")
    if set(data) != {"workspaces"} or not isinstance(data["workspaces"], list):
        raise InvalidMessage('a workspace.list answer is {"workspaces": [...]}')
    if len(data["workspaces"]) > WORKSPACE_MAX:
        raise InvalidMessage(f"a workspace.list answer holds at most {WORKSPACE_MAX} workspaces")
    return [_workspace(item, False) for item in data["workspaces"]]
