"""Running the embedded backend: as a registered process, or on a thread.

`serve_registered` is how `devbox-mcp local-api` (in the foreground, or started in the
background by `devbox-mcp serve`) runs it: it takes the data directory (`service.py`), serves,
and stops itself when idle if asked. The thread form is for tests and benchmarks: the backend
gets its own event loop, so its sandbox and disk work never stalls the caller's loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from ..net import base_url, listen, uvicorn_config
from .app import create_app
from .config import LocalConfig
from .devboxes import DevboxManager
from .service import ServiceState, hold_data_dir, remove_state, write_state

log = logging.getLogger("devbox_mcp.local")

GRACEFUL_SHUTDOWN_SECONDS = 1
# The longest the idle watch sleeps between looks at the devboxes.
IDLE_CHECK_SECONDS = 1.0


def generate_api_key() -> str:
    return "dbxlocal_" + secrets.token_urlsafe(24)


def _uvicorn_config(app: ASGIApp) -> uvicorn.Config:
    # Requests still open when asked to stop (streams, long-polls) get GRACEFUL_SHUTDOWN_SECONDS to end.
    return uvicorn_config(app, graceful_shutdown_seconds=GRACEFUL_SHUTDOWN_SECONDS, keep_alive_seconds=30)


@dataclass
class RunningBackend:
    base_url: str
    api_key: str = field(repr=False)  # a secret: never in a repr, a log line or a traceback
    config: LocalConfig
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


def start_in_thread(
    data_dir: Path,
    api_key: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    unsafe_no_sandbox: bool = False,
    tunnel_port: int = 0,
) -> RunningBackend:
    """Start the backend on a loopback port in a daemon thread and wait until it answers."""
    config = LocalConfig(
        data_dir=Path(data_dir), api_key=api_key or generate_api_key(), unsafe_no_sandbox=unsafe_no_sandbox,
        tunnel_host=host, tunnel_port=tunnel_port,
    )  # fmt: skip
    sock = listen(host, port)
    server = uvicorn.Server(_uvicorn_config(create_app(config)))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="devbox-mcp-local-api", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(
                f"the embedded backend failed to start: {failure[0] if failure else 'unknown error'}"
            )
        threading.Event().wait(0.005)
    return RunningBackend(base_url(sock), config.api_key, config, server, thread)


# -- a registered backend process ---------------------------------------------------------

class Activity:
    """ASGI middleware: counts requests in progress and remembers when the last one ended."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # an attached terminal counts as a request
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.touch()


async def watch_idle(
    activity: Activity, busy: Callable[[], bool], seconds: float, on_idle: Callable[[], None]
) -> None:
    """Call `on_idle` once there has been no request and nothing `busy` for `seconds` in a row."""
    while True:
        if activity.in_flight or busy():
            activity.touch()
            await asyncio.sleep(min(seconds, IDLE_CHECK_SECONDS))
            continue
        remaining = activity.last + seconds - time.monotonic()
        if remaining <= 0:
            on_idle()
            return
        await asyncio.sleep(min(remaining, IDLE_CHECK_SECONDS))


class _Server(uvicorn.Server):
    """uvicorn, plus: the state file goes when stopping begins, and the idle watch starts once serving."""

    def __init__(self, config: uvicorn.Config, data_dir: Path, start_idle_watch: Callable[[], None]) -> None:
        super().__init__(config)
        self._data_dir = data_dir
        self._start_idle_watch = start_idle_watch

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._start_idle_watch()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        remove_state(self._data_dir, os.getpid())
        super().handle_exit(sig, frame)


def serve_registered(
    config: LocalConfig,
    host: str,
    port: int,
    *,
    idle_shutdown_seconds: float | None = None,
    announce: Callable[[ServiceState, str], None] | None = None,
) -> None:
    """Serve `config.data_dir` until stopped (SIGINT/SIGTERM) or idle; registered for discovery meanwhile.
    `announce` gets the state and where the tunnel proxy serves.

    Raises `DataDirBusy` if another backend serves the data directory, OSError if a port is taken.
    """
    data_dir = Path(config.data_dir)
    lock_fd = hold_data_dir(data_dir)
    try:
        sock = listen(host, port)
        state = ServiceState(
            pid=os.getpid(),
            base_url=_connectable(base_url(sock)),
            api_key=config.api_key,
            started_at=time.time(),
            idle_shutdown_seconds=idle_shutdown_seconds,
        )
        app = create_app(config)
        devboxes: DevboxManager = app.state.devboxes
        activity = Activity(app)
        devboxes.on_stop.append(_touch_on_stop(activity))
        tasks: set[asyncio.Task[None]] = set()
        tunnels = app.state.tunnels

        def busy() -> bool:
            """A devbox with a sandbox, or a connection through a tunnel, keeps the backend up."""
            return devboxes.has_live_devbox() or tunnels.busy()

        def start_idle_watch() -> None:
            if idle_shutdown_seconds:
                activity.touch()
                task = asyncio.ensure_future(
                    watch_idle(activity, busy, idle_shutdown_seconds, stop_idle)
                )
                tasks.add(task)

        def stop_idle() -> None:
            log.info("idle for %g s with no running devbox: stopping", idle_shutdown_seconds)
            remove_state(data_dir, state.pid)
            server.should_exit = True

        server = _Server(_uvicorn_config(activity), data_dir, start_idle_watch)
        write_state(data_dir, state)
        if announce is not None:
            announce(state, app.state.tunnels.origin)
        try:
            asyncio.run(server.serve(sockets=[sock]))
        finally:
            remove_state(data_dir, state.pid)
    finally:
        os.close(lock_fd)


def _touch_on_stop(activity: Activity) -> Callable[[str], Any]:
    async def touch(devbox_id: str) -> None:
        activity.touch()

    return touch


def _connectable(base_url: str) -> str:
    """A URL a local client can connect to: a wildcard bind address becomes loopback."""
    return base_url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")
