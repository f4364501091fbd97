"""Axon routes (`/v1/axons/...`): the registry, publish, history, live subscription, and SQL.

Limits a client can run into (also in the README's axon section):
- publish: `payload` is a string of at most `MAX_PAYLOAD_BYTES` (UTF-8); `source` and
  `event_type` at most `MAX_LABEL_CHARS` characters.
- SQL: one statement per query; at most `axon_sql.ROW_LIMIT` rows (or
  `axon_sql.RESULT_BYTES_LIMIT` bytes of JSON) come back, flagged by `rows_read_limit_reached`;
  no value is larger than `axon_sql.VALUE_BYTES_LIMIT`; a query, or a batch as a whole,
  running longer than `axon_sql.TIME_LIMIT_SECONDS` is stopped (400); at most
  `axons.SQL_PER_AXON` requests run at once per axon (`axons.SQL_TOTAL` in all), the rest queue.
- subscribe: after `idle_seconds` without a new event the stream ends with `event: error`
  `{"code": 408, "message": "idle ..."}`; re-subscribe with `after_sequence=<last seen>`.
  Set `DEVBOX_AXON_SSE_IDLE_SECONDS` (0 = never) to change it.
- an axon nobody used for `DEVBOX_AXON_IDLE_CLOSE_SECONDS` (600) has its writer thread and
  connections closed; the next request reopens it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import axon_sql, sse
from .axon_log import EventLog
from .axons import PUBLISHABLE_ORIGINS, AxonRecord, AxonStore
from .config import Component, LocalConfig, env_seconds
from .errors import ApiError
from .http import IdempotencyCache, idempotency_key, paginate, parse_body, query_bool, query_int
from .sse import KEEPALIVE, encode_error, encode_event, sse_response, wait_or_timeout

MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_LABEL_CHARS = 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateAxon(_Body):
    published_schema: ClassVar[str] = "AxonCreateParams"

    name: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    metadata: dict[str, str] | None = None


class UpdateAxon(_Body):
    metadata: dict[str, str] | None = None


class Publish(_Body):
    # Typed loosely so that wrong types get our own messages below rather than pydantic's; they
    # check every field of the published PublishParams (so no `published_schema` here).
    source: Any
    event_type: Any
    origin: Any
    payload: Any


class SqlStatementBody(_Body):
    published_schema: ClassVar[str] = "SqlStatementParams"

    sql: str
    params: list[Any] | None = None


class SqlBatchBody(_Body):
    published_schema: ClassVar[str] = "SqlBatchParams"

    statements: list[SqlStatementBody] = Field(max_length=axon_sql.MAX_STATEMENTS)


def _check_publish(body: Publish) -> None:
    if body.origin == "SYSTEM_EVENT":
        raise ApiError(
            400,
            "origin SYSTEM_EVENT is reserved for the platform and cannot be published; "
            f"use one of {', '.join(PUBLISHABLE_ORIGINS)}",
        )
    if body.origin not in PUBLISHABLE_ORIGINS:
        raise ApiError(400, f"origin must be one of {', '.join(PUBLISHABLE_ORIGINS)}, got {body.origin!r}")
    for name in ("source", "event_type"):
        value = getattr(body, name)
        if not isinstance(value, str):
            raise ApiError(400, f"{name} must be a string, got {type(value).__name__}")
        if len(value) > MAX_LABEL_CHARS:
            raise ApiError(400, f"{name} is {len(value)} characters; the limit is {MAX_LABEL_CHARS}")
    if not isinstance(body.payload, str):
        raise ApiError(
            400,
            f"payload must be a string, got {type(body.payload).__name__}: JSON-encode the payload into a string "
            "(e.g. json.dumps(payload) or JSON.stringify(payload)) before publishing",
        )
    size = len(body.payload.encode())  # parse_body has refused lone surrogates
    if size > MAX_PAYLOAD_BYTES:
        raise ApiError(413, f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes per event")


_METADATA_PARAM = re.compile(r"^metadata\[(.+?)\](\[in\])?$")


def _matches(record: AxonRecord, request: Request) -> bool:
    q = request.query_params
    if q.get("id") and record.id != q["id"]:
        return False
    if q.get("name") and not (record.name or "").startswith(q["name"]):
        return False
    search = (q.get("search") or "").lower()
    if search and search not in record.id.lower() and search not in (record.name or "").lower():
        return False
    for key, value in q.multi_items():
        m = _METADATA_PARAM.match(key)
        if not m:
            continue
        wanted = value.split(",") if m.group(2) else [value]
        if record.metadata.get(m.group(1)) not in wanted:
            return False
    return True


def _axons(request: Request) -> AxonStore:
    return request.app.state.axons


def _creations(request: Request) -> IdempotencyCache:
    return request.app.state.axon_creations


def _sse_idle_seconds(request: Request) -> float:
    return request.app.state.axon_sse_idle_seconds


def _axon_id(request: Request) -> str:
    return request.path_params["id"]


async def create_axon(request: Request) -> Response:
    """Create an axon (`name`, `metadata`); retries with the same `x-request-id` return the same axon."""
    store = _axons(request)
    body = await parse_body(request, CreateAxon)

    async def create() -> dict[str, Any]:
        return (await store.create(body.name, body.metadata or {})).view()

    return JSONResponse(await _creations(request).run(idempotency_key(request, "axon-create"), create))


async def list_axons(request: Request) -> Response:
    """Axons, deleted ones included, newest first; filters `id`, `name` (prefix), `search` (id or
    name substring), `metadata[key]=value`, `metadata[key][in]=a,b`; paginated by axon id."""
    store = _axons(request)
    items = [record.view() for record in store.all() if _matches(record, request)]
    return JSONResponse(paginate(request, items, "axons"))


async def get_axon(request: Request) -> Response:
    """One axon (deleted axons stay readable, with `deleted_at_ms`)."""
    store = _axons(request)
    return JSONResponse(store.get(_axon_id(request)).view())


async def update_axon(request: Request) -> Response:
    """Replace the axon's metadata (`{}` clears it; absent leaves it)."""
    store = _axons(request)
    body = await parse_body(request, UpdateAxon)
    if body.metadata is None:
        return JSONResponse(store.get(_axon_id(request)).view())
    return JSONResponse((await store.update_metadata(_axon_id(request), body.metadata)).view())


