"""A bounded in-memory event store so handshake-era HTTP clients can resume a dropped stream.

The SDK keys events by *stream id*, which is the JSON-RPC request id: every session starts
counting at 0, so two sessions routinely share stream ids. A naive store would replay one
session's events into another's resumed stream. Each event therefore also records which
session stored it (`session_scope`, filled in by the HTTP layer), and a replay only crosses
events of the session that asks.

Memory is bounded by event count and by bytes: the oldest events go first, and a client whose
`Last-Event-ID` was evicted simply gets no replay (the SDK then answers with an empty stream).
"""

from __future__ import annotations

import contextvars
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import JSONRPCMessage
from pydantic_core import to_json


@dataclass
class SessionScope:
    """Which MCP session an HTTP request belongs to; the id of a new session arrives with its response."""

    session_id: str | None = None


# Set by the HTTP layer for every request; tasks a request spawns (the session's message
# router) inherit it, so events stored from them are attributed to that request's session.
session_scope: contextvars.ContextVar[SessionScope | None] = contextvars.ContextVar("session_scope", default=None)


@dataclass
class _Event:
    stream_id: StreamId
    scope: SessionScope | None
    message: JSONRPCMessage | None
    size: int = field(default=0)


class BoundedEventStore(EventStore):
    def __init__(self, max_events: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: OrderedDict[int, _Event] = OrderedDict()
        self._bytes = 0
        self._ids = itertools.count(1)

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    @property
    def event_count(self) -> int:
        # Deliberately not `__len__`: the SDK tests `if event_store:`, and an empty store must be truthy.
        return len(self._events)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        size = 64 + (len(to_json(message, by_alias=True, exclude_none=True)) if message is not None else 0)
        event_id = next(self._ids)
        self._events[event_id] = _Event(stream_id, session_scope.get(), message, size)
        self._bytes += size
        while self._events and (len(self._events) > self.max_events or self._bytes > self.max_bytes):
            _, evicted = self._events.popitem(last=False)
            self._bytes -= evicted.size
        return str(event_id)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        anchor = self._events.get(after)
        if anchor is None:
            return None
        asker = session_scope.get()
        if not _same_session(anchor.scope, asker):
            return None
        # Snapshot first: sending awaits, and new events may arrive meanwhile (they go live).
        later = [(eid, ev) for eid, ev in self._events.items() if eid > after]
        for eid, ev in later:
            if ev.stream_id == anchor.stream_id and ev.message is not None and _same_session(ev.scope, asker):
                await send_callback(EventMessage(ev.message, str(eid)))
        return anchor.stream_id


def _same_session(stored: SessionScope | None, asker: SessionScope | None) -> bool:
    if stored is None or asker is None:
        return stored is asker
    return stored.session_id is not None and stored.session_id == asker.session_id
