"""PTY benchmark: throughput of the WebSocket data plane, the backend's memory meanwhile, and the
keystroke echo round trip.

Run: `.venv/bin/python -m bench.pty` (about a minute). It starts `devbox-mcp local-api` as a
subprocess on a temporary data dir (so its RSS is the backend's alone), opens a PTY session in a
devbox through create_pty_tunnel, and drives the WebSocket from this process (`websockets`,
without compression: raw bytes on the wire, as a terminal's output rarely compresses this well).

- Throughput: `cat` of a 100 MB file (base64 of random bytes, one line) through the WebSocket:
  MB/s, and the backend's RSS growth while it streams (sampled every 20 ms; target <= 30 MB).
  Baseline: the same `cat` of the same bytes through a host pty read directly by this process.
- Keystroke echo: one key at a time at an idle bash prompt (readline echoes it), alternating a
  letter and Backspace, time from the WebSocket send to the echo's arrival: p50 and p99.
  Baseline: the same keys to a bash on a host pty, read directly. The MCP terminal benchmark
  compares its keystroke-to-screen latency against the WebSocket figure.
"""

from __future__ import annotations

import os
import pty
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from websockets.sync.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key"
FILE_BYTES = 100 * 1024 * 1024
KEYSTROKES = 400
TARGET_RSS_GROWTH = 30 * 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def backend(data_dir: Path) -> Iterator[tuple[str, int]]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/devbox-mcp"), "local-api", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, "DEVBOX_LOCAL_API_KEY": KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the backend did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """The highest RSS of `pid` while the block runs, sampled on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Reader:
    """What a WebSocket received: wait for a needle, keeping what came after it for the next wait."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws, self.buffer, self.received = ws, b"", 0

    def until(self, needle: bytes, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while (at := self.buffer.find(needle)) < 0:
            chunk = self.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            self.received += len(chunk)
            self.buffer = self.buffer[-len(needle) :] + chunk  # a needle may straddle two frames
        self.buffer = self.buffer[at + len(needle) :]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# -- baselines: a host pty read directly -----------------------------------------------------


def host_cat(path: Path) -> float:
    """MB/s of `cat path` through a host pty read by this process."""
    pid, master = pty.fork()
    if pid == 0:
        os.execvp("cat", ["cat", str(path)])
    got, start = 0, time.perf_counter()
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: cat is done
                break
            if not chunk:
                break
            got += len(chunk)
    finally:
        os.close(master)
        os.waitpid(pid, 0)
    return got / 1e6 / (time.perf_counter() - start)


def host_keystrokes(count: int) -> list[float]:
    """Echo round trips (ms) of keys typed into bash on a host pty."""
    pid, master = pty.fork()
    if pid == 0:
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], {**os.environ, "PS1": "$ ", "TERM": "xterm"})
    try:
        _drain_until(master, b"$ ")
        times = []
        for i in range(count):
            key, echo = (b"a", b"a") if i % 2 == 0 else (b"\x7f", b"\x08")
            start = time.perf_counter()
            os.write(master, key)
            _drain_until(master, echo)
            times.append((time.perf_counter() - start) * 1000)
        return times
    finally:
        os.close(master)
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def _drain_until(fd: int, needle: bytes) -> None:
    seen = b""
    while needle not in seen:
        select.select([fd], [], [], 10)
        seen = (seen + os.read(fd, 65536))[-4096:]


# -- through the backend ---------------------------------------------------------------------


def main() -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-pty-{os.getpid()}-") as tmp, backend(Path(tmp) / "data") as (url, pid):
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
        devbox = api.post("/v1/devboxes/create_and_await_running", json={"name": "bench-pty"}).json()
        while devbox["status"] != "running":
            devbox = api.post(f"/v1/devboxes/{devbox['id']}/wait_for_status", json={"statuses": ["running"]}).json()
        make = f"head -c {FILE_BYTES * 3 // 4} /dev/urandom | base64 -w 0 > big; wc -c < big"
        made = api.post(f"/v1/devboxes/{devbox['id']}/execute_sync", json={"command": make}).json()
        assert int(made["stdout"]) == FILE_BYTES, made
        tunnel = api.post(f"/v1/devboxes/{devbox['id']}/create_pty_tunnel").json()
        headers = {"Authorization": f"Bearer {tunnel['auth_token']}"}
        view = httpx.get(f"{url}/tunnel/{tunnel['tunnel_key']}/pty/bench", headers=headers, timeout=60).json()
        ws = connect(
            url.replace("http://", "ws://") + view["connect_url"],
            additional_headers=headers, max_size=None, compression=None, open_timeout=60,
        )  # fmt: skip
        reader = Reader(ws)
        ws.send(b"PS1='rdy''> '\n")
        reader.until(b"rdy> ")

        # Throughput and memory.
        before = rss(pid)
        with PeakRss(pid) as peak:
            start = time.perf_counter()
            ws.send(b"cat big; echo; echo e-$((1+1))-nd\n")
            reader.until(b"e-2-nd")  # no base64 holds a "-"
            seconds = time.perf_counter() - start
        got = reader.received
        reader.until(b"rdy> ")
        mbps = got / 1e6 / seconds
        growth = peak.peak - before

        # Keystroke echo at the prompt.
        times = []
        for i in range(KEYSTROKES):
            key, echo = (b"a", b"a") if i % 2 == 0 else (b"\x7f", b"\x08")
            start = time.perf_counter()
            ws.send(key)
            reader.until(echo, timeout=10)
            times.append((time.perf_counter() - start) * 1000)
        ws.close()

        # Baselines in the same run, on the same bytes.
        local = Path(tmp) / "big"
        api_file = api.post(f"/v1/devboxes/{devbox['id']}/download_file", json={"path": "big"})
        local.write_bytes(api_file.content)
        host_mbps = host_cat(local)
        host_times = host_keystrokes(KEYSTROKES)
        api.post(f"/v1/devboxes/{devbox['id']}/shutdown")

    load = Path("/proc/loadavg").read_text().split()[:3]
    p50, p99 = statistics.median(times), percentile(times, 99)
    h50, h99 = statistics.median(host_times), percentile(host_times, 99)
    print(f"load average: {' '.join(load)}")
    print(f"cat of {FILE_BYTES / 2**20:.0f} MiB through the WebSocket: {mbps:.0f} MB/s "
          f"({got / 1e6:.0f} MB in {seconds:.2f} s); host pty baseline {host_mbps:.0f} MB/s; ratio {mbps / host_mbps:.2f}")  # fmt: skip
    print(f"backend RSS: {before / 2**20:.1f} MiB before, peak growth {growth / 2**20:.1f} MiB "
          f"(target <= {TARGET_RSS_GROWTH / 2**20:.0f} MiB): {'ok' if growth <= TARGET_RSS_GROWTH else 'OVER'}")  # fmt: skip
    print(f"keystroke echo through the WebSocket ({KEYSTROKES} keys): p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
          f"host pty baseline p50 {h50:.3f} ms, p99 {h99:.3f} ms; ratio p50 {p50 / h50:.1f}x")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
