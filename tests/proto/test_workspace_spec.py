"""Workspaces' payloads and names (leapcore.proto.workspace_spec): strict decoding (any
bytes: a request or InvalidMessage, nothing else), repository URLs and branch names refused
before git runs (branch names checked against git's own ``check-ref-format``), and ids that
are stable, distinct and safe as file names."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from leapcore.errors import InvalidMessage
from leapcore.proto.exec_spec import WORKSPACE_ID, check_workspace_ref
from leapcore.proto.limits import WORKSPACE_MAX, WORKSPACE_MAX_URL
from leapcore.proto.workspace_spec import (
    OpenRequest,
    Workspace,
    check_branch,
    check_repo,
    decode_list,
    decode_open,
    decode_remove,
    decode_workspace,
    encode_list,
    encode_open,
    encode_remove,
    encode_workspace,
    repo_key,
    workspace_id,
)

WS = Workspace("proj-main-0123456789", "file:///r.git", "main", "/w/t", "ab" * 20, False, 1.5)


def test_round_trips() -> None:
    request = OpenRequest("https://example.com/a/b.git", "feature/x", "main")
    assert decode_open(encode_open(request)) == request
    assert decode_open(encode_open(OpenRequest("/srv/r", "main"))).base is None
    assert decode_remove(encode_remove("proj-main-0123456789")) == ("proj-main-0123456789", False)
    assert decode_remove(encode_remove("x", force=True)) == ("x", True)
    new = Workspace(WS.id, WS.repo, WS.branch, WS.path, None, None, 2.0, True)
    assert decode_workspace(encode_workspace(new)) == new
    assert decode_list(encode_list([WS, WS])) == [WS, WS]


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/git/r.git",
        "https://example.com/r.git",
        "ssh://git@example.com:2222/r.git",
        "git://example.com/r",
        "git@example.com:team/r.git",
        "example.com:r.git",
        "/srv/git/r.git",
        "/srv/git/my repo",
    ],
)
def test_repository_urls_accepted(url: str) -> None:
    assert check_repo(url) == url
    assert check_repo(url + "/") == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "non-empty"),
        ("ext::sh -c id", "transport::address"),
        ("fd::3", "transport::address"),
        ("-uhack", "start with '-'"),
        ("ftp://example.com/r", "scheme 'ftp'"),
        ("file://", "nothing after"),
        ("r.git", "not a repository URL"),
        ("./r", "not a repository URL"),
        ("/srv/r\n", "control character"),
        ("/" + "a" * WORKSPACE_MAX_URL, "longer than"),
    ],
)
def test_repository_urls_refused(url: str, says: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        check_repo(url)
    assert says in str(info.value)


def _git_accepts(name: str) -> bool:
    out = subprocess.run(
        ["git", "check-ref-format", "--branch", name], capture_output=True, check=False
    )
    return out.returncode == 0


BRANCH_ALPHABET = "ab/.-@{}~^:?*[\\ \t_0lock"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git as the oracle")
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=BRANCH_ALPHABET, min_size=1, max_size=12))
@example("main")
@example("feature/x")
@example("a..b")
@example("x.lock")
@example("@")
@example("a@{b")
@example("-x")
@example(".hidden")
@example("a/.b")
@example("a//b")
@example("a/")
def test_branch_names_as_git_says(name: str) -> None:
    """Every name check_branch accepts, git accepts (never the other way round is needed:
    refusing more than git is safe, accepting more is not)."""
    try:
        check_branch(name)
    except InvalidMessage:
        return
    assert _git_accepts(name), f"check_branch accepted {name!r}, git does not"


@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_ids_are_safe_stable_and_distinct(repo: str, branch: str) -> None:
    ident = workspace_id(repo, branch)
    assert WORKSPACE_ID.fullmatch(ident)
    assert check_workspace_ref(ident) == ident
    assert workspace_id(repo, branch) == ident
    assert workspace_id(repo, branch + "x") != ident
    assert workspace_id(repo + "x", branch) != ident
    assert "/" not in repo_key(repo) and not repo_key(repo).startswith(".")


def test_ids_read_well() -> None:
    assert workspace_id("file:///srv/proj.git", "feature/x").startswith("proj-feature-x-")
    assert repo_key("git@example.com:team/proj.git").startswith("proj-")


def _decodes_or_refuses(data: bytes) -> None:
    """Every decoder accepts ``data`` or raises InvalidMessage (anything else fails)."""
    for decode in (decode_open, decode_remove, decode_workspace, decode_list):
        with contextlib.suppress(InvalidMessage):
            decode(data)


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_invalid_message(data: bytes) -> None:
    _decodes_or_refuses(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
KEYS = st.sampled_from(["repo", "branch", "base", "id", "force", "head", "dirty", "workspaces"])


@settings(max_examples=400)
@given(st.dictionaries(KEYS, JSON | st.just("main") | st.just("file:///r"), max_size=5))
def test_any_json_object_decodes_or_raises_invalid_message(obj: dict[str, object]) -> None:
    data = json.dumps(obj).encode()
    _decodes_or_refuses(data)


def test_a_list_is_bounded_and_strict() -> None:
    with pytest.raises(InvalidMessage):
        encode_list([WS] * (WORKSPACE_MAX + 1))
    many = json.loads(encode_list([WS]))["workspaces"] * (WORKSPACE_MAX + 1)
    with pytest.raises(InvalidMessage, match="at most"):
        decode_list(json.dumps({"workspaces": many}).encode())
    with pytest.raises(InvalidMessage):  # an entry with open's extra "new" field
        decode_list(json.dumps({"workspaces": [json.loads(encode_workspace(WS))]}).encode())
