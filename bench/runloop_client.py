"""Benchmark of the Runloop client against the embedded backend, with the official SDK as baseline.

Prints medians measured in the same run:
- `get_devbox` latency: our client vs the official async SDK (ratio);
- `execute` of `true` to completion: ours vs the SDK (ratio);
- reading 4 MiB of command output with `stream_output`: direct, and through the fault proxy
  cutting each connection 64 KiB after its first event (cost of resuming).

Run: .venv/bin/python -m bench.runloop_client
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from runloop_api_client import AsyncRunloop  # noqa: E402
from support.faultproxy import running_proxy  # noqa: E402

from mcp_server.local.server import start_in_thread  # noqa: E402
from mcp_server.runloop import RunloopClient  # noqa: E402

OUTPUT_MIB = 4
logging.getLogger("asyncio").setLevel(logging.ERROR)  # the backend logs writes to proxy-cut sockets


async def timed(fn, n: int) -> float:  # noqa: ANN001
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def main() -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-client-"))
    backend = start_in_thread(data)
    ours = RunloopClient(backend.base_url, backend.api_key)
    sdk = AsyncRunloop(bearer_token=backend.api_key, base_url=backend.base_url)
    try:
        box = await ours.create_devbox(name="bench")
        box = await ours.wait_for_devbox_status(box.id, ["running", "failure"], timeout_seconds=60)

        ours_get = await timed(lambda: ours.get_devbox(box.id), 200)
        sdk_get = await timed(lambda: sdk.devboxes.retrieve(box.id), 200)
        print(f"get_devbox median: ours {ours_get * 1e3:.2f} ms, sdk {sdk_get * 1e3:.2f} ms, ratio {ours_get / sdk_get:.2f}")

        async def ours_exec() -> None:
            view = await ours.execute(box.id, "true", optimistic_timeout=20)
            if not view.completed:
                await ours.wait_for_execution(box.id, view.execution_id)

        async def sdk_exec() -> None:
            await sdk.devboxes.execute_and_await_completion(box.id, command="true")

        ours_ex = await timed(ours_exec, 30)
        sdk_ex = await timed(sdk_exec, 30)
        print(f"execute true median: ours {ours_ex * 1e3:.2f} ms, sdk {sdk_ex * 1e3:.2f} ms, ratio {ours_ex / sdk_ex:.2f}")

        command = f"head -c {OUTPUT_MIB * 1024 * 1024} /dev/zero | tr '\\0' 'x'"
        done = await ours.execute_async(box.id, command)
        await ours.wait_for_execution(box.id, done.execution_id)

        async def read_all(client: RunloopClient) -> None:
            total = 0
            async for chunk in client.stream_output(box.id, done.execution_id):
                total = chunk.offset
            assert total == OUTPUT_MIB * 1024 * 1024, total

        direct = await timed(lambda: read_all(ours), 5)
        with running_proxy(backend.base_url) as proxy:
            proxy.cut(r"/stream_stdout_updates", after_bytes=64 * 1024, after_first_event=True)
            async with RunloopClient(proxy.url, backend.api_key) as via:
                cut = await timed(lambda: read_all(via), 5)
        print(
            f"stream {OUTPUT_MIB} MiB median: direct {direct * 1e3:.0f} ms ({OUTPUT_MIB / direct:.1f} MiB/s), "
            f"cut every 64 KiB {cut * 1e3:.0f} ms ({OUTPUT_MIB / cut:.1f} MiB/s), ratio {cut / direct:.2f}"
        )
        await ours.shutdown_devbox(box.id)
    finally:
        await ours.aclose()
        await sdk.close()
        backend.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
