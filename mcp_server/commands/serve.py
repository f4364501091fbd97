"""`devbox-mcp serve`: run the MCP server on a transport, against Runloop or the embedded backend.

With `RUNLOOP_API_KEY` set, the server talks to `RUNLOOP_BASE_URL` (default Runloop's cloud).
Without it, it uses the embedded backend shared by every `devbox-mcp` on the same data
directory, starting it on first use (`embedded.py`). The mode is logged to stderr (never the
key): on stdio, stdout carries protocol messages and nothing else.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer

from ..runloop import ClientConfig, RunloopClient
from ..server import build_server
from ..settings import Settings
from ..transport.stdio import restore_blocking, run_stdio

log = logging.getLogger("devbox_mcp.commands")


def api_clients(data_dir: Path) -> Callable[[], RunloopClient]:
    """What makes this run's API clients: Runloop's with a key, else the shared embedded backend's.

    Raises ValueError (a bad environment) before anything starts.
    """
    config = ClientConfig.from_env()
    config.check()
    if config.api_key:
        log.info("using the Runloop API at %s", config.base_url)
        return lambda: RunloopClient.from_config(config)
    from ..local.config import check_env
    from ..local.service import idle_seconds_from_env
    from .embedded import SharedBackend

    check_env()  # the backend's own settings: refused here, not in a background process's log
    backend = SharedBackend(data_dir, idle_seconds_from_env())
    log.info("no RUNLOOP_API_KEY: using the shared embedded backend (data in %s), started on first use",
             data_dir)  # fmt: skip
    return backend.client


def server_factory(
    make_client: Callable[[], RunloopClient], settings: Settings | None = None
) -> Callable[[], MCPServer]:
    """A fresh server per call (HTTP builds one per app); each makes its client in its own loop."""
    settings = settings or Settings.from_env()

    def factory() -> MCPServer:
        return build_server(make_client, settings)

    return factory


def main(
    transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765, data_dir: Path | None = None, **http_options
) -> int:
    from .cli import default_data_dir

    # One line per HTTP request would bury the messages that matter.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        make_client = api_clients(data_dir or default_data_dir())
    except ValueError as exc:  # InvalidArgument is a ValueError too
        log.error("%s", exc)
        return 2
    factory = server_factory(make_client, settings)
    if transport == "stdio":
        exit_on_signals()
        anyio.run(run_stdio, factory())
        return 0
    if transport == "http":
        return serve_http(factory, host, port, **http_options)
    log.error("unknown transport %r (use stdio or http)", transport)
    return 2


def exit_on_signals() -> None:
    """SIGINT and SIGTERM end a stdio server at once.

    On a terminal or a file its stdin reader is a thread blocked in read(), which no cancellation
    reaches, so a graceful stop would wait until the client closes stdin. Nothing here needs one: devboxes live in the
    shared backend (or Runloop's cloud), and an interrupted call's command runs on in its devbox.
    """

    def stop(signum: int, frame: object) -> None:
        os.write(2, f"devbox-mcp: stopping on {signal.Signals(signum).name}\n".encode())
        restore_blocking()
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def serve_http(factory: Callable[[], MCPServer], host: str, port: int, **options) -> int:
    """Streamable HTTP (`http_app.run_http`); options: stateless, no_auth, allowed_hosts, allowed_origins."""
    from ..transport.http_app import run_http

    return run_http(factory, host=host, port=port, **options)
