"""A devbox's disk: a sparse ext4 image of the devbox's size, loop-mounted where its writable storage lives.

Writing past the size fails inside the devbox with ENOSPC, as on a real disk, and the host gives
the image only the blocks really written (deleting files inside gives them back: the mount
discards freed blocks, which punches holes in the image). Needs root (a loop device and a mount);
without it `unavailable_reason` says why and the devbox's storage is a plain host directory.

`attach(image, mountpoint, size)` is the one entry point: it makes the image when missing and
returns once `mountpoint` is a directory of `size` bytes. Images are made ahead in a spare pool
(mkfs takes ~30 ms) and mounted with ioctls and mount(2) directly (`mount -o loop` takes 3x as long).

Mounts outlive a backend that is killed: `reaper.py` unmounts them when it dies, and the loop
devices free themselves (autoclear) once their mounts are gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import logging
import os
import secrets
import shutil
import struct
import subprocess
import threading
from pathlib import Path

from . import reaper

log = logging.getLogger("devbox_mcp.local")

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
_LO_FLAGS_DIRECT_IO = 16  # no second copy of the devbox's files in the host's page cache
_MS_NOSUID, _MS_NODEV, _MS_MOVE = 2, 4, 8192
_MNT_DETACH = 2
# noinit_itable: no background zeroing of inode tables after the mount (the group descriptors'
# checksums already say which are unused); discard: blocks freed inside are freed in the image.
_MOUNT_OPTIONS = b"discard,noinit_itable"
# How long a capture of a suspended devbox waits for its disk's last mount to be released.
UNMOUNT_WAIT_SECONDS = 5.0
_MKFS_OPTIONS = ("-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")


class DiskError(Exception):
    """The disk could not be made or mounted; the message says why."""


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@functools.cache
def mkfs() -> str | None:
    for path in ("/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mkfs.ext4")


@functools.cache
def unavailable_reason() -> str | None:
    """Why devbox disks cannot be size-limited on this host (None when they can)."""
    if os.geteuid() != 0:
        return "the backend is not root, so it cannot loop-mount a disk image per devbox"
    if not os.path.exists("/dev/loop-control"):
        return "this host has no loop devices (/dev/loop-control is missing)"
    if mkfs() is None:
        return "mkfs.ext4 is not installed (apt-get install e2fsprogs)"
    return None


# -- making images -------------------------------------------------------------------------------


def _lowest_priority() -> None:
    os.nice(19)


def make_image(path: Path, size: int, *, background: bool = False) -> None:
    """A sparse file of `size` bytes with an empty ext4 on it (a few MB really written).

    `background`: made ahead, at the lowest CPU priority, so it never slows a devbox starting.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.truncate(size)
        result = subprocess.run(
            [mkfs() or "mkfs.ext4", *_MKFS_OPTIONS, str(tmp)],
            preexec_fn=_lowest_priority if background else None,
            capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace").strip()
            if "No space left" in err:
                raise OSError(errno.ENOSPC, f"no space for the devbox's disk image: {err}")
            raise DiskError(f"mkfs.ext4 failed: {err or f'exit {result.returncode}'}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


SPARES = 2  # per size: devboxes created back to back find one ready while the next is made


class SparePool:
    """Empty images made ahead, a few per size asked for lately, so that a create does not wait for mkfs.

    Where the kernel allows moving a mount (not out of a shared mount, as systemd makes `/`), the
    spare is mounted ahead too, and a create only moves it into place: no mount on the way to running.
    """

    def __init__(self, directory: Path, free_space_of: Path | None = None) -> None:
        """`free_space_of`: the host directory whose free space bounds the spares (the data
        directory, when `directory` is on the copy-on-write pool, whose own free space is virtual)."""
        self.directory = directory
        self.free_space_of = free_space_of
        self._lock = threading.Lock()
        self._making: set[int] = set()
        self._mounted: dict[Path, Path] = {}  # spare image -> where it is mounted
        self._closed = False  # set by close(): a spare still being made is unmounted when done
        self._moves = True  # until a move fails

    def _spares(self, size: int) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return [n for n in os.listdir(self.directory) if n.startswith(f"spare-{size}-") and n.endswith(".img")]
        return []

    def _spare(self, size: int) -> Path | None:
        with contextlib.suppress(FileNotFoundError):
            names = sorted(os.listdir(self.directory))
            for name in names:  # a mounted one first
                path = self.directory / name
                if name.startswith(f"spare-{size}-") and name.endswith(".img") and path in self._mounted:
                    return path
            for name in names:
                if name.startswith(f"spare-{size}-") and name.endswith(".img"):
                    return self.directory / name
        return None

    def take(self, size: int, target: Path, mountpoint: Path) -> bool:
        """Move a spare image of `size` bytes to `target`; False when there is none.

        When it was mounted and its mount could be moved to `mountpoint`, it is mounted there now.
        """
        with self._lock:
            spare = self._spare(size)
            if spare is None:
                return False
            os.replace(spare, target)
            premounted = self._mounted.pop(spare, None)
        if premounted is not None:
            moved = _libc().mount(str(premounted).encode(), str(mountpoint).encode(), None, _MS_MOVE, None) == 0
            if not moved:
                log.info("devbox disks: cannot move mounts here (%s); spares are mounted at create instead",
                         os.strerror(ctypes.get_errno()))  # fmt: skip
                self._moves = False
                detach(premounted)
            with contextlib.suppress(OSError):
                premounted.rmdir()
        return True

    def refill(self, size: int) -> None:
        """Make spares of `size` bytes up to SPARES, and mount them (run in a worker thread)."""
        while self._refill_one(size):
            pass

    def _refill_one(self, size: int) -> bool:
        with self._lock:
            if self._closed or size in self._making or len(self._spares(size)) >= SPARES:
                return False
            self._making.add(size)
        try:
            st = os.statvfs(self.free_space_of or self.directory.parent)
            if st.f_bavail * st.f_frsize < size:
                return False  # a devbox created now would get no disk (limits.disk_gap): no spare either
            self.directory.mkdir(mode=0o700, exist_ok=True)
            token = secrets.token_hex(4)
            # Made and mounted under a name `take` does not look for, then named a spare (the
            # loop device follows the rename): no create can take it half-way.
            making = self.directory / f".making-{token}.img"
            image = self.directory / f"spare-{size}-{token}.img"
            make_image(making, size, background=True)
            mountpoint = None
            if self._moves:
                mountpoint = self.directory / f"mnt-{token}"
                mountpoint.mkdir(mode=0o700)
                try:
                    _mount(making, mountpoint)
                except BaseException:
                    making.unlink(missing_ok=True)
                    mountpoint.rmdir()
                    raise
            with self._lock:
                os.replace(making, image)
                closed = self._closed
                if mountpoint is not None and not closed:
                    self._mounted[image] = mountpoint
            if closed and mountpoint is not None:  # closed while this one was made: no mount outlives it
                detach(mountpoint)
                mountpoint.rmdir()
            return not closed
        except (OSError, DiskError, subprocess.SubprocessError) as exc:
            log.warning("could not make a spare devbox disk of %d bytes: %s", size, exc)
            return False
        finally:
            with self._lock:
                self._making.discard(size)

    def clear_stale(self) -> None:
        """At start-up: unmount and remove the spare mountpoints a killed backend left (images stay)."""
        with contextlib.suppress(FileNotFoundError):
            for entry in self.directory.iterdir():
                if entry.name.startswith("mnt-") and entry not in self._mounted.values():
                    with contextlib.suppress(OSError, DiskError):
                        detach(entry)
                        entry.rmdir()
                elif entry.name.startswith("."):  # an image a killed backend was making
                    entry.unlink(missing_ok=True)

    def close(self) -> None:
        """Unmount the spares (their images stay, for the next backend)."""
        with self._lock:
            self._closed = True
            mounted, self._mounted = self._mounted, {}
        for mountpoint in mounted.values():
            with contextlib.suppress(OSError, DiskError):
                detach(mountpoint)
                mountpoint.rmdir()


# -- mounting ----------------------------------------------------------------------------------------


def _loop_config(fd: int, flags: int) -> bytes:
    info = struct.pack("=QQQQQIIII64s64s32sQQ", 0, 0, 0, 0, 0, 0, 0, 0, flags, b"", b"", b"", 0, 0)
    return struct.pack("=II", fd, 0) + info + bytes(64)


def _attach_loop(image: Path) -> tuple[str, int]:
    """A free loop device backed by `image`: its path, and an open fd of it to mount it by.

    The device frees itself (autoclear) when its last user goes: keep the fd open until mounted.
    """
    image_fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _attempt in range(20):
            ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
            try:
                number = fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)
            finally:
                os.close(ctl)
            device = f"/dev/loop{number}"
            loop_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            for flags in (_LO_FLAGS_AUTOCLEAR | _LO_FLAGS_DIRECT_IO, _LO_FLAGS_AUTOCLEAR):
                try:
                    fcntl.ioctl(loop_fd, _LOOP_CONFIGURE, _loop_config(image_fd, flags))
                    return device, loop_fd
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        break  # another mount took this device meanwhile: ask for another
                    if exc.errno != errno.EINVAL:  # EINVAL: no direct I/O on this file system
                        os.close(loop_fd)
                        raise
            os.close(loop_fd)
        raise DiskError("no free loop device could be had")
    finally:
        os.close(image_fd)


def attached(image: Path) -> list[str]:
    """The loop devices backed by `image` (a mount not yet released holds one)."""
    target = str(image.resolve())
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            if (entry / "loop" / "backing_file").read_text().rstrip("\n") == target:
                found.append(f"/dev/{entry.name}")
    return found


def attach(image: Path, mountpoint: Path, size: int, pool: SparePool | None = None) -> Path:
    """Mount `image` (made first, `size` bytes, when missing) at `mountpoint`; returns `mountpoint`.

    Blocking: call it from a worker thread.
    """
    mountpoint.mkdir(mode=0o700, exist_ok=True)
    if os.path.ismount(mountpoint):
        detach(mountpoint)  # left by a backend that was killed
    if not image.exists():
        if pool is not None and pool.take(size, image, mountpoint):
            if os.path.ismount(mountpoint):
                reaper.unmount_at_exit(mountpoint)
                return mountpoint
        else:
            make_image(image, size)
    if not _mount_held(image, mountpoint):
        _mount(image, mountpoint)
    return mountpoint


def _mount_held(image: Path, mountpoint: Path) -> bool:
    """Mount `image`'s filesystem again if an earlier mount of it is still alive; False when none is.

    A mount namespace made elsewhere while the disk was mounted (the host's mounts are private) holds a
    copy until it ends, which may be never. Mounting that same loop device again gives the same
    filesystem instance (the kernel shares its superblock): never two writers on one image, and no
    waiting on a namespace that is not ours. A device freed meanwhile, or freed and reused for another
    image between the look and the mount, is let go."""
    for device in attached(image):
        try:
            mount_device(device, mountpoint, b"ext4", _MOUNT_OPTIONS)
        except DiskError:
            continue  # released meanwhile
        if device in attached(image):
            reaper.unmount_at_exit(mountpoint)
            return True
        detach(mountpoint)
    return False


def _mount(image: Path, mountpoint: Path) -> None:
    mount_image(image, mountpoint, b"ext4", _MOUNT_OPTIONS)
    reaper.unmount_at_exit(mountpoint)


def mount_image(image: Path, mountpoint: Path, fstype: bytes, options: bytes, extra_flags: int = 0) -> None:
    """Mount the filesystem in `image` at `mountpoint` through a loop device that frees itself when unmounted."""
    device, loop_fd = _attach_loop(image)
    try:
        mount_device(device, mountpoint, fstype, options, extra_flags)
    finally:
        os.close(loop_fd)  # unmounted (or never mounted), the device now frees itself


def mount_device(device: str, mountpoint: Path, fstype: bytes, options: bytes, extra_flags: int = 0) -> None:
    flags = _MS_NOSUID | _MS_NODEV | extra_flags
    if _libc().mount(device.encode(), str(mountpoint).encode(), fstype, flags, options):
        raise DiskError(f"could not mount {device}: {os.strerror(ctypes.get_errno())}")


def detach(mountpoint: Path) -> None:
    """Unmount. A mount still busy (a sandbox's namespaces not yet torn down) is detached lazily: gone
    from the host at once, released by the kernel with its last user (`attach` mounts that same device again meanwhile)."""
    if not os.path.ismount(mountpoint):
        return
    if _libc().umount2(str(mountpoint).encode(), 0) == 0:
        return
    if _libc().umount2(str(mountpoint).encode(), _MNT_DETACH) != 0 and os.path.ismount(mountpoint):
        raise DiskError(f"could not unmount {mountpoint}: {os.strerror(ctypes.get_errno())}")


def usage(mountpoint: Path) -> tuple[int, int] | None:
    """(used, total) bytes of a mounted disk."""
    try:
        st = os.statvfs(mountpoint)
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize
