"""Devbox storage on the host: the nosuid bind lives as long as its backend, and one a killed backend left is adopted."""

from __future__ import annotations

import os
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
Storage(Path(sys.argv[2])).open()
print("mounted", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_backends_bind_is_adopted_and_removed(tmp_path: Path) -> None:
    root = (tmp_path / "devboxes").resolve()
    result = subprocess.run(
        [sys.executable, "-c", KILLED, str(Path(__file__).resolve().parent.parent), str(root)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL and result.stdout == "mounted\n", result.stderr
    assert str(root) in _mount_points()  # left behind
    storage = Storage(root)
    storage.open()
    try:
        assert storage.nosuid
        assert sum(1 for line in open("/proc/self/mountinfo") if line.split(" ")[4] == str(root)) == 1  # not stacked
    finally:
        storage.close()
    assert str(root) not in _mount_points()
