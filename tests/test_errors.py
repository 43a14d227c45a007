"""The error tree: three meanings under one base, one stable code per class, every class in
``leapcore/errors.py``, and the tree in docs/api.md drawn from the classes."""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import leapcore
import leapcore.errors as errors
from leapcore.errors import (
    ChannelLost,
    ChannelOpenFailed,
    HubRequestFailed,
    LeapcoreError,
    LocalError,
    Refused,
    RemoteFailure,
    RemoteProtocolError,
    Unavailable,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (ROOT / "leapcore", ROOT / "leapcore_cli")
ERRORS_PY = ROOT / "leapcore" / "errors.py"
BRANCHES = (LocalError, RemoteProtocolError, RemoteFailure)

#: Private control-flow signals that stay in their module: each is raised and caught within
#: it, never reaches a caller, and is not an error of any branch.
EXEMPT = {
    # "this field reaches past the first chunk: decode the joined message instead"; caught
    # by decode_chunks a few lines below the raise. Not an error: no branch fits it.
    "_JoinFirst",
    # "this registration attempt failed in a way that is retried": lumps a dropped link, a
    # malformed answer and a retryable hub refusal into one retry signal for the loop of
    # Worker.register; as a public class it would sit in no single branch honestly.
    "_Transient",
}


def _classes() -> list[type[BaseException]]:
    """Every exception class defined in leapcore.errors, in definition order."""
    return [
        cls
        for cls in vars(errors).values()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__ == errors.__name__
    ]


CLASSES = _classes()


def test_every_class_sits_under_exactly_one_branch() -> None:
    for cls in CLASSES:
        if cls is LeapcoreError:
            continue
        assert issubclass(cls, LeapcoreError), cls
        under = [branch.__name__ for branch in BRANCHES if issubclass(cls, branch)]
        assert len(under) == 1, (cls.__name__, under)
        if issubclass(cls, RemoteFailure) and cls is not RemoteFailure:
            sides = [b.__name__ for b in (Unavailable, Refused) if issubclass(cls, b)]
            assert len(sides) == 1, (cls.__name__, sides)


def test_every_class_has_its_own_stable_code() -> None:
    codes: dict[str, str] = {}
    for cls in CLASSES:
        assert "code" in vars(cls), f"{cls.__name__} inherits its code"
        code = cls.code
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code), (cls.__name__, code)
        assert code not in codes, f"{cls.__name__} and {codes.get(code)} share {code!r}"
        codes[code] = cls.__name__


def test_all_lists_exactly_the_classes() -> None:
    assert sorted(errors.__all__) == sorted(cls.__name__ for cls in CLASSES)


def test_the_branches_are_importable_from_leapcore_without_trio() -> None:
    for name in ("LeapcoreError", "LocalError", "RemoteProtocolError", "RemoteFailure"):
        assert getattr(leapcore, name) is getattr(errors, name)
        assert name in leapcore.__all__
    for name in ("Unavailable", "Refused", "ServiceError"):
        assert getattr(leapcore, name) is getattr(errors, name)
        assert name in leapcore.__all__
    code = (
        "import sys, leapcore\n"
        "from leapcore import Refused, ServiceError, Unavailable\n"
        "assert 'trio' not in sys.modules, 'import leapcore pulled in trio'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- no exception class outside errors.py --------------------------------------------------


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _base_name(node.value)
    return None


def _modules() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(), str(path))
        for package in PACKAGES
        for path in sorted(package.rglob("*.py"))
    }


