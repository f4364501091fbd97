"""Benchmarks of enforced devbox sizes, printed as ratios against baselines of the same run.

    .venv/bin/python -m bench.sizes [--runs 20] [--idle 10] [--seconds 3]

- create→running of a default devbox with its limits (cgroups, a loop-mounted disk, /proc/meminfo)
  against the same backend code with limits off (as on a host that can enforce none).
- `execute true` round trip, with limits against without (each command joins the cgroups first).
- memory per idle default devbox on the host: the resident memory (PSS) of its host processes
  (bubblewrap, its pid 1, slirp4netns), what its memory cgroup is charged (kernel objects, page
  cache, tmpfs), and the host's MemAvailable drop over `--idle` devboxes divided by their number.
- a CPU-bound loop in 0.5, 1 and 2-CPU devboxes (one loop per CPU the size shows): the CPU time
  the devbox's cgroup got over the wall time, as a fraction of a core, against the same loop on
  the host. The machine is shared: run it when it is otherwise idle (`uptime` is printed).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.local import cgroups, disk  # noqa: E402
from mcp_server.local.server import RunningBackend, start_in_thread  # noqa: E402


def client_for(backend: RunningBackend) -> httpx.Client:
    return httpx.Client(base_url=backend.base_url, headers={"Authorization": f"Bearer {backend.api_key}"}, timeout=120)


def create(client: httpx.Client, params: dict[str, object] | None = None) -> str:
    view = client.post("/v1/devboxes/create_and_await_running", json={"launch_parameters": params or {}}).json()
    if view.get("status") != "running":
        raise SystemExit(f"devbox did not reach running: {view}")
    return view["id"]


def create_to_running(backends: list[RunningBackend], runs: int) -> list[list[float]]:
    """Alternating between the backends, so that a change in the host's load hits both alike."""
    samples: list[list[float]] = [[] for _ in backends]
    clients = [client_for(b) for b in backends]
    try:
        for run in range(runs + 2):
            for client, out in zip(clients, samples, strict=True):
                started = time.perf_counter()
                devbox = create(client)
                elapsed = time.perf_counter() - started
                client.post(f"/v1/devboxes/{devbox}/shutdown")
                if run >= 2:  # the first ones warm caches (the /etc scan, imports)
                    out.append(elapsed)
                time.sleep(0.3)  # a create every so often, as an agent makes them (spare disks refill)
    finally:
        for client in clients:
            client.close()
    return samples


def execute_true(backends: list[RunningBackend], runs: int) -> list[list[float]]:
    samples: list[list[float]] = [[] for _ in backends]
    clients = [client_for(b) for b in backends]
    devboxes = [create(c) for c in clients]
    try:
        for run in range(runs + 3):
            for client, devbox, out in zip(clients, devboxes, samples, strict=True):
                started = time.perf_counter()
                view = client.post(
                    f"/v1/devboxes/{devbox}/execute", json={"command": "true", "command_id": str(uuid.uuid4())}
                ).json()
                if run >= 3:
                    out.append(time.perf_counter() - started)
                if view.get("exit_status") != 0:
                    raise SystemExit(f"execute true failed: {view}")
    finally:
        for client, devbox in zip(clients, devboxes, strict=True):
            client.post(f"/v1/devboxes/{devbox}/shutdown")
            client.close()
    return samples


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def idle_memory(backend: RunningBackend, count: int) -> dict[str, float]:
    manager = backend._server.config.app.state.components[0].extra["devboxes"]
    with client_for(backend) as client:
        before = _mem_available()
        ids = [create(client) for _ in range(count)]
        time.sleep(3)  # let the sandboxes' start-up allocations settle (a figure, not a synchronisation)
        after = _mem_available()
        pss, charged = [], []
        for devbox_id in ids:
            sandbox = manager.get(devbox_id).sandbox
            pids = [sandbox._bwrap.pid, *_children(sandbox._bwrap.pid)]
            if sandbox._slirp is not None:
                pids.append(sandbox._slirp.pid)
            pss.append(sum(_pss(p) for p in pids))
            charged.append(manager.limits.live(devbox_id).get("memory_used_bytes", 0))
        for devbox_id in ids:
            client.post(f"/v1/devboxes/{devbox_id}/shutdown")
    return {
        "pss": statistics.median(pss),
        "charged": statistics.median(charged),
        "host": (before - after) / count,
    }


