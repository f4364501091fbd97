"""Reading the resources: an axon's history and events, a devbox's view, an execution's output.

Everything goes through the Runloop client. Client errors become the protocol's resource
errors: an unknown or malformed id is resource-not-found (-32602, with a hint to list what
exists); anything else (API down, ...) is a resource error carrying the client's one-line
message, which never holds the API key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from ..runloop import AxonEventView, InvalidArgument, NotFound, RunloopClient, RunloopError
from ..shaping import OutputBuffer, Shaped, utf8_boundary
from .uris import STREAMS, Stream, axon_event_uri, axon_events_uri, output_uri

DEFAULT_EVENTS = 100
MAX_EVENTS = 1000
# A history page stops adding events past this many bytes of JSON (always at least one event),
# so a page of big payloads cannot flood whoever reads it; next_page continues from the cut.
HISTORY_PAGE_BYTES = 256 * 1024
# A read of a running execution's output returns once no new output came for this long, and
# at the latest after RUNNING_READ_SECONDS (a command that prints without pause never goes quiet).
SETTLE_SECONDS = 0.25
RUNNING_READ_SECONDS = 2.0


@contextmanager
def resource_errors(what: str, hint: str) -> Iterator[None]:
    """Client errors as resource errors: 404 and bad ids → not found, others → error. One hint:
    the API's message when it sent one (it names what is missing and what to do), else `hint`."""
    try:
        yield
    except NotFound as exc:
        raise ResourceNotFoundError(exc.message or f"{what} not found; {hint}") from None
    except InvalidArgument:
        raise ResourceNotFoundError(f"{what} not found; {hint}") from None
    except RunloopError as exc:
        raise ResourceError(f"reading {what} failed: {exc}") from None


