"""The embedded backend as `devbox-mcp serve` reaches it: one shared service per data directory.

No MCP process owns it, so devboxes and the servers started in them outlive the process that
created them (a client that starts a server process per call, a restarted desktop app). The
first `devbox-mcp` that needs it, at its first API call, starts `devbox-mcp local-api` detached
from itself (its own session, reparented away, so neither a process-group nor a process-tree
kill of the MCP server reaches it; output to `backend.log` in the data directory); every later
one finds it through `backend.json` and checks that it answers `/healthz`. The files, locks and
idle shutdown are described in `local/service.py`. Looking and starting happen under the data
directory's start lock, so processes that start at the same instant share one backend. A
backend that died (its lock is free) or stopped answering is replaced; its devboxes come back
suspended and resumable, as after any restart.

`BackendTransport` aims each request at the backend serving now, with its key; when a
connection is refused it looks again (starting a backend if none serves) and resends once, so a
backend that stopped when idle or crashed is replaced without the MCP client noticing.
"""

from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx

from ..local import service
from ..local.service import ServiceState
from ..runloop import RunloopClient
from ..runloop.pty import EMBEDDED_PTY_URL

log = logging.getLogger("devbox_mcp.commands")

# The RunloopClient's base URL; `BackendTransport` replaces it with the backend's on every request.
PLACEHOLDER_BASE_URL = "http://embedded-backend"
# How long a new backend may take to answer (a cold start on a loaded machine takes seconds).
START_TIMEOUT_SECONDS = 60.0
# How long a backend that holds the data directory may go without answering before it is replaced.
ANSWER_TIMEOUT_SECONDS = 20.0
# A failed start is reported at once for this long, instead of being retried by every request.
FAILURE_MEMORY_SECONDS = 10.0
LOG_ROTATE_BYTES = 1024 * 1024
# Not for the backend: it makes its own key, and must not see the MCP side's secrets.
_WITHHELD_ENV = ("RUNLOOP_API_KEY", "DEVBOX_LOCAL_API_KEY", "DEVBOX_MCP_TOKEN")


class BackendUnavailable(Exception):
    """No backend could be found or started; the message says why."""


def find_or_start(data_dir: Path, idle_seconds: float | None) -> tuple[ServiceState, bool]:
    """The backend serving `data_dir` (started if none does), and whether this call started it."""
    data_dir = Path(data_dir).absolute()
    with service.start_lock(data_dir, START_TIMEOUT_SECONDS + ANSWER_TIMEOUT_SECONDS + 30):
        deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            state = service.read_state(data_dir)
            if not service.is_served(data_dir):
                if state is not None:
                    service.remove_state(data_dir, state.pid)  # left by a backend that died
                return _start(data_dir, idle_seconds), True
            # Served. With no state file it is starting or stopping: wait for one or the other.
            if state is not None:
                answer = _health(state, deadline - time.monotonic())
                if answer == "ok":
                    return state, False
                if answer == "timeout":
                    break
            time.sleep(0.02)
        state = service.read_state(data_dir)
        log.warning(
            "the embedded backend%s has not answered for %g s: replacing it",
            f" (pid {state.pid})" if state else "",
            ANSWER_TIMEOUT_SECONDS,
        )
        service.stop(data_dir, timeout=5.0)
        return _start(data_dir, idle_seconds), True


def _health(state: ServiceState, timeout: float) -> str:
    """ "ok", "refused" (not listening: stopping or gone) or "timeout" (listening, not answering).

    Plain http.client: an httpx client would build a TLS context first, ten times the request."""
    url = urlsplit(state.base_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=max(timeout, 0.1))
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except TimeoutError:
        return "timeout"
    except (OSError, http.client.HTTPException):
        return "refused"
    finally:
        connection.close()
    return "ok" if status == 200 else "refused"


