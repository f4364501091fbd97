"""Disk snapshot tools: save a devbox's disk, list and delete snapshots, fork a devbox into copies.

A snapshot is the devbox's whole writable filesystem at one instant (its processes are not kept);
`create_devbox(snapshot_id=...)` starts a devbox from it. `fork_devbox` is one call on the embedded
backend (its `/fork`); on Runloop's cloud, which has none, it is a snapshot and `count` creates,
each step reported as progress.
"""

from __future__ import annotations

import time
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from ..runloop import NotFound, SnapshotView
from .common import DevboxId, Id, annotations, api_errors, at_most, page_text, result, state
from .devboxes import READY

SNAPSHOT_POLL_SECONDS = 0.5
SNAPSHOT_TIMEOUT_SECONDS = 900.0


class SnapshotInfo(BaseModel):
    id: str
    name: str | None = None
    devbox_id: str | None = None  # the devbox it was taken of


class Deleted(BaseModel):
    id: str


class SnapshotList(BaseModel):
    snapshots: list[SnapshotInfo]
    has_more: bool


class Forked(BaseModel):
    devbox_ids: list[str]


def snapshot_info(view: SnapshotView) -> SnapshotInfo:
    return SnapshotInfo(id=view.id, name=view.name, devbox_id=view.source_devbox_id)


async def _snapshot(ctx: Context, devbox_id: str, name: str | None, commit_message: str | None) -> SnapshotView:
    """Start a snapshot and follow it to complete, reporting progress; ToolError when it fails."""
    client = state(ctx).client
    start = time.monotonic()
    with api_errors("snapshot"):
        view = await client.snapshot_devbox_async(devbox_id, name=name, commit_message=commit_message)
        await ctx.report_progress(1, None, f"snapshot {view.id} of {devbox_id}: in_progress")
        while True:
            status = await client.snapshot_status(view.id)
            if status.status == "complete":
                break
            if status.status != "in_progress":
                raise ToolError(f"snapshot {view.id} {status.status}: {status.error_message or 'no reason given'}")
            elapsed = time.monotonic() - start
            if elapsed > SNAPSHOT_TIMEOUT_SECONDS:
                raise ToolError(f"snapshot {view.id} is still in progress after {elapsed:.0f} s; see list_snapshots")
            await ctx.report_progress(1, None, f"snapshot {view.id}: in_progress ({elapsed:.0f} s)")
            await anyio.sleep(SNAPSHOT_POLL_SECONDS)
    await ctx.report_progress(2, 2, f"snapshot {view.id}: complete ({time.monotonic() - start:.1f} s)")
    return status.snapshot or view


async def snapshot_devbox(
    ctx: Context,
    devbox_id: DevboxId,
    name: Annotated[str | None, at_most(256)] = None,
    commit_message: Annotated[str | None, at_most(1000)] = None,
) -> SnapshotInfo:
    """Save a devbox's disk; create_devbox(snapshot_id) starts from it."""
    return snapshot_info(await _snapshot(ctx, devbox_id, name, commit_message))


async def list_snapshots(
    ctx: Context,
    devbox_id: DevboxId | None = None,
    starting_after: Id | None = None,
) -> Annotated[CallToolResult, SnapshotList]:
    """List disk snapshots, newest first."""
    with api_errors():
        page = await state(ctx).client.list_snapshots(devbox_id=devbox_id, starting_after=starting_after)
    listing = SnapshotList(snapshots=[snapshot_info(s) for s in page.snapshots], has_more=page.has_more)
    lines = [f"{s.id}  {s.name or ''}  of {s.devbox_id}".rstrip() for s in listing.snapshots]
    last = listing.snapshots[-1].id if lines else None
    return result(listing, page_text("snapshot", lines, listing.has_more, last))


async def delete_snapshot(ctx: Context, snapshot_id: Id) -> Deleted:
    """Delete a disk snapshot."""
    with api_errors():
        await state(ctx).client.delete_snapshot(snapshot_id)
    return Deleted(id=snapshot_id)


async def fork_devbox(
    ctx: Context,
    devbox_id: DevboxId,
    count: Annotated[int, Field(ge=1, le=16)] = 2,
) -> Forked:
    """Copy a running devbox's disk into `count` new running devboxes."""
    client = state(ctx).client
    await ctx.report_progress(0, count, f"forking {devbox_id} into {count}")
    with api_errors():
        source = await client.get_devbox(devbox_id)  # a missing devbox is an error here, not a missing /fork
        try:
            ids = [f.id for f in await client.fork_devbox(devbox_id, count=count)]
        except NotFound:  # no /fork: Runloop's cloud
            ids = await _fork_by_snapshot(ctx, devbox_id, source.name, count)
    await ctx.report_progress(count, count, f"{count} devboxes running")
    await state(ctx).resources.list_changed()
    return Forked(devbox_ids=ids)


async def _fork_by_snapshot(ctx: Context, devbox_id: str, name: str | None, count: int) -> list[str]:
    client = state(ctx).client
    snapshot = await _snapshot(ctx, devbox_id, f"fork of {devbox_id}", None)
    ids: list[str] = []
    with api_errors("fork"):
        for index in range(count):
            view = await client.create_devbox(name=f"{name or devbox_id}-fork-{index + 1}", extra={"snapshot_id": snapshot.id})
            ids.append(view.id)
        for done, devbox in enumerate(ids, 1):
            async for view in client.watch_devbox(devbox, READY, timeout_seconds=state(ctx).settings.boot_timeout):
                last = view
            if last.status != "running":
                raise ToolError(f"fork {devbox} did not start: it is {view.status} ({last.failure_reason or 'no reason'})")
            await ctx.report_progress(done, count, f"fork {done}/{count} running: {devbox}")
    return ids


def register(server: MCPServer) -> None:
    server.add_tool(snapshot_devbox, annotations=annotations())
    server.add_tool(list_snapshots, annotations=annotations(read_only=True))
    server.add_tool(delete_snapshot, annotations=annotations(destructive=True, idempotent=True))
    server.add_tool(fork_devbox, annotations=annotations())
