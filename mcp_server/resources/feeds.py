"""Following upstream feeds for subscriptions: an axon's SSE stream, a devbox's status (long-polls),
an execution's output stream.

Each `follow_*` runs one upstream stream (the client resumes it across drops: after the last
sequence seen, or at the byte count received) and calls `changed()` on every change. They are
run by the subscription hub, one per feed, and cancelled when the last subscriber leaves,
which closes the upstream connection. `KINDS` is the one place that says, per kind of feed, how
to follow it and how to check that its resource exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import anyio

from ..runloop import RunloopClient
from ..runloop.models import DEVBOX_TERMINAL_STATUSES
from ..terminal.sessions import Terminals
from .uris import AxonFeed, DevboxFeed, OutputFeed, TerminalFeed

Changed = Callable[[], Awaitable[None]]
Ready = Callable[[], None]
Lease = Callable[[], AbstractAsyncContextManager[RunloopClient]]


async def follow_axon(client: RunloopClient, feed: AxonFeed, changed: Changed, ready: Ready) -> None:
    """New events of the axon, forever. Starts after the newest event: history is not replayed."""
    page = await client.list_events(feed.axon_id, limit=1)
    newest = page.events[0].sequence if page.events else 0
    ready()  # anything published from now on has a sequence above `newest`
    events = client.subscribe_axon(feed.axon_id, after_sequence=newest)
    try:
        async for _event in events:
            await changed()
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def follow_devbox(client: RunloopClient, feed: DevboxFeed, changed: Changed, ready: Ready) -> None:
    """Each status change of the devbox, until it is shut down or failed (it changes no more)."""
    views = client.watch_devbox(feed.devbox_id, DEVBOX_TERMINAL_STATUSES, timeout_seconds=float("inf"))
    try:
        first = True
        async for _view in views:
            if first:
                ready()  # each wait is for "any status but this one": no change after it is missed
                first = False
            else:
                await changed()
    finally:
        await views.aclose()  # type: ignore[attr-defined]


async def follow_output(client: RunloopClient, feed: OutputFeed, changed: Changed, ready: Ready) -> None:
    """Growth of one output stream until the execution completes (the stream ends); the hub then
    sends the last update. Output already there when following starts counts as one change."""
    ready()  # the stream is read from byte 0: nothing can be missed
    chunks = client.stream_output(feed.devbox_id, feed.execution_id, feed.stream, offset=0)
    try:
        async for _chunk in chunks:
            await changed()
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def check_axon(client: RunloopClient, feed: AxonFeed) -> None:
    await client.get_axon(feed.axon_id)


async def check_devbox(client: RunloopClient, feed: DevboxFeed) -> None:
    await client.get_devbox(feed.devbox_id)


async def check_output(client: RunloopClient, feed: OutputFeed) -> None:
    await client.get_execution(feed.devbox_id, feed.execution_id, last_n=0)


@dataclass(frozen=True)
class FeedKind:
    """How to follow one kind of feed, and how to check that its resource exists (the client
    raises `NotFound` when it does not)."""

    follow: Callable[[RunloopClient, Any, Changed, Ready], Awaitable[None]]
    check: Callable[[RunloopClient, Any], Awaitable[None]]


KINDS: dict[type, FeedKind] = {
    AxonFeed: FeedKind(follow_axon, check_axon),
    DevboxFeed: FeedKind(follow_devbox, check_devbox),
    OutputFeed: FeedKind(follow_output, check_output),
}


# At most this many screen-change notifications a second per terminal: a screen redrawn a thousand
# times a second is read by a client a few times.
TERMINAL_UPDATES_PER_SECOND = 10


async def follow_terminal(terminals: Terminals, feed: TerminalFeed, changed: Changed, ready: Ready) -> None:
    """Each change of a terminal's screen (at most `TERMINAL_UPDATES_PER_SECOND`), while this server
    follows the session; the hub sends one last update when it stops (closed, or its shell exited)."""
    ready()
    while (session := terminals.find(feed.session_id)) is not None and session.attached:
        await session.changed()
        await changed()
        await anyio.sleep(1 / TERMINAL_UPDATES_PER_SECOND)


def make_follow(lease: Lease, terminals: Terminals) -> Callable[[object, Changed, Ready], Awaitable[None]]:
    """The hub's `follow`: the feed's kind's, holding a client for as long as it runs (terminals are
    followed in this process, without one)."""

    async def follow(feed: object, changed: Changed, ready: Ready) -> None:
        if isinstance(feed, TerminalFeed):
            await follow_terminal(terminals, feed, changed, ready)
            return
        async with lease() as client:
            await KINDS[type(feed)].follow(client, feed, changed, ready)

    return follow
