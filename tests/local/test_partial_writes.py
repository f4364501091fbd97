"""A write cut short by a backend killed mid-upload leaves nothing once the backend is back."""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from support.backend_process import backend_process, devbox_home, disk_image, open_chunked

from mcp_server.local import disk, files
from mcp_server.local.server import start_in_thread

BOUNDARY = "devbox-mcp-test-boundary"
HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="path"\r\n\r\nsub/dir/big.bin\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
).encode()


def _wait_for(what: str, check) -> None:  # noqa: ANN001
    """Wait (bounded) for a condition the backend brings about on its own time."""
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        select.select([], [], [], 0.02)


@contextlib.contextmanager
def mounted(data_dir: Path, devbox_id: str, mountpoint: Path) -> Iterator[None]:
    """The devbox's disk, mounted as the backend mounts it, for the test to look into while the devbox is down."""
    with disk_image(data_dir, devbox_id) as image:
        disk.attach(image, mountpoint, 0)
        try:
            yield
        finally:
            disk.detach(mountpoint)


def test_a_restart_removes_what_an_upload_killed_mid_way_left(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with backend_process(data_dir, tmp_path / "backend.log") as proc:
        with proc.client() as client:
            devbox = client.post("/v1/devboxes/create_and_await_running", json={}).json()["id"]
        state = data_dir / "devboxes" / devbox
        home = devbox_home(data_dir, devbox)
        sock = open_chunked(
            proc.port,
            f"/v1/devboxes/{devbox}/upload_file",
            {**proc.headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            HEAD,
            b"p" * 65536,
            1024 * 1024,
        )
        target_dir = home / "sub" / "dir"

        def partial() -> list[Path]:
            found = target_dir.glob(files.PARTIAL_PREFIX + "*") if target_dir.is_dir() else []
            return [p for p in found if p.stat().st_size > 0]

        _wait_for("the upload's temporary file to fill", partial)
        proc.kill()  # SIGKILL: no trap, no finally runs
        sock.close()
    # A devbox's disk is unmounted once its backend is gone (disk.py's reaper): mount it to look.
    on_disk = home.parent == state / "disk"
    if on_disk:
        pool = data_dir / "cow" / "fs"  # the copy-on-write pool the disk image is on (local/cow.py)
        _wait_for("the killed backend's mounts to go", lambda: not os.path.ismount(state / "disk") and not os.path.ismount(pool))
    with mounted(data_dir, devbox, state / "disk") if on_disk else contextlib.nullcontext():
        [left] = partial()  # what the kill left, as the issue found it

        # Files of the user's that look alike but are not a recorded write's: they stay.
        token = left.name[len(files.PARTIAL_PREFIX) :].split(".")[0]
        lookalikes = [
            home / (files.PARTIAL_PREFIX + "0" * 32 + ".AbC123"),
            home / ".upload.AbCdEfGh",
            target_dir / (files.PARTIAL_PREFIX + token + ".notsix1"),
            target_dir / (files.PARTIAL_PREFIX + token),
        ]
        for path in lookalikes:
            path.write_text("mine")
        # A link out of the devbox to a host directory holding the same name: never followed.
        host_dir = tmp_path / "host"
        host_dir.mkdir()
        (host_dir / left.name).write_text("host file")
        (home / "escape").symlink_to(host_dir)

    backend = start_in_thread(data_dir, proc.api_key)
    try:
        # The devbox resumes (its disk is mounted again, and cleaned) and takes writes as before.
        with httpx.Client(base_url=backend.base_url, headers=proc.headers, timeout=60) as client:
            assert client.post(f"/v1/devboxes/{devbox}/resume").status_code == 200
            assert client.post(f"/v1/devboxes/{devbox}/wait_for_status", json={"statuses": ["running"]}).json()[
                "status"
            ] == "running"
            assert not left.exists()
            assert all(p.read_text() == "mine" for p in lookalikes)
            assert (host_dir / left.name).read_text() == "host file"
            assert list((state / files.PARTIAL_WRITES_DIR).iterdir()) == []
            assert not (target_dir / "big.bin").exists()
            r = client.post(f"/v1/devboxes/{devbox}/upload_file", data={"path": "sub/dir/big.bin"}, files={"file": b"ok"})
            assert r.status_code == 200, r.text
        assert (target_dir / "big.bin").read_bytes() == b"ok"
        assert sorted(p.name for p in target_dir.iterdir()) == sorted(
            ["big.bin", *(p.name for p in lookalikes if p.parent == target_dir)]
        )
    finally:
        backend.stop()
