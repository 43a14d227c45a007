"""Shell completion for ``leapcore``, ``leapcore-hub`` and ``leapcore-worker`` (argcomplete).

Two halves:

* :func:`autocomplete` runs in every command before its arguments are parsed. When a shell
  asks for completions it sets ``_ARGCOMPLETE`` (with ``COMP_LINE`` and ``COMP_POINT``);
  argcomplete then walks the command's own argparse parser, writes the candidates to the
  shell (file descriptor 8, or ``_ARGCOMPLETE_STDOUT_FILENAME``) and exits. Otherwise it
  returns at once, without even importing argcomplete.
* ``completion bash|zsh|fish`` (a subcommand of each of the three commands) prints the shell
  code that registers those commands with the shell: by default all three, since one install
  brings all three; ``--prog NAME`` (repeatable) limits it to some.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Final

__all__ = ["PROGS", "SHELLS", "add_parser", "autocomplete", "shell_code"]

#: The commands leapcore installs.
PROGS: Final = ("leapcore", "leapcore-hub", "leapcore-worker")
#: The shells ``completion`` writes code for.
SHELLS: Final = ("bash", "zsh", "fish")


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request for ``parser`` and exit, when there is one."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    argcomplete.autocomplete(parser)


def shell_code(shell: str, progs: tuple[str, ...] | list[str] = PROGS) -> str:
    """The ``shell`` code that makes it complete ``progs`` (each run by its name on PATH)."""
    if shell not in SHELLS:
        raise ValueError(f"unknown shell {shell!r}")
    from argcomplete.shell_integration import shellcode

    code = shellcode(list(progs), shell=shell)
    return code if code.endswith("\n") else code + "\n"


def _print_code(args: argparse.Namespace) -> int:
    progs = tuple(dict.fromkeys(args.prog)) if args.prog else PROGS
    sys.stdout.write(shell_code(args.shell, progs))
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``completion SHELL [--prog NAME]`` to a command's subcommands (``sub``)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "completion",
        help="print shell code that completes leapcore's commands (bash, zsh or fish)",
        description="Print the code that makes SHELL complete leapcore, leapcore-hub and "
        "leapcore-worker (subcommands and flags). Load it from your shell's start-up file, "
        'e.g. eval "$(leapcore completion bash)" in ~/.bashrc; see docs/cli.md.',
    )
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    parser.add_argument(
        "--prog",
        action="append",
        choices=PROGS,
        metavar="NAME",
        help="complete only this command (repeatable; default: all three)",
    )
    parser.set_defaults(handler=_print_code)
    return parser
