"""What both HTTP servers share (the embedded backend, and MCP over streamable HTTP): a listening
socket, uvicorn serving an app on it, and the URL that reaches it. Imports nothing of ours.

Listening sockets are made with `IPPROTO_TCP`. asyncio sets `TCP_NODELAY` on an accepted
connection only when the socket's `proto` says TCP (`asyncio.base_events._set_nodelay` checks
`sock.proto == IPPROTO_TCP`), and `socket.accept()` gives the connection the listening socket's
`proto`. `socket.create_server` makes it 0, and then Nagle's algorithm holds a small write (an
SSE event, a body sent after its headers) until the peer acknowledges the previous one, which a
delayed ACK can put off for ~40 ms.
"""

from __future__ import annotations

import socket

import uvicorn
from starlette.types import ASGIApp


def url_host(host: str) -> str:
    """`host` as it goes into a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def listen(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: any free one). An IPv6 address listens on
    IPv6 only, as `socket.create_server` does."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def base_url(sock: socket.socket) -> str:
    """`http://host:port` of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{url_host(host)}:{port}"


def uvicorn_config(
    app: ASGIApp, *, graceful_shutdown_seconds: float, keep_alive_seconds: int = 5, server_header: bool = True
) -> uvicorn.Config:
    """uvicorn for our servers: warnings only and no access log (request lines are not ours to
    keep, and a mistaken client may put a secret in a URL), the app's lifespan run."""
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=graceful_shutdown_seconds,
        timeout_keep_alive=keep_alive_seconds,
        server_header=server_header,
    )
