"""Disk snapshot routes (`/v1/devboxes/{id}/snapshot_disk*`, `/v1/devboxes/disk_snapshots/...`), the
metadata keys/values routes, and our fork (`POST /v1/devboxes/{id}/fork`). See snapshots.py."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .devboxes import DevboxManager
from .errors import ApiError
from .http import IdempotencyCache, idempotency_key, paginate, parse_body, query_bool
from .snapshots import FORK_MAX, SnapshotStore, metadata_filters, metadata_matches


class SnapshotBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    published_schema: ClassVar[str] = "DevboxSnapshotRequest"

    name: str | None = None
    metadata: dict[str, str] | None = None
    commit_message: str | None = None


class ForkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=1, ge=1, le=FORK_MAX)
    name_prefix: str | None = Field(default=None, max_length=200)


def _store(request: Request) -> SnapshotStore:
    return request.app.state.snapshots


def _devboxes(request: Request) -> DevboxManager:
    return request.app.state.devboxes


def _once(request: Request) -> IdempotencyCache:
    """A retry of a snapshot or fork (the SDK's, with the same x-request-id) gets the first answer."""
    return request.app.state.snapshot_requests


async def snapshot_disk(request: Request) -> Response:
    store = _store(request)
    body = await parse_body(request, SnapshotBody)

    async def make() -> dict[str, Any]:
        snapshot = await store.make(store.begin(request.path_params["id"], **body.model_dump()))
        if snapshot.status != "complete":
            full = (snapshot.error_message or "").startswith("the disk is full")
            raise ApiError(507 if full else 400, f"snapshot {snapshot.id} failed: {snapshot.error_message}")
        return snapshot.view()

    return JSONResponse(await _once(request).run(idempotency_key(request, "snapshot_disk"), make))


async def snapshot_disk_async(request: Request) -> Response:
    store = _store(request)
    body = await parse_body(request, SnapshotBody)

    async def start() -> dict[str, Any]:
        snapshot = store.begin(request.path_params["id"], **body.model_dump())
        store.make_in_background(snapshot)
        return snapshot.view()

    return JSONResponse(await _once(request).run(idempotency_key(request, "snapshot_disk_async"), start))


async def snapshot_status(request: Request) -> Response:
    return JSONResponse(_store(request).get(request.path_params["id"], include_deleted=True).status_view())


def _listed(request: Request, snapshots: list[Any]) -> Response:
    devbox_id = request.query_params.get("devbox_id")
    blueprint_id = request.query_params.get("source_blueprint_id")
    if devbox_id:
        _devboxes(request).get(devbox_id)  # 404 for a devbox that does not exist, as the spec says
    filters = metadata_filters(list(request.query_params.multi_items()))
    items = [
        s.view()
        for s in snapshots
        if (not devbox_id or s.source_devbox_id == devbox_id)
        and (not blueprint_id or s.source_blueprint_id == blueprint_id)
        and metadata_matches(s.metadata, filters)
    ]
    query_bool(request, "include_total_count", True)
    return JSONResponse(paginate(request, items, "snapshots"))


async def list_snapshots(request: Request) -> Response:
    return _listed(request, _store(request).all())


async def list_public_snapshots(request: Request) -> Response:
    return _listed(request, [])  # no public snapshots on this machine


async def update_snapshot(request: Request) -> Response:
    store = _store(request)
    body = await parse_body(request, SnapshotBody)
    return JSONResponse(store.update(request.path_params["id"], **body.model_dump()).view())


async def delete_snapshot(request: Request) -> Response:
    await _store(request).delete(request.path_params["id"])
    return JSONResponse({})


async def fork_devbox(request: Request) -> Response:
    body = await parse_body(request, ForkBody)

    async def fork() -> dict[str, Any]:
        forks = await _store(request).fork(request.path_params["id"], body.count, body.name_prefix)
        return {"devboxes": [f.view() for f in forks]}

    return JSONResponse(await _once(request).run(idempotency_key(request, "fork"), fork))


# -- metadata keys and values ----------------------------------------------------------------------


def _keys(maps: list[dict[str, str]]) -> Response:
    return JSONResponse({"keys": sorted({key for m in maps for key in m})})


def _values(request: Request, maps: list[dict[str, str]]) -> Response:
    key = request.path_params["key"]
    if not key.strip() or "\x00" in key:
        raise ApiError(400, f"invalid metadata key {key!r}")
    return JSONResponse({"key": key, "values": sorted({m[key] for m in maps if key in m})})


def _snapshot_metadata(request: Request) -> list[dict[str, str]]:
    return [s.metadata for s in _store(request).all()]


def _devbox_metadata(request: Request) -> list[dict[str, str]]:
    return [d.metadata for d in _devboxes(request).all()]


async def snapshot_metadata_keys(request: Request) -> Response:
    return _keys(_snapshot_metadata(request))


async def snapshot_metadata_values(request: Request) -> Response:
    return _values(request, _snapshot_metadata(request))


async def public_metadata_keys(request: Request) -> Response:
    return _keys([])


async def public_metadata_values(request: Request) -> Response:
    return _values(request, [])


async def devbox_metadata_keys(request: Request) -> Response:
    return _keys(_devbox_metadata(request))


async def devbox_metadata_values(request: Request) -> Response:
    return _values(request, _devbox_metadata(request))


# Before the devbox routes: `/v1/devboxes/disk_snapshots` must not be taken for a devbox id.
ROUTES = [
    Route("/v1/devboxes/disk_snapshots", list_snapshots, methods=["GET"]),
    Route("/v1/devboxes/disk_snapshots/list_public", list_public_snapshots, methods=["GET"]),
    Route("/v1/devboxes/disk_snapshots/metadata/keys", snapshot_metadata_keys, methods=["GET"]),
    Route("/v1/devboxes/disk_snapshots/metadata/keys/{key}/values", snapshot_metadata_values, methods=["GET"]),
    Route("/v1/devboxes/disk_snapshots/public/metadata/keys", public_metadata_keys, methods=["GET"]),
    Route("/v1/devboxes/disk_snapshots/public/metadata/keys/{key}/values", public_metadata_values, methods=["GET"]),
    Route("/v1/devboxes/disk_snapshots/{id}", update_snapshot, methods=["POST"]),
    Route("/v1/devboxes/disk_snapshots/{id}/delete", delete_snapshot, methods=["POST"]),
    Route("/v1/devboxes/disk_snapshots/{id}/status", snapshot_status, methods=["GET"]),
    Route("/v1/devboxes/metadata/keys", devbox_metadata_keys, methods=["GET"]),
    Route("/v1/devboxes/metadata/keys/{key}/values", devbox_metadata_values, methods=["GET"]),
    Route("/v1/devboxes/{id}/snapshot_disk", snapshot_disk, methods=["POST"]),
    Route("/v1/devboxes/{id}/snapshot_disk_async", snapshot_disk_async, methods=["POST"]),
    Route("/v1/devboxes/{id}/fork", fork_devbox, methods=["POST"]),
]
