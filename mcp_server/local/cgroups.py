"""Per-devbox cgroups: a memory limit, a CPU quota, a process limit, and the CPUs a devbox may run on.

Where each controller lives is read from /proc/self/mounts and /proc/self/cgroup, not assumed:
a cgroup v1 hierarchy that has it (one per controller, or co-mounted like `cpu,cpuacct`), else
the v2 unified hierarchy when the controller is enabled in our cgroup. A devbox's cgroup is
`devbox-mcp/<tag>/<devbox id>` below the backend's own cgroup in each hierarchy (the tag names
the data directory, so backends on other data directories never touch each other's cgroups).

v2 needs delegation: controllers can be handed to child cgroups only from a cgroup with no
processes of its own, so a backend living in a cgroup beside other processes (a systemd service
without `Delegate=yes`) gets no limits there, and says why (`Host.missing`).

The sandbox's processes join the cgroup before they exec (`procs_files`: a command's launcher
writes its own pid into each; a sandbox's launcher waits while the backend writes its pid, `join`),
so nothing a devbox runs starts outside it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import reaper

log = logging.getLogger("devbox_mcp.local")

LIMITED = ("memory", "pids", "cpu", "cpuset")  # what a size sets
MEASURED = ("cpuacct",)  # joined for its figures only (v1; v2's cpu controller measures itself)
# v1's freezer, joined to pause a devbox for a consistent snapshot (v2 has cgroup.freeze in every cgroup).
PAUSED = ("freezer",)
FREEZE_WAIT_SECONDS = 2.0
SUBTREE = "devbox-mcp"
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    base: Path  # the backend's own cgroup in this hierarchy
    controllers: frozenset[str]  # those of LIMITED + MEASURED a devbox cgroup here gets


@dataclass
class Host:
    hierarchies: list[Hierarchy] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # controller -> why it cannot be used here

    def has(self, controller: str) -> bool:
        return any(controller in h.controllers for h in self.hierarchies)

    def hierarchy(self, controller: str) -> Hierarchy | None:
        return next((h for h in self.hierarchies if controller in h.controllers), None)


def _read(path: Path | str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def join(procs_files: tuple[str, ...] | list[str], pid: int) -> None:
    """Move process `pid` into each of these cgroups (what it starts from now on is born there).

    The first such move after a quiet spell costs the kernel an RCU grace period (about 10 ms here,
    cgroup_threadgroup_rwsem), so a sandbox's launcher is moved while it mounts, not before it starts.
    """
    for path in procs_files:
        with open(path, "w") as fh:
            fh.write(str(pid))


def parse_self_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller-list: path}; the v2 entry's key is ""."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    return paths


def parse_mounts(text: str) -> list[tuple[int, str, frozenset[str]]]:
    """(version, mountpoint, controllers) of each cgroup mount in /proc/self/mounts."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mountpoint = fields[1].replace("\\040", " ")
        if fields[2] == "cgroup":
            options = frozenset(fields[3].split(","))
            found.append((1, mountpoint, options))
        elif fields[2] == "cgroup2":
            found.append((2, mountpoint, frozenset()))
    return found


@functools.cache
def detect() -> Host:
    """The hierarchies a devbox cgroup can be made in, and why any wanted controller is missing."""
    host = Host()
    if os.geteuid() != 0:
        for name in LIMITED:
            host.missing[name] = "the backend is not root and has no delegated cgroup to make devbox cgroups in"
    own = parse_self_cgroup(_read("/proc/self/cgroup") or "")
    mounts = parse_mounts(_read("/proc/self/mounts") or "")
    wanted = set(LIMITED + MEASURED + PAUSED)
    for version, mountpoint, options in mounts:
        if version != 1:
            continue
        controllers = frozenset(options & wanted)
        if not controllers:
            continue
        path = next((p for key, p in own.items() if key and set(key.split(",")) >= controllers), None)
        if path is None:
            continue
        _try_hierarchy(host, Hierarchy(1, Path(mountpoint) / path.lstrip("/"), controllers))
        wanted -= controllers
    unified = next((m for v, m, _o in mounts if v == 2), None)
    if unified is not None and wanted and "" in own:
        base = Path(unified) / own[""].lstrip("/")
        available = frozenset((_read(base / "cgroup.controllers") or "").split())
        controllers = frozenset((wanted - set(MEASURED + PAUSED)) & available)
        if controllers:
            _try_hierarchy(host, Hierarchy(2, base, controllers))
            wanted -= controllers
    for name in LIMITED:
        if name in wanted and name not in host.missing:
            host.missing[name] = f"this host has no {name} cgroup controller available to the backend"
    return host