def _exception_classes(trees: dict[Path, ast.Module]) -> list[tuple[Path, ast.ClassDef]]:
    """Every class statement whose bases make it an exception: a builtin exception, a class
    of leapcore.errors, a third-party ``...Error``/``...Exception``, or (to a fixpoint) any
    class found so by this walk."""
    known = {
        name
        for name, value in vars(builtins).items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    known |= {cls.__name__ for cls in CLASSES}
    defs = [(path, node) for path, tree in trees.items() for node in ast.walk(tree)]
    classes = [(path, node) for path, node in defs if isinstance(node, ast.ClassDef)]

    def is_exception(base: str | None) -> bool:
        return base is not None and (
            base in known or base.endswith(("Error", "Exception", "Exit", "Interrupt"))
        )

    found: dict[tuple[Path, str], tuple[Path, ast.ClassDef]] = {}
    while True:
        before = len(found)
        for path, node in classes:
            if any(is_exception(_base_name(base)) for base in node.bases):
                found[(path, node.name)] = (path, node)
                known.add(node.name)
        if len(found) == before:
            return list(found.values())


def test_no_exception_class_is_defined_outside_errors_py() -> None:
    trees = _modules()
    strays = []
    for path, node in _exception_classes(trees):
        if path == ERRORS_PY:
            continue
        where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
        if node.name not in EXEMPT:
            strays.append(where)
            continue
        # An exempt signal is private, a bare Exception, and never named outside its module.
        assert node.name.startswith("_"), where
        assert [ast.unparse(b) for b in node.bases] == ["Exception"], where
        for other, tree in trees.items():
            if other != path:
                names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
                names |= {
                    a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
                }
                assert node.name not in names, f"{where} is used in {other.relative_to(ROOT)}"
    assert not strays, "exception classes belong in leapcore/errors.py: " + ", ".join(strays)


def test_the_walk_finds_exception_classes() -> None:
    """The AST walk above recognises what it must (guards against it silently finding none)."""
    found = {node.name for path, node in _exception_classes(_modules()) if path == ERRORS_PY}
    assert found == {cls.__name__ for cls in CLASSES}


# -- protocol failures reported by code ----------------------------------------------------


def test_protocol_failure_codes_are_protocol_error_codes() -> None:
    protocol = {cls.code for cls in CLASSES if issubclass(cls, RemoteProtocolError)}
    protocol.discard(RemoteProtocolError.code)
    # Never a code on a link: a pin check, a TLS check, a local budget, the web page's HTTP.
    not_reported = {
        "key_mismatch",
        "tls_certificate_rejected",
        "resource_exhausted",
        "bad_http_request",
    }
    assert protocol - not_reported == errors.PROTOCOL_FAILURE_CODES  # as docs/api.md says
    assert {"handshake_failed", "decrypt_failed", "relay_violation", "rekey_failed"} <= (
        errors.PROTOCOL_FAILURE_CODES
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.DecryptError("x"), True),
        (errors.KeyMismatch("w", expected="a", actual="b", hint="h"), True),
        (ChannelLost("decrypt_failed", "x"), True),
        (ChannelLost("relay_violation", "x"), True),
        (ChannelLost("link_lost", "x"), False),
        (ChannelLost("closed_by_peer", "x"), False),
        (ChannelOpenFailed("handshake_failed", "x"), True),
        (ChannelOpenFailed("quota_exceeded", "x"), False),
        (ChannelOpenFailed("resource_exhausted", "x"), False),
        (HubRequestFailed("unexpected_message", "x"), True),
        (HubRequestFailed("internal", "x"), False),
        (errors.LinkClosed("x"), False),
        (errors.NotFound("x"), False),
        (errors.ConfigError("x"), False),
    ],
)
def test_protocol_failure(error: LeapcoreError, expected: bool) -> None:
    assert error.protocol_failure is expected


def test_wire_codes_become_errors_by_meaning() -> None:
    from leapcore.peer.hubsession import hub_error
    from leapcore.peer.opener import refusal_error
    from leapcore.proto.link_codec import OPEN_ERRORS, ChannelRefused

    retry = {"worker_offline", "unavailable", "timeout"}
    for code in sorted(OPEN_ERRORS):
        error = refusal_error(ChannelRefused(1, code, "m"))
        branch = Unavailable if code in retry else Refused
        assert isinstance(error, branch), (code, error)
    assert isinstance(refusal_error(ChannelRefused(1, "not_found", "m")), errors.NotFound)
    assert isinstance(hub_error("unavailable", "m"), errors.HubUnavailable)
    for code in ("unauthenticated", "not_found", "failed_precondition", "internal", "new_one"):
        assert isinstance(hub_error(code, "m"), Refused), code


# -- the docs ------------------------------------------------------------------------------

TREE_LINE = re.compile(r"^(?P<indent>(?:[│ ]   )*)(?:[├└]── )?(?P<name>\w+) \[(?P<code>\w+)\]$")


def _documented_tree() -> set[tuple[str, str, str]]:
    """(class, parent, code) for each line of the tree in docs/api.md's Errors section."""
    text = (ROOT / "docs" / "api.md").read_text()
    block = re.search(r"<!-- errors-tree -->\n```\n(.*?)```\n<!-- /errors-tree -->", text, re.S)
    assert block, "docs/api.md lacks the errors tree"
    rows: set[tuple[str, str, str]] = set()
    stack: list[str] = []
    for line in block.group(1).splitlines():
        match = TREE_LINE.match(line)
        assert match, f"not a tree line: {line!r}"
        depth = len(match["indent"]) // 4 + (1 if line[len(match["indent"]) :][:1] in "├└" else 0)
        del stack[depth:]
        parent = stack[-1] if stack else "Exception"
        rows.add((match["name"], parent, match["code"]))
        stack.append(match["name"])
    return rows


def test_the_docs_tree_is_the_class_tree() -> None:
    actual = {(c.__name__, c.__mro__[1].__name__, c.code) for c in CLASSES}
    assert _documented_tree() == actual
