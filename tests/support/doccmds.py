"""Runnable documentation: the shell examples of the docs, parsed and run for real.

The conventions (also summed up at the top of ``tests/test_docs.py``):

* A fenced block marked ```` ```console ```` is a runnable example. A line starting with
  ``$ `` is a command; a command ending in ``\\`` continues on the next line, and a here-document
  (``<<'EOF'``) continues to its terminator. Every other line is the output the command
  above it prints (stdout and stderr together).
* Output is checked loosely: each non-blank documented line must match a line the command
  printed, in order, other printed lines being skipped. In a documented line ``…`` (or
  ``...``) stands for any text and a run of spaces for any run of whitespace; a line that
  is only ``…`` says "more lines" and is not matched. A command ending in ``&`` (run in the
  background) may not document output: redirect it to a file and show that with a later
  command.
* A fenced block marked ```` ```python run ```` is run as a script (``python3 FILE``), in the
  same place and order; its output is not checked. Other ``python`` blocks are
  illustrations.
* ```` ```console norun ```` and ```` ```console pending ```` blocks are not run; each must be
  preceded by an HTML comment ``<!-- norun: why -->`` / ``<!-- pending: which feature -->``.
  Their ``leapcore``, ``leapcore-hub`` and ``leapcore-worker`` command lines are parsed by
  the commands' own argument parsers (:func:`parse_problems`): a norun command must parse,
  a pending one must not yet (once it does, the feature has landed and the block should
  run).
* Blocks marked ``sh``, ``bash`` or ``shell`` are not allowed in a checked page: every shell
  example is one of the above.

Every page's runnable blocks form one ``bash`` script (:func:`page_script`): commands run in
order in one shell, so ``cd``, variables and background processes carry over, and each
command's output goes to a file of its own. The script runs in a sandbox
(:func:`run_page`): a fresh directory as the current directory, ``HOME`` and the ``XDG_*``
directories inside it, no ``LEAPCORE_*`` variables, the virtualenv's ``bin`` first on
``PATH``, in a session of its own whose whole process group is ended afterwards. Where the
system allows it the script runs in a private network namespace (``unshare --net``), where
only loopback exists and every port is free; elsewhere each loopback port the page names is
replaced, in its commands and outputs alike, by a free one (:func:`remap_ports`). Either
way a runnable example may only name loopback hosts (:func:`non_loopback_urls`).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

import attrs

#: Block modes.
RUN: Final = "run"
NORUN: Final = "norun"
PENDING: Final = "pending"
#: Languages a shell example may not be written in (write ```console instead).
SHELL_LANGUAGES: Final = frozenset({"sh", "bash", "shell", "zsh"})
#: The leapcore commands whose argument parsers check norun and pending command lines.
CLI_NAMES: Final = ("leapcore", "leapcore-hub", "leapcore-worker")
#: Hosts a runnable example may name in a URL.
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "[::1]"})
#: Seconds the page's processes get between SIGTERM and SIGKILL when the page is done.
STOP_GRACE: Final = 12.0

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARK = re.compile(r"^<!--\s*(?P<mode>norun|pending)\s*:\s*(?P<reason>.*?)\s*-->$")
_HEREDOC = re.compile(r"<<(?P<dash>-?)\s*(?P<q>['\"]?)(?P<word>[A-Za-z_][A-Za-z0-9_]*)(?P=q)")
_WILDCARD = re.compile(r"\.\.\.|…")
_URL = re.compile(r"\b(?:https?|wss?)://(?P<host>\[[^\]]*\]|[^/:\s\"'`]+)")
_PORT = re.compile(r"(?P<host>127\.0\.0\.1|localhost|\[::1\]):(?P<port>[1-9][0-9]{0,4})\b")


@attrs.frozen
class Command:
    """One ``$`` command of a console block and the output documented under it."""

    text: str
    line: int
    expected: tuple[str, ...] = ()

    @property
    def background(self) -> bool:
        stripped = self.text.rstrip()
        return stripped.endswith("&") and not stripped.endswith("&&")


@attrs.frozen
class Block:
    """A fenced block that is a shell example or a ``python run`` script."""

    page: str
    line: int
    language: str
    mode: str
    reason: str
    commands: tuple[Command, ...] = ()
    source: str = ""  # a python block's code

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@attrs.frozen
class Page:
    name: str
    blocks: tuple[Block, ...]
    problems: tuple[str, ...]

    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.mode == RUN]


def parse_page(path: Path, name: str | None = None) -> Page:
    """Every shell example and ``python run`` block of the Markdown file ``path``, and what
    is wrong with how they are written (unmarked ``sh`` blocks, unjustified ``norun``, …)."""
    name = name or path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match["fence"], match["info"].strip().split()
        start = i + 1  # 1-based line of the opening fence
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence) and set(lines[i].strip()) == {fence[0]}
        ):
            body.append(lines[i][len(match["indent"]) :])
            i += 1
        i += 1
        language = info[0] if info else ""
        flags = info[1:]
        where = f"{name}:{start}"
        if language in SHELL_LANGUAGES:
            problems.append(
                f"{where}: a ```{language} block: write shell examples as ```console "
                "(run by tests/test_docs.py) or ```console norun / pending with a reason"
            )
            continue
        if language not in ("console", "python"):
            continue
        if language == "python" and flags != [RUN]:
            continue  # an illustration
        mode = RUN
        if language == "console" and flags:
            mode = flags[0]
            if mode not in (NORUN, PENDING) or len(flags) > 1:
                problems.append(f"{where}: unknown marks {' '.join(flags)!r}")
                continue
        reason = ""
        if mode != RUN:
            previous = next(
                (lines[k].strip() for k in range(start - 2, -1, -1) if lines[k].strip()), ""
            )
            mark = _MARK.match(previous)
            if mark is None or mark["mode"] != mode or not mark["reason"]:
                problems.append(
                    f"{where}: a ```console {mode} block needs <!-- {mode}: reason --> "
                    "on the line before it"
                )
            else:
                reason = mark["reason"]
        if language == "python":
            blocks.append(Block(name, start, language, mode, reason, source="\n".join(body)))
            continue
        commands, trouble = parse_console(body, start + 1)
        problems += [f"{name}:{line}: {text}" for line, text in trouble]
        blocks.append(Block(name, start, language, mode, reason, tuple(commands)))
    return Page(name, tuple(blocks), tuple(problems))


def parse_console(
    body: Sequence[str], first_line: int
) -> tuple[list[Command], list[tuple[int, str]]]:
    """The commands of a console block whose first body line is ``first_line``."""
    commands: list[Command] = []
    problems: list[tuple[int, str]] = []
    i = 0
    while i < len(body):
        line, number = body[i], first_line + i
        if not line.startswith("$ "):
            if commands:
                last = commands[-1]
                commands[-1] = attrs.evolve(last, expected=(*last.expected, line))
            elif line.strip():
                problems.append((number, "output before any `$ ` command"))
            i += 1
            continue
        text = [line[2:]]
        i += 1
        while text[-1].endswith("\\") and i < len(body):
            text.append(body[i])
            i += 1
        for here in _HEREDOC.finditer("\n".join(text)):
            word = here["word"]
            while i < len(body):
                end = body[i].lstrip("\t") if here["dash"] else body[i]
                text.append(body[i])
                i += 1
                if end == word:
                    break
            else:
                problems.append((number, f"here-document {word!r} is not terminated"))
        command = Command("\n".join(text), number)
        if not command.text.strip():
            problems.append((number, "an empty `$ ` command"))
        commands.append(command)
    for command in commands:
        if command.background and any(x.strip() for x in command.expected):
            problems.append(
                (
                    command.line,
                    "a background command (`&`) cannot document output: redirect it "
                    "to a file and show that with a later command",
                )
            )
    return commands, problems


# -- output ----------------------------------------------------------------------------------


def line_pattern(expected: str) -> re.Pattern[str]:
    """A documented output line as a regular expression (``…`` any text, spaces any
    whitespace, the rest literal)."""
    parts = []
    for piece in _WILDCARD.split(expected.strip()):
        words = piece.split(" ")
        parts.append(r"\s+".join(re.escape(w) for w in words).replace(r"\s+\s+", r"\s+"))
    text = ".*".join(parts)
    text = re.sub(r"(\\s\+)+", r"\\s+", text)
    return re.compile(text)


def output_problem(expected: Iterable[str], actual: str) -> str | None:
    """``None`` when every documented line matches a printed line, in order; else which
    documented line did not."""
    printed = [line.strip() for line in actual.splitlines()]
    at = 0
    for want in expected:
        want = want.strip()
        if not want or _WILDCARD.fullmatch(want):
            continue
        pattern = line_pattern(want)
        for k in range(at, len(printed)):
            if pattern.fullmatch(printed[k]):
                at = k + 1
                break
        else:
            return f"documented output line not printed (in this order): {want!r}"
    return None


# -- norun and pending: the command lines still parse ---------------------------------------


def simple_commands(text: str) -> list[list[str]]:
    """``text`` split into simple commands (at ``&&``, ``||``, ``;``, ``|``, ``&``),
    without leading ``VAR=value`` assignments or ``sudo``, redirections, comments and
    here-document bodies."""
    first = text.split("\n")
    kept: list[str] = []
    skip_until: str | None = None
    for line in first:
        if skip_until is not None:
            if line.strip() == skip_until:
                skip_until = None
            continue
        kept.append(line)
        here = _HEREDOC.search(line)
        if here:
            skip_until = here["word"]
    commands: list[list[str]] = [[]]
    for line in "\n".join(kept).replace("\\\n", " ").split("\n"):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        redirect = False
        for token in lexer:
            if token and set(token) <= set("&|;()<>"):
                if "<" in token or ">" in token:  # `>file`, `2>&1`: not arguments
                    if commands[-1] and commands[-1][-1].isdigit():
                        commands[-1].pop()
                    redirect = True
                else:
                    commands.append([])
            elif redirect:
                redirect = False
            else:
                commands[-1].append(token)
        commands.append([])
    result = []
    for words in commands:
        while words and (
            re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] == "sudo"
        ):
            words = words[1:]
        if words:
            result.append(words)
    return result


def parse_problems(command: Command) -> list[str]:
    """How the leapcore command lines in ``command`` fail their commands' argument
    parsers (an empty list: every one parses)."""
    from leapcore_cli import hub, remote, worker

    parsers: dict[str, Callable[[], object]] = {
        "leapcore": remote.build_parser,
        "leapcore-hub": hub.build_parser,
        "leapcore-worker": worker.build_parser,
    }
    problems = []
    for words in simple_commands(command.text):
        program = os.path.basename(words[0])
        if program not in parsers:
            continue
        parser = parsers[program]()
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                parser.parse_args(words[1:])  # type: ignore[attr-defined]
        except SystemExit as exc:
            if exc.code not in (0, None):
                message = err.getvalue().strip().splitlines()
                problems.append(f"{shlex.join(words)}: {message[-1] if message else exc.code}")
    return problems


# -- sandboxed runs --------------------------------------------------------------------------


def non_loopback_urls(block: Block) -> list[str]:
    """URLs in a runnable block whose host is not loopback."""
    texts = [c.text for c in block.commands] + [block.source]
    return [
        m.group(0) for text in texts for m in _URL.finditer(text) if m["host"] not in LOOPBACK_HOSTS
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``127.0.0.1:port`` now (with ``SO_REUSEADDR``, as
    servers do, so a port in TIME_WAIT counts as free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def remap_ports(
    blocks: Sequence[Block],
    pick: Callable[[], int] = free_port,
    keep: Callable[[int], bool] = port_is_free,
) -> list[Block]:
    """``blocks`` with every loopback port they name (``127.0.0.1:4327``,
    ``localhost:8443``, …) that is in use (``keep`` says no) replaced by a free one, the
    same one wherever it appears. (A free port is kept: a command that relies on a default
    port, such as ``leapcore-hub --solo``'s 4327, then still finds it.)"""
    ports: dict[str, str] = {}

    def swap(match: re.Match[str]) -> str:
        if match["port"] not in ports:
            port = int(match["port"])
            ports[match["port"]] = str(port if keep(port) else pick())
        return f"{match['host']}:{ports[match['port']]}"

    def fix(text: str) -> str:
        return _PORT.sub(swap, text)

    out = []
    for block in blocks:
        commands = tuple(
            attrs.evolve(c, text=fix(c.text), expected=tuple(fix(x) for x in c.expected))
            for c in block.commands
        )
        out.append(attrs.evolve(block, commands=commands, source=fix(block.source)))
    return out


def page_script(blocks: Sequence[Block], outdir: Path) -> str:
    """One bash script running ``blocks`` in order; command N's output goes to
    ``outdir/N.out`` and its exit status to ``outdir/N.rc``; the first failure ends it."""
    out = shlex.quote(str(outdir))
    lines = ["set -o pipefail", f"__doc_out={out}"]
    number = 0
    for block in blocks:
        if block.language == "python":
            number += 1
            script = outdir / f"{number}.py"
            script.write_text(block.source + "\n", encoding="utf-8")
            body = f"python3 {shlex.quote(str(script))}"
            lines += _step(number, body)
            continue
        for command in block.commands:
            number += 1
            lines += _step(number, command.text)
    return "\n".join(lines) + "\n"


def _step(number: int, body: str) -> list[str]:
    return [
        f'echo {number} >"$__doc_out/current"',
        "{ " + body,
        f'}} >"$__doc_out/{number}.out" 2>&1 </dev/null',
        "__doc_rc=$?",
        f'echo "$__doc_rc" >"$__doc_out/{number}.rc"',
        '[ "$__doc_rc" -eq 0 ] || exit 3',
    ]


def steps(blocks: Sequence[Block]) -> list[tuple[Block, Command | None]]:
    """The script's steps in order: (block, command), or (block, None) for a python block."""
    result: list[tuple[Block, Command | None]] = []
    for block in blocks:
        if block.language == "python":
            result.append((block, None))
        else:
            result += [(block, command) for command in block.commands]
    return result


_NETNS_PROBE: list[list[str] | None] = []
#: Brings the loopback interface up inside a new network namespace, then runs argv[1:].
_LO_UP = (
    "import fcntl, os, socket, struct, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "req = struct.pack('16sH22x', b'lo', 0)\n"
    "flags = struct.unpack('16sH22x', fcntl.ioctl(s, 0x8913, req))[1]\n"
    "fcntl.ioctl(s, 0x8914, struct.pack('16sH22x', b'lo', flags | 1))\n"
    "s.close()\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def netns_prefix() -> list[str] | None:
    """The command prefix that runs a program in a private network namespace with loopback
    up, or ``None`` where unprivileged namespaces are not allowed (probed once)."""
    if _NETNS_PROBE:
        return _NETNS_PROBE[0]
    found: list[str] | None = None
    unshare = shutil.which("unshare")
    if unshare:
        for user in ("--map-current-user", "--map-root-user"):
            prefix = [unshare, user, "--net", sys.executable, "-c", _LO_UP]
            listen = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()"
            probe = [*prefix, sys.executable, "-c", listen]
            try:
                done = subprocess.run(probe, capture_output=True, timeout=20, check=False)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0:
                found = prefix
                break
    _NETNS_PROBE.append(found)
    return found


def sandbox_env(root: Path, venv_bin: Path) -> dict[str, str]:
    home = root / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEAPCORE_", "XDG_", "PYTHON", "VIRTUAL_ENV", "SSL_CERT"))
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_STATE_HOME=str(home / ".local/state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_RUNTIME_DIR=str(root / "run"),
        TMPDIR=str(root / "tmp"),
        PATH=os.pathsep.join([str(venv_bin), "/usr/local/bin", "/usr/bin", "/bin"]),
        LANG="C.UTF-8",
        LC_ALL="C.UTF-8",
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
    )
    for key in ("HOME", "XDG_RUNTIME_DIR", "TMPDIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True, mode=0o700)
    return env


@attrs.frozen
class PageRun:
    """What running a page's examples gave."""

    page: str
    #: Problems found (an empty tuple: the page's examples are true).
    failures: tuple[str, ...]
    seconds: float
    isolated: bool  # ran in a private network namespace
    commands: int


def run_page(
    page: Page,
    root: Path,
    *,
    venv_bin: Path | None = None,
    timeout: float = 120.0,
    isolate: bool | None = None,
) -> PageRun:
    """Run ``page``'s runnable blocks in a sandbox under ``root`` (see the module
    docstring) and check every command's exit status and documented output."""
    started = time.monotonic()
    venv_bin = venv_bin or Path(sys.executable).parent
    prefix = netns_prefix() if isolate is not False else None
    if isolate and prefix is None:
        raise AssertionError("no private network namespace on this system")
    blocks = page.runnable()
    if prefix is None:
        blocks = remap_ports(blocks)
    work, outdir = root / "work", root / "doc-out"
    work.mkdir(parents=True)
    outdir.mkdir()
    env = sandbox_env(root, venv_bin)
    script = root / "page.sh"
    script.write_text(page_script(blocks, outdir), encoding="utf-8")
    order = steps(blocks)
    bash = shutil.which("bash") or "/bin/bash"
    argv = [*(prefix or []), bash, str(script)]
    failures: list[str] = []
    with (root / "page.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            current = _read(outdir / "current").strip()
            where = _describe(order, int(current)) if current.isdigit() else "before any command"
            failures.append(f"timed out after {timeout:g}s, running {where}")
        finally:
            _end_group(proc)
    for number, (_, command) in enumerate(order, 1):
        rc = _read(outdir / f"{number}.rc").strip()
        output = _read(outdir / f"{number}.out")
        if not rc:
            if not failures:
                failures.append(f"{_describe(order, number)} did not run (the script ended)")
            break
        if rc != "0":
            failures.append(f"{_describe(order, number)} exited {rc}; it printed:\n{_tail(output)}")
            break
        if command is not None:
            problem = output_problem(command.expected, output)
            if problem:
                failures.append(
                    f"{_describe(order, number)}: {problem}; it printed:\n{_tail(output)}"
                )
    if failures and (root / "page.log").stat().st_size:
        failures.append("the script's own output:\n" + _tail(_read(root / "page.log")))
    return PageRun(
        page.name, tuple(failures), time.monotonic() - started, prefix is not None, len(order)
    )


def _describe(order: Sequence[tuple[Block, Command | None]], number: int) -> str:
    if not 1 <= number <= len(order):
        return f"step {number}"
    block, command = order[number - 1]
    if command is None:
        return f"the python block at {block.where}"
    first = command.text.splitlines()[0]
    return f"{block.page}:{command.line} `$ {first}`"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int = 40) -> str:
    kept = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in kept)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies waiting for a slow
    init to reap them do not count: ``/proc`` is read where there is one)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the script's whole process group (its background processes included),
    then SIGKILL to whatever is left after :data:`STOP_GRACE` seconds."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()
