"""Benchmarks of disk snapshots, devboxes started from them, and forks, with ratios against baselines of
the same run (see mcp_server/local/cow.py and captures.py for what they measure).

    .venv/bin/python -m bench.snapshots [--runs 5] [--sizes 10,500,2000]

- snapshot of a devbox with 10 MB / 500 MB / 2 GB of changed files: seconds, taken right after the
  writes (the freeze flushes what the host has not written yet) and again once they are on disk,
  the snapshot's size_bytes, and the pool's bytes used by it; against a full (sparse) copy of the
  same disk image, the baseline: what a snapshot costs without copy-on-write.
- create→running from a snapshot of 10 MB and of 2 GB, against a plain create of the same run.
- fork of a devbox holding 1 GB into 4 running copies (one call), against one plain create.

Bounded: one probe at a time, at most the largest size on disk, removed before the next. The
machine is shared: the load is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.local import cow  # noqa: E402
from mcp_server.local.server import start_in_thread  # noqa: E402

NO_NET = {"network_mode": "none"}


def load() -> str:
    return Path("/proc/loadavg").read_text().strip()


def used(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class Api:
    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600)

    def create(self, **body: object) -> tuple[str, float]:
        started = time.perf_counter()
        view = self.http.post("/v1/devboxes/create_and_await_running", json={"launch_parameters": NO_NET, **body}).json()
        elapsed = time.perf_counter() - started
        if view.get("status") != "running":
            raise SystemExit(f"devbox did not reach running: {view}")
        return view["id"], elapsed

    def run(self, devbox_id: str, command: str) -> str:
        out = self.http.post(f"/v1/devboxes/{devbox_id}/execute_sync", json={"command": command}).json()
        if out.get("exit_status") != 0:
            raise SystemExit(f"{command!r} failed: {out}")
        return out["stdout"]

    def snapshot(self, devbox_id: str) -> tuple[dict[str, object], float]:
        started = time.perf_counter()
        r = self.http.post(f"/v1/devboxes/{devbox_id}/snapshot_disk", json={})
        elapsed = time.perf_counter() - started
        if r.status_code != 200:
            raise SystemExit(f"snapshot failed: {r.text}")
        return r.json(), elapsed

    def shutdown(self, devbox_id: str) -> None:
        self.http.post(f"/v1/devboxes/{devbox_id}/shutdown")

    def delete(self, snapshot_id: object) -> None:
        self.http.post(f"/v1/devboxes/disk_snapshots/{snapshot_id}/delete")


def write(api: Api, devbox_id: str, megabytes: int) -> None:
    api.run(devbox_id, f"dd if=/dev/zero of=changed.bin bs=1M count={megabytes} status=none")


def full_copy(src: Path, dst: Path) -> None:
    """A copy of the data extents by reading and writing them (copy_file_range would reflink on btrfs)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        fout.truncate(size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            fin.seek(start)
            fout.seek(start)
            while start < end:
                chunk = fin.read(min(8 << 20, end - start))
                fout.write(chunk)
                start += len(chunk)
            offset = end
        fout.flush()
        os.fsync(fout.fileno())


def bench_snapshots(api: Api, pool: Path, sizes: list[int], disk_image_of) -> None:  # noqa: ANN001
    print("\nsnapshot of a devbox with N MB changed (s; full copy = the baseline without copy-on-write)")
    print(f"{'changed':>9} {'after writes':>13} {'on disk':>9} {'full copy':>10} {'ratio':>7} {'size_bytes':>12} {'pool +':>9}")
    for mb in sizes:
        devbox, _ = api.create()
        write(api, devbox, mb)
        first, fresh = api.snapshot(devbox)  # the freeze flushes the writes the host still holds
        api.run(devbox, "sync")
        before = used(pool)
        second, settled = api.snapshot(devbox)
        pool_added = used(pool) - before
        copy_target = pool / f"bench-copy-{os.getpid()}.img"
        started = time.perf_counter()
        full_copy(disk_image_of(devbox), copy_target)
        full = time.perf_counter() - started
        copy_target.unlink()
        print(f"{mb:>6} MB {fresh:>12.3f}s {settled:>8.3f}s {full:>9.3f}s {settled / full:>7.3f}"
              f" {second['size_bytes']:>12,} {pool_added / 2**20:>7.1f}MB")  # fmt: skip
        api.shutdown(devbox)
        api.delete(first["id"])
        api.delete(second["id"])


def bench_create_from(api: Api, runs: int, small: int, large: int) -> None:
    print(f"\ncreate→running from a snapshot (median of {runs}; plain create = the baseline)")
    snaps = {}
    sources = []
    for mb in (small, large):
        devbox, _ = api.create()
        write(api, devbox, mb)
        snaps[mb] = api.snapshot(devbox)[0]["id"]
        sources.append(devbox)
    times: dict[str, list[float]] = {"plain": [], f"{small} MB": [], f"{large} MB": []}
    for _ in range(runs):  # interleaved, so that a change in load hits all alike
        for label, body in (("plain", {}), (f"{small} MB", {"snapshot_id": snaps[small]}),
                            (f"{large} MB", {"snapshot_id": snaps[large]})):  # fmt: skip
            devbox, elapsed = api.create(**body)
            times[label].append(elapsed)
            api.shutdown(devbox)
    base = statistics.median(times["plain"])
    for label, samples in times.items():
        median = statistics.median(samples)
        print(f"  {label:>8}: {median * 1000:7.1f} ms  (x{median / base:.2f} of plain)")
    print(f"  {large} MB / {small} MB: {statistics.median(times[f'{large} MB']) / statistics.median(times[f'{small} MB']):.2f}")
    for devbox in sources:
        api.shutdown(devbox)
    for snap in snaps.values():
        api.delete(snap)


def bench_fork(api: Api, runs: int, megabytes: int, count: int) -> None:
    print(f"\nfork of a devbox holding {megabytes} MB into {count} running copies (median of {runs})")
    source, _ = api.create()
    write(api, source, megabytes)
    api.run(source, "sync")
    forks: list[float] = []
    plain: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        r = api.http.post(f"/v1/devboxes/{source}/fork", json={"count": count})
        forks.append(time.perf_counter() - started)
        views = r.json()["devboxes"]
        if {v["status"] for v in views} != {"running"}:
            raise SystemExit(f"a fork did not run: {views}")
        for view in views:
            api.shutdown(view["id"])
        devbox, elapsed = api.create()
        plain.append(elapsed)
        api.shutdown(devbox)
    fork, one = statistics.median(forks), statistics.median(plain)
    print(f"  fork x{count}: {fork:.3f} s; one plain create: {one:.3f} s (fork = x{fork / one:.2f} of one create)")
    api.shutdown(source)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="10,500,2000", help="MB changed, comma-separated")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    reason = cow.unavailable_reason()
    if reason:
        raise SystemExit(f"no copy-on-write pool here: {reason}")
    with tempfile.TemporaryDirectory(prefix=f"bench-snapshots-{os.getpid()}-") as tmp:
        data_dir = Path(tmp) / "data"
        backend = start_in_thread(data_dir)
        try:
            api = Api(backend.base_url, backend.api_key)
            pool = data_dir / "cow" / "fs"
            print(f"load before: {load()}")
            bench_snapshots(api, pool, sizes, lambda devbox: pool / "disks" / f"{devbox}.img")
            bench_create_from(api, args.runs, min(sizes), max(sizes))
            bench_fork(api, args.runs, 1000, 4)
            print(f"\nload after: {load()}")
        finally:
            backend.stop()


if __name__ == "__main__":
    main()
