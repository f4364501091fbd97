"""Benchmarks of the embedded backend, printed as medians with ratios against baselines of the same run.

    .venv/bin/python -m bench.local_api [--runs 20]

- create→running: `POST /v1/devboxes/create_and_await_running` over loopback HTTP (target ≤ 50 ms).
- spawn costs: `bash -c true` as a plain host process (the baseline), in a fresh bubblewrap
  sandbox started for it (what a sandbox per command would cost), and started in an already
  running devbox sandbox by its fork server (what an execution pays; bench.spawn compares it
  with nsenter, the fallback).
- execute round trip: `POST /v1/devboxes/{id}/execute` of `true` over loopback HTTP until the
  completed answer (target ≤ 4x the host spawn).
- SSE: a command writing 100 MB to stdout streamed with `stream_stdout_updates` (MB/s, target
  ≥ 100), with the peak RSS growth of the backend, run as its own process (target ≤ 50 MB), and
  the latency from a line written in the devbox to its SSE event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.local import rootfs  # noqa: E402
from mcp_server.local.idmap import host_range  # noqa: E402
from mcp_server.local.image import ImageStore, default_images_dir  # noqa: E402
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
    """A sandbox as the backend makes them: with a system of its own when root (see rootfs.py)."""
    state = root / name
    (state / "home").mkdir(parents=True, exist_ok=True)
    (state / "tmp").mkdir(exist_ok=True)
    system: dict[str, object] = {}
    ids = host_range(default_images_dir())
    if ids is not None:
        image = ImageStore(default_images_dir(), ids).current()
        if image is None:
            raise SystemExit("no devbox image yet: run `devbox-mcp image --build` (or `make install`) first")
        layers = rootfs.RootFs.of(image.rootfs, state)
        rootfs.prepare_first_boot(layers, ids, state / "home", state / "tmp", 1000)
        system = {"rootfs": layers, "ids": ids}
    return SandboxSpec(home=state / "home", tmp=state / "tmp", hostname=name, network="none", **system)  # type: ignore[arg-type]


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


def bench_execute_round_trip(backend: RunningBackend, runs: int) -> list[float]:
    """`execute` of `true` through HTTP, answered `completed` within the optimistic wait."""
    samples = []
    with client_for(backend) as client:
        devbox = client.post("/v1/devboxes/create_and_await_running", json={}).json()["id"]
        for _ in range(runs + 3):
            started = time.perf_counter()
            view = client.post(
                f"/v1/devboxes/{devbox}/execute", json={"command": "true", "command_id": str(uuid.uuid4())}
            ).json()
            samples.append(time.perf_counter() - started)
            if view.get("status") != "completed" or view.get("exit_status") != 0:
                raise SystemExit(f"execute of `true` did not complete: {view}")
        client.post(f"/v1/devboxes/{devbox}/shutdown")
    return samples[3:]


SSE_BYTES = 100_000_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples a process's resident set every few milliseconds on a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self.peak = _rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _stream_events(client: httpx.Client, path: str) -> tuple[int, list[dict[str, object]]]:
    """Reads an SSE response to its end: the output bytes it carried, and its last event.

    A light client, so that the figure is the backend's: it reads each event's `offset` (the
    last field) and checks they only grow; only the last event is decoded in full.
    """
    last_event, previous, buffer = b"", -1, b""
    with client.stream("GET", path) as response:
        response.raise_for_status()
        for block in response.iter_raw(1 << 20):
            *events, buffer = (buffer + block).split(b"\n\n")
            for event in events:
                if event.startswith(b"data: "):
                    offset = int(event[event.rindex(b":") + 1 : -1])
                    if offset <= previous:
                        raise SystemExit(f"chunk offsets went back: {offset} after {previous}")
                    previous, last_event = offset, event
    if not last_event:
        return 0, []
    last = json.loads(last_event[6:])
    return last["offset"] + len(last["output"].encode()), [last]


def start_backend_process(data_dir: Path) -> tuple[subprocess.Popen[bytes], RunningBackend]:
    """`devbox-mcp local-api` as a child process, so its memory can be measured on its own."""
    key, port = "bench-" + uuid.uuid4().hex, _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_server", "local-api", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, "DEVBOX_LOCAL_API_KEY": key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the backend process did not start")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.02)
    handle = RunningBackend(url, key, None, None, None)  # type: ignore[arg-type]
    return proc, handle


def bench_sse(data_dir: Path, runs: int) -> dict[str, list[float]]:
    """100 MB through `stream_stdout_updates` from a backend process, with its RSS; and live latency."""
    proc, backend = start_backend_process(data_dir)
    results: dict[str, list[float]] = {"mb_per_s": [], "rss_growth": [], "latency": []}
    command = f"yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c {SSE_BYTES}"
    try:
        with client_for(backend) as client:
            devbox = client.post("/v1/devboxes/create_and_await_running", json={}).json()["id"]
            for run in range(runs + 1):  # the first run warms up (imports, allocator arenas)
                baseline = _rss_bytes(proc.pid)
                with RssSampler(proc.pid) as rss:
                    started = time.perf_counter()
                    ex = client.post(f"/v1/devboxes/{devbox}/execute_async", json={"command": command}).json()
                    path = f"/v1/devboxes/{devbox}/executions/{ex['execution_id']}/stream_stdout_updates"
                    total, _ = _stream_events(client, path)
                    elapsed = time.perf_counter() - started
                if total != SSE_BYTES:
                    raise SystemExit(f"streamed {total} bytes, expected {SSE_BYTES}")
                if run:
                    results["mb_per_s"].append(SSE_BYTES / 1e6 / elapsed)
                    results["rss_growth"].append((rss.peak - baseline) / 1e6)
                client.post(f"/v1/devboxes/{devbox}/execute", json={"command": "rm -f /tmp/none", "command_id": str(uuid.uuid4())})
            # Latency: each line carries the wall-clock time it was written at.
            lines = max(runs, 20)
            ex = client.post(
                f"/v1/devboxes/{devbox}/execute_async",
                json={"command": f"for i in $(seq 1 {lines}); do date +%s%N; sleep 0.02; done"},
            ).json()
            path = f"/v1/devboxes/{devbox}/executions/{ex['execution_id']}/stream_stdout_updates"
            with client.stream("GET", path) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        received = time.time_ns()
                        for stamp in json.loads(line[6:])["output"].split():
                            results["latency"].append((received - int(stamp)) / 1e9)
            client.post(f"/v1/devboxes/{devbox}/shutdown")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sse-runs", type=int, default=20, help="runs of the 100 MB SSE benchmark")
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
            report("in the running devbox (its fork server)", spawns["enter"], base)
            print("executions:")
            round_trip = report("execute `true` round trip (HTTP)", bench_execute_round_trip(backend, args.runs), base)
            print(f"    target <= 4x the host spawn: {'OK' if round_trip <= 4 * base else 'MISSED'}")
            sse = bench_sse(root / "sse-backend", args.sse_runs)
            rate, growth = statistics.median(sse["mb_per_s"]), max(sse["rss_growth"])
            print(f"  SSE stdout of 100 MB ({args.sse_runs} runs)            median {rate:8.1f} MB/s  min {min(sse['mb_per_s']):6.1f} MB/s")
            print(f"    target >= 100 MB/s: {'OK' if rate >= 100 else 'MISSED'}")
            print(f"  backend RSS growth while streaming             peak   {growth:8.1f} MB  (median of runs {statistics.median(sse['rss_growth']):.1f} MB)")
            print(f"    target <= 50 MB: {'OK' if growth <= 50 else 'MISSED'}")
            report("live output latency (write -> SSE event)", sse["latency"])
        finally:
            backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
