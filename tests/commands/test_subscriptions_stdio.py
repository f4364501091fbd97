"""Subscriptions over the real stdio transport: `devbox-mcp serve` as a subprocess, a real MCP
client in both eras, the embedded backend behind it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from support.mcp_client import MODES, call_ok, structured
from support.subscriptions import Updates, direct_publish, new_axon

from mcp_server.local.server import RunningBackend

pytestmark = pytest.mark.anyio

EXE = str(Path(sys.executable).with_name("devbox-mcp"))


@pytest.mark.parametrize("mode", MODES)
async def test_updates_and_list_changes_over_stdio(mode: str, backend: RunningBackend, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLOOP_")}
    env.update(RUNLOOP_BASE_URL=backend.base_url, RUNLOOP_API_KEY=backend.api_key)
    params = StdioServerParameters(command=EXE, args=["serve"], env=env)
    axon = await new_axon(backend)
    uri = f"axon://{axon}/events"
    updates = Updates()
    with (tmp_path / "stderr.log").open("w") as errlog:
        if mode == "legacy":
            async with Client(stdio_client(params, errlog=errlog), mode=mode, message_handler=updates.handle) as client:
                await client.subscribe_resource(uri)
                await _exercise(client, backend, axon, uri, updates)
        else:
            async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
                async with client.listen(resource_subscriptions=[uri], resources_list_changed=True) as events:
                    async with anyio.create_task_group() as tg:

                        async def pump() -> None:
                            async for event in events:
                                updates.add(getattr(event, "uri", None))

                        tg.start_soon(pump)
                        await _exercise(client, backend, axon, uri, updates)
                        tg.cancel_scope.cancel()


async def _exercise(client: Client, backend: RunningBackend, axon: str, uri: str, updates: Updates) -> None:
    seq = await direct_publish(backend, axon, {"over": "stdio"})
    await updates.until(lambda: updates.uris == [uri])
    page = json.loads((await client.read_resource(f"{uri}?limit=1")).contents[0].text)
    assert page["events"][0]["sequence"] == seq and page["events"][0]["payload"] == {"over": "stdio"}
    structured(await call_ok(client, "create_axon", {"name": "stdio-listed"}))
    await updates.until(lambda: updates.list_changes >= 1)
