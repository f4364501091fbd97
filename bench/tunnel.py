"""Benchmarks of the tunnel proxy, as ratios against the same requests made inside the devbox.

One `devbox-mcp local-api` process (the proxy runs in it), one isolated devbox of size MEDIUM
(the machine's two CPUs, so the client inside it is not throttled more than the one outside)
running `tests/support/webapp.py`. The same stdlib client script (`CLIENT`) runs inside the
devbox against 127.0.0.1:8000 (the baseline: no tunnel) and on the host through the tunnel:
- latency: sequential GETs on one keep-alive connection; p50 and p90, tunnel / inside
  (target ≤ 2 at p50);
- throughput: `--clients` keep-alive connections, each one request at a time, for `--seconds`:
  requests/s, inside / tunnel;
- a `--megabytes` download (one GET): MB/s through the tunnel (target ≥ 200) against inside,
  and the backend process's resident memory growth while it streams (peak over before; target
  ≤ 20 MB).

Run: .venv/bin/python -m bench.tunnel [--requests 2000] [--clients 20] [--seconds 5] [--megabytes 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench.mcp import start_backend

WEBAPP = Path(__file__).resolve().parent.parent / "tests" / "support" / "webapp.py"

CLIENT = r'''
import http.client, json, sys, threading, time
host, port, name, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
count = int(sys.argv[5])
headers = {"Host": name}

def connection():
    return http.client.HTTPConnection(host, port, timeout=60)

def get(conn, path):
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, (response.status, body[:200])
    return body

if mode == "latency":
    conn, times = connection(), []
    for _ in range(count):
        start = time.perf_counter()
        get(conn, "/conn")
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times}))
elif mode == "rate":
    clients, seconds = count, float(sys.argv[6])
    done, stop = [0] * clients, time.perf_counter() + seconds
    def run(i):
        conn = connection()
        while time.perf_counter() < stop:
            get(conn, "/conn")
            done[i] += 1
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"rate": sum(done) / (time.perf_counter() - start)}))
else:
    conn = connection()
    start = time.perf_counter()
    conn.request("GET", f"/bytes/{count}", headers=headers)
    response, got = conn.getresponse(), 0
    while chunk := response.read(1 << 20):
        got += len(chunk)
    assert got == count, got
    print(json.dumps({"seconds": time.perf_counter() - start}))
'''


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {key} for pid {pid}")


class Bench:
    def __init__(self, api: httpx.Client, devbox_id: str, tunnel: dict, host_python: str) -> None:
        self.api = api
        self.devbox_id = devbox_id
        parts = urlsplit(tunnel["url_template"].format(port=8000))
        self.tunnel = ("127.0.0.1", str(parts.port), parts.netloc)
        self.inside = ("127.0.0.1", "8000", "127.0.0.1:8000")
        self.host_python = host_python
        self.client_path = Path(tempfile.mkdtemp(prefix=f"bench-tunnel-client-{os.getpid()}-")) / "client.py"
        self.client_path.write_text(CLIENT)

    def close(self) -> None:
        shutil.rmtree(self.client_path.parent, ignore_errors=True)

    def in_devbox(self, *args: str) -> dict:
        command = "python3 client.py " + " ".join(self.inside + args)
        r = self.api.post(f"/v1/devboxes/{self.devbox_id}/execute_sync", json={"command": command}, timeout=600)
        r.raise_for_status()
        result = r.json()
        if result.get("exit_status") != 0:
            raise SystemExit(f"the client in the devbox failed: {result.get('stderr')}")
        return json.loads(result["stdout"])

    def through_tunnel(self, *args: str) -> dict:
        out = subprocess.run([self.host_python, str(self.client_path), *self.tunnel, *args],
                             capture_output=True, text=True, check=True, timeout=600)  # fmt: skip
        return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    # The same interpreter family on both sides: Debian's python3 (the devbox's is Debian's too).
    host_python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3") or "python3"

    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-tunnel-{os.getpid()}-"))
    proc, url, key = start_backend(data_dir)
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    devbox_id, bench = None, None
    try:
        r = api.post("/v1/devboxes/create_and_await_running",
                     json={"launch_parameters": {"resource_size_request": "MEDIUM"}})  # fmt: skip
        r.raise_for_status()
        devbox_id = r.json()["id"]
        for name, text in (("webapp.py", WEBAPP.read_text()), ("client.py", CLIENT)):
            api.post(f"/v1/devboxes/{devbox_id}/write_file_contents",
                     json={"file_path": name, "contents": text}).raise_for_status()  # fmt: skip
        started = api.post(f"/v1/devboxes/{devbox_id}/execute_sync", json={"command": (
            "nohup python3 webapp.py 8000 > app.log 2>&1 & "
            "for i in $(seq 200); do grep -q serving app.log && exit 0; sleep 0.05; done; exit 1")}).json()  # fmt: skip
        assert started["exit_status"] == 0, started
        tunnel = api.post(f"/v1/devboxes/{devbox_id}/enable_tunnel", json={}).json()
        bench = Bench(api, devbox_id, tunnel, host_python)

        print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
        # Latency: a warm-up round each, then the measured one.
        n = str(args.requests)
        bench.in_devbox("latency", "200")
        bench.through_tunnel("latency", "200")
        inside = bench.in_devbox("latency", n)["times"]
        tunneled = bench.through_tunnel("latency", n)["times"]
        for q in (0.5, 0.9):
            a, b = percentile(inside, q), percentile(tunneled, q)
            print(f"GET p{int(q * 100)}: inside {a * 1e3:.3f} ms, through the tunnel {b * 1e3:.3f} ms: ratio {b / a:.2f}"
                  + (" (target ≤ 2)" if q == 0.5 else ""))  # fmt: skip

        c, s = str(args.clients), str(args.seconds)
        rate_inside = bench.in_devbox("rate", c, s)["rate"]
        rate_tunnel = bench.through_tunnel("rate", c, s)["rate"]
        print(f"{args.clients} clients: inside {rate_inside:.0f} req/s, through the tunnel {rate_tunnel:.0f} req/s: "
              f"ratio {rate_inside / rate_tunnel:.2f}")  # fmt: skip

        size = str(args.megabytes * 1_000_000)
        down_inside = bench.in_devbox("download", size)["seconds"]
        before = rss_kib(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        down_tunnel = bench.through_tunnel("download", size)["seconds"]
        peak = rss_kib(proc.pid, "VmHWM")
        mb_inside, mb_tunnel = args.megabytes / down_inside, args.megabytes / down_tunnel
        print(f"{args.megabytes} MB download: inside {mb_inside:.0f} MB/s, through the tunnel {mb_tunnel:.0f} MB/s "
              f"(target ≥ 200): ratio {mb_inside / mb_tunnel:.2f}")  # fmt: skip
        print(f"backend RSS during the download: {before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB: "
              f"growth {(peak - before) / 1024:.1f} MiB (target ≤ 20)")  # fmt: skip
        print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        if bench is not None:
            bench.close()
        if devbox_id is not None:
            api.post(f"/v1/devboxes/{devbox_id}/shutdown")
        api.close()
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
