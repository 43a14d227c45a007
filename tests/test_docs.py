"""The documentation states what the code does: tables that must not drift, links that lead
somewhere, and shell examples that run.

**Runnable examples** (the pages are ``docs/*.md`` and ``README.md``; the parser and runner
are :mod:`support.doccmds`):

* A ```` ```console ```` block is run. ``$ `` starts a command (``\\`` at the end of a line and
  here-documents continue it); the other lines are its output, checked loosely: each
  non-blank documented line must match a printed line (stdout and stderr together), in
  order, unmatched printed lines being skipped. ``…`` (or ``...``) in a documented line
  stands for any text, a run of spaces for any whitespace; a line of just ``…`` documents
  nothing. Every command must exit 0. A command ending in ``&`` runs in the background and
  documents no output; the page's next command waits for it honestly (``until curl … /healthz``,
  ``until grep -q … log``).
* A ```` ```python run ```` block is run as a script in the same place; other ``python``
  blocks are illustrations.
* A page's commands run in order in one bash shell (``cd``, variables and background jobs
  carry over), in a sandbox: an empty current directory, ``HOME`` and ``XDG_*`` inside the
  test's temporary directory, no ``LEAPCORE_*`` variables, the virtualenv's ``bin`` first on
  ``PATH``, a private network namespace where the system allows one (else each loopback port
  the page names is swapped for a free one), only loopback URLs. When the page is done its
  whole process group gets SIGTERM, then SIGKILL.
* ```` ```console norun ```` (cannot run here: root, systemd, the network, minutes of
  benchmark) and ```` ```console pending ```` (waits for a feature) blocks need
  ``<!-- norun: why -->`` / ``<!-- pending: feature -->`` on the line before; a page may have
  at most :data:`MAX_NORUN` of them (:data:`NORUN_ALLOWANCE` names the exceptions). Their
  ``leapcore*`` command lines must parse with the commands' own parsers (pending ones must
  not yet).
* ``sh``, ``bash`` and ``shell`` blocks are refused: a shell example is one of the above.
"""

from __future__ import annotations

import importlib
import re
import socket
from pathlib import Path

import pytest
from support import secretlog
from support.doccmds import (
    NORUN,
    PENDING,
    Block,
    Command,
    Page,
    non_loopback_urls,
    output_problem,
    parse_page,
    parse_problems,
    remap_ports,
    run_page,
    simple_commands,
)

import leapcore.errors as errors
from leapcore_cli import common

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Every page whose shell examples are checked.
PAGE_FILES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
#: Blocks a page may leave unrun (norun and pending together).
MAX_NORUN = 3
#: Pages allowed more, and why.
NORUN_ALLOWANCE = {
    "benchmarks.md": (
        8,
        "every command is a benchmark of seconds to minutes whose figures depend on the machine",
    ),
}
#: Pages that must have runnable examples (so that a parsing slip cannot skip them all).
MUST_RUN = {"getting-started.md", "team-hub.md"}
#: Seconds one page's examples may take.
PAGE_TIMEOUT = 150.0


def _pages() -> list[Page]:
    return [parse_page(path) for path in PAGE_FILES]


PAGES = {page.name: page for page in _pages()}
RUNNABLE = sorted(name for name, page in PAGES.items() if page.runnable())


def test_every_error_class_is_in_the_api_table_with_its_code() -> None:
    text = (DOCS / "api.md").read_text()
    for name in errors.__all__:
        cls = getattr(errors, name)
        parent = cls.__mro__[1].__name__
        row = f"| `{name}` | `{parent}` | `{cls.code}` |"
        assert row in text, f"docs/api.md lacks the row for {name}: {row}"


def test_error_codes_are_unique() -> None:
    codes = [getattr(errors, name).code for name in errors.__all__]
    assert len(codes) == len(set(codes))


def test_exit_codes_in_cli_docs_match_the_code() -> None:
    text = (DOCS / "cli.md").read_text()
    documented = {int(m) for m in re.findall(r"^\| (\d{1,2}) \|", text, re.MULTILINE)}
    actual = {
        value
        for name, value in vars(common).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert documented == actual


def test_protocol_state_diagrams_are_generated_from_the_tables() -> None:
    from leapcore.proto.diagrams import DIAGRAMS, update_text

    text = (DOCS / "protocol.md").read_text()
    assert update_text(text) == text, "run: python -m leapcore.proto.diagrams docs/protocol.md"
    for name in DIAGRAMS:
        assert f"<!-- diagram:{name} -->" in text, f"docs/protocol.md lacks diagram {name}"


# -- links -----------------------------------------------------------------------------------

_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (headings inside code blocks skipped)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fence = None
    for line in path.read_text(encoding="utf-8").splitlines():
        mark = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if mark:
            fence = None if fence and mark[1].startswith(fence) else (fence or mark[1])
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if fence or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading[1].lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_links_between_pages_lead_somewhere() -> None:
    """Every relative link of the pages names an existing file, and an existing heading."""
    broken = []
    for path in PAGE_FILES:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
        for match in _LINK.finditer(text):
            target = match["target"]
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.name}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{path.name}: {target}: no such heading in {linked.name}")
    assert not broken, "\n".join(broken)