LOOP = "while :; do :; done"


def host_loop_fraction(seconds: float) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["timeout", str(seconds), "sh", "-c", LOOP], check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) / wall


def devbox_loop_fraction(backend: RunningBackend, params: dict[str, object], loops: int, seconds: float) -> float:
    with client_for(backend) as client:
        devbox = create(client, params)

        def cpu() -> float:
            return float(client.get(f"/v1/devboxes/{devbox}").json()["resources"]["cpu_seconds"])

        command = f"for i in $(seq {loops}); do timeout {seconds} sh -c '{LOOP}' & done; wait"
        before = cpu()
        started = time.perf_counter()
        client.post(f"/v1/devboxes/{devbox}/execute_sync", json={"command": command})
        wall = time.perf_counter() - started
        used = cpu() - before
        client.post(f"/v1/devboxes/{devbox}/shutdown")
    return used / wall


def start_without_limits(data_dir: Path) -> RunningBackend:
    """The same backend code as on a host that can enforce nothing: no cgroups, no disk images."""
    detect, reason = cgroups.detect, disk.unavailable_reason
    cgroups.detect = lambda: cgroups.Host(missing={c: "off for the benchmark" for c in cgroups.LIMITED})  # type: ignore[assignment]
    disk.unavailable_reason = lambda: "off for the benchmark"  # type: ignore[assignment]
    try:
        return start_in_thread(data_dir)  # its limits are read as it starts
    finally:
        cgroups.detect, disk.unavailable_reason = detect, reason  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--idle", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if os.geteuid() != 0:
        print("note: not root: limits are not enforced here, so both columns measure the same thing")
    with tempfile.TemporaryDirectory(prefix="devbox-bench-sizes-") as tmp:
        limited = start_in_thread(Path(tmp) / "limited")
        free = start_without_limits(Path(tmp) / "free")
        try:
            gaps = limited._server.config.app.state.components[0].extra["devboxes"].limits.host_gaps(sandboxed=True)
            print(f"limits not enforceable on this host: {gaps or 'none'}")
            create_on, create_off = create_to_running([limited, free], args.runs)
            exec_on, exec_off = execute_true([limited, free], args.runs)
            memory = idle_memory(limited, args.idle)
            host = host_loop_fraction(args.seconds)
            cpu = {
                cores: devbox_loop_fraction(limited, params, loops, args.seconds)
                for cores, params, loops in (
                    (0.5, {"resource_size_request": "X_SMALL"}, 1),
                    (1, {"resource_size_request": "SMALL"}, 1),
                    (2, {"resource_size_request": "MEDIUM"}, 2),
                )
            }
        finally:
            limited.stop()
            free.stop()

    on, off = statistics.median(create_on), statistics.median(create_off)
    print(f"create→running (default size), median of {args.runs}:")
    print(f"  limits off {off * 1000:7.2f} ms   limits on {on * 1000:7.2f} ms   ratio {on / off:4.2f}x")
    on, off = statistics.median(exec_on), statistics.median(exec_off)
    print(f"execute `true` round trip, median of {args.runs}:")
    print(f"  limits off {off * 1000:7.2f} ms   limits on {on * 1000:7.2f} ms   ratio {on / off:4.2f}x")
    mib = 1024 * 1024
    print(f"memory per idle default devbox (median of {args.idle}):")
    print(f"  host processes (PSS) {memory['pss'] / mib:6.1f} MiB   charged to its memory cgroup "
          f"{memory['charged'] / mib:6.1f} MiB   host MemAvailable drop / devbox {memory['host'] / mib:6.1f} MiB")  # fmt: skip
    print(f"CPU-bound loop for {args.seconds:g} s: fraction of a core obtained (host loop: {host:4.2f})")
    for cores, fraction in cpu.items():
        print(f"  {cores:g}-CPU devbox  {fraction:4.2f} of a core   ({fraction / host:4.2f}x the host loop, "
              f"{fraction / cores:4.2f} of its size)")  # fmt: skip


if __name__ == "__main__":
    main()
