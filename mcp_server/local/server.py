"""Running the embedded backend on a thread, and the pieces every way of running it shares.

`devbox-mcp local-api` and the shared background backend run it as a process (`service.py`).
The thread form is for tests and benchmarks: the backend gets its own event loop, so its
sandbox and disk work never stalls the caller's loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from .app import create_app
from .config import LocalConfig

log = logging.getLogger("devbox_mcp.local")

GRACEFUL_SHUTDOWN_SECONDS = 1


def generate_api_key() -> str:
    return "dbxlocal_" + secrets.token_urlsafe(24)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock


def uvicorn_config(app: ASGIApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # Requests still open when asked to stop (streams, long-polls) get this long to end.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=30,
    )


def base_url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
) -> RunningBackend:
    """Start the backend on a loopback port in a daemon thread and wait until it answers."""
    config = LocalConfig(
        data_dir=Path(data_dir), api_key=api_key or generate_api_key(), unsafe_no_sandbox=unsafe_no_sandbox
    )
    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn_config(create_app(config)))
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
    return RunningBackend(base_url_of(sock), config.api_key, config, server, thread)
