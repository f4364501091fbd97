"""File endpoints over the real HTTP API: round trips, paths seen through the devbox's eyes, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from runloop_api_client import BadRequestError, NotFoundError, PermissionDeniedError
from support.backend_process import devbox_home

from mcp_server.local import files
from mcp_server.local.server import RunningBackend


@pytest.fixture(scope="module")
def devbox(sdk):  # noqa: ANN001, ANN201
    view = sdk.devboxes.create_and_await_running(name="files")
    yield view
    sdk.devboxes.shutdown(view.id)


@pytest.fixture(scope="module")
def home(backend: RunningBackend, devbox) -> Path:  # noqa: ANN001
    """The devbox home as the host sees it (to plant things a command in the devbox could have made)."""
    return devbox_home(backend.config.data_dir, devbox.id)


def test_write_then_read_utf8_text(sdk, devbox, home: Path) -> None:  # noqa: ANN001
    text = "héllo wörld ✓\nline two\n"
    result = sdk.devboxes.write_file_contents(devbox.id, file_path="deep/er/notes.txt", contents=text)
    assert result.exit_status == 0
    assert sdk.devboxes.read_file_contents(devbox.id, file_path="deep/er/notes.txt") == text
    assert sdk.devboxes.read_file_contents(devbox.id, file_path="/home/user/deep/er/notes.txt") == text
    assert (home / "deep" / "er" / "notes.txt").read_text(encoding="utf-8") == text


def test_read_returns_text_plain(http: httpx.Client, devbox) -> None:  # noqa: ANN001
    http.post(
        f"/v1/devboxes/{devbox.id}/write_file_contents", json={"file_path": "p.txt", "contents": "plain"}
    )
    r = http.post(f"/v1/devboxes/{devbox.id}/read_file_contents", json={"file_path": "p.txt"})
    assert r.status_code == 200 and r.text == "plain"
    assert r.headers["content-type"].startswith("text/plain")


def test_overwrite_replaces_whole_file_and_keeps_its_mode(sdk, devbox, home: Path) -> None:  # noqa: ANN001
    sdk.devboxes.write_file_contents(
        devbox.id, file_path="run.sh", contents="#!/bin/sh\necho long long long\n"
    )
    os.chmod(home / "run.sh", 0o755)
    sdk.devboxes.write_file_contents(devbox.id, file_path="run.sh", contents="#!/bin/sh\n")
    assert (home / "run.sh").read_text() == "#!/bin/sh\n"
    assert (home / "run.sh").stat().st_mode & 0o777 == 0o755
    assert not [p for p in home.iterdir() if p.name.startswith(".upload.")]  # no temporary file left


def test_empty_file_round_trip(sdk, devbox) -> None:  # noqa: ANN001
    sdk.devboxes.write_file_contents(devbox.id, file_path="empty.txt", contents="")
    assert sdk.devboxes.read_file_contents(devbox.id, file_path="empty.txt") == ""


def test_upload_and_download_binary(sdk, devbox, home: Path) -> None:  # noqa: ANN001
    payload = bytes(range(256)) * 4 + os.urandom(3 * 1024 * 1024 + 7)
    assert sdk.devboxes.upload_file(devbox.id, path="bin/blob.dat", file=payload) is not None
    assert (home / "bin" / "blob.dat").read_bytes() == payload
    downloaded = sdk.devboxes.download_file(devbox.id, path="bin/blob.dat")
    assert downloaded.read() == payload


def test_download_is_octet_stream(http: httpx.Client, devbox) -> None:  # noqa: ANN001
    http.post(f"/v1/devboxes/{devbox.id}/write_file_contents", json={"file_path": "d.txt", "contents": "abc"})
    r = http.post(f"/v1/devboxes/{devbox.id}/download_file", json={"path": "d.txt"})
    assert r.status_code == 200 and r.content == b"abc"
    assert r.headers["content-type"] == "application/octet-stream"


def test_reading_a_binary_file_says_to_download_it(sdk, devbox) -> None:  # noqa: ANN001
    sdk.devboxes.upload_file(devbox.id, path="image.bin", file=b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(BadRequestError, match="download_file"):
        sdk.devboxes.read_file_contents(devbox.id, file_path="image.bin")


def test_missing_file_and_directory(sdk, devbox, home: Path) -> None:  # noqa: ANN001
    with pytest.raises(NotFoundError, match="no such file: '/home/user/missing.txt'"):
        sdk.devboxes.read_file_contents(devbox.id, file_path="missing.txt")
    with pytest.raises(NotFoundError):
        sdk.devboxes.download_file(devbox.id, path="missing.bin")
    (home / "adir").mkdir(exist_ok=True)
    with pytest.raises(BadRequestError, match="is a directory"):
        sdk.devboxes.read_file_contents(devbox.id, file_path="adir")
    with pytest.raises(BadRequestError, match="is a directory"):
        sdk.devboxes.write_file_contents(devbox.id, file_path="adir", contents="x")
    with pytest.raises(BadRequestError, match="is a directory"):
        sdk.devboxes.write_file_contents(devbox.id, file_path="adir/", contents="x")


def test_traversal_reaches_only_what_the_devbox_user_sees(sdk, devbox, backend: RunningBackend) -> None:  # noqa: ANN001
    for path in ("../../etc/shadow", "/etc/shadow", "/home/user/../../etc/gshadow"):
        with pytest.raises(PermissionDeniedError):
            sdk.devboxes.read_file_contents(devbox.id, file_path=path)
    # The host's files outside the sandbox do not exist from inside it.
    for path in (
        "/root/.bashrc",
        f"{backend.config.data_dir}/devboxes/{devbox.id}/devbox.json",
        "../../../work/notes",
    ):
        with pytest.raises(NotFoundError):
            sdk.devboxes.read_file_contents(devbox.id, file_path=path)
    # System files the devbox can read are readable, as they are for a command in it.
    assert "PRETTY_NAME" in sdk.devboxes.read_file_contents(devbox.id, file_path="/etc/os-release")


def test_symlinks_resolve_inside_the_devbox(sdk, devbox, home: Path, backend: RunningBackend) -> None:  # noqa: ANN001
    state_file = backend.config.data_dir / "devboxes" / devbox.id / "devbox.json"
    (home / "to-shadow").symlink_to("/etc/shadow")
    (home / "to-state").symlink_to(state_file)
    (home / "to-data-dir").symlink_to(backend.config.data_dir)
    (home / "to-ok").symlink_to("/home/user/target.txt")
    (home / "target.txt").write_text("fine")
    with pytest.raises(PermissionDeniedError):
        sdk.devboxes.read_file_contents(devbox.id, file_path="to-shadow")
    with pytest.raises(NotFoundError):
        sdk.devboxes.read_file_contents(devbox.id, file_path="to-state")
    with pytest.raises(NotFoundError):
        sdk.devboxes.download_file(devbox.id, path="to-data-dir/devboxes/" + devbox.id + "/devbox.json")
    assert sdk.devboxes.read_file_contents(devbox.id, file_path="to-ok") == "fine"
    # Writing through a link to the host's data dir cannot touch it.
    before = state_file.read_bytes()
    with pytest.raises(BadRequestError, match="cannot write"):
        sdk.devboxes.write_file_contents(devbox.id, file_path="to-data-dir/devboxes/x.json", contents="{}")
    with pytest.raises(BadRequestError, match="cannot write"):
        sdk.devboxes.write_file_contents(devbox.id, file_path="/etc/passwd", contents="evil")
    # Writing to a link replaces the link itself (rename), never the file it points at.
    sdk.devboxes.upload_file(devbox.id, path="to-state", file=b"{}")
    assert not (home / "to-state").is_symlink() and (home / "to-state").read_bytes() == b"{}"
    assert state_file.read_bytes() == before
    assert not (backend.config.data_dir / "devboxes" / "x.json").exists()


def test_writes_outside_home_and_tmp_are_refused(sdk, devbox) -> None:  # noqa: ANN001
    # The devbox user cannot write the system: it is root's (a system of its own, root backend)
    # or the host's, mounted read-only (a backend without root).
    for path in ("/usr/local/bin/evil", "/etc/evil.conf", "/evil"):
        with pytest.raises(BadRequestError, match="Permission denied|Read-only file system"):
            sdk.devboxes.write_file_contents(devbox.id, file_path=path, contents="x")
        assert not Path(path).exists()
    sdk.devboxes.write_file_contents(devbox.id, file_path="/tmp/scratch.txt", contents="tmp ok")
    assert sdk.devboxes.read_file_contents(devbox.id, file_path="/tmp/scratch.txt") == "tmp ok"


def test_oversized_read_is_413(sdk, devbox, home: Path) -> None:  # noqa: ANN001
    with open(home / "huge.bin", "wb") as fh:
        fh.truncate(files.MAX_READ_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(Exception) as info:
        sdk.devboxes.read_file_contents(devbox.id, file_path="huge.bin")
    assert getattr(info.value, "status_code", None) == 413
    assert "download_file" in str(info.value)


def test_oversized_upload_is_413(http: httpx.Client, devbox, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(files, "MAX_UPLOAD_BYTES", 1024)  # the real limit is too large to send in a test
    r = http.post(
        f"/v1/devboxes/{devbox.id}/upload_file", data={"path": "big.bin"}, files={"file": b"x" * 2048}
    )
    assert r.status_code == 413 and "limit" in r.json()["message"]


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "fragment"),
    [
        ("read_file_contents", b"{oops", 400, "not valid JSON"),
        ("read_file_contents", json.dumps({}).encode(), 400, "file_path"),
        ("read_file_contents", json.dumps({"file_path": 5}).encode(), 400, "file_path"),
        ("read_file_contents", json.dumps({"file_path": ""}).encode(), 400, "non-empty"),
        ("read_file_contents", json.dumps({"file_path": "a\u0000b"}).encode(), 400, "NUL"),
        ("write_file_contents", json.dumps({"file_path": "x.txt"}).encode(), 400, "contents"),
        (
            "write_file_contents",
            json.dumps({"file_path": "x.txt", "contents": ["a"]}).encode(),
            400,
            "contents",
        ),
        (
            "write_file_contents",
            json.dumps({"file_path": "x" * 5000, "contents": ""}).encode(),
            400,
            "longer",
        ),
        ("download_file", json.dumps({"file_path": "x"}).encode(), 400, "path"),
    ],
)
def test_bad_file_requests(
    http: httpx.Client, devbox, endpoint: str, body: bytes, status: int, fragment: str
) -> None:  # noqa: ANN001
    r = http.post(
        f"/v1/devboxes/{devbox.id}/{endpoint}", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert fragment in r.json()["message"]


def test_bad_uploads(http: httpx.Client, devbox) -> None:  # noqa: ANN001
    url = f"/v1/devboxes/{devbox.id}/upload_file"
    r = http.post(url, json={"path": "x"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["message"]
    r = http.post(url, data={"path": "x"}, files={"other": b"1"})
    assert r.status_code == 400 and "'file'" in r.json()["message"]
    r = http.post(url, files={"file": b"1"})
    assert r.status_code == 400 and "'path'" in r.json()["message"]
    r = http.post(
        url, content=b"--nope\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=nope"}
    )
    assert r.status_code == 400


def test_file_calls_on_unknown_or_stopped_devboxes(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    for endpoint in ("read_file_contents", "write_file_contents", "download_file", "upload_file"):
        r = http.post(
            f"/v1/devboxes/dbx_missing/{endpoint}", json={"file_path": "x", "path": "x", "contents": ""}
        )
        assert r.status_code == 404 and "dbx_missing" in r.json()["message"]
    view = sdk.devboxes.create_and_await_running()
    sdk.devboxes.suspend(view.id)
    with pytest.raises(BadRequestError, match="suspended; resume it first"):
        sdk.devboxes.download_file(view.id, path="x")
    sdk.devboxes.shutdown(view.id)
    with pytest.raises(BadRequestError, match="is shutdown; create a new one"):
        sdk.devboxes.upload_file(view.id, path="x", file=b"x")


def test_a_devbox_that_does_not_answer_is_504_not_500(
    http: httpx.Client, devbox, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    import mcp_server.local.files as files

    monkeypatch.setattr(files, "ANSWER_SECONDS", 0)  # the backend runs in this process: no answer is in time
    url = f"/v1/devboxes/{devbox.id}"
    for r in (
        http.post(f"{url}/read_file_contents", json={"file_path": ".bashrc"}),
        http.post(f"{url}/download_file", json={"path": ".bashrc"}),
        http.post(f"{url}/write_file_contents", json={"file_path": "late.txt", "contents": "x"}),
    ):
        assert r.status_code == 504, r.text
        assert "did not answer within 0 s" in r.json()["message"]
    monkeypatch.undo()
    assert http.post(f"{url}/write_file_contents", json={"file_path": "late.txt", "contents": "x"}).status_code == 200


def test_lone_surrogates_are_400_not_500(http: httpx.Client, devbox, sdk) -> None:  # noqa: ANN001
    url = f"/v1/devboxes/{devbox.id}"
    for endpoint, body in (
        ("write_file_contents", b'{"file_path": "s.txt", "contents": "x\\ud800"}'),
        ("write_file_contents", b'{"file_path": "s\\udc00.txt", "contents": "x"}'),
        ("read_file_contents", b'{"file_path": "s\\ud800.txt"}'),
        ("download_file", b'{"path": "s\\ud800.txt"}'),
    ):
        r = http.post(f"{url}/{endpoint}", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "lone surrogate" in r.json()["message"], (endpoint, r.text)
    # A real pair (an emoji, escaped as JSON does by default) is text like any other.
    r = http.post(
        f"{url}/write_file_contents",
        content=b'{"file_path": "pair.txt", "contents": "\\ud83d\\ude00"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert sdk.devboxes.read_file_contents(devbox.id, file_path="pair.txt") == "\U0001f600"
