"""One axon's event log: its SQLite file, the single writer thread, and the live tail.

Why a writer thread per axon: every publish that arrives while the previous commit is
being synced joins the next transaction (group commit), so throughput grows with the
number of publishers while each publish is still acknowledged only after the commit that
holds it is on disk (WAL, `synchronous=FULL`). The event loop never waits on SQLite.

Why a bounded in-memory tail plus per-subscriber cursors instead of per-subscriber queues:
a live subscriber reads new events from the shared tail; one that fell behind further than
the tail reads pages from SQLite. Either way a subscriber holds only its cursor and one
page, so a slow reader costs nothing to publishers or to other readers, and memory stays
bounded however many events it is behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import anyio
import apsw

from .clock import now_ms
from .errors import ApiError

log = logging.getLogger("devbox_mcp.local")

EVENTS_TABLE = "rl_axon_events"
PRIVATE_PREFIX = "rl_private_"
REQUESTS_TABLE = PRIVATE_PREFIX + "publish_requests"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    sequence INTEGER PRIMARY KEY,
    timestamp_ms INTEGER NOT NULL,
    origin TEXT NOT NULL,
    source TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL
);
-- Filters and counts by event type are the common questions; the index makes them index-only scans.
CREATE INDEX IF NOT EXISTS rl_axon_events_by_type ON {EVENTS_TABLE} (event_type);
CREATE TABLE IF NOT EXISTS {REQUESTS_TABLE} (
    request_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""

EVENT_COLUMNS = "sequence, timestamp_ms, origin, source, event_type, payload"

# SQLite's busy timeout, a safety net: the writer and user SQL take turns (WriteTurns) before they
# write, so neither meets the other's write lock. Also how long either waits for its turn.
BUSY_TIMEOUT_MS = 30_000
WAL_CHECKPOINT_PAGES = 200
# At most this many publishes share one transaction.
MAX_GROUP = 2_000
# A commit waits at most this long for the publishers of the previous one to come back.
MAX_GROUP_WAIT = 0.002
# The shared live tail keeps at most this many recent events, and at most this many payload bytes.
TAIL_EVENTS = 4_096
TAIL_BYTES = 8 * 1024 * 1024
# One page read for a subscriber or a listing: at most this many events, and stops after this many bytes.
PAGE_EVENTS = 500
PAGE_BYTES = 1024 * 1024
# A commit that ran out of SQLite heap is tried again after each of these pauses (seconds).
NOMEM_RETRY_PAUSES = (0.01, 0.05, 0.2)
# Idempotency records older than this are pruned (at open, and every PRUNE_EVERY publishes).
REQUEST_ID_TTL_MS = 24 * 3600 * 1000
PRUNE_EVERY = 100_000

# Page reads for subscribers and listings run on threads, but never more than this many at once.
_READ_LIMITER = anyio.CapacityLimiter(8)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    sequence: int
    timestamp_ms: int
    origin: str
    source: str
    event_type: str
    payload: str

    def view(self, axon_id: str) -> dict[str, Any]:
        return {
            "axon_id": axon_id,
            "sequence": self.sequence,
            "timestamp_ms": self.timestamp_ms,
            "origin": self.origin,
            "source": self.source,
            "event_type": self.event_type,
            "payload": self.payload,
        }


@dataclass(frozen=True, slots=True)
class PublishResult:
    sequence: int
    timestamp_ms: int


@dataclass(slots=True)
class _Publish:
    origin: str
    source: str
    event_type: str
    payload: str
    request_id: str | None
    future: asyncio.Future[PublishResult]


_STOP = object()


def open_database(path: Path) -> apsw.Connection:
    """A connection in WAL mode whose commits are synced before they return."""
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    list(conn.execute("PRAGMA journal_mode=WAL"))
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class WriteTurns:
    """Whose turn it is to write the axon's database: the writer thread, or one user SQL transaction.

    SQLite's write lock is not fair: a writer that finds it taken retries on a timer, so user
    transactions that follow one another closely can keep publishes waiting as long as they
    keep coming (the busy timeout, then 503). So both sides take a turn here before they write
    and hold it until they commit, and when both wait, the side that did not write last goes
    next: a publish waits for at most one user transaction (bounded by the SQL time budget),
    and a user transaction for at most one group commit plus the user transactions ahead of it.
    """

    PUBLISH = "publish"
    SQL = "sql"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: str | None = None
        self._last = self.SQL
        self._waiting = {self.PUBLISH: 0, self.SQL: 0}

    def acquire(self, side: str, timeout: float | None) -> bool:
        """Wait (at most `timeout` seconds) for `side`'s turn; False if it did not come."""
        other = self.SQL if side == self.PUBLISH else self.PUBLISH
        with self._cond:
            self._waiting[side] += 1
            try:
                got = self._cond.wait_for(
                    lambda: self._holder is None and (self._waiting[other] == 0 or self._last == other), timeout
                )
                if got:
                    self._holder = self._last = side
                return got
            finally:
                self._waiting[side] -= 1
                if self._holder != side:
                    self._cond.notify_all()  # one waiter fewer may let the other side go

    def release(self) -> None:
        with self._cond:
            self._holder = None
            self._cond.notify_all()

    def waiting(self, side: str) -> int:
        """How many of `side` wait for a turn now (observability, and tests)."""
        with self._cond:
            return self._waiting[side]

    @property
    def holder(self) -> str | None:
        return self._holder


