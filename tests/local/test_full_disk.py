"""A full disk: every write path answers 507 with a message that says so, and leaves nothing half-written.

The backend's data directory is a small tmpfs mounted for the test and filled to the last page;
once space is freed, the same calls succeed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.backend_process import devbox_home, tmpfs

from mcp_server.local.server import RunningBackend, start_in_thread

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs as the backend's disk")

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with tmpfs(tmp_path_factory.mktemp("full") / "disk", "48m") as path:
        yield path


@pytest.fixture(scope="module")
def backend_on_disk(disk: Path) -> Iterator[RunningBackend]:
    running = start_in_thread(disk / "data")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(backend_on_disk: RunningBackend) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {backend_on_disk.api_key}"}
    with httpx.Client(base_url=backend_on_disk.base_url, headers=headers, timeout=60) as c:
        yield c


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses even one more page."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (MiB, 4096):
            data = b"\0" * block
            while True:
                try:
                    os.write(fd, data)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def snapshot(root: Path) -> dict[str, int]:
    """Every file and directory under `root`, with sizes: what a restart would find."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = 0 if path.is_dir() else path.lstat().st_size
    return found


def disk_full(r: httpx.Response) -> bool:
    return r.status_code == 507 and "the disk is full" in r.json()["message"]


def multipart(path: str, data: bytes, path_first: bool) -> tuple[bytes, str]:
    b = "full-disk-boundary"
    path_part = f'--{b}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{path}\r\n'.encode()
    file_part = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'.encode() + data + b"\r\n"
    body = (path_part + file_part if path_first else file_part + path_part) + f"--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def test_every_write_on_a_full_disk_is_507_and_changes_nothing(
    client: httpx.Client, backend_on_disk: RunningBackend, disk: Path
) -> None:
    data_dir = backend_on_disk.config.data_dir
    view = client.post("/v1/devboxes/create_and_await_running", json={"metadata": {"was": "here"}}).json()
    assert view["status"] == "running"
    dbx = f"/v1/devboxes/{view['id']}"
    home = devbox_home(data_dir, view["id"])

    filler = fill(disk)
    before = snapshot(data_dir)

    r = client.post("/v1/devboxes", json={"name": "no room"})
    assert disk_full(r), r.text
    assert "create a devbox" in r.json()["message"]
    r = client.post(dbx, json={"metadata": {"new": "value"}})
    assert disk_full(r), r.text
    assert client.get(dbx).json()["metadata"] == {"was": "here"}
    r = client.post(f"{dbx}/write_file_contents", json={"file_path": "big.txt", "contents": "w" * MiB})
    assert disk_full(r), r.text
    for path_first in (True, False):
        body, content_type = multipart("up.bin", b"u" * MiB, path_first)
        r = client.post(f"{dbx}/upload_file", content=body, headers={"Content-Type": content_type})
        assert disk_full(r), r.text
    r = client.post(f"{dbx}/suspend")
    assert disk_full(r), r.text
    assert client.get(dbx).json()["status"] == "running"
    r = client.post(f"{dbx}/enable_tunnel", json={"auth_mode": "open"})
    assert disk_full(r), r.text
    assert client.get(dbx).json().get("tunnel") is None

    assert snapshot(data_dir) == before  # no devbox half made, no temporary file, no torn record
    assert not (home / "big.txt").exists() and not (home / "up.bin").exists()
    # Paths whose writes may still fit in a page already allocated: never a 500.
    assert client.post("/v1/axons", json={"name": "full"}).status_code in (200, 507)
    r = client.post(f"{dbx}/execute_async", json={"command": "true"})
    assert r.status_code == 200 or disk_full(r), r.text

    filler.unlink()
    created = client.post("/v1/devboxes/create_and_await_running", json={"name": "room again"})
    assert created.status_code == 200 and created.json()["status"] == "running", created.text
    assert client.post(dbx, json={"metadata": {"new": "value"}}).json()["metadata"] == {"new": "value"}
    assert client.post(f"{dbx}/enable_tunnel", json={"auth_mode": "open"}).json()["tunnel_key"]
    r = client.post(f"{dbx}/write_file_contents", json={"file_path": "big.txt", "contents": "w" * MiB})
    assert r.status_code == 200, r.text
    body, content_type = multipart("up.bin", b"u" * MiB, False)
    assert client.post(f"{dbx}/upload_file", content=body, headers={"Content-Type": content_type}).status_code == 200
    assert (home / "big.txt").stat().st_size == MiB and (home / "up.bin").stat().st_size == MiB
    for ident in (view["id"], created.json()["id"]):
        assert client.post(f"/v1/devboxes/{ident}/shutdown").status_code == 200


def test_a_devbox_whose_setup_meets_a_full_disk_fails_with_a_reason(
    client: httpx.Client, backend_on_disk: RunningBackend, disk: Path
) -> None:
    # Three pages left: the record (two pages: it holds the mount's text) fits; the mounted file does not.
    filler = fill(disk)
    os.truncate(filler, os.stat(filler).st_size - 3 * 4096)
    try:
        r = client.post("/v1/devboxes/create_and_await_running", json={"file_mounts": {"big.txt": "m" * 6000}})
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["status"] == "failure"
        logs = client.get(f"/v1/devboxes/{view['id']}/logs").json()["logs"]
        assert any("the disk is full" in (entry.get("message") or "") for entry in logs), logs
        home = devbox_home(backend_on_disk.config.data_dir, view["id"])
        assert not (home / "big.txt").exists()  # no half-written mount
    finally:
        filler.unlink()
