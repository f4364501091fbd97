"""Fixtures for the tool tests: a real MCP client (in memory, both protocol eras) talking to our
server, whose Runloop client points at the embedded backend over loopback HTTP."""

from __future__ import annotations

import json
from typing import Any

from mcp import Client
from mcp.types import CallToolResult

from mcp_server.local.server import RunningBackend
from mcp_server.runloop import RunloopClient
from mcp_server.server import build_server
from mcp_server.settings import Settings

MODES = ["legacy", "auto"]


def make_server(
    backend: RunningBackend, settings: Settings | None = None, base_url: str | None = None, *, subsecond_waits: bool = True
):
    """Our server on the embedded backend (`subsecond_waits=False`: driving it as Runloop's API)."""
    return build_server(
        lambda: RunloopClient(base_url or backend.base_url, backend.api_key, subsecond_waits=subsecond_waits), settings
    )


def text_of(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def call_ok(client: Client, tool: str, args: dict[str, Any], **kw: Any) -> CallToolResult:
    result = await client.call_tool(tool, args, **kw)
    assert not result.is_error, f"{tool} failed: {text_of(result)}"
    return result


async def call_error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, f"{tool} should have failed: {text_of(result)}"
    return text_of(result)


def structured(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None
    return json.loads(json.dumps(result.structured_content))
