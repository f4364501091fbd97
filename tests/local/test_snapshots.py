"""Disk snapshots, devboxes started from them, and forks, on the embedded backend (snapshots.py, captures.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest
from runloop_api_client import BadRequestError, ConflictError, NotFoundError, Runloop

from mcp_server.local import cow
from mcp_server.local.config import LocalConfig
from mcp_server.local.devboxes import DevboxManager
from mcp_server.local.errors import ApiError
from mcp_server.local.sandbox import sandbox_unavailable_reason
from mcp_server.local.server import start_in_thread

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or sandbox_unavailable_reason() is not None or cow.unavailable_reason() is not None,
    reason="snapshots need a root backend with devbox disks on a copy-on-write pool",
)
NO_NET = {"network_mode": "none"}


def run(sdk: Runloop, devbox_id: str, command: str) -> str:
    result = sdk.devboxes.execute_and_await_completion(devbox_id, command=command)
    assert result.exit_status == 0, (command, result.stdout, result.stderr)
    return result.stdout or ""


def test_the_official_client_snapshots_lists_restores_and_deletes(sdk: Runloop) -> None:
    source = sdk.devboxes.create_and_await_running(launch_parameters=NO_NET)
    run(sdk, source.id, "echo before > note.txt && sudo sh -c 'echo system > /etc/snapshot-marker'")
    snap = sdk.devboxes.snapshot_disk(source.id, name="before", metadata={"team": "a", "step": "1"},
                                      commit_message="the note says before")  # fmt: skip
    assert snap.source_devbox_id == source.id and snap.name == "before" and snap.metadata == {"team": "a", "step": "1"}
    assert snap.commit_message == "the note says before" and snap.size_bytes is not None and snap.size_bytes > 0
    run(sdk, source.id, "echo after > note.txt")  # the devbox runs on; the snapshot does not change

    listed = sdk.devboxes.disk_snapshots.list(devbox_id=source.id)
    assert [s.id for s in listed.snapshots] == [snap.id]
    by_meta = sdk.devboxes.disk_snapshots.list(extra_query={"metadata[team]": "a", "metadata[step][in]": "0,1"})
    assert [s.id for s in by_meta.snapshots] == [snap.id]
    assert sdk.devboxes.disk_snapshots.list(extra_query={"metadata[team]": "b"}).snapshots == []
    assert sdk.devboxes.disk_snapshots.query_status(snap.id).status == "complete"

    restored = sdk.devboxes.create_and_await_running(snapshot_id=snap.id, launch_parameters=NO_NET)
    assert restored.snapshot_id == snap.id and restored.status == "running"
    assert run(sdk, restored.id, "cat note.txt /etc/snapshot-marker; whoami") == "before\nsystem\nuser\n"
    run(sdk, restored.id, "echo restored > note.txt")
    assert run(sdk, source.id, "cat note.txt") == "after\n"  # two disks: neither sees the other's writes

    updated = sdk.devboxes.disk_snapshots.update(snap.id, name="renamed", metadata={"team": "b"})
    assert updated.name == "renamed" and updated.metadata == {"team": "b"}
    assert updated.commit_message == "the note says before"  # not given: kept

    with pytest.raises(ConflictError, match=f"in use by devbox {restored.id}"):
        sdk.devboxes.disk_snapshots.delete(snap.id)
    sdk.devboxes.shutdown(restored.id)
    sdk.devboxes.disk_snapshots.delete(snap.id)
    assert sdk.devboxes.disk_snapshots.query_status(snap.id).status == "deleted"
    with pytest.raises(BadRequestError, match="snapshot_id"):
        sdk.devboxes.create(snapshot_id=snap.id)
    with pytest.raises(NotFoundError):
        sdk.devboxes.disk_snapshots.update(snap.id, name="gone")
    sdk.devboxes.shutdown(source.id)


def test_an_async_snapshot_reports_its_status_and_outlives_its_devbox(sdk: Runloop) -> None:
    source = sdk.devboxes.create_and_await_running(launch_parameters=NO_NET)
    run(sdk, source.id, "echo kept > kept.txt")
    started = sdk.devboxes.snapshot_disk_async(source.id, name="async")
    done = sdk.devboxes.disk_snapshots.await_completed(started.id)
    assert done.status == "complete" and done.snapshot is not None and done.snapshot.id == started.id
    sdk.devboxes.shutdown(source.id)  # its disk goes; the snapshot stays
    restored = sdk.devboxes.create_and_await_running(snapshot_id=started.id, launch_parameters=NO_NET)
    assert run(sdk, restored.id, "cat kept.txt") == "kept\n"
    sdk.devboxes.shutdown(restored.id)
    sdk.devboxes.disk_snapshots.delete(started.id)


def test_a_snapshot_of_a_file_being_written_is_never_torn(sdk: Runloop) -> None:
    """A process rewrites a 4 MiB file in place, one write() of one repeated byte each time; every
    snapshot holds one whole version of it (the devbox's processes and filesystem are frozen)."""
    source = sdk.devboxes.create_and_await_running(launch_parameters=NO_NET)
    writer = (
        "import os\n"
        "fd = os.open('big.bin', os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "open('started', 'w').close()\n"
        "i = 0\n"
        "while True:\n"
        "    os.pwrite(fd, bytes([65 + i % 26]) * (4 << 20), 0)\n"
        "    i += 1\n"
    )
    sdk.devboxes.write_file_contents(source.id, file_path="writer.py", contents=writer)
    sdk.devboxes.execute_async(source.id, command="python3 writer.py")
    run(sdk, source.id, "while [ ! -e started ]; do sleep 0.05; done; while [ $(stat -c %s big.bin) -lt 4194304 ]; do sleep 0.05; done")
    snapshots = [sdk.devboxes.snapshot_disk(source.id) for _ in range(3)]
    check = "python3 -c \"d = open('big.bin', 'rb').read(); print(len(d), len(set(d)))\""
    assert run(sdk, source.id, "pgrep -f writer.py >/dev/null && echo writing") == "writing\n"  # thawed, runs on
    for snap in snapshots:
        copy = sdk.devboxes.create_and_await_running(snapshot_id=snap.id, launch_parameters=NO_NET)
        assert run(sdk, copy.id, check) == f"{4 << 20} 1\n"
        sdk.devboxes.shutdown(copy.id)
        sdk.devboxes.disk_snapshots.delete(snap.id)
    sdk.devboxes.shutdown(source.id)


def test_a_fork_is_count_running_copies_each_on_its_own_disk(http: httpx.Client, sdk: Runloop) -> None:
    source = sdk.devboxes.create_and_await_running(name="origin", launch_parameters=NO_NET,
                                                   environment_variables={"TASK": "fork-me"})  # fmt: skip
    run(sdk, source.id, "echo state > state.txt")
    r = http.post(f"/v1/devboxes/{source.id}/fork", json={"count": 3, "name_prefix": "try"})
    assert r.status_code == 200, r.text
    forks = r.json()["devboxes"]
    assert [f["name"] for f in forks] == ["try-1", "try-2", "try-3"] and {f["status"] for f in forks} == {"running"}
    for index, fork in enumerate(forks):
        assert run(sdk, fork["id"], f"cat state.txt; echo $TASK; echo {index} > state.txt") == "state\nfork-me\n"
    assert [run(sdk, f["id"], "cat state.txt") for f in forks] == ["0\n", "1\n", "2\n"]
    assert run(sdk, source.id, "cat state.txt") == "state\n"
    for bad in ({"count": 0}, {"count": 17}, {"count": "two"}, {"count": 1, "extra": 1}):
        refused = http.post(f"/v1/devboxes/{source.id}/fork", json=bad)
        assert refused.status_code == 400, (bad, refused.text)
    for fork in forks:
        sdk.devboxes.shutdown(fork["id"])
    sdk.devboxes.shutdown(source.id)


def test_a_retried_snapshot_or_fork_acts_once(http: httpx.Client, sdk: Runloop) -> None:
    """The SDK retries a POST with the same x-request-id: the retry gets the first answer."""
    box = sdk.devboxes.create_and_await_running(launch_parameters=NO_NET)
    headers = {"x-request-id": f"snap-retry-{os.getpid()}"}
    first = http.post(f"/v1/devboxes/{box.id}/snapshot_disk", json={}, headers=headers).json()
    again = http.post(f"/v1/devboxes/{box.id}/snapshot_disk", json={}, headers=headers).json()
    assert first["id"] == again["id"]
    assert [s.id for s in sdk.devboxes.disk_snapshots.list(devbox_id=box.id).snapshots] == [first["id"]]
    headers = {"x-request-id": f"fork-retry-{os.getpid()}"}
    forks = http.post(f"/v1/devboxes/{box.id}/fork", json={"count": 1}, headers=headers).json()["devboxes"]
    assert http.post(f"/v1/devboxes/{box.id}/fork", json={"count": 1}, headers=headers).json()["devboxes"] == forks
    for devbox_id in (forks[0]["id"], box.id):
        sdk.devboxes.shutdown(devbox_id)
    sdk.devboxes.disk_snapshots.delete(first["id"])


def test_metadata_keys_and_values_of_snapshots_and_devboxes(http: httpx.Client, sdk: Runloop) -> None:
    box = sdk.devboxes.create_and_await_running(launch_parameters=NO_NET, metadata={"kv-test-owner": "ann"})
    snap = sdk.devboxes.snapshot_disk(box.id, metadata={"kv-test-stage": "green"})
    assert "kv-test-owner" in http.get("/v1/devboxes/metadata/keys").json()["keys"]
    assert http.get("/v1/devboxes/metadata/keys/kv-test-owner/values").json() == {"key": "kv-test-owner", "values": ["ann"]}
    assert "kv-test-stage" in http.get("/v1/devboxes/disk_snapshots/metadata/keys").json()["keys"]
    values = http.get("/v1/devboxes/disk_snapshots/metadata/keys/kv-test-stage/values").json()
    assert values == {"key": "kv-test-stage", "values": ["green"]}
    assert http.get("/v1/devboxes/disk_snapshots/public/metadata/keys").json() == {"keys": []}
    assert http.get("/v1/devboxes/disk_snapshots/list_public").json() == {"snapshots": [], "has_more": False, "total_count": 0}
    assert http.get("/v1/devboxes/disk_snapshots", params={"devbox_id": "dbx_nope"}).status_code == 404
    sdk.devboxes.shutdown(box.id)
    sdk.devboxes.disk_snapshots.delete(snap.id)


def test_create_from_a_snapshot_shares_its_blocks(tmp_path: Path) -> None:
    """Copy-on-write: two devboxes from a snapshot of 64 MiB of data add far less than 64 MiB to the pool."""
    backend = start_in_thread(tmp_path / "data")
    try:
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        source = sdk.devboxes.create_and_await_running(launch_parameters=NO_NET)
        run(sdk, source.id, "head -c 64M /dev/urandom > data.bin && sync")
        snap = sdk.devboxes.snapshot_disk(source.id)
        pool = tmp_path / "data" / "cow" / "fs"
        before = _used(pool)
        copies = [sdk.devboxes.create_and_await_running(snapshot_id=snap.id, launch_parameters=NO_NET) for _ in range(2)]
        for copy in copies:
            assert run(sdk, copy.id, "stat -c %s data.bin") == f"{64 << 20}\n"
        assert _used(pool) - before < 16 << 20
    finally:
        backend.stop()


def _used(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_snapshots_survive_a_backend_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    backend = start_in_thread(data_dir)
    try:
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        source = sdk.devboxes.create_and_await_running(launch_parameters=NO_NET)
        run(sdk, source.id, "echo durable > d.txt")
        snap = sdk.devboxes.snapshot_disk(source.id, name="durable")
        api_key = backend.api_key
    finally:
        backend.stop()
    backend = start_in_thread(data_dir, api_key=api_key)
    try:
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        assert [s.name for s in sdk.devboxes.disk_snapshots.list().snapshots] == ["durable"]
        restored = sdk.devboxes.create_and_await_running(snapshot_id=snap.id, launch_parameters=NO_NET)
        assert run(sdk, restored.id, "cat d.txt") == "durable\n"
    finally:
        backend.stop()


def test_shutdown_during_a_snapshot_is_409_unless_forced(tmp_path: Path) -> None:
    """The capture waits for the devbox's lock (held here), so it is in progress when shutdown comes."""

    async def scenario() -> None:
        manager = DevboxManager(LocalConfig(data_dir=tmp_path / "data", api_key="k"))
        await manager.startup()
        try:
            devbox = manager.create(name=None, environment_variables={}, launch_parameters=dict(NO_NET), metadata={})
            await manager.wait_for_status(devbox.id, ["running"], 60)
            async with manager._lock(devbox.id):
                capture = asyncio.ensure_future(manager.capture(devbox.id, manager.capture_path("snapshots", "t")))
                await asyncio.sleep(0)  # let it register and queue for the lock
                assert manager.capturing(devbox.id)
                with pytest.raises(ApiError) as refused:
                    await manager.shutdown_devbox(devbox.id, force=False)
                assert refused.value.status == 409 and "force=true" in refused.value.message
                forced = asyncio.ensure_future(manager.shutdown_devbox(devbox.id, force=True))
            made = await capture
            assert (await forced).status == "shutdown" and made.image.exists()
        finally:
            await manager.shutdown()

    asyncio.run(scenario())

