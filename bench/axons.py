"""Axon benchmark: publish throughput, publish→subscriber latency, SQL over a large history,
publishes next to batches that run their whole time budget, and SQL on one axon while another's
queries run theirs.

Run: `.venv/bin/python -m bench.axons` (about two minutes). It starts `devbox-mcp local-api` as a
subprocess on a temporary data dir, so the backend has its own interpreter, and drives it
over loopback HTTP from this process with a minimal keep-alive HTTP/1.1 client (on a
2-core machine a heavier client would measure itself more than the backend). Every figure
is the median of several runs; the baseline is `GET /healthz` through the same client in
the same run, so the ratio says what a durable publish costs over a bare request.

The 1,000,000-event history for the SQL figures is bulk-loaded through a private fast
path: with the backend stopped, rows are inserted straight into the axon's SQLite file in
one transaction (publishing them over HTTP would take minutes), then the backend is
restarted and queried over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key"
RUNS = 5
TARGET_8_CLIENTS = 3_000.0
TARGET_P99_MS = 20.0
TARGET_LATEST_100_MS = 10.0
HISTORY_EVENTS = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def backend(data_dir: Path) -> Iterator[tuple[int, int]]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/devbox-mcp"), "local-api", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, "DEVBOX_LOCAL_API_KEY": KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the backend did not start") from None
                time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Http:
    """One keep-alive HTTP/1.1 connection: send a request, read one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Http:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    @staticmethod
    def request(method: str, path: str, body: object | None = None) -> bytes:
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        return (head + "\r\n").encode() + data

    async def send(self, raw: bytes) -> bytes:
        status, body = await self.send_any(raw)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        return body

    async def send_any(self, raw: bytes) -> tuple[int, bytes]:
        """Status and body of one request, whatever the status."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return int(head.split(b" ", 2)[1]), await self.reader.readexactly(length)

    async def call(self, method: str, path: str, body: object | None = None) -> dict:
        return json.loads(await self.send(self.request(method, path, body)))

    def close(self) -> None:
        self.writer.close()


def _publish_body(event_type: str, payload: str) -> dict:
    return {"event_type": event_type, "origin": "EXTERNAL_EVENT", "payload": payload, "source": "bench"}


async def throughput(port: int, raw: bytes, clients: int, per_client: int) -> float:
    conns = [await Http.open(port) for _ in range(clients)]

    async def run(conn: Http) -> None:
        for _ in range(per_client):
            await conn.send(raw)

    started = time.perf_counter()
    await asyncio.gather(*(run(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return clients * per_client / elapsed


async def latency(port: int, axon_id: str, events: int) -> list[float]:
    """Milliseconds from sending a publish to a live subscriber receiving that event."""
    sub_reader, sub_writer = await asyncio.open_connection("127.0.0.1", port)
    with_last = await Http.open(port)
    last = (await with_last.call("GET", f"/v1/axons/{axon_id}/events?limit=1"))["total_count"]
    with_last.close()
    sub_writer.write(Http.request("GET", f"/v1/axons/{axon_id}/subscribe/sse?after_sequence={last}"))
    await sub_reader.readuntil(b"\r\n\r\n")
    samples: list[float] = []
    got_all = asyncio.Event()

    async def subscriber() -> None:
        while len(samples) < events:
            line = await sub_reader.readline()
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event["event_type"] == "latency":
                    sent = json.loads(event["payload"])["t"]
                    samples.append((time.perf_counter_ns() - sent) / 1e6)
        got_all.set()

    task = asyncio.create_task(subscriber())
    publisher = await Http.open(port)
    for _ in range(events):
        payload = json.dumps({"t": time.perf_counter_ns()})
        await publisher.call("POST", f"/v1/axons/{axon_id}/publish", _publish_body("latency", payload))
        await asyncio.sleep(0.002)  # a steady stream rather than a burst
    await asyncio.wait_for(got_all.wait(), 30)
    task.cancel()
    publisher.close()
    sub_writer.close()
    return samples


async def latency_under_load(port: int, axon_id: str, raw: bytes, events: int, clients: int = 4) -> list[float]:
    """The same latency while `clients` other connections publish to the same axon flat out."""
    stop = asyncio.Event()

    async def load() -> None:
        conn = await Http.open(port)
        while not stop.is_set():
            await conn.send(raw)
        conn.close()

    tasks = [asyncio.create_task(load()) for _ in range(clients)]
    try:
        return await latency(port, axon_id, events)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def stalled_subscribers(port: int, pid: int, subscribers: int = 20, events: int = 4000) -> tuple[float, float, float]:
    """Server memory while `subscribers` connections never read and 4 clients publish `events` 10 KB events.

    Returns (MB published, RSS growth in MB, events/s of the publishers).
    """
    setup = await Http.open(port)
    axon_id = (await setup.call("POST", "/v1/axons", {"name": "stalled"}))["id"]
    setup.close()
    sockets = []
    for _ in range(subscribers):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(Http.request("GET", f"/v1/axons/{axon_id}/subscribe/sse"))
        sockets.append(sock)
    payload = json.dumps({"blob": "x" * 10_000})
    raw = Http.request("POST", f"/v1/axons/{axon_id}/publish", _publish_body("big", payload))
    before = rss_mb(pid)
    rate = await throughput(port, raw, 4, events // 4)
    after = rss_mb(pid)
    for sock in sockets:
        sock.close()
    return events * len(payload) / 1e6, after - before, rate


# A statement that runs until the SQL time budget stops it.
FOREVER = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"


async def _timed(conn: Http, raw: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    status, _ = await conn.send_any(raw)
    return time.perf_counter() - started, status


async def batches_and_publishes(port: int, rounds: int = 3) -> dict[str, float]:
    """Publishes while two clients send batches that each run their whole time budget, back to back.

    Each batch writes first (so it holds the write turn), then runs until the budget stops it
    (400, rolled back). One client publishes throughout, one event at a time; its waits are
    the figure, next to an idle publish in the same run.
    """
    setup = await Http.open(port)
    axon_id = (await setup.call("POST", "/v1/axons", {"name": "batches"}))["id"]
    setup.close()
    publish = Http.request("POST", f"/v1/axons/{axon_id}/publish", _publish_body("t", "{}"))
    batch = Http.request(
        "POST",
        f"/v1/axons/{axon_id}/sql/batch",
        {"statements": [{"sql": "CREATE TABLE IF NOT EXISTS held (a)"}, {"sql": "INSERT INTO held VALUES (1)"}, {"sql": FOREVER}]},
    )
    publisher = await Http.open(port)
    idle = statistics.median([(await _timed(publisher, publish))[0] for _ in range(20)])
    statuses: list[int] = []
    done = asyncio.Event()

    async def client() -> None:
        conn = await Http.open(port)
        for _ in range(rounds):
            elapsed, status = await _timed(conn, batch)
            statuses.append(status)
        conn.close()

    async def publishing() -> list[tuple[float, int]]:
        waits = []
        while not done.is_set():
            waits.append(await _timed(publisher, publish))
        return waits

    started = time.perf_counter()
    clients = asyncio.gather(client(), client())
    publishes = asyncio.create_task(publishing())
    await clients
    elapsed = time.perf_counter() - started
    done.set()
    waits = await publishes
    publisher.close()
    return {
        "batches": len(statuses),
        "batches_400": sum(1 for s in statuses if s == 400),
        "elapsed": elapsed,
        "publishes": len(waits),
        "publish_errors": sum(1 for _, status in waits if status != 200),
        "idle_ms": idle * 1000,
        "max_s": max(w for w, _ in waits),
        "median_ms": statistics.median(w for w, _ in waits) * 1000,
    }


async def fairness(port: int, slow: int = 4) -> dict[str, float]:
    """SELECT 1 on axon B while `slow` queries on axon A run until the time budget stops them."""
    setup = await Http.open(port)
    busy = (await setup.call("POST", "/v1/axons", {"name": "busy"}))["id"]
    other = (await setup.call("POST", "/v1/axons", {"name": "other"}))["id"]
    setup.close()
    one_b = Http.request("POST", f"/v1/axons/{other}/sql/query", {"sql": "SELECT 1"})
    one_a = Http.request("POST", f"/v1/axons/{busy}/sql/query", {"sql": "SELECT 1"})
    slow_a = Http.request("POST", f"/v1/axons/{busy}/sql/query", {"sql": FOREVER})
    probe = await Http.open(port)
    await probe.send(one_b)
    idle = statistics.median([(await _timed(probe, one_b))[0] for _ in range(20)])

    async def slow_query() -> float:
        conn = await Http.open(port)
        elapsed, _ = await _timed(conn, slow_a)
        conn.close()
        return elapsed

    tasks = [asyncio.create_task(slow_query()) for _ in range(slow)]
    await asyncio.sleep(0.5)  # let them start: the figure is about the time while they run
    other_waits = [(await _timed(probe, one_b))[0] for _ in range(10)]
    own_wait, _ = await _timed(probe, one_a)
    slow_times = await asyncio.gather(*tasks)
    probe.close()
    return {
        "idle_ms": idle * 1000,
        "other_median_ms": statistics.median(other_waits) * 1000,
        "other_max_ms": max(other_waits) * 1000,
        "own_s": own_wait,
        "slow_s": max(slow_times),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fsync_ms(directory: Path, samples: int = 200) -> float:
    """Median time to fdatasync a 4 KiB overwrite on the data dir's disk: the floor under a durable commit."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"\0" * 4096 * 64)
        os.fsync(fd)
        times = []
        for i in range(samples):
            os.pwrite(fd, b"x" * 4096, (i % 64) * 4096)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        os.close(fd)
        path.unlink()


