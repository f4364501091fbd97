"""Streamable HTTP for any `MCPServer`: `/mcp` behind Host/Origin checks, a bearer token and a body limit.

The SDK's transport serves both protocol eras on one endpoint, with progress and cancellation
as over stdio, as long as it streams SSE (`json_response=False`: the JSON mode drops progress).
This module adds what a server reachable over a network needs around it: authentication by
default, DNS-rebinding protection that answers before anything else, resumable handshake-era
streams through a bounded event store, a stateless mode for replicas, and `/healthz`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import uvicorn
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..net import base_url, listen, uvicorn_config
from . import http_guard as guard
from .event_store import BoundedEventStore, SessionScope, session_scope

MCP_PATH = "/mcp"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
TOKEN_ENV = "DEVBOX_MCP_TOKEN"
# After a stop signal, how long requests in progress get before the process exits.
STOP_GRACE_SECONDS = 0.5


class HttpConfigError(Exception):
    """A refused combination of options (e.g. no auth on a public address); the message says why."""


@dataclass(frozen=True)
class HttpOptions:
    # Required on purpose: None turns authentication off (loopback only). repr=False: options
    # printed in a log or a traceback must not show the token.
    token: str | None = field(repr=False)
    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    stateless: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_interval_ms: int = 1000
    max_events: int = 10_000
    max_event_bytes: int = 64 * 1024 * 1024


def check_no_auth(no_auth: bool, host: str) -> None:
    if no_auth and not guard.is_loopback(host):
        raise HttpConfigError(
            f"refusing --no-auth on {host}: without a token anyone who can reach that address can run "
            "commands in your devboxes; bind to 127.0.0.1 or drop --no-auth"
        )


def resolve_token(no_auth: bool, host: str, environ: dict[str, str] | None = None) -> tuple[str | None, bool]:
    """The bearer token to require and whether it was generated here (and so must be shown once)."""
    environ = os.environ if environ is None else environ
    check_no_auth(no_auth, host)
    if no_auth:
        return None, False
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token, False
    return secrets.token_urlsafe(32), True


def build_http_app(factory: Callable[[], MCPServer], options: HttpOptions) -> ASGIApp:
    check_no_auth(options.token is None, options.host)
    server = factory()
    store = None if options.stateless else BoundedEventStore(options.max_events, options.max_event_bytes)
    mcp_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=False,
        stateless_http=options.stateless,
        event_store=store,
        retry_interval=options.retry_interval_ms if store is not None else None,
        max_request_body_size=options.max_body_bytes,
        # Host/Origin are checked in front (below) so they answer before auth; the SDK's
        # own check would only repeat ours.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=options.host,
    )
    policy = guard.OriginPolicy.for_bind(options.host, options.allowed_hosts, options.allowed_origins)
    metadata_paths = {guard.RESOURCE_METADATA_PATH, guard.RESOURCE_METADATA_PATH + MCP_PATH}

    async def protected(scope: Scope, receive: Receive, send: Send) -> None:
        """Everything behind the Host/Origin check (and, for browsers, behind CORS)."""
        if scope["path"] in metadata_paths:
            await guard.send_json(send, 200, guard.resource_metadata(scope, MCP_PATH))
            return
        if options.token is not None and await guard.refuse_unauthenticated(
            scope, send, options.token, MCP_PATH
        ):
            return
        if scope["method"] == "POST":
            try:
                body = await guard.read_limited_body(scope, receive, options.max_body_bytes)
            except guard.BodyTooLarge as exc:
                await guard.send_rpc_error(
                    send,
                    413,
                    f"request body is {exc.args[0]} bytes; this server accepts at most {options.max_body_bytes} "
                    "bytes per request: send large files in several smaller parts",
                )
                return
            receive = guard.replay_body(body, receive)
        await _with_session_scope(mcp_app, scope, receive, send)

    behind_origin_check = (
        _with_cors(protected, options.allowed_origins) if options.allowed_origins else protected
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await mcp_app(scope, receive, send)  # lifespan: starts the SDK's session manager
            return
        # RFC 9110: surrounding whitespace is not part of a field value. h11 strips it, httptools
        # (uvicorn's faster parser) does not, and the SDK compares Mcp-Method/Mcp-Name verbatim.
        scope["headers"] = [(key, value.strip(b" \t")) for key, value in scope["headers"]]
        if scope["path"] == "/healthz":
            await guard.send_json(send, 200, {"status": "ok"})
            return
        if await guard.refuse_origin(scope, send, policy):
            return
        await behind_origin_check(scope, receive, send)

    return app


def _with_cors(app: ASGIApp, origins: Sequence[str]) -> ASGIApp:
    """Let web pages at `--allowed-origin` origins call `/mcp`: answer preflights (which carry no
    token, so they must come before auth) and expose the headers an MCP client reads."""
    exact = [o.rstrip("/") for o in origins if not o.endswith(":*")]
    with_any_port = [re.escape(o[:-2]) + r":\d+" for o in origins if o.endswith(":*")]
    return CORSMiddleware(
        app,
        allow_origins=["*"] if "*" in exact else exact,
        allow_origin_regex="|".join(with_any_port) or None,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Accept",
            "Mcp-Session-Id",
            "Mcp-Protocol-Version",
            "Mcp-Method",
            "Mcp-Name",
            "Last-Event-ID",
        ],
        expose_headers=["Mcp-Session-Id", "WWW-Authenticate"],
        max_age=600,
    )


async def _with_session_scope(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run the request with its MCP session recorded for the event store (see `event_store`)."""
    current = SessionScope(guard.header(scope, b"mcp-session-id"))

    async def send_and_learn_session(message: Message) -> None:
        if message["type"] == "http.response.start" and current.session_id is None:
            for key, value in message.get("headers", []):
                if key.lower() == b"mcp-session-id":
                    current.session_id = value.decode("latin-1")
        await send(message)

    reset = session_scope.set(current)
    try:
        await app(scope, receive, send_and_learn_session)
    finally:
        session_scope.reset(reset)


