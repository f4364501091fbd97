"""The axon store: the registry of axons and their open event logs.

Layout under `<data dir>/axons/`: `registry.db` (one row per axon, kept after deletion) and
`<axon id>.db` per axon (its history `rl_axon_events`, user tables, and private tables).
An axon's log is opened on first use and stays open until shutdown or deletion.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import apsw

from . import axon_sql
from .axon_log import EventLog, now_ms, open_database
from .errors import ApiError
from .ids import new_id

PUBLISHABLE_ORIGINS = ("EXTERNAL_EVENT", "AGENT_EVENT", "USER_EVENT")

# User SQL runs on threads, at most this many at once (2 cores; a query may take its full time limit).
_SQL_LIMITER = anyio.CapacityLimiter(4)


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
    def __init__(self, root: Path) -> None:
        self.root = root
        self._registry: Registry | None = None
        self._logs: dict[str, EventLog] = {}
        self._opening = asyncio.Lock()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._registry = await anyio.to_thread.run_sync(Registry, self.root / "registry.db")

    async def stop(self) -> None:
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
            raise ApiError(404, f"axon {axon_id!r} not found; list axons (GET /v1/axons) to see which ids exist")
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
            record = await self.registry.save(replace(record, deleted_at_ms=now_ms()))
            log = self._logs.pop(axon_id, None)
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
                log = await anyio.to_thread.run_sync(
                    EventLog, axon_id, self._db_path(axon_id), loop, axon_sql.open_user_connection
                )
                self._logs[axon_id] = log
        return log

    # ---- SQL -------------------------------------------------------------------------------

    async def sql_query(self, axon_id: str, stmt: axon_sql.Statement) -> dict[str, Any]:
        log = await self.log(axon_id)

        def run() -> dict[str, Any]:
            with log.sql_pool.connection() as user:
                return axon_sql.run_query(user, stmt)

        return await self._run_sql(run)

    async def sql_batch(self, axon_id: str, statements: list[axon_sql.Statement]) -> list[dict[str, Any]]:
        log = await self.log(axon_id)

        def run() -> list[dict[str, Any]]:
            with log.sql_pool.connection() as user:
                return axon_sql.run_batch(user, statements)

        return await self._run_sql(run)

    @staticmethod
    async def _run_sql(run: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(run, limiter=_SQL_LIMITER)
        except axon_sql.SqlError as exc:
            raise ApiError(400, exc.message) from None
        except apsw.BusyError:
            raise ApiError(503, "the axon's database stayed locked by other writers; retry") from None
