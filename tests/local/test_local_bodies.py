"""Request bodies on the embedded backend: size limits while they arrive, uploads that stream, bad numbers.

The memory and /tmp figures are the backend's own: it runs as its own process, its TMPDIR is a
4 MiB tmpfs that would overflow if anything were spooled there, and its peak RSS is the
kernel's high-water mark (reset before each request). Oversized bodies are sent from a raw
socket that stops as soon as the answer arrives, so a refused body costs the test little.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.backend_process import (
    BackendProcess,
    backend_process,
    declared_status,
    devbox_home,
    finish_chunked,
    open_chunked,
    send_chunked,
    tmpfs,
    used_bytes,
)

from mcp_server.local import files
from mcp_server.local.http import MAX_JSON_BODY
from mcp_server.local.server import RunningBackend

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs as the backend's TMPDIR")

MiB = 1024 * 1024
BOUNDARY = "devbox-mcp-test-boundary"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    work = tmp_path_factory.mktemp("bodies")
    with tmpfs(work / "tmpdir", "4m") as tmpdir, backend_process(work / "data", work / "backend.log", tmpdir=tmpdir) as b:
        yield b


@pytest.fixture(scope="module")
def proc_devbox(proc: BackendProcess) -> str:
    with proc.client() as client:
        r = client.post("/v1/devboxes/create_and_await_running", json={"name": "bodies"})
        assert r.status_code == 200 and r.json()["status"] == "running", r.text
        return r.json()["id"]


def field(name: str, value: str) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def file_head(name: str = "file") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="blob.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


END = f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(
    "route",
    ["/v1/devboxes/{id}/write_file_contents", "/v1/devboxes/{id}/execute_async", "/v1/axons"],
)
def test_a_chunked_json_body_is_refused_at_the_limit_not_buffered(
    proc: BackendProcess, proc_devbox: str, route: str
) -> None:
    total = 400 * MiB
    before = proc.reset_peak_rss()
    result = send_chunked(
        proc.port,
        route.format(id=proc_devbox),
        {**proc.headers, "Content-Type": "application/json"},
        b'{"file_path": "big.txt", "command": "true", "contents": "',
        b"a" * MiB,
        total,
        b'"}',
    )
    growth = proc.peak_rss() - before
    assert result.status == 413, result
    # Refused while it arrived: the sender was stopped long before its 400 MB.
    assert result.sent < 2 * MAX_JSON_BODY, result.sent
    # What the backend held is the limit, not the body (it held 839 MB when it buffered it all).
    assert growth < MAX_JSON_BODY + 32 * MiB, f"peak RSS grew by {growth / MiB:.0f} MiB"
    assert f"more than {MAX_JSON_BODY} bytes" in json.loads(result.body)["message"]


@pytest.mark.parametrize("path_first", [True, False], ids=["path-first", "file-first"])
def test_a_chunked_upload_streams_into_the_devbox_not_into_tmp(
    proc: BackendProcess, proc_devbox: str, tmp_path_factory: pytest.TempPathFactory, path_first: bool
) -> None:
    size = 64 * MiB  # 16 times the backend's TMPDIR
    target = f"uploads/{'a' if path_first else 'b'}.bin"
    assert proc.tmpdir is not None
    before = proc.reset_peak_rss()
    if path_first:
        head, tail = field("path", target) + file_head(), END
    else:
        head, tail = file_head(), b"\r\n" + field("path", target)[:-2] + END
    result = send_chunked(
        proc.port, f"/v1/devboxes/{proc_devbox}/upload_file", {**proc.headers, **MULTIPART}, head, b"u" * MiB, size, tail
    )
    growth = proc.peak_rss() - before
    assert result.status == 200, result
    home = _home(proc, proc_devbox)
    assert (home / target).stat().st_size == size
    with open(home / target, "rb") as fh:
        assert fh.read(16) == b"u" * 16
    assert growth < 16 * MiB, f"peak RSS grew by {growth / MiB:.0f} MiB"
    assert os.listdir(proc.tmpdir) == [] and used_bytes(proc.tmpdir) == 0
    state = proc.data_dir / "devboxes" / proc_devbox / files.PARTIAL_WRITES_DIR
    assert list(state.iterdir()) == []  # a spooled file part (file-first) is gone once written


def test_a_chunked_upload_past_the_limit_is_refused_while_it_arrives(
    backend: RunningBackend, devbox_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_UPLOAD_BYTES", MiB)  # the backend runs in this process
    port = int(backend.base_url.rsplit(":", 1)[1])
    headers = {"Authorization": f"Bearer {backend.api_key}", **MULTIPART}
    result = send_chunked(
        port, f"/v1/devboxes/{devbox_id}/upload_file", headers, field("path", "over.bin") + file_head(), b"o" * MiB, 64 * MiB, END
    )
    assert result.status == 413, result
    assert f"more than {MiB} bytes" in json.loads(result.body)["message"]
    assert result.sent < 16 * MiB, result.sent
    home = devbox_home(backend.config.data_dir, devbox_id)
    assert not (home / "over.bin").exists()
    assert [p.name for p in home.iterdir() if p.name.startswith(files.PARTIAL_PREFIX)] == []


def test_a_devbox_that_stops_during_an_upload_is_400_not_500(backend: RunningBackend, sdk) -> None:  # noqa: ANN001
    # The file part comes first, so the backend holds it until the path arrives; meanwhile the devbox stops.
    view = sdk.devboxes.create_and_await_running(name="stops-mid-upload")
    port = int(backend.base_url.rsplit(":", 1)[1])
    headers = {"Authorization": f"Bearer {backend.api_key}", **MULTIPART}
    sock = open_chunked(port, f"/v1/devboxes/{view.id}/upload_file", headers, file_head(), b"s" * 4096, 64 * 1024)
    sdk.devboxes.suspend(view.id)
    sdk.devboxes.await_suspended(view.id)
    result = finish_chunked(sock, b"\r\n" + field("path", "late.bin")[:-2] + END)
    assert result.status == 400, result
    # The backend may answer as soon as it sees the devbox stop (while still suspending), before
    # the rest of the body is read: either state is named.
    message = json.loads(result.body)["message"]
    assert re.search(r"is suspend(ing, not running|ed; resume it first)", message), message
    sdk.devboxes.shutdown(view.id)


@pytest.fixture(scope="module")
def devbox_id(sdk) -> Iterator[str]:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(name="bodies-in-process")
    yield view.id
    sdk.devboxes.shutdown(view.id)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"file_path": "n.txt", "contents": "x", "n": ' + b"7" * 5000 + b"}", "5000 digits"),
        (b'{"file_path": "n.txt", "contents": "x", "n": -' + b"7" * 5000 + b"}", "digits"),
        (b'{"file_path": "n.txt", "contents": "x", "n": 1e999}', "too large"),
        (b'{"file_path": "n.txt", "contents": "x", "n": 0.' + b"1" * 5000 + b"}", "characters"),
    ],
)
def test_huge_numbers_are_400_not_500(http: httpx.Client, devbox_id: str, body: bytes, fragment: str) -> None:
    r = http.post(
        f"/v1/devboxes/{devbox_id}/write_file_contents", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"]


def test_client_errors_leave_no_traceback_in_the_log(proc: BackendProcess, proc_devbox: str) -> None:
    dbx = f"/v1/devboxes/{proc_devbox}"
    # A client that goes away in the middle of its body.
    sock = open_chunked(proc.port, f"{dbx}/write_file_contents", {**proc.headers, "Content-Type": "application/json"}, b'{"contents": "', b"z" * 1024, 64 * 1024)
    sock.close()
    sock = open_chunked(proc.port, f"{dbx}/upload_file", {**proc.headers, **MULTIPART}, field("path", "gone.bin") + file_head(), b"z" * 1024, 256 * 1024)
    sock.close()
    bad_json = [
        b"{oops",
        b'{"n": ' + b"9" * 5000 + b"}",
        b'{"n": 1e999}',
        b'{"n": NaN}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"file_path": "x\\ud800", "contents": ""}',
        b'{"file_path": 5, "contents": [], "command": [], "name": 5, "metadata": "x"}',
        b'"just a string"',
        b"\xff\xfe",
    ]
    with proc.client() as client:
        for body in bad_json:
            for route in (f"{dbx}/write_file_contents", f"{dbx}/execute_async", "/v1/devboxes", "/v1/axons"):
                r = client.post(route, content=body, headers={"Content-Type": "application/json"})
                assert 400 <= r.status_code < 500, (route, body[:40], r.text)
        for headers, content in [
            ({"Content-Type": "multipart/form-data"}, b"no boundary"),
            (MULTIPART, b"--nope\r\ngarbage"),
            (MULTIPART, field("path", "x")),  # no closing boundary
            (MULTIPART, field("path", "x") + file_head() + b"cut short"),
            (MULTIPART, file_head() + b"data" + END),  # no path
            (MULTIPART, field("path", "x") + END),  # no file
            (MULTIPART, field("path", "/proc/nope/x") + file_head() + b"d" + END),
            ({"Content-Type": "text/plain"}, b"x"),
        ]:
            r = client.post(f"{dbx}/upload_file", content=content, headers=headers)
            assert 400 <= r.status_code < 500, (content[:60], r.text)
        for params in ({"limit": "1e999"}, {"limit": "x"}, {"limit": "9" * 5000}, {"status": "nope"}):
            assert client.get("/v1/devboxes", params=params).status_code == 400
        assert client.get("/v1/devboxes/dbx_missing").status_code == 404
        assert client.post("/v1/nowhere", json={}).status_code in (404, 405)
    for route in (f"{dbx}/write_file_contents", f"{dbx}/upload_file"):
        assert declared_status(proc.port, route, {**proc.headers, **MULTIPART}, 10**13) == 413
    for auth in ("bearer nope", "Basic x", "", "Bearer"):
        assert httpx.get(proc.base_url + "/v1/devboxes", headers={"Authorization": auth}).status_code == 401
    assert httpx.get(proc.base_url + "/v1/devboxes", headers={"Authorization": f"bearer {proc.api_key}"}).status_code == 200
    log = proc.log
    assert "Traceback" not in log, log[-3000:]
    assert "Exception in ASGI application" not in log


def _home(proc: BackendProcess, devbox_id: str) -> Path:
    return devbox_home(proc.data_dir, devbox_id)