def bulk_load(db: Path, count: int) -> float:
    """Private fast path: append events 2..count straight into a stopped backend's axon file."""
    started = time.perf_counter()
    conn = apsw.Connection(str(db))
    now = time.time_ns() // 1_000_000
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO rl_axon_events (sequence, timestamp_ms, origin, source, event_type, payload) VALUES (?, ?, ?, ?, ?, ?)",
        (
            (seq, now, "EXTERNAL_EVENT", "bench", f"type{seq % 20}", json.dumps({"n": seq, "text": "x" * 40}))
            for seq in range(2, count + 1)
        ),
    )
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


async def timed_sql(port: int, axon_id: str, sql: str, runs: int) -> tuple[float, float]:
    """Median round-trip and median server-side `duration_ms` of a sql/query."""
    conn = await Http.open(port)
    raw = Http.request("POST", f"/v1/axons/{axon_id}/sql/query", {"sql": sql})
    await conn.send(raw)  # warm the page cache and the connection pool
    rtts, server = [], []
    for _ in range(runs):
        started = time.perf_counter()
        body = json.loads(await conn.send(raw))
        rtts.append((time.perf_counter() - started) * 1000)
        server.append(body["meta"]["duration_ms"])
    conn.close()
    return statistics.median(rtts), statistics.median(server)


