"""`devbox-mcp serve`: run the MCP server on a transport, against Runloop or the embedded backend.

With `RUNLOOP_API_KEY` set, the server talks to `RUNLOOP_BASE_URL` (default Runloop's cloud).
Without it, the embedded backend starts in-process on a loopback port with a random key, and
the client uses that. The mode is logged to stderr (never the key): on stdio, stdout carries
protocol messages and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mcp.server.mcpserver import MCPServer

from .runloop import ClientConfig, RunloopClient
from .server import build_server
from .settings import Settings

log = logging.getLogger("devbox_mcp")


@contextmanager
def api_config(data_dir: Path) -> Iterator[ClientConfig]:
    """The API to use for this run; starts (and at the end stops) the embedded backend if needed."""
    config = ClientConfig.from_env()
    if config.api_key:
        log.info("using the Runloop API at %s", config.base_url)
        yield config
        return
    from .local.server import start_in_thread

    backend = start_in_thread(Path(data_dir))
    log.info("no RUNLOOP_API_KEY: using the embedded backend at %s (data in %s)", backend.base_url, data_dir)
    try:
        yield ClientConfig(base_url=backend.base_url, api_key=backend.api_key)
    finally:
        backend.stop()


def server_factory(config: ClientConfig, settings: Settings | None = None) -> Callable[[], MCPServer]:
    """A fresh server per call (HTTP builds one per app); each makes its client in its own loop."""
    settings = settings or Settings.from_env()

    def factory() -> MCPServer:
        return build_server(lambda: RunloopClient.from_config(config), settings)

    return factory


def main(
    transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765, data_dir: Path | None = None, **http_options
) -> int:
    from .cli import default_data_dir

    # One line per HTTP request would bury the messages that matter.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        ClientConfig.from_env().check()
    except ValueError as exc:  # InvalidArgument is a ValueError too
        log.error("%s", exc)
        return 2
    with api_config(data_dir or default_data_dir()) as config:
        factory = server_factory(config, settings)
        if transport == "stdio":
            try:
                factory().run("stdio")
            except KeyboardInterrupt:
                return 130
            return 0
        if transport == "http":
            return serve_http(factory, host, port, **http_options)
        log.error("unknown transport %r (use stdio or http)", transport)
        return 2


def serve_http(factory: Callable[[], MCPServer], host: str, port: int, **options) -> int:
    """Streamable HTTP (`http_app.run_http`); options: stateless, no_auth, allowed_hosts, allowed_origins."""
    from .http_app import run_http

    return run_http(factory, host=host, port=port, **options)
