"""The user SQL surface of an axon: guards, limits, and the shape of results.

Users get a read/write SQLite connection to the axon's database so they can keep their own
tables next to the history. What keeps that safe:

- An authorizer on every user connection: `rl_axon_events` may be read but not written,
  dropped, altered, indexed or given triggers (the history is append-only and only the
  writer thread appends); `rl_private_*` tables are invisible; ATTACH (and so VACUUM),
  PRAGMAs other than read-only introspection, temporary objects (TEMP or in the temp
  schema), transaction control and `load_extension` are refused. The backend's own
  BEGIN/COMMIT bypass the statement cache, so the authorizer sees every user statement.
- A time budget (`TIME_LIMIT_SECONDS`) for a query, and one for a batch as a whole, enforced
  by a progress handler and before each statement; a batch over it is refused as a whole.
- A row limit (`ROW_LIMIT` rows, or as many as fit in `RESULT_BYTES_LIMIT` bytes of JSON,
  counted value by value; reported as `rows_read_limit_reached: true`).
- Memory: no value is larger than `VALUE_BYTES_LIMIT` (SQLite's own length limit, so a huge
  value is refused before it exists), a first row larger than `RESULT_BYTES_LIMIT` is an
  error, and SQLite's heap in the process is capped (`SQLITE_HARD_HEAP_BYTES`) for rows of
  many large values, which SQLite builds whole before any of it reaches Python.
- Each call runs in its own transaction: a query commits or leaves nothing; a batch is all
  or nothing. A write transaction takes the axon's write turn (`WriteTurns`) before its
  first write and keeps it until it ends, so publishes wait for at most one transaction.

Values come back as JSON: INTEGER as numbers, REAL as numbers (non-finite ones as the
strings "Infinity", "-Infinity"), TEXT as strings, NULL as null, BLOB as base64 strings.
Column types are the declared types reduced to SQLite's affinities (TEXT, INTEGER, REAL,
BLOB) and "" for expressions, untyped and NUMERIC columns.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from .axon_log import BUSY_TIMEOUT_MS, EVENTS_TABLE, PRIVATE_PREFIX, WriteTurns, open_database

ROW_LIMIT = 10_000
# The JSON of a result's rows (as sent) stops at this size; a single row larger than this is an error.
RESULT_BYTES_LIMIT = 16 * 1024 * 1024
# SQLite's length limit on user connections: no string or BLOB (bound, computed or read) and no
# row written to a table is larger. An event's payload (at most 1 MiB) fits.
VALUE_BYTES_LIMIT = 4 * 1024 * 1024
# SQLite's heap in this process, for every connection: past the soft limit page caches recycle
# pages instead of growing; past the hard limit an allocation fails (SQLITE_NOMEM) and the query
# needing it stops. Bounds what wide rows of large values cost, which the length limit alone cannot.
SQLITE_SOFT_HEAP_BYTES = 256 * 1024 * 1024
SQLITE_HARD_HEAP_BYTES = 512 * 1024 * 1024
# The time budget of one query, and of one batch as a whole (not per statement).
TIME_LIMIT_SECONDS = 5.0
# How long a write waits for its turn (WriteTurns) before the request gets a 503.
TURN_WAIT_SECONDS = BUSY_TIMEOUT_MS / 1000
MAX_STATEMENTS = 1_000

_HISTORY_HINT = (
    f"{EVENTS_TABLE} is the append-only event history: SQL may read it but not insert, update, delete, "
    "drop, alter, index or add triggers to it; publish events through POST /v1/axons/{id}/publish"
)

# PRAGMAs that only describe the schema; anything else (and any PRAGMA assignment) is refused.
_READ_ONLY_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "collation_list",
        "function_list",
        "module_list",
        "pragma_list",
    }
)
_REFUSED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer"})
# Operations whose first argument names the table (or view) they touch ...
_NAME_FIRST = {
    apsw.SQLITE_READ,
    apsw.SQLITE_INSERT,
    apsw.SQLITE_UPDATE,
    apsw.SQLITE_DELETE,
    apsw.SQLITE_DROP_TABLE,
    apsw.SQLITE_CREATE_TABLE,
    apsw.SQLITE_CREATE_VIEW,
    apsw.SQLITE_DROP_VIEW,
    apsw.SQLITE_CREATE_VTABLE,
    apsw.SQLITE_DROP_VTABLE,
}
# ... and those whose second argument does.
_NAME_SECOND = {
    apsw.SQLITE_ALTER_TABLE,
    apsw.SQLITE_CREATE_INDEX,
    apsw.SQLITE_DROP_INDEX,
    apsw.SQLITE_CREATE_TRIGGER,
    apsw.SQLITE_DROP_TRIGGER,
}
# `CREATE TABLE temp.x` is authorized as a plain SQLITE_CREATE_TABLE whose database is "temp";
# what may touch the temp schema is only reading it (it stays empty).
_TEMP_SCHEMA_READS = {apsw.SQLITE_READ, apsw.SQLITE_SELECT, apsw.SQLITE_FUNCTION, apsw.SQLITE_PRAGMA}
_SAVEPOINT_VERBS = {"BEGIN": "SAVEPOINT", "RELEASE": "RELEASE", "ROLLBACK": "ROLLBACK TO"}
_TEMP_OBJECTS = {
    apsw.SQLITE_CREATE_TEMP_INDEX,
    apsw.SQLITE_CREATE_TEMP_TABLE,
    apsw.SQLITE_CREATE_TEMP_TRIGGER,
    apsw.SQLITE_CREATE_TEMP_VIEW,
}


class SqlError(Exception):
    """A statement the user sent failed; the message is SQLite's (or our guard's) explanation."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestRefused(SqlError):
    """The request as a whole is refused, not one statement of it (transaction control).

    A batch answers these with 400 instead of a per-statement error: nothing ran, and the
    statement is not one that could succeed in another batch.
    """


