"""Resumable streams over a network that drops: execution output and axon subscriptions.

The fault proxy cuts every stream connection after a few KB; the client must reconnect at the
byte count (or sequence) it actually received, so the output matches byte for byte, multi-byte
UTF-8 included, and no axon event is lost or repeated.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anyio
import pytest
from support.faultproxy import FaultProxy, running_proxy
from support.runloop_client import FAST, client_for

from mcp_server.local.server import start_in_thread
from mcp_server.runloop import (
    Authentication,
    AxonEventView,
    NotFound,
    OutputChunk,
    RetryPolicy,
    StreamError,
)

pytestmark = pytest.mark.anyio

BATCHES = 60
STDOUT_LINES = BATCHES * 50
STDERR_LINES = BATCHES * 10
# Output arrives live in ~60 small bursts, so the stream is many events the proxy can cut between.
COMMAND = (
    f"for b in $(seq 0 {BATCHES - 1}); do "
    "for i in $(seq $((b*50+1)) $((b*50+50))); do printf 'line %05d héllo ✓ 日本語 🚀\\n' $i; done; "
    "for i in $(seq $((b*10+1)) $((b*10+10))); do printf 'err %04d ✗\\n' $i >&2; done; "
    "sleep 0.03; done"
)
EXPECTED_STDOUT = "".join(f"line {i:05d} héllo ✓ 日本語 🚀\n" for i in range(1, STDOUT_LINES + 1))
EXPECTED_STDERR = "".join(f"err {i:04d} ✗\n" for i in range(1, STDERR_LINES + 1))


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def devbox_id(backend) -> AsyncIterator[str]:  # noqa: ANN001
    async with client_for(backend.base_url, backend.api_key) as c:
        view = await c.create_devbox(name="stream-tests")
        view = await c.wait_for_devbox_status(view.id, ["running", "failure", "shutdown"], timeout_seconds=60)
        assert view.status == "running", view
        yield view.id
        await c.shutdown_devbox(view.id)



async def _collect(stream: AsyncIterator[OutputChunk]) -> list[OutputChunk]:
    return [chunk async for chunk in stream]


async def test_output_survives_cuts_byte_for_byte(fault_proxy: FaultProxy, devbox_id: str, backend) -> None:  # noqa: ANN001
    fault_proxy.cut(r"/stream_std(out|err)_updates", after_bytes=2500, after_first_event=True)
    async with client_for(fault_proxy.url, backend.api_key) as client:
        started = await client.execute_async(devbox_id, COMMAND)
        results: dict[str, list[OutputChunk]] = {}

        async def follow(name: str) -> None:
            results[name] = await _collect(client.stream_output(devbox_id, started.execution_id, name))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow, "stdout")
                tg.start_soon(follow, "stderr")
    out = "".join(c.text for c in results["stdout"])
    err = "".join(c.text for c in results["stderr"])
    assert out.encode() == EXPECTED_STDOUT.encode()
    assert err.encode() == EXPECTED_STDERR.encode()
    assert results["stdout"][-1].offset == len(EXPECTED_STDOUT.encode())
    assert results["stderr"][-1].offset == len(EXPECTED_STDERR.encode())

    # The cuts really happened, and each reconnect asked for exactly the bytes received so far.
    connections = fault_proxy.seen(r"/stream_stdout_updates")
    assert len(connections) >= 5
    asked = [int(re.search(r"offset=(\d+)", c.target).group(1)) for c in connections]
    boundaries = {0} | {c.offset for c in results["stdout"]}
    assert asked[0] == 0 and asked == sorted(asked) and set(asked) <= boundaries


async def test_output_from_an_offset_is_the_rest(devbox_id: str, backend) -> None:  # noqa: ANN001
    async with client_for(backend.base_url, backend.api_key) as client:
        started = await client.execute_async(devbox_id, COMMAND.replace("sleep 0.03; ", ""))
        await client.wait_for_execution(devbox_id, started.execution_id, timeout_seconds=60)
        middle = len(EXPECTED_STDOUT[:1234].encode())
        chunks = await _collect(client.stream_output(devbox_id, started.execution_id, "stdout", offset=middle))
    assert "".join(c.text for c in chunks) == EXPECTED_STDOUT[1234:]
    assert chunks[-1].offset == len(EXPECTED_STDOUT.encode())


async def test_output_resumes_after_408_and_5xx_answers(fault_proxy: FaultProxy, devbox_id: str, backend) -> None:  # noqa: ANN001
    fault_proxy.fail(r"/stream_stdout_updates", status=408, times=1)
    fault_proxy.fail(r"/stream_stdout_updates", status=503, times=1, retry_after=0)
    async with client_for(fault_proxy.url, backend.api_key) as client:
        started = await client.execute_async(devbox_id, "printf 'a\\nb\\n'")
        with anyio.fail_after(30):
            chunks = await _collect(client.stream_output(devbox_id, started.execution_id))
    assert "".join(c.text for c in chunks) == "a\nb\n"
    assert len(fault_proxy.seen(r"/stream_stdout_updates")) == 3


async def test_output_stream_gives_up_after_bounded_reconnects(fault_proxy: FaultProxy, devbox_id: str, backend) -> None:  # noqa: ANN001
    fault_proxy.fail(r"/stream_stdout_updates", status=503, times=None, retry_after=0)
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    async with client_for(fault_proxy.url, backend.api_key, policy) as client:
        started = await client.execute_async(devbox_id, "true")
        with pytest.raises(StreamError) as info:
            await _collect(client.stream_output(devbox_id, started.execution_id))
    assert "3 times" in str(info.value)
    assert len(fault_proxy.seen(r"/stream_stdout_updates")) == 3


async def test_output_of_an_unknown_execution_is_not_found_at_once(fault_proxy: FaultProxy, devbox_id: str, backend) -> None:  # noqa: ANN001
    async with client_for(fault_proxy.url, backend.api_key) as client:
        with pytest.raises(NotFound):
            await _collect(client.stream_output(devbox_id, "exe_missing"))
    assert len(fault_proxy.seen(r"/stream_stdout_updates")) == 1, "a permanent error is not retried"


# --- axon subscriptions ----------------------------------------------------------------------


async def _take(stream: AsyncIterator[AxonEventView], n: int) -> list[AxonEventView]:
    got: list[AxonEventView] = []
    with anyio.fail_after(30):
        async for event in stream:
            got.append(event)
            if len(got) == n:
                break
    return got


async def test_subscription_resumes_after_cuts_without_loss_or_repeat(fault_proxy: FaultProxy, backend) -> None:  # noqa: ANN001
    fault_proxy.cut(r"/subscribe/sse", after_bytes=1500, after_first_event=True)
    async with client_for(fault_proxy.url, backend.api_key) as client:
        axon = await client.create_axon()
        for i in range(1, 41):
            await client.publish(axon.id, event_type="tick", payload={"i": i, "text": "✓" * 20})
        stream = client.subscribe_axon(axon.id)
        first = await _take(stream, 40)
        # Live events published while subscribed arrive too, after more cuts.
        for i in range(41, 51):
            await client.publish(axon.id, event_type="tick", payload={"i": i, "text": "✓" * 20})
        rest = await _take(stream, 10)
        await stream.aclose()
    assert [e.sequence for e in first + rest] == list(range(1, 51))
    assert [e.payload_json()["i"] for e in first + rest] == list(range(1, 51))
    assert len(fault_proxy.seen(r"/subscribe/sse")) > 5
    resumed = [c.target for c in fault_proxy.seen(r"/subscribe/sse")][1:]
    assert all("after_sequence=" in t for t in resumed)


async def test_subscription_resumes_after_408_and_5xx(fault_proxy: FaultProxy, backend) -> None:  # noqa: ANN001
    async with client_for(fault_proxy.url, backend.api_key) as client:
        axon = await client.create_axon()
        await client.publish(axon.id, event_type="e", payload=1)
        fault_proxy.fail(r"/subscribe/sse", status=408, times=1, message="idle")
        fault_proxy.fail(r"/subscribe/sse", status=502, times=1, retry_after=0)
        stream = client.subscribe_axon(axon.id)
        got = await _take(stream, 1)
        await client.publish(axon.id, event_type="e", payload=2)
        got += await _take(stream, 1)
        await stream.aclose()
    assert [e.sequence for e in got] == [1, 2]
    assert len(fault_proxy.seen(r"/subscribe/sse")) == 3


async def test_subscription_outlives_the_servers_idle_closes(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A backend that ends idle subscriptions after 0.2 s with `event: error` 408: the client
    re-subscribes after the last sequence again and again, and still gets the next event."""
    monkeypatch.setenv("DEVBOX_AXON_SSE_IDLE_SECONDS", "0.2")
    quick = start_in_thread(tmp_path)
    try:
        with running_proxy(quick.base_url) as proxy:
            async with client_for(proxy.url, quick.api_key) as client:
                axon = await client.create_axon()
                await client.publish(axon.id, event_type="e", payload="first")
                send, receive = anyio.create_memory_object_stream[AxonEventView](10)

                async def pump() -> None:
                    async for event in client.subscribe_axon(axon.id):
                        await send.send(event)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump)
                    with anyio.fail_after(30):
                        first = await receive.receive()
                        # More idle closes than the retry policy's max_attempts, all survived:
                        await anyio.to_thread.run_sync(proxy.wait_seen, r"/subscribe/sse", FAST.max_attempts + 3)
                        await client.publish(axon.id, event_type="e", payload="second")
                        second = await receive.receive()
                    tg.cancel_scope.cancel()
        resumed = [c.target for c in proxy.seen(r"/subscribe/sse")][1:]
    finally:
        quick.stop()
    assert (first.sequence, second.sequence) == (1, 2)
    assert all(t.endswith("after_sequence=1") for t in resumed)


async def test_subscription_after_a_sequence(backend) -> None:  # noqa: ANN001
    async with client_for(backend.base_url, backend.api_key) as client:
        axon = await client.create_axon()
        for i in range(5):
            await client.publish(axon.id, event_type="e", payload=i)
        stream = client.subscribe_axon(axon.id, after_sequence=3)
        got = await _take(stream, 2)
        await stream.aclose()
    assert [e.sequence for e in got] == [4, 5]


async def test_subscription_permanent_errors_raise(backend) -> None:  # noqa: ANN001
    async with client_for(backend.base_url, backend.api_key) as client:
        with pytest.raises(NotFound):
            await _take(client.subscribe_axon("axn_missing"), 1)
    async with client_for(backend.base_url, "dbxlocal_wrong_key_for_this_test") as client:
        with pytest.raises(Authentication):
            await _take(client.subscribe_axon("axn_missing"), 1)

