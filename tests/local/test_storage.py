"""Devbox storage on the host: the nosuid bind lives as long as its backend, and one a killed backend left is adopted."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_server.local.storage import Storage

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return {line.split(" ")[4] for line in mountinfo}


def test_the_nosuid_bind_goes_with_the_backend(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "devboxes")
    root = str(storage.root)
    storage.open()
    try:
        assert root in _mount_points() and storage.nosuid
        assert oct(os.stat(root).st_mode & 0o777) == "0o700"
        (storage.root / "box").mkdir()
        fd = storage.open_file(storage.root / "box" / "out", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC)
        try:
            assert os.readlink(f"/proc/self/fd/{fd}") == "/box/out"  # the detached clone's root
        finally:
            os.close(fd)
    finally:
        storage.close()
    assert root not in _mount_points() and not storage.nosuid
    assert (storage.root / "box" / "out").exists()


KILLED = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from mcp_server.local.storage import Storage
storage = Storage(Path(sys.argv[2]))
storage.open()
print(storage._guard.pid, flush=True)
if sys.argv[3] == "guard too":
    os.kill(storage._guard.pid, signal.SIGKILL)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_backend(root: Path, how: str) -> int:
    """A backend that mounted `root` and was killed (with its guard, if `how` says so): the guard's pid."""
    result = subprocess.run(
        [sys.executable, "-c", KILLED, str(Path(__file__).resolve().parents[2]), str(root), how],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    return int(result.stdout)


def _wait_gone(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([pidfd], [], [], 30)[0], f"process {pid} is still running"
    finally:
        os.close(pidfd)


def test_a_killed_backends_guard_removes_the_bind(tmp_path: Path) -> None:
    """kill -9 gives the backend no chance to unmount: its guard does, so the data dir stays deletable."""
    root = (tmp_path / "devboxes").resolve()
    _wait_gone(_killed_backend(root, "backend only"))
    assert str(root) not in _mount_points()
    shutil.rmtree(root)


def test_a_bind_left_behind_is_adopted_and_removed(tmp_path: Path) -> None:
    root = (tmp_path / "devboxes").resolve()
    _killed_backend(root, "guard too")
    assert str(root) in _mount_points()  # left behind
    storage = Storage(root)
    storage.open()
    try:
        assert storage.nosuid
        assert sum(1 for line in open("/proc/self/mountinfo") if line.split(" ")[4] == str(root)) == 1  # not stacked
    finally:
        storage.close()
    assert str(root) not in _mount_points()
