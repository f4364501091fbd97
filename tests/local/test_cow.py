"""cow.clone: a reflink on the pool, a sparse copy of the data elsewhere; either way the same bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcp_server.local import cow

MiB = 1 << 20


def _sparse_file(path: Path) -> bytes:
    """16 MiB with data at three places and holes between; returns the expected bytes."""
    with open(path, "wb") as fh:
        fh.truncate(16 * MiB)
        for offset, byte in ((0, b"a"), (5 * MiB + 123, b"b"), (16 * MiB - 4096, b"c")):
            fh.seek(offset)
            fh.write(byte * 4096)
    return path.read_bytes()


def test_without_reflink_a_clone_is_a_sparse_copy_of_the_data(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    expected = _sparse_file(src)
    shared = cow.clone(src, dst)
    assert dst.read_bytes() == expected
    if not shared:  # this file system cannot share blocks: only the data was copied, the holes stay
        assert cow.allocated_bytes(dst) < 2 * MiB
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(os.geteuid() != 0 or cow.unavailable_reason() is not None, reason="needs the btrfs pool")
def test_on_the_pool_a_clone_shares_every_block(tmp_path: Path) -> None:
    pool = cow.Pool(tmp_path / "cow")
    pool.open()
    try:
        src, dst = pool.root / "src.img", pool.root / "dst.img"
        with open(src, "wb") as fh:
            fh.write(os.urandom(8 * MiB))
            os.fsync(fh.fileno())
        os.sync()
        st = os.statvfs(pool.root)
        before = (st.f_blocks - st.f_bfree) * st.f_frsize
        assert cow.clone(src, dst) is True
        os.sync()
        st = os.statvfs(pool.root)
        assert (st.f_blocks - st.f_bfree) * st.f_frsize - before < MiB  # 8 MiB cloned, not copied
        assert dst.read_bytes() == src.read_bytes()
    finally:
        pool.close()