def _try_hierarchy(host: Host, hierarchy: Hierarchy) -> None:
    """Use `hierarchy` if a devbox subtree can be made in it; otherwise record why not."""
    if os.geteuid() != 0 and not os.access(hierarchy.base, os.W_OK):
        return
    try:
        subtree = hierarchy.base / SUBTREE
        if hierarchy.version == 2:
            _enable(hierarchy.base, hierarchy.controllers)
        made = not subtree.exists()
        subtree.mkdir(exist_ok=True)
        _prepare_intermediate(hierarchy, subtree)
        if made:  # a probe: made for good with the first devbox (DevboxCgroup.create), so none is left behind
            with contextlib.suppress(OSError):
                subtree.rmdir()
    except OSError as exc:
        reason = f"cannot make cgroups under {hierarchy.base} ({exc.strerror or exc})"
        if hierarchy.version == 2 and exc.errno == errno.EBUSY:
            reason = (
                f"cgroup v2: the backend's cgroup {hierarchy.base} holds other processes, so it cannot "
                "hand controllers down; run the backend in a delegated cgroup (e.g. systemd-run --scope -p Delegate=yes)"
            )
        for name in hierarchy.controllers & set(LIMITED):
            host.missing[name] = reason
        log.info("devbox limits: %s", reason)
        return
    host.hierarchies.append(hierarchy)
    for name in hierarchy.controllers:
        host.missing.pop(name, None)


def _enable(directory: Path, controllers: frozenset[str]) -> None:
    """v2: let the children of `directory` use `controllers`."""
    enabled = set((_read(directory / "cgroup.subtree_control") or "").split())
    todo = [c for c in sorted(controllers) if c not in enabled]
    if todo:
        _write(directory / "cgroup.subtree_control", " ".join("+" + c for c in todo))


def _prepare_intermediate(hierarchy: Hierarchy, directory: Path) -> None:
    """A cgroup that will have children: v1 cpuset needs its CPUs and memory nodes set, v2 its controllers.

    Its CPU weight is that of as many busy processes as the host has CPUs: CPU time is shared
    between sibling cgroups by weight, and left at the default the devboxes together would weigh
    as much as one host process when the host is busy.
    """
    weight = len(host_cpus())
    if hierarchy.version == 2:
        _enable(directory, hierarchy.controllers)
        if "cpu" in hierarchy.controllers:
            _write(directory / "cpu.weight", str(min(10_000, 100 * weight)))
        return
    if "cpuset" in hierarchy.controllers:
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not (_read(directory / name) or "").strip():
                _write(directory / name, (_read(directory.parent / name) or "").strip())
    if "cpu" in hierarchy.controllers:
        _write(directory / "cpu.shares", str(1024 * weight))


def tag_of(data_dir: Path) -> str:
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Settings:
    cpu_cores: float
    memory_bytes: int
    pids: int
    cpus: str | None  # cpuset list ("0", "0-1"); None for every CPU


