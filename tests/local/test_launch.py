"""How a sandbox with a system of its own is launched (root backends; rootfs.py, sandbox.py):
the launch is moved into the devbox's cgroups while it mounts and goes on only once it is in them,
and other devboxes' disks are detached from its copy of the host's mount table, never from the host's."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.devbox_system import machine_system, own_system

from mcp_server.local import cgroups, disk, rootfs
from mcp_server.local.sandbox import Sandbox, SandboxError, SandboxSpec, sandbox_unavailable_reason

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a system of its own, cgroups and loop mounts need root"),
    pytest.mark.skipif(sandbox_unavailable_reason() is not None, reason="bubblewrap not installed"),
]


def _loop_targets(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/mounts") as fh:
        return [line.split()[1] for line in fh if line.startswith("/dev/loop")]


@pytest.fixture
def loop_mounts(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two small ext4 disks loop-mounted on the host, as a devbox's own and another devbox's."""
    mounted = []
    try:
        for name in ("own", "foreign"):
            image, target = tmp_path / f"{name}.img", tmp_path / name
            disk.make_image(image, 16 << 20)
            target.mkdir()
            disk.mount_image(image, target, b"ext4", b"")
            mounted.append(target)
        yield mounted[0], mounted[1]
    finally:
        for target in mounted:
            disk.detach(target)


def test_detaching_refuses_the_backends_own_mount_namespace(loop_mounts: tuple[Path, Path]) -> None:
    before = _loop_targets("self")
    with pytest.raises(OSError, match="not in a mount namespace of its own"):
        rootfs.detach_foreign_disks(os.getpid(), None)
    assert _loop_targets("self") == before
    assert str(loop_mounts[1]) in before


def test_foreign_disks_leave_the_launch_namespace_and_stay_on_the_host(loop_mounts: tuple[Path, Path]) -> None:
    own, foreign = loop_mounts
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "echo in; exec sleep 600"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"in\n"  # its namespace is made
        assert {str(own), str(foreign)} <= set(_loop_targets(holder.pid))
        assert rootfs.detach_foreign_disks(holder.pid, own) >= 1
        assert str(foreign) not in _loop_targets(holder.pid)
        assert str(own) in _loop_targets(holder.pid)
        assert {str(own), str(foreign)} <= set(_loop_targets("self"))  # the host's mounts are untouched
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def devbox_cgroup(tmp_path: Path) -> Iterator[cgroups.DevboxCgroup]:
    host = cgroups.detect()
    if not host.hierarchies:
        pytest.skip("no cgroup hierarchy to make a devbox cgroup in")
    group = cgroups.DevboxCgroup(host, cgroups.tag_of(tmp_path), f"launch-test-{os.getpid()}")
    group.create(cgroups.Settings(cpu_cores=1, memory_bytes=1 << 30, pids=256, cpus=None))
    try:
        yield group
    finally:
        group.remove()
        cgroups.remove_tag(host, cgroups.tag_of(tmp_path))


def _spec(tmp_path: Path, procs: tuple[str, ...]) -> SandboxSpec:
    if machine_system() is None:
        pytest.skip("no devbox image here")
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    system = own_system(tmp_path, tmp_path / "home", tmp_path / "tmp")
    return SandboxSpec(home=tmp_path / "home", tmp=tmp_path / "tmp", hostname="launch-test", network="none",
                       cgroup_procs=procs, **system)  # type: ignore[arg-type]  # fmt: skip


def test_everything_from_bubblewrap_on_starts_in_the_devboxs_cgroups(
    tmp_path: Path, devbox_cgroup: cgroups.DevboxCgroup
) -> None:
    procs = tuple(devbox_cgroup.procs_files())
    sandbox = Sandbox(_spec(tmp_path, procs))
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(sandbox.start())
        assert sandbox._bwrap is not None and sandbox.init_pid is not None
        for path in procs:
            members = {int(pid) for pid in Path(path).read_text().split()}
            # bubblewrap's monitor (the launch's pid) and the sandbox's pid 1, in every hierarchy
            assert {sandbox._bwrap.pid, sandbox.init_pid} <= members, path
    finally:
        loop.run_until_complete(sandbox.stop())
        loop.close()


def test_a_launch_that_cannot_join_its_cgroups_stops_at_its_gate(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-cgroup" / "cgroup.procs")
    sandbox = Sandbox(_spec(tmp_path, (missing,)))
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(SandboxError, match="could not join its cgroups"):
            loop.run_until_complete(sandbox.start())
        assert sandbox._bwrap is not None and sandbox._bwrap.returncode is not None  # nothing left running
        assert sandbox.init_pid is None  # bubblewrap never started a sandbox
    finally:
        loop.run_until_complete(sandbox.stop())
        loop.close()
