"""Network policy routes (`/v1/network-policies...`): create, list, get, update, delete (see policy_store).

A policy in use by a devbox that is not shut down cannot be deleted (409, naming the devboxes),
nor can its `allow_all` change (it decides, at start, whether the devbox has a network or only
the proxy); its hostnames can, and reach the devboxes' next connections at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .devboxes import DevboxManager
from .errors import conflict
from .http import IdempotencyCache, idempotency_key, paginate, parse_body
from .policy_store import PolicyStore, check_gateways

View = dict[str, Any]


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    description: StrictStr | None = None
    allow_all: StrictBool | None = None
    allow_devbox_to_devbox: StrictBool | None = None
    allowed_hostnames: list[StrictStr] | None = None
    allow_agent_gateway: StrictBool | None = None
    allow_mcp_gateway: StrictBool | None = None


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = None
    description: StrictStr | None = None
    allow_all: StrictBool | None = None
    allow_devbox_to_devbox: StrictBool | None = None
    allowed_hostnames: list[StrictStr] | None = None
    allow_agent_gateway: StrictBool | None = None
    allow_mcp_gateway: StrictBool | None = None


def _store(request: Request) -> PolicyStore:
    return request.app.state.policies


def _users(request: Request, policy_id: str) -> list[str]:
    """The devboxes (not shut down) that the policy applies to."""
    devboxes: DevboxManager = request.app.state.devboxes
    return [d.id for d in devboxes.all() if d.network_policy_id == policy_id and d.status not in ("shutdown", "failure")]


async def _once(request: Request, scope: str, action: Callable[[], Awaitable[View]]) -> Response:
    changes: IdempotencyCache = request.app.state.policy_changes
    return JSONResponse(await changes.run(idempotency_key(request, scope), action))


async def create_policy(request: Request) -> Response:
    async def act() -> View:
        body = await parse_body(request, CreateBody)
        check_gateways(body.allow_agent_gateway, body.allow_mcp_gateway)
        return _store(request).create(
            name=body.name, description=body.description, allow_all=bool(body.allow_all),
            allow_devbox_to_devbox=bool(body.allow_devbox_to_devbox), allowed_hostnames=body.allowed_hostnames or [],
        ).view()  # fmt: skip

    return await _once(request, "create", act)


async def list_policies(request: Request) -> Response:
    name = (request.query_params.get("name") or "").lower()
    wanted_id = request.query_params.get("id")
    search = (request.query_params.get("search") or "").lower()  # the SDK's: an id or part of a name
    items = [
        p.view()
        for p in _store(request).all()
        if name in p.name.lower()
        and (not wanted_id or p.id == wanted_id)
        and (not search or search == p.id.lower() or search in p.name.lower())
    ]
    return JSONResponse(paginate(request, items, "network_policies"))


async def get_policy(request: Request) -> Response:
    return JSONResponse(_store(request).get(request.path_params["id"]).view())


async def update_policy(request: Request) -> Response:
    policy_id = request.path_params["id"]

    async def act() -> View:
        body = await parse_body(request, UpdateBody)
        check_gateways(body.allow_agent_gateway, body.allow_mcp_gateway)
        store = _store(request)
        policy = store.get(policy_id)
        if body.allow_all is not None and body.allow_all != policy.allow_all:
            users = _users(request, policy_id)
            if users:
                raise conflict(
                    f"allow_all cannot change while devboxes use the policy ({', '.join(users)}): it decides at "
                    "start whether a devbox has a network or only the proxy; shut them down or make another policy"
                )
        return store.update(policy, body.model_dump(exclude_unset=True)).view()

    return await _once(request, f"update:{policy_id}", act)


async def delete_policy(request: Request) -> Response:
    policy_id = request.path_params["id"]

    async def act() -> View:
        store = _store(request)
        policy = store.get(policy_id)
        users = _users(request, policy_id)
        if users:
            raise conflict(
                f"network policy {policy_id!r} is in use by {', '.join(users)}; shut those devboxes down first"
            )
        return store.delete(policy).view()

    return await _once(request, f"delete:{policy_id}", act)


ROUTES = [
    Route("/v1/network-policies", create_policy, methods=["POST"]),
    Route("/v1/network-policies", list_policies, methods=["GET"]),
    Route("/v1/network-policies/{id}", get_policy, methods=["GET"]),
    Route("/v1/network-policies/{id}", update_policy, methods=["POST"]),
    Route("/v1/network-policies/{id}/delete", delete_policy, methods=["POST"]),
]
