"""Named keys, as the bytes a terminal sends for them.

Arrow keys depend on the program: one that asks for application cursor keys (DECCKM: vim,
less, readline in some modes) gets `ESC O A`, others `ESC [ A`, as a real terminal does.
"""

from __future__ import annotations

from typing import Literal, get_args

Key = Literal[
    "Enter", "Tab", "Escape", "Up", "Down", "Left", "Right", "Backspace", "Ctrl-C", "Ctrl-D", "Ctrl-Z",
    "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "F9", "F10", "F11", "F12", "PageUp", "PageDown",
]  # fmt: skip
KEYS: tuple[str, ...] = get_args(Key)

_PLAIN: dict[str, bytes] = {
    "Enter": b"\r",
    "Tab": b"\t",
    "Escape": b"\x1b",
    "Backspace": b"\x7f",
    "Ctrl-C": b"\x03",
    "Ctrl-D": b"\x04",
    "Ctrl-Z": b"\x1a",
    "F1": b"\x1bOP",
    "F2": b"\x1bOQ",
    "F3": b"\x1bOR",
    "F4": b"\x1bOS",
    "F5": b"\x1b[15~",
    "F6": b"\x1b[17~",
    "F7": b"\x1b[18~",
    "F8": b"\x1b[19~",
    "F9": b"\x1b[20~",
    "F10": b"\x1b[21~",
    "F11": b"\x1b[23~",
    "F12": b"\x1b[24~",
    "PageUp": b"\x1b[5~",
    "PageDown": b"\x1b[6~",
}
_ARROWS = {"Up": b"A", "Down": b"B", "Right": b"C", "Left": b"D"}


def key_bytes(key: str, *, app_cursor_keys: bool = False) -> bytes:
    """The bytes of one named key (case as listed; `ctrl-c` and `C-c` are also understood);
    `ValueError` naming the known keys for another name."""
    key = _normal(key)
    if key in _ARROWS:
        return (b"\x1bO" if app_cursor_keys else b"\x1b[") + _ARROWS[key]
    try:
        return _PLAIN[key]
    except KeyError:
        raise ValueError(f"unknown key {key[:40]!r}; known keys: {', '.join(KEYS)}") from None


_BY_FOLDED = {k.lower(): k for k in KEYS}


def _normal(key: str) -> str:
    folded = key.strip().lower().replace("_", "-").replace(" ", "")
    if folded.startswith("c-"):
        folded = "ctrl-" + folded[2:]
    return _BY_FOLDED.get(folded, key)
