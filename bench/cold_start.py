"""Cold start of `devbox-mcp serve` over stdio: spawn → `initialize` answered, split in three.

Prints medians over interleaved runs, each part measured in the same run:
- the interpreter: spawn → `python -c pass` exits;
- the MCP SDK's import: `python -c "import mcp.server.mcpserver, mcp.server.stdio"` less the interpreter;
- ours: our imports and building the server, timed inside one process after the SDK's import
  (a difference of two spawn medians drowns in their noise on a loaded machine); and the API
  client, which is made at the first tool call, not before `initialize` is answered.

No embedded backend is started (none is needed before the first tool call), and none is running:
the data directory is fresh. Our package is byte-compiled first, as installing the wheel does
(an editable install under PYTHONDONTWRITEBYTECODE would recompile it at every start).

Run: .venv/bin/python -m bench.cold_start [--runs N]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mcp_server

EXE = str(Path(sys.executable).with_name("devbox-mcp"))
INITIALIZE = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
}) + "\n"  # fmt: skip


def timed_exit(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def timed_initialize(env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([EXE, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(INITIALIZE.encode())
    proc.stdin.flush()
    answer = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.kill()
    proc.wait()
    assert b'"result"' in answer, answer[:200]
    return elapsed


# Ours, attributed inside one process (the SDK imported first, as `serve` does).
OURS = """
import time
import mcp.server.mcpserver, mcp.server.stdio
t0 = time.perf_counter()
from mcp_server.commands import cli, serve
from mcp_server.runloop import RunloopClient
t1 = time.perf_counter()
factory = serve.server_factory(serve.api_clients(cli.default_data_dir()))
server = factory()
t2 = time.perf_counter()
RunloopClient("http://embedded-backend")
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def ours_split(env: dict[str, str], runs: int) -> tuple[float, float, float]:
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", OURS], env=env, check=True, capture_output=True, text=True).stdout
        samples.append([float(x) for x in out.split()])
    return tuple(statistics.median(column) for column in zip(*samples, strict=True))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    compileall.compile_dir(Path(mcp_server.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory(prefix=f"bench-cold-{os.getpid()}-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLOOP_", "DEVBOX_MCP_"))}
        env["DEVBOX_MCP_DATA_DIR"] = tmp
        python, sdk, total = [], [], []
        for i in range(args.runs + 1):
            p = timed_exit([sys.executable, "-c", "pass"], env)
            s = timed_exit([sys.executable, "-c", "import mcp.server.mcpserver, mcp.server.stdio"], env)
            t = timed_initialize(env)
            if i:  # the first round warms the page cache
                python.append(p)
                sdk.append(s)
                total.append(t)
        p, s, t = (statistics.median(v) for v in (python, sdk, total))
        backend_started = (Path(tmp) / "backend.json").exists()
        imports, build, client = ours_split(env, args.runs)
    ours = imports + build
    print(f"cold start spawn → initialize, median of {args.runs}: {t * 1e3:.0f} ms; interpreter {p * 1e3:.0f} ms, "
          f"MCP SDK import {(s - p) * 1e3:.0f} ms (alone), ours {ours * 1e3:.0f} ms = our imports {imports * 1e3:.0f} ms "
          f"+ building the server {build * 1e3:.0f} ms (timed in one process after the SDK); the API client, made at "
          f"the first tool call since, {client * 1e3:.0f} ms; embedded backend started: "
          f"{'yes' if backend_started else 'no'}; load {Path('/proc/loadavg').read_text().strip()}")

if __name__ == "__main__":
    main()