class SqlBusy(Exception):
    """The write turn did not come within `TURN_WAIT_SECONDS`: other writers kept the database busy."""


@dataclass
class Statement:
    sql: str
    params: list[Any]


@dataclass
class _Guard:
    """Per-connection state the authorizer and progress handler consult."""

    deadline: float = math.inf
    trusted: bool = False
    refusal: str | None = None
    refuses_request: bool = False
    in_batch: bool = False
    turns: WriteTurns | None = None
    holding_turn: bool = False

    def take_turn(self) -> None:
        """Wait for the write turn, once per transaction; time spent waiting is not charged to the budget."""
        if self.holding_turn or self.turns is None:
            return
        started = time.monotonic()
        if not self.turns.acquire(WriteTurns.SQL, TURN_WAIT_SECONDS):
            raise SqlBusy(f"other writes kept the axon's database busy for {TURN_WAIT_SECONDS:g} s; retry")
        self.holding_turn = True
        self.deadline += time.monotonic() - started

    def release_turn(self) -> None:
        if self.holding_turn and self.turns is not None:
            self.holding_turn = False
            self.turns.release()

    def refuse(self, why: str, *, whole_request: bool = False) -> int:
        self.refusal = why
        self.refuses_request = whole_request
        return apsw.SQLITE_DENY

    def authorize(self, op: int, one: str | None, two: str | None, db: str | None, trigger: str | None) -> int:
        if self.trusted:
            return apsw.SQLITE_OK
        table = one if op in _NAME_FIRST else two if op in _NAME_SECOND else None
        if table is not None:
            lowered = table.lower()
            if lowered.startswith(PRIVATE_PREFIX):
                return self.refuse(f"{table} is internal to the backend and cannot be used")
            if lowered == EVENTS_TABLE and op != apsw.SQLITE_READ:
                return self.refuse(_HISTORY_HINT)
        if op in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
            return self.refuse("ATTACH, DETACH and VACUUM are not allowed: an axon's SQL sees only its own database")
        if op == apsw.SQLITE_PRAGMA:
            if (one or "").lower() not in _READ_ONLY_PRAGMAS:
                allowed = ", ".join(sorted(_READ_ONLY_PRAGMAS))
                return self.refuse(f"PRAGMA {one} is not allowed; only schema introspection is: {allowed}")
        elif op == apsw.SQLITE_FUNCTION and (two or "").lower() in _REFUSED_FUNCTIONS:
            return self.refuse(f"the function {two}() is not allowed")
        elif op in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
            what = one if op == apsw.SQLITE_TRANSACTION else f"{_SAVEPOINT_VERBS.get(one or '', one)} {two}"
            return self.refuse(
                f"{what} is not allowed: transaction control (BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE) "
                "is the backend's; each query runs in its own transaction and a batch is already atomic "
                "(all of its statements apply, or none): send the statements without it",
                whole_request=True,
            )
        elif op in _TEMP_OBJECTS or (db == "temp" and op not in _TEMP_SCHEMA_READS):
            return self.refuse(
                "temporary tables, views, indexes and triggers (TEMP, or in the temp schema) are not supported: "
                "they would live in one pooled connection only and hide the axon's own tables of the same "
                "name; create regular ones"
            )
        return apsw.SQLITE_OK

    def over_time(self) -> bool:
        return time.monotonic() > self.deadline


