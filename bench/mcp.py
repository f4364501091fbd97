"""Benchmark of the MCP layer over stdio, against the embedded backend run as its own process.

Prints, measured in the same run:
- `execute` of `true` through MCP over stdio vs the same work through the Runloop client
  directly (execute, follow both streams to their end, read the exit status): medians and
  ratio (target ≤ 1.5);
- output-chunk → progress-notification latency for a command printing a timestamped line every
  100 ms: p50 and p99 (targets ≤ 50 ms and ≤ 150 ms);
- 50 concurrent `sleep 1` executions through one MCP session: wall time (target ≤ 3 s).

Run: .venv/bin/python -m bench.mcp [--runs N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the `mcp` package: run as a script, its folder comes first on sys.path
# and would shadow the SDK. Drop that folder before importing it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != _HERE]

import anyio  # noqa: E402
import httpx  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

from mcp_server.runloop import RunloopClient  # noqa: E402

EXE = str(Path(sys.executable).with_name("devbox-mcp"))
TICKS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_backend(data_dir: Path) -> tuple[subprocess.Popen, str, str]:
    """`devbox-mcp local-api` in its own process, so neither side shares a GIL with it."""
    key = "bench_" + secrets.token_urlsafe(16)
    port = free_port()
    env = {**os.environ, "DEVBOX_LOCAL_API_KEY": key}
    proc = subprocess.Popen(
        [EXE, "local-api", "--port", str(port), "--data-dir", str(data_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url, key
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the embedded backend did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def direct_execute(client: RunloopClient, devbox_id: str, command: str) -> int | None:
    """What the execute tool does, minus MCP: start, read both streams to the end, exit status."""
    view = await client.execute(devbox_id, command, optimistic_timeout=0)

    async def drain(stream: str) -> None:
        async for _ in client.stream_output(devbox_id, view.execution_id, stream):
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, "stdout")
        tg.start_soon(drain, "stderr")
    done = await client.wait_for_execution(devbox_id, view.execution_id, timeout_seconds=30)
    return done.exit_status


async def bench(url: str, key: str, runs: int, errlog) -> None:  # noqa: ANN001 - a text file
    async with RunloopClient(url, key) as client:
        box = await client.create_devbox(name="bench-mcp")
        box = await client.wait_for_devbox_status(box.id, ["running", "failure"], timeout_seconds=60)
        devbox = box.id

        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLOOP_")}
        env.update(RUNLOOP_BASE_URL=url, RUNLOOP_API_KEY=key)
        params = StdioServerParameters(command=EXE, args=["serve"], env=env)
        async with Client(stdio_client(params, errlog=errlog), mode="auto") as mcp:
            # 1. execute `true`: MCP over stdio vs the client directly (interleaved, after warm-up).
            for _ in range(3):
                await mcp.call_tool("execute", {"devbox_id": devbox, "command": "true"})
                await direct_execute(client, devbox, "true")
            via_mcp, direct = [], []
            for _ in range(runs):
                start = time.perf_counter()
                result = await mcp.call_tool("execute", {"devbox_id": devbox, "command": "true"})
                via_mcp.append(time.perf_counter() - start)
                assert not result.is_error and result.structured_content["exit_status"] == 0
                start = time.perf_counter()
                assert await direct_execute(client, devbox, "true") == 0
                direct.append(time.perf_counter() - start)
            m, d = statistics.median(via_mcp), statistics.median(direct)
            print(f"execute `true` median: MCP over stdio {m * 1e3:.1f} ms, client directly {d * 1e3:.1f} ms, "
                  f"ratio {m / d:.2f} (target ≤ 1.5)")

            # 2. chunk → progress latency: each line carries the time it was printed.
            latencies: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                now = time.time()
                for line in (message or "").splitlines():
                    if line.startswith("T "):
                        latencies.append(now - float(line[2:]))

            command = f"for i in $(seq 1 {TICKS}); do echo \"T $(date +%s.%N)\"; sleep 0.1; done"
            for _ in range(2):
                await mcp.call_tool("execute", {"devbox_id": devbox, "command": command},
                                    progress_callback=on_progress)
            print(f"chunk → progress latency over {len(latencies)} lines: p50 {percentile(latencies, 0.5) * 1e3:.1f} ms, "
                  f"p99 {percentile(latencies, 0.99) * 1e3:.1f} ms (targets ≤ 50 / ≤ 150 ms)")

            # 3. 50 concurrent `sleep 1` through one session.
            walls = []
            for _ in range(2):
                start = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for _ in range(50):
                        tg.start_soon(mcp.call_tool, "execute", {"devbox_id": devbox, "command": "sleep 1"})
                walls.append(time.perf_counter() - start)
            print(f"50 concurrent `sleep 1` through one MCP session: wall {statistics.median(walls):.2f} s "
                  f"(median of {len(walls)}; target ≤ 3 s)")
        await client.shutdown_devbox(devbox)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        proc, url, key = start_backend(Path(tmp))
        try:
            with open(os.devnull, "w") as errlog:
                anyio.run(bench, url, key, args.runs, errlog)
        finally:
            proc.terminate()
            proc.wait(timeout=15)


if __name__ == "__main__":
    main()
