"""Benchmark of MCP resources and subscriptions against the embedded backend.

Prints, measured in the same run (medians of repeated rounds; each round's p50/p99):
- publish → `notifications/resources/updated` latency with 1 and with 10 subscribed in-memory
  MCP clients (2026 `subscriptions/listen` and handshake-era `resources/subscribe`), against the
  raw upstream latency (publish → event on the client's own axon SSE subscription) as baseline;
- reading the newest 100 events of a 1,000,000-event axon as a resource, against the same page
  read with the Runloop client directly (ratio).

Targets (issue 5): p99 ≤ 100 ms with 10 clients; the read ≤ 20 ms.

The million events are written straight into the axon's SQLite file before the backend first
opens it (publishing them over HTTP would take over an hour on this machine); the backend then
serves that file as it would any axon.

Run: .venv/bin/python -m bench.resources [--events N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# bench/mcp.py is named like the `mcp` package and this folder comes first on sys.path when a
# script here runs: drop the folder so `import mcp` finds the SDK.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import anyio  # noqa: E402
import apsw  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.subscriptions import ResourceUpdated  # noqa: E402
from mcp.types import ResourceUpdatedNotification  # noqa: E402

from mcp_server.local.axon_log import EVENTS_TABLE, SCHEMA  # noqa: E402
from mcp_server.local.server import start_in_thread  # noqa: E402
from mcp_server.runloop import RunloopClient  # noqa: E402
from mcp_server.server import build_server  # noqa: E402

ROUNDS = 3
PUBLISHES = 100


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Arrivals:
    """When each client last saw an update; `wait(n)` until all n clients saw one after `since`."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self.changed = anyio.Event()

    def hit(self, client: int) -> None:
        self.times[client] = time.perf_counter()
        self.changed.set()
        self.changed = anyio.Event()

    async def wait(self, n: int, since: float) -> list[float]:
        with anyio.fail_after(10):
            while sum(1 for t in self.times.values() if t >= since) < n:
                await self.changed.wait()
        return [t - since for t in self.times.values() if t >= since]


async def publish_latency(api: RunloopClient, axon_id: str, arrivals: Arrivals, n: int) -> list[float]:
    samples: list[float] = []
    for i in range(PUBLISHES):
        start = time.perf_counter()
        await api.publish(axon_id, event_type="bench", payload={"i": i})
        samples.extend(await arrivals.wait(n, start))
    return samples


async def mcp_round(server: Any, api: RunloopClient, axon_id: str, clients: int, mode: str) -> list[float]:
    uri = f"axon://{axon_id}/events"
    arrivals = Arrivals()
    ready = [anyio.Event() for _ in range(clients)]

    async def one_client(k: int) -> None:
        # Each client is entered and left in its own task (the SDK's task groups require it).
        if mode == "legacy":
            async def handler(message: Any) -> None:
                if isinstance(message, ResourceUpdatedNotification):
                    arrivals.hit(k)

            async with Client(server, mode="legacy", message_handler=handler) as client:
                await client.subscribe_resource(uri)
                ready[k].set()
                await anyio.sleep_forever()
        async with Client(server, mode="auto") as client, client.listen(resource_subscriptions=[uri]) as events:
            ready[k].set()
            async for event in events:
                if isinstance(event, ResourceUpdated):
                    arrivals.hit(k)

    async with anyio.create_task_group() as tg:
        for k in range(clients):
            tg.start_soon(one_client, k)
        for event in ready:
            await event.wait()
        samples = await publish_latency(api, axon_id, arrivals, clients)
        tg.cancel_scope.cancel()
    return samples


async def raw_round(api: RunloopClient, axon_id: str) -> list[float]:
    """Baseline: the same publishes seen on one direct upstream subscription."""
    arrivals = Arrivals()
    newest = (await api.list_events(axon_id, limit=1)).events[0].sequence
    async with anyio.create_task_group() as tg:
        async def pump() -> None:
            async for _event in api.subscribe_axon(axon_id, after_sequence=newest):
                arrivals.hit(0)

        tg.start_soon(pump)
        samples = await publish_latency(api, axon_id, arrivals, 1)
        tg.cancel_scope.cancel()
    return samples


def summarize(name: str, rounds: list[list[float]]) -> tuple[float, float]:
    p50 = statistics.median(pct(r, 0.50) for r in rounds) * 1e3
    p99 = statistics.median(pct(r, 0.99) for r in rounds) * 1e3
    print(f"  {name:<38} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    return p50, p99


def fill_axon(path: Path, events: int) -> None:
    """Write `events` events into an axon's database file (the backend's own schema)."""
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SCHEMA)
    now = int(time.time() * 1000) - events
    with conn:
        conn.executemany(
            f"INSERT INTO {EVENTS_TABLE} (sequence, timestamp_ms, origin, source, event_type, payload) VALUES (?,?,?,?,?,?)",
            ((i, now + i, "AGENT_EVENT", "bench", "step", f'{{"i":{i},"note":"event number {i}"}}') for i in range(1, events + 1)),
        )
    conn.close()


async def timed(fn: Callable[[], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return samples


async def main(events: int) -> None:
    warnings.simplefilter("ignore")  # resources/subscribe is deprecated in 2026; handshake-era clients still use it
    data = Path(tempfile.mkdtemp(prefix="bench-resources-"))
    backend = start_in_thread(data)
    try:
        async with RunloopClient(backend.base_url, backend.api_key) as api:
            server = build_server(api)
            axon = (await api.create_axon(name="latency")).id
            await api.publish(axon, event_type="bench", payload="first")

            print(f"publish → resources/updated ({PUBLISHES} publishes × {ROUNDS} rounds, medians of per-round percentiles)")
            base = summarize("baseline: raw upstream SSE", [await raw_round(api, axon) for _ in range(ROUNDS)])
            results = {}
            for mode in ("auto", "legacy"):
                for clients in (1, 10):
                    rounds = [await mcp_round(server, api, axon, clients, mode) for _ in range(ROUNDS)]
                    era = "listen (2026)" if mode == "auto" else "resources/subscribe"
                    results[(mode, clients)] = summarize(f"{clients:>2} client(s), {era}", rounds)
            worst = max(p99 for (_, n), (_, p99) in results.items() if n == 10)
            print(f"  ratio p50 (1 client, listen) / baseline p50: {results[('auto', 1)][0] / base[0]:.2f}")
            print(f"  target p99 ≤ 100 ms with 10 clients: worst {worst:.2f} ms → {'OK' if worst <= 100 else 'MISSED'}")

            big = (await api.create_axon(name="million")).id
            start = time.perf_counter()
            fill_axon(data / "axons" / f"{big}.db", events)
            print(f"\nnewest 100 of a {events:,}-event axon (filled in {time.perf_counter() - start:.1f} s)")
            uri = f"axon://{big}/events?limit=100"
            async with Client(server, mode="auto") as client:
                page = (await client.read_resource(uri)).contents[0].text
                assert f'"newest_sequence":{events}' in page
                direct = statistics.median(await timed(lambda: api.list_events(big, limit=100), 50)) * 1e3
                via_mcp = statistics.median(await timed(lambda: client.read_resource(uri), 50)) * 1e3
            print(f"  Runloop client list_events (baseline)  median {direct:7.2f} ms")
            print(f"  MCP resources/read                     median {via_mcp:7.2f} ms   ratio {via_mcp / direct:.2f}")
            print(f"  target ≤ 20 ms: {'OK' if via_mcp <= 20 else 'MISSED'}")
    finally:
        backend.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    anyio.run(main, parser.parse_args().events)
    sys.exit(0)