@dataclass
class UserConnection:
    """A read/write connection for user SQL with its guard installed."""

    conn: apsw.Connection
    guard: _Guard

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()


def limit_sqlite_memory(soft: int = SQLITE_SOFT_HEAP_BYTES, hard: int = SQLITE_HARD_HEAP_BYTES) -> None:
    """Set SQLite's process-wide heap limits (see SQLITE_HARD_HEAP_BYTES); the store calls it at start."""
    apsw.hard_heap_limit(hard)
    apsw.soft_heap_limit(soft)


def open_user_connection(path: Path, turns: WriteTurns | None = None) -> UserConnection:
    """A guarded connection; its write transactions take `turns` (the axon log's) before writing."""
    conn = open_database(path)
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
    conn.limit(apsw.SQLITE_LIMIT_LENGTH, VALUE_BYTES_LIMIT)
    guard = _Guard(turns=turns)
    conn.authorizer = guard.authorize
    conn.set_progress_handler(guard.over_time, 1_000)
    return UserConnection(conn, guard)


def _affinity(decltype: str | None) -> str:
    """SQLite's type affinity rules (datatype3 §3.1), without NUMERIC which the API has no name for."""
    if not decltype:
        return ""
    t = decltype.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return ""


def _render(value: Any) -> tuple[Any, int]:
    """A SQLite value as JSON, and how many bytes it adds to the response (for numbers, at most)."""
    if isinstance(value, bytes):
        text = base64.b64encode(value).decode()
        return text, len(text) + 2
    if isinstance(value, str):
        # Exact: escapes (a control character takes 6 bytes) and UTF-8, as the response encodes it.
        return value, len(json.dumps(value, ensure_ascii=False).encode())
    if isinstance(value, float) and not math.isfinite(value):
        return ("Infinity" if value > 0 else "-Infinity"), 11
    return value, 24  # null or a number: never longer than 24 characters


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"


def _render_row(row: tuple[Any, ...], budget: int) -> tuple[list[Any], int] | None:
    """The row as JSON values and its size, or None as soon as it is seen to exceed `budget` bytes."""
    out: list[Any] = []
    cost = 2  # brackets; a comma before each later row and value is counted with it
    for value in row:
        rendered, value_cost = _render(value)
        cost += value_cost + 1
        if cost > budget:
            return None
        out.append(rendered)
    return out, cost


def _check_params(params: list[Any]) -> tuple[Any, ...]:
    for i, value in enumerate(params):
        if value is None or isinstance(value, str | float | bool):
            continue
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise SqlError(f"params[{i}] is outside SQLite's 64-bit integer range")
            continue
        raise SqlError(
            f"params[{i}] is a {type(value).__name__}; parameters must be strings, numbers, booleans "
            "or null (JSON-encode objects and arrays into a string)"
        )
    return tuple(params)


