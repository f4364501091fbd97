"""Benchmark of the shared embedded backend and of stopping `devbox-mcp` on a signal.

Prints, measured in the same run (medians over `--runs`):
- a fresh `devbox-mcp serve` process: spawn → initialize → first `tools/call` answered, when it
  starts the backend (cold), when it finds the running one (attach), and when it is simply told
  the backend's URL and key (the baseline: no discovery at all); attach/baseline is the cost
  of discovery (target ≤ 1.2); and finding the running backend alone, in process;
- SIGINT / SIGTERM → exit of a stdio server, idle and with an `execute` call in progress, against
  the baseline of a normal stop (the client closes stdin); and of an HTTP server with an open
  session (target: every one under 1 s);
- `devbox-mcp local-api --stop` of a backend with running devboxes and a command in progress:
  SIGTERM → sandboxes stopped, devboxes suspended, data directory released.

Run: .venv/bin/python -m bench.shared_backend [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mcp_server.commands.embedded import find_or_start
from mcp_server.local import service

EXE = str(Path(sys.executable).with_name("devbox-mcp"))
CLIENT = {"name": "bench", "version": "1"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": CLIENT}}  # fmt: skip
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLOOP_", "DEVBOX_LOCAL_"))}
    return {**base, **extra}


def spawn(data_dir: Path, environ: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [EXE, "serve", "--data-dir", str(data_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environ, text=True,
    )  # fmt: skip


def send(proc: subprocess.Popen[str], *messages: dict) -> None:
    assert proc.stdin
    for message in messages:
        proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()


def read_until(proc: subprocess.Popen[str], done) -> dict:  # noqa: ANN001 - a predicate
    assert proc.stdout
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("the server exited early")
        message = json.loads(line)
        if done(message):
            return message


def call(proc: subprocess.Popen[str], request_id: int, name: str, arguments: dict, **meta: object) -> dict:
    params: dict = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    send(proc, {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
    return read_until(proc, lambda m: m.get("id") == request_id)


def first_call(data_dir: Path, environ: dict[str, str]) -> float:
    """Seconds from spawning a server to the answer of its first tools/call; the server then stops."""
    start = time.perf_counter()
    proc = spawn(data_dir, environ)
    send(proc, INIT, INITIALIZED)
    answer = call(proc, 2, "list_devboxes", {})
    elapsed = time.perf_counter() - start
    assert not answer["result"].get("isError"), answer
    assert proc.stdin
    proc.stdin.close()
    proc.wait(timeout=30)
    return elapsed


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:7.1f} ms"


def bench_first_call(root: Path, runs: int) -> None:
    cold, attach, direct = [], [], []
    shared = root / "shared"
    first_call(shared, env())  # starts the shared backend used below
    state = service.read_state(shared)
    assert state is not None
    told = env(RUNLOOP_BASE_URL=state.base_url, RUNLOOP_API_KEY=state.api_key)
    found = []
    for _ in range(max(runs, 20)):
        start = time.perf_counter()
        assert find_or_start(shared, None) == (state, False)
        found.append(time.perf_counter() - start)
    try:
        for i in range(runs):
            fresh = root / f"cold-{i}"
            try:
                cold.append(first_call(fresh, env()))
            finally:
                service.stop(fresh)
            attach.append(first_call(shared, env()))
            direct.append(first_call(shared, told))
    finally:
        service.stop(shared)
    base = statistics.median(direct)
    print("spawn → first tools/call answered (median):")
    print(f"  told the backend's URL and key (baseline) {median_ms(direct)}")
    print(
        f"  attach to the running shared backend      {median_ms(attach)}  "
        f"({statistics.median(attach) / base:.2f}x; target ≤ 1.2)"
    )
    print(
        f"  start the shared backend (cold)           {median_ms(cold)}  "
        f"({statistics.median(cold) / base:.2f}x)"
    )
    print(f"finding the running backend alone (state file, lock, /healthz): {median_ms(found)}")


def stop_time(proc: subprocess.Popen[str], how: signal.Signals | None) -> float:
    start = time.perf_counter()
    if how is None:
        assert proc.stdin
        proc.stdin.close()
    else:
        proc.send_signal(how)
    proc.wait(timeout=60)
    return time.perf_counter() - start


def bench_signals(root: Path, runs: int) -> None:
    data = root / "signals"
    results: dict[str, list[float]] = {}
    setup = spawn(data, env())
    send(setup, INIT, INITIALIZED)
    read_until(setup, lambda m: m.get("id") == 1)
    created = call(setup, 2, "create_devbox", {"name": "bench-signals"})
    devbox = created["result"]["structuredContent"]["id"]
    stop_time(setup, None)
    try:
        for _ in range(runs):
            for how in (None, signal.SIGINT, signal.SIGTERM):
                for busy in (False, True):
                    proc = spawn(data, env())
                    send(proc, INIT, INITIALIZED)
                    read_until(proc, lambda m: m.get("id") == 1)
                    if busy:  # an execute in progress: its output has arrived as progress
                        arguments = {"devbox_id": devbox, "command": "echo started; sleep 300"}
                        params = {"name": "execute", "arguments": arguments, "_meta": {"progressToken": "p"}}
                        send(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params})
                        read_until(proc, lambda m: "started" in json.dumps(m.get("params", {})))
                    else:
                        call(proc, 2, "list_devboxes", {})
                    state = "call in progress" if busy else "idle"
                    label = f"stdio, {state:<16}, {how.name if how else 'stdin closed'}"
                    results.setdefault(label, []).append(stop_time(proc, how))
        for how in (signal.SIGINT, signal.SIGTERM):
            for busy in (False, True):
                label = f"http, {'call in progress' if busy else 'idle':<16}, {how.name}"
                for _ in range(runs):
                    results.setdefault(label, []).append(http_stop_time(root, how, devbox if busy else None))
    finally:
        service.stop(data)
    print("stop → process exited (median, max):")
    for label, samples in results.items():
        print(f"  {label:<48} {median_ms(samples)}  max {max(samples) * 1e3:7.1f} ms")


def http_stop_time(root: Path, how: signal.Signals, devbox: str | None) -> float:
    """`serve --transport http` on the shared backend, a session open (and a call in progress in
    `devbox`, if given): signal → exit."""
    data = root / "signals"
    stderr = root / "http.stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [EXE, "serve", "--transport", "http", "--port", "0", "--no-auth", "--data-dir", str(data)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env(),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"streamable HTTP at (http://\S+/mcp)", stderr.read_text())):
            assert time.monotonic() < deadline and proc.poll() is None, stderr.read_text()
            time.sleep(0.02)
        url = match[1]
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        with httpx.Client(timeout=30) as http:
            opened = http.post(url, json=INIT, headers=headers)
            session = {
                "mcp-session-id": opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            http.post(url, json=INITIALIZED, headers={**headers, **session})
            listed = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "list_devboxes", "arguments": {}},
            }
            http.post(url, json=listed, headers={**headers, **session}).raise_for_status()
            if devbox is None:
                start = time.perf_counter()
                proc.send_signal(how)
                proc.wait(timeout=60)
                return time.perf_counter() - start
            arguments = {"devbox_id": devbox, "command": "echo started; sleep 300"}
            params = {"name": "execute", "arguments": arguments, "_meta": {"progressToken": "p"}}
            running = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}
            with http.stream("POST", url, json=running, headers={**headers, **session}) as response:
                for line in response.iter_lines():
                    if line.startswith("data:") and "started" in line:  # its output arrived as progress
                        break
                start = time.perf_counter()
                proc.send_signal(how)
                proc.wait(timeout=60)
                return time.perf_counter() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def bench_backend_stop(root: Path, runs: int, devboxes: int) -> None:
    samples = []
    for i in range(runs):
        data = root / f"stop-{i}"
        proc = spawn(data, env())
        send(proc, INIT, INITIALIZED)
        read_until(proc, lambda m: m.get("id") == 1)
        for n in range(devboxes):
            box = call(proc, 10 + n, "create_devbox", {"name": f"bench-stop-{n}"})["result"][
                "structuredContent"
            ]
            call(
                proc, 100 + n, "execute", {"devbox_id": box["id"], "command": "sleep 300", "wait_seconds": 0}
            )
        stop_time(proc, None)
        start = time.perf_counter()
        assert service.stop(data) is not None
        samples.append(time.perf_counter() - start)
    print(
        f"local-api --stop with {devboxes} running devbox(es), a command in each: {median_ms(samples)}  "
        f"max {max(samples) * 1e3:7.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="devbox-bench-shared-") as tmp:
        root = Path(tmp)
        bench_first_call(root, args.runs)
        bench_signals(root, args.runs)
        for devboxes in (1, 5):
            bench_backend_stop(root, max(1, args.runs // 2), devboxes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
