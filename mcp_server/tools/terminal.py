"""Terminals: `open_terminal`, `terminal_send`, `terminal_read`, `close_terminal`.

An agent uses a terminal program as a person does: it sends text and named keys, and reads the
rendered screen (a virtual terminal; see `terminal/`), not the escape codes. Sessions live in the
devbox (a PTY) and are followed by this server (`terminal/sessions.py`); the session id is also
the resource `terminal://{id}`.

A result is the screen (rows without trailing blanks), the cursor, and the lines that scrolled off
the top since the previous call, together within the output budget: the screen is kept whole
when it fits (it is bounded by cols × rows), the scrolled lines are shaped into what is left, by
the one shaping function. While `terminal_send` waits, the new output goes out as progress, as
`execute`'s does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from ..budgets import wait_seconds as wait_budget
from ..progress import output_progress
from ..runloop import RunloopError
from ..shaping import shape
from ..terminal.keys import key_bytes
from ..terminal.sessions import Exchange, TerminalError, TerminalSession
from .common import DevboxId, annotations, api_errors, result, state

DEFAULT_SEND_SECONDS = 10.0
OPEN_SECONDS = 10.0  # for the shell's first prompt
MIN_SCROLLED_BUDGET = 512

MAX_TEXT = 100_000
MAX_KEYS = 200
MAX_PATTERN = 1000
MAX_COLS, MAX_ROWS = 400, 200


# What a terminal shows. `status` says why terminal_send returned (matched, quiet, timeout, exited;
# "screen" for a read), then anything else to know (a reattach). No docstring: it would be published.
class Screen(BaseModel):
    session: str
    screen: str
    cursor: list[int]  # row, col (0-based)
    scrolled: str  # the lines scrolled off the top since the last call
    status: str


class Closed(BaseModel):
    session: str
    closed: bool


# Bounds are checked in the code, with messages naming the argument: in the schema they would cost
# every conversation bytes for what the model never needs to read.


async def open_terminal(
    ctx: Context,
    devbox_id: DevboxId,
    command: Annotated[str | None, Field(description="run in the shell at once")] = None,
    cols: int = 120,
    rows: int = 40,
) -> Annotated[CallToolResult, Screen]:
    """Open a terminal (interactive bash) in a devbox: returns a session id and the screen."""
    app = state(ctx)
    _check_size(cols, rows)
    _check_length("command", command, MAX_TEXT)
    with _errors():
        session = await app.terminals.open(app.client, devbox_id, cols, rows)
    data = (command + "\r").encode() if command else b""
    return await _interact(ctx, session, data, None, min(OPEN_SECONDS, wait_budget(ctx, app.settings, None)), True)


async def terminal_send(
    ctx: Context,
    session: str,
    text: str | None = None,
    keys: Annotated[
        list[str] | None, Field(description="Enter Tab Escape Up Down Left Right Backspace Ctrl-C/D/Z F1-F12 PageUp PageDown")
    ] = None,
    wait_for: Annotated[str | None, Field(description="regex on new screen text")] = None,
    timeout: float | None = None,  # noqa: ASYNC109 (the name agents know)
    resize: Annotated[str | None, Field(description="COLSxROWS, first")] = None,
) -> Annotated[CallToolResult, Screen]:
    """Type text then keys into a terminal; returns the screen when wait_for matches, output is
    quiet, or at timeout (10 s)."""
    app = state(ctx)
    _check_length("text", text, MAX_TEXT)
    if keys is not None and len(keys) > MAX_KEYS:
        raise ToolError(f"keys: {len(keys)} keys; at most {MAX_KEYS} per call")
    pattern = None
    if wait_for is not None:
        _check_length("wait_for", wait_for, MAX_PATTERN)
        try:
            pattern = re.compile(wait_for, re.MULTILINE)
        except re.error as exc:
            raise ToolError(f"wait_for is not a valid regular expression: {exc}") from None
    if timeout is not None and not 0 <= timeout <= app.settings.max_wait_seconds:
        raise ToolError(f"timeout must be 0-{app.settings.max_wait_seconds:g} seconds, got {timeout:g}")
    size = _size(resize)
    with _errors():
        term = await app.terminals.get(app.client, session)
        await term.ensure_attached()
    try:
        app_keys = term.screen.app_cursor_keys
        data = (text or "").encode() + b"".join(key_bytes(k, app_cursor_keys=app_keys) for k in keys or ())
    except ValueError as exc:
        raise ToolError(f"keys: {exc}") from None
    seconds = wait_budget(ctx, app.settings, DEFAULT_SEND_SECONDS if timeout is None else timeout)
    return await _interact(ctx, term, data, pattern, seconds, False, size)


async def terminal_read(ctx: Context, session: str) -> Annotated[CallToolResult, Screen]:
    """The terminal's screen now."""
    app = state(ctx)
    with _errors():
        term = await app.terminals.get(app.client, session)
        await term.ensure_attached()
        await term.drawn(1.0)
    return _result(app.settings.output_budget, term, None)


