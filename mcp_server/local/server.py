"""Running the embedded backend: in the foreground (`devbox-mcp local-api`) or on a thread.

The thread form serves the MCP server's default mode (no Runloop key) and the tests: the
backend gets its own event loop, so its sandbox and disk work never stalls the MCP loop.
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

from .app import create_app
from .config import LocalConfig

log = logging.getLogger("devbox_mcp.local")


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


def _uvicorn_server(config: LocalConfig) -> uvicorn.Server:
    uconfig = uvicorn.Config(
        create_app(config),
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(uconfig)


def base_url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_forever(config: LocalConfig, host: str, port: int) -> None:
    """Serve until interrupted. Used by `devbox-mcp local-api`."""
    sock = bind_socket(host, port)
    server = _uvicorn_server(config)
    asyncio.run(server.serve(sockets=[sock]))


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
    server = _uvicorn_server(config)
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
