"""Terminal sessions: a PTY in a devbox, attached over its WebSocket, drawn on a virtual screen.

A session's id is `{devbox_id}/{name}`, `name` being the PTY session's name in the devbox: the id
alone says where to reattach, so a session survives this process (a client that restarts the
server, a dropped WebSocket): the PTY lives on in the devbox for its idle TTL, and the next call
with the id attaches to the same shell. The resource `terminal://{id}` is the same session.

While attached, two tasks run per session, owned by the registry (a session outlives the tool
call that opened it): the *reader* takes frames off the WebSocket into a bounded backlog, and
the *painter* feeds the backlog to the screen in slices, in at most `PAINT_SHARE` of the time
after a burst. When output comes faster (a flood), or the backlog passes `BACKLOG_LIMIT`, the backlog
keeps its last `BACKLOG_KEEP` bytes and skips the rest at a line boundary (the scrolled-off lines
say how much): memory and CPU stay bounded, the program runs at full speed, and the screen ends
as the program left it.

`exchange` is the one way input goes in: send bytes, then wait until `wait_for` matches text
drawn since the send, or (without `wait_for`) output has been quiet for a while, or the time is up.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import anyio
import anyio.lowlevel

from ..runloop import PtyDisconnected, PtyEndpoint, PtySocket, RunloopClient
from .screen import VirtualScreen

log = logging.getLogger("devbox_mcp.terminal")

SESSION_ID = re.compile(r"^(?P<devbox_id>[\w.:-]{1,200})/(?P<name>[A-Za-z0-9_-]{1,64})$")
BACKLOG_LIMIT = 512 * 1024  # undrawn bytes held before the oldest are skipped
BACKLOG_KEEP = 64 * 1024  # what is kept of them then (more than a full-screen redraw)
PAINT_SLICE = 8 * 1024  # bytes drawn between yields to the event loop
# Drawing is slow (pyte is pure Python: ~30 µs a line): past a burst of PAINT_BURST seconds of
# drawing, the painter takes at most PAINT_SHARE of the time, and a backlog beyond BACKLOG_KEEP is
# skipped meanwhile.
PAINT_SHARE = 0.25
PAINT_BURST = 0.5

Stopped = Literal["matched", "quiet", "timeout", "exited"]

CLOSE_ATTACHED = 4409  # the PTY service's close code: another client is attached
ATTACH_ATTEMPTS = 5
REFUSAL_SECONDS = 0.25


class TerminalError(Exception):
    """A terminal operation failed in a way the caller should read (the message says what to do)."""


def session_id(devbox_id: str, name: str) -> str:
    return f"{devbox_id}/{name}"


def parse_session_id(value: str) -> tuple[str, str]:
    match = SESSION_ID.match(value)
    if match is None:
        raise TerminalError(f"{value!r} is not a terminal session id (devbox_id/name, as open_terminal returns)")
    return match["devbox_id"], match["name"]


@dataclass
class Exchange:
    stopped: Stopped
    seconds: float


async def _refusal(socket: PtySocket) -> PtyDisconnected | None:
    """The server's refusal right after the upgrade (a close frame), if it sends one: waits for the
    first frame, at most `REFUSAL_SECONDS` (a fresh shell's prompt or a replay usually comes first)."""
    return await socket.refused(REFUSAL_SECONDS)


def _refusal_message(sid: str, refused: PtyDisconnected) -> str:
    if refused.code == CLOSE_ATTACHED:
        return f"terminal {sid} is attached by another client (one at a time); close that one or open a new terminal"
    return f"terminal {sid}: {refused}"


class TerminalSession:
    """One PTY session in one devbox, as this process sees it."""

    def __init__(
        self, registry: Terminals, client: RunloopClient, devbox_id: str, name: str, cols: int, rows: int,
        scrollback_bytes: int,
    ) -> None:
        self.registry = registry
        self.client = client
        self.devbox_id = devbox_id
        self.name = name
        self.id = session_id(devbox_id, name)
        self.screen = VirtualScreen(cols, rows, scrollback_bytes=scrollback_bytes)
        self.exited = False  # the shell ended (the server closed the WebSocket normally)
        self.note: str | None = None  # what the next result should tell (a new shell after reattaching)
        self.received = 0  # bytes of output received since this process attached
        self._endpoint: PtyEndpoint | None = None
        self._socket: PtySocket | None = None
        self._backlog = bytearray()
        self._skipped = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._listeners: set[Callable[[str], None]] = set()
        self._wake = anyio.Event()
        self._changed = anyio.Event()
        self._painted = anyio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._paint_budget = PAINT_BURST  # seconds the painter may draw for now (a token bucket)
        self._paint_clock = time.monotonic()
        self._lock = anyio.Lock()
        self.version = 0  # bumped on every drawn slice

    # ---- attaching ------------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self._socket is not None and all(not t.done() for t in self._tasks)

    async def attach(self, *, size: bool) -> bool:
        """Attach to the PTY (creating it if it does not exist); whether a new shell was started.

        A refusal because another client is attached (close code 4409) is retried for a moment:
        a client that just left (this server's previous run) may not be gone yet on the server."""
        self._endpoint = await self.client.pty_endpoint(self.devbox_id)
        cols, rows = (self.screen.cols, self.screen.rows) if size else (None, None)
        for attempt in range(1, ATTACH_ATTEMPTS + 1):
            view, socket = await self.client.pty_attach(self._endpoint, self.name, cols=cols, rows=rows)
            refused = await _refusal(socket)
            if refused is None:
                break
            await socket.aclose()
            if refused.code != CLOSE_ATTACHED or attempt == ATTACH_ATTEMPTS:
                raise TerminalError(_refusal_message(self.id, refused))
            await anyio.sleep(0.1 * 2**attempt)
        self._socket = socket
        if view.cols and view.rows and (view.cols, view.rows) != (self.screen.cols, self.screen.rows):
            self.screen.resize(view.cols, view.rows)
        self.exited = False
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read(self._socket)), loop.create_task(self._paint())]
        return view.created

    async def ensure_attached(self) -> None:
        if self.attached:
            return
        if self.exited:
            raise TerminalError(f"the shell of terminal {self.id} has exited; open a new one with open_terminal")
        await self.detach()
        created = await self.attach(size=False)
        self.note = (
            "reattached to a new shell: the previous one had ended (idle timeout, close or devbox restart)"
            if created else "reattached to the same shell: the screen shows output from now on"
        )

    async def detach(self) -> None:
        """Stop following the PTY (it lives on in the devbox for its idle TTL)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        socket, self._socket = self._socket, None
        if socket is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                try:
                    await socket.aclose()
                except Exception as exc:  # the connection is gone either way
                    log.debug("closing the PTY WebSocket of %s: %r", self.id, exc)
        self._bump()  # whoever waits for a change (a subscription's follower) sees it stopped

    # ---- the two tasks --------------------------------------------------------------------------

    async def _read(self, socket: PtySocket) -> None:
        try:
            while (data := await socket.receive()) is not None:
                self.received += len(data)
                self._backlog += data
                if len(self._backlog) > BACKLOG_LIMIT:
                    self._skip()
                self._wake.set()
            self.exited = True
        except PtyDisconnected as exc:
            log.info("terminal %s: %s", self.id, exc)
        finally:
            self._wake.set()

    def _skip(self) -> None:
        """Drop the oldest undrawn bytes, keeping `BACKLOG_KEEP`, cut after a newline where possible."""
        cut = len(self._backlog) - BACKLOG_KEEP
        newline = self._backlog.find(b"\n", cut, cut + BACKLOG_KEEP // 2)
        cut = newline + 1 if newline != -1 else cut
        del self._backlog[:cut]
        self._skipped += cut
        self._decoder.reset()

    async def _paint(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._backlog:
                now = time.monotonic()
                self._paint_budget = min(PAINT_BURST, self._paint_budget + (now - self._paint_clock) * PAINT_SHARE)
                self._paint_clock = now
                if self._paint_budget <= 0:
                    # A flood: draw only its latest part, in a share of the time; the reader keeps reading.
                    if len(self._backlog) > BACKLOG_KEEP:
                        self._skip()
                    await anyio.sleep(min(-self._paint_budget, 0.2) / PAINT_SHARE + 0.01)
                    continue
                if self._skipped:
                    self.screen.resync(self._skipped)
                    self._skipped = 0
                chunk = bytes(self._backlog[:PAINT_SLICE])
                del self._backlog[:PAINT_SLICE]
                drawing = time.monotonic()
                self.screen.feed(chunk)
                self._paint_budget -= time.monotonic() - drawing
                replies = self.screen.take_replies()
                if replies and self._socket is not None:
                    try:
                        await self._socket.send(replies)
                    except PtyDisconnected:
                        pass  # the reader sees the end too
                text = self._decoder.decode(chunk)
                for listener in list(self._listeners):
                    listener(text)
                self._bump()
                await anyio.lowlevel.checkpoint()  # let the reader and the callers run between slices
            self._painted.set()
            self._painted = anyio.Event()
            if not self.attached:
                self._bump()
                return

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = anyio.Event()

    # ---- waiting --------------------------------------------------------------------------------

    async def changed(self) -> None:
        """Return at the next change of the screen (or when the session stops following the PTY)."""
        await self._changed.wait()

    async def drawn(self, limit: float) -> None:
        """Wait (at most `limit` s) until the output received so far is on the screen."""
        with anyio.move_on_after(limit):
            while self._backlog and self.attached:
                await self._painted.wait()

    async def exchange(
        self,
        data: bytes,
        *,
        wait_for: re.Pattern[str] | None,
        seconds: float,
        quiet: float,
        on_output: Callable[[str], None] | None = None,
        first_output: bool = False,
        resize: tuple[int, int] | None = None,
    ) -> Exchange:
        """Send `data` and wait (see the module docstring). `first_output`: quiet counts only once
        some output came (a shell starting). `resize` (cols, rows) is applied first: what the
        program draws in answer is new."""
        async with self._lock:
            started = time.monotonic()
            await self.ensure_attached()
            await self.drawn(min(seconds, 2.0))
            mark, version = self.screen.mark(), self.version
            if on_output is not None:
                self._listeners.add(on_output)
            try:
                if resize is not None:
                    # The screen first: what the program draws in answer is drawn at the new size.
                    assert self._endpoint is not None
                    old = (self.screen.cols, self.screen.rows)
                    self.screen.resize(*resize)
                    try:
                        await self.client.pty_control(
                            self._endpoint, self.name, "resize", cols=resize[0], rows=resize[1]
                        )
                    except BaseException:
                        self.screen.resize(*old)
                        raise
                if data:
                    assert self._socket is not None
                    await self._socket.send(data)
                stopped = await self._wait(mark, version, wait_for, started + seconds, quiet, first_output)
            except PtyDisconnected as exc:
                raise TerminalError(f"terminal {self.id}: {exc}; the next call reattaches") from None
            finally:
                self._listeners.discard(on_output)  # type: ignore[arg-type]
            return Exchange(stopped, time.monotonic() - started)

    async def _wait(
        self, mark: object, version: int, wait_for: re.Pattern[str] | None, deadline: float, quiet: float,
        first_output: bool,
    ) -> Stopped:
        last_change = time.monotonic()
        while True:
            if wait_for is not None and self.version != version and wait_for.search(self.screen.region_text(mark)):  # type: ignore[arg-type]
                return "matched"
            if not self.attached and not self._backlog:
                return "exited" if self.exited else "timeout"
            now = time.monotonic()
            if now >= deadline:
                return "timeout"
            counting = wait_for is None and not (first_output and self.version == 0)
            if counting and now - last_change >= quiet:
                return "quiet"
            until = min(deadline, last_change + quiet) if counting else deadline
            changed = self._changed
            with anyio.move_on_after(max(until - now, 0)):
                await changed.wait()
            if changed.is_set():
                last_change = time.monotonic()

    async def close(self) -> None:
        """End the PTY session in the devbox (SIGHUP to its foreground process group) and stop following it."""
        async with self._lock:
            endpoint = self._endpoint or await self.client.pty_endpoint(self.devbox_id)
            try:
                await self.client.pty_control(endpoint, self.name, "close")
            finally:
                await self.detach()


class Terminals:
    """The terminal sessions this server follows, by id."""

    def __init__(self, *, scrollback_bytes: int) -> None:
        self.scrollback_bytes = scrollback_bytes
        self._sessions: dict[str, TerminalSession] = {}

    def find(self, sid: str) -> TerminalSession | None:
        return self._sessions.get(sid)

    async def open(self, client: RunloopClient, devbox_id: str, cols: int, rows: int) -> TerminalSession:
        name = "t" + secrets.token_hex(6)
        session = TerminalSession(self, client, devbox_id, name, cols, rows, self.scrollback_bytes)
        await session.attach(size=True)
        self._sessions[session.id] = session
        return session

    async def get(self, client: RunloopClient, sid: str) -> TerminalSession:
        """The session with id `sid`, attached (again) if this process does not follow it now."""
        session = self._sessions.get(sid)
        if session is None or session.client is not client and not session.attached:
            devbox_id, name = parse_session_id(sid)
            old = session
            session = TerminalSession(
                self, client, devbox_id, name,
                old.screen.cols if old else 120, old.screen.rows if old else 40, self.scrollback_bytes,
            )
            self._sessions[sid] = session
        return session

    async def close(self, sid: str, client: RunloopClient) -> None:
        session = await self.get(client, sid)
        try:
            await session.close()
        finally:
            self._sessions.pop(sid, None)

    async def detach_client(self, client: RunloopClient) -> None:
        """Stop following the sessions attached through `client` (it is closing); the PTYs live on."""
        for sid, session in list(self._sessions.items()):
            if session.client is client:
                await session.detach()
                self._sessions.pop(sid, None)

    async def aclose(self) -> None:
        for session in list(self._sessions.values()):
            await session.detach()
        self._sessions.clear()