_DOTTED = re.compile(r"`(leapcore(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?![\w*])")


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_named_modules_and_constants_exist() -> None:
    """Every `leapcore.module.NAME` a page names (in code spans) can be imported."""
    missing = []
    for path in PAGE_FILES:
        for dotted in sorted(set(_DOTTED.findall(path.read_text(encoding="utf-8")))):
            try:
                _resolve(dotted)
            except (ImportError, AttributeError):
                missing.append(f"{path.name}: {dotted}")
    assert not missing, "\n".join(missing)


# -- shell examples --------------------------------------------------------------------------


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = PAGES["README.md"]
    commands = [c.text for b in readme.blocks for c in b.commands]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in commands, f".ci/run runs {ci!r}, which README.md does not show"


def test_shell_examples_are_marked() -> None:
    problems = [problem for page in PAGES.values() for problem in page.problems]
    assert not problems, "\n".join(problems)
    assert set(RUNNABLE) >= MUST_RUN, f"no runnable examples in {MUST_RUN - set(RUNNABLE)}"


def test_unrun_blocks_are_few_and_justified() -> None:
    too_many = []
    for name, page in PAGES.items():
        unrun = [b for b in page.blocks if b.mode in (NORUN, PENDING)]
        cap = NORUN_ALLOWANCE.get(name, (MAX_NORUN, ""))[0]
        if len(unrun) > cap:
            where = ", ".join(f"{b.where} ({b.reason})" for b in unrun)
            too_many.append(f"{name}: {len(unrun)} blocks not run, at most {cap}: {where}")
        assert all(b.reason for b in unrun)  # parse_page reports those without one
    assert not too_many, "\n".join(too_many)


def test_unrun_commands_still_parse() -> None:
    """A norun command line must be accepted by its command's parser; a pending one must
    not be yet (once it is, its feature has landed: run the block)."""
    problems = []
    for page in PAGES.values():
        for block in page.blocks:
            if block.mode not in (NORUN, PENDING):
                continue
            for command in block.commands:
                found = parse_problems(command)
                for words in simple_commands(command.text):
                    script = next((w for w in words[1:] if w.endswith(".py")), None)
                    python = words[0].endswith(("python", "python3"))
                    if python and script and not (ROOT / script).exists():
                        found.append(f"{script}: no such file")
                if block.mode == NORUN and found:
                    problems += [f"{page.name}:{command.line}: {p}" for p in found]
                if block.mode == PENDING and not found:
                    problems.append(
                        f"{page.name}:{command.line}: this pending command parses now: "
                        f"make the block run ({block.reason})"
                    )
    assert not problems, "\n".join(problems)


