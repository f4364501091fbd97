"""Axon tools: create/list axons, publish events, and query their history with SQL.

`sql_query` is read-only unless `allow_writes` is set: a statement that could write is refused
before it is sent (see `sql_guard`). Rows come back bounded in count and size: in the structured
content as arrays of values in column order (column names once, not per row), in the text as
one JSON object per line.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import BaseModel, Field, JsonValue

from ..runloop import AxonView, SqlResult
from ..shaping import truncate_utf8
from .common import AxonId, Labels, annotations, api_errors, as_map, at_most, page_text, result, state
from .sql_guard import SqlRefused, check_read_only

SqlParam = str | int | float | bool | None


class AxonInfo(BaseModel):
    id: str
    name: str | None = None
    created_at_ms: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    deleted: bool = False


class AxonList(BaseModel):
    axons: list[AxonInfo]
    has_more: bool  # call again with starting_after = last id


class Published(BaseModel):
    axon_id: str
    sequence: int
    timestamp_ms: int | None = None


class Column(BaseModel):
    name: str
    type: str | None = None


Row = list[JsonValue]


class QueryResult(BaseModel):
    axon_id: str
    columns: list[Column]
    rows: list[Row]  # values in column order (bounded: see note)
    row_count: int  # rows the statement returned
    rows_cut: bool
    changes: int | None = None
    note: str | None = None


class Statement(BaseModel):
    sql: Annotated[str, Field(min_length=1), at_most(100_000)]
    params: Annotated[list[SqlParam], at_most(1000)] = Field(default_factory=list)


class BatchItem(BaseModel):
    columns: list[str] = Field(default_factory=list)
    rows: list[Row] = Field(default_factory=list)  # values in column order (bounded: see note)
    row_count: int = 0
    rows_cut: bool = False
    changes: int | None = None
    note: str | None = None


class BatchResult(BaseModel):
    axon_id: str
    results: list[BatchItem]


def axon_info(view: AxonView) -> AxonInfo:
    return AxonInfo(
        id=view.id, name=view.name, created_at_ms=view.created_at_ms, metadata=view.metadata,
        deleted=view.deleted_at_ms is not None,
    )


def bounded_rows(res: SqlResult, max_rows: int, budget: int) -> tuple[list[Row], str | None]:
    """Rows (value arrays in column order), cut to `max_rows` and to `budget` bytes of JSON, with a
    note when cut. The budget counts each row as the text shows it (a JSON object).

    A row too big for the budget on its own (a large payload) has its long text values cut,
    so even a one-row result stays within the budget."""
    names = [c.name for c in res.columns]
    out: list[Row] = []
    used = 0
    clipped = False
    for row in res.rows[:max_rows]:
        size = _json_size(names, row)
        if size > budget:
            row, size = _clip_row(row, budget), budget
            clipped = True
        if used + size > budget and out:
            break
        out.append(row)
        used += size
    notes = []
    if len(out) < len(res.rows):
        why = f"the first {max_rows}" if len(out) == max_rows else f"{len(out)} (the {budget}-byte budget)"
        notes.append(f"{len(res.rows)} rows; only {why} are returned")
    if clipped:
        notes.append("long values were cut (read them in parts with substr(column, start, length))")
    if not notes:
        return out, None
    return out, "; ".join(notes) + ". Narrow the query (WHERE, LIMIT/OFFSET, fewer columns)"


def _json_size(names: list[str], row: list[Any]) -> int:
    return len(_row_json(names, row).encode()) + 1


def _clip_row(row: list[Any], budget: int) -> list[Any]:
    """`row` with each text value over its share of `budget` cut to that share, marked."""
    share = max(budget // max(len(row), 1) - 64, 64)
    clipped: list[Any] = []
    for value in row:
        if isinstance(value, str) and len(value.encode()) > share:
            value = f"{truncate_utf8(value, share, keep='head')}[… {len(value.encode()) - share} bytes cut]"
        clipped.append(value)
    return clipped


async def create_axon(
    ctx: Context,
    name: Annotated[str | None, at_most(256)] = None,
    metadata: Annotated[Labels | None, Field(description="string labels")] = None,
) -> AxonInfo:
    """Create an axon: an event stream with a SQL-queryable history."""
    with api_errors():
        view = await state(ctx).client.create_axon(name=name, metadata=as_map("metadata", metadata))
    await state(ctx).resources.list_changed()
    return axon_info(view)


async def list_axons(
    ctx: Context,
    name: Annotated[str | None, Field(description="name prefix"), at_most(256)] = None,
    limit: Annotated[int, Field(ge=1, le=100)] = 20,
    starting_after: Annotated[AxonId | None, Field(description="last id of the previous page")] = None,
) -> Annotated[CallToolResult, AxonList]:
    """List axons."""
    with api_errors():
        page = await state(ctx).client.list_axons(name=name, limit=limit, starting_after=starting_after)
    listing = AxonList(axons=[axon_info(a) for a in page.axons], has_more=page.has_more)
    lines = [f"{a.id}  {a.name or ''}{'  (deleted)' if a.deleted else ''}".rstrip() for a in listing.axons]
    return result(listing, page_text("axon", lines, listing.has_more, listing.axons[-1].id if lines else None))


async def publish_event(
    ctx: Context,
    axon_id: AxonId,
    event_type: Annotated[str, Field(min_length=1), at_most(256)],
    payload: Annotated[JsonValue, Field(description="any JSON value")],
    source: Annotated[str, Field(min_length=1), at_most(256)] = "devbox-mcp",
    origin: Literal["AGENT_EVENT", "USER_EVENT", "EXTERNAL_EVENT"] = "AGENT_EVENT",
) -> Published:
    """Publish an event to an axon. Returns its sequence number and timestamp."""
    with api_errors():
        done = await state(ctx).client.publish(
            axon_id, event_type=event_type, payload=payload, source=source, origin=origin
        )
    return Published(axon_id=axon_id, sequence=done.sequence, timestamp_ms=done.timestamp_ms)


async def sql_query(
    ctx: Context,
    axon_id: AxonId,
    sql: Annotated[str, Field(min_length=1, description="one statement, ? placeholders"), at_most(100_000)],
    params: Annotated[list[SqlParam], at_most(1000)] | None = None,
    allow_writes: Annotated[bool, Field(description="allow a statement that writes")] = False,
) -> Annotated[CallToolResult, QueryResult]:
    """Run one SQL statement on an axon's database (events: table rl_axon_events); read-only
    unless allow_writes. Rows come back as value lists, bounded."""
    if not allow_writes:
        try:
            check_read_only(sql)
        except SqlRefused as exc:
            raise ToolError(str(exc)) from None
    app = state(ctx)
    with api_errors():
        # Refused above if it could write: a read is safe to retry after a lost answer.
        res = await app.client.sql_query(axon_id, sql, params, read_only=not allow_writes)
    rows, note = bounded_rows(res, app.settings.sql_max_rows, app.settings.output_budget)
    found = QueryResult(
        axon_id=axon_id,
        columns=[Column(name=c.name, type=c.type) for c in res.columns],
        rows=rows,
        row_count=len(res.rows),
        rows_cut=note is not None,
        changes=res.meta.changes,
        note=note,
    )
    lines = [_summary(res), *_row_lines(res, rows, note)]
    return result(found, "\n".join(lines) + "\n")


async def sql_batch(
    ctx: Context,
    axon_id: AxonId,
    statements: Annotated[list[Statement], Field(min_length=1), at_most(100)],
) -> Annotated[CallToolResult, BatchResult]:
    """Run SQL statements in one transaction on an axon's database: all applied, or none."""
    app = state(ctx)
    with api_errors():
        res = await app.client.sql_batch(axon_id, [{"sql": s.sql, "params": s.params} for s in statements])
    for n, item in enumerate(res.results, 1):
        if item.error is not None or item.success is None:
            message = item.error.message if item.error is not None else "no result"
            raise ToolError(
                f"sql_batch rolled back, nothing was written: statement {n} of {len(statements)} failed: "
                f"{truncate_utf8(message, 2000, keep='head')}"
            )
    budget = app.settings.output_budget // max(len(res.results), 1)
    items = []
    lines = []
    for n, item in enumerate(res.results, 1):
        rows, note = bounded_rows(item.success, app.settings.sql_max_rows, budget)
        names = [c.name for c in item.success.columns]
        items.append(
            BatchItem(
                columns=names,
                rows=rows,
                row_count=len(item.success.rows),
                rows_cut=note is not None,
                changes=item.success.meta.changes,
                note=note,
            )
        )
        lines.append(f"statement {n}: {_summary(item.success)}")
        lines += _row_lines(item.success, rows, note)
    return result(BatchResult(axon_id=axon_id, results=items), "\n".join(lines) + "\n")


def register(server: MCPServer) -> None:
    server.add_tool(create_axon, annotations=annotations())
    server.add_tool(list_axons, annotations=annotations(read_only=True, idempotent=True))
    server.add_tool(publish_event, annotations=annotations())
    # It can write when asked (allow_writes), so it is not read-only, and a write may delete.
    server.add_tool(sql_query, annotations=annotations(destructive=True))
    server.add_tool(sql_batch, annotations=annotations(destructive=True))


def _summary(res: SqlResult) -> str:
    text = f"{len(res.rows)} row(s); columns: {', '.join(c.name for c in res.columns) or '-'}"
    return text + (f"; {res.meta.changes} change(s)" if res.meta.changes else "")


def _row_json(names: list[str], row: list[Any]) -> str:
    return json.dumps(dict(zip(names, row, strict=False)), ensure_ascii=False, default=str)


def _row_lines(res: SqlResult, rows: list[Row], note: str | None) -> list[str]:
    """The text rendering of rows: one JSON object per line, then the note."""
    names = [c.name for c in res.columns]
    lines = [_row_json(names, r) for r in rows]
    return lines + [f"[{note}]"] if note else lines
