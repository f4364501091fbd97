"""The Starlette application of the embedded backend: bearer auth, errors, and the API areas."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator

import apsw
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import axon_api, devbox_api
from .config import LocalConfig
from .errors import ApiError, api_error_handler, os_error_handler, unexpected_error_handler
from .pty_api import TUNNEL_PREFIX

TUNNEL_PATHS = TUNNEL_PREFIX + "/"


class BearerAuth:
    """Lets through only requests that carry `Authorization: Bearer <api key>`, except `/healthz` and
    the PTY tunnel paths (`/tunnel/...`), which their own routes check against the tunnel's token.

    The scheme is matched case-insensitively (RFC 7235): `bearer <key>` is the same credential.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] == "/healthz" or scope["path"].startswith(
            TUNNEL_PATHS
        ):
            await self.app(scope, receive, send)
            return
        scheme, _, presented = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(presented.strip(b" \t"), self._expected):
            message = "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the backend printed at start-up"
            response = JSONResponse({"message": message}, status_code=401)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def healthz(request):  # noqa: ANN001 - Starlette endpoint
    return JSONResponse({"status": "ok"})


def create_app(config: LocalConfig) -> Starlette:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    components = [devbox_api.build(config), axon_api.build(config)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = []
        try:
            for component in components:
                if component.startup:
                    await component.startup()
                started.append(component)
            yield
        finally:
            for component in reversed(started):
                if component.shutdown:
                    await component.shutdown()

    routes = [Route("/healthz", healthz)]
    for component in components:
        routes.extend(component.routes)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            # Handled here rather than as `Exception`, which Starlette re-raises to the server's log.
            OSError: os_error_handler,
            apsw.FullError: os_error_handler,
            Exception: unexpected_error_handler,
        },
    )
    app.add_middleware(BearerAuth, api_key=config.api_key)
    app.state.components = components
    for component in components:
        for name, value in component.extra.items():
            setattr(app.state, name, value)  # what the routes reach as request.app.state.<name>
    return app
