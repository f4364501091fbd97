"""Speed of a quick `execute` (issue 16), each figure against a baseline measured in the same run.

Prints:
- `execute true` through MCP over stdio (`devbox-mcp serve`, sandboxed) vs mcp-shell-server 1.1.14
  (unsandboxed, installed from PyPI into this bench's own venv `.bench-peers/`), both driven by the
  MCP SDK's client, interleaved: medians and ratio (target ≤ 1.2); and the streamed path
  (`DEVBOX_MCP_FAST_WINDOW=0`, the path every command took before) for reference;
- API requests per fast `execute` (counted through a proxy; target 1), and `execute true`
  through a proxy adding 50 ms to each request vs one bare request through it (target ≤ 1.3);
- a longer command's first output line as a progress notification, from the call's start
  (target ≤ 10 ms), split at the time the command printed it (before: starting it; after: ours);
- the load of the machine (`/proc/loadavg`), which other work on it inflates every figure with.

Run: .venv/bin/python -m bench.speed [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from bench.mcp import EXE, start_backend
from mcp_server.runloop import RunloopClient
from tests.support.faultproxy import running_proxy

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".bench-peers"
PEER = "mcp-shell-server==1.1.14"
DELAY = 0.05


def peer_server() -> Path:
    """mcp-shell-server's executable, installed into the bench's own venv on first use."""
    exe = PEERS / "bin" / "mcp-shell-server"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run([str(PEERS / "bin" / "pip"), "install", "--quiet", PEER], check=True)
    return exe


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


OVERRIDES: dict[str, str] = {}  # DEVBOX_MCP_* settings for our servers (--setting NAME=VALUE)


def ours(url: str, key: str, errlog, **env: str) -> Client:  # noqa: ANN001 - a text file
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLOOP_", "DEVBOX_MCP_"))} | OVERRIDES
    params = StdioServerParameters(command=EXE, args=["serve"], env={**base, "RUNLOOP_BASE_URL": url, "RUNLOOP_API_KEY": key, **env})
    return Client(stdio_client(params, errlog=errlog), mode="auto")


async def timed_call(client: Client, tool: str, args: dict, check) -> float:  # noqa: ANN001
    start = time.perf_counter()
    result = await client.call_tool(tool, args)
    elapsed = time.perf_counter() - start
    assert not result.is_error and check(result), result
    return elapsed


def exit_zero(result) -> bool:  # noqa: ANN001
    return result.structured_content["exit_status"] == 0


async def bench(url: str, key: str, runs: int, errlog) -> None:  # noqa: ANN001
    async with RunloopClient(url, key) as api:
        box = await api.create_devbox(name="bench-speed")
        box = await api.wait_for_devbox_status(box.id, ["running", "failure"], timeout_seconds=60)
        devbox = box.id
        true = {"devbox_id": devbox, "command": "true"}
        peer_env = {"ALLOW_COMMANDS": "true", "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
        peer = Client(stdio_client(StdioServerParameters(command=str(peer_server()), env=peer_env), errlog=errlog), mode="auto")
        peer_args = {"command": ["true"], "directory": "/tmp"}

        # 1. `true` to an exit code: ours (fast path), ours (streamed path), mcp-shell-server; interleaved.
        async with AsyncExitStack() as stack:
            fast = await stack.enter_async_context(ours(url, key, errlog))
            streamed = await stack.enter_async_context(ours(url, key, errlog, DEVBOX_MCP_FAST_WINDOW="0"))
            shell = await stack.enter_async_context(peer)
            times: dict[str, list[float]] = {"fast": [], "streamed": [], "peer": []}
            for i in range(runs + 3):
                sample = {
                    "fast": await timed_call(fast, "execute", true, exit_zero),
                    "streamed": await timed_call(streamed, "execute", true, exit_zero),
                    "peer": await timed_call(shell, "shell_execute", peer_args, lambda r: True),
                }
                if i >= 3:  # after warm-up
                    for name, value in sample.items():
                        times[name].append(value)
        med = {name: statistics.median(values) for name, values in times.items()}
        print(f"execute `true` over stdio, median of {runs}: devbox-mcp {ms(med['fast'])} (streamed path "
              f"{ms(med['streamed'])}), mcp-shell-server {ms(med['peer'])}: ratio {med['fast'] / med['peer']:.2f} "
              f"(target ≤ 1.2); load {loadavg()}")

        # 2. Requests per fast execute, and a quick command over a slow network.
        with running_proxy(url) as proxy:
            async with ours(proxy.url, key, errlog) as slow:
                await timed_call(slow, "execute", true, exit_zero)  # learns the backend's sub-second holds
                counts = []
                for command in ("true", "echo hi", "ls /"):
                    with proxy.counting() as made:
                        await timed_call(slow, "execute", {"devbox_id": devbox, "command": command}, exit_zero)
                    counts.append(f"`{command}` {len(made)}")
                print(f"API requests per fast execute: {', '.join(counts)} (target 1)")
                proxy.delay(r"", seconds=DELAY, times=None)
                bare, calls = [], []
                async with httpx.AsyncClient(base_url=proxy.url, headers={"Authorization": f"Bearer {key}"}) as http:
                    for i in range(runs // 2 + 2):
                        start = time.perf_counter()
                        (await http.get(f"/v1/devboxes/{devbox}")).raise_for_status()
                        elapsed = time.perf_counter() - start
                        call = await timed_call(slow, "execute", true, exit_zero)
                        if i >= 2:
                            bare.append(elapsed)
                            calls.append(call)
                b, c = statistics.median(bare), statistics.median(calls)
                print(f"execute `true` through a proxy adding {DELAY * 1e3:.0f} ms per request: {ms(c)} vs one bare "
                      f"request {ms(b)}: ratio {c / b:.2f} (target ≤ 1.3); load {loadavg()}")

        # 3. A longer command's first line, as progress, from the call's start: the answer's hold
        # (its first line sent as the command prints) vs the streamed path (the answer at once, then
        # the streams), interleaved. The line carries the time bash printed it ($EPOCHREALTIME), which
        # splits the latency: call start → printed (MCP, HTTP, spawn, the shell starting) and
        # printed → notification received (noticing the output, the answer, progress over stdio).
        seen: list[tuple[float, float]] = []  # (received, printed), wall clock
        start = 0.0

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if "first" in (message or ""):
                seen.append((time.time(), float((message or "").split()[1])))

        async with ours(url, key, errlog) as held, ours(url, key, errlog, DEVBOX_MCP_FAST_WINDOW="0") as streamed:
            firsts: dict[str, list[tuple[float, float]]] = {"held": [], "streamed": []}
            for i in range(runs // 2 + 2):
                for name, client in (("held", held), ("streamed", streamed)):
                    seen.clear()
                    start = time.time()
                    await client.call_tool("execute", {"devbox_id": devbox, "command": "echo first $EPOCHREALTIME; sleep 0.1"},
                                           progress_callback=on_progress)  # fmt: skip
                    if i >= 2:
                        received, printed = seen[0]
                        firsts[name].append((received - start, printed - start))
            med = {n: [statistics.median(v[k] for v in firsts[n]) for k in (0, 1)] for n in firsts}
            (h, h_printed), (st, st_printed) = med["held"], med["streamed"]
            print(f"first output line of a longer command as progress: median {ms(h)} (max "
                  f"{ms(max(v[0] for v in firsts['held']))}; printed at {ms(h_printed)}, then {ms(h - h_printed)} "
                  f"to the client) vs the streamed path {ms(st)} (printed at {ms(st_printed)}) over "
                  f"{len(firsts['held'])} (target ≤ 10 ms); load {loadavg()}")
        await api.shutdown_devbox(devbox)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--setting", action="append", default=[], help="e.g. DEVBOX_MCP_OUTPUT_GRACE=0.001")
    args = parser.parse_args()
    OVERRIDES.update(item.split("=", 1) for item in args.setting)
    with tempfile.TemporaryDirectory(prefix=f"bench-speed-{os.getpid()}-") as tmp:
        proc, url, key = start_backend(Path(tmp))
        try:
            with open(os.devnull, "w") as errlog:
                anyio.run(bench, url, key, args.runs, errlog)
        finally:
            proc.terminate()
            proc.wait(timeout=15)


if __name__ == "__main__":
    main()
