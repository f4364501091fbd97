"""The embedded backend as its own process, for tests that measure it or kill it.

Its stderr (the backend's log) goes to a file the test reads, its TMPDIR is a directory the
test chooses, and its peak resident set is read from the kernel (VmHWM, reset on demand), so
memory figures are those of the backend alone, not of the test process.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at `path` for the block (a disk that fills up, or a TMPDIR that must stay empty)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def devbox_home(data_dir: Path, devbox_id: str) -> Path:
    """A devbox's home as the host sees it: on its own disk when it has one (mounted while it runs,
    see local/disk.py), else in its state directory."""
    state = data_dir / "devboxes" / devbox_id
    return state / "disk" / "home" if (state / "disk.img").exists() else state / "home"


def used_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class BackendProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    port: int
    api_key: str = field(repr=False)
    log_path: Path
    data_dir: Path
    tmpdir: Path | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def reset_peak_rss(self) -> int:
        """Reset the kernel's high-water mark of the backend's RSS to its current RSS; returns that RSS."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return _status_bytes(self.process.pid, "VmRSS")

    def peak_rss(self) -> int:
        return _status_bytes(self.process.pid, "VmHWM")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as when the machine or an OOM killer ends it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def _status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{key} missing from /proc/{pid}/status")


@contextlib.contextmanager
def backend_process(
    data_dir: Path, log_path: Path, *, tmpdir: Path | None = None, api_key: str | None = None,
    python: str = sys.executable, prefix: list[str] | None = None, env: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> Iterator[BackendProcess]:
    """`devbox-mcp local-api` on a free loopback port; killed (SIGKILL) when the block ends.

    `prefix` runs it through another command (e.g. setpriv, to run it as another user)."""
    port = free_port()
    api_key = api_key or "test-key-" + uuid.uuid4().hex
    env = {**os.environ, **(env or {}), "DEVBOX_LOCAL_API_KEY": api_key}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*(prefix or []), python, "-m", "mcp_server", "local-api", "--port", str(port), "--data-dir", str(data_dir), *(args or [])],
            env=env,
            stdout=log,
            stderr=log,
        )
    backend = BackendProcess(proc, f"http://127.0.0.1:{port}", port, api_key, log_path, data_dir, tmpdir)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the backend exited at start-up:\n{backend.log}"
            assert time.monotonic() < deadline, "the backend did not start listening within 60 s"
            try:
                if httpx.get(backend.base_url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                select.select([], [], [], 0.05)
        yield backend
    finally:
        backend.kill()


@dataclass
class ChunkedResult:
    status: int | None  # None: the server closed without answering
    body: bytes
    sent: int  # body bytes the client sent before the answer came


def send_chunked(
    port: int,
    path: str,
    headers: dict[str, str],
    head: bytes,
    filler: bytes,
    total: int,
    tail: bytes = b"",
    *,
    stall_after: int | None = None,
) -> ChunkedResult:
    """POST `head + filler * n + tail` (about `total` bytes) with chunked encoding, from a raw socket.

    Sending stops as soon as the server answers (or closes), so a server that refuses early
    costs the test only what it read. With `stall_after`, sending stops after that many bytes
    and the connection stays open (returned status None) until the caller closes it: see
    `open_chunked`.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        return _send(sock, path, headers, head, filler, total, tail, stall_after)
    finally:
        sock.close()


def declared_status(port: int, path: str, headers: dict[str, str], content_length: int) -> int:
    """The status a POST gets for its headers alone, declaring a body it never sends."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {content_length}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = sock.recv(65536)
    return int(answer.split(b" ", 2)[1])


def open_chunked(
    port: int, path: str, headers: dict[str, str], head: bytes, filler: bytes, stall_after: int
) -> socket.socket:
    """Start a chunked POST, send `stall_after` bytes and leave the request open (an upload in flight)."""
    sock = socket.create_connection(("127.0.0.1", port))
    _send(sock, path, headers, head, filler, stall_after + 1, b"", stall_after)
    return sock


def finish_chunked(sock: socket.socket, tail: bytes) -> ChunkedResult:
    """Send the last bytes of a request started with `open_chunked` and read the answer."""
    with sock:
        sock.sendall(f"{len(tail):x}\r\n".encode() + tail + b"\r\n0\r\n\r\n")
        sock.settimeout(60)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return ChunkedResult(int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2], 0)


def _send(
    sock: socket.socket,
    path: str,
    headers: dict[str, str],
    head: bytes,
    filler: bytes,
    total: int,
    tail: bytes,
    stall_after: int | None,
) -> ChunkedResult:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def frame(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    pieces = [frame(head)]
    sent = len(head)
    pending = b"".join(pieces)
    finished = False
    sock.setblocking(False)
    try:
        while True:
            readable, writable, _ = select.select([sock], [sock] if pending or not finished else [], [], 60)
            if readable:
                break
            if not readable and not writable:
                raise AssertionError("the server neither read nor answered for 60 s")
            if not pending:
                if stall_after is not None and sent >= stall_after:
                    return ChunkedResult(None, b"", sent)
                if sent < total:
                    pending = frame(filler)
                    sent += len(filler)
                else:
                    pending = (frame(tail) if tail else b"") + b"0\r\n\r\n"
                    sent += len(tail)
                    finished = True
            try:
                pending = pending[sock.send(pending) :]
            except (BrokenPipeError, ConnectionResetError):
                break
            except BlockingIOError:
                pass
    finally:
        sock.setblocking(True)
    sock.settimeout(60)
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    if not answer:
        return ChunkedResult(None, b"", sent)
    status = int(answer.split(b" ", 2)[1])
    return ChunkedResult(status, answer.partition(b"\r\n\r\n")[2], sent)
