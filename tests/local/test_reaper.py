"""The reaper of a dead backend removes what that backend left, and nothing a backend made after it."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_server.local import cgroups, reaper

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root here")


@pytest.fixture
def tag_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory's cgroup subtree in the first v1 hierarchy (a unique name: other tests run beside)."""
    host = cgroups.detect()
    hierarchy = next((h for h in host.hierarchies if h.version == 1), None)
    if hierarchy is None:
        pytest.skip("no cgroup v1 hierarchy here")
    directory = hierarchy.base / cgroups.SUBTREE / f"reaper-test-{os.getpid()}"
    directory.mkdir(parents=True)
    try:
        yield directory
    finally:
        for child in directory.iterdir() if directory.exists() else ():
            if child.is_dir():
                for pid in (child / "cgroup.procs").read_text().split():
                    (hierarchy.base / "cgroup.procs").write_text(pid)
                child.rmdir()
        if directory.exists():
            directory.rmdir()


def test_a_dead_backends_reaper_spares_the_cgroups_made_after_it_died(tag_dir: Path) -> None:
    busy, gone, later = tag_dir / "busy", tag_dir / "empty-at-death", tag_dir / "made-after-death"
    busy.mkdir()
    gone.mkdir()
    holder = subprocess.Popen(["sleep", "600"])
    try:
        (busy / "cgroup.procs").write_text(str(holder.pid))  # keeps the reaper retrying for a while
        read_fd, write_fd = os.pipe()
        proc = subprocess.Popen(["/bin/sh", "-c", reaper._SCRIPT], stdin=read_fd)
        os.close(read_fd)
        os.write(write_fd, f"C {tag_dir}\n".encode())
        os.close(write_fd)  # the backend is gone
        deadline = time.monotonic() + 10
        while gone.exists():  # the reaper has looked at what the backend left
            assert time.monotonic() < deadline, "the reaper did not remove the dead backend's empty cgroup"
            time.sleep(0.01)
        later.mkdir()  # a new backend's devbox, empty until its launch joins it
        assert proc.wait(timeout=30) == 0
        assert later.is_dir() and busy.is_dir()
    finally:
        holder.kill()
        holder.wait()
