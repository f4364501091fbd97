"""Subscriptions over streamable HTTP (the SDK's app under uvicorn on a loopback port), both eras:
handshake-era updates ride the session's GET stream, 2026 ones the listen response; ending the
session (or the listen) releases the upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client
from support.http_serving import serve
from support.mcp_client import MODES, make_server
from support.subscriptions import Updates, direct_publish, idle, new_axon, wait_for

from mcp_server.local.server import RunningBackend

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def http_server(backend: RunningBackend) -> Iterator[tuple[str, Any]]:
    """The SDK's own streamable HTTP app (no guards of ours) of a server built over the backend."""
    server = make_server(backend)
    with serve(server.streamable_http_app()) as url:
        yield url, server


@pytest.mark.parametrize("mode", MODES)
async def test_updates_over_streamable_http_and_release_on_leave(
    mode: str, backend: RunningBackend, http_server: tuple[str, Any]
) -> None:
    url, server = http_server
    axon = await new_axon(backend)
    uri = f"axon://{axon}/events"
    updates = Updates()
    if mode == "legacy":
        async with Client(url, mode="legacy", message_handler=updates.handle) as client:
            await client.subscribe_resource(uri)
            await direct_publish(backend, axon, "over http")
            await updates.until(lambda: updates.uris == [uri])
    else:
        async with Client(url, mode=mode) as client, client.listen(resource_subscriptions=[uri]) as events:
            await direct_publish(backend, axon, "over http")
            with anyio.fail_after(20):
                async for event in events:
                    updates.add(getattr(event, "uri", None))
                    break
            assert updates.uris == [uri]
    await wait_for(lambda: idle(server.resources.stats()), "the session's subscriptions to be released")