class DevboxCgroup:
    """One devbox's cgroup in every usable hierarchy."""

    def __init__(self, host: Host, tag: str, devbox_id: str) -> None:
        self.host = host
        self.dirs = {h: h.base / SUBTREE / tag / devbox_id for h in host.hierarchies}

    def _dir(self, controller: str) -> Path | None:
        h = self.host.hierarchy(controller)
        return self.dirs.get(h) if h else None

    def create(self, settings: Settings) -> dict[str, str]:
        """Make the cgroups and set the limits; {controller: why not} for any that could not be set."""
        failed: dict[str, str] = {}
        for h, directory in self.dirs.items():
            try:
                for parent in (directory.parent.parent, directory.parent):  # another backend's exit may
                    parent.mkdir(exist_ok=True)  # have removed them, when it left them empty
                    _prepare_intermediate(h, parent)
                reaper.remove_at_exit(directory.parent)
                directory.mkdir(exist_ok=True)
            except OSError as exc:
                for name in h.controllers:
                    failed[name] = f"could not make its cgroup: {exc.strerror or exc}"
                continue
            for name in sorted(h.controllers):
                try:
                    self._set(h, directory, name, settings)
                except OSError as exc:
                    failed[name] = f"could not set the {name} limit: {exc.strerror or exc}"
        return failed

    @staticmethod
    def _set(h: Hierarchy, d: Path, name: str, s: Settings) -> None:
        quota = round(s.cpu_cores * CPU_PERIOD_US)
        if h.version == 1:
            if name == "memory":
                _write(d / "memory.limit_in_bytes", str(s.memory_bytes))
                if (d / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit either
                    _write(d / "memory.memsw.limit_in_bytes", str(s.memory_bytes))
            elif name == "pids":
                _write(d / "pids.max", str(s.pids))
            elif name == "cpu":  # a cap of the size's CPUs, and a weight in proportion to it
                _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(d / "cpu.cfs_quota_us", str(quota))
                _write(d / "cpu.shares", str(max(2, round(1024 * s.cpu_cores))))
            elif name == "cpuset":
                _write(d / "cpuset.cpus", s.cpus or (_read(d.parent / "cpuset.cpus") or "").strip())
                _write(d / "cpuset.mems", (_read(d.parent / "cpuset.mems") or "").strip())
            return
        if name == "memory":
            _write(d / "memory.max", str(s.memory_bytes))
            with contextlib.suppress(FileNotFoundError):
                _write(d / "memory.swap.max", "0")
        elif name == "pids":
            _write(d / "pids.max", str(s.pids))
        elif name == "cpu":
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            _write(d / "cpu.weight", str(max(1, min(10_000, round(100 * s.cpu_cores)))))
        elif name == "cpuset" and s.cpus:
            _write(d / "cpuset.cpus", s.cpus)

    def procs_files(self) -> list[str]:
        """The files a process writes its pid into to join the devbox's cgroups."""
        return [str(d / "cgroup.procs") for d in self.dirs.values() if d.is_dir()]

    def oom_kills(self) -> int:
        """Processes the kernel killed in this cgroup for want of memory, so far."""
        d = self._dir("memory")
        if d is None:
            return 0
        h = self.host.hierarchy("memory")
        text = _read(d / ("memory.oom_control" if h and h.version == 1 else "memory.events")) or ""
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def memory(self) -> dict[str, int] | None:
        """Usage and its make-up in bytes: usage, anon, file, shmem, mapped, active/inactive anon/file, ..."""
        d = self._dir("memory")
        h = self.host.hierarchy("memory")
        if d is None or h is None:
            return None
        stat: dict[str, int] = {}
        for line in (_read(d / "memory.stat") or "").splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                stat[key] = int(value)
        if h.version == 1:
            usage = _read(d / "memory.usage_in_bytes")

            def get(key: str) -> int:
                return stat.get("total_" + key, stat.get(key, 0))

            names = {"anon": "rss", "file": "cache", "shmem": "shmem", "mapped": "mapped_file", "dirty": "dirty",
                     "writeback": "writeback"}  # fmt: skip
        else:
            usage = _read(d / "memory.current")

            def get(key: str) -> int:
                return stat.get(key, 0)

            names = {"anon": "anon", "file": "file", "shmem": "shmem", "mapped": "file_mapped",
                     "dirty": "file_dirty", "writeback": "file_writeback"}  # fmt: skip
        if usage is None:
            return None
        figures = {key: get(name) for key, name in names.items()}
        for key in ("active_anon", "inactive_anon", "active_file", "inactive_file", "unevictable"):
            figures[key] = get(key)
        figures["usage"] = int(usage)
        return figures

    def cpu_seconds(self) -> float | None:
        """CPU time the devbox's processes used, so far."""
        d = self._dir("cpuacct")
        if d is not None:
            text = _read(d / "cpuacct.usage")
            return int(text) / 1e9 if text else None
        h = self.host.hierarchy("cpu")
        d = self._dir("cpu")
        if h is not None and h.version == 2 and d is not None:
            for line in (_read(d / "cpu.stat") or "").splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        return None

    def freeze(self) -> bool:
        """Pause every process of the devbox (they stop at their next safe point: a write system call
        is either done or not begun). False when this host has no freezer, or not every process
        froze within FREEZE_WAIT_SECONDS (one in uninterruptible I/O): the caller goes on, thawing after."""
        v1 = self._dir("freezer")
        if v1 is not None and v1.is_dir():
            _write(v1 / "freezer.state", "FROZEN")
            return _wait_for(lambda: (_read(v1 / "freezer.state") or "").strip() == "FROZEN")
        v2 = next((d for h, d in self.dirs.items() if h.version == 2 and (d / "cgroup.freeze").exists()), None)
        if v2 is not None:
            _write(v2 / "cgroup.freeze", "1")
            return _wait_for(lambda: "frozen 1" in (_read(v2 / "cgroup.events") or "").splitlines())
        return False

    def thaw(self) -> None:
        v1 = self._dir("freezer")
        if v1 is not None and v1.is_dir():
            _write(v1 / "freezer.state", "THAWED")
        for h, d in self.dirs.items():
            if h.version == 2 and (d / "cgroup.freeze").exists():
                _write(d / "cgroup.freeze", "0")

    def remove(self) -> bool:
        """Remove the (empty) cgroups; False when one still holds a process."""
        gone = True
        for d in self.dirs.values():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                gone = False
        return gone


def remove_stale(host: Host, tag: str, keep: set[str]) -> None:
    """Remove the empty devbox cgroups a previous backend on this data directory left behind."""
    for h in host.hierarchies:
        root = h.base / SUBTREE / tag
        with contextlib.suppress(OSError):
            for entry in root.iterdir():
                if entry.is_dir() and entry.name not in keep:
                    with contextlib.suppress(OSError):
                        entry.rmdir()


def remove_tag(host: Host, tag: str) -> None:
    """At a clean exit: this data directory's (empty) subtree, and devbox-mcp's if no other backend uses it."""
    for h in host.hierarchies:
        with contextlib.suppress(OSError):
            (h.base / SUBTREE / tag).rmdir()
            (h.base / SUBTREE).rmdir()


def _wait_for(done: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + FREEZE_WAIT_SECONDS
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def host_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))
