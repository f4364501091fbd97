"""Building the MCP server: the tools on top of one Runloop client.

`build_server` takes either a ready client (the caller owns and closes it) or a factory called
once per server run inside its event loop (the server closes what it made). Each run's
`AppState` holds that client, the settings and the handle to the resources (their subscription
hub) and the terminal sessions; the server keeps both too, for whoever watches the hub. Transports are not chosen
here: `commands/serve.py` runs the result over stdio (or HTTP), tests connect to it in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

from . import __version__
from .logging_and_completion import add_logging_and_completion
from .resources import ResourcesHandle, register_resources
from .runloop import RunloopClient
from .settings import Settings
from .terminal.sessions import Terminals
from .tools import register_all
from .tools.common import AppState

INSTRUCTIONS = (
    "Linux devboxes (sandboxes) for running code. create_devbox, then execute commands in it; "
    "long commands hand off to stream_logs with byte offsets. Axons are event streams with SQL history."
)


class DevboxServer(MCPServer):
    """The MCP server of devbox-mcp: an `MCPServer` that keeps the handle to its resources."""

    resources: ResourcesHandle
    terminals: Terminals


def build_server(
    client: RunloopClient | Callable[[], RunloopClient], settings: Settings | None = None
) -> DevboxServer:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(server: DevboxServer) -> AsyncIterator[AppState]:
        made = client if isinstance(client, RunloopClient) else client()
        try:
            yield AppState(made, settings, server.resources, server.terminals)
        finally:
            # The run's terminals stop following their PTYs, which live on in the devboxes: a client
            # that comes back reattaches to the same shells.
            with anyio.CancelScope(shield=True):
                await server.terminals.detach_client(made)
            if made is not client:
                await made.aclose()

    server = DevboxServer(
        "devbox-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level="WARNING",
    )
    register_all(server)
    server.terminals = Terminals(scrollback_bytes=settings.output_budget)
    server.resources = register_resources(server, client, settings, server.terminals)
    add_logging_and_completion(server, server.resources.complete)
    compact_schemas(server)
    return server


def compact_schemas(server: MCPServer) -> None:
    """Make the published schemas plain and small, for every framework that converts them.

    - `$defs` are inlined: some converters (OpenAI's strict mode via openai-agents, Gemini)
      refuse or mishandle `$ref`.
    - pydantic's auto titles go: they cost every conversation context and say nothing.
    - `anyOf [T, null]` becomes `type: [T, "null"]` (half the bytes; an enum gains `null`). In
      inputs the `default: null` goes too: strict converters make every argument required, and
      null is then how a model leaves an optional one out. Output schemas keep their nulls:
      clients validate structured content against them.
    """
    for tool in server._tool_manager.list_tools():
        tool.description = " ".join((tool.description or "").split())
        tool.parameters = _compact(inline_refs(tool.parameters))
        if tool.fn_metadata.output_schema is not None:
            tool.fn_metadata.output_schema = _compact(inline_refs(tool.fn_metadata.output_schema))


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each `{"$ref": "#/$defs/X"}` replaced by X (its siblings kept) and no `$defs`."""
    defs = schema.get("$defs", {})

    def resolve(node: object, seen: frozenset[str]) -> object:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen or name not in defs:
                raise ValueError(f"schema {name!r} is recursive or missing and cannot be inlined")
            target = resolve(defs[name], seen | {name})
            siblings = {key: resolve(value, seen) for key, value in node.items() if key != "$ref"}
            return {**target, **siblings}  # type: ignore[dict-item]
        return {key: resolve(value, seen) for key, value in node.items() if key != "$defs"}

    return resolve(schema, frozenset())  # type: ignore[return-value]


def _compact(schema: object) -> object:
    if isinstance(schema, list):
        return [_compact(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, object] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _compact(sub) for name, sub in value.items()}
        else:
            out[key] = _compact(value)
    variants = out.get("anyOf")
    if isinstance(variants, list) and len(variants) == 2 and {"type": "null"} in variants:
        (plain,) = [v for v in variants if v != {"type": "null"}]
        if isinstance(plain.get("type"), str):
            # The same meaning, half the bytes: {"type": ["string", "null"], ...}.
            del out["anyOf"]
            out = {**plain, **out, "type": [plain["type"], "null"]}
            if "enum" in plain:
                out["enum"] = [*plain["enum"], None]
    if out.get("default", ...) is None:
        del out["default"]  # null is what an omitted optional argument means; an output's default says nothing
    return out
