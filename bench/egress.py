"""Benchmark of devbox egress: through a network policy's proxy vs the default egress, on test hosts.

The backend runs inside a network namespace made here (tests/support/testnet.py), so every request
goes to a test host in another namespace, never to the real network. Each request is a new HTTP/1.1
connection and one small GET (what a package manager's metadata fetch looks like), timed inside the
devbox by a Python loop:
- direct: the same loop run in the backend's namespace, with no devbox at all (the floor);
- default: an isolated devbox, by address (slirp4netns in the egress namespace, then the uplink);
- proxy: a devbox under a hostname allowlist, `http://allowed.example/` through its proxy (which
  also resolves the name, through the test DNS server, on each request).
Prints p50/p99 per path, the proxy/default p50 ratio (the issue's figure) and default/direct.
Needs root (network namespaces). Run: .venv/bin/python -m bench.egress [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.testnet import ADDRESSES, backend_in, in_netns, make_testnet  # noqa: E402

from bench.mcp import percentile  # noqa: E402

LOOP = """
import http.client, json, os, sys, time
target, n = sys.argv[1], int(sys.argv[2])
proxy = os.environ.get("http_proxy")
times = []
for _ in range(n):
    start = time.perf_counter()
    if proxy:
        c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
        c.request("GET", "http://" + target + "/")
    else:
        c = http.client.HTTPConnection(target, 80, timeout=10)
        c.request("GET", "/")
    r = c.getresponse()
    assert r.status == 200, r.status
    r.read()
    c.close()
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def line(name: str, times: list[float]) -> str:
    return (
        f"{name:8} {len(times)} requests   p50 {percentile(times, 0.5) * 1000:7.2f} ms   "
        f"p99 {percentile(times, 0.99) * 1000:7.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.egress: skipped, it needs root (it makes network namespaces)")
        return
    from runloop_api_client import Runloop

    with tempfile.TemporaryDirectory(prefix=f"bench-egress-{os.getpid()}-") as tmp, make_testnet(Path(tmp)) as net:
        script = Path(tmp) / "loop.py"
        script.write_text(LOOP)
        direct = subprocess.run(
            [*in_netns(net.host), sys.executable, str(script), ADDRESSES["public"], str(args.requests)],
            capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        results = {"direct": json.loads(direct.stdout)}
        with backend_in(net, Path(tmp) / "data") as backend, Runloop(
            bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0, timeout=600
        ) as sdk:
            policy = sdk.network_policies.create(name="bench", allowed_hostnames=["allowed.example"])
            default = sdk.devboxes.create_and_await_running(name="bench-default")
            proxied = sdk.devboxes.create_and_await_running(launch_parameters={"network_policy_id": policy.id})
            try:
                for name, box, target in (("default", default.id, ADDRESSES["public"]),
                                          ("proxy", proxied.id, "allowed.example")):  # fmt: skip
                    sdk.devboxes.write_file_contents(box, file_path="loop.py", contents=LOOP)
                    done = sdk.devboxes.execute_sync(box, command=f"python3 loop.py {target} {args.requests}")
                    if done.exit_status:
                        raise SystemExit(f"{name}: {done.stderr}")
                    results[name] = json.loads(done.stdout or "[]")
            finally:
                sdk.devboxes.shutdown(default.id)
                sdk.devboxes.shutdown(proxied.id)
    for name, times in results.items():
        print(line(name, times))
    p50 = {name: percentile(times, 0.5) for name, times in results.items()}
    print(f"proxy/default p50 ratio: {p50['proxy'] / p50['default']:.2f}")
    print(f"default/direct p50 ratio: {p50['default'] / p50['direct']:.2f} (the cost of the devbox's network path)")
    print("load:", Path("/proc/loadavg").read_text().strip())


if __name__ == "__main__":
    main()
