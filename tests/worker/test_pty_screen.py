"""The session screen: pyte fed with output, the scrollback kept as bounded text, and the
snapshot that redraws the screen on another terminal."""

from __future__ import annotations

from leapcore.worker.pty_screen import TerminalScreen


def test_lines_cursor_and_bounded_scrollback() -> None:
    screen = TerminalScreen(20, 3, scrollback=4)
    screen.feed(b"".join(b"line %d\r\n" % n for n in range(10)))
    assert screen.lines() == ["line 8", "line 9", ""]
    assert screen.cursor == (0, 2)
    assert screen.scrollback(100) == ["line 4", "line 5", "line 6", "line 7"]
    assert screen.scrollback(2) == ["line 6", "line 7"]
    assert screen.scrollback_lines == 4


def test_a_scrolling_region_is_not_scrollback() -> None:
    screen = TerminalScreen(20, 5, scrollback=10)
    screen.feed(b"\x1b[2;4r\x1b[4;1H" + b"x\n" * 6)  # scroll inside rows 2..4 only
    assert screen.scrollback(10) == []


def test_the_snapshot_redraws_the_screen() -> None:
    screen = TerminalScreen(30, 4, scrollback=0)
    screen.feed(b"plain\r\n\x1b[1;31mbold red\x1b[0m and \x1b[44mblue bg\x1b[0m\r\n")
    screen.feed("wide: \u4e2d\u6587\r\n\x1b[?1h\x1b[?25l\x1b[3;5H".encode())
    copy = TerminalScreen(30, 4, scrollback=0)
    copy.feed(b"garbage that the snapshot clears\r\n" * 5)
    copy.feed(screen.snapshot().encode())
    assert copy.lines() == screen.lines()
    assert copy.cursor == screen.cursor == (4, 2)
    assert copy.snapshot() == screen.snapshot()  # attributes and modes too
    assert "\x1b[0;1;31mbold red" in screen.snapshot()
    assert "\x1b[?25l" in screen.snapshot() and "\x1b[?1h" in screen.snapshot()


def test_sequences_pyte_cannot_take_do_not_break_it() -> None:
    screen = TerminalScreen(20, 3, scrollback=0)
    screen.feed(b"\x1b[?4m")  # a private SGR: pyte's own handler would raise
    screen.feed(b"still here")
    assert screen.lines()[0] == "still here"
    screen.resize(10, 2)
    assert screen.size == (10, 2)
    assert screen.lines() == ["still here", ""]