async def delete_axon(request: Request) -> Response:
    """Delete the axon's events and tables; its record stays readable. Idempotent."""
    store = _axons(request)
    await store.delete(_axon_id(request))
    return JSONResponse({})


async def publish(request: Request) -> Response:
    """Append an event; answers `{sequence, timestamp_ms}` once the event is on disk.

    Sequences start at 1 and have no gaps. A publish retried with the same `x-request-id`
    (the official SDKs reuse it across retries) gets the first answer and stores nothing new.
    """
    store = _axons(request)
    body = await parse_body(request, Publish)
    _check_publish(body)
    async with store.lease(_axon_id(request)) as log:
        result = await log.publish(
            origin=body.origin,
            source=body.source,
            event_type=body.event_type,
            payload=body.payload,
            request_id=request.headers.get("x-request-id") or None,
        )
    return JSONResponse({"sequence": result.sequence, "timestamp_ms": result.timestamp_ms})


async def list_events(request: Request) -> Response:
    """History, newest first. `starting_after` is the sequence of the last event of the previous
    page (the SDK passes it as a string); `total_count` is the highest sequence."""
    store = _axons(request)
    ident = _axon_id(request)
    limit = query_int(request, "limit", 20, lo=1, hi=5000) or 20
    raw_after = request.query_params.get("starting_after")
    try:
        after = int(raw_after) if raw_after else None
    except ValueError:
        raise ApiError(400, f"starting_after must be an event sequence (an integer), got {raw_after!r}") from None
    async with store.lease(ident) as log:
        newest = log.last_sequence
        top = newest if after is None else min(after - 1, newest)
        events = await log.read_desc(top, limit) if top >= 1 else []
    body: dict[str, Any] = {
        "events": [event.view(ident) for event in events],
        "has_more": bool(events) and events[-1].sequence > 1,
    }
    if query_bool(request, "include_total_count", True):
        body["total_count"] = newest
    return JSONResponse(body)


async def subscribe(request: Request) -> Response:
    """SSE: every event after `after_sequence` (from the first when absent), then live ones, in
    order, each as `data: <AxonEventView>`; `:` keep-alives while idle. After `idle_seconds`
    without events the stream ends with `event: error` code 408: re-subscribe with the last
    sequence seen to continue exactly where it stopped."""
    store = _axons(request)
    ident = _axon_id(request)
    after = query_int(request, "after_sequence", 0, lo=-(2**63), hi=2**63 - 1) or 0
    await store.log(ident)  # 404 now, before the stream starts
    return sse_response(_subscription(store, ident, max(after, 0), _sse_idle_seconds(request)))


