"""The virtual terminal a session's output is drawn on, so an agent reads a screen, not escape codes.

`pyte` interprets the byte stream (cursor moves, erases, scroll regions, modes) into a grid of
cells; this module adds what an agent needs on top:

- the lines that scroll off the top are kept, as text, in an `OutputBuffer` (head and tail within
  a byte bound, the middle counted), so a result can show what went past since the last call;
- the alternate screen (modes 47, 1047, 1049), which full-screen programs (vim, less, htop) switch
  to and back from: pyte ignores it, and without it the shell's screen would not come back;
- answers to queries (cursor position, device attributes), which the session sends back as a
  terminal would;
- `region_text`: the text drawn since a mark (the cursor position when input was sent), for
  `wait_for` to match what is new rather than an old prompt still on the screen (a full-screen
  program's whole screen counts as new).

`pyte` interprets about 1 MB/s of output in pure Python. Output that arrives faster is not
all drawn: the session keeps a bounded backlog and skips its middle (see `session.py`), so a
flood costs bounded memory and time, and the screen still ends as the program left it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pyte

from ..shaping import DEFAULT_BUDGET, OutputBuffer

log = logging.getLogger("devbox_mcp.terminal")

# Private modes as pyte stores them (shifted left by 5).
_ALT_SCREEN_MODES = frozenset(m << 5 for m in (47, 1047, 1049))
_APP_CURSOR_KEYS = 1 << 5  # DECCKM


class _Screen(pyte.Screen):
    """A pyte screen that keeps the lines scrolled off the top and has an alternate screen."""

    def __init__(self, columns: int, lines: int, scrollback_bytes: int) -> None:
        super().__init__(columns, lines)
        self.scrolled = OutputBuffer(scrollback_bytes)
        self.scrolled_lines = 0  # lines scrolled off since creation: marks survive scrolling
        self.clears = 0  # whole-screen erases and screen switches since creation
        self._main: tuple[Any, Any] | None = None  # the main screen's buffer and cursor, in the alternate one
        self.replies: list[str] = []  # answers to the program's queries (cursor position, device attributes)

    def write_process_input(self, data: str) -> None:
        self.replies.append(data)

    def index(self) -> None:
        top, bottom = self.margins or pyte.screens.Margins(0, self.lines - 1)
        if self.cursor.y == bottom and top == 0 and self._main is None:
            self.scrolled.add(self.line_text(0) + "\n")
            self.scrolled_lines += 1
        super().index()

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        if how in (2, 3):
            self.clears += 1
        super().erase_in_display(how, *args, **kwargs)

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private") and any(m << 5 in _ALT_SCREEN_MODES for m in modes) and self._main is None:
            self._main = (self.buffer, self.cursor)
            self.buffer = type(self.buffer)(self.buffer.default_factory)
            self.cursor = pyte.screens.Cursor(self.cursor.x, self.cursor.y, self.cursor.attrs)
            self.clears += 1
            self.dirty.update(range(self.lines))
        super().set_mode(*modes, **kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private") and any(m << 5 in _ALT_SCREEN_MODES for m in modes) and self._main is not None:
            self.buffer, self.cursor = self._main
            self._main = None
            self.clears += 1
            self.dirty.update(range(self.lines))
        super().reset_mode(*modes, **kwargs)

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        """As a terminal emulator does: fewer rows scroll off only what the cursor needs (pyte drops
        the top rows whatever the cursor's row, losing what the program just wrote)."""
        lines, columns = lines or self.lines, columns or self.columns
        if (lines, columns) == (self.lines, self.columns):
            return
        excess = max(0, self.cursor.y - (lines - 1)) if lines < self.lines else 0
        if self._main is None:
            for y in range(excess):
                self.scrolled.add(self.line_text(y) + "\n")
            self.scrolled_lines += excess
        kept = {y - excess: self.buffer[y] for y in range(excess, min(self.lines, lines + excess)) if y in self.buffer}
        self.buffer.clear()
        self.buffer.update(kept)
        if columns < self.columns:
            for line in self.buffer.values():
                for x in range(columns, self.columns):
                    line.pop(x, None)
        self.cursor.y -= excess
        self.lines, self.columns = lines, columns
        self.margins = None
        self.ensure_hbounds()
        self.ensure_vbounds()
        self.dirty.update(range(lines))

    def select_graphic_rendition(self, *attrs: int, private: bool = False) -> None:
        # `CSI > 4 ; 2 m` (xterm's modifyOtherKeys, which vim sends) is not a colour: pyte would pass
        # it here with private=True, which the base method does not take.
        if not private:
            super().select_graphic_rendition(*attrs)

    def line_text(self, y: int) -> str:
        # Only the cells written hold a character (the rest are blanks): join those. A wide
        # character's second cell holds "", so the text comes out right.
        line = self.buffer[y]
        if not line:
            return ""
        cells = [" "] * (min(max(line), self.columns - 1) + 1)
        for x, char in line.items():
            if x < self.columns:
                cells[x] = char.data
        return "".join(cells).rstrip()


@dataclass(frozen=True)
class Mark:
    """Where the cursor was when input was sent: what is drawn after it is new."""

    row: int
    col: int
    scrolled_lines: int
    clears: int


class VirtualScreen:
    """A terminal screen of `cols` × `rows` fed with raw bytes."""

    def __init__(self, cols: int, rows: int, *, scrollback_bytes: int = DEFAULT_BUDGET) -> None:
        self._scrollback_bytes = scrollback_bytes
        self._screen = _Screen(cols, rows, scrollback_bytes)
        self._stream = pyte.ByteStream(self._screen)

    @property
    def cols(self) -> int:
        return self._screen.columns

    @property
    def rows(self) -> int:
        return self._screen.lines

    def feed(self, data: bytes) -> None:
        try:
            self._stream.feed(data)
        except Exception as exc:  # a sequence pyte cannot handle must not stop the terminal
            log.debug("terminal screen: %r; parser restarted", exc)
            self._stream = pyte.ByteStream(self._screen)

    def resync(self, skipped: int) -> None:
        """`skipped` bytes of output were not drawn (a flood): say so where they would have scrolled
        past, and restart the parser (it may have been inside an escape sequence)."""
        self._screen.scrolled.add(f"[… {skipped} bytes of output not drawn: they came faster than the screen draws …]\n")
        self._stream = pyte.ByteStream(self._screen)

    def take_replies(self) -> bytes:
        """What the terminal answers to the queries drawn so far (a real terminal sends them as input:
        programs such as prompt_toolkit's REPLs ask for the cursor position and wait)."""
        replies, self._screen.replies = self._screen.replies, []
        return "".join(replies).encode()

    def resize(self, cols: int, rows: int) -> None:
        self._screen.resize(rows, cols)

    @property
    def cursor(self) -> tuple[int, int]:
        """(row, column), 0-based."""
        return self._screen.cursor.y, self._screen.cursor.x

    @property
    def app_cursor_keys(self) -> bool:
        """Whether the program asked for application cursor keys (arrows send ESC O A, not ESC [ A)."""
        return _APP_CURSOR_KEYS in self._screen.mode

    @property
    def alternate(self) -> bool:
        return self._screen._main is not None

    def lines(self) -> list[str]:
        """The rows without trailing blanks, except on the cursor's row up to the cursor (a prompt
        such as `>>> ` keeps its space, so a pattern can match it as it shows)."""
        rows = [self._screen.line_text(y) for y in range(self._screen.lines)]
        y, x = self.cursor
        if 0 <= y < len(rows) and not self._screen.cursor.hidden:
            rows[y] = rows[y].ljust(min(x, self._screen.columns))
        return rows

    def text(self) -> str:
        """The screen as text: each row without trailing blanks, blank rows below the cursor left out."""
        rows = self.lines()
        last = max([self._screen.cursor.y] + [i for i, r in enumerate(rows) if r])
        return "\n".join(rows[: last + 1])

    def mark(self) -> Mark:
        row, col = self.cursor
        return Mark(row, col, self._screen.scrolled_lines, self._screen.clears)

    def region_text(self, mark: Mark) -> str:
        """The screen from `mark` on; the whole screen if it was cleared or switched since, or if a
        full-screen program (on the alternate screen) draws it: such programs redraw anywhere."""
        rows = self.lines()
        if self._screen.clears != mark.clears or self.alternate:
            return "\n".join(rows)
        row = mark.row - (self._screen.scrolled_lines - mark.scrolled_lines)
        if row < 0:
            return "\n".join(rows)
        first = rows[row][mark.col :] if row < len(rows) else ""
        return "\n".join([first, *rows[row + 1 :]])

    def take_scrolled(self) -> OutputBuffer:
        """The lines scrolled off since the last call (bounded), and start collecting anew."""
        taken = self._screen.scrolled
        self._screen.scrolled = OutputBuffer(self._scrollback_bytes)
        return taken