def parse_int(name: str, raw: str | None, *, lo: int, hi: int, default: int | None = None) -> int | None:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MCPError(INVALID_PARAMS, f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise MCPError(INVALID_PARAMS, f"{name} must be between {lo} and {hi}, got {value}")
    return value


def event_json(event: AxonEventView) -> dict[str, Any]:
    """One event with its payload decoded when it is JSON (`payload_format: text` when it is not)."""
    out: dict[str, Any] = {
        "sequence": event.sequence,
        "timestamp_ms": event.timestamp_ms,
        "origin": event.origin,
        "source": event.source,
        "event_type": event.event_type,
    }
    if event.payload is None:
        out["payload"] = None
        return out
    try:
        out["payload"] = json.loads(event.payload)
    except ValueError:
        out["payload"] = event.payload
        out["payload_format"] = "text"
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def read_history(
    client: RunloopClient,
    axon_id: str,
    after_sequence: str | None,
    before_sequence: str | None,
    limit: str | None,
) -> str:
    """A page of history: newest first (optionally below `before_sequence`), or, with
    `after_sequence`, the events after it oldest first (the way to catch up after an update)."""
    top = 2**62
    after = parse_int("after_sequence", after_sequence, lo=0, hi=top)
    before = parse_int("before_sequence", before_sequence, lo=1, hi=top)
    count = parse_int("limit", limit, lo=1, hi=MAX_EVENTS, default=DEFAULT_EVENTS)
    assert count is not None
    if after is not None and before is not None:
        raise MCPError(INVALID_PARAMS, "give after_sequence (newer events) or before_sequence (older), not both")
    with resource_errors(f"axon {axon_id!r}", "list resources (resources/list) to see the axons"):
        if after is None:
            page = await client.list_events(axon_id, limit=count, starting_after=before)
            events = page.events
            last = events[-1].sequence if events else None
            has_more = bool(page.has_more and last is not None and last > 1)
            next_page = axon_events_uri(axon_id, before_sequence=last, limit=count) if has_more else None
            order = "newest_first"
            note = "older events: read next_page" if has_more else "this is the oldest page"
        else:
            # The page of events in (after, after + count], asked for newest first and reversed.
            page = await client.list_events(axon_id, limit=count, starting_after=after + count + 1)
            events = [e for e in reversed(page.events) if e.sequence > after]
            newest = page.total_count if page.total_count is not None else (page.events[0].sequence if page.events else 0)
            if events:
                last = events[-1].sequence
            else:  # nothing in (after, after + count]: a gap in sequences, or up to date
                last = min(after + count, newest) if newest > after else after
            has_more = newest > last
            next_page = axon_events_uri(axon_id, after_sequence=last, limit=count)
            order = "oldest_first"
            note = (
                "newer events: read next_page" if has_more
                else f"up to date; subscribe to {axon_events_uri(axon_id)} to be told of new events, then read next_page"
            )
    rendered = _fit([event_json(e) for e in events], HISTORY_PAGE_BYTES)
    if len(rendered) < len(events):
        last = rendered[-1]["sequence"]
        has_more = True
        next_page = (
            axon_events_uri(axon_id, before_sequence=last, limit=count) if after is None
            else axon_events_uri(axon_id, after_sequence=last, limit=count)
        )
        note = f"page cut at {HISTORY_PAGE_BYTES} bytes after {len(rendered)} events; the rest: read next_page"
    newest_sequence = page.total_count if page.total_count is not None else None
    return _dumps({
        "axon_id": axon_id,
        "order": order,
        "events": rendered,
        "newest_sequence": newest_sequence,
        "has_more": has_more,
        "next_page": next_page,
        "note": note,
    })


def _fit(events: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The longest prefix of `events` whose JSON fits in `budget` bytes (at least one event)."""
    used = 0
    for i, event in enumerate(events):
        used += len(_dumps(event).encode())
        if used > budget and i > 0:
            return events[:i]
    return events


async def read_event(client: RunloopClient, axon_id: str, sequence: str) -> str:
    seq = parse_int("sequence", sequence, lo=1, hi=2**62)
    assert seq is not None
    with resource_errors(f"axon {axon_id!r}", "list resources (resources/list) to see the axons"):
        page = await client.list_events(axon_id, limit=1, starting_after=seq + 1)
    if not page.events or page.events[0].sequence != seq:
        newest = page.total_count
        raise ResourceNotFoundError(
            f"axon {axon_id!r} has no event {seq}"
            + (f"; its newest is {newest}" if newest else "; it has no events yet")
            + f" (read {axon_events_uri(axon_id)})"
        )
    return _dumps({"axon_id": axon_id, **event_json(page.events[0]), "uri": axon_event_uri(axon_id, seq)})


async def read_devbox(client: RunloopClient, devbox_id: str) -> str:
    with resource_errors(f"devbox {devbox_id!r}", "list resources (resources/list) to see the running devboxes"):
        view = await client.get_devbox(devbox_id)
    return _dumps(view.model_dump(mode="json", exclude_none=True))


async def read_output(
    client: RunloopClient,
    devbox_id: str,
    execution_id: str,
    stream: str,
    offset: str | None,
    limit: str | None,
    *,
    budget: int,
    settle: float = SETTLE_SECONDS,
) -> str:
    """Output bytes [offset, offset + limit) of one stream (to the end without `limit`), shaped
    as the tools shape output: cleaned, head and tail within `budget` with a marker that says
    where the omitted bytes are. Reading stops early, with a trailer saying where to continue,
    when `limit` bytes were read; for a running execution, it returns what exists so far."""
    if stream not in STREAMS:
        raise ResourceNotFoundError(f"no output stream {stream!r}; use stdout or stderr")
    start = parse_int("offset", offset, lo=0, hi=2**62, default=0)
    cap = parse_int("limit", limit, lo=1, hi=2**62)
    assert start is not None
    what = f"execution {execution_id!r} of devbox {devbox_id!r}"
    with resource_errors(what, f"check the ids (complete devbox://{devbox_id}/executions/...)"):
        view = await client.get_execution(devbox_id, execution_id, last_n=0)
        buffer, end, ended = await _collect(
            client, devbox_id, execution_id, stream, start, cap, max(budget, 1024), settle, view.completed
        )

    def hint(s: Shaped) -> str:
        return f"read them at {output_uri(devbox_id, execution_id, stream, offset=s.omitted_start, limit=s.omitted_bytes)}"  # type: ignore[arg-type]

    text = buffer.shaped(budget, base_offset=start, label=stream, hint=hint).text
    if cap is not None and not ended and end - start >= cap:
        text += f"\n[… more output from byte {end}: read {output_uri(devbox_id, execution_id, stream, offset=end, limit=cap)} …]"  # type: ignore[arg-type]
    return text


async def _collect(
    client: RunloopClient,
    devbox_id: str,
    execution_id: str,
    stream: Stream,
    start: int,
    cap: int | None,
    keep: int,
    settle: float,
    completed: bool,
) -> tuple[OutputBuffer, int, bool]:
    """Read the stream into a bounded buffer: to its end, to `cap` bytes, or (running) until quiet."""
    buffer = OutputBuffer(keep)
    position = start
    ended = False
    chunks = client.stream_output(devbox_id, execution_id, stream, offset=start)
    deadline = anyio.current_time() + RUNNING_READ_SECONDS
    try:
        while cap is None or position - start < cap:
            if not completed and anyio.current_time() >= deadline:
                break
            with anyio.move_on_after(None if completed else settle) as quiet:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    ended = True
            if quiet.cancelled_caught or ended:
                break
            text = chunk.text
            if cap is not None and chunk.offset - start > cap:
                raw = text.encode("utf-8", "surrogateescape")
                keep_bytes = utf8_boundary(raw, cap - (position - start))
                text = raw[:keep_bytes].decode("utf-8", "surrogateescape")
                position += keep_bytes
            else:
                position = chunk.offset
            buffer.add(text)
        if completed and not ended and cap is not None:
            # `limit` bytes read from finished output: is that the end? (it arrives at once)
            try:
                await anext(chunks)
            except StopAsyncIteration:
                ended = True
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    return buffer, position, ended
