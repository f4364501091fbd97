"""Secret routes (`/v1/secrets...`): create, list, get, update and delete, by name or by id.

Every answer is a SecretView without the value (see `secret_store`). Changes are idempotent on
`x-request-id`, so a retried create does not fail with "already exists".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .http import IdempotencyCache, idempotency_key, paginate, parse_body
from .secret_store import SecretStore

View = dict[str, Any]


# No `published_schema` (see `validation`) on these bodies: its messages quote the value they
# refuse, and a value here is a secret. The models' own messages never quote input.
class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    value: StrictStr


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: StrictStr


def _store(request: Request) -> SecretStore:
    return request.app.state.secrets


async def _once(request: Request, scope: str, action: Callable[[], Awaitable[View]]) -> Response:
    changes: IdempotencyCache = request.app.state.secret_changes
    return JSONResponse(await changes.run(idempotency_key(request, scope), action))


async def create_secret(request: Request) -> Response:
    async def act() -> View:
        body = await parse_body(request, CreateBody)
        return _store(request).create(body.name, body.value).view()

    return await _once(request, "create", act)


async def list_secrets(request: Request) -> Response:
    items = [s.view() for s in _store(request).all()]
    return JSONResponse(paginate(request, items, "secrets"))


async def get_secret(request: Request) -> Response:
    return JSONResponse(_store(request).get(request.path_params["name"]).view())


async def get_secret_by_id(request: Request) -> Response:
    return JSONResponse(_store(request).by_id(request.path_params["id"]).view())


async def update_secret(request: Request) -> Response:
    name = request.path_params["name"]

    async def act() -> View:
        body = await parse_body(request, UpdateBody)  # a bad body is a 400 before any lookup
        store = _store(request)
        return store.update(store.get(name), body.value).view()

    return await _once(request, f"update:{name}", act)


async def update_secret_by_id(request: Request) -> Response:
    secret_id = request.path_params["id"]

    async def act() -> View:
        body = await parse_body(request, UpdateBody)
        store = _store(request)
        return store.update(store.by_id(secret_id), body.value).view()

    return await _once(request, f"update:{secret_id}", act)


async def delete_secret(request: Request) -> Response:
    name = request.path_params["name"]

    async def act() -> View:
        store = _store(request)
        return store.delete(store.get(name)).view()

    return await _once(request, f"delete:{name}", act)


async def delete_secret_by_id(request: Request) -> Response:
    secret_id = request.path_params["id"]

    async def act() -> View:
        store = _store(request)
        return store.delete(store.by_id(secret_id)).view()

    return await _once(request, f"delete:{secret_id}", act)


ROUTES = [
    Route("/v1/secrets", create_secret, methods=["POST"]),
    Route("/v1/secrets", list_secrets, methods=["GET"]),
    Route("/v1/secrets/id/{id}", get_secret_by_id, methods=["GET"]),
    Route("/v1/secrets/id/{id}/update", update_secret_by_id, methods=["POST"]),
    Route("/v1/secrets/id/{id}/delete", delete_secret_by_id, methods=["POST"]),
    Route("/v1/secrets/{name}", get_secret, methods=["GET"]),
    Route("/v1/secrets/{name}", update_secret, methods=["POST"]),
    Route("/v1/secrets/{name}/delete", delete_secret, methods=["POST"]),
]
