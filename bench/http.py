"""Benchmark of MCP over streamable HTTP against the same load over stdio, measured in one run.

Load: 20 concurrent clients each making 50 `execute` calls of `true` in one devbox.
- HTTP: `devbox-mcp serve --transport http` (bearer auth on, as deployed); 20 separate MCP
  clients (sessions), each on its own HTTP connection pool.
- stdio: `devbox-mcp serve` as a subprocess; the same 20 × 50 calls, 20 in flight at a time over
  its single connection (a stdio server has exactly one client).
Both talk to the embedded backend run as its own process. Prints throughput, p50, p99, errors,
and the HTTP/stdio p50 ratio (target ≤ 1.5, zero errors).

Run: .venv/bin/python -m bench.http [--clients 20] [--calls 50] [--mode auto|legacy]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from bench.mcp import EXE, percentile, start_backend
from mcp_server.runloop import RunloopClient

TOKEN = "bench-http-token-0123456789abcdef"


@dataclass
class Result:
    name: str
    latencies: list[float]
    errors: int
    wall: float
    client_cpu: float  # CPU seconds of this (client) process during the measured calls

    def line(self) -> str:
        total = len(self.latencies) + self.errors
        return (
            f"{self.name:6} {total} calls in {self.wall:6.2f} s = {len(self.latencies) / self.wall:7.1f} calls/s   "
            f"p50 {percentile(self.latencies, 0.5) * 1000:7.1f} ms   p99 {percentile(self.latencies, 0.99) * 1000:7.1f} ms   "
            f"errors {self.errors}   client CPU {self.client_cpu:5.1f} s"
        )


async def run_calls(client: Client, devbox_id: str, calls: int, latencies: list[float], errors: list[str]) -> None:
    for _ in range(calls):
        start = time.perf_counter()
        try:
            result = await client.call_tool("execute", {"devbox_id": devbox_id, "command": "true"})
            if result.is_error or (result.structured_content or {}).get("exit_status") != 0:
                errors.append(result.content[0].text if result.content else "error")
                continue
        except Exception as exc:  # counted, reported below
            errors.append(repr(exc))
            continue
        latencies.append(time.perf_counter() - start)


async def bench_http(url: str, devbox_id: str, clients: int, calls: int, mode: str) -> Result:
    latencies: list[float] = []
    errors: list[str] = []

    async def one_client() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30, read=120))
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            await client.call_tool("execute", {"devbox_id": devbox_id, "command": "true"})  # warm-up
            ready.append(1)
            if len(ready) == clients:
                all_ready.set()
            await go.wait()
            await run_calls(client, devbox_id, calls, latencies, errors)

    ready: list[int] = []
    all_ready, go = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(one_client)
        await all_ready.wait()
        start, cpu = time.perf_counter(), time.process_time()
        go.set()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    for error in errors[:3]:
        print("  http error:", error[:200])
    return Result("http", latencies, len(errors), wall, cpu)


async def bench_stdio(env: dict[str, str], data_dir: Path, devbox_id: str, clients: int, calls: int, mode: str) -> Result:
    latencies: list[float] = []
    errors: list[str] = []
    params = StdioServerParameters(command=EXE, args=["serve", "--data-dir", str(data_dir)], env=env)
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230 - /dev/null never blocks
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            await client.call_tool("execute", {"devbox_id": devbox_id, "command": "true"})  # warm-up
            start, cpu = time.perf_counter(), time.process_time()
            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(run_calls, client, devbox_id, calls, latencies, errors)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    for error in errors[:3]:
        print("  stdio error:", error[:200])
    return Result("stdio", latencies, len(errors), wall, cpu)


def start_http_server(env: dict[str, str], data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [EXE, "serve", "--transport", "http", "--port", "0", "--data-dir", str(data_dir)],
            env={**env, "DEVBOX_MCP_TOKEN": TOKEN},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"streamable HTTP at (http://\S+/mcp)", log.read_text(errors="replace"))
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"devbox-mcp serve --transport http did not start:\n{log.read_text(errors='replace')}")


async def bench(url: str, key: str, args: argparse.Namespace, workdir: Path) -> None:
    env = {**os.environ, "RUNLOOP_API_KEY": key, "RUNLOOP_BASE_URL": url}
    async with RunloopClient(url, key) as runloop:
        box = await runloop.create_devbox(name="bench-http")
        devbox_id = box.id
        server, mcp_url = start_http_server(env, workdir / "http-data", workdir / "http.stderr")
        try:
            http = await bench_http(mcp_url, devbox_id, args.clients, args.calls, args.mode)
        finally:
            server.terminate()
            server.wait(timeout=15)
        stdio = await bench_stdio(env, workdir / "stdio-data", devbox_id, args.clients, args.calls, args.mode)
        await runloop.shutdown_devbox(devbox_id)
    print(f"{args.clients} clients x {args.calls} execute('true'), client mode {args.mode}:")
    print(" ", http.line())
    print(" ", stdio.line())
    ratio = percentile(http.latencies, 0.5) / percentile(stdio.latencies, 0.5)
    verdict = "ok" if ratio <= 1.5 and http.errors == 0 and stdio.errors == 0 else "MISSED"
    print(f"  HTTP p50 / stdio p50 = {ratio:.2f} (target <= 1.5, zero errors): {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--mode", default="auto", choices=["auto", "legacy"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        workdir = Path(tmp)
        backend, url, key = start_backend(workdir / "backend")
        try:
            anyio.run(bench, url, key, args, workdir)
        finally:
            backend.terminate()
            backend.wait(timeout=15)


if __name__ == "__main__":
    main()
