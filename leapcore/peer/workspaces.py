"""Workspaces from the client's side: :meth:`Channel.workspace
<leapcore.peer.channel.Channel.workspace>`, :meth:`~leapcore.peer.channel.Channel.workspaces`
and :meth:`~leapcore.peer.channel.Channel.remove_workspace` (the worker's service:
:mod:`leapcore.worker.workspaces`; the wire: :mod:`leapcore.proto.workspace_spec`).

A refusal with one of the workspace codes is :class:`~leapcore.errors.WorkspaceError`
(``reason``: the code); a malformed request is refused here, before anything is sent
(:class:`~leapcore.errors.InvalidMessage`).
"""

from __future__ import annotations

from typing import Final

from ..errors import InvalidMessage, RemoteCallError, WorkspaceError
from ..proto.workspace_spec import (
    LIST_METHOD,
    OPEN_METHOD,
    REMOVE_METHOD,
    WORKSPACE_REASONS,
    OpenRequest,
    Workspace,
    decode_list,
    decode_workspace,
    encode_open,
    encode_remove,
)
from .channel import Channel, call_mapping

__all__ = [
    "GIT_CALL_TIMEOUT",
    "LIST_TIMEOUT",
    "list_workspaces",
    "open_workspace",
    "remove_workspace",
]

#: Seconds ``workspace.open`` may take by default: a clone of a large repository is slow
#: (the worker kills a git command after ``WORKSPACE_GIT_TIMEOUT``, 600 s).
GIT_CALL_TIMEOUT: Final = 900.0
#: Seconds ``workspace.list`` and ``workspace.remove`` may take by default (git status of
#: every workspace).
LIST_TIMEOUT: Final = 120.0

_GENERIC: Final = frozenset({"invalid_argument", "resource_exhausted"})


def _mapped(exc: RemoteCallError) -> Exception:
    code = exc.remote_code
    if code == "invalid_argument":
        return InvalidMessage(f"the worker refused the request: {exc.remote_message}")
    if code in WORKSPACE_REASONS and code not in _GENERIC:
        return WorkspaceError(code, exc.remote_message)
    return exc


async def _call(channel: Channel, method: str, payload: bytes, timeout: float | None) -> bytes:
    return await call_mapping(channel, method, payload, timeout, _mapped)


async def open_workspace(
    channel: Channel,
    repo: str,
    branch: str,
    *,
    base: str | None = None,
    timeout: float | None = GIT_CALL_TIMEOUT,
) -> Workspace:
    """The worker's workspace of ``branch`` of ``repo``, created (cloned, checked out) if it
    is not there yet; ``Workspace.new`` says which. ``base``: where ``branch`` starts when
    the repository lacks it (without ``base`` that is ``branch_not_found``)."""
    payload = encode_open(OpenRequest(repo, branch, base))
    return decode_workspace(await _call(channel, OPEN_METHOD, payload, timeout))


async def list_workspaces(
    channel: Channel, *, timeout: float | None = LIST_TIMEOUT
) -> list[Workspace]:
    """Every workspace the worker keeps, oldest first (head commit, dirty or not)."""
    return decode_list(await _call(channel, LIST_METHOD, b"{}", timeout))


async def remove_workspace(
    channel: Channel,
    workspace_id: str,
    *,
    force: bool = False,
    timeout: float | None = LIST_TIMEOUT,
) -> Workspace:
    """Remove the workspace ``workspace_id`` (its worktree; the branch and the clone stay)
    and return what it was. Refused ``workspace_busy`` while a process or terminal session
    started in it runs and ``workspace_dirty`` with uncommitted changes, unless ``force``."""
    payload = encode_remove(workspace_id, force=force)
    return decode_workspace(await _call(channel, REMOVE_METHOD, payload, timeout))