def uvicorn_server(app: ASGIApp, server_class: type[uvicorn.Server] = uvicorn.Server) -> uvicorn.Server:
    # No `server: uvicorn` header: it tells a prober what to try.
    return server_class(uvicorn_config(app, graceful_shutdown_seconds=3, server_header=False))


class StoppingServer(uvicorn.Server):
    """uvicorn, except that SIGINT/SIGTERM end the process within `STOP_GRACE_SECONDS`.

    Requests that finish by then are answered. Tool calls still running are abandoned, not
    cancelled (uvicorn would cancel them only after its own 3 s), so their commands go on in
    their devboxes, as when a stdio server is stopped; `stream_logs` follows them from anywhere.
    """

    def handle_exit(self, sig: int, frame: object) -> None:
        if not self.should_exit:
            deadline = threading.Timer(STOP_GRACE_SECONDS, os._exit, args=(128 + sig,))
            deadline.daemon = True
            deadline.start()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def run_http(
    factory: Callable[[], MCPServer],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    no_auth: bool = False,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    stateless: bool = False,
) -> int:
    """Serve until interrupted. Prints the endpoint and, when generated here, the token (once, to stderr)."""
    try:
        token, generated = resolve_token(no_auth, host)
    except HttpConfigError as exc:
        print(f"devbox-mcp: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("mcp").setLevel(logging.WARNING)  # per-session chatter
    options = HttpOptions(
        host=host,
        token=token,
        allowed_hosts=tuple(allowed_hosts),
        allowed_origins=tuple(allowed_origins),
        stateless=stateless,
    )
    try:
        sock = listen(host, port)
    except OSError as exc:
        print(
            f"devbox-mcp: cannot listen on {host}:{port}: {exc.strerror}; pick another --port",
            file=sys.stderr,
        )
        return 2
    server = uvicorn_server(build_http_app(factory, options), StoppingServer)
    lines = [
        f"devbox-mcp: MCP over streamable HTTP at {base_url(sock)}{MCP_PATH}"
        + (" (stateless)" if stateless else "")
    ]
    if token is None:
        lines.append("devbox-mcp: authentication is OFF (--no-auth); only this machine can connect")
    elif generated:
        lines.append(f"devbox-mcp: bearer token (set {TOKEN_ENV} to choose it): {token}")
    else:
        lines.append(f"devbox-mcp: bearer token from {TOKEN_ENV}")
    if host in ("0.0.0.0", "::") and not allowed_hosts:
        lines.append("devbox-mcp: only loopback Host names are accepted; add --allowed-host NAME for yours")
    print("\n".join(lines), file=sys.stderr, flush=True)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    return 0