async def close_terminal(ctx: Context, session: str) -> Closed:
    """End a terminal session (SIGHUP to its programs)."""
    app = state(ctx)
    with _errors():
        await app.terminals.close(session, app.client)
    return Closed(session=session, closed=True)


def register(server: MCPServer) -> None:
    # What runs in a terminal can do anything, as with execute.
    server.add_tool(open_terminal, annotations=annotations(destructive=True, open_world=True))
    server.add_tool(terminal_send, annotations=annotations(destructive=True, open_world=True))
    server.add_tool(terminal_read, annotations=annotations(read_only=True, idempotent=True))
    server.add_tool(close_terminal, annotations=annotations(destructive=True, idempotent=True))


def _check_length(name: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise ToolError(f"{name} is {len(value)} characters; at most {limit} per call")


def _check_size(cols: int, rows: int) -> None:
    if not (1 <= cols <= MAX_COLS and 1 <= rows <= MAX_ROWS):
        raise ToolError(f"the size {cols}x{rows} is out of range: cols 1-{MAX_COLS}, rows 1-{MAX_ROWS}")


def _size(resize: str | None) -> tuple[int, int] | None:
    if resize is None:
        return None
    match = re.fullmatch(r"(\d{1,4})x(\d{1,4})", resize.strip())
    if match is None:
        raise ToolError(f"resize {resize[:40]!r} is not COLSxROWS (for example 100x30)")
    cols, rows = int(match[1]), int(match[2])
    _check_size(cols, rows)
    return cols, rows


@contextmanager
def _errors() -> Iterator[None]:
    """Client and terminal errors as tool errors (one line each, no traceback)."""
    try:
        with api_errors():
            yield
    except TerminalError as exc:
        raise ToolError(str(exc)) from None


async def _interact(
    ctx: Context, term: TerminalSession, data: bytes, pattern: re.Pattern[str] | None, seconds: float, opening: bool,
    resize: tuple[int, int] | None = None,
) -> CallToolResult:
    app = state(ctx)

    async def report(progress: float, message: str) -> None:
        await ctx.report_progress(progress, None, message)

    failed: Exception | None = None
    async with output_progress(
        report, interval=app.settings.progress_interval, max_bytes=app.settings.progress_message_bytes
    ) as progress:
        try:
            exchange = await term.exchange(
                data, wait_for=pattern, seconds=seconds, quiet=app.settings.terminal_quiet_seconds,
                on_output=progress.feed, first_output=opening, resize=resize,
            )
        except (TerminalError, RunloopError) as exc:
            failed = exc  # raised outside the progress task group, as itself
    if failed is not None:
        with _errors():
            raise failed
    return _result(app.settings.output_budget, term, exchange)


def _result(budget: int, term: TerminalSession, exchange: Exchange | None) -> CallToolResult:
    screen = shape(term.screen.text(), budget // 2, label="screen")
    scrolled = term.screen.take_scrolled().shaped(
        max(budget - len(screen.text.encode()), MIN_SCROLLED_BUDGET), label="scrolled-off output"
    )
    row, col = term.screen.cursor
    notes = [exchange.stopped if exchange else "screen"]
    if term.note:
        notes.append(term.note)
        term.note = None
    if term.exited:
        notes.append("the shell exited: open_terminal starts a new one")
    status = "; ".join(notes)
    body = Screen(session=term.id, screen=screen.text, cursor=[row, col], scrolled=scrolled.text, status=status)
    head = f"terminal {term.id} · {term.screen.cols}x{term.screen.rows} · cursor {row},{col}"
    if exchange is not None:
        head += f" · {exchange.stopped} after {exchange.seconds:.2f} s"
    parts = [head, *notes[1:]]
    if scrolled.text:
        parts.append(f"--- scrolled off ---\n{scrolled.text.rstrip(chr(10))}")
    parts.append(f"--- screen ---\n{screen.text}")
    return result(body, "\n".join(parts) + "\n")
