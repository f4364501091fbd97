"""A devbox's whole writable filesystem captured at one instant, and what a new devbox starts from.

This is the storage primitive snapshots, forks and blueprints build on:

- `DevboxManager.capture(devbox_id, dest)` -> `DiskCapture`: `dest` becomes a read-only,
  copy-on-write copy of the devbox's disk (its home, /tmp and every change to its system: the
  overlay's upper layer all live on it, `rootfs.py`). A running devbox is paused for the moment
  of capture: its processes are frozen (cgroup freezer: each stops at a safe point, so a write
  system call is wholly in the capture or wholly out), then its filesystem (FIFREEZE: dirty data
  flushed, journal clean), then the image is reflinked (`cow.clone`), then both thaw; the devbox
  runs on. A suspended devbox's disk is unmounted and clean: it is cloned as it is.
- `DevboxManager.create(..., base=capture)`: the new devbox's disk is a clone of the capture (no
  copy of data on the pool), on the same system image; it boots like a resumed devbox.
- `DevboxManager.capture_path(kind, name)`: where to keep a capture (on the pool, with the disks,
  so that clones share blocks); `DiskCapture.record()`/`from_record()` to keep its description.

A capture never changes after it is made (mode 0400); deleting it frees only the blocks no disk
cloned from it still uses.
"""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_EXT4_MAGIC = 0xEF53


class CaptureError(Exception):
    """The devbox cannot be captured now; the message says why and what to do."""


@dataclass(frozen=True)
class DiskCapture:
    """A read-only copy of a devbox's disk, and what a devbox started from it needs to know."""

    image: Path  # the ext4 image (read-only)
    system_image: str | None  # the devbox image (lower layer) its system changes sit on
    id_range: list[int] | None  # the host ids its files belong to
    user: dict[str, Any] | None  # whose home it holds (None: `user`)
    disk_bytes: int  # the disk's size
    used_bytes: int  # bytes in use in its filesystem
    copy_on_write: bool  # False: a full copy (no pool on this host)

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data["image"] = str(self.image)
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> DiskCapture:
        return cls(**{**data, "image": Path(data["image"])})


def ext4_used_bytes(image: Path) -> int:
    """Bytes in use in the ext4 filesystem in `image`, from its superblock (current once frozen or unmounted)."""
    with open(image, "rb") as fh:
        fh.seek(1024)
        sb = fh.read(0x160)
    if len(sb) < 0x160 or struct.unpack_from("<H", sb, 0x38)[0] != _EXT4_MAGIC:
        return 0
    blocks = struct.unpack_from("<I", sb, 0x4)[0] | struct.unpack_from("<I", sb, 0x150)[0] << 32
    free = struct.unpack_from("<I", sb, 0xC)[0] | struct.unpack_from("<I", sb, 0x158)[0] << 32
    block_size = 1024 << struct.unpack_from("<I", sb, 0x18)[0]
    incompat = struct.unpack_from("<I", sb, 0x60)[0]
    if not incompat & 0x80:  # no 64bit feature: the high words are not there
        blocks, free = blocks & 0xFFFFFFFF, free & 0xFFFFFFFF
    return max(0, blocks - free) * block_size


def seal(path: Path) -> None:
    """A capture is read-only from now on."""
    os.chmod(path, 0o400)
