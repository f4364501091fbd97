"""Turning a command's output into progress notifications a client can show live.

Output can arrive as thousands of small chunks a second; a notification per chunk would flood
the client. `OutputProgress` coalesces: the first chunk after a quiet interval goes out at once
(low latency for the common line-every-so-often case), later ones wait for the next slot, so at
most one notification per `interval`. Each message is the new output since the previous one,
cleaned like results are and cut to its last `max_bytes`; `progress` is the count of output
bytes seen so far, which only grows, as the protocol requires.

Sending happens on a task of its own so a slow client never stalls reading the streams.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from .shaping import clean, truncate_utf8

Report = Callable[[float, str], Awaitable[None]]

_CUT_MARK = "…"


class OutputProgress:
    def __init__(self, report: Report, *, interval: float = 0.1, max_bytes: int = 1024, start_bytes: int = 0):
        self._report = report
        self._interval = interval
        self._max_bytes = max_bytes
        self._pending: list[str] = []
        self._bytes = start_bytes
        self._last_sent = -math.inf
        self._wake = anyio.Event()
        self._closed = anyio.Event()
        self._closing = False

    def feed(self, text: str) -> None:
        if not text:
            return
        self._bytes += len(text.encode("utf-8", "surrogateescape"))
        self._pending.append(text)
        self._wake.set()

    async def flush(self) -> None:
        """Send whatever is pending now (used at the end, so the last output is not held back)."""
        if not self._pending:
            return
        message = clean("".join(self._pending))
        self._pending.clear()
        if len(message.encode()) > self._max_bytes:
            message = _CUT_MARK + truncate_utf8(message, self._max_bytes - len(_CUT_MARK.encode()))
        self._last_sent = anyio.current_time()
        if message:
            await self._report(float(self._bytes), message)

    async def _run(self) -> None:
        while not (self._closing and not self._pending):
            await self._wake.wait()
            self._wake = anyio.Event()
            delay = self._last_sent + self._interval - anyio.current_time()
            if delay > 0 and not self._closing:
                with anyio.move_on_after(delay):
                    await self._closed.wait()
            await self.flush()

    def close(self) -> None:
        """Flush what is pending without waiting for the next slot, then stop the sender."""
        self._closing = True
        self._closed.set()
        self._wake.set()


@asynccontextmanager
async def output_progress(
    report: Report, *, interval: float = 0.1, max_bytes: int = 1024, start_bytes: int = 0
) -> AsyncIterator[OutputProgress]:
    """An `OutputProgress` whose sender runs for the duration of the block; its end flushes the rest."""
    progress = OutputProgress(report, interval=interval, max_bytes=max_bytes, start_bytes=start_bytes)
    async with anyio.create_task_group() as tg:
        tg.start_soon(progress._run)
        try:
            yield progress
        finally:
            progress.close()