def _over_budget(guard: _Guard) -> SqlError:
    if guard.in_batch:
        return RequestRefused(
            f"the batch ran longer than its {TIME_LIMIT_SECONDS:g} s time budget (one budget for all of its "
            "statements) and was stopped here; nothing was applied: split the work into smaller batches, "
            "or narrow the statements (WHERE, LIMIT, an index on your own tables)"
        )
    return SqlError(
        f"the statement ran longer than the {TIME_LIMIT_SECONDS:g} s limit and was stopped; "
        "narrow it (WHERE, LIMIT, an index on your own tables)"
    )


def _message(exc: BaseException, guard: _Guard) -> str:
    if isinstance(exc, apsw.AuthError | apsw.ExecTraceAbort) and guard.refusal:
        return guard.refusal
    if isinstance(exc, apsw.TooBigError):
        return (
            f"a value is larger than {_mib(VALUE_BYTES_LIMIT)}, the limit of axon SQL for one string or BLOB "
            "(and for one row of your tables); select a part of it (substr(x, 1, n)) or its length(x)"
        )
    if isinstance(exc, apsw.NoMemError):
        return (
            f"the query needed more memory than the backend gives SQL ({_mib(SQLITE_HARD_HEAP_BYTES)} for all "
            "queries at once) and was stopped; select fewer or smaller values"
        )
    if isinstance(exc, UnicodeDecodeError):
        return f"a TEXT value is not valid UTF-8 ({exc.reason}); select it as a BLOB, e.g. CAST(x AS BLOB)"
    text = str(exc.args[0]) if exc.args else str(exc)
    return text or type(exc).__name__


