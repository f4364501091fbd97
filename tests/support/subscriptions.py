"""Helpers of the subscription tests (in memory, over HTTP, over stdio): a record of the updates a
client received, bounded waits, and an axon to publish to behind the MCP server's back."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
from mcp.types import ResourceListChangedNotification, ResourceUpdatedNotification

from mcp_server.local.server import RunningBackend
from mcp_server.runloop import RunloopClient
from mcp_server.subscriptions import HubStats

DEADLINE = 20.0


class Updates:
    """Resource updates and list changes a client received, in either era, with a way to wait."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self.list_changes = 0
        self._changed = anyio.Event()

    def add(self, uri: str | None) -> None:
        if uri is None:
            self.list_changes += 1
        else:
            self.uris.append(uri)
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(DEADLINE):
            while not condition():
                await self._changed.wait()

    async def handle(self, message: Any) -> None:
        """Handshake-era `message_handler`."""
        if isinstance(message, ResourceUpdatedNotification):
            self.add(message.params.uri)
        elif isinstance(message, ResourceListChangedNotification):
            self.add(None)


async def wait_for(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll `check` until true, or fail after the deadline saying what never happened."""
    with anyio.move_on_after(DEADLINE):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def idle(stats: HubStats) -> bool:
    return stats == HubStats(0, 0, 0, 0, 0)


async def direct_publish(backend: RunningBackend, axon_id: str, payload: Any) -> int:
    async with httpx.AsyncClient(base_url=backend.base_url,
                                 headers={"Authorization": f"Bearer {backend.api_key}"}) as http:
        r = await http.post(f"/v1/axons/{axon_id}/publish", json={
            "event_type": "direct", "origin": "EXTERNAL_EVENT", "source": "test", "payload": json.dumps(payload)})
        r.raise_for_status()
        return r.json()["sequence"]


async def new_axon(backend: RunningBackend) -> str:
    async with RunloopClient(backend.base_url, backend.api_key) as client:
        return (await client.create_axon(name="subs")).id
