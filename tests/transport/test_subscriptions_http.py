"""Subscriptions over streamable HTTP (the SDK's app under uvicorn on a loopback port), both eras:
handshake-era updates ride the session's GET stream, 2026 ones the listen response; ending the
session (or the listen) releases the upstream."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import uvicorn
from mcp import Client
from support.mcp_client import MODES, make_server
from support.subscriptions import Updates, direct_publish, idle, new_axon, wait_for

from mcp_server.local.server import RunningBackend

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def http_server(backend: RunningBackend) -> Iterator[tuple[str, Any]]:
    server = make_server(backend)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = uvicorn.Server(uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=app.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not app.started:
        assert time.monotonic() < deadline, "the HTTP server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/mcp", server
    app.should_exit = True
    thread.join(10)


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
