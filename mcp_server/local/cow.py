"""Copy-on-write storage for devbox disks: capture a disk, or start one from a capture, in milliseconds.

A devbox's writable filesystem is one sparse ext4 image (`disk.py`). Those images live in a
*pool*: a btrfs filesystem in a sparse loop file (`<data dir>/cow/pool.img`, mounted at
`<data dir>/cow/fs`), because the host's own ext4 cannot share blocks between files. On the pool
a copy of an image is a reflink (`clone`, the FICLONE ioctl): it costs O(extents), not O(bytes),
and the two files share every block until one of them writes.

Why this design (measured on this machine, Linux 6.18, host ext4 without reflink):
- reflink of a 10 GiB image after 10 MB or 500 MB were written in it: 3 ms either way, on XFS
  (reflink=1) and on btrfs alike. Making and mounting a clone: 12-19 ms.
- XFS costs 64-128 MB of real host blocks per pool (its log, at least 64 MB, is written at mkfs);
  btrfs 4.6 MB. Every backend (each test's too) has its own pool, so btrfs.
- btrfs is mounted `nodatasum`: the devbox disks are attached with direct I/O (`disk.py`), and data
  checksums under direct I/O that the page cache may still change are a known source of false
  checksum errors; ext4 inside keeps its own metadata checksums.
- overlay layer stacking (a snapshot's upper becomes a read-only lower) cannot snapshot a devbox
  that runs on: its upper is in use and would have to be copied, O(bytes).
- btrfs subvolume snapshots would need btrfs quotas for the devbox's disk size, and lose the
  per-devbox ENOSPC a sized ext4 gives.

What remains O(bytes) is flushing what the devbox wrote and the host has not yet (its dirty page
cache) when the filesystem is frozen for a capture: that is the price of a consistent instant.

Without the pool (not root, no btrfs in the kernel, no mkfs.btrfs) `clone` copies the image's
data extents (sparse-aware): correct, but O(bytes); `Pool.unavailable_reason` says why.

The interface other modules build on:
- `Pool(directory)`: `.open()` makes/mounts it, `.root` is where images go, `.close()`.
- `clone(src, dst)`: dst becomes a copy-on-write copy of src (True) or a plain sparse copy (False).
- `frozen(mountpoint)`: a context in which a mounted filesystem is frozen (FIFREEZE): clean on
  disk, every write waiting until the context exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from . import disk, reaper

log = logging.getLogger("devbox_mcp.local")

_FICLONE = 0x40049409
_FIFREEZE = 0xC0045877
_FITHAW = 0xC0045878
_MS_NOSUID, _MS_NODEV, _MS_NOATIME = 2, 4, 1024
POOL_OPTIONS = b"nodatasum,discard=async,commit=30"
MIN_POOL_BYTES = 16 << 30
RELEASE_WAIT_SECONDS = 15.0


class CowError(Exception):
    """The pool could not be made or mounted, or a capture could not be cloned; the message says why."""


@functools.cache
def _mkfs_btrfs() -> str | None:
    for path in ("/usr/sbin/mkfs.btrfs", "/sbin/mkfs.btrfs", "/usr/bin/mkfs.btrfs"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mkfs.btrfs")


@functools.cache
def unavailable_reason() -> str | None:
    """Why disks cannot be copy-on-write here (None when they can): clones are then plain copies."""
    reason = disk.unavailable_reason()
    if reason:
        return reason
    try:
        with open("/proc/filesystems") as fh:
            if not any(line.split()[-1:] == ["btrfs"] for line in fh):
                return "the kernel has no btrfs, so devbox disks cannot share blocks (snapshots are full copies)"
    except OSError:
        return "cannot read /proc/filesystems"
    if _mkfs_btrfs() is None:
        return "mkfs.btrfs is not installed (apt-get install btrfs-progs); snapshots are full copies"
    return None


class Pool:
    """The btrfs filesystem the devbox disks and their captures live in (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.image = directory / "pool.img"
        self.root = directory / "fs"

    @property
    def mounted(self) -> bool:
        return os.path.ismount(self.root)

    def open(self) -> None:
        """Make the pool when missing and mount it (blocking). CowError when it cannot.

        A mount found there is a killed backend's (one backend per data directory), about to be
        removed by its reaper: it is detached first, and mounted afresh once released.
        """
        if self.mounted:
            disk.detach(self.root)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        if not self.image.exists():
            self._make()
        # Mounted by an earlier backend and detached lazily: wait for the kernel to release it, as
        # mounting it through a second loop device meanwhile would mount one filesystem twice.
        deadline = time.monotonic() + RELEASE_WAIT_SECONDS
        while disk.attached(self.image) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            if not self._mount_held():
                disk.mount_image(self.image, self.root, b"btrfs", POOL_OPTIONS, extra_flags=_MS_NOATIME)
        except disk.DiskError as exc:
            raise CowError(str(exc)) from None
        reaper.unmount_at_exit(self.root)

    def _mount_held(self) -> bool:
        """Still attached after the wait: not a release under way but a mount that something holds
        (a mount namespace made while the pool was mounted, such as another program's sandbox). That
        file system is alive, so mounting its loop device again gives the same one (the kernel
        shares its superblock). False when it is not attached (any more)."""
        for device in disk.attached(self.image):
            try:
                disk.mount_device(device, self.root, b"btrfs", POOL_OPTIONS, extra_flags=_MS_NOATIME)
            except disk.DiskError:
                continue  # released meanwhile
            if device in disk.attached(self.image):  # still this pool's, now held by this mount
                log.warning("the disk pool %s was still held by an earlier mount; mounted that one again", self.image)
                return True
            disk.detach(self.root)  # freed and reused for another image between the look and the mount
        return False

    def _make(self) -> None:
        st = os.statvfs(self.directory)
        size = max(MIN_POOL_BYTES, st.f_blocks * st.f_frsize)  # sparse: the host's free space bounds it
        tmp = self.image.with_name(".pool.img.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.truncate(size)
            result = subprocess.run(
                [_mkfs_btrfs() or "mkfs.btrfs", "-q", "-f", "-m", "single", "-d", "single", str(tmp)],
                capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
            )  # fmt: skip
            if result.returncode != 0:
                raise CowError(f"mkfs.btrfs failed: {result.stderr.decode(errors='replace').strip()}")
            os.replace(tmp, self.image)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Unmount (lazily while a devbox disk in it is still being released)."""
        with contextlib.suppress(OSError, disk.DiskError):
            disk.detach(self.root)


def clone(src: Path, dst: Path) -> bool:
    """Make `dst` a copy of `src`: copy-on-write (True) when both are on a filesystem that can, else
    a sparse copy of the data only (False). `dst` is complete or absent, never half-written."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
                shared = True
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                    raise
                _sparse_copy(fin.fileno(), fout.fileno())
                shared = False
        os.replace(tmp, dst)
        return shared
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sparse_copy(fin: int, fout: int) -> None:
    size = os.fstat(fin).st_size
    os.ftruncate(fout, size)
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fin, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break  # only a hole is left
            raise
        end = os.lseek(fin, start, os.SEEK_HOLE)
        while start < end:
            start += os.copy_file_range(fin, fout, end - start, start, start)
        offset = end


@contextlib.contextmanager
def frozen(mountpoint: Path) -> Iterator[None]:
    """The mounted filesystem at `mountpoint` frozen: flushed and clean on disk, writes held until exit."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _FIFREEZE, 0)
        try:
            yield
        finally:
            fcntl.ioctl(fd, _FITHAW, 0)
    finally:
        os.close(fd)


def allocated_bytes(path: Path) -> int:
    """Bytes of `path` really stored (its blocks), not its apparent size."""
    return os.stat(path).st_blocks * 512
