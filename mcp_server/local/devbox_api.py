"""Devbox, file and log routes (`/v1/devboxes/...`), plus the execution routes mounted beside them."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import execution_api, files, uploads, validation
from .config import Component, LocalConfig
from .devboxes import DevboxManager
from .errors import ApiError
from .executions import ExecutionManager
from .http import IdempotencyCache, idempotency_key, paginate, parse_body
from .sandbox import DEFAULT_USER, ROOT_USER, SandboxUser

MAX_WAIT_SECONDS = 30.0
CREATE_AWAIT_SECONDS = 25.0  # create_and_await_running holds at most this long, then the SDK polls
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSUPPORTED_SOURCES = ("blueprint_id", "blueprint_name", "snapshot_id")
_VIEW_STATUSES = validation.enum("DevboxViewStatus")  # what the list filter and wait_for_status take


def _no_nul(what: str, text: str) -> str:
    """A NUL cannot reach a process (argv and environment are C strings): refuse it up front."""
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character, which a command or its environment cannot hold")
    return text


class LaunchParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    launch_commands: list[str] | None = None
    # Our extension: isolated (own network namespace, outbound via slirp4netns), none, or host.
    network_mode: Literal["isolated", "none", "host"] | None = None
    # Shut down after this long without a keep_alive (only when given: a local devbox lives until shut down).
    keep_alive_time_seconds: int | None = Field(default=None, ge=1, le=172800)

    @field_validator("launch_commands")
    @classmethod
    def _commands(cls, value: list[str] | None) -> list[str] | None:
        for command in value or []:
            _no_nul("a launch command", command)
        return value


_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_USER_FIELD = "launch_parameters.user_parameters"


def _user(value: object) -> SandboxUser:
    """The account commands run as: `user` unless user_parameters names another (root included)."""
    if value is None:
        return DEFAULT_USER
    if not isinstance(value, dict) or set(value) - {"username", "uid"} or set(value) != {"username", "uid"}:
        raise ApiError(400, f"{_USER_FIELD} must be an object with exactly `username` and `uid`")
    name, uid = value["username"], value["uid"]
    if not isinstance(name, str) or not _USERNAME.match(name):
        raise ApiError(400, f"{_USER_FIELD}.username must be a Linux user name (a-z, 0-9, _ and -, at most 32); got {name!r}")
    if not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid <= 65533:
        raise ApiError(400, f"{_USER_FIELD}.uid must be an integer from 0 to 65533; got {uid!r}")
    for known in (ROOT_USER, DEFAULT_USER):
        if (name == known.name) != (uid == known.uid):
            raise ApiError(
                400,
                f"{_USER_FIELD}: uid {known.uid} is `{known.name}` in a devbox; use username {known.name!r} "
                f"with uid {known.uid}, or another name and uid",
            )
    if name == ROOT_USER.name:
        return ROOT_USER
    if name == DEFAULT_USER.name:
        return DEFAULT_USER
    return SandboxUser(name, uid, f"/home/{name}")


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    published_schema: ClassVar[str] = "DevboxCreateParameters"

    name: str | None = None
    environment_variables: dict[str, str] | None = None
    launch_parameters: LaunchParameters | None = None
    metadata: dict[str, str] | None = None
    file_mounts: dict[str, str] | None = None
    entrypoint: str | None = None
    secrets: dict[str, str] | None = None
    code_mounts: list[Any] | None = None
    blueprint_id: str | None = None
    blueprint_name: str | None = None
    snapshot_id: str | None = None

    @field_validator("environment_variables")
    @classmethod
    def _env_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, text in (value or {}).items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name (letters, digits, _)")
            _no_nul(f"the value of {key}", text)
        return value

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, value: str | None) -> str | None:
        return _no_nul("the entrypoint", value) if value is not None else None


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
    for key in _UNSUPPORTED_SOURCES:
        if getattr(body, key):
            raise ApiError(
                400,
                f"{key} is not supported by the embedded backend (no blueprints or snapshots); "
                "create a devbox without it and use launch_parameters.launch_commands to set it up",
            )
    if body.secrets:
        raise ApiError(
            400,
            "secrets are not supported by the embedded backend (it has no secret store); "
            "pass the values in environment_variables instead",
        )
    if body.code_mounts:
        raise ApiError(
            400,
            "code_mounts are not supported by the embedded backend; clone the repository with a "
            "launch command instead (launch_parameters.launch_commands: ['git clone <url>'])",
        )
    user = _user(
        (body.launch_parameters.model_extra or {}).get("user_parameters") if body.launch_parameters else None
    )
    for path in body.file_mounts or {}:
        files.home_relative(path, "file_mounts path", user.home)
    params = body.launch_parameters.model_dump(exclude_none=True) if body.launch_parameters else {}
    devbox = devboxes.create(
        name=body.name,
        environment_variables=body.environment_variables or {},
        launch_parameters=params,
        metadata=body.metadata or {},
        file_mounts=body.file_mounts or {},
        entrypoint=body.entrypoint,
        user=user,
    )
    return devbox.view()


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
    return JSONResponse(devboxes.get(request.path_params["id"]).view())


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


async def devbox_usage(request: Request) -> Response:
    devboxes = _devboxes(request)
    return JSONResponse(devboxes.get(request.path_params["id"]).usage())


async def devbox_logs(request: Request) -> Response:
    devboxes = _devboxes(request)
    entries = devboxes.logs(request.path_params["id"], request.query_params.get("execution_id"))
    return JSONResponse({"logs": entries})


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
    Route("/v1/devboxes/{id}/usage", devbox_usage, methods=["GET"]),
    Route("/v1/devboxes/{id}/read_file_contents", read_file_contents, methods=["POST"]),
    Route("/v1/devboxes/{id}/write_file_contents", write_file_contents, methods=["POST"]),
    Route("/v1/devboxes/{id}/upload_file", upload_file, methods=["POST"]),
    Route("/v1/devboxes/{id}/download_file", download_file, methods=["POST"]),
]


def build(config: LocalConfig) -> Component:
    manager = DevboxManager(config)
    executions = ExecutionManager(manager)
    # Execution routes first: their static paths must win over `/v1/devboxes/{id}`.
    routes = [*execution_api.ROUTES, *ROUTES]

    async def startup() -> None:
        await manager.startup()
        await executions.startup()

    async def shutdown() -> None:
        await executions.shutdown()
        await manager.shutdown()

    return Component(
        routes=routes,
        startup=startup,
        shutdown=shutdown,
        extra={"devboxes": manager, "devbox_creations": IdempotencyCache(), "executions": executions},
    )