def _start(data_dir: Path, idle_seconds: float | None) -> ServiceState:
    """Start a backend for `data_dir` in the background and wait until it answers."""
    log_path = data_dir / service.LOG_FILE
    if log_path.exists() and log_path.stat().st_size > LOG_ROTATE_BYTES:
        log_path.replace(log_path.with_name(service.LOG_FILE + ".1"))
    argv = [
        sys.executable, "-m", "mcp_server", "local-api", "--spawned",
        "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir),
        "--idle-shutdown", f"{idle_seconds or 0:g}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in _WITHHELD_ENV}
    # The backend imports this very copy of the package, installed or run from a checkout.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(
        os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600), "ab"
    ) as log_file:
        # The shell puts the backend in the background and exits at once: the backend is
        # reparented away from this process, and `$!` tells us its pid.
        launcher = subprocess.run(
            ["/bin/sh", "-c", '"$@" >&2 & echo $!', "sh", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            cwd="/",
            env=env,
            timeout=10,
            check=True,
        )
    pid = int(launcher.stdout)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        state = service.read_state(data_dir)
        if state is not None and (state.pid == pid or not service.process_alive(pid)):
            # Ours, or (ours having lost a start race to a foreground local-api) the winner's.
            if _health(state, deadline - time.monotonic()) == "ok":
                return state
        elif not service.process_alive(pid):
            raise BackendUnavailable(f"the embedded backend exited at start: {_last_line(log_path)}")
        time.sleep(0.02)
    raise BackendUnavailable(
        f"the embedded backend did not answer within {START_TIMEOUT_SECONDS:g} s; see {log_path}"
    )


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else f"(nothing in {path})"


class SharedBackend:
    """This process's handle on the shared backend of one data directory (thread-safe)."""

    def __init__(self, data_dir: Path, idle_seconds: float | None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.idle_seconds = idle_seconds
        self._state: ServiceState | None = None
        self._failure: tuple[float, str] | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> ServiceState | None:
        return self._state

    def ensure(self, stale: ServiceState | None = None) -> ServiceState:
        """The backend to use; `stale` is one a connection to failed (look again unless already replaced)."""
        with self._lock:
            if self._state is not None and self._state is not stale:
                return self._state
            if self._failure is not None and time.monotonic() < self._failure[0]:
                raise BackendUnavailable(self._failure[1])
            try:
                state, started = find_or_start(self.data_dir, self.idle_seconds)
            except (BackendUnavailable, OSError, ValueError, subprocess.SubprocessError) as exc:
                reason = f"the embedded backend (data in {self.data_dir}) could not be started: {exc}"
                self._failure = (time.monotonic() + FAILURE_MEMORY_SECONDS, reason)
                raise BackendUnavailable(reason) from None
            self._failure = None
            log.info(
                "%s the embedded backend at %s (pid %d, data in %s)",
                "started" if started else "using",
                state.base_url,
                state.pid,
                self.data_dir,
            )
            self._state = state
            return state

    def client(self) -> RunloopClient:
        return RunloopClient(
            PLACEHOLDER_BASE_URL, wrap_transport=lambda inner: BackendTransport(self, inner), subsecond_waits=True,
            pty_url=EMBEDDED_PTY_URL,
        )


class BackendTransport(httpx.AsyncBaseTransport):
    """Sends each request to the shared backend serving now; a refused connection finds the next one."""

    def __init__(self, backend: SharedBackend, inner: httpx.AsyncBaseTransport) -> None:
        self._backend = backend
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        state = self._backend.current or await self._ensure(None)
        try:
            return await self._inner.handle_async_request(_aim(request, state))
        except httpx.ConnectError:
            fresh = await self._ensure(state)
            if (fresh.pid, fresh.base_url) == (state.pid, state.base_url):
                raise
            # Nothing reached the old backend, so sending the request again cannot act twice.
            return await self._inner.handle_async_request(_aim(request, fresh))

    async def _ensure(self, stale: ServiceState | None) -> ServiceState:
        try:
            return await anyio.to_thread.run_sync(self._backend.ensure, stale, abandon_on_cancel=True)
        except BackendUnavailable as exc:
            # A transport error: the client's retry policy and error mapping apply as to any other.
            raise httpx.ConnectError(str(exc)) from None

    async def aclose(self) -> None:
        await self._inner.aclose()


def _aim(request: httpx.Request, state: ServiceState) -> httpx.Request:
    target = httpx.URL(state.base_url)
    request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
    request.headers["Host"] = target.netloc.decode("ascii")
    # The backend's key (replacing a stale one when resent), unless the request carries credentials
    # of its own: a PTY tunnel's token.
    if "Authorization" not in request.headers or request.extensions.get(_BACKEND_KEY):
        request.headers["Authorization"] = f"Bearer {state.api_key}"
        request.extensions[_BACKEND_KEY] = True
    return request


_BACKEND_KEY = "devbox_mcp.backend_key"
