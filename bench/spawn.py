"""What starting a command in a running devbox costs, by each way there is, in one interleaved run.

    .venv/bin/python -m bench.spawn [--runs 200]

`bash -c true` to its exit, from the backend's event loop:
- a plain host process (`asyncio.create_subprocess_exec`): the baseline;
- through the devbox's fork server (forkserver.py: a helper already inside the devbox that
  posix_spawns commands on request), what an execution pays now;
- with `nsenter` into the devbox from the hardened spawning thread, what an execution paid
  before, and still pays when the fork server is gone (the fallback).
Medians and ratios against the host spawn of the same run (rounds interleave the three), and the
load of the machine (`/proc/loadavg`), which other work on it inflates every figure with.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.local_api import _spec  # noqa: E402
from mcp_server.local import childwatch  # noqa: E402
from mcp_server.local.sandbox import Sandbox  # noqa: E402


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


async def _once(start: Callable[[], Awaitable[asyncio.subprocess.Process]]) -> float:
    began = time.perf_counter()
    proc = await start()
    code = await proc.wait()
    elapsed = time.perf_counter() - began
    if code != 0:
        raise SystemExit(f"`true` exited with {code}")
    return elapsed


async def bench(runs: int, root: Path) -> dict[str, list[float]]:
    childwatch.install()
    served, fallen_back = Sandbox(_spec(root, "served")), Sandbox(_spec(root, "nsenter"))
    await served.start()
    await fallen_back.start()
    try:
        if await served.fork_server() is None:
            raise SystemExit("the fork server did not start (see the log)")
        helper = await fallen_back.fork_server()
        assert helper is not None
        helper.close()  # this sandbox's commands now enter with nsenter

        def in_sandbox(sandbox: Sandbox) -> Callable[[], Awaitable[asyncio.subprocess.Process]]:
            async def start() -> asyncio.subprocess.Process:
                null = subprocess.DEVNULL
                return await sandbox.spawn("true", env={}, stdin=null, stdout=null, stderr=null)

            return start

        async def host() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec("bash", "-c", "true", stdin=subprocess.DEVNULL)

        ways = {"host": host, "helper": in_sandbox(served), "nsenter": in_sandbox(fallen_back)}
        samples: dict[str, list[float]] = {name: [] for name in ways}
        for round_ in range(runs + 3):
            for name, start in ways.items():
                elapsed = await _once(start)
                if round_ >= 3:  # the first rounds warm caches
                    samples[name].append(elapsed)
        return samples
    finally:
        await served.stop()
        await fallen_back.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="devbox-bench-spawn-") as tmp:
        samples = asyncio.run(bench(args.runs, Path(tmp)))
    med = {name: statistics.median(values) for name, values in samples.items()}
    print(f"spawning `bash -c true` to its exit, {args.runs} interleaved rounds (medians):")
    for name, label in (
        ("host", "host process (baseline)"),
        ("nsenter", "nsenter into the devbox (before; the fallback)"),
        ("helper", "the devbox's fork server (now)"),
    ):
        ratio = f"  {med[name] / med['host']:4.2f}x the host spawn" if name != "host" else ""
        print(f"  {label:<48} {med[name] * 1e3:6.2f} ms{ratio}")
    print(f"  fork server vs nsenter: {med['helper'] / med['nsenter']:4.2f}x ({(med['nsenter'] - med['helper']) * 1e3:.2f} ms saved per command)")
    print(f"  load before {load_before}; after {_loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
