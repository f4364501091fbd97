"""The spare-disk pool (disk.SparePool): a spare still being made when the pool closes is not left
mounted (a backend's close would otherwise leak a loop mount that outlives it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcp_server.local import disk

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting disk images needs root")

SIZE = 64 << 20


def _mounted_under(directory: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(str(directory))]


def test_a_spare_finished_after_close_is_unmounted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = disk.SparePool(tmp_path / "spares")
    make = disk.make_image

    def make_then_close(path: Path, size: int, *, background: bool = False) -> None:
        make(path, size, background=background)
        pool.close()  # the fault: the backend closes while this spare is being made

    monkeypatch.setattr(disk, "make_image", make_then_close)
    try:
        pool.refill(SIZE)
        assert _mounted_under(tmp_path) == []
        assert [p.name for p in pool.directory.iterdir() if p.name.startswith("mnt-")] == []
        assert len(list(pool.directory.glob(f"spare-{SIZE}-*.img"))) == 1  # the image stays, for the next backend
    finally:
        for mountpoint in _mounted_under(tmp_path):
            disk.detach(Path(mountpoint))


def test_a_closed_pool_makes_no_spares(tmp_path: Path) -> None:
    pool = disk.SparePool(tmp_path / "spares")
    pool.close()
    try:
        pool.refill(SIZE)
        assert not pool.directory.exists() or list(pool.directory.iterdir()) == []
    finally:
        for mountpoint in _mounted_under(tmp_path):
            disk.detach(Path(mountpoint))
