"""The axon store: the registry of axons and their open event logs.

Layout under `<data dir>/axons/`: `registry.db` (one row per axon, kept after deletion) and
`<axon id>.db` per axon (its history `rl_axon_events`, user tables, and private tables).
An axon's log (its writer thread and connections) is opened on first use and closed after
`idle_close_seconds` without any request or subscriber, so threads and file handles follow the
axons in use rather than every axon ever used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import apsw

from . import axon_sql
from .axon_log import EventLog, open_database
from .clock import now_ms
from .errors import ApiError
from .ids import new_id

PUBLISHABLE_ORIGINS = ("EXTERNAL_EVENT", "AGENT_EVENT", "USER_EVENT")

# User SQL runs on threads: at most SQL_PER_AXON requests at once per axon, so one axon's slow
# queries cannot take the others' share, and at most SQL_TOTAL at once in all (2 cores; a request
# may run for its whole time budget). Both limiters queue waiters in arrival order.
SQL_PER_AXON = 2
SQL_TOTAL = 8
_SQL_LIMITER = anyio.CapacityLimiter(SQL_TOTAL)


@dataclass(frozen=True)
class AxonRecord:
    id: str
    name: str | None
    created_at_ms: int
    metadata: dict[str, str]
    deleted_at_ms: int | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created_at_ms": self.created_at_ms,
            "metadata": dict(self.metadata),
            "deleted_at_ms": self.deleted_at_ms,
        }


class Registry:
    """Axon records in `registry.db`, mirrored in memory for lookups and listings."""

    def __init__(self, path: Path) -> None:
        self._conn = open_database(path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS axons (id TEXT PRIMARY KEY, name TEXT, created_at_ms INTEGER NOT NULL,"
            " metadata TEXT NOT NULL, deleted_at_ms INTEGER)"
        )
        self._lock = threading.Lock()
        self.records: dict[str, AxonRecord] = {}
        for ident, name, created, metadata, deleted in self._conn.execute(
            "SELECT id, name, created_at_ms, metadata, deleted_at_ms FROM axons ORDER BY created_at_ms, rowid"
        ):
            self.records[ident] = AxonRecord(ident, name, created, json.loads(metadata), deleted)

    def _write(self, record: AxonRecord) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO axons (id, name, created_at_ms, metadata, deleted_at_ms) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.name, record.created_at_ms, json.dumps(record.metadata), record.deleted_at_ms),
            )

    async def save(self, record: AxonRecord) -> AxonRecord:
        """Write on a thread (synced), then publish the record in memory (only the loop touches `records`)."""
        await anyio.to_thread.run_sync(self._write, record)
        self.records[record.id] = record
        return record

    def close(self) -> None:
        self._conn.close()


class AxonStore:
    def __init__(self, root: Path, *, idle_close_seconds: float = 600.0) -> None:
        self.root = root
        self.idle_close_seconds = idle_close_seconds
        self._registry: Registry | None = None
        self._logs: dict[str, EventLog] = {}
        # Per-axon SQL limiters, for axons whose log is open (dropped with the log).
        self._sql_limiters: dict[str, anyio.CapacityLimiter] = {}
        # Held while a log is opened, closed or deleted, so one axon never has two writers.
        self._opening = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        axon_sql.limit_sqlite_memory()
        self._registry = await anyio.to_thread.run_sync(Registry, self.root / "registry.db")
        # Files of axons deleted just before a crash (the record is marked first, then files go).
        for record in self._registry.records.values():
            if record.deleted_at_ms is not None:
                await anyio.to_thread.run_sync(self._remove_files, record.id)
        self._reaper = asyncio.create_task(self._close_idle_logs())

    async def _close_idle_logs(self) -> None:
        period = min(60.0, max(self.idle_close_seconds / 2, 0.05))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for axon_id, log in list(self._logs.items()):
                if log.users == 0 and now - log.last_used >= self.idle_close_seconds:
                    async with self._opening:
                        if self._logs.get(axon_id) is log and log.users == 0:
                            del self._logs[axon_id]
                            self._sql_limiters.pop(axon_id, None)
                            await log.close()

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        logs, self._logs = list(self._logs.values()), {}
        for log in logs:
            await log.close()
        if self._registry is not None:
            self._registry.close()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise ApiError(503, "the axon store is not started yet; retry")
        return self._registry

    # ---- registry --------------------------------------------------------------------------

    def get(self, axon_id: str) -> AxonRecord:
        record = self.registry.records.get(axon_id)
        if record is None:
            raise ApiError(404, f"axon {axon_id!r} not found; list axons to see which ids exist")
        return record

    def all(self) -> list[AxonRecord]:
        """Every axon, deleted ones included, newest first."""
        return list(reversed(self.registry.records.values()))

    async def create(self, name: str | None, metadata: dict[str, str]) -> AxonRecord:
        return await self.registry.save(AxonRecord(new_id("axn"), name, now_ms(), metadata))

    async def update_metadata(self, axon_id: str, metadata: dict[str, str]) -> AxonRecord:
        record = replace(self.get(axon_id), metadata=metadata)
        return await self.registry.save(record)

    async def delete(self, axon_id: str) -> AxonRecord:
        """Delete the event data (history and user tables); the registry record stays, marked deleted."""
        record = self.get(axon_id)
        if record.deleted_at_ms is not None:
            return record
        async with self._opening:
            record = self.get(axon_id)
            if record.deleted_at_ms is not None:
                return record
            record = await self.registry.save(replace(record, deleted_at_ms=now_ms()))
            log = self._logs.pop(axon_id, None)
            self._sql_limiters.pop(axon_id, None)
            if log is not None:
                await log.close(deleted=True)
            await anyio.to_thread.run_sync(self._remove_files, axon_id)
        return record

    def _remove_files(self, axon_id: str) -> None:
        base = self._db_path(axon_id)
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(f"{base}{suffix}")
            except FileNotFoundError:
                pass

    def _db_path(self, axon_id: str) -> Path:
        return self.root / f"{axon_id}.db"

    # ---- event logs ------------------------------------------------------------------------

    async def log(self, axon_id: str) -> EventLog:
        """The axon's open event log (opened on first use); 404 for unknown or deleted axons."""
        log = self._logs.get(axon_id)
        if log is not None:
            return log
        record = self.get(axon_id)
        async with self._opening:
            record = self.get(axon_id)
            if record.deleted_at_ms is not None:
                raise ApiError(
                    404, f"axon {axon_id!r} was deleted with its events; create a new axon (POST /v1/axons)"
                )
            log = self._logs.get(axon_id)
            if log is None:
                loop = asyncio.get_running_loop()
                try:
                    log = await anyio.to_thread.run_sync(
                        EventLog, axon_id, self._db_path(axon_id), loop, axon_sql.open_user_connection
                    )
                except apsw.Error as exc:
                    raise ApiError(
                        503, f"the database of axon {axon_id!r} could not be opened ({exc}); see the backend log"
                    ) from None
                self._logs[axon_id] = log
        return log

    @contextlib.asynccontextmanager
    async def lease(self, axon_id: str) -> AsyncIterator[EventLog]:
        """The axon's open log, kept open (not closed as idle) until the block ends."""
        log = await self.log(axon_id)
        log.users += 1  # no await between getting the log and this: the reaper cannot interleave
        try:
            yield log
        finally:
            log.users -= 1
            log.last_used = time.monotonic()

    # ---- SQL -------------------------------------------------------------------------------

    async def sql_query(self, axon_id: str, stmt: axon_sql.Statement) -> dict[str, Any]:
        async with self.lease(axon_id) as log:

            def run() -> dict[str, Any]:
                with log.sql_pool.connection() as user:
                    return axon_sql.run_query(user, stmt)

            return await self._run_sql(axon_id, run)

    async def sql_batch(self, axon_id: str, statements: list[axon_sql.Statement]) -> list[dict[str, Any]]:
        async with self.lease(axon_id) as log:

            def run() -> list[dict[str, Any]]:
                with log.sql_pool.connection() as user:
                    return axon_sql.run_batch(user, statements)

            return await self._run_sql(axon_id, run)

    def sql_limiter(self, axon_id: str) -> anyio.CapacityLimiter:
        """The axon's own limit on concurrent SQL requests (callers hold a lease on its log)."""
        limiter = self._sql_limiters.get(axon_id)
        if limiter is None:
            limiter = self._sql_limiters[axon_id] = anyio.CapacityLimiter(SQL_PER_AXON)
        return limiter

    async def _run_sql(self, axon_id: str, run: Any) -> Any:
        try:
            async with self.sql_limiter(axon_id):
                return await anyio.to_thread.run_sync(run, limiter=_SQL_LIMITER)
        except axon_sql.SqlError as exc:
            raise ApiError(400, exc.message) from None
        except axon_sql.SqlBusy as exc:
            raise ApiError(503, str(exc)) from None
        except apsw.BusyError:
            raise ApiError(503, "the axon's database stayed locked by other writers; retry") from None
