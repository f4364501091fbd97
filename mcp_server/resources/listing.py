"""`resources/list` with cursor pagination, and completions of ids in the resource templates.

`resources/list` walks the axons (each one's history resource), then the running devboxes, one
upstream page per MCP page; the cursor says which list and where in it. It is opaque to
clients (base64 of a small JSON object) and validated when it comes back.

Completions: axon and devbox ids come from the list endpoints. The API has no endpoint that
lists a devbox's executions, so execution ids come from two places: the devbox's `logs`
(entries with a `cmd_id`, as Runloop's cloud writes them for commands) and the executions this
process has returned results for (`remember_execution`, fed by the execute/stream_logs tools).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    ListResourcesResult,
    Resource,
    ResourceTemplateReference,
)

from ..runloop import RunloopClient, RunloopError
from .uris import AXON_EVENT, AXON_EVENTS, DEVBOX, EXECUTION_OUTPUT, STREAMS, axon_events_uri, devbox_uri

PAGE_SIZE = 50
MAX_COMPLETIONS = 100
_REMEMBERED_PER_PROCESS = 1000

# (devbox_id, execution_id) → None, most recent last; bounded.
_recent_executions: OrderedDict[tuple[str, str], None] = OrderedDict()


def remember_execution(devbox_id: str, execution_id: str) -> None:
    key = (devbox_id, execution_id)
    _recent_executions.pop(key, None)
    _recent_executions[key] = None
    while len(_recent_executions) > _REMEMBERED_PER_PROCESS:
        _recent_executions.popitem(last=False)


def _encode_cursor(kind: str, after: str | None) -> str:
    raw = json.dumps({"k": kind, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str | None]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        kind, after = data["k"], data["a"]
        if kind not in ("axons", "devboxes") or not (after is None or isinstance(after, str)):
            raise ValueError(kind)
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise MCPError(
            INVALID_PARAMS, "invalid cursor: pass back the nextCursor of the previous resources/list page unchanged"
        ) from None
    return kind, after


async def list_page(mcp: MCPServer, client: RunloopClient, cursor: str | None) -> ListResourcesResult:
    kind, after = _decode_cursor(cursor) if cursor else ("axons", None)
    resources: list[Resource] = []
    if cursor is None:
        resources.extend(await mcp.list_resources())  # static resources other modules registered
    try:
        if kind == "axons":
            page = await client.list_axons(limit=PAGE_SIZE, starting_after=after)
            for axon in page.axons:
                if axon.deleted_at_ms is None:
                    resources.append(axon_resource(axon.id, axon.name))
            if page.has_more and page.axons:
                return ListResourcesResult(resources=resources, next_cursor=_encode_cursor("axons", page.axons[-1].id))
            kind, after = "devboxes", None
        devboxes = await client.list_devboxes(status="running", limit=PAGE_SIZE, starting_after=after)
    except RunloopError as exc:
        raise MCPError(INTERNAL_ERROR, f"listing resources failed: {exc}") from None
    resources.extend(devbox_resource(d.id, d.name) for d in devboxes.devboxes)
    next_cursor = (
        _encode_cursor("devboxes", devboxes.devboxes[-1].id) if devboxes.has_more and devboxes.devboxes else None
    )
    return ListResourcesResult(resources=resources, next_cursor=next_cursor)


def axon_resource(axon_id: str, name: str | None) -> Resource:
    label = f"{name} ({axon_id})" if name else axon_id
    return Resource(
        uri=axon_events_uri(axon_id),
        name=f"axon-{axon_id}-events",
        title=f"Events of axon {label}",
        description="Event history, newest first, paginated; subscribe to hear of new events.",
        mime_type="application/json",
    )


def devbox_resource(devbox_id: str, name: str | None) -> Resource:
    label = f"{name} ({devbox_id})" if name else devbox_id
    return Resource(
        uri=devbox_uri(devbox_id),
        name=f"devbox-{devbox_id}",
        title=f"Devbox {label}",
        description="The devbox's current view (status, launch parameters, state transitions).",
        mime_type="application/json",
    )


def _starting(values: list[str], prefix: str) -> Completion:
    seen = list(dict.fromkeys(v for v in values if v.startswith(prefix)))
    return Completion(values=seen[:MAX_COMPLETIONS], total=len(seen), has_more=len(seen) > MAX_COMPLETIONS)


async def complete(
    client: RunloopClient, template: str, name: str, value: str, known: dict[str, str]
) -> Completion | None:
    """Suggestions for argument `name` of `template`, given the arguments already chosen."""
    if template not in (AXON_EVENTS, AXON_EVENT, DEVBOX, EXECUTION_OUTPUT):
        return None
    try:
        if name == "axon_id":
            page = await client.list_axons(search=value or None, limit=MAX_COMPLETIONS + 1)
            return _starting([a.id for a in page.axons if a.deleted_at_ms is None], value)
        if name == "devbox_id":
            page = await client.list_devboxes(limit=MAX_COMPLETIONS + 1)
            ordered = sorted(page.devboxes, key=lambda d: d.status != "running")
            return _starting([d.id for d in ordered], value)
        if name == "execution_id":
            devbox_id = known.get("devbox_id")
            if not devbox_id:
                return Completion(values=[], total=0, has_more=False)
            ids = [e for (d, e) in reversed(_recent_executions) if d == devbox_id]
            logs = await client.get_devbox_logs(devbox_id)
            ids += [entry.cmd_id for entry in reversed(logs) if entry.cmd_id]
            return _starting(ids, value)
        if name == "stream":
            return _starting(list(STREAMS), value)
        if name == "sequence" and known.get("axon_id"):
            page = await client.list_events(known["axon_id"], limit=20)
            return _starting([str(e.sequence) for e in page.events], value)
    except RunloopError:
        return Completion(values=[], total=0, has_more=False)  # nothing to suggest beats an error here
    return None


def template_completions(
    client_of: Callable[[Any], Any],
) -> Callable[[Any, CompleteRequestParams], Awaitable[CompleteResult | None]]:
    """Completions of our templates' arguments; None for any other reference or argument."""

    async def handler(ctx: Any, params: CompleteRequestParams) -> CompleteResult | None:
        ref = params.ref
        if not isinstance(ref, ResourceTemplateReference):
            return None
        known = dict((params.context.arguments or {}) if params.context else {})
        async with client_of(ctx) as client:
            completion = await complete(client, ref.uri, params.argument.name, params.argument.value, known)
        return CompleteResult(completion=completion) if completion is not None else None

    return handler
