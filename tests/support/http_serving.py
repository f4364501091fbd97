"""Helpers for the HTTP tests: a small MCPServer, serving any ASGI app on loopback, HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import MCPServer
from mcp.server.mcpserver import Context

from mcp_server.local import service
from mcp_server.net import base_url, listen
from mcp_server.transport.http_app import MCP_PATH, HttpOptions, build_http_app, uvicorn_server


@dataclass
class Probe:
    """What the test tools saw, shared with the test thread."""

    started: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)


def small_server(probe: Probe | None = None) -> MCPServer:
    probe = probe or Probe()
    server = MCPServer("http-test", version="0.0.1")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    @server.tool()
    async def steps(count: int, ctx: Context) -> str:
        """Report `count` progress steps, then finish."""
        for i in range(1, count + 1):
            await ctx.report_progress(i, count, f"step {i}")
        return f"did {count}"

    @server.tool()
    async def hang(ctx: Context) -> str:
        """Wait until cancelled."""
        probe.started.set()
        try:
            await anyio.sleep_forever()
        finally:
            probe.cancelled.set()
        return "unreachable"

    @server.tool()
    async def drop_stream(label: str, ctx: Context) -> str:
        """Close this call's SSE stream mid-call (the client must resume), then finish."""
        await ctx.report_progress(1, 3, f"{label} before")
        await ctx.close_sse_stream()
        # Sent while the client is away (it waits the retry interval): only a replay delivers it.
        await ctx.report_progress(2, 3, f"{label} during")
        await anyio.sleep(0.5)
        await ctx.report_progress(3, 3, f"{label} after")
        return "resumed"

    return server


@contextlib.contextmanager
def serve(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a loopback port in a thread; yields the `/mcp` URL."""
    sock = listen(host, 0)
    server = uvicorn_server(app)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    ready = threading.Event()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("test HTTP server failed to start")
        ready.wait(0.005)
    try:
        yield base_url(sock) + MCP_PATH
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serve_small(
    options: HttpOptions, probe: Probe | None = None, factory: Callable[[], MCPServer] | None = None
):
    factory = factory or (lambda: small_server(probe))
    with serve(build_http_app(factory, options), options.host) as url:
        yield url


def http_client(url: str, token: str | None, mode: str = "auto", **kwargs) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(
        headers=headers, timeout=httpx2.Timeout(30, read=60), **kwargs.pop("http_kwargs", {})
    )
    return Client(streamable_http_client(url, http_client=http), mode=mode, **kwargs)


@dataclass
class ServeProcess:
    """`devbox-mcp serve --transport http` as a subprocess; stderr goes to a file the test can read."""

    url: str
    process: subprocess.Popen
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def devbox_mcp_exe() -> str:
    return str(Path(sys.executable).parent / "devbox-mcp")


@contextlib.contextmanager
def serve_process(
    workdir: Path, *args: str, env: dict[str, str] | None = None, deadline: float = 30.0
) -> Iterator[ServeProcess]:
    """Start the real server on a free loopback port and wait for the line that names its endpoint."""
    stderr_path = workdir / "serve.stderr"
    full_env = {k: v for k, v in os.environ.items() if k not in ("RUNLOOP_API_KEY", "DEVBOX_MCP_TOKEN")}
    full_env.update(env or {})
    with open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [
                devbox_mcp_exe(),
                "serve",
                "--transport",
                "http",
                "--port",
                "0",
                "--data-dir",
                str(workdir / "data"),
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=full_env,
        )
    try:
        end = time.monotonic() + deadline
        url = None
        while url is None:
            match = re.search(r"streamable HTTP at (http://\S+/mcp)", stderr_path.read_text(errors="replace"))
            if match:
                url = match.group(1)
            elif process.poll() is not None or time.monotonic() > end:
                raise RuntimeError(
                    f"devbox-mcp serve did not start:\n{stderr_path.read_text(errors='replace')}"
                )
            else:
                threading.Event().wait(0.05)
        yield ServeProcess(url, process, stderr_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        service.stop(workdir / "data")  # the shared backend, if the server started one