class Closeable(Protocol):
    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Closeable)


class ConnectionPool(Generic[C]):
    """Idle connections to one database, each handed to one thread at a time."""

    def __init__(self, factory: Callable[[], C], keep: int = 4) -> None:
        self._factory = factory
        self._keep = keep
        self._idle: list[C] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[C]:
        with self._lock:
            if self._closed:
                raise ApiError(404, "this axon's event data was deleted (or the backend is shutting down)")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._factory()
        try:
            yield conn
        finally:
            with self._lock:
                if not self._closed and len(self._idle) < self._keep and not conn.in_transaction:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _read_page(conn: apsw.Connection, sql: str, args: tuple[int, ...]) -> list[StoredEvent]:
    page: list[StoredEvent] = []
    size = 0
    cursor = conn.cursor()
    try:
        for row in cursor.execute(sql, args):
            page.append(StoredEvent(*row))
            size += len(row[5])
            if size >= PAGE_BYTES:
                break
    finally:
        # Reset the statement now: a pooled connection with an unfinished read would pin an old
        # snapshot and keep the WAL from being recycled.
        cursor.close(force=True)
    return page


class EventLog:
    """An open axon: append (on its writer thread), read pages, and wake subscribers."""

    def __init__(
        self,
        axon_id: str,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        sql_connection: Callable[[Path, WriteTurns], Closeable],
    ) -> None:
        self.axon_id = axon_id
        self.path = path
        self._loop = loop
        self._conn = open_database(path)
        # A small WAL (checkpointed every ~800 KB) is rewritten in place soon after start; while a
        # WAL file is still growing, every synced commit also waits for the filesystem's metadata.
        list(self._conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}"))
        self._conn.execute(SCHEMA)
        row = self._conn.execute(f"SELECT max(sequence), max(timestamp_ms) FROM {EVENTS_TABLE}").fetchone()
        self._committed = row[0] or 0
        self._last_ts = row[1] or 0
        self._prune_requests()
        self._since_prune = 0
        self._readers: ConnectionPool[apsw.Connection] = ConnectionPool(self._open_reader)
        # Connections for user SQL (guarded, read/write for user tables), separate from the writer's.
        self.turns = WriteTurns()
        self.sql_pool: ConnectionPool[Any] = ConnectionPool(lambda: sql_connection(path, self.turns))
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Loop-side state: the highest sequence the loop knows is committed, and the recent events.
        self.last_sequence = self._committed
        self.closed = False
        self.deleted = False
        # Requests and subscriptions using this log right now, and when the last one ended:
        # the store closes logs nobody used for a while (see AxonStore.lease).
        self.users = 0
        self.last_used = time.monotonic()
        self.commits = 0  # transactions the writer committed (observability: group commit at work)
        self._tail: deque[StoredEvent] = deque()
        self._tail_bytes = 0
        self._changed = asyncio.Event()
        self._thread = threading.Thread(target=self._write_loop, name=f"axon-writer-{axon_id}", daemon=True)
        self._thread.start()

    # ---- writer thread -------------------------------------------------------------------

    def _open_reader(self) -> apsw.Connection:
        conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        return conn

    def _prune_requests(self) -> None:
        self._conn.execute(f"DELETE FROM {REQUESTS_TABLE} WHERE timestamp_ms < ?", (now_ms() - REQUEST_ID_TTL_MS,))

    def _write_loop(self) -> None:
        stop = False
        last_group = 1  # how many publishes the previous commit held
        last_commit = 0.0  # and how long it took, in seconds
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            # Publishers acknowledged by the previous commit send their next event about one
            # round trip later. Without waiting for them, they would miss this commit and wait
            # for the one after it, halving throughput when syncs are slow; so while the group is
            # smaller than the last one, wait a little (at most half a sync, at most 2 ms) for them.
            deadline = time.monotonic() + min(last_commit / 2, MAX_GROUP_WAIT)
            while len(batch) < MAX_GROUP:
                try:
                    if len(batch) < last_group:
                        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    else:
                        item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            started = time.monotonic()
            try:
                outcomes, new_events = self._commit_retrying(batch)
            except Exception as exc:  # noqa: BLE001 - every failure is reported to the publishers
                log.exception("axon %s: could not store %d events", self.axon_id, len(batch))
                self._call_on_loop(self._fail, batch, f"could not store the event ({exc}); it was not published, retry")
            else:
                self.commits += 1
                self._call_on_loop(self._deliver, batch, outcomes, new_events)
            last_commit = time.monotonic() - started
            last_group = len(batch)
        self._conn.close()

    def _commit_retrying(self, batch: list[_Publish]) -> tuple[list[PublishResult], list[StoredEvent]]:
        """`_commit` in the writer's turn, tried again when SQLite's heap is momentarily full.

        The query that filled the heap (see axon_sql.SQLITE_HARD_HEAP_BYTES) fails at once and
        frees its memory; the publishes need not fail with it.
        """
        if not self.turns.acquire(WriteTurns.PUBLISH, BUSY_TIMEOUT_MS / 1000):
            raise TimeoutError(f"user SQL kept the database busy for {BUSY_TIMEOUT_MS / 1000:g} s")
        try:
            for pause in NOMEM_RETRY_PAUSES:
                try:
                    return self._commit(batch)
                except apsw.NoMemError:
                    time.sleep(pause)
            return self._commit(batch)
        finally:
            self.turns.release()

    def _commit(self, batch: list[_Publish]) -> tuple[list[PublishResult], list[StoredEvent]]:
        seq, ts = self._committed, self._last_ts
        outcomes: list[PublishResult] = []
        new_events: list[StoredEvent] = []
        seen: dict[str, PublishResult] = {}
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for p in batch:
                if p.request_id is not None:
                    hit = seen.get(p.request_id)
                    if hit is None:
                        row = cur.execute(
                            f"SELECT sequence, timestamp_ms FROM {REQUESTS_TABLE} WHERE request_id = ?", (p.request_id,)
                        ).fetchone()
                        hit = PublishResult(*row) if row else None
                    if hit is not None:
                        outcomes.append(hit)
                        continue
                seq += 1
                ts = max(ts, now_ms())
                event = StoredEvent(seq, ts, p.origin, p.source, p.event_type, p.payload)
                cur.execute(
                    f"INSERT INTO {EVENTS_TABLE} ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, ts, p.origin, p.source, p.event_type, p.payload),
                )
                result = PublishResult(seq, ts)
                if p.request_id is not None:
                    cur.execute(f"INSERT INTO {REQUESTS_TABLE} VALUES (?, ?, ?)", (p.request_id, seq, ts))
                    seen[p.request_id] = result
                outcomes.append(result)
                new_events.append(event)
            self._since_prune += len(new_events)
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self._prune_requests()
            cur.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._committed, self._last_ts = seq, ts
        return outcomes, new_events

    def _call_on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is gone (shutdown): nobody is waiting any more
            pass

    # ---- loop side -----------------------------------------------------------------------

    def _deliver(self, batch: list[_Publish], outcomes: list[PublishResult], new_events: list[StoredEvent]) -> None:
        for event in new_events:
            self._tail.append(event)
            self._tail_bytes += len(event.payload)
        while self._tail and (len(self._tail) > TAIL_EVENTS or self._tail_bytes > TAIL_BYTES):
            self._tail_bytes -= len(self._tail.popleft().payload)
        if new_events:
            self.last_sequence = new_events[-1].sequence
            self._notify()
        for p, outcome in zip(batch, outcomes, strict=True):
            if not p.future.done():
                p.future.set_result(outcome)

    def _fail(self, batch: list[_Publish], message: str) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(ApiError(503, message))

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def publish(
        self, *, origin: str, source: str, event_type: str, payload: str, request_id: str | None
    ) -> PublishResult:
        """Append one event; returns once it is committed to disk (or its request id already was)."""
        if self.closed:
            if self.deleted:
                raise ApiError(404, f"axon {self.axon_id!r} was deleted; create a new axon to publish to")
            raise ApiError(503, "the backend is shutting down; retry against its next start")
        future: asyncio.Future[PublishResult] = self._loop.create_future()
        self._queue.put(_Publish(origin, source, event_type, payload, request_id, future))
        return await future

    def changed(self) -> asyncio.Event:
        """An event set at the next append (or close); take it before checking `last_sequence`."""
        return self._changed

    def _from_tail(self, after: int, limit: int) -> list[StoredEvent] | None:
        if not self._tail or after + 1 < self._tail[0].sequence:
            return None
        start = after + 1 - self._tail[0].sequence
        return list(islice(self._tail, start, start + limit))

    async def read_after(self, after: int, limit: int = PAGE_EVENTS) -> list[StoredEvent]:
        """Events with sequence > `after`, oldest first: from the tail when it has them, else from disk."""
        page = self._from_tail(after, limit)
        if page is not None:
            return page
        return await self._read(
            f"SELECT {EVENT_COLUMNS} FROM {EVENTS_TABLE} WHERE sequence > ? ORDER BY sequence LIMIT ?", (after, limit)
        )

    async def read_desc(self, top: int, limit: int) -> list[StoredEvent]:
        """Events with sequence <= `top`, newest first (at most `limit`)."""
        low = max(1, top - limit + 1)
        if self._tail and self._tail[0].sequence <= low and top <= self.last_sequence:
            first = self._tail[0].sequence
            return [self._tail[seq - first] for seq in range(top, low - 1, -1)]
        return await self._read(
            f"SELECT {EVENT_COLUMNS} FROM {EVENTS_TABLE} WHERE sequence <= ? ORDER BY sequence DESC LIMIT ?",
            (top, limit),
        )

    async def _read(self, sql: str, args: tuple[int, ...]) -> list[StoredEvent]:
        def run() -> list[StoredEvent]:
            with self._readers.connection() as conn:
                return _read_page(conn, sql, args)

        return await anyio.to_thread.run_sync(run, limiter=_READ_LIMITER)

    async def close(self, *, deleted: bool = False) -> None:
        """Stop accepting publishes, let the writer finish what it accepted, and wake subscribers."""
        if self.closed:
            return
        self.closed = True
        self.deleted = deleted
        self._queue.put(_STOP)
        self._notify()
        await anyio.to_thread.run_sync(self._thread.join)
        self._readers.close()
        self.sql_pool.close()
