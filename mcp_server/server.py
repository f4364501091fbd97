"""Building the MCP server: the tools on top of one Runloop client.

`build_server` takes either a ready client (the caller owns and closes it) or a factory called
once per server run inside its event loop (the server closes what it made). Transports are not
chosen here: `serve.py` runs the result over stdio (or HTTP), tests connect to it in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer

from . import __version__
from .protocol_extras import add_protocol_extras
from .resources import register_resources
from .runloop import RunloopClient
from .settings import Settings
from .tools import register_all
from .tools.common import AppState

INSTRUCTIONS = (
    "Linux devboxes (sandboxes) for running code. create_devbox, then execute commands in it; "
    "long commands hand off to stream_logs with byte offsets. Axons are event streams with SQL history."
)


def build_server(
    client: RunloopClient | Callable[[], RunloopClient], settings: Settings | None = None
) -> MCPServer:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[AppState]:
        if isinstance(client, RunloopClient):
            yield AppState(client, settings)
            return
        made = client()
        try:
            yield AppState(made, settings)
        finally:
            await made.aclose()

    server = MCPServer(
        "devbox-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level="WARNING",
    )
    register_all(server)
    add_protocol_extras(server)  # logging/setLevel, a default completion/complete (protocol_extras.py)
    register_resources(server, client, settings)  # wraps that completion handler for our templates
    compact_schemas(server)
    return server


def compact_schemas(server: MCPServer) -> None:
    """Drop what costs every conversation context and says nothing: pydantic's auto titles, and
    (inputs only) the `anyOf [T, null]` spelling of an optional argument, which is just T when
    omitted. Output schemas keep their nulls: clients validate structured content against them."""
    for tool in server._tool_manager.list_tools():
        tool.description = " ".join((tool.description or "").split())
        tool.parameters = _compact(tool.parameters, optional_to_plain=True)
        if tool.fn_metadata.output_schema is not None:
            tool.fn_metadata.output_schema = _compact(tool.fn_metadata.output_schema, optional_to_plain=False)


def _compact(schema: object, *, optional_to_plain: bool) -> object:
    if isinstance(schema, list):
        return [_compact(s, optional_to_plain=optional_to_plain) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, object] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _compact(sub, optional_to_plain=optional_to_plain) for name, sub in value.items()}
        else:
            out[key] = _compact(value, optional_to_plain=optional_to_plain)
    variants = out.get("anyOf")
    if isinstance(variants, list) and len(variants) == 2 and {"type": "null"} in variants:
        (plain,) = [v for v in variants if v != {"type": "null"}]
        if optional_to_plain and out.get("default", ...) is None:
            del out["anyOf"], out["default"]
            out = {**plain, **out}
        elif isinstance(plain.get("type"), str):
            # The same meaning, half the bytes: {"type": ["string", "null"], ...}.
            del out["anyOf"]
            out = {**plain, **out, "type": [plain["type"], "null"]}
    if not optional_to_plain and out.get("default", ...) is None:
        del out["default"]  # an output's default says nothing to the caller
    return out
