"""Live resource subscriptions through real MCP clients in both eras, against the embedded
backend: updates in order, execution output growth and completion, list changes, one upstream
per feed, and nothing left behind (tasks, upstream streams) after clients subscribe and go."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, MCPError
from mcp.client.subscriptions import ResourcesListChanged, ResourceUpdated
from support.faultproxy import FaultProxy
from support.mcp_client import MODES, call_ok, make_server, structured
from support.subscriptions import Updates, direct_publish, idle, new_axon, wait_for

from mcp_server.local.server import RunningBackend
from mcp_server.runloop import RunloopClient
from mcp_server.server import build_server
from mcp_server.subscriptions import MAX_URIS_PER_LISTEN, _Sender

pytestmark = pytest.mark.anyio

BURST = 150


@asynccontextmanager
async def subscribed(server: Any, mode: str, uris: list[str], *, list_changes: bool = False) -> AsyncIterator[tuple[Client, Updates]]:
    """A client of `server` in `mode`, subscribed to `uris` the way its era does it."""
    updates = Updates()
    if mode == "legacy":
        async with Client(server, mode="legacy", message_handler=updates.handle) as client:
            for uri in uris:
                await client.subscribe_resource(uri)
            yield client, updates
        return
    async with Client(server, mode=mode) as client:
        async with client.listen(resource_subscriptions=uris, resources_list_changed=list_changes) as events:
            async with anyio.create_task_group() as tg:

                async def pump() -> None:
                    async for event in events:
                        if isinstance(event, ResourceUpdated):
                            updates.add(event.uri)
                        elif isinstance(event, ResourcesListChanged):
                            updates.add(None)

                tg.start_soon(pump)
                yield client, updates
                tg.cancel_scope.cancel()


def backend_streams(backend: RunningBackend, axon_id: str) -> int:
    """SSE subscriptions to `axon_id` the backend is serving right now (read from uvicorn's
    in-flight request tasks, each holding its ASGI scope)."""
    count = 0
    for task in list(backend._server.server_state.tasks):
        frame = task.get_coro().cr_frame
        cycle = frame.f_locals.get("self") if frame is not None else None
        path = getattr(cycle, "scope", {}).get("path", "")
        count += path == f"/v1/axons/{axon_id}/subscribe/sse"
    return count


@pytest.mark.parametrize("mode", MODES)
async def test_every_publish_sends_an_update_and_reads_catch_up_in_order(backend: RunningBackend, mode: str) -> None:
    server = make_server(backend)
    axon = await new_axon(backend)
    uri = f"axon://{axon}/events"
    published: list[tuple[int, Any]] = []
    read: list[tuple[int, Any]] = []
    async with subscribed(server, mode, [uri]) as (client, updates):
        last = 0
        for i in range(20):
            payload = {"n": i}
            before = len(updates.uris)
            if i % 2:
                seq = await direct_publish(backend, axon, payload)
            else:
                seq = structured(await call_ok(client, "publish_event", {
                    "axon_id": axon, "event_type": "tool", "payload": payload}))["sequence"]
            published.append((seq, payload))
            await updates.until(lambda before=before: len(updates.uris) > before)
            page = json.loads((await client.read_resource(f"{uri}?after_sequence={last}")).contents[0].text)
            read.extend((e["sequence"], e["payload"]) for e in page["events"])
            last = read[-1][0]
        assert set(updates.uris) == {uri}
    assert read == published
    assert [s for s, _ in published] == list(range(1, 21))
    await wait_for(lambda: idle(server.resources.stats()), "the hub to be idle")


@pytest.mark.parametrize("mode", MODES)
async def test_after_a_burst_the_last_update_shows_every_event(backend: RunningBackend, mode: str) -> None:
    server = make_server(backend)
    axon = await new_axon(backend)
    uri = f"axon://{axon}/events"
    async with RunloopClient(backend.base_url, backend.api_key) as api, subscribed(server, mode, [uri]) as (client, updates):
        async with anyio.create_task_group() as tg:
            for i in range(BURST):
                tg.start_soon(lambda i=i: api.publish(axon, event_type="burst", payload=i))
        # However the updates were coalesced, one arrives after the last event: reading then shows all.
        async def all_visible() -> bool:
            if not updates.uris:
                return False
            page = json.loads((await client.read_resource(f"{uri}?limit=1")).contents[0].text)
            return page["newest_sequence"] == BURST
        await wait_for(all_visible, "an update showing every event of the burst")
        assert 1 <= len(updates.uris) <= BURST


@pytest.mark.parametrize("mode", MODES)
async def test_subscribing_to_an_unknown_axon_is_refused_or_silent(backend: RunningBackend, mode: str) -> None:
    server = make_server(backend)
    if mode == "legacy":
        async with Client(server, mode="legacy") as client:
            for uri in ("axon://axn_nope/events", "devbox://dbx_nope", "devbox://dbx_nope/executions/e/stdout",
                        "nothing://here"):
                with pytest.raises(MCPError) as err:
                    await client.subscribe_resource(uri)
                assert err.value.error.code == -32602 and "not found" in err.value.error.message
    else:  # listen acknowledges any URI (as the spec says); the follower stops at the 404
        async with subscribed(server, mode, ["axon://axn_nope/events"]):
            await wait_for(lambda: server.resources.stats().followers == 0, "the follower of a missing axon to stop")
    await wait_for(lambda: idle(server.resources.stats()), "the hub to be idle")


async def test_a_listen_stream_with_too_many_uris_is_refused(backend: RunningBackend) -> None:
    server = make_server(backend)
    uris = [f"axon://axn_{i}/events" for i in range(MAX_URIS_PER_LISTEN + 1)]
    async with Client(server, mode="auto") as client:
        with pytest.raises(MCPError) as err:
            async with client.listen(resource_subscriptions=uris):
                pass
    assert err.value.error.code == -32602 and f"at most {MAX_URIS_PER_LISTEN}" in err.value.error.message
    assert idle(server.resources.stats())


@pytest.mark.parametrize("mode", MODES)
async def test_the_upstream_resumes_after_drops_without_missing_or_repeating(
    backend: RunningBackend, fault_proxy: FaultProxy, mode: str
) -> None:
    # Every upstream connection is cut right after its first event: each publish costs a reconnect.
    fault_proxy.cut(r"/subscribe/sse", after_bytes=1, after_first_event=True)
    server = make_server(backend, base_url=fault_proxy.url)
    axon = await new_axon(backend)
    uri = f"axon://{axon}/events"
    async with subscribed(server, mode, [uri]) as (_, updates):
        for i in range(10):
            before = len(updates.uris)
            await direct_publish(backend, axon, i)
            await updates.until(lambda before=before: len(updates.uris) > before)
        assert server.resources.stats().followers == 1
    resumed_after = [int(r.target.split("after_sequence=")[1].split("&")[0]) for r in fault_proxy.seen(r"/subscribe/sse")]
    # Resumed after each event in turn (the last resume may not have happened before the client
    # left): none lost, none repeated.
    assert resumed_after in (list(range(10)), list(range(11))), resumed_after


async def test_subscribers_come_and_go_100_times_without_leaking_streams_or_tasks(backend: RunningBackend) -> None:
    async with RunloopClient(backend.base_url, backend.api_key) as api:
        server = build_server(api)  # one ready client: the cycles measure subscriptions, not client set-up
        axon = (await api.create_axon(name="churn")).id
        uri = f"axon://{axon}/events"

        # Clients of both eras on one axon share one upstream stream.
        async with subscribed(server, "legacy", [uri]) as (_, first), subscribed(server, "auto", [uri]) as (_, second):
            async with subscribed(server, "legacy", [uri, f"{uri}?limit=5"]) as (_, third):
                stats = server.resources.stats()
                assert stats is not None and stats.followers == 1 and stats.subscribed_uris == 2
                assert stats.handshake_peers == 2 and stats.listen_streams == 1
                await wait_for(lambda: backend_streams(backend, axon) == 1, "one upstream stream")
                await direct_publish(backend, axon, "shared")
                for u in (first, second):
                    await u.until(lambda u=u: bool(u.uris))
                await third.until(lambda: set(third.uris) == {uri, f"{uri}?limit=5"})

        for i in range(100):
            mode = MODES[i % 2]
            async with subscribed(server, mode, [uri]) as (client, _):
                assert server.resources.stats().followers == 1
                if mode == "legacy" and i % 4 == 0:
                    await client.unsubscribe_resource(uri)  # unsubscribe, then disconnect
                    assert server.resources.stats().followers == 0
            # otherwise: disconnect while subscribed
        await wait_for(lambda: idle(server.resources.stats()), "every subscriber, follower and task to be gone")
        await wait_for(lambda: backend_streams(backend, axon) == 0, "the backend to serve no stream")


async def test_the_followers_own_client_is_closed_when_the_last_follower_stops(backend: RunningBackend) -> None:
    server = make_server(backend)  # a client factory: followers get a client of their own
    axon = await new_axon(backend)
    handle = server.resources
    for mode in MODES * 3:
        async with subscribed(server, mode, [f"axon://{axon}/events"]):
            assert handle.shared.open
        await wait_for(lambda: idle(server.resources.stats()), "the hub to be idle")
        assert not handle.shared.open


@pytest.mark.parametrize("mode", MODES)
async def test_output_subscription_updates_while_growing_and_once_on_completion(backend: RunningBackend, mode: str) -> None:
    server = make_server(backend)
    async with Client(server, mode="auto") as setup:
        devbox = structured(await call_ok(setup, "create_devbox", {"name": f"subs-{mode}"}))["id"]
        started = structured(await call_ok(setup, "execute", {
            "devbox_id": devbox, "wait_seconds": 0,
            "command": "echo first; while [ ! -f ~/go ]; do sleep 0.05; done; echo second; while [ ! -f ~/end ]; do sleep 0.05; done",
        }))
    execution = started["execution_id"]
    uri = f"devbox://{devbox}/executions/{execution}/stdout"
    async with subscribed(server, mode, [uri]) as (client, updates):
        async def text() -> str:
            return (await client.read_resource(uri)).contents[0].text

        await wait_for(lambda: bool(updates.uris), "an update for the first line")
        assert (await text()).startswith("first\n")
        seen = len(updates.uris)
        await call_ok(client, "write_file", {"devbox_id": devbox, "path": "go", "contents": ""})
        await updates.until(lambda: len(updates.uris) > seen)
        await wait_for(lambda: _ends_with(text, "second\n"), "the second line")
        assert server.resources.stats().followers == 1
        seen = len(updates.uris)
        # The command now ends without printing: the completion alone sends the last update.
        await call_ok(client, "write_file", {"devbox_id": devbox, "path": "end", "contents": ""})
        await updates.until(lambda: len(updates.uris) > seen)
        await wait_for(lambda: server.resources.stats().followers == 0, "the follower to finish with the execution")
        assert await text() == "first\nsecond\n"
        assert set(updates.uris) == {uri}
    await wait_for(lambda: idle(server.resources.stats()), "the hub to be idle")


async def all_uris(client: Client) -> list[str]:
    uris: list[str] = []
    cursor = None
    while True:
        page = await client.list_resources(cursor=cursor)
        uris.extend(r.uri for r in page.resources)
        cursor = page.next_cursor
        if cursor is None:
            return uris


async def _ends_with(text: Callable[[], Awaitable[str]], suffix: str) -> bool:
    return (await text()).endswith(suffix)


@pytest.mark.parametrize("mode", MODES)
async def test_new_axon_and_new_devbox_change_the_resource_list(backend: RunningBackend, mode: str) -> None:
    server = make_server(backend)
    async with subscribed(server, mode, [], list_changes=True) as (client, updates):
        caps = client.server_capabilities
        assert caps is not None and caps.resources is not None
        assert caps.resources.subscribe is True and caps.resources.list_changed is True
        axon = structured(await call_ok(client, "create_axon", {"name": "listed"}))["id"]
        await updates.until(lambda: updates.list_changes >= 1)
        assert f"axon://{axon}/events" in await all_uris(client)
        if mode == "legacy":
            box = structured(await call_ok(client, "create_devbox", {"name": "listed"}))["id"]
            await updates.until(lambda: updates.list_changes >= 2)
            assert f"devbox://{box}" in await all_uris(client)


async def test_a_sender_coalesces_what_arrives_while_a_send_is_in_flight() -> None:
    """The coalescing rule both eras use: while one notification is being written to a slow
    client, any number of repeats collapse into one more, in first-arrival order."""
    release = anyio.Event()
    sent: list[ResourceUpdated] = []

    async def send(event: Any) -> None:
        sent.append(event)
        if len(sent) == 1:
            await release.wait()

    sender = _Sender(send, lambda coro: asyncio.get_running_loop().create_task(coro))
    a, b = ResourceUpdated(uri="a"), ResourceUpdated(uri="b")
    sender.mark(a)
    await wait_for(lambda: sent == [a], "the first send to start")
    for _ in range(100):
        sender.mark(b)
        sender.mark(a)
    release.set()
    await wait_for(lambda: sender.task is None, "the sender to drain")
    assert sent == [a, b, a]


async def test_a_sender_to_a_closed_connection_drops_its_notifications_quietly() -> None:
    """A send that fails (the client went away) ends the drain without an unhandled task error."""
    attempts: list[Any] = []

    async def send(event: Any) -> None:
        attempts.append(event)
        raise anyio.ClosedResourceError

    sender = _Sender(send, lambda coro: asyncio.get_running_loop().create_task(coro))
    sender.mark(ResourceUpdated(uri="a"))
    sender.mark(ResourceUpdated(uri="b"))
    task = sender.task
    assert task is not None
    await task  # would raise ClosedResourceError without the handling
    assert attempts == [ResourceUpdated(uri="a")] and not sender.pending and sender.task is None


@pytest.mark.parametrize("mode", MODES)
async def test_devbox_subscription_follows_status_changes_until_shutdown(backend: RunningBackend, mode: str) -> None:
    server = make_server(backend)
    async with Client(server, mode="auto") as setup:
        devbox = structured(await call_ok(setup, "create_devbox", {"name": f"watched-{mode}"}))["id"]
    uri = f"devbox://{devbox}"

    async with subscribed(server, mode, [uri]) as (client, updates):
        async def status() -> str:
            return json.loads((await client.read_resource(uri)).contents[0].text)["status"]

        assert server.resources.stats().followers == 1
        await call_ok(client, "suspend_devbox", {"devbox_id": devbox})
        await updates.until(lambda: bool(updates.uris))
        await wait_for(lambda: _is(status, "suspended"), "the devbox to be suspended")
        seen = len(updates.uris)
        await call_ok(client, "resume_devbox", {"devbox_id": devbox})
        await updates.until(lambda: len(updates.uris) > seen)
        seen = len(updates.uris)
        await call_ok(client, "shutdown_devbox", {"devbox_id": devbox})
        await updates.until(lambda: len(updates.uris) > seen)
        await wait_for(lambda: server.resources.stats().followers == 0, "the follower to stop at shutdown")
        assert await status() == "shutdown" and set(updates.uris) == {uri}


async def _is(status: Callable[[], Awaitable[str]], wanted: str) -> bool:
    return await status() == wanted


@pytest.mark.parametrize("mode", MODES)
async def test_deleting_the_axon_sends_a_last_update_and_stops_its_upstream(backend: RunningBackend, mode: str) -> None:
    server = make_server(backend)
    axon = await new_axon(backend)
    uri = f"axon://{axon}/events"
    async with subscribed(server, mode, [uri]) as (client, updates):
        assert server.resources.stats().followers == 1
        async with httpx.AsyncClient(base_url=backend.base_url,
                                     headers={"Authorization": f"Bearer {backend.api_key}"}) as http:
            (await http.delete(f"/v1/axons/{axon}")).raise_for_status()
        await updates.until(lambda: updates.uris == [uri])
        await wait_for(lambda: server.resources.stats().followers == 0, "the follower to stop")
        with pytest.raises(MCPError) as err:
            await client.read_resource(uri)
        assert err.value.error.code == -32602 and "was deleted" in err.value.error.message
    await wait_for(lambda: backend_streams(backend, axon) == 0, "the backend to serve no stream")
