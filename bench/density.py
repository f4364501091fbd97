"""Idle density: what an idle default devbox costs the host, and how create→running grows with them.

    sudo .venv/bin/python -m bench.density [--steps 1,10,25,50,100] [--probes 7] [--min-free-gib 8]

Measured, on a root backend (default devboxes: SMALL, isolated network, a system and a disk of their own):
- memory per idle devbox: what its memory cgroup is charged (memory.usage_in_bytes, or memory.current
  on cgroup v2: its processes, page cache, tmpfs files and the kernel objects charged to it; of which
  kernel: memory.kmem.usage_in_bytes, v1 only), the RSS and PSS of every host process it owns
  (bubblewrap's monitor and the sandbox's pid 1, in its cgroup; slirp4netns, outside it), and the
  backend's own RSS growth per devbox; beside them, the host's MemAvailable drop and Slab growth per
  devbox, which other work on a shared machine blurs.
- create→running with N idle devboxes (the median of --probes creates, each shut down before the
  next), first with none (the baseline), then for each N of --steps; bounded: it stops adding
  devboxes when the host's MemAvailable falls below --min-free-gib.
Extrapolated (and printed as such): a least-squares line through (N, create median) and the N at
which create takes twice the baseline; how many idle devboxes the machine's memory holds at the
per-devbox figure (MemTotal less --min-free-gib kept for everything else). The smaller is the answer.

Every devbox it makes is shut down, also when it fails or is interrupted. The load is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sizes import _children, client_for, create  # noqa: E402
from mcp_server.local.server import RunningBackend, start_in_thread  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
SETTLE_SECONDS = 2.0
KERNEL_FIELDS = ("Slab", "KernelStack", "PageTables", "Buffers")  # /proc/meminfo  # after a batch of creates: start-up allocations settle, spare disks refill


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def meminfo() -> dict[str, int]:
    found = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        found[name] = int(rest.split()[0]) * 1024
    return found


def rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def manager_of(backend: RunningBackend) -> Any:
    return backend._server.config.app.state.components[0].extra["devboxes"]


@dataclass
class Footprint:
    """One idle devbox's memory on the host, in bytes."""

    charged: int  # its memory cgroup's usage
    kernel: int  # of which kernel memory (cgroup v1's kmem counter; 0 where there is none)
    rss: int  # its host processes: bubblewrap's monitor, the sandbox's pid 1 and what runs in it, slirp4netns
    pss: int  # the same, shared pages divided among their users
    outside_pss: int  # of that PSS, what runs outside its cgroup (slirp4netns), so not in `charged`
    processes: int


def footprint(manager: Any, devbox_id: str) -> Footprint:
    sandbox = manager.get(devbox_id).sandbox
    running = manager.limits._running.get(devbox_id)
    inside = [sandbox._bwrap.pid, *_children(sandbox._bwrap.pid)]
    inside += [grandchild for pid in inside[1:] for grandchild in _children(pid)]
    outside = [sandbox._slirp.pid] if sandbox._slirp is not None else []
    sizes = [rollup(pid) for pid in inside + outside]
    charged = kernel = 0
    if running is not None and running.cgroup is not None:
        charged = (running.cgroup.memory() or {}).get("usage", 0)
        memory_dir = running.cgroup._dir("memory")
        if memory_dir is not None and (memory_dir / "memory.kmem.usage_in_bytes").exists():
            kernel = int((memory_dir / "memory.kmem.usage_in_bytes").read_text())
    return Footprint(
        charged, kernel, sum(r for r, _ in sizes), sum(p for _, p in sizes),
        sum(rollup(pid)[1] for pid in outside), len(inside) + len(outside),
    )  # fmt: skip


