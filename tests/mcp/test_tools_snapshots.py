"""Snapshot and fork tools through a real MCP client (both eras), on the embedded backend; fork also
as against Runloop's cloud (no /fork: a fault proxy answers 404 there), where it snapshots and creates."""

from __future__ import annotations

import os

import pytest
from mcp import Client
from support.faultproxy import FaultProxy
from support.mcp_client import MODES, call_error, call_ok, make_server, structured, text_of

from mcp_server.local import cow
from mcp_server.local.server import RunningBackend

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0 or cow.unavailable_reason() is not None,
                       reason="snapshots need a root backend with devbox disks on a copy-on-write pool"),
]  # fmt: skip


async def _run(mcp: Client, devbox_id: str, command: str) -> str:
    out = structured(await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": command}))
    assert out["exit_status"] == 0, out
    return out["stdout"]


async def test_snapshot_list_restore_and_delete(mcp: Client) -> None:
    box = structured(await call_ok(mcp, "create_devbox", {"network_mode": "none"}))
    await _run(mcp, box["id"], "echo saved > note.txt")
    progress: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    made = await call_ok(mcp, "snapshot_devbox", {"devbox_id": box["id"], "name": "saved", "commit_message": "note"},
                         progress_callback=on_progress)  # fmt: skip
    snap = structured(made)
    assert snap["name"] == "saved" and snap["devbox_id"] == box["id"] and snap["id"] in text_of(made)
    assert progress[-1].startswith(f"snapshot {snap['id']}: complete")
    listed = await call_ok(mcp, "list_snapshots", {"devbox_id": box["id"]})
    assert [s["id"] for s in structured(listed)["snapshots"]] == [snap["id"]] and snap["id"] in text_of(listed)

    copy = structured(await call_ok(mcp, "create_devbox", {"snapshot_id": snap["id"], "network_mode": "none"}))
    assert await _run(mcp, copy["id"], "cat note.txt") == "saved\n"
    refused = await call_error(mcp, "delete_snapshot", {"snapshot_id": snap["id"]})
    assert "409" in refused and copy["id"] in refused
    for devbox in (copy, box):
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": devbox["id"]})
    assert structured(await call_ok(mcp, "delete_snapshot", {"snapshot_id": snap["id"]})) == {"id": snap["id"]}
    assert structured(await call_ok(mcp, "list_snapshots", {"devbox_id": box["id"]}))["snapshots"] == []
    missing = await call_error(mcp, "create_devbox", {"snapshot_id": snap["id"]})
    assert "snapshot_id" in missing


async def test_fork_devbox_returns_running_copies(mcp: Client) -> None:
    box = structured(await call_ok(mcp, "create_devbox", {"network_mode": "none"}))
    await _run(mcp, box["id"], "echo origin > state.txt")
    forked = structured(await call_ok(mcp, "fork_devbox", {"devbox_id": box["id"], "count": 2}))
    assert len(forked["devbox_ids"]) == 2
    for fork in forked["devbox_ids"]:
        assert await _run(mcp, fork, "cat state.txt") == "origin\n"
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": fork})
    assert "count" in await call_error(mcp, "fork_devbox", {"devbox_id": box["id"], "count": 17})
    await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})


@pytest.mark.parametrize("mode", MODES)
async def test_fork_without_a_fork_endpoint_snapshots_and_creates(
    backend: RunningBackend, fault_proxy: FaultProxy, mode: str
) -> None:
    fault_proxy.fail(r"/v1/devboxes/[^/]+/fork$", status=404, times=None, message="Not Found")
    async with Client(make_server(backend, base_url=fault_proxy.url), mode=mode) as mcp:
        box = structured(await call_ok(mcp, "create_devbox", {"name": "cloudlike", "network_mode": "none"}))
        await _run(mcp, box["id"], "echo origin > state.txt")
        progress: list[str] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(message or "")

        forked = structured(await call_ok(mcp, "fork_devbox", {"devbox_id": box["id"], "count": 2},
                                          progress_callback=on_progress))  # fmt: skip
        assert any(m.startswith("snapshot ") for m in progress) and "fork 2/2 running" in " ".join(progress)
        assert fault_proxy.seen(r"/snapshot_disk_async$") and len(fault_proxy.seen(r"^/v1/devboxes$", "POST")) == 3
        for fork in forked["devbox_ids"]:
            assert await _run(mcp, fork, "cat state.txt") == "origin\n"
            await call_ok(mcp, "shutdown_devbox", {"devbox_id": fork})
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})
