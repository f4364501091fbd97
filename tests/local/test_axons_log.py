"""The event log on its own (no HTTP): group commit, reads that fall back from the tail to disk, write turns."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from support.axons import poll_until

from mcp_server.local import axon_log
from mcp_server.local.axon_log import EventLog, WriteTurns
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


# ---- write turns: publishes and user SQL transactions take turns at the write lock ---------------


def _taker(turns: WriteTurns, side: str, order: list[str], name: str) -> threading.Thread:
    def take() -> None:
        assert turns.acquire(side, 10)
        order.append(name)
        turns.release()

    thread = threading.Thread(target=take)
    thread.start()
    return thread


def test_a_waiting_publish_goes_before_the_next_sql_transaction() -> None:
    turns, order = WriteTurns(), []
    assert turns.acquire(WriteTurns.SQL, 0)  # a batch is writing
    publish = _taker(turns, WriteTurns.PUBLISH, order, "publish")
    assert poll_until(lambda: turns.waiting(WriteTurns.PUBLISH) == 1)
    batches = [_taker(turns, WriteTurns.SQL, order, f"batch{i}") for i in range(3)]
    assert poll_until(lambda: turns.waiting(WriteTurns.SQL) == 3)
    turns.release()
    for thread in (publish, *batches):
        thread.join(10)
    assert order[0] == "publish"  # however many batches queued behind the one that was writing


def test_a_waiting_sql_transaction_goes_after_one_commit_however_many_publishes_wait() -> None:
    turns, order = WriteTurns(), []
    assert turns.acquire(WriteTurns.PUBLISH, 0)  # the writer is committing a group
    batch = _taker(turns, WriteTurns.SQL, order, "batch")
    assert poll_until(lambda: turns.waiting(WriteTurns.SQL) == 1)
    publish = _taker(turns, WriteTurns.PUBLISH, order, "publish")
    assert poll_until(lambda: turns.waiting(WriteTurns.PUBLISH) == 1)
    turns.release()
    batch.join(10)
    publish.join(10)
    assert order == ["batch", "publish"]


def test_a_turn_that_does_not_come_in_time_is_refused_and_lets_the_others_go() -> None:
    turns, order = WriteTurns(), []
    assert turns.acquire(WriteTurns.SQL, 0)
    assert turns.acquire(WriteTurns.PUBLISH, 0.01) is False
    assert turns.waiting(WriteTurns.PUBLISH) == 0
    turns.release()
    assert turns.acquire(WriteTurns.SQL, 0)  # the publish that gave up holds nothing back
    turns.release()
    _taker(turns, WriteTurns.PUBLISH, order, "publish").join(10)
    assert order == ["publish"]
