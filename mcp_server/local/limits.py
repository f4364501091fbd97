"""A devbox's size made real on this host: what is enforced, how, and what cannot be.

- memory: a cgroup limit (swap included); the kernel OOM-kills inside the devbox only. RAM-backed
  mounts (tmpfs) are charged to it too, and sized so that together they hold at most about half
  of it (/dev/shm and /var a quarter each, /run 64 MB): files there cannot fill the memory, so
  killing a process always frees some and the devbox can go on after an OOM kill.
- CPU: a CFS quota of the size's vCPUs, on that many CPUs (a cpuset), so `nproc` says the size;
  and /sys/devices/system/cpu/{online,possible,present} list those CPUs (`sys_view`, one directory
  bound read-only as the devbox's /sys: it has no sysfs of the host's), so glibc's
  sysconf(_SC_NPROCESSORS_ONLN/CONF) and with it Python's os.cpu_count() and `getconf` say it too.
  /proc/cpuinfo and /proc/stat stay the host's (no FUSE here): tools that count CPUs there do not.
- processes: a pids limit (`sizes.Size.pids`), and the same RLIMIT_NPROC on every command (`ulimit -u`),
  which the kernel counts per user namespace, so per devbox, even without cgroups.
- disk: the devbox's writable storage is an ext4 image of the size, loop-mounted (`disk.py`).
- /proc/meminfo: a file this module rewrites every few seconds from the cgroup's figures, bound
  over the devbox's /proc/meminfo (what lxcfs does with FUSE), so `free` says the size.

Whatever this host cannot do (not root, no such controller, cgroup v2 not delegated, no loop
devices) is logged once and listed in the devbox view under `not_enforced`, never pretended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cgroups, disk
from .sizes import GIB, Size

CPU_FILES = ("online", "possible", "present")  # in /sys/devices/system/cpu: what glibc counts CPUs from

log = logging.getLogger("devbox_mcp.local")

MEMINFO_REFRESH_SECONDS = 2.0
REFILL_DELAY_SECONDS = 0.2  # the devbox that took a spare is booting meanwhile
RUN_TMPFS_BYTES = 64 * 1024 * 1024  # /run holds pid files and sockets


@dataclass
class Enforcement:
    """What a devbox's sandbox is given: where it writes, what it joins, what it is shown."""

    storage: Path  # the directory the devbox's writable storage lives in (a mounted disk, or a plain one)
    cgroup_procs: tuple[str, ...] = ()
    proc_files: dict[str, str] = field(default_factory=dict)  # /proc path -> host file bound over it
    ram_disk_bytes: int | None = None  # size of each RAM-backed mount (/dev/shm, /var) besides /run
    run_tmpfs_bytes: int | None = RUN_TMPFS_BYTES
    not_enforced: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # where the size exceeds the host (capped)


@dataclass
class _Running:
    size: Size
    cgroup: cgroups.DevboxCgroup | None
    cpus: list[int]
    meminfo: Path | None
    storage: Path
    mounted: bool
    oom_base: int = 0  # OOM kills already counted in a cgroup reused from an earlier run