def probe_creates(client: httpx.Client, probes: int) -> float:
    """Median create→running of `probes` default devboxes, each shut down before the next."""
    samples = []
    for _ in range(probes):
        started = time.perf_counter()
        devbox = create(client)
        samples.append(time.perf_counter() - started)
        client.post(f"/v1/devboxes/{devbox}/shutdown")
        time.sleep(0.3)  # a create every so often, as an agent makes them (spare disks refill)
    return statistics.median(samples)


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope of create seconds over idle devboxes."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="1,10,25,50,100", help="idle devboxes at each step, ascending")
    parser.add_argument("--probes", type=int, default=7, help="creates timed at each step")
    parser.add_argument("--min-free-gib", type=float, default=8.0, help="stop adding devboxes below this MemAvailable")
    args = parser.parse_args(argv)
    steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    floor = int(args.min_free_gib * GIB)
    if os.geteuid() != 0:
        print("idle density needs a root backend (devboxes with a system, cgroups and a disk of their own)")
        return 0
    total = meminfo()["MemTotal"]
    print(f"idle density of default devboxes; host: {os.cpu_count()} CPUs, {total / GIB:.1f} GiB; load {load()}")
    idle: list[str] = []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"devbox-bench-density-{os.getpid()}-") as tmp:
        backend = start_in_thread(Path(tmp) / "backend")
        manager = manager_of(backend)
        client = client_for(backend)
        try:
            for _ in range(2):  # warm caches (the /etc scan, imports, the first spare disks)
                client.post(f"/v1/devboxes/{create(client)}/shutdown")
            time.sleep(SETTLE_SECONDS)
            before, own_before = meminfo(), rollup(os.getpid())[0]
            baseline = probe_creates(client, args.probes)
            print("\n  idle  create median  x baseline   charged (kernel)   RSS    PSS   procs  "
                  "MemAvailable  load (1/5/15 min)")  # fmt: skip
            print(f"  {0:>4}  {baseline * 1000:10.1f} ms  {1:8.2f}x  {'':>36}  {before['MemAvailable'] / GIB:7.1f} GiB  {load()}")
            stopped = None
            for target in steps:
                while len(idle) < target:
                    if meminfo()["MemAvailable"] < floor:
                        stopped = f"MemAvailable fell below {args.min_free_gib:g} GiB at {len(idle)} idle devboxes"
                        break
                    idle.append(create(client))
                if stopped:
                    break
                time.sleep(SETTLE_SECONDS)
                prints = [footprint(manager, devbox_id) for devbox_id in idle]
                now, own = meminfo(), rollup(os.getpid())[0]
                median = probe_creates(client, args.probes)
                row = {
                    "n": len(idle), "create": median,
                    "charged": statistics.fmean(p.charged for p in prints),
                    "kernel": statistics.fmean(p.kernel for p in prints),
                    "rss": statistics.fmean(p.rss for p in prints),
                    "pss": statistics.fmean(p.pss for p in prints),
                    "outside_pss": statistics.fmean(p.outside_pss for p in prints),
                    "processes": statistics.fmean(p.processes for p in prints),
                    "backend": (own - own_before) / len(idle),
                    "host": (before["MemAvailable"] - now["MemAvailable"]) / len(idle),
                    # Kernel memory outside any cgroup's charge shows up here (mounts, loop devices, journals).
                    "kernel_host": sum(now[k] - before[k] for k in KERNEL_FIELDS) / len(idle),
                    "available": now["MemAvailable"],
                }  # fmt: skip
                rows.append(row)
                print(f"  {row['n']:>4}  {median * 1000:10.1f} ms  {median / baseline:8.2f}x  "
                      f"{row['charged'] / MIB:7.1f} ({row['kernel'] / MIB:4.1f}) MiB  {row['rss'] / MIB:5.1f}  "
                      f"{row['pss'] / MIB:5.1f}  {row['processes']:5.1f}  {now['MemAvailable'] / GIB:7.1f} GiB  "
                      f"{load()}")  # fmt: skip
            if stopped:
                print(f"  stopped early: {stopped}")
        finally:
            for devbox_id in idle:
                try:
                    client.post(f"/v1/devboxes/{devbox_id}/shutdown")
                except httpx.HTTPError as exc:
                    print(f"  could not shut down {devbox_id}: {exc} (the backend's stop suspends it)")
            client.close()
            backend.stop()
    if not rows:
        return 1
    last = rows[-1]
    # Counted once: its cgroup's charge (what its processes there allocated, kernel objects included),
    # what it has outside the cgroup (slirp4netns's PSS), its share of the backend's growth, and the
    # host's kernel growth beyond what the cgroups were charged (mounts, loop devices, journals).
    outside_kernel = max(0.0, last["kernel_host"] - last["kernel"])
    per_devbox = last["charged"] + last["outside_pss"] + max(0.0, last["backend"]) + outside_kernel
    print(f"\nmemory per idle default devbox, at {last['n']} idle (measured, means):")
    print(f"  charged to its memory cgroup {last['charged'] / MIB:.1f} MiB (kernel {last['kernel'] / MIB:.1f} MiB); "
          f"its host processes RSS {last['rss'] / MIB:.1f} MiB, PSS {last['pss'] / MIB:.1f} MiB "
          f"({last['processes']:.0f} processes; slirp4netns, outside the cgroup, PSS {last['outside_pss'] / MIB:.1f} MiB)")  # fmt: skip
    print(f"  host-wide, per devbox: kernel growth {last['kernel_host'] / MIB:.2f} MiB ({'+'.join(KERNEL_FIELDS)}), "
          f"MemAvailable drop {last['host'] / MIB:.1f} MiB, backend RSS growth {last['backend'] / MIB:.2f} MiB "
          "(other work on a shared machine blurs host-wide figures)")  # fmt: skip
    print(f"  counted once (cgroup charge + slirp4netns PSS + backend growth + kernel growth outside the "
          f"cgroup): {per_devbox / MIB:.1f} MiB")  # fmt: skip
    each = max(per_devbox, last["host"])
    points = [(0, baseline)] + [(r["n"], r["create"]) for r in rows]
    intercept, slope = fit(points)
    print("\ncreate→running against idle devboxes:")
    print(f"  measured: x{last['create'] / baseline:.2f} the baseline with {last['n']} idle "
          f"(each step above: the median of {args.probes} creates)")  # fmt: skip
    print(f"  least-squares line through the {len(points)} medians: {intercept * 1000:.1f} ms "
          f"{'+' if slope >= 0 else '-'} {abs(slope) * 1e6:.1f} µs per idle devbox")  # fmt: skip
    slow_at = intercept / slope if slope > 0 else float("inf")  # where the line is twice its value at none
    measured_or_not = "measured range" if slow_at <= last["n"] else "extrapolated"
    if slope > 0:
        print(f"  {measured_or_not}: create takes twice as long at about {slow_at:,.0f} idle devboxes")
    else:
        print(f"  no growth above the noise: create does not slow measurably with up to {last['n']} idle devboxes")
    room = total - floor
    fits = room / each if each > 0 else float("inf")
    print(f"  extrapolated: {room / GIB:.0f} GiB ({total / GIB:.0f} GiB less {args.min_free_gib:g} GiB kept) holds "
          f"about {fits:,.0f} idle devboxes at {each / MIB:.1f} MiB each")  # fmt: skip
    answer = min(slow_at, fits)
    bound = "memory" if fits <= slow_at else "create time"
    print(f"  => about {answer:,.0f} idle default devboxes on this {total / GIB:.0f} GiB machine before create slows "
          f"2x or memory runs out (bound by {bound}; {'within' if answer <= last['n'] else 'extrapolated beyond'} "
          f"the measured range of up to {last['n']})")  # fmt: skip
    print(f"load after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
