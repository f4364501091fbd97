"""Old devbox images are removed once nothing sits on them, never before (local/image_gc.py).

The store is a directory of this test's, with small stand-in images (an image.json and a rootfs
with one file): what is collected depends on the records of data directories, the users recorded
in each image and the locks of running backends, not on the images' contents. A last test runs
the real backend on the machine's image and checks that it records and holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from runloop_api_client import Runloop
from support.backend_process import backend_process

from mcp_server.local import image_gc
from mcp_server.local.idmap import IdRange
from mcp_server.local.image import Image, ImageStore, default_images_dir


def _image(store: ImageStore, name: str) -> Image:
    path = store.directory / name
    (path / "rootfs" / "etc").mkdir(parents=True)
    (path / "rootfs" / "etc" / "os-release").write_text("ID=debian\n")
    (path / "image.json").write_text(json.dumps({"name": name}))
    return Image(path, {"name": name})


def _write(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _recorded(store: ImageStore, image: Image, data_dir: Path) -> None:
    os.close(image_gc.hold(store, image, data_dir))  # a backend that ran on it, and stopped


def test_only_old_images_nothing_uses_are_removed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images", IdRange(1_800_000_000, 1_800_000_000))
    current = _image(store, store.name)
    on_devbox, on_snapshot, on_blueprint, after_shutdown, orphan, held, unrecorded = (
        _image(store, f"old-{n}") for n in range(7)
    )
    used, stopped, gone, running = (tmp_path / d for d in ("used", "stopped", "gone", "running"))
    _write(used / "devboxes" / "dbx_1" / "devbox.json", {"status": "suspended", "image": str(on_devbox.path)})
    _write(used / "snapshots" / "snp_1.json", {"base": {"system_image": str(on_snapshot.path)}})
    _write(used / "blueprints" / "bpt_1" / "blueprint.json", {"capture": {"system_image": str(on_blueprint.path)}})
    _write(stopped / "devboxes" / "dbx_2" / "devbox.json", {"status": "shutdown", "image": str(after_shutdown.path)})
    for image in (on_devbox, on_snapshot, on_blueprint):
        _recorded(store, image, used)
    _recorded(store, after_shutdown, stopped)
    _recorded(store, orphan, gone)  # a data directory since deleted
    running.mkdir()
    holding = image_gc.hold(store, held, running)  # a backend still running on it, no devbox yet
    _recorded(store, current, used)

    try:
        kept = {old.path.name: old.kept_because for old in image_gc.old_images(store)}
        assert set(kept) == {f"old-{n}" for n in range(7)}  # the current image is never a candidate
        assert image_gc.collect(store) == [after_shutdown.path, orphan.path]
        assert not after_shutdown.path.exists() and not orphan.path.exists()
        for image in (current, on_devbox, on_snapshot, on_blueprint, held, unrecorded):
            assert (image.rootfs / "etc" / "os-release").exists(), image.path
        assert "running backend" in (kept["old-5"] or "") and "older devbox-mcp" in (kept["old-6"] or "")
        assert str(used) in (kept["old-0"] or "")
        assert not [p for p in store.directory.iterdir() if p.name.startswith(".build-")]
    finally:
        os.close(holding)
    # The backend stopped, and its data directory never put a devbox on that image: it goes too.
    assert image_gc.collect(store) == [held.path]


def test_a_record_survives_only_while_its_data_directory_exists_or_a_backend_holds_it(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images", IdRange(1_800_000_000, 1_800_000_000))
    image = _image(store, store.name)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    _recorded(store, image, tmp_path / "a")
    holding_b = image_gc.hold(store, image, tmp_path / "b")
    try:
        (tmp_path / "a").rmdir()
        (tmp_path / "b").rmdir()
        os.close(image_gc.hold(store, image, tmp_path / "c"))  # pruning happens when a user is recorded
        left = sorted(r.read_text().strip() for r in (image.path / image_gc.USERS).iterdir())
        assert left == [str(tmp_path / "b"), str(tmp_path / "c")]
    finally:
        os.close(holding_b)


@pytest.mark.skipif(os.geteuid() != 0, reason="devboxes have the image only on a root backend")
def test_the_backend_records_and_holds_the_image_its_devboxes_use(tmp_path: Path) -> None:
    with backend_process(tmp_path / "data", tmp_path / "backend.log") as backend:
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        devbox = sdk.devboxes.create_and_await_running()
        image = Path(json.loads((tmp_path / "data" / "devboxes" / devbox.id / "devbox.json").read_text())["image"])
        assert image.parent == default_images_dir()
        records = [r for r in (image / image_gc.USERS).iterdir() if r.read_text().strip() == str(tmp_path / "data")]
        assert len(records) == 1
        fd = os.open(records[0], os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the running backend holds it
        finally:
            os.close(fd)
        sdk.devboxes.shutdown(devbox.id)


@pytest.mark.skipif(os.geteuid() != 0, reason="images belong to a root backend")
def test_devbox_mcp_image_lists_old_images_and_gc_removes_the_unused(tmp_path: Path) -> None:
    import subprocess
    import sys

    images = tmp_path / "images"
    images.mkdir()
    (images / "id-range").write_text(json.dumps({"uid_base": 1_800_000_000, "gid_base": 1_800_000_000, "count": 65536}))
    store = ImageStore(images, IdRange(1_800_000_000, 1_800_000_000))
    current, unused, kept = _image(store, store.name), _image(store, "old-unused"), _image(store, "old-kept")
    _recorded(store, unused, tmp_path / "gone")
    _recorded(store, current, tmp_path / "gone")
    del kept  # no users directory: built by an older devbox-mcp

    def cli(*args: str) -> str:
        env = {**os.environ, "DEVBOX_MCP_IMAGE_DIR": str(images)}
        done = subprocess.run([sys.executable, "-m", "mcp_server", "image", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = cli()
    assert f"old image {images / 'old-unused'}: nothing uses it; `devbox-mcp image --gc` removes it" in listed
    assert f"old image {images / 'old-kept'}: kept, it does not record its users" in listed
    assert (images / "old-unused").exists()  # listing removes nothing
    collected = cli("--gc")
    assert f"removed the old image {images / 'old-unused'}: nothing uses it" in collected
    assert not (images / "old-unused").exists() and (images / "old-kept").exists() and current.rootfs.exists()