def test_runnable_examples_stay_on_loopback() -> None:
    found = [
        f"{block.where}: {url}"
        for page in PAGES.values()
        for block in page.runnable()
        for url in non_loopback_urls(block)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", RUNNABLE)
def test_page_examples_run(name: str, tmp_path: Path) -> None:
    result = run_page(PAGES[name], tmp_path, timeout=PAGE_TIMEOUT)
    # The logs the page's hubs and workers wrote join the suite's check for secrets in logs.
    for log in sorted((tmp_path / "work").rglob("*.log")):
        secretlog.append_log("docs.log", f"{name}: {log.name}", log.read_text(errors="replace"))
    network = "a private network namespace" if result.isolated else "the shared loopback"
    assert not result.failures, (
        f"docs example failed ({result.seconds:.1f}s, on {network}):\n" + "\n".join(result.failures)
    )


# -- the runner itself -----------------------------------------------------------------------


def _page(tmp_path: Path, text: str) -> Page:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return parse_page(path)


def test_output_is_matched_loosely_but_in_order() -> None:
    printed = "NAME  ID   STATE\nbox   abc  online\nseq=1 rtt=0.5 ms\ndone\n"
    assert output_problem(["NAME ID STATE", "box … online", "…", "done"], printed) is None
    assert output_problem(["seq=1 rtt=... ms"], printed) is None
    assert output_problem(["done", "box … online"], printed) is not None  # order
    assert output_problem(["box … offline"], printed) is not None
    assert output_problem(["box"], printed) is not None  # a line matches whole, not a part


def test_the_runner_reports_false_examples(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        '```console\n$ cd sub 2>/dev/null || mkdir sub && cd sub\n$ echo "in $PWD"\n'
        "in …/sub\n$ printf 'a\\nb\\n'\nb\na\n```\n",
    )
    assert not page.problems
    result = run_page(page, tmp_path / "run1", timeout=30)
    assert len(result.failures) == 1, result.failures
    assert "page.md:5 `$ printf" in result.failures[0]
    assert "line not printed (in this order): 'a'" in result.failures[0]

    page = _page(tmp_path, "```console\n$ true\n$ false\n$ echo never\n```\n")
    result = run_page(page, tmp_path / "run2", timeout=30)
    assert "page.md:3 `$ false` exited 1" in result.failures[0]


def test_the_runner_ends_background_processes_and_times_out(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        "```console\n$ sleep 300 &\n$ echo $! >pid\n$ sleep 300\n```\n",
    )
    result = run_page(page, tmp_path / "run", timeout=2)
    assert "timed out after 2s, running page.md:4 `$ sleep 300`" in result.failures[0]
    pid = int((tmp_path / "run" / "work" / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()[0]


def test_the_runner_works_without_a_private_network(tmp_path: Path) -> None:
    """The fallback: the page's loopback ports, swapped for free ones where taken."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        page = _page(
            tmp_path,
            f"```console\n$ leapcore-hub --listen 127.0.0.1:{port} --data-dir h >hub.log 2>&1 &\n"
            f"$ until curl -fs http://127.0.0.1:{port}/healthz; do sleep 0.1; done\nok\n"
            f"$ grep -c '127.0.0.1:{port}' hub.log\n1\n```\n",
        )
        result = run_page(page, tmp_path / "run", timeout=60, isolate=False)
    assert not result.isolated
    assert not result.failures, result.failures


def test_marks_are_checked(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        "```sh\nls\n```\n\n```console norun\n$ ls\n```\n\n<!-- norun: why -->\n"
        "```console norun\n$ ls\n```\n\n```console\noutput first\n$ sleep 1 &\nout\n```\n",
    )
    problems = "\n".join(page.problems)
    assert "page.md:1: a ```sh block" in problems
    assert "page.md:5: a ```console norun block needs <!-- norun: reason -->" in problems
    assert "page.md:10" not in problems
    assert "output before any `$ ` command" in problems
    assert "a background command (`&`) cannot document output" in problems


def test_continuations_and_here_documents() -> None:
    page_lines = ["$ cat >f <<'EOF'", "$ not a command", "EOF", "$ echo a \\", "  b", "a b"]
    from support.doccmds import parse_console

    commands, problems = parse_console(page_lines, 1)
    assert not problems
    assert [c.text for c in commands] == ["cat >f <<'EOF'\n$ not a command\nEOF", "echo a \\\n  b"]
    assert commands[1].expected == ("a b",)


def test_unrun_command_lines_are_parsed_by_the_commands() -> None:
    good = Command("sudo leapcore-worker service install --user --print && systemctl start x", 1)
    bad = Command("leapcore-hub --no-such-flag | cat", 1)
    assert parse_problems(good) == []
    redirected = Command("X=1 leapcore-hub --solo >solo.log 2>&1 &  # a comment", 1)
    assert simple_commands(redirected.text) == [["leapcore-hub", "--solo"]]
    assert parse_problems(redirected) == []
    assert "unrecognized arguments: --no-such-flag" in parse_problems(bad)[0]


def test_ports_are_swapped_consistently_without_a_private_network() -> None:
    block = Block(
        "p.md",
        1,
        "console",
        "run",
        "",
        (
            Command("hub --listen 127.0.0.1:4327 &", 2),
            Command("curl http://localhost:4327/", 3, ("at 127.0.0.1:4327",)),
        ),
    )
    ports = iter([50001])
    (swapped,) = remap_ports([block], pick=lambda: next(ports), keep=lambda port: False)
    assert swapped.commands[0].text == "hub --listen 127.0.0.1:50001 &"
    assert swapped.commands[1].text == "curl http://localhost:50001/"
    assert swapped.commands[1].expected == ("at 127.0.0.1:50001",)

    def never() -> int:
        raise AssertionError("a free port is kept")

    (kept,) = remap_ports([block], pick=never, keep=lambda port: True)
    assert kept == block
