"""The API client of a server run is made when a tool first needs it, not as the server starts:
`initialize` (the cold start a client waits for) does not pay for it, and a run that calls no
tool never makes one. Made once, it is closed at the run's end."""

from __future__ import annotations

import pytest
from mcp import Client
from support.mcp_client import call_ok

from mcp_server.local.server import RunningBackend
from mcp_server.runloop import RunloopClient
from mcp_server.server import build_server

pytestmark = pytest.mark.anyio


async def test_the_client_is_made_at_the_first_tool_call_and_closed_at_the_end(backend: RunningBackend) -> None:
    made: list[RunloopClient] = []

    def factory() -> RunloopClient:
        made.append(RunloopClient(backend.base_url, backend.api_key))
        return made[-1]

    async with Client(build_server(factory), mode="auto") as client:
        await client.list_tools()
        await client.list_resource_templates()
        assert made == []
        await call_ok(client, "list_devboxes", {"limit": 1})
        await call_ok(client, "list_axons", {"limit": 1})
        assert len(made) == 1
    assert made[0]._http.is_closed and made[0]._stream_http.is_closed
    async with Client(build_server(factory), mode="auto") as client:
        await client.list_tools()
    assert len(made) == 1  # a run without a tool call made none
