"""A terminal session's screen: the output fed to a real terminal emulator (``pyte``),
rendered as text for ``pty.capture`` and as escape sequences for ``pty.attach``'s snapshot.

No I/O here: :class:`TerminalScreen` is fed bytes and asked questions. The scrollback is
kept as plain text (one string per line that scrolled off the top of a screen whose
scrolling region is the whole screen, as tmux does), at most ``scrollback`` lines, so its
memory is bounded by ``scrollback x cols`` characters; the screen itself costs one cell
per drawn character, at most ``cols x rows``.

Not emulated: the alternate screen (a full-screen program draws over the main screen, and
what it leaves is what ``capture`` shows after it exits) and answers to the terminal's
queries (device attributes, cursor position reports: an attached terminal answers them).
"""

from __future__ import annotations

import collections
import logging
from typing import Final

import pyte
from pyte import graphics, modes
from pyte.screens import Char

__all__ = ["TerminalScreen", "sgr"]

log = logging.getLogger(__name__)

_FG: Final = {name: code for code, name in {**graphics.FG_ANSI, **graphics.FG_AIXTERM}.items()}
_BG: Final = {name: code for code, name in {**graphics.BG_ANSI, **graphics.BG_AIXTERM}.items()}
#: Application cursor keys (``CSI ? 1 h``): pyte keeps private modes shifted left by 5.
_DECCKM: Final = 1 << 5
_FLAGS: Final = (("bold", 1), ("italics", 3), ("underscore", 4), ("blink", 5), ("reverse", 7))


def _color(name: str, table: dict[str, int], extended: int) -> list[int]:
    if name == "default":
        return []
    code = table.get(name)
    if code is not None:
        return [code]
    if len(name) == 6:
        try:
            rgb = bytes.fromhex(name)
        except ValueError:
            return []
        return [extended, 2, rgb[0], rgb[1], rgb[2]]
    return []


def sgr(char: Char) -> str:
    """The SGR sequence that sets ``char``'s attributes from the default ones."""
    params = [0]
    for flag, code in _FLAGS:
        if getattr(char, flag):
            params.append(code)
    if char.strikethrough:
        params.append(9)
    params += _color(char.fg, _FG, 38)
    params += _color(char.bg, _BG, 48)
    return "\x1b[" + ";".join(map(str, params)) + "m"


def _style(char: Char) -> tuple[object, ...]:
    return tuple(char[1:])


class _Screen(pyte.Screen):
    """pyte's screen, keeping lines that scroll off the top as text."""

    def __init__(self, columns: int, lines: int, scrollback: int) -> None:
        self.history: collections.deque[str] = collections.deque(maxlen=scrollback)
        super().__init__(columns, lines)

    def render_line(self, y: int) -> str:
        line = self.buffer.get(y)
        if not line:
            return ""
        columns = self.columns
        chars = [" "] * min(max(line) + 1, columns)
        for x, char in line.items():  # only the drawn cells: the rest are blanks
            if x < columns:
                chars[x] = char.data
        return "".join(chars).rstrip()

    def select_graphic_rendition(self, *attrs: int, private: bool = False) -> None:
        if not private:  # CSI ? ... m is no colour change (pyte would fail on it)
            super().select_graphic_rendition(*attrs)

    def index(self) -> None:
        top, bottom = self.margins or (0, self.lines - 1)
        whole = top == 0 and bottom == self.lines - 1
        if self.cursor.y == bottom and whole and self.history.maxlen:
            self.history.append(self.render_line(0))
        super().index()


class TerminalScreen:
    """The emulated screen of one session (``cols`` x ``rows``)."""

    def __init__(self, cols: int, rows: int, *, scrollback: int) -> None:
        self._screen = _Screen(cols, rows, scrollback)
        self._stream = pyte.ByteStream(self._screen)

    @property
    def size(self) -> tuple[int, int]:
        return self._screen.columns, self._screen.lines

    def feed(self, data: bytes) -> None:
        try:
            self._stream.feed(data)
        except Exception:
            # A sequence the emulator cannot take: its parser is dead, so start a new one
            # (the screen is kept; what was left of ``data`` is lost to the screen only).
            log.debug("the terminal emulator failed on the output", exc_info=True)
            self._stream = pyte.ByteStream(self._screen)

    def resize(self, cols: int, rows: int) -> None:
        self._screen.resize(rows, cols)

    def lines(self) -> list[str]:
        """One string per row, trailing blanks removed."""
        return [self._screen.render_line(y) for y in range(self._screen.lines)]

    def scrollback(self, count: int) -> list[str]:
        """The last ``count`` lines that scrolled off, oldest first."""
        history = self._screen.history
        if count <= 0:
            return []
        return list(history)[-count:]

    @property
    def scrollback_chars(self) -> int:
        """Characters held in the scrollback (its memory, roughly)."""
        return sum(len(line) for line in self._screen.history)

    @property
    def scrollback_lines(self) -> int:
        return len(self._screen.history)

    @property
    def cursor(self) -> tuple[int, int]:
        cursor = self._screen.cursor
        return cursor.x, cursor.y

    def snapshot(self) -> str:
        """Escape sequences that make a terminal of the same size show this screen: reset,
        clear, every row with its attributes, the scrolling region, the cursor (position,
        visibility, pen) and the cursor-key and autowrap modes."""
        screen = self._screen
        default = screen.default_char
        out = ["\x1b[0m\x1b[r\x1b[H\x1b[2J"]
        for y in range(screen.lines):
            line = screen.buffer[y]
            cells = [line[x] for x in range(screen.columns)]
            while cells and cells[-1] == default:
                cells.pop()
            if not cells:
                continue
            out.append(f"\x1b[{y + 1};1H")
            style = _style(default)
            for char in cells:
                if char.data == "":  # the second cell of a wide character
                    continue
                if _style(char) != style:
                    out.append(sgr(char))
                    style = _style(char)
                out.append(char.data)
            out.append("\x1b[0m")
        if screen.margins is not None:
            top, bottom = screen.margins
            out.append(f"\x1b[{top + 1};{bottom + 1}r")
        mode = screen.mode
        out.append("\x1b[?1h" if _DECCKM in mode else "\x1b[?1l")
        out.append("\x1b[?7h" if modes.DECAWM in mode else "\x1b[?7l")
        cursor = screen.cursor
        out.append(f"\x1b[{cursor.y + 1};{min(cursor.x, screen.columns - 1) + 1}H")
        out.append("\x1b[?25l" if cursor.hidden else "\x1b[?25h")
        out.append(sgr(cursor.attrs))
        return "".join(out)
