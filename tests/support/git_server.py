"""A git server on loopback for code mount tests: git's smart HTTP (`git http-backend`) behind
a tiny threaded HTTP server that checks a token the way GitHub does (HTTP Basic, the token as the
password), and remembers which requests came with which credentials.

    with GitServer(tmp_path) as server:
        server.repo("acme", "tool", {"README": "hi"}, branches={"v2": {"README": "two"}}, token="s3cret")
        monkeypatch.setenv("DEVBOX_GIT_BASE_URL", server.url)
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": "/nonexistent",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


class GitServer:
    def __init__(self, root: Path) -> None:
        self.root = root / "git-repos"
        self.root.mkdir(parents=True)
        self.tokens: dict[str, str] = {}  # "owner/name.git" -> the token it needs
        self.requests: list[dict[str, Any]] = []  # {path, authorized}
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def repo(
        self, owner: str, name: str, files: dict[str, str], *, branches: dict[str, dict[str, str]] | None = None,
        token: str | None = None,
    ) -> Path:
        """A bare repository `owner/name.git` whose default branch `main` holds `files` (and each
        other branch its own files, on top)."""
        work = self.root.parent / f"work-{owner}-{name}"
        _git("init", "--quiet", "--initial-branch=main", str(work))
        for path, text in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
        _git("add", "-A", cwd=work)
        _git("commit", "--quiet", "-m", "first", cwd=work)
        for branch, extra in (branches or {}).items():
            _git("checkout", "--quiet", "-b", branch, "main", cwd=work)
            for path, text in extra.items():
                (work / path).write_text(text)
            _git("add", "-A", cwd=work)
            _git("commit", "--quiet", "-m", branch, cwd=work)
        _git("checkout", "--quiet", "main", cwd=work)
        bare = self.root / owner / f"{name}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "--quiet", "--bare", str(work), str(bare))
        if token:
            self.tokens[f"{owner}/{name}.git"] = token
        return bare

    def __enter__(self) -> GitServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._serve()

            def do_POST(self) -> None:  # noqa: N802
                self._serve()

            def _serve(self) -> None:
                path, _, query = self.path.partition("?")
                repo = "/".join(path.lstrip("/").split("/")[:2])
                needed = server.tokens.get(repo)
                presented = self.headers.get("Authorization", "")
                authorized = False
                if presented.startswith("Basic "):
                    _, _, password = base64.b64decode(presented[6:]).decode().partition(":")
                    authorized = password == needed
                server.requests.append({"path": path, "authorized": authorized, "credentials": bool(presented)})
                if needed and not authorized:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    **os.environ, **GIT_ENV, "GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "REMOTE_ADDR": "127.0.0.1",
                }  # fmt: skip
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="git-server", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
