"""Blueprint routes (`/v1/blueprints/...`): build, list, get, logs, preview, delete, metadata.

Each field of BlueprintBuildParameters is honoured or refused with a 400 naming it: `services`
(no container engine), `build_context` (no objects store: the build context is `file_mounts`) and
`network_policy_id` (no network policies: `launch_parameters.network_mode` chooses the build's
network) are refused; the rest is honoured (`blueprints.py`, `dockerfile.py`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import code_mounts, files
from .blueprints import STATUSES, BlueprintManager, BuildRequest
from .devbox_params import (
    CreateBody,
    LaunchParameters,
    _Params,
    check_secrets,
    launch_user,
    refusals,
    unknown_fields,
)
from .dockerfile import preview
from .errors import ApiError
from .http import IdempotencyCache, idempotency_key, paginate, parse_body
from .sizes import SizeError, resolve


class BuildBody(_Params):
    published_schema: ClassVar[str] = "BlueprintBuildParameters"

    name: str | None = None
    dockerfile: str | None = None
    system_setup_commands: list[str] | None = None
    code_mounts: list[Any] | None = None
    launch_parameters: LaunchParameters | None = None
    file_mounts: dict[str, str] | None = None
    base_blueprint_id: str | None = None
    base_blueprint_name: str | None = None
    services: list[Any] | None = None
    metadata: dict[str, str] | None = None
    build_args: dict[str, str] | None = None
    secrets: dict[str, str] | None = None
    build_context: dict[str, Any] | None = None
    network_policy_id: str | None = None


_REFUSED = {
    "services": "(containerized services) need a container engine, which the embedded backend has not; leave it out",
    "build_context": (
        "is not supported by the embedded backend (no objects store); put the files in file_mounts and "
        "COPY them from there"
    ),
    "network_policy_id": (
        "is not supported by the embedded backend (no network policies); choose launch_parameters.network_mode "
        "(isolated, none or host) for the build instead"
    ),
}


def _blueprints(request: Request) -> BlueprintManager:
    return request.app.state.blueprints


def _checked(body: BuildBody) -> None:
    unknown_fields(body)
    for key, why in _REFUSED.items():
        if getattr(body, key):
            raise ApiError(400, f"{key} {why}")
    if body.launch_parameters is not None:
        refusals(CreateBody(launch_parameters=body.launch_parameters))
        launch_user(body.launch_parameters)
        _check_size(body.launch_parameters)
    home = launch_user(body.launch_parameters).home
    for path in body.file_mounts or {}:
        files.home_relative(path, "file_mounts path", home)
    for command in body.system_setup_commands or []:
        if "\0" in command:
            raise ApiError(400, "system_setup_commands: a command contains a NUL character")


def _check_size(params: LaunchParameters | None) -> None:
    try:
        resolve(params.model_dump(exclude_none=True) if params else {})
    except SizeError as exc:
        raise ApiError(400, f"launch_parameters: {exc}") from None


def _mounts(body: BuildBody) -> list[code_mounts.CodeMount]:
    try:
        return code_mounts.parse(body.code_mounts)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


async def _create(request: Request) -> dict[str, Any]:
    blueprints = _blueprints(request)
    body = await parse_body(request, BuildBody)
    if not body.name:
        raise ApiError(400, "name is required: the blueprint's name (devboxes can start from its latest build by name)")
    _checked(body)
    mounts = _mounts(body)
    base = None
    if body.base_blueprint_id or body.base_blueprint_name:
        base = blueprints.usable(
            blueprint_id=body.base_blueprint_id, blueprint_name=body.base_blueprint_name, field_prefix="base_blueprint"
        )
    secrets = body.secrets or {}
    check_secrets(blueprints.devboxes.secrets, secrets, {})
    parameters = body.model_dump(exclude_none=True)
    if mounts:
        parameters["code_mounts"] = [m.record() for m in mounts]  # never the tokens
    launch = body.launch_parameters.model_dump(exclude_none=True) if body.launch_parameters else {}
    user = launch_user(body.launch_parameters)
    blueprint = blueprints.create(
        name=body.name,
        parameters=parameters,
        metadata=body.metadata or {},
        base=base,
        request=BuildRequest(code_mounts=mounts, secrets=secrets, file_mounts=body.file_mounts or {},
                             launch_parameters=launch, user=user),  # fmt: skip
    )
    return blueprint.view()


async def create_blueprint(request: Request) -> Response:
    view = await _creations(request).run(idempotency_key(request, "create"), lambda: _create(request))
    return JSONResponse(_blueprints(request).get(view["id"]).view())


def _creations(request: Request) -> IdempotencyCache:
    return request.app.state.blueprint_creations


async def list_blueprints(request: Request) -> Response:
    blueprints = _blueprints(request)
    name = request.query_params.get("name")
    status = request.query_params.get("status")
    if status and status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}; got {status!r}")
    items = [
        b.view() for b in reversed(blueprints.all())
        if (not name or b.name == name) and (not status or b.status == status)
    ]  # fmt: skip
    return JSONResponse(paginate(request, items, "blueprints"))


async def list_public(request: Request) -> Response:
    status = request.query_params.get("status")
    if status and status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}; got {status!r}")
    return JSONResponse(paginate(request, [], "blueprints"))


async def get_blueprint(request: Request) -> Response:
    return JSONResponse(_blueprints(request).get(request.path_params["id"]).view())


async def blueprint_logs(request: Request) -> Response:
    blueprint = _blueprints(request).get(request.path_params["id"])
    return JSONResponse({"blueprint_id": blueprint.id, "logs": list(blueprint.logs)})


async def delete_blueprint(request: Request) -> Response:
    blueprint_id = request.path_params["id"]
    snapshots = [f"snapshot {s.id}" for s in request.app.state.snapshots.all() if s.source_blueprint_id == blueprint_id]
    await _blueprints(request).delete(blueprint_id, snapshots)
    return JSONResponse({})


async def preview_blueprint(request: Request) -> Response:
    blueprints = _blueprints(request)
    body = await parse_body(request, BuildBody)
    if not body.name:
        raise ApiError(400, "name is required: the blueprint's name")
    _checked(body)
    mounts = _mounts(body)
    base = body.base_blueprint_id or body.base_blueprint_name
    if base:
        found = blueprints.usable(
            blueprint_id=body.base_blueprint_id, blueprint_name=body.base_blueprint_name, field_prefix="base_blueprint"
        )
        base = found.id
    text = preview(
        dockerfile=body.dockerfile, base=base, system_setup_commands=body.system_setup_commands or [],
        file_mounts=body.file_mounts or {}, code_mounts=[(m.label, m.install_command) for m in mounts],
    )  # fmt: skip
    return JSONResponse({"dockerfile": text})


async def metadata_keys(request: Request) -> Response:
    keys = sorted({key for b in _blueprints(request).all() for key in b.metadata})
    return JSONResponse({"keys": keys})


async def metadata_values(request: Request) -> Response:
    key = request.path_params["key"]
    values = sorted({b.metadata[key] for b in _blueprints(request).all() if key in b.metadata})
    return JSONResponse({"key": key, "values": values})


async def public_metadata_keys(request: Request) -> Response:
    return JSONResponse({"keys": []})


async def public_metadata_values(request: Request) -> Response:
    return JSONResponse({"key": request.path_params["key"], "values": []})


class InspectionBody(_Params):
    published_schema: ClassVar[str] = "BlueprintBuildFromInspectionParameters"

    launch_parameters: LaunchParameters | None = None


async def create_from_inspection(request: Request) -> Response:
    body = await parse_body(request, InspectionBody)  # a malformed body is told what is wrong with it first
    _check_size(body.launch_parameters)
    raise ApiError(
        400,
        "create_from_inspection is not supported by the embedded backend (no repository inspections); build with "
        "POST /v1/blueprints and code_mounts instead",
    )


ROUTES = [
    Route("/v1/blueprints", create_blueprint, methods=["POST"]),
    Route("/v1/blueprints", list_blueprints, methods=["GET"]),
    Route("/v1/blueprints/create_from_inspection", create_from_inspection, methods=["POST"]),
    Route("/v1/blueprints/list_public", list_public, methods=["GET"]),
    Route("/v1/blueprints/preview", preview_blueprint, methods=["POST"]),
    Route("/v1/blueprints/metadata/keys", metadata_keys, methods=["GET"]),
    Route("/v1/blueprints/metadata/keys/{key}/values", metadata_values, methods=["GET"]),
    Route("/v1/blueprints/public/metadata/keys", public_metadata_keys, methods=["GET"]),
    Route("/v1/blueprints/public/metadata/keys/{key}/values", public_metadata_values, methods=["GET"]),
    Route("/v1/blueprints/{id}", get_blueprint, methods=["GET"]),
    Route("/v1/blueprints/{id}/delete", delete_blueprint, methods=["POST"]),
    Route("/v1/blueprints/{id}/logs", blueprint_logs, methods=["GET"]),
]
