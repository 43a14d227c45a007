"""``leapcore remote workspace list|create|remove``: the git checkouts a worker keeps.

* ``create --worker W REPO BRANCH [--base B]`` gets or creates the workspace of ``BRANCH``
  of ``REPO`` (cloned and checked out by the worker, with the worker's own git credentials)
  and prints ``created|exists ID PATH (BRANCH @ HEAD)``; ``--json``: the workspace record
  ``{"id", "repo", "branch", "path", "head", "dirty", "created", "new"}``. A clone may take
  long: the call waits ``--git-timeout`` seconds (default 900).
* ``list --worker W``: ``ID BRANCH HEAD STATE PATH`` (``STATE``: clean, dirty or ``?``);
  ``--json``: ``{"worker_id", "workspaces": [record without "new", ...]}``.
* ``remove --worker W ID [--force]``: refused while a process or terminal session started
  in it runs, or with uncommitted changes, unless ``--force``; prints ``removed ID PATH``;
  ``--json``: ``{"removed": record}``.

A repository URL or branch name the worker would refuse is a usage error (exit 2) and
nothing is sent. ``workspace_not_found``, ``repo_not_found`` and ``branch_not_found`` exit
3; ``workspace_busy``, ``workspace_dirty``, ``git_missing`` and ``git_failed`` exit 8.
``--workspace ID`` on ``remote exec``, ``remote shell`` and ``remote session spawn`` starts
the command in a workspace (:func:`workspace_flag`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from leapcore.errors import InvalidMessage, WorkspaceError
from leapcore.peer.channel import Channel
from leapcore.peer.hubsession import HubSession
from leapcore.peer.workspaces import (
    GIT_CALL_TIMEOUT,
    LIST_TIMEOUT,
    list_workspaces,
    open_workspace,
    remove_workspace,
)
from leapcore.proto.exec_spec import check_workspace_ref
from leapcore.proto.workspace_spec import Workspace, check_branch, check_repo

from .common import EXIT_NOT_FOUND, EXIT_OK, emit_json, print_table, verb_group

__all__ = ["add_verbs", "workspace_flag"]


def _workspace_arg(text: str) -> str:
    try:
        return check_workspace_ref(text)
    except InvalidMessage as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def workspace_flag(parser: argparse.ArgumentParser) -> None:
    """``--workspace ID``: start in that workspace (``--cwd``, if relative, inside it)."""
    parser.add_argument(
        "--workspace",
        metavar="ID",
        type=_workspace_arg,
        help="start in this workspace of the worker (see `remote workspace list`); a "
        "relative --cwd is taken from it",
    )


def record(workspace: Workspace, *, with_new: bool = False) -> dict[str, Any]:
    """A workspace as its ``--json`` record."""
    data = attrs.asdict(workspace)
    if not with_new:
        del data["new"]
    return data


def _head(workspace: Workspace) -> str:
    return workspace.head[:12] if workspace.head else "?"


def _state(workspace: Workspace) -> str:
    return {True: "dirty", False: "clean", None: "?"}[workspace.dirty]


def _on_channel(
    args: argparse.Namespace, work: Callable[[Channel, str, float], Awaitable[int]]
) -> int:
    from .remote import _channel_verb, _resolved, _timeout, worker_ref

    ref = worker_ref(args)
    timeout = _timeout(args)

    async def body(session: HubSession) -> int:
        worker_id = await _resolved(session, ref)
        async with session.open_channel(worker_id, timeout=timeout) as channel:
            return await work(channel, worker_id, timeout)

    try:
        return _channel_verb(args, body)
    except WorkspaceError as exc:
        if not exc.reason.endswith("_not_found"):
            raise  # exit 8, error: MESSAGE
        if args.json:
            emit_json({"error": {"code": exc.code, "reason": exc.reason, "message": exc.message}})
        else:
            print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_NOT_FOUND


def run_create(args: argparse.Namespace) -> int:
    try:
        repo = check_repo(args.repo)
        branch = check_branch(args.branch)
        base = None if args.base is None else check_branch(args.base, "--base")
    except InvalidMessage as exc:
        args.parser_error(str(exc))
    if not 0 < args.git_timeout <= 86400:
        args.parser_error("--git-timeout must be more than 0 and at most 86400 seconds")

    async def work(channel: Channel, worker_id: str, timeout: float) -> int:
        ws = await open_workspace(channel, repo, branch, base=base, timeout=args.git_timeout)
        if args.json:
            emit_json(record(ws, with_new=True))
        else:
            verb = "created" if ws.new else "exists"
            print(f"{verb} {ws.id} {ws.path} ({ws.branch} @ {_head(ws)})")
        return EXIT_OK

    return _on_channel(args, work)


def run_list(args: argparse.Namespace) -> int:
    async def work(channel: Channel, worker_id: str, timeout: float) -> int:
        found = await list_workspaces(channel, timeout=max(timeout, LIST_TIMEOUT))
        if args.json:
            emit_json({"worker_id": worker_id, "workspaces": [record(w) for w in found]})
        elif not found:
            print("no workspaces", file=sys.stderr)
        else:
            print_table(
                ("ID", "BRANCH", "HEAD", "STATE", "PATH"),
                [(w.id, w.branch, _head(w), _state(w), w.path) for w in found],
            )
        return EXIT_OK

    return _on_channel(args, work)


def run_remove(args: argparse.Namespace) -> int:
    async def work(channel: Channel, worker_id: str, timeout: float) -> int:
        ws = await remove_workspace(
            channel, args.id, force=args.force, timeout=max(timeout, LIST_TIMEOUT)
        )
        if args.json:
            emit_json({"removed": record(ws)})
        else:
            print(f"removed {ws.id} {ws.path}")
        return EXIT_OK

    return _on_channel(args, work)


def add_verbs(
    remote_sub: Any,
    session_flags: Callable[[argparse.ArgumentParser], None],
    timeout_flag: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``remote workspace list|create|remove`` under ``remote_sub``."""
    verb = verb_group(
        remote_sub,
        "workspace",
        "git checkouts the worker keeps (one clone per repository, a worktree per branch)",
        "List, create or remove a worker's workspaces: git worktrees of a repository's "
        "branches, made by the worker with its own git credentials.",
        (session_flags, timeout_flag),
    )
    p = verb("list", run_list, "list the worker's workspaces: branch, head commit, dirty or not")
    p = verb(
        "create",
        run_create,
        "get or create the workspace of BRANCH of REPO (the worker clones and checks out)",
    )
    p.add_argument("repo", metavar="REPO", help="file://, https://, ssh://, git:// or host:path")
    p.add_argument("branch", metavar="BRANCH")
    p.add_argument(
        "--base",
        metavar="BRANCH",
        help="when REPO has no BRANCH, start it here (default: refuse, exit 3)",
    )
    p.add_argument(
        "--git-timeout",
        type=float,
        default=GIT_CALL_TIMEOUT,
        metavar="SECONDS",
        help=f"wait this long for the clone and checkout (default {GIT_CALL_TIMEOUT:g})",
    )
    p = verb("remove", run_remove, "remove a workspace (its branch and the clone stay)")
    p.add_argument("id", metavar="ID", type=_workspace_arg)
    p.add_argument(
        "--force",
        action="store_true",
        help="remove even with uncommitted changes or a process running in it",
    )
