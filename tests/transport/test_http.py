"""MCP over streamable HTTP with real clients: both eras, progress, cancellation, resumability, replicas."""

from __future__ import annotations

import anyio
import httpx2
import pytest
from mcp import MCPError
from support.http_serving import Probe, http_client, serve_small

from mcp_server.transport.http_app import HttpOptions

TOKEN = "test-token-123"
pytestmark = pytest.mark.anyio

MODES = ["legacy", "auto"]


@pytest.mark.parametrize("mode", MODES)
async def test_call_with_progress_in_both_eras(mode: str) -> None:
    with serve_small(HttpOptions(token=TOKEN)) as url:
        async with http_client(url, TOKEN, mode) as client:
            expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
            assert client.protocol_version == expected
            seen: list[tuple[float, str | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append((progress, message))

            result = await client.call_tool("steps", {"count": 3}, progress_callback=on_progress)
            assert not result.is_error
            assert result.content[0].text == "did 3"
            assert seen == [(1, "step 1"), (2, "step 2"), (3, "step 3")]


@pytest.mark.parametrize(("mode", "stateless"), [("legacy", False), ("auto", False), ("auto", True)])
async def test_abandoned_call_cancels_the_tool(mode: str, stateless: bool) -> None:
    probe = Probe()
    with serve_small(HttpOptions(token=TOKEN, stateless=stateless), probe) as url:
        async with http_client(url, TOKEN, mode) as client:
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def call() -> None:
                    with scope:
                        await client.call_tool("hang", {})

                tg.start_soon(call)
                await anyio.to_thread.run_sync(probe.started.wait, 10)
                scope.cancel()
            assert await anyio.to_thread.run_sync(probe.cancelled.wait, 10), "the server tool was not cancelled"
            # the connection stays usable after a cancel
            assert (await client.call_tool("echo", {"text": "still here"})).content[0].text == "still here"


async def test_handshake_era_stream_resumes_with_last_event_id() -> None:
    with serve_small(HttpOptions(token=TOKEN, retry_interval_ms=200)) as url:
        async with http_client(url, TOKEN, "legacy") as client:
            seen: list[str | None] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(message)

            result = await client.call_tool("drop_stream", {"label": "x"}, progress_callback=on_progress)
            assert result.content[0].text == "resumed"
            assert seen == ["x before", "x during", "x after"]


async def test_two_sessions_resume_only_their_own_events() -> None:
    """Sessions share JSON-RPC ids (hence SDK stream ids); a resume must not leak the other's events."""
    with serve_small(HttpOptions(token=TOKEN, retry_interval_ms=200)) as url:
        async with http_client(url, TOKEN, "legacy") as one, http_client(url, TOKEN, "legacy") as two:
            seen: dict[str, list[str | None]] = {"one": [], "two": []}

            def recorder(name: str):
                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen[name].append(message)

                return on_progress

            results: dict[str, str] = {}

            async def run(name: str, client) -> None:
                result = await client.call_tool("drop_stream", {"label": name}, progress_callback=recorder(name))
                results[name] = result.content[0].text

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "one", one)
                tg.start_soon(run, "two", two)
            assert results == {"one": "resumed", "two": "resumed"}
            assert seen == {name: [f"{name} before", f"{name} during", f"{name} after"] for name in ("one", "two")}


def _replicas(count: int, stateless: bool):
    import contextlib

    stack = contextlib.ExitStack()
    urls = [stack.enter_context(serve_small(HttpOptions(token=TOKEN, stateless=stateless))) for _ in range(count)]
    return stack, urls


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next replica, as a load balancer without sticky sessions does."""

    def __init__(self, urls: list[str]) -> None:
        self._targets = [httpx2.URL(u) for u in urls]
        self._next = 0
        self._inner = httpx2.AsyncHTTPTransport()
        self.hits = [0] * len(urls)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        index = self._next % len(self._targets)
        self._next += 1
        self.hits[index] += 1
        target = self._targets[index]
        request.url = request.url.copy_with(host=target.host, port=target.port)
        request.headers["host"] = f"{target.host}:{target.port}"
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("mode", MODES)
async def test_stateless_replicas_serve_any_request(mode: str) -> None:
    stack, urls = _replicas(2, stateless=True)
    with stack:
        balancer = RoundRobin(urls)
        async with http_client(urls[0], TOKEN, mode, http_kwargs={"transport": balancer}) as client:
            for i in range(4):
                assert (await client.call_tool("echo", {"text": f"n{i}"})).content[0].text == f"n{i}"
            seen: list[str | None] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(message)

            await client.call_tool("steps", {"count": 2}, progress_callback=on_progress)
            assert seen == ["step 1", "step 2"]
        assert min(balancer.hits) >= 2, balancer.hits


async def test_stateful_replicas_need_sticky_sessions() -> None:
    """The contrast that motivates --stateless: a handshake session lives on one replica only."""
    stack, urls = _replicas(2, stateless=False)
    with stack:
        balancer = RoundRobin(urls)
        async with http_client(urls[0], TOKEN, "legacy", http_kwargs={"transport": balancer}) as client:
            with pytest.raises(MCPError):
                for i in range(4):
                    await client.call_tool("echo", {"text": f"n{i}"})


async def test_event_store_stays_bounded_and_forgets_evicted_ids() -> None:
    from mcp.types import JSONRPCNotification

    from mcp_server.transport.event_store import BoundedEventStore, SessionScope, session_scope

    store = BoundedEventStore(max_events=5, max_bytes=10_000)
    scope = SessionScope("s1")
    token = session_scope.set(scope)
    try:
        message = JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params={"pad": "x" * 100})
        ids = [await store.store_event("7", message) for _ in range(20)]
        assert store.event_count == 5
        replayed: list[str] = []

        async def collect(event) -> None:
            replayed.append(event.event_id)

        assert await store.replay_events_after(ids[0], collect) is None  # evicted: nothing to resume from
        assert await store.replay_events_after(ids[-3], collect) == "7"
        assert replayed == ids[-2:]
        big = JSONRPCNotification(jsonrpc="2.0", method="x", params={"pad": "y" * 4000})
        for _ in range(5):
            await store.store_event("8", big)
        assert store.stored_bytes <= 10_000 and store.event_count < 5
    finally:
        session_scope.reset(token)
