"""Shell completion, for real: the installed ``leapcore``, ``leapcore-hub`` and
``leapcore-worker`` answer argcomplete's protocol (``_ARGCOMPLETE``, ``COMP_LINE``,
``COMP_POINT``, the answer in ``_ARGCOMPLETE_STDOUT_FILENAME``), and the code that
``completion SHELL`` prints is accepted by bash, zsh and fish — and, loaded into a real
bash or fish, completes the commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.procs import script

from leapcore_cli.completion import PROGS, SHELLS, shell_code

BIN = Path(sys.executable).parent


def _env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment less leapcore's settings and any completion variables, with
    a fresh HOME and the console scripts first on PATH (as a shell would find them)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEAPCORE_", "_ARGCOMPLETE", "COMP_", "_ARC_"))
    }
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    env["PATH"] = f"{Path(script('leapcore')).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def complete(tmp_path: Path, line: str) -> list[str]:
    """What the real command offers for ``line`` (the cursor at its end), asked as bash does."""
    out = tmp_path / "completions"
    env = {
        **_env(tmp_path),
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_SHELL": "bash",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "COMP_TYPE": "9",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    proc = subprocess.run(
        [script(line.split()[0])],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the answer goes to the file, never to stdout
    text = out.read_text()
    return sorted(word.strip() for word in text.split("\v") if word.strip())


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("leapcore remote wor", ["worker", "workspace"]),
        ("leapcore remote works", ["workspace"]),
        ("leapcore remote workspace ", ["create", "list", "remove"]),
        ("leapcore remote worker pi", ["ping", "pins"]),
        ("leapcore remote worker pins ", ["list", "remove", "show"]),
        ("leapcore com", ["completion"]),
        ("leapcore completion ", ["bash", "fish", "zsh"]),
        ("leapcore completion fish --prog leapcore-w", ["leapcore-worker"]),
        ("leapcore-hub ad", ["admin"]),
        ("leapcore-worker ser", ["service"]),
        ("leapcore-worker service ", ["install", "uninstall"]),
        ("leapcore-worker service install --us", ["--user"]),
        ("leapcore-worker cross-worker-pins sh", ["show"]),
    ],
)
def test_the_real_commands_complete_subcommands_and_flags(
    tmp_path: Path, line: str, expected: list[str]
) -> None:
    offered = complete(tmp_path, line)
    if line.endswith(" "):  # after a space flags are offered too: --help at least
        assert "--help" in offered
        offered = [word for word in offered if not word.startswith("-")]
    assert offered == expected


def test_top_level_completion_offers_every_subcommand(tmp_path: Path) -> None:
    offered = complete(tmp_path, "leapcore ")
    assert {"remote", "demo", "completion"} <= set(offered)
    offered = complete(tmp_path, "leapcore-worker ")
    assert {"run", "cross-worker-pins", "service", "completion"} <= set(offered)
    assert not (tmp_path / "home" / ".config").exists()  # completing touched no state


def test_without_the_variables_nothing_is_completed(tmp_path: Path) -> None:
    """A plain run is not hijacked: the same command line just runs."""
    proc = subprocess.run(
        [script("leapcore"), "completion", "bash", "--prog", "leapcore"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shell_code("bash", ["leapcore"])
    assert "complete " in proc.stdout and "leapcore-hub" not in proc.stdout


def _printed(tmp_path: Path, prog: str, *args: str) -> str:
    proc = subprocess.run(
        [script(prog), "completion", *args],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    return proc.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_every_command_prints_the_same_code_for_all_three(tmp_path: Path, shell: str) -> None:
    codes = {_printed(tmp_path, prog, shell) for prog in PROGS}
    assert len(codes) == 1
    code = codes.pop()
    for prog in PROGS:
        assert prog in code


def test_an_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [script("leapcore"), "completion", "tcsh"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid choice: 'tcsh'" in proc.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_the_shell_accepts_the_code(tmp_path: Path, shell: str) -> None:
    binary = shutil.which(shell)
    if binary is None:
        pytest.skip(f"{shell} is not installed")
    script = tmp_path / f"completion.{shell}"
    script.write_text(_printed(tmp_path, "leapcore", shell))
    proc = subprocess.run([binary, "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_a_broken_script_is_rejected_by_bash_n(tmp_path: Path) -> None:
    """The syntax check above can fail."""
    script = tmp_path / "broken.bash"
    script.write_text(_printed(tmp_path, "leapcore", "bash").replace("fi\n", "", 1))
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=60)
    assert proc.returncode != 0


def test_bash_completes_through_the_printed_code(tmp_path: Path) -> None:
    """The printed code, eval'd in a real bash, registers all three commands and fills
    COMPREPLY by running the real command."""
    program = r"""
eval "$(leapcore completion bash)"
complete -p leapcore leapcore-hub leapcore-worker
COMP_LINE="leapcore remote wor"; COMP_POINT=${#COMP_LINE}
COMP_WORDS=(leapcore remote wor); COMP_CWORD=2; COMP_TYPE=9
_python_argcomplete leapcore wor remote
printf 'reply:%s\n' "${COMPREPLY[@]}"
COMP_LINE="leapcore-hub admin us"; COMP_POINT=${#COMP_LINE}
COMP_WORDS=(leapcore-hub admin us); COMP_CWORD=2
_python_argcomplete leapcore-hub us admin
printf 'reply:%s\n' "${COMPREPLY[@]}"
"""
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for prog in PROGS:
        assert any(line.startswith("complete ") and line.endswith(f" {prog}") for line in lines)
    assert [line.strip() for line in lines if line.startswith("reply:")] == [
        "reply:worker",
        "reply:workspace",
        "reply:user",
    ]


def test_fish_completes_through_the_printed_code(tmp_path: Path) -> None:
    fish = shutil.which("fish")
    if fish is None:
        pytest.skip("fish is not installed")
    program = "leapcore completion fish | source; complete -C 'leapcore-worker service un'"
    proc = subprocess.run(
        [fish, "--no-config", "-c", program],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == ["uninstall"]


def test_zsh_registers_the_printed_code(tmp_path: Path) -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    program = (
        'autoload -U compinit && compinit -u -d "$HOME/.zcompdump"; '
        'eval "$(leapcore completion zsh)"; '
        "print -r -- $_comps[leapcore] $_comps[leapcore-hub] $_comps[leapcore-worker]"
    )
    proc = subprocess.run(
        [zsh, "-f", "-c", program],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["_python_argcomplete"] * 3
