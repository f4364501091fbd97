"""The one output-shaping function every tool uses, so results fit a context window.

Terminal output is written for screens, not for models: colour codes and carriage-return
progress bars cost tokens and say nothing. `clean` removes both. `shape` then keeps the head
and the tail of the output within a byte budget and puts a marker in the middle that says how
many bytes were left out and where they are in the raw stream, so the caller can read them
(with `stream_logs`, or a line range of `read_file`).

Cuts are made on the raw bytes, on line boundaries where possible, so the omitted range is an
exact raw-stream offset range (the offsets `stream_logs` takes), whatever cleaning removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_BUDGET = 16 * 1024

# CSI (colours, cursor moves), OSC (titles, hyperlinks; BEL or ST terminated), and two-byte escapes.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[@-Z\\-_]"
    r"|\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?$"  # an escape cut off at the end of a chunk
)
# Control characters a terminal would not print (keep \t, \n, \r).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")

# The marker is rendered after the cut points are chosen; reserve room for it.
_MARKER_RESERVE = 240


def strip_ansi(text: str) -> str:
    return _CONTROL.sub("", _ANSI.sub("", text))


def collapse_cr(text: str) -> str:
    """Keep what a terminal would finally show of each line: the text after its last carriage return."""
    if "\r" not in text:
        return text
    lines = text.replace("\r\n", "\n").split("\n")
    out = []
    for line in lines:
        if "\r" in line:
            parts = [p for p in line.split("\r") if p]
            line = parts[-1] if parts else ""
        out.append(line)
    return "\n".join(out)


def clean(text: str) -> str:
    return collapse_cr(strip_ansi(text))


@dataclass(frozen=True)
class Shaped:
    text: str
    total_bytes: int  # raw UTF-8 bytes of the input
    omitted_bytes: int  # raw bytes left out (0 when everything fits)
    omitted_start: int | None = None  # raw offset (plus base_offset) of the first omitted byte
    omitted_end: int | None = None  # raw offset (plus base_offset) just past the last omitted byte
    omitted_first_line: int | None = None  # 1-based number of the first omitted line (partial lines count)
    omitted_last_line: int | None = None

    @property
    def truncated(self) -> bool:
        return self.omitted_bytes > 0


def stream_hint(tool_arg: str) -> Callable[[Shaped], str]:
    """A marker hint for command output: the `stream_logs` offset that reads the omitted bytes."""

    def hint(s: Shaped) -> str:
        return f"read them with stream_logs {tool_arg}={s.omitted_start}"

    return hint


def line_hint(s: Shaped) -> str:
    return f"read them with read_file start_line={s.omitted_first_line} end_line={s.omitted_last_line}"


def shape(
    text: str,
    budget: int = DEFAULT_BUDGET,
    *,
    base_offset: int = 0,
    label: str = "output",
    hint: Callable[[Shaped], str] | None = None,
    gap_at: int = 0,
    gap_bytes: int = 0,
    gap_lines: int = 0,
    base_line: int = 1,
) -> Shaped:
    """Clean `text` and keep its head and tail within `budget` UTF-8 bytes, with a marker between.

    `gap_*` describe raw bytes already dropped from `text` at byte position `gap_at` (by an
    `OutputBuffer`): they are counted as omitted, and the cut always covers that position.
    """
    raw = text.encode("utf-8", "surrogateescape")
    cleaned = clean(text)
    if not gap_bytes and len(cleaned.encode("utf-8", "surrogateescape")) <= budget:
        return Shaped(cleaned, len(raw), 0)

    room = max(budget - _MARKER_RESERVE, 64)
    head_budget = room // 2
    tail_budget = room - head_budget
    head_end = _head_cut(raw, head_budget)
    tail_start = max(_tail_cut(raw, tail_budget), head_end)
    if gap_bytes:
        head_end = min(head_end, gap_at)
        tail_start = max(tail_start, gap_at)
    head = clean(raw[:head_end].decode("utf-8", "replace"))
    tail = clean(raw[tail_start:].decode("utf-8", "replace"))
    omitted = tail_start - head_end + gap_bytes
    first_line = raw.count(b"\n", 0, head_end) + base_line
    last_line = raw.count(b"\n", 0, max(tail_start - 1, 0)) + base_line + gap_lines
    shaped = Shaped(
        "",
        len(raw) + gap_bytes,
        omitted,
        base_offset + head_end,
        base_offset + tail_start + gap_bytes,
        first_line,
        last_line,
    )
    how = f"; {hint(shaped)}" if hint else ""
    marker = (
        f"[… {omitted} bytes of {label} omitted (bytes {shaped.omitted_start}-{shaped.omitted_end}, "
        f"lines {first_line}-{last_line}){how} …]"
    )
    sep_head = "" if not head or head.endswith("\n") else "\n"
    sep_tail = "" if not tail or tail.startswith("\n") else "\n"
    body = f"{head}{sep_head}{marker}{sep_tail}{tail}"
    return Shaped(body, shaped.total_bytes, omitted, shaped.omitted_start, shaped.omitted_end, first_line, last_line)


def utf8_boundary(raw: bytes, pos: int) -> int:
    """Move `pos` back to the start of a UTF-8 character."""
    while 0 < pos < len(raw) and (raw[pos] & 0xC0) == 0x80:
        pos -= 1
    return pos


def _head_cut(raw: bytes, budget: int) -> int:
    """End of the head: after the last newline within budget, else a character boundary."""
    limit = min(budget, len(raw))
    newline = raw.rfind(b"\n", 0, limit)
    if newline >= limit // 2:
        return newline + 1
    return utf8_boundary(raw, limit)


def _tail_cut(raw: bytes, budget: int) -> int:
    """Start of the tail: after a newline so the tail begins on a line, else a character boundary."""
    start = max(len(raw) - budget, 0)
    newline = raw.find(b"\n", start, len(raw) - 1)
    if newline != -1 and newline - start <= budget // 2:
        return newline + 1
    return utf8_boundary(raw, start)


def truncate_utf8(text: str, limit: int, *, keep: str = "tail") -> str:
    """At most `limit` UTF-8 bytes of `text`, keeping its head or tail, never splitting a character."""
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return text
    if keep == "head":
        return raw[:limit].decode("utf-8", "ignore")
    return raw[len(raw) - limit :].decode("utf-8", "ignore")


class OutputBuffer:
    """What a result can show of a stream that may be huge, in bounded memory.

    Keeps the first `keep` bytes and the last `keep` bytes (dropping the middle as it grows) and
    counts what it dropped, so `shaped()` reports exact offsets. `keep` should be at least the
    shaping budget; then the result is the same as shaping the whole stream.
    """

    def __init__(self, keep: int = DEFAULT_BUDGET) -> None:
        self.keep = keep
        self._head = bytearray()
        self._tail = bytearray()
        self.dropped = 0
        self.dropped_lines = 0
        self.total = 0

    def add(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        self.total += len(data)
        room = self.keep - len(self._head)
        if room > 0 and not self.dropped and not self._tail:
            take = utf8_boundary(data, room) if room < len(data) else len(data)
            self._head += data[:take]
            data = data[take:]
        if not data:
            return
        self._tail += data
        excess = len(self._tail) - self.keep
        if excess > 0:
            cut = excess
            while cut < len(self._tail) and (self._tail[cut] & 0xC0) == 0x80:
                cut += 1
            self.dropped_lines += self._tail.count(b"\n", 0, cut)
            self.dropped += cut
            del self._tail[:cut]

    def text(self) -> str:
        """Everything kept (the whole stream when nothing was dropped)."""
        return (bytes(self._head) + bytes(self._tail)).decode("utf-8", "replace")

    def shaped(self, budget: int, *, base_offset: int = 0, label: str = "output",
               hint: Callable[[Shaped], str] | None = None) -> Shaped:
        return shape(
            self.text(), budget, base_offset=base_offset, label=label, hint=hint,
            gap_at=len(self._head), gap_bytes=self.dropped, gap_lines=self.dropped_lines,
        )