async def sql_query(request: Request) -> Response:
    """Run one statement (`sql` with `?` placeholders, `params`) against the axon's database.

    `rl_axon_events(sequence, timestamp_ms, origin, source, event_type, payload)` is the
    read-only history; create your own tables freely. Limits: 10,000 rows (or 16 MiB of
    JSON) returned, then `rows_read_limit_reached: true`; 4 MiB per value; 5 s. SQL errors
    are 400 with SQLite's message. BLOBs come back base64-encoded.
    """
    store = _axons(request)
    body = await parse_body(request, SqlStatementBody)
    stmt = axon_sql.Statement(body.sql, body.params or [])
    return JSONResponse(await store.sql_query(_axon_id(request), stmt))


async def sql_batch(request: Request) -> Response:
    """Run `statements` in one transaction: all applied, or none. One result per statement:
    `success` for those that ran, `error` for the failing one and the ones after it (not run).
    Same limits as /sql/query, but the 5 s are for the whole batch; over them, or with
    transaction control (BEGIN, COMMIT, ...), the batch is rolled back and answered 400."""
    store = _axons(request)
    body = await parse_body(request, SqlBatchBody)
    stmts = [axon_sql.Statement(s.sql, s.params or []) for s in body.statements]
    return JSONResponse({"results": await store.sql_batch(_axon_id(request), stmts)})


ROUTES = [
    Route("/v1/axons", create_axon, methods=["POST"]),
    Route("/v1/axons", list_axons, methods=["GET"]),
    Route("/v1/axons/{id}", get_axon, methods=["GET"]),
    Route("/v1/axons/{id}", update_axon, methods=["POST"]),
    Route("/v1/axons/{id}", delete_axon, methods=["DELETE"]),
    Route("/v1/axons/{id}/publish", publish, methods=["POST"]),
    Route("/v1/axons/{id}/events", list_events, methods=["GET"]),
    Route("/v1/axons/{id}/subscribe/sse", subscribe, methods=["GET"]),
    Route("/v1/axons/{id}/sql/query", sql_query, methods=["POST"]),
    Route("/v1/axons/{id}/sql/batch", sql_batch, methods=["POST"]),
]


async def _subscription(store: AxonStore, axon_id: str, after: int, idle_seconds: float) -> AsyncIterator[bytes]:
    """The subscriber loop: its cursor is all the state a subscriber holds between pages."""
    try:
        async with store.lease(axon_id) as log:
            async for chunk in _stream(log, axon_id, after, idle_seconds):
                yield chunk
    except ApiError as exc:  # deleted (or shutting down) while streaming
        yield encode_error(exc.status, exc.message)


async def _stream(log: EventLog, axon_id: str, cursor: int, idle_seconds: float) -> AsyncIterator[bytes]:
    idle = 0.0
    while True:
        caught_up = True
        if cursor < log.last_sequence:
            page = await log.read_after(cursor)
            if page:
                cursor = page[-1].sequence
                idle = 0.0
                yield b"".join(encode_event(event.view(axon_id)) for event in page)
                continue
            caught_up = False  # nothing readable yet: wait for the next change rather than spin
        if log.closed:
            if log.deleted:
                yield encode_error(404, f"axon {axon_id!r} was deleted")
            return  # shutting down: the client re-subscribes from its last sequence
        changed = log.changed()
        if caught_up and cursor < log.last_sequence:
            continue
        every = sse.KEEPALIVE_SECONDS
        wait = every if idle_seconds <= 0 else min(every, idle_seconds - idle)
        if await wait_or_timeout(changed.wait, wait):
            continue
        idle += wait
        if 0 < idle_seconds <= idle:
            yield encode_error(408, f"idle for {idle_seconds:g} s; re-subscribe with after_sequence={cursor}")
            return
        yield KEEPALIVE


def build(config: LocalConfig) -> Component:
    store = AxonStore(
        config.data_dir / "axons", idle_close_seconds=env_seconds("DEVBOX_AXON_IDLE_CLOSE_SECONDS")
    )
    return Component(
        routes=ROUTES,
        startup=store.start,
        shutdown=store.stop,
        extra={
            "axons": store,
            "axon_creations": IdempotencyCache(),
            "axon_sse_idle_seconds": env_seconds("DEVBOX_AXON_SSE_IDLE_SECONDS"),
        },
    )
