"""The event log on its own (no HTTP): group commit, and reads that fall back from the tail to disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mcp_server.local import axon_log
from mcp_server.local.axon_log import EventLog
from mcp_server.local.axon_sql import open_user_connection


async def _open(path: Path) -> EventLog:
    return await asyncio.to_thread(EventLog, "axn_test", path, asyncio.get_running_loop(), open_user_connection)


async def _publish(log: EventLog, i: int, request_id: str | None = None) -> int:
    result = await log.publish(origin="USER_EVENT", source="s", event_type="t", payload=str(i), request_id=request_id)
    return result.sequence


@pytest.mark.anyio
async def test_concurrent_publishes_share_commits_and_stay_gapless(tmp_path: Path) -> None:
    log = await _open(tmp_path / "a.db")
    try:
        sequences = await asyncio.gather(*(_publish(log, i) for i in range(300)))
        assert sorted(sequences) == list(range(1, 301))
        assert log.commits < 300  # publishes that arrived together were committed together
        stored = await log.read_after(0, 1000)
        assert [e.sequence for e in stored] == list(range(1, 301))
        assert sorted(int(e.payload) for e in stored) == list(range(300))
    finally:
        await log.close()


@pytest.mark.anyio
async def test_duplicate_request_ids_in_one_group_store_one_event(tmp_path: Path) -> None:
    log = await _open(tmp_path / "a.db")
    try:
        sequences = await asyncio.gather(*(_publish(log, 0, request_id="dup") for _ in range(20)))
        assert set(sequences) == {1}
        assert log.last_sequence == 1
    finally:
        await log.close()


@pytest.mark.anyio
async def test_reads_beyond_the_tail_come_from_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(axon_log, "TAIL_EVENTS", 8)
    log = await _open(tmp_path / "a.db")
    try:
        for i in range(50):
            await _publish(log, i)
        assert log._from_tail(0, 10) is None  # the tail holds only the last 8
        assert [e.sequence for e in await log.read_after(0, 100)] == list(range(1, 51))
        assert [e.sequence for e in await log.read_after(45, 100)] == [46, 47, 48, 49, 50]
        assert [e.sequence for e in await log.read_desc(20, 5)] == [20, 19, 18, 17, 16]
        assert [e.sequence for e in await log.read_desc(50, 3)] == [50, 49, 48]
    finally:
        await log.close()


@pytest.mark.anyio
async def test_reopen_continues_the_sequence(tmp_path: Path) -> None:
    log = await _open(tmp_path / "a.db")
    await _publish(log, 0, request_id="first")
    await _publish(log, 1)
    await log.close()
    log = await _open(tmp_path / "a.db")
    try:
        assert await _publish(log, 0, request_id="first") == 1  # remembered across reopen
        assert await _publish(log, 2) == 3
    finally:
        await log.close()