class Limits:
    """The limits of every devbox of one backend."""

    def __init__(self, data_dir: Path, spares: Path) -> None:
        """`spares`: where spare disks are made; in the devboxes' own storage (storage.py), as a
        spare is renamed, and its mount moved, into a devbox's directory."""
        self.data_dir = data_dir
        self.tag = cgroups.tag_of(data_dir)
        self.host = cgroups.detect()
        self.disk_reason = disk.unavailable_reason()
        self.pool = disk.SparePool(spares, free_space_of=data_dir)
        self.cpus = cgroups.host_cpus()
        self._cpu_load: dict[int, float] = dict.fromkeys(self.cpus, 0.0)
        self._running: dict[str, _Running] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._refills: set[asyncio.Task[None]] = set()

    # -- what the host can do ----------------------------------------------------------------

    def host_gaps(self, *, sandboxed: bool) -> dict[str, str]:
        """{limit: why this host cannot enforce it} for every devbox started now."""
        gaps: dict[str, str] = {}
        for name, controller in (("memory", "memory"), ("cpu", "cpu")):
            if not self.host.has(controller):
                gaps[name] = self.host.missing.get(controller, f"no {controller} cgroup controller")
        if not self.host.has("pids") and not sandboxed:
            # A sandboxed devbox's commands still have RLIMIT_NPROC, counted in its user namespace.
            gaps["processes"] = self.host.missing.get("pids", "no pids cgroup controller")
        if not self.host.has("cpuset"):
            gaps["nproc"] = self.host.missing.get("cpuset", "no cpuset cgroup controller") + "; nproc shows the host's CPUs"
        if "memory" in gaps:
            gaps["meminfo"] = "no memory cgroup to read figures from; /proc/meminfo shows the host's memory"
        if not sandboxed:
            gaps["disk"] = "no sandbox (--unsafe-no-sandbox): commands can write anywhere on the host"
            gaps["meminfo"] = "no sandbox: /proc/meminfo is the host's"
        elif self.disk_reason:
            gaps["disk"] = self.disk_reason + "; the devbox writes to a plain directory on the host's disk"
        return gaps

    def log_gaps(self) -> None:
        gaps = self.host_gaps(sandboxed=True)
        if gaps:
            log.warning(
                "devbox sizes are not fully enforced on this host: %s",
                "; ".join(f"{name}: {why}" for name, why in gaps.items()),
            )

    def disk_gap(self, size: Size, *, sandboxed: bool) -> str | None:
        """Why a devbox created now gets no disk of its own (None: it gets one).

        The image is sparse: a host with less free space than the disk could fail the devbox's
        writes with I/O errors instead of ENOSPC, so such a devbox writes to the host directly.
        """
        if not sandboxed or self.disk_reason:
            return self.host_gaps(sandboxed=sandboxed).get("disk")
        try:
            st = os.statvfs(self.data_dir)
        except OSError as exc:
            return f"could not read the host's free space ({exc})"
        free = st.f_bavail * st.f_frsize
        if free < size.disk_bytes:
            return (
                f"the host had {free / GIB:.1f} GiB free at create, less than the {size.disk_gib} GiB disk; "
                "the devbox writes to a plain directory on the host's disk"
            )
        return None

    def size_notes(self, size: Size) -> list[str]:
        """Where a size asks for more than this host has (it is capped, not refused)."""
        notes = []
        if size.cpus_shown > len(self.cpus):
            notes.append(f"cpu: {size.cpu_cores:g} asked, this host has {len(self.cpus)}")
        with contextlib.suppress(OSError, ValueError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            if size.memory_bytes > total:
                notes.append(f"memory: {size.memory_gib} GiB asked, this host has {total / GIB:.1f} GiB")
        with contextlib.suppress(OSError):
            st = os.statvfs(self.data_dir)
            free = st.f_bavail * st.f_frsize
            if size.disk_bytes > free:
                notes.append(
                    f"disk: {size.disk_gib} GiB asked, the host has {free / GIB:.1f} GiB free; "
                    "writes may fail before the devbox's disk is full"
                )
        return notes

    # -- lifecycle -----------------------------------------------------------------------------

    async def startup(self, devboxes: dict[str, Path]) -> None:
        """Clear what a killed backend left: mounts of these devboxes' disks, empty cgroups."""
        self.log_gaps()

        def clear() -> None:
            for mountpoint in devboxes.values():
                with contextlib.suppress(OSError, disk.DiskError):
                    disk.detach(mountpoint)
            cgroups.remove_stale(self.host, self.tag, keep=set())
            self.pool.clear_stale()

        await asyncio.to_thread(clear)
        if self.disk_reason is None:
            from .sizes import DEFAULT_SIZE, preset

            self._spawn_refill(preset(DEFAULT_SIZE).disk_bytes, delay=0)

    def _spawn_refill(self, size: int, delay: float = REFILL_DELAY_SECONDS) -> None:
        """Make the next spare disk soon, but not while the devbox that took this one is starting."""

        async def refill() -> None:
            await asyncio.sleep(delay)
            await asyncio.to_thread(self.pool.refill, size)

        task = asyncio.ensure_future(refill())
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def start(self, devbox_id: str, size: Size, *, image: Path | None, mountpoint: Path,
                    meminfo: Path, sandboxed: bool, disk_gap: str | None = None) -> Enforcement:  # fmt: skip
        """Mount the disk (when `image`), make the cgroups; what the sandbox must do with them.

        Whatever this did is undone by `stop`, also when it failed half-way.
        """
        not_enforced = self.host_gaps(sandboxed=sandboxed)
        if image is None:
            not_enforced["disk"] = disk_gap or not_enforced.get("disk") or "the devbox was made without a disk"
        else:
            not_enforced.pop("disk", None)
        group = cgroups.DevboxCgroup(self.host, self.tag, devbox_id) if self.host.hierarchies else None
        cpus = self._take_cpus(size) if self.host.has("cpuset") else []
        running = self._running[devbox_id] = _Running(size, group, cpus, None, mountpoint.parent, False)
        # One trip to a worker thread for all of it: each trip costs a wake-up on a busy host.
        await asyncio.to_thread(self._set_up, running, image, mountpoint, meminfo, sandboxed, not_enforced)
        if image is not None:
            self._spawn_refill(size.disk_bytes)
        self._ensure_refresher()
        sys_dir = sys_view(meminfo)
        return Enforcement(
            storage=running.storage,
            cgroup_procs=tuple(group.procs_files()) if group else (),
            proc_files={
                **({"/proc/meminfo": str(meminfo)} if running.meminfo else {}),
                **({"/sys": str(sys_dir)} if running.cpus and sandboxed and "nproc" not in not_enforced else {}),
            },
            ram_disk_bytes=size.memory_bytes // 4,
            run_tmpfs_bytes=min(RUN_TMPFS_BYTES, size.memory_bytes // 16),
            not_enforced=not_enforced,
            notes=self.size_notes(size),
        )

    def _set_up(self, running: _Running, image: Path | None, mountpoint: Path, meminfo: Path, sandboxed: bool,
                not_enforced: dict[str, str]) -> None:  # fmt: skip
        size, group = running.size, running.cgroup
        if image is not None:
            disk.attach(image, mountpoint, size.disk_bytes, self.pool)
            running.storage, running.mounted = mountpoint, True
        if group is None:
            return
        settings = cgroups.Settings(
            cpu_cores=size.cpu_cores,
            memory_bytes=size.memory_bytes,
            pids=size.pids,
            cpus=",".join(map(str, running.cpus)) if running.cpus else None,
        )
        for controller, why in group.create(settings).items():
            if controller not in ("cpuacct", "freezer"):
                not_enforced[{"pids": "processes", "cpuset": "nproc"}.get(controller, controller)] = why
        running.oom_base = group.oom_kills()
        if running.cpus and sandboxed and "nproc" not in not_enforced:
            cpu = sys_view(meminfo) / "devices" / "system" / "cpu"
            cpu.mkdir(mode=0o755, parents=True, exist_ok=True)
            for name in CPU_FILES:
                _rewrite(cpu / name, (cpu_ranges(running.cpus) + "\n").encode())
        if sandboxed and "memory" not in not_enforced:
            try:
                self._write_meminfo(running, meminfo)
                running.meminfo = meminfo
            except OSError as exc:
                not_enforced["meminfo"] = f"could not write the devbox's /proc/meminfo: {exc}"

    async def stop(self, devbox_id: str) -> None:
        """After the sandbox is gone: unmount the disk, remove the cgroups, free the CPUs."""
        running = self._running.pop(devbox_id, None)
        if running is None:
            return
        self._give_cpus(running)

        def release() -> None:
            if running.mounted:
                disk.detach(running.storage)
            if running.cgroup is not None:
                running.cgroup.remove()  # one still busy is removed at the next start

        try:
            await asyncio.to_thread(release)
        except (OSError, disk.DiskError) as exc:
            log.warning("devbox %s: could not release its disk or cgroups: %s", devbox_id, exc)

    async def shutdown(self) -> None:
        for task in list(self._refills):
            task.cancel()
        for task in list(self._refills):
            with contextlib.suppress(BaseException):
                await task
        await asyncio.to_thread(self.pool.close)
        await asyncio.to_thread(cgroups.remove_tag, self.host, self.tag)
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(BaseException):
                await self._refresher
            self._refresher = None

    # -- pausing (captures) ----------------------------------------------------------------------

    def freeze(self, devbox_id: str) -> bool:
        """Pause the devbox's processes (cgroup freezer); False when they could not all be paused."""
        running = self._running.get(devbox_id)
        if running is None or running.cgroup is None:
            return False
        try:
            return running.cgroup.freeze()
        except OSError as exc:
            log.warning("devbox %s: could not pause its processes: %s", devbox_id, exc)
            return False

    def thaw(self, devbox_id: str) -> None:
        running = self._running.get(devbox_id)
        if running is not None and running.cgroup is not None:
            try:
                running.cgroup.thaw()
            except OSError as exc:
                log.error("devbox %s: could not resume its paused processes: %s", devbox_id, exc)

    # -- CPUs ------------------------------------------------------------------------------------

    def _take_cpus(self, size: Size) -> list[int]:
        """The least loaded CPUs, as many as the size shows (all of them when it asks for as many)."""
        if size.cpus_shown >= len(self.cpus):
            chosen = list(self.cpus)
        else:
            chosen = sorted(sorted(self.cpus, key=lambda c: (self._cpu_load[c], c))[: size.cpus_shown])
        share = size.cpu_cores / len(chosen)
        for cpu in chosen:
            self._cpu_load[cpu] += share
        return chosen

    def _give_cpus(self, running: _Running) -> None:
        if not running.cpus:
            return
        share = running.size.cpu_cores / len(running.cpus)
        for cpu in running.cpus:
            self._cpu_load[cpu] = max(0.0, self._cpu_load[cpu] - share)

    # -- figures ---------------------------------------------------------------------------------

    def oom_kills(self, devbox_id: str) -> int:
        """Processes of the devbox the kernel killed for want of memory since it (re)started."""
        running = self._running.get(devbox_id)
        return running.cgroup.oom_kills() - running.oom_base if running and running.cgroup else 0

    def live(self, devbox_id: str) -> dict[str, Any]:
        """What a running devbox uses now: memory and disk in bytes, CPU seconds so far."""
        running = self._running.get(devbox_id)
        if running is None:
            return {}
        figures: dict[str, Any] = {}
        if running.cgroup is not None:
            memory = running.cgroup.memory()
            if memory is not None:
                figures["memory_used_bytes"] = memory["usage"]
            cpu = running.cgroup.cpu_seconds()
            if cpu is not None:
                figures["cpu_seconds"] = round(cpu, 3)
        if running.mounted:
            used = disk.usage(running.storage)
            if used is not None:
                figures["disk_used_bytes"] = used[0]
        return figures

    # -- /proc/meminfo ---------------------------------------------------------------------------

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.ensure_future(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while self._running:
            await asyncio.sleep(MEMINFO_REFRESH_SECONDS)
            await asyncio.to_thread(self._refresh_all)

    def _refresh_all(self) -> None:
        for running in list(self._running.values()):
            if running.meminfo is not None:
                with contextlib.suppress(OSError):
                    self._write_meminfo(running, running.meminfo)

    def _write_meminfo(self, running: _Running, path: Path) -> None:
        """Rewrite the file in place: the devbox's bind mount holds this inode, not the name."""
        figures = running.cgroup.memory() if running.cgroup else None
        _rewrite(path, meminfo_text(running.size.memory_bytes, figures or {}).encode())


def _rewrite(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def sys_view(meminfo: Path) -> Path:
    """The devbox's /sys (its CPUs only), beside its meminfo: one bind mount, however many files."""
    return meminfo.with_name("sys")


def cpu_ranges(cpus: list[int]) -> str:
    """CPUs as the kernel lists them in /sys: `0-3,6`."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def meminfo_text(limit: int, figures: dict[str, int]) -> str:
    """A /proc/meminfo for a machine of `limit` bytes, from the cgroup's figures (bytes)."""
    usage = min(figures.get("usage", 0), limit)
    file = figures.get("file", 0)
    shmem = figures.get("shmem", 0)
    reclaimable = max(0, figures.get("inactive_file", 0) + figures.get("active_file", 0) - shmem)
    free = max(0, limit - usage)
    rows = [
        ("MemTotal", limit),
        ("MemFree", free),
        ("MemAvailable", min(limit, free + reclaimable)),
        ("Buffers", 0),
        ("Cached", max(0, file - shmem) + shmem),
        ("SwapCached", 0),
        ("Active", figures.get("active_anon", 0) + figures.get("active_file", 0)),
        ("Inactive", figures.get("inactive_anon", 0) + figures.get("inactive_file", 0)),
        ("Active(anon)", figures.get("active_anon", 0)),
        ("Inactive(anon)", figures.get("inactive_anon", 0)),
        ("Active(file)", figures.get("active_file", 0)),
        ("Inactive(file)", figures.get("inactive_file", 0)),
        ("Unevictable", figures.get("unevictable", 0)),
        ("Mlocked", 0),
        ("SwapTotal", 0),
        ("SwapFree", 0),
        ("Dirty", figures.get("dirty", 0)),
        ("Writeback", figures.get("writeback", 0)),
        ("AnonPages", figures.get("anon", 0)),
        ("Mapped", figures.get("mapped", 0)),
        ("Shmem", shmem),
        ("KReclaimable", 0),
        ("Slab", 0),
        ("SReclaimable", 0),
        ("SUnreclaim", 0),
    ]
    return "".join(f"{name + ':':<16}{value // 1024:>8} kB\n" for name, value in rows)
