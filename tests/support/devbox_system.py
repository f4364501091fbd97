"""A devbox system for sandbox-level tests: the machine's devbox image and id range (root only)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from mcp_server.local import rootfs
from mcp_server.local.idmap import IdRange, host_range
from mcp_server.local.image import Image, ImageStore, default_images_dir


@functools.cache
def machine_system() -> tuple[IdRange, Image] | None:
    """The id range and the devbox image (built now if missing), or None for a backend without root."""
    ids = host_range(default_images_dir())
    if ids is None:
        return None
    store = ImageStore(default_images_dir(), ids)
    image = store.current() or store.build(lambda line: print(f"devbox image: {line}", flush=True))
    return ids, image


def own_system(state_dir: Path, home: Path, tmp: Path, uid: int = 1000) -> dict[str, Any]:
    """SandboxSpec fields giving a sandbox its own system (as a root backend's devboxes have), else {}."""
    system = machine_system()
    if system is None:
        return {}
    ids, image = system
    layers = rootfs.RootFs.of(image.rootfs, state_dir)
    rootfs.prepare_first_boot(layers, ids, home, tmp, uid)
    return {"rootfs": layers, "ids": ids}


def is_root() -> bool:
    return os.geteuid() == 0
