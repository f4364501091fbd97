"""Building the MCP server: the tools on top of one Runloop client.

`build_server` takes either a ready client (the caller owns and closes it) or a factory called
at most once per server run, inside its event loop, when a tool first needs it (the server
closes what it made). Each run's
`AppState` holds that client, the settings and the handle to the resources (their subscription
hub) and the terminal sessions; the server keeps both too, for whoever watches the hub. Transports are not chosen
here: `commands/serve.py` runs the result over stdio (or HTTP), tests connect to it in memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, InputRequiredResult, TextContent
from pydantic import ValidationError

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

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        """The SDK's `call_tool`, with argument errors that never echo what was sent.

        pydantic's message repeats each bad input (`input_value=...`): an environment variable's
        value or a file's contents are secrets or bulk. The model gets, per bad argument, where and
        what is wrong; that is what it needs to correct the call."""
        try:
            called = await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.__cause__.errors(include_input=False, include_url=False)
            )
            raise ToolError(f"Error executing tool {name}: invalid arguments: {problems}") from None
        if isinstance(called, CallToolResult) and called.structured_content is not None:
            # Published output schemas have no nulls (compact_schemas): a field without a value is absent,
            # in the structured content and in a text that is its JSON (the SDK's rendering of a model).
            whole, called.structured_content = called.structured_content, without_none(called.structured_content)
            for block in called.content:
                if isinstance(block, TextContent) and block.text.startswith("{") and _parses_to(block.text, whole):
                    block.text = json.dumps(called.structured_content, indent=2, ensure_ascii=False)
        return called


def build_server(
    client: RunloopClient | Callable[[], RunloopClient], settings: Settings | None = None
) -> DevboxServer:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(server: DevboxServer) -> AsyncIterator[AppState]:
        run = AppState(client, settings, server.resources, server.terminals)  # a factory's client is made at its first use
        try:
            yield run
        finally:
            made = run.made_client
            if made is not None:
                # The run's terminals stop following their PTYs, which live on in the devboxes: a
                # client that comes back reattaches to the same shells.
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
      null is then how a model leaves an optional one out.
    - Output schemas say what each field is when present, and nothing else: a field without a value
      is left out of the structured content (`DevboxServer.call_tool`), never null, and which fields a
      result has depends on it (a command still running has no exit status), so none is `required`;
      no descriptions or defaults (a model docstring's included): no model reads them, and every
      conversation would pay for them.
    """
    for tool in server._tool_manager.list_tools():
        tool.description = " ".join((tool.description or "").split())
        tool.parameters = _compact(inline_refs(tool.parameters))
        if tool.fn_metadata.output_schema is not None:
            tool.fn_metadata.output_schema = _without_nulls(_compact(inline_refs(tool.fn_metadata.output_schema)))


def _without_nulls(schema: object) -> object:
    """An output schema with no null: a field without a value is left out, not null (`without_none`)."""
    if isinstance(schema, list):
        return [_without_nulls(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("default", "description", "required"):
            continue  # see compact_schemas
        if key == "properties":
            out[key] = {name: _without_nulls(sub) for name, sub in value.items()}
        else:
            out[key] = _without_nulls(value)
    kind = out.get("type")
    if isinstance(kind, list) and "null" in kind and len(kind) == 2:
        out["type"] = next(k for k in kind if k != "null")
        if isinstance(out.get("enum"), list):
            out["enum"] = [v for v in out["enum"] if v is not None]
    return out


def _parses_to(text: str, value: Any) -> bool:
    try:
        return json.loads(text) == value
    except ValueError:
        return False


def without_none(value: Any) -> Any:
    """Structured content with every null-valued key left out, at any depth.

    List items are never dropped: a row's SQL NULLs are values, and positions mean columns."""
    if isinstance(value, dict):
        return {key: without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_none(item) if isinstance(item, dict | list) else item for item in value]
    return value


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
        # `minLength: 1` and `additionalProperties: false` are still checked by the argument models (with a
        # message naming the argument) but left out, like `tools.common.at_most`: a model does not send an
        # empty command or an extra key because a schema forbade it, and strict converters (openai-agents)
        # add `additionalProperties: false` to every object themselves.
        if key == "title" or (key == "minLength" and value == 1) or (key == "additionalProperties" and value is False):
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
