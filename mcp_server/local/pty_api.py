"""The PTY API: tunnels, PTY sessions and their WebSocket data plane (sessions: `pty.py`).

Wire contract (stable; the MCP terminal tools build on it):

1. `POST /v1/devboxes/{id}/create_pty_tunnel` (API key) -> PtyTunnelView `{tunnel_key, auth_token}`,
   fresh on every call; 400 when the devbox is not running, 404 when there is no such devbox.
   A tunnel lives until its devbox stops (suspend, shutdown, backend exit).
2. Runloop serves the PTY paths on the tunnel's host; here they are on the API under the prefix
   `/tunnel/{tunnel_key}`, and every request to them (the WebSocket upgrade included) carries
   `Authorization: Bearer {auth_token}` instead of the API key:
   - `GET  /tunnel/{tunnel_key}/pty/{session_name}?cols=&rows=` -> PtyConnectView: creates the
     session (an interactive `bash -l`, TERM=xterm-256color) or reconnects to it (`created`
     false; cols/rows, when given, then resize it). cols and rows go together, 1..1000 each
     (default 80x24). 400 for a bad name or size or a devbox not running, 503 when no shell starts.
   - `POST /tunnel/{tunnel_key}/pty/{session_name}/control` with PtyControlParameters ->
     PtyControlResultView `{session_name, status}`: `resize` (cols, rows; status "running"),
     `signal` (POSIX name such as SIGINT, to the foreground process group; "running"), `close`
     (SIGHUP; "closed"). 400 for a bad name, size or signal or no foreground group; 404 for no session.
   - WebSocket `connect_url` = `/tunnel/{tunnel_key}/pty/{session_name}/connect` (server-relative:
     ws:// or wss:// on the API's origin). Binary frames both ways carry the raw terminal bytes
     (text frames from the client are taken as UTF-8 input). On attach the client first gets the
     output kept while no client was attached. permessage-deflate is accepted when the client
     offers it; a client after the lowest latency or memory declines it (`compression=None`).
   Handshake refusals are HTTP answers: 401 wrong or missing token, 404 unknown tunnel key.
   Close codes once accepted:
   - 4404: no such session (open it with the GET first; it may have ended);
   - 4409: another client is attached to the session (single attach; sent right after the upgrade);
   - 1000: the session ended; the reason says how (shell exited, closed, expired, devbox stopped).
   When the client leaves, the session lives on for `idle_ttl_seconds` (PtyConnectView).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .errors import ApiError
from .http import parse_body, query_int
from .pty import MAX_DIMENSION, PtyManager, PtySession, check_name, check_size, connect_view

log = logging.getLogger("devbox_mcp.local")

TUNNEL_PREFIX = "/tunnel"
CLOSE_NO_SESSION = 4404
CLOSE_ATTACHED = 4409
CLOSE_ENDED = 1000
_REASON_BYTES = 120  # a close reason is at most 123 bytes


def connect_url(tunnel_key: str, session_name: str) -> str:
    return f"{TUNNEL_PREFIX}/{tunnel_key}/pty/{session_name}/connect"


class ControlBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action: Literal["resize", "signal", "close"] | None = None
    cols: int | None = None
    rows: int | None = None
    signal: str | None = None


def _ptys(request: Request | WebSocket) -> PtyManager:
    return request.app.state.ptys


def _devbox_of(request: Request | WebSocket) -> str:
    return _ptys(request).tunnels.devbox_for(
        request.path_params["tunnel_key"], request.headers.get("authorization", "")
    )


# -- tunnels -------------------------------------------------------------------------------


async def create_pty_tunnel(request: Request) -> Response:
    ptys = _ptys(request)
    devbox = ptys.devboxes.require_running(request.path_params["id"])
    return JSONResponse(ptys.tunnels.create(devbox.id))


async def create_ssh_key(request: Request) -> Response:
    _ptys(request).devboxes.get(request.path_params["id"])
    raise ApiError(
        501,
        "create_ssh_key is not available on the embedded backend: the devbox image has no SSH server "
        "(openssh-server) and the backend has no TCP tunnel to reach one; for an interactive shell use "
        "create_pty_tunnel and the PTY API",
    )


# -- sessions ------------------------------------------------------------------------------


async def pty_connect(request: Request) -> Response:
    ptys = _ptys(request)
    devbox_id = _devbox_of(request)
    name = check_name(request.path_params["session_name"])
    cols = query_int(request, "cols", None, lo=1, hi=MAX_DIMENSION)
    rows = query_int(request, "rows", None, lo=1, hi=MAX_DIMENSION)
    session, created = await ptys.open(devbox_id, name, check_size(cols, rows, required=False))
    url = connect_url(request.path_params["tunnel_key"], name)
    return JSONResponse(connect_view(session, created, url, ptys.idle_ttl_seconds))


async def pty_control(request: Request) -> Response:
    ptys = _ptys(request)
    devbox_id = _devbox_of(request)
    name = check_name(request.path_params["session_name"])
    body = await parse_body(request, ControlBody)
    if body.action is None:
        raise ApiError(400, "action is required: one of resize, signal, close")
    size = check_size(body.cols, body.rows, required=True) if body.action == "resize" else None
    if body.action == "signal" and not body.signal:
        raise ApiError(400, "signal is required with action signal: a POSIX name such as SIGINT")
    session = ptys.get(devbox_id, name)
    status = "running"
    if body.action == "resize":
        assert size is not None
        session.resize(*size)
    elif body.action == "signal":
        assert body.signal is not None
        ptys.signal(session, body.signal)
    else:
        ptys.close(session)
        status = "closed"
    return JSONResponse({"session_name": name, "status": status})


# -- the data plane ------------------------------------------------------------------------


async def pty_websocket(websocket: WebSocket) -> None:
    ptys = _ptys(websocket)
    try:
        devbox_id = _devbox_of(websocket)
        name = check_name(websocket.path_params["session_name"])
    except ApiError as exc:
        await _deny(websocket, exc)
        return
    session = ptys.find(devbox_id, name)
    if session is None:
        await websocket.accept()
        await websocket.close(CLOSE_NO_SESSION, _reason(f"no PTY session {name!r}: GET /pty/{name} opens it"))
        return
    try:
        ptys.attach(session)
    except ApiError as exc:
        await websocket.accept()
        await websocket.close(CLOSE_ATTACHED, _reason(exc.message))
        return
    try:
        await websocket.accept()
        await _pump(websocket, session)
    finally:
        ptys.detach(session)


async def _pump(websocket: WebSocket, session: PtySession) -> None:
    """Output to the client and input from it, until either side ends."""

    async def outbound() -> None:
        while (data := await session.output()) is not None:
            try:
                await websocket.send_bytes(data)  # waits while the client is slow: reading stops meanwhile
            except BaseException:
                session.unread(data)  # the client left (or the task was cancelled): keep it for the next
                raise
        await websocket.close(CLOSE_ENDED, _reason(session.end_reason))

    async def inbound() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            if data:
                await session.write(data)

    tasks = [asyncio.ensure_future(outbound()), asyncio.ensure_future(inbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    for task in tasks:  # a client gone mid-send is how a session is left, not an error
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not isinstance(exc, WebSocketDisconnect | OSError):
            log.error("PTY session %s of %s: %r", session.name, session.devbox_id, exc)


async def _deny(websocket: WebSocket, exc: ApiError) -> None:
    """Refuse the upgrade with the HTTP status of `exc` (403 where the server cannot say which)."""
    response = JSONResponse({"message": exc.message}, status_code=exc.status)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        await websocket.close()


def _reason(text: str) -> str:
    return text.encode()[:_REASON_BYTES].decode(errors="ignore")


ROUTES: list[BaseRoute] = [
    Route("/v1/devboxes/{id}/create_pty_tunnel", create_pty_tunnel, methods=["POST"]),
    Route("/v1/devboxes/{id}/create_ssh_key", create_ssh_key, methods=["POST"]),
    Route(TUNNEL_PREFIX + "/{tunnel_key}/pty/{session_name}", pty_connect, methods=["GET"]),
    Route(TUNNEL_PREFIX + "/{tunnel_key}/pty/{session_name}/control", pty_control, methods=["POST"]),
    WebSocketRoute(TUNNEL_PREFIX + "/{tunnel_key}/pty/{session_name}/connect", pty_websocket),
]
