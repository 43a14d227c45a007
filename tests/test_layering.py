"""The house rules of ``leapcore``'s layout, read from the source tree itself.

Every module under ``leapcore/`` and ``leapcore_cli/`` is found by walking the folders, so
a module added tomorrow is checked the day it is written:

* each sans-IO core (``leapcore.crypto.*``, ``leapcore.proto.*``) imports in a fresh
  interpreter without trio, sockets, sqlite3, h2 or websockets;
* every import (module level, inside functions, and under ``TYPE_CHECKING``) follows the
  arrows of ``docs/api.md``'s layer table (:data:`ALLOWED`);
* no import cycle exists between modules, counting only imports that run when a module is
  loaded (``TYPE_CHECKING`` and function-level imports may point back);
* no module in ``crypto/`` or ``proto/`` is longer than :data:`CORE_LINE_CAP` lines.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "leapcore"
CLI = ROOT / "leapcore_cli"

#: Modules a core must never pull in (top-level package names).
FORBIDDEN_IN_CORES = frozenset(
    {"trio", "anyio", "sniffio", "outcome", "h11", "h2", "websockets", "socket", "ssl", "sqlite3"}
)
#: Longest module allowed in ``crypto/`` and ``proto/``.
CORE_LINE_CAP = 700

CORES = frozenset({"crypto", "proto", "limits"})
BASE = frozenset({"errors", "records", "_version"})
#: Layer -> the layers it may import (its own layer always allowed). ``limits`` is
#: ``leapcore.proto.limits``: a module of numbers and value classes, readable from anywhere.
ALLOWED: dict[str, frozenset[str]] = {
    "_version": frozenset(),
    "errors": frozenset(),
    "records": frozenset({"errors"}),
    "crypto": CORES | BASE,
    "proto": CORES | BASE,
    "limits": CORES | BASE,
    "store": CORES | BASE,
    "net": frozenset({"errors", "_version", "limits"}),
    "peer": CORES | BASE | {"store", "net"},
    "hub": CORES | BASE | {"store", "net"},
    "worker": CORES | BASE | {"store", "net", "peer"},
    # The facades compose everything: the package's lazy public API and the solo hub.
    "__init__": CORES | BASE | {"store", "net", "peer", "hub", "worker"},
    "solo": CORES | BASE | {"store", "net", "peer", "hub", "worker"},
}
#: The only command-line module that may open the hub's database directly.
HUB_STORE = "leapcore.store.hubstore"
ADMIN_CLI = "leapcore_cli.hubadmin"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(base: Path) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(base.rglob("*.py"))}


def layer_of(name: str) -> str:
    """``leapcore.proto.limits`` -> ``limits``; ``leapcore.hub.server`` -> ``hub``."""
    if name == "leapcore.proto.limits":
        return "limits"
    parts = name.split(".")
    if parts == ["leapcore"]:
        return "__init__"
    return parts[1]


@attrs.frozen
class Import:
    target: str
    line: int
    #: Runs when the module is loaded (not under TYPE_CHECKING, not inside a function).
    at_load: bool


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        package = importer.split(".")
        if not is_package:
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    # ``from leapcore.proto import limits`` names a module; ``from .x import Y`` a value.
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def imports_of(name: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, at_load: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.body:
                    visit_one(sub, False)
                for sub in child.orelse:
                    visit_one(sub, at_load)
                continue
            visit_one(child, at_load)

    def visit_one(child: ast.AST, at_load: bool) -> None:
        if isinstance(child, ast.Import):
            found.extend(Import(a.name, child.lineno, at_load) for a in child.names)
        elif isinstance(child, ast.ImportFrom):
            targets = _resolve(name, is_package, child)
            found.extend(Import(t, child.lineno, at_load) for t in targets)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            visit(child, False)
        else:
            visit(child, at_load)

    visit(tree, True)
    return found


MODULES = all_modules(PACKAGE)
CLI_MODULES = all_modules(CLI)


def internal_edges(modules: dict[str, Path]) -> dict[str, list[tuple[str, Import]]]:
    """Importer -> the leapcore modules it imports (values named in ``from`` dropped)."""
    edges: dict[str, list[tuple[str, Import]]] = {}
    for name, path in modules.items():
        edges[name] = [
            (imp.target, imp)
            for imp in imports_of(name, path)
            if imp.target in MODULES and imp.target != name
        ]
    return edges


CORE_NAMES = sorted(n for n in MODULES if n.split(".")[1:2] in (["crypto"], ["proto"]))
#: ``import leapcore`` alone (the lazy public API), errors and records are as pure as cores.
PURE_NAMES = ["leapcore", "leapcore.errors", "leapcore.records", *CORE_NAMES]
#: The store does files and databases but no trio (drivers call it, not the other way).
STORE_NAMES = sorted(n for n in MODULES if layer_of(n) == "store")
FRAMEWORKS = frozenset({"trio", "anyio", "sniffio", "outcome", "h11", "h2", "websockets"})


def _loaded_by(name: str) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({name!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return {m.split(".")[0] for m in json.loads(out.stdout)}


@pytest.mark.parametrize("name", PURE_NAMES)
def test_core_imports_without_io(name: str) -> None:
    """Each in a fresh interpreter, so one module's imports cannot hide another's."""
    assert _loaded_by(name) & FORBIDDEN_IN_CORES == set(), f"{name} pulls in I/O modules"


@pytest.mark.parametrize("name", STORE_NAMES)
def test_store_imports_without_trio(name: str) -> None:
    assert _loaded_by(name) & FRAMEWORKS == set(), f"{name} pulls in an I/O framework"


def test_the_io_probe_can_fail() -> None:
    """The probe sees an I/O framework when one is imported (trio is installed)."""
    assert "trio" in _loaded_by("trio")


def test_the_walk_finds_every_layer() -> None:
    layers = {layer_of(n) for n in MODULES}
    assert {"crypto", "proto", "store", "net", "peer", "hub", "worker", "limits"} <= layers
    assert set(layers) <= set(ALLOWED) | {"limits"}, "a module outside the known layers"


def arrow_violations(modules: dict[str, Path]) -> list[str]:
    bad = []
    for importer, edges in internal_edges(modules).items():
        source = layer_of(importer)
        allowed = ALLOWED.get(source, frozenset()) | {source}
        for target, imp in edges:
            if layer_of(target) not in allowed:
                bad.append(f"{importer}:{imp.line} imports {target}")
    return bad


def test_imports_follow_the_arrows() -> None:
    assert arrow_violations(MODULES) == []


def test_the_arrow_check_can_fail(tmp_path: Path) -> None:
    """A net module importing the hub, even lazily, is reported: the walk is not vacuous."""
    bogus = tmp_path / "leapcore" / "net" / "bogus.py"
    bogus.parent.mkdir(parents=True)
    bogus.write_text("def later():\n    from ..hub.server import Hub\n    return Hub\n")
    assert arrow_violations({"leapcore.net.bogus": bogus}) == [
        "leapcore.net.bogus:2 imports leapcore.hub.server"
    ]


def test_only_the_admin_cli_opens_the_hub_store() -> None:
    offenders = []
    for name, path in CLI_MODULES.items():
        targets = {imp.target for imp in imports_of(name, path)}
        if HUB_STORE in targets and name != ADMIN_CLI:
            offenders.append(name)
    assert offenders == []


def test_no_import_cycles_at_load_time() -> None:
    graph = {
        importer: {target for target, imp in edges if imp.at_load}
        for importer, edges in internal_edges(MODULES).items()
    }
    # A package imports its own submodules only lazily, so parents are not edges here.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            walk(start, [start])
    assert cycles == []


@pytest.mark.parametrize("name", CORE_NAMES)
def test_core_modules_stay_small(name: str) -> None:
    lines = MODULES[name].read_text().count("\n")
    assert lines <= CORE_LINE_CAP, f"{name} has {lines} lines (cap {CORE_LINE_CAP})"


def _layout_table() -> dict[str, str]:
    """docs/api.md's layout table: package -> the row's text."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`leapcore."):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_the_docs_layout_names_every_module() -> None:
    """docs/api.md's table lists each module of a subpackage in its package's row."""
    rows = _layout_table()
    missing = [
        name
        for name in MODULES
        if name.count(".") == 2
        and f"`{name.rsplit('.', 1)[1]}`" not in rows.get(name.rsplit(".", 1)[0], "")
    ]
    assert missing == []
    assert set(rows) == {
        n for n, p in MODULES.items() if n.count(".") == 1 and p.name == "__init__.py"
    }