def _execute(conn: apsw.Connection, guard: _Guard, stmt: Statement) -> dict[str, Any]:
    """Run one statement inside the caller's transaction and shape its result."""
    params = _check_params(stmt.params)
    seen: list[tuple[tuple[tuple[str, str | None], ...], bool]] = []

    def trace(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        if not cursor.has_vdbe:  # only a comment or whitespace
            return True
        if seen:
            guard.refusal = "send one statement per query; use /sql/batch to run several in one transaction"
            return False
        seen.append((cursor.get_description(), cursor.is_readonly))
        if not cursor.is_readonly:
            guard.take_turn()  # before the statement takes SQLite's write lock
        return True

    if guard.over_time():  # statements too short to reach the progress handler still count
        raise _over_budget(guard)
    cursor = conn.cursor()
    cursor.exec_trace = trace
    changes_before = conn.total_changes()
    started = time.perf_counter()
    guard.refusal = None
    guard.refuses_request = False
    rows: list[list[Any]] = []
    limited = False
    size = 0
    try:
        for row in cursor.execute(stmt.sql, params):
            if len(rows) >= ROW_LIMIT:
                limited = True
                break
            out = _render_row(row, RESULT_BYTES_LIMIT - size)
            if out is None:  # this row would take the rows past RESULT_BYTES_LIMIT
                if not rows:
                    raise SqlError(
                        f"the first row is larger than {_mib(RESULT_BYTES_LIMIT)} as JSON, the limit of a result; "
                        "select fewer columns, or parts of large values (substr(x, 1, n), length(x))"
                    )
                limited = True
                break
            rendered, cost = out
            size += cost
            rows.append(rendered)
    except apsw.BusyError:
        raise
    except (apsw.Error, OverflowError, TypeError, ValueError) as exc:
        if isinstance(exc, apsw.InterruptError):
            raise _over_budget(guard) from None
        if guard.refuses_request and isinstance(exc, apsw.AuthError):
            raise RequestRefused(_message(exc, guard)) from None
        raise SqlError(_message(exc, guard)) from None
    finally:
        cursor.close(force=True)
    if not seen:
        raise SqlError("the SQL text contains no statement")
    description, _readonly = seen[0]
    return {
        "columns": [{"name": name, "type": _affinity(decl)} for name, decl in description],
        "rows": rows,
        "meta": {
            "changes": conn.total_changes() - changes_before,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "rows_read_limit_reached": limited,
        },
    }


# The backend's own BEGIN/COMMIT/ROLLBACK run with the authorizer off (`trusted`) and bypass apsw's
# statement cache: the authorizer is consulted only when a statement is prepared, so a cached
# trusted "COMMIT" would be reused, unchecked, for a user's "COMMIT" of the same text.


def _begin(conn: apsw.Connection, guard: _Guard, mode: str, *, in_batch: bool) -> None:
    """Open the transaction and start its time budget (one for a query, one for a whole batch)."""
    guard.in_batch = in_batch
    if mode == "IMMEDIATE":
        guard.take_turn()
    guard.trusted = True
    try:
        conn.execute(f"BEGIN {mode}", can_cache=False)
    finally:
        guard.trusted = False
    guard.deadline = time.monotonic() + TIME_LIMIT_SECONDS


def _end(conn: apsw.Connection, guard: _Guard, commit: bool) -> None:
    """Commit or roll back (never stopped by the budget), then give the write turn back."""
    guard.deadline = math.inf
    guard.trusted = True
    try:
        if conn.in_transaction:
            conn.execute("COMMIT" if commit else "ROLLBACK", can_cache=False)
    finally:
        guard.trusted = False
        guard.release_turn()


def run_query(user: UserConnection, stmt: Statement) -> dict[str, Any]:
    """One statement in its own transaction; raises SqlError (nothing applied) on failure.

    apsw.BusyError passes through: the database stayed locked for the busy timeout.
    """
    conn, guard = user.conn, user.guard
    _begin(conn, guard, "DEFERRED", in_batch=False)
    try:
        result = _execute(conn, guard, stmt)
        _end(conn, guard, commit=True)
    except apsw.BusyError:
        _end(conn, guard, commit=False)
        raise
    except apsw.Error as exc:  # the COMMIT itself failed
        _end(conn, guard, commit=False)
        raise SqlError(_message(exc, guard)) from None
    except BaseException:
        _end(conn, guard, commit=False)
        raise
    return result


def run_batch(user: UserConnection, statements: list[Statement]) -> list[dict[str, Any]]:
    """All statements in one transaction: all applied, or (on the first failure) none.

    Returns one step per statement: `{"success": result}` for those that ran, `{"error":
    {"message"}}` for the one that failed and for each one after it (not run).
    """
    # Deferred first so read-only batches never take the write lock; if another writer got in
    # between our first read and first write (SQLITE_BUSY), rerun holding the lock from the start.
    try:
        return _run_batch_once(user, statements, "DEFERRED")
    except apsw.BusyError:
        return _run_batch_once(user, statements, "IMMEDIATE")


def _run_batch_once(user: UserConnection, statements: list[Statement], mode: str) -> list[dict[str, Any]]:
    conn, guard = user.conn, user.guard
    _begin(conn, guard, mode, in_batch=True)
    steps: list[dict[str, Any]] = []
    failed: int | None = None
    try:
        for index, stmt in enumerate(statements):
            if failed is not None:
                steps.append({"error": {"message": f"not run: statements[{failed}] failed, so the whole batch was rolled back"}})
                continue
            try:
                steps.append({"success": _execute(conn, guard, stmt)})
            except RequestRefused as exc:
                raise RequestRefused(f"statements[{index}]: {exc.message}") from None
            except SqlError as exc:
                failed = index
                steps.append({"error": {"message": exc.message}})
        _end(conn, guard, commit=failed is None)
    except apsw.BusyError:
        _end(conn, guard, commit=False)
        raise
    except apsw.Error as exc:  # the COMMIT itself failed: report it on the last statement
        _end(conn, guard, commit=False)
        steps[-1] = {"error": {"message": f"the batch could not be committed: {_message(exc, guard)}"}}
    except BaseException:
        _end(conn, guard, commit=False)
        raise
    return steps