def line(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    mark = "" if ok is None else ("  ok" if ok else "  BELOW TARGET")
    print(f"  {name:<44} {value:>14}   {target}{mark}")


async def http_part(port: int, data: Path) -> tuple[str, dict[str, float]]:
    setup = await Http.open(port)
    axon_id = (await setup.call("POST", "/v1/axons", {"name": "bench"}))["id"]
    setup.close()
    publish = Http.request("POST", f"/v1/axons/{axon_id}/publish", _publish_body("t", json.dumps({"n": 1, "text": "x" * 40})))
    health = Http.request("GET", "/healthz")
    await throughput(port, publish, 8, 500)  # warm-up: past the WAL's first growth
    names = ("sync", "health8", "pub1", "pub8", "p50", "p99", "lp50", "lp99")
    figures: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(RUNS):
        # The disk is shared with whatever else runs here: sample it in every run, next to the figures.
        figures["sync"].append(fsync_ms(data, 50))
        figures["health8"].append(await throughput(port, health, 8, 400))
        figures["pub1"].append(await throughput(port, publish, 1, 600))
        figures["pub8"].append(await throughput(port, publish, 8, 800))
        samples = await latency(port, axon_id, 300)
        figures["p50"].append(percentile(samples, 0.50))
        figures["p99"].append(percentile(samples, 0.99))
        samples = await latency_under_load(port, axon_id, publish, 300)
        figures["lp50"].append(percentile(samples, 0.50))
        figures["lp99"].append(percentile(samples, 0.99))
    return axon_id, {k: statistics.median(v) for k, v in figures.items()}


async def sql_part(port: int, axon_id: str) -> dict[str, tuple[float, float]]:
    return {
        "group": await timed_sql(port, axon_id, "SELECT event_type, count(*) FROM rl_axon_events GROUP BY event_type", RUNS),
        "latest": await timed_sql(port, axon_id, "SELECT * FROM rl_axon_events ORDER BY sequence DESC LIMIT 100", 21),
    }


def main() -> int:
    print(f"axons benchmark ({os.cpu_count()} cores, medians of {RUNS} runs unless stated)")
    with tempfile.TemporaryDirectory(prefix="axon-bench-") as tmp:
        data = Path(tmp)
        with backend(data) as (port, pid):
            _, m = asyncio.run(http_part(port, data))
            stalled = asyncio.run(stalled_subscribers(port, pid))
            history_axon = asyncio.run(_create_with_one_event(port))
            turns = asyncio.run(batches_and_publishes(port))
            fair = asyncio.run(fairness(port))
        load_s = bulk_load(data / "axons" / f"{history_axon}.db", HISTORY_EVENTS)
        with backend(data) as (port, _):
            sql = asyncio.run(sql_part(port, history_axon))

    print("publish over HTTP (durable: acknowledged after the fsync'd commit)")
    line("baseline fdatasync of the data disk (ms)", f"{m['sync']:.2f}", "sampled in each run")
    line(
        "ceiling for 8 one-at-a-time clients (events/s)",
        f"{8000 / m['sync']:,.0f}",
        "8 / fdatasync: each commit holds at most 8 events",
    )
    line("baseline GET /healthz, 8 clients (req/s)", f"{m['health8']:,.0f}")
    line("publish, 1 client (events/s)", f"{m['pub1']:,.0f}", f"ratio to baseline {m['pub1'] / m['health8']:.2f}")
    line(
        "publish, 8 clients (events/s)",
        f"{m['pub8']:,.0f}",
        f"target >= {TARGET_8_CLIENTS:,.0f}; ratio to baseline {m['pub8'] / m['health8']:.2f}",
        m["pub8"] >= TARGET_8_CLIENTS,
    )
    print("publish -> live subscriber latency (300 events per run)")
    line("p50 (ms)", f"{m['p50']:.2f}")
    line("p99 (ms)", f"{m['p99']:.2f}", f"target <= {TARGET_P99_MS:g}", m["p99"] <= TARGET_P99_MS)
    line("p50 while 4 other clients publish flat out (ms)", f"{m['lp50']:.2f}")
    line("p99 while 4 other clients publish flat out (ms)", f"{m['lp99']:.2f}")
    published, growth, rate = stalled
    print("20 subscribers that never read, while 4 clients publish 10 KB events")
    line("published (MB)", f"{published:.0f}", f"at {rate:,.0f} events/s")
    line("backend RSS growth (MB)", f"{growth:.1f}", "bounded: 8 MiB shared tail + one page per stalled subscriber")
    print("publishes while 2 clients send batches that run their whole 5 s budget, back to back")
    line("batches (all refused over budget, rolled back)", f"{turns['batches_400']:.0f}/{turns['batches']:.0f}", f"over {turns['elapsed']:.1f} s")
    line("publishes (errors)", f"{turns['publishes']:.0f} ({turns['publish_errors']:.0f})", "target: no errors", turns["publish_errors"] == 0)
    line("publish wait, longest (s)", f"{turns['max_s']:.2f}", "bound: one batch's 5 s budget + its commit", turns["max_s"] <= 5.5)
    line("publish wait, median (ms)", f"{turns['median_ms']:.1f}", f"idle publish {turns['idle_ms']:.1f} ms")
    print("SELECT 1 on axon B while 4 queries on axon A run their whole 5 s budget")
    line("axon B, median of 10 (ms)", f"{fair['other_median_ms']:.1f}", f"idle {fair['idle_ms']:.1f} ms; ratio {fair['other_median_ms'] / fair['idle_ms']:.1f}")
    line("axon B, longest of 10 (ms)", f"{fair['other_max_ms']:.1f}", "target: far below the 5 s budget", fair["other_max_ms"] < 1000)
    line("SELECT 1 on axon A itself (s)", f"{fair['own_s']:.2f}", "queued behind A's own (2 at a time per axon)")
    print(f"sql/query over {HISTORY_EVENTS:,} events (bulk-loaded in {load_s:.1f} s via the private fast path)")
    rtt, server = sql["group"]
    line("GROUP BY event_type count: round trip (ms)", f"{rtt:.1f}", f"server-side {server:.1f} ms")
    rtt, server = sql["latest"]
    line(
        "latest 100 events: round trip (ms, 21 runs)",
        f"{rtt:.2f}",
        f"target <= {TARGET_LATEST_100_MS:g}; server-side {server:.2f} ms",
        rtt <= TARGET_LATEST_100_MS,
    )
    return 0


async def _create_with_one_event(port: int) -> str:
    """An axon whose database file exists (its first publish creates the schema)."""
    conn = await Http.open(port)
    axon_id = (await conn.call("POST", "/v1/axons", {"name": "history"}))["id"]
    await conn.call("POST", f"/v1/axons/{axon_id}/publish", _publish_body("type1", json.dumps({"n": 1})))
    conn.close()
    return axon_id


if __name__ == "__main__":
    sys.exit(main())
