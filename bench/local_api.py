"""Benchmarks of the embedded backend, printed as medians with ratios against baselines of the same run.

    .venv/bin/python bench/local_api.py [--runs 20]

- create→running: `POST /v1/devboxes/create_and_await_running` over loopback HTTP (target ≤ 50 ms).
- spawn costs: `bash -c true` as a plain host process (the baseline), in a fresh bubblewrap
  sandbox started for it (what a sandbox per command would cost), and entered into an already
  running devbox sandbox with nsenter (what an execution pays).
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.local.sandbox import Sandbox, SandboxSpec  # noqa: E402
from mcp_server.local.server import RunningBackend, start_in_thread  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def report(label: str, samples: list[float], baseline: float | None = None) -> float:
    med = statistics.median(samples)
    ratio = f"  ({med / baseline:5.1f}x the host spawn)" if baseline else ""
    print(f"  {label:<44} median {ms(med)}  p90 {ms(sorted(samples)[int(len(samples) * 0.9) - 1])}{ratio}")
    return med


def client_for(backend: RunningBackend) -> httpx.Client:
    return httpx.Client(
        base_url=backend.base_url, headers={"Authorization": f"Bearer {backend.api_key}"}, timeout=60
    )


def bench_create_to_running(backend: RunningBackend, runs: int) -> list[float]:
    samples = []
    with client_for(backend) as client:
        for _ in range(runs + 2):
            started = time.perf_counter()
            view = client.post("/v1/devboxes/create_and_await_running", json={}).json()
            elapsed = time.perf_counter() - started
            if view["status"] != "running":
                raise SystemExit(f"devbox did not reach running: {view}")
            samples.append(elapsed)
            client.post(f"/v1/devboxes/{view['id']}/shutdown")
    return samples[2:]  # the first ones warm caches (the /etc scan, imports)


async def _time(runs: int, once: Callable[[], Awaitable[None]]) -> list[float]:
    samples = []
    for _ in range(runs + 2):
        started = time.perf_counter()
        await once()
        samples.append(time.perf_counter() - started)
    return samples[2:]


def _spec(root: Path, name: str) -> SandboxSpec:
    (root / name / "home").mkdir(parents=True, exist_ok=True)
    (root / name / "tmp").mkdir(exist_ok=True)
    return SandboxSpec(home=root / name / "home", tmp=root / name / "tmp", hostname=name, network="none")


async def bench_spawns(runs: int, root: Path) -> dict[str, list[float]]:
    async def host() -> None:
        proc = await asyncio.create_subprocess_exec("bash", "-c", "true", stdin=subprocess.DEVNULL)
        await proc.wait()

    counter = iter(range(10**6))

    async def fresh_sandbox() -> None:
        sandbox = Sandbox(_spec(root, f"fresh{next(counter)}"))
        await sandbox.start()
        proc = await sandbox.spawn(
            "true", env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await proc.wait()
        await sandbox.stop()

    running = Sandbox(_spec(root, "resident"))
    await running.start()

    async def enter_running() -> None:
        proc = await running.spawn(
            "true", env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await proc.wait()

    try:
        return {
            "host": await _time(runs, host),
            "fresh": await _time(runs, fresh_sandbox),
            "enter": await _time(runs, enter_running),
        }
    finally:
        await running.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="devbox-bench-") as tmp:
        root = Path(tmp)
        backend = start_in_thread(root / "backend")
        try:
            print(f"embedded backend benchmarks, {args.runs} runs each (medians)")
            print("devboxes:")
            create = report("create_and_await_running (HTTP)", bench_create_to_running(backend, args.runs))
            print(f"    target <= 50 ms: {'OK' if create <= 0.050 else 'MISSED'}")
            spawns = asyncio.run(bench_spawns(args.runs, root / "spawns"))
            print("spawning `bash -c true`:")
            base = report("host process (baseline)", spawns["host"])
            report("fresh bubblewrap sandbox per command", spawns["fresh"], base)
            report("nsenter into the running devbox sandbox", spawns["enter"], base)
        finally:
            backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
