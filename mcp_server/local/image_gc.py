"""Old devbox images: which ones something still sits on, and removing the others.

A new recipe (another package list, release or `RECIPE_VERSION`) builds a new image beside the
old ones (image.py), which devboxes, snapshots and blueprints made on them keep using. The images
directory is shared by every data directory of the machine, so an image cannot know its users by
itself: each backend records its data directory in `<image>/users/` when it first puts a devbox on
the image, and holds a shared lock on that record while it runs. An old image is removed only when,
under the users' lock of the store (no new record meanwhile; not the build's lock, so that a create
never waits for another backend's build), every record is unlocked (no
running backend uses it) and names a data directory where no devbox that is not shut down, no
snapshot and no blueprint mentions the image. An image without a `users/` directory (built before
images recorded them) is never removed automatically: who uses it cannot be known.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .image import Image, ImageStore

log = logging.getLogger("devbox_mcp.local")

USERS = "users"
# The records of a data directory that may name the image a devbox's system sits on.
_RECORDS = ("devboxes/*/devbox.json", "snapshots/*.json", "blueprints/*/blueprint.json")


def hold(store: ImageStore, image: Image, data_dir: Path) -> int:
    """Record that `data_dir` puts devboxes on `image`; the returned descriptor's shared lock says a
    backend runs on it (close it when the backend stops; the process ending closes it too).

    FileNotFoundError: the image was removed meanwhile (it was old for another backend's recipe).
    """
    users = image.path / USERS
    data_dir = data_dir.resolve()
    record = users / hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    with _store_lock(store):
        users.mkdir(mode=0o700, exist_ok=True)
        if not record.exists():
            tmp = users / f".{record.name}.{os.getpid()}.tmp"
            tmp.write_text(str(data_dir) + "\n")
            os.replace(tmp, record)
        fd = os.open(record, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _prune(users, keep=record)
    return fd


def _prune(users: Path, keep: Path) -> None:
    """Drop the records of data directories that are gone (tests make many) and no backend holds."""
    for record in users.iterdir():
        if record == keep or record.name.startswith("."):
            continue
        with contextlib.suppress(OSError):
            fd = os.open(record, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not Path(record.read_text().strip()).exists():
                    record.unlink()
            except BlockingIOError:
                pass
            finally:
                os.close(fd)


@dataclass(frozen=True)
class OldImage:
    path: Path
    kept_because: str | None  # None: nothing uses it


def old_images(store: ImageStore) -> list[OldImage]:
    """Every complete image but the current recipe's, and what (if anything) keeps each."""
    found = []
    for path in sorted(store.directory.iterdir()) if store.directory.is_dir() else []:
        if path.name.startswith(".") or path.name == store.name or not (path / "image.json").is_file():
            continue
        found.append(OldImage(path, _kept_because(path)))
    return found


def collect(store: ImageStore) -> list[Path]:
    """Remove the old images nothing uses; returns their paths."""
    removed = []
    with _store_lock(store):
        for old in old_images(store):
            if old.kept_because is not None:
                log.info("old devbox image %s kept: %s", old.path, old.kept_because)
                continue
            # Renamed first: a removal cut short leaves a hidden directory (cleared by the next
            # build's stale sweep), never an image with files missing.
            doomed = old.path.with_name(f".build-removed-{old.path.name}-{os.getpid()}")
            os.rename(old.path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            log.info("old devbox image %s removed: no devbox, snapshot or blueprint uses it", old.path)
            removed.append(old.path)
    return removed


def _kept_because(image: Path) -> str | None:
    users = image / USERS
    if not users.is_dir():
        return "it does not record its users (built by an older devbox-mcp); remove it by hand once unused"
    for record in sorted(users.iterdir()):
        if record.name.startswith("."):
            continue
        try:
            data_dir = Path(record.read_text().strip())
            fd = os.open(record, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            return f"its user record {record.name} cannot be read ({exc})"
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return f"a running backend uses it (data directory {data_dir})"
            if _data_dir_uses(data_dir, image):
                return f"a devbox, snapshot or blueprint of {data_dir} sits on it"
        finally:
            os.close(fd)
    return None


def _data_dir_uses(data_dir: Path, image: Path) -> bool:
    for pattern in _RECORDS:
        for record in data_dir.glob(pattern):
            try:
                data = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                if record.exists():
                    return True  # unreadable: assume the worst
                continue
            if record.name == "devbox.json" and data.get("status") == "shutdown":
                continue  # its system is deleted at shutdown
            if _mentions(data, str(image)):
                return True
    return False


def _mentions(value: Any, image: str) -> bool:
    if isinstance(value, str):
        return value == image or value.startswith(image + "/")
    if isinstance(value, dict):
        return any(_mentions(v, image) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, image) for v in value)
    return False


@contextlib.contextmanager
def _store_lock(store: ImageStore):  # noqa: ANN202
    """Held while a user is recorded or old images are removed."""
    store.directory.mkdir(parents=True, exist_ok=True)
    with open(store.directory / ".users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
