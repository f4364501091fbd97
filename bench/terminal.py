"""Terminal tools benchmark: a keystroke through MCP until it shows on the rendered screen.

Run: `.venv/bin/python -m bench.terminal [--keys N]` (under a minute). It starts `devbox-mcp
local-api` as its own process (no shared GIL), creates a devbox, and measures in the same run:

- MCP: `devbox-mcp serve` over stdio, as a client runs it; one `terminal_send` per key (a letter
  typed at an idle bash prompt) with `wait_for` that letter: the call returns once bash's echo is
  drawn on the server's virtual screen. p50 and p99 of the call's round trip (target p50 ≤ 20 ms).
- Baseline: the same keys sent straight down the PTY WebSocket (the client's own `pty_attach`),
  timed to the echo's arrival: p50 and p99. The ratio is MCP over raw.

Each line is cleared (Ctrl-U) every 40 keys, outside the timing.
"""

from __future__ import annotations

import argparse
import os
import string
import sys
import tempfile
import time
from pathlib import Path

# This folder holds `mcp.py`: run as a script, it would shadow the SDK (as bench/mcp.py explains).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != _HERE]

import anyio  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

from bench.mcp import EXE, start_backend  # noqa: E402
from mcp_server.runloop import RunloopClient  # noqa: E402

LINE = 40


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def letters(n: int) -> list[str]:
    return [string.ascii_lowercase[i % 26] for i in range(n)]


async def raw_round_trips(client: RunloopClient, devbox_id: str, keys: int) -> list[float]:
    endpoint = await client.pty_endpoint(devbox_id)
    _, socket = await client.pty_attach(endpoint, "bench-raw", cols=120, rows=40)
    try:
        await socket.send(b"echo RAW-READY\r")
        seen = b""
        while b"RAW-READY\r\n" not in seen:
            seen += await socket.receive() or b""
        await anyio.sleep(0.5)  # let the prompt settle (not timed)
        times = []
        for i, key in enumerate(letters(keys)):
            if i and i % LINE == 0:
                await socket.send(b"\x15")  # Ctrl-U: a fresh line, untimed
                await socket.receive()
            started = time.perf_counter()
            await socket.send(key.encode())
            echoed = b""
            while key.encode() not in echoed:
                echoed += await socket.receive() or b""
            times.append(time.perf_counter() - started)
        return times
    finally:
        await client.pty_control(endpoint, "bench-raw", "close")
        await socket.aclose()


async def mcp_round_trips(url: str, key: str, devbox_id: str, keys: int) -> list[float]:
    env = {**os.environ, "RUNLOOP_BASE_URL": url, "RUNLOOP_API_KEY": key}
    params = StdioServerParameters(command=EXE, args=["serve"], env=env)
    async with Client(stdio_client(params, errlog=sys.stderr), mode="auto") as mcp:
        opened = await mcp.call_tool("open_terminal", {"devbox_id": devbox_id})
        session = opened.structured_content["session"]
        await mcp.call_tool("terminal_send", {"session": session, "text": "echo MCP-READY\r", "wait_for": "^MCP-READY"})
        times = []
        for i, letter in enumerate(letters(keys)):
            if i and i % LINE == 0:
                await mcp.call_tool("terminal_send", {"session": session, "text": "\x15", "wait_for": r"\$ $"})
            started = time.perf_counter()
            result = await mcp.call_tool("terminal_send", {"session": session, "text": letter, "wait_for": letter})
            times.append(time.perf_counter() - started)
            status = (result.structured_content or {}).get("status", "")
            if not status.startswith("matched"):
                raise SystemExit(f"key {letter!r} did not show on the screen: {status}")
        await mcp.call_tool("close_terminal", {"session": session})
        return times


async def main(keys: int) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-terminal-{os.getpid()}-") as tmp:
        proc, url, key = start_backend(Path(tmp))
        try:
            async with RunloopClient(url, key) as client:
                devbox = await client.create_devbox(name="bench-terminal")
                await client.wait_for_devbox_status(devbox.id, ["running"], timeout_seconds=120)
                raw = await raw_round_trips(client, devbox.id, keys)
                through = await mcp_round_trips(url, key, devbox.id, keys)
                await client.shutdown_devbox(devbox.id)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report(keys, raw, through)


def report(keys: int, raw: list[float], through: list[float]) -> None:
    ms = 1000
    raw50, raw99 = percentile(raw, 0.5) * ms, percentile(raw, 0.99) * ms
    mcp50, mcp99 = percentile(through, 0.5) * ms, percentile(through, 0.99) * ms
    print(f"keystroke -> echo, {keys} keys; load {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"  raw WebSocket             p50 {raw50:6.2f} ms   p99 {raw99:6.2f} ms")
    print(f"  MCP (stdio) -> screen     p50 {mcp50:6.2f} ms   p99 {mcp99:6.2f} ms   (target p50 <= 20 ms)")
    print(f"  ratio MCP / raw           p50 {mcp50 / raw50:6.2f}x    p99 {mcp99 / raw99:6.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=300)
    anyio.run(main, parser.parse_args().keys)
