"""``remote session send-keys``' key names and the interactive escape (``~.``), as pure
functions."""

from __future__ import annotations

from leapcore_cli.localtty import EscapeFilter
from leapcore_cli.session import keys_of


def test_key_names() -> None:
    assert keys_of(["ls -l", "Enter"]) == "ls -l\r"
    assert keys_of(["C-c", "C-a", "Up", "Tab", "Escape", "BSpace"]) == "\x03\x01\x1b[A\t\x1b\x7f"
    assert keys_of(["Enter", "word"], literal=True) == "Enterword"
    assert keys_of(["enter"]) == "enter"  # names are exact


def test_tilde_dot_after_a_newline_detaches() -> None:
    escapes = EscapeFilter()
    assert escapes.feed(b"~.") == (b"", True)  # first thing typed counts as a line start
    escapes = EscapeFilter()
    assert escapes.feed(b"ls\r") == (b"ls\r", False)
    assert escapes.feed(b"~") == (b"", False)  # held: it may be an escape
    assert escapes.feed(b".rest") == (b"", True)


def test_other_tildes_are_typed() -> None:
    escapes = EscapeFilter()
    assert escapes.feed(b"a~.b") == (b"a~.b", False)  # not at a line start
    assert escapes.feed(b"\r~~.") == (b"\r~.", False)  # ~~ types one ~
    assert escapes.feed(b"\n~x") == (b"\n~x", False)
    assert escapes.feed(b"\r~\r~.") == (b"\r~\r", True)
