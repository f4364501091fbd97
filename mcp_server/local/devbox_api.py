"""Devbox, file and log routes (`/v1/devboxes/...`), plus the execution routes mounted beside them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import execution_api, files, policy_api, pty_api, secret_api, uploads, validation
from .config import Component, LocalConfig
from .devbox_params import CreateBody, file_mounts_of, launch_user, refusals
from .devboxes import DevboxManager
from .errors import ApiError
from .executions import ExecutionManager
from .http import IdempotencyCache, idempotency_key, paginate, parse_body
from .policy_store import PolicyStore
from .pty import PtyManager
from .secret_store import SecretStore
from .sse import KEEPALIVE, KEEPALIVE_SECONDS, encode_event, sse_response, wait_or_timeout
from .tunnel_proxy import TunnelProxy
from .tunnels import TunnelConfig

MAX_WAIT_SECONDS = 30.0
CREATE_AWAIT_SECONDS = 25.0  # create_and_await_running holds at most this long, then the SDK polls
_VIEW_STATUSES = validation.enum("DevboxViewStatus")  # what the list filter and wait_for_status take


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    published_schema: ClassVar[str] = "DevboxUpdateParameters"

    name: str | None = None
    metadata: dict[str, str] | None = None


class WaitBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    published_schema: ClassVar[str] = "DevboxWaitForStatusRequest"

    statuses: list[str] = Field(min_length=1)
    timeout_seconds: float | None = None


class ReadBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    published_schema: ClassVar[str] = "DevboxReadFileParameters"

    file_path: str


class WriteBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    published_schema: ClassVar[str] = "DevboxWriteFileParameters"

    file_path: str
    contents: str


class DownloadBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    published_schema: ClassVar[str] = "DevboxDownloadFileParameters"

    path: str


def _devboxes(request: Request) -> DevboxManager:
    return request.app.state.devboxes


def _creations(request: Request) -> IdempotencyCache:
    return request.app.state.devbox_creations


# -- devboxes --------------------------------------------------------------------------

async def _create(request: Request) -> dict[str, Any]:
    devboxes = _devboxes(request)
    body = await parse_body(request, CreateBody)
    refusals(body)
    user = launch_user(body.launch_parameters)
    mounts = file_mounts_of(body)
    for path in mounts:
        files.home_relative(path, "file_mounts path", user.home)
    secrets = body.secrets or {}
    _check_secrets(devboxes, secrets, body.environment_variables or {})
    params = body.launch_parameters.model_dump(exclude_none=True) if body.launch_parameters else {}
    devbox = devboxes.create(
        name=body.name,
        environment_variables=body.environment_variables or {},
        launch_parameters=params,
        metadata=body.metadata or {},
        file_mounts=mounts,
        entrypoint=body.entrypoint,
        secrets=secrets,
        user=user,
        tunnel=body.tunnel,
    )
    return devbox.view()


def _check_secrets(devboxes: DevboxManager, secrets: dict[str, str], environment_variables: dict[str, str]) -> None:
    """Every secret named must exist, and no variable may come from both maps."""
    for env in secrets:
        if env in environment_variables:
            raise ApiError(400, f"{env} is in both environment_variables and secrets; give each variable in one of them")
    missing = devboxes.secrets.missing(secrets)
    if missing:
        env = next(e for e, name in secrets.items() if name == missing[0])
        raise ApiError(
            400,
            f"secrets: no secret is named {missing[0]!r} (asked for {env}); create it first "
            "(POST /v1/secrets) or list the secrets (GET /v1/secrets) for the right name",
        )


async def create_devbox(request: Request) -> Response:
    devboxes = _devboxes(request)
    view = await _creations(request).run(idempotency_key(request, "create"), lambda: _create(request))
    return JSONResponse(devboxes.get(view["id"]).view())


async def create_and_await_running(request: Request) -> Response:
    devboxes = _devboxes(request)
    view = await _creations(request).run(idempotency_key(request, "create"), lambda: _create(request))
    devbox_id = view["id"]
    try:
        devbox = await devboxes.wait_for_status(
            devbox_id, ("running", "failure", "shutdown", "suspended"), CREATE_AWAIT_SECONDS
        )
    except ApiError as exc:
        if exc.status != 408:
            raise
        devbox = devboxes.get(devbox_id)  # still booting: the SDK keeps waiting
    return JSONResponse(devbox.view())


async def list_devboxes(request: Request) -> Response:
    devboxes = _devboxes(request)
    status = request.query_params.get("status")
    if status and status not in _VIEW_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(_VIEW_STATUSES)}; got {status!r}")
    # Newest first, as Runloop lists them.
    items = [d.view() for d in reversed(devboxes.all()) if not status or d.status == status]
    return JSONResponse(paginate(request, items, "devboxes"))


async def get_devbox(request: Request) -> Response:
    devboxes = _devboxes(request)
    return JSONResponse(devboxes.live_view(request.path_params["id"]))


async def update_devbox(request: Request) -> Response:
    devboxes = _devboxes(request)
    devbox_id = request.path_params["id"]
    devboxes.get(devbox_id)
    body = await parse_body(request, UpdateBody)
    return JSONResponse(devboxes.update(devbox_id, name=body.name, metadata=body.metadata).view())


async def wait_for_devbox_status(request: Request) -> Response:
    devboxes = _devboxes(request)
    devbox_id = request.path_params["id"]
    devboxes.get(devbox_id)
    body = await parse_body(request, WaitBody)
    timeout = MAX_WAIT_SECONDS if body.timeout_seconds is None else body.timeout_seconds
    if not 0 <= timeout <= MAX_WAIT_SECONDS:
        raise ApiError(
            400, f"timeout_seconds must be between 0 and {MAX_WAIT_SECONDS:g}; got {timeout:g}"
        )
    devbox = await devboxes.wait_for_status(devbox_id, body.statuses, timeout)
    return JSONResponse(devbox.view())


async def shutdown_devbox(request: Request) -> Response:
    devboxes = _devboxes(request)
    return JSONResponse((await devboxes.shutdown_devbox(request.path_params["id"])).view())


async def suspend_devbox(request: Request) -> Response:
    devboxes = _devboxes(request)
    return JSONResponse((await devboxes.suspend(request.path_params["id"])).view())


async def resume_devbox(request: Request) -> Response:
    devboxes = _devboxes(request)
    return JSONResponse((await devboxes.resume(request.path_params["id"])).view())


async def keep_alive(request: Request) -> Response:
    devboxes = _devboxes(request)
    devboxes.keep_alive(request.path_params["id"])
    return JSONResponse({})


async def enable_tunnel(request: Request) -> Response:
    devboxes = _devboxes(request)
    devbox_id = request.path_params["id"]
    devboxes.get(devbox_id)
    config = await parse_body(request, TunnelConfig)
    devbox = await devboxes.enable_tunnel(devbox_id, config)
    return JSONResponse(devbox.view()["tunnel"])


async def remove_tunnel(request: Request) -> Response:
    devboxes = _devboxes(request)
    await devboxes.remove_tunnel(request.path_params["id"])
    return JSONResponse({})


async def devbox_usage(request: Request) -> Response:
    devboxes = _devboxes(request)
    return JSONResponse(devboxes.get(request.path_params["id"]).usage())


async def devbox_logs(request: Request) -> Response:
    devboxes = _devboxes(request)
    entries = devboxes.logs(request.path_params["id"], request.query_params.get("execution_id"))
    return JSONResponse({"logs": entries})


async def tail_devbox_logs(request: Request) -> Response:
    """SSE: each DevboxLog entry (as /logs has them) as one event, the past ones first, then each
    as it is added; the stream ends once the devbox is shut down (or failed)."""
    devboxes = _devboxes(request)
    devbox_id = request.path_params["id"]
    devboxes.get(devbox_id)
    execution_id = request.query_params.get("execution_id") or None
    if request.query_params.get("shell_name"):
        raise ApiError(400, "shell_name: the embedded backend has no named shells, so no entry has one; filter by execution_id")
    return sse_response(_log_events(devboxes, devbox_id, execution_id))


async def _log_events(devboxes: DevboxManager, devbox_id: str, execution_id: str | None) -> AsyncIterator[bytes]:
    position = 0
    while True:
        with devboxes.log_waiter(devbox_id) as changed:  # before reading: nothing added meanwhile is missed
            entries, position = devboxes.logs_since(devbox_id, position)
            for entry in entries:
                if execution_id is None or entry.get("cmd_id") == execution_id:
                    yield encode_event(entry)
            if devboxes.get(devbox_id).status in ("shutdown", "failure"):
                return
            if not await wait_or_timeout(changed.wait, KEEPALIVE_SECONDS):
                yield KEEPALIVE


# -- files -----------------------------------------------------------------------------


async def read_file_contents(request: Request) -> Response:
    devboxes = _devboxes(request)
    devbox = devboxes.require_running(request.path_params["id"])
    body = await parse_body(request, ReadBody)
    path = files.check_path(body.file_path, "file_path")
    text = await files.read_text(devbox, path)
    return PlainTextResponse(text, media_type="text/plain; charset=utf-8")


async def write_file_contents(request: Request) -> Response:
    devboxes = _devboxes(request)
    devbox = devboxes.require_running(request.path_params["id"])
    body = await parse_body(request, WriteBody)
    path = files.check_path(body.file_path, "file_path")
    await files.write(devbox, path, body.contents.encode("utf-8"))
    devboxes.add_log(devbox.id, {"source": "files", "message": f"wrote {path}"})
    return JSONResponse({"devbox_id": devbox.id, "exit_status": 0, "stdout": "", "stderr": ""})


async def upload_file(request: Request) -> Response:
    devboxes = _devboxes(request)
    devbox = devboxes.require_running(request.path_params["id"])
    path = await uploads.receive(request, devbox)
    devboxes.add_log(devbox.id, {"source": "files", "message": f"uploaded {path}"})
    return JSONResponse({})


async def download_file(request: Request) -> Response:
    devboxes = _devboxes(request)
    devbox = devboxes.require_running(request.path_params["id"])
    body = await parse_body(request, DownloadBody)
    path = files.check_path(body.path, "path")
    _size, chunks = await files.download(devbox, path)
    # No Content-Length: the file may change while it streams.
    return StreamingResponse(chunks, media_type="application/octet-stream")




ROUTES = [
    Route("/v1/devboxes", create_devbox, methods=["POST"]),
    Route("/v1/devboxes", list_devboxes, methods=["GET"]),
    Route("/v1/devboxes/create_and_await_running", create_and_await_running, methods=["POST"]),
    Route("/v1/devboxes/{id}", get_devbox, methods=["GET"]),
    Route("/v1/devboxes/{id}", update_devbox, methods=["POST"]),
    Route("/v1/devboxes/{id}/wait_for_status", wait_for_devbox_status, methods=["POST"]),
    Route("/v1/devboxes/{id}/shutdown", shutdown_devbox, methods=["POST"]),
    Route("/v1/devboxes/{id}/suspend", suspend_devbox, methods=["POST"]),
    Route("/v1/devboxes/{id}/resume", resume_devbox, methods=["POST"]),
    Route("/v1/devboxes/{id}/keep_alive", keep_alive, methods=["POST"]),
    Route("/v1/devboxes/{id}/logs", devbox_logs, methods=["GET"]),
    Route("/v1/devboxes/{id}/logs/tail", tail_devbox_logs, methods=["GET"]),
    Route("/v1/devboxes/{id}/usage", devbox_usage, methods=["GET"]),
    Route("/v1/devboxes/{id}/enable_tunnel", enable_tunnel, methods=["POST"]),
    Route("/v1/devboxes/{id}/remove_tunnel", remove_tunnel, methods=["POST"]),
    Route("/v1/devboxes/{id}/read_file_contents", read_file_contents, methods=["POST"]),
    Route("/v1/devboxes/{id}/write_file_contents", write_file_contents, methods=["POST"]),
    Route("/v1/devboxes/{id}/upload_file", upload_file, methods=["POST"]),
    Route("/v1/devboxes/{id}/download_file", download_file, methods=["POST"]),
]


def build(config: LocalConfig) -> Component:
    secrets = SecretStore(config.data_dir)
    policies = PolicyStore(config.data_dir)
    manager = DevboxManager(config, secrets, policies)
    executions = ExecutionManager(manager)
    ptys = PtyManager(manager)
    # Execution routes first: their static paths must win over `/v1/devboxes/{id}`.
    routes = [*execution_api.ROUTES, *ROUTES, *pty_api.ROUTES, *secret_api.ROUTES, *policy_api.ROUTES]

    tunnels = TunnelProxy(manager, config.tunnel_host, config.tunnel_port)  # listens now: a taken port fails here
    manager.set_tunnel_origin(tunnels.origin)

    async def startup() -> None:
        secrets.load()
        policies.load()
        await tunnels.start()
        await manager.startup()
        await executions.startup()

    async def shutdown() -> None:
        await ptys.shutdown()
        await tunnels.close()
        await executions.shutdown()
        await manager.shutdown()

    return Component(
        routes=routes,
        startup=startup,
        shutdown=shutdown,
        extra={
            "devboxes": manager, "devbox_creations": IdempotencyCache(), "executions": executions,
            "ptys": ptys, "secrets": secrets, "secret_changes": IdempotencyCache(), "tunnels": tunnels,
            "policies": policies, "policy_changes": IdempotencyCache(),
        },  # fmt: skip
    )
