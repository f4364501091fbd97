"""SQL over an axon's database through the official SDK: results, guards, limits, batches."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import httpx
import pytest
from runloop_api_client import BadRequestError, Runloop
from support.axons import poll_until

from mcp_server.local import axon_sql
from mcp_server.local.axons import SQL_PER_AXON, AxonStore
from mcp_server.local.server import RunningBackend


@pytest.fixture
def axon(sdk: Runloop):
    created = sdk.axons.create(name=f"sql-{uuid.uuid4().hex[:8]}")
    for i in range(5):
        sdk.axons.publish(
            created.id, event_type=f"kind{i % 2}", origin="AGENT_EVENT", payload=json.dumps({"i": i}), source="src"
        )
    return created


def _error(backend: RunningBackend, axon_id: str, sql: str, params: list | None = None) -> tuple[int, str]:
    r = httpx.post(
        f"{backend.base_url}/v1/axons/{axon_id}/sql/query",
        json={"sql": sql, "params": params or []},
        headers={"Authorization": f"Bearer {backend.api_key}"},
    )
    return r.status_code, r.json()["message"]


def test_query_history_with_params_columns_and_meta(sdk: Runloop, axon) -> None:
    result = sdk.axons.sql.query(
        axon.id,
        sql="SELECT event_type, count(*) AS n, max(sequence) FROM rl_axon_events WHERE sequence > ? "
        "GROUP BY event_type ORDER BY event_type",
        params=[1],
    )
    assert [(c.name, c.type) for c in result.columns] == [("event_type", "TEXT"), ("n", ""), ("max(sequence)", "")]
    assert result.rows == [["kind0", 2, 5], ["kind1", 2, 4]]
    assert result.meta.changes == 0 and result.meta.rows_read_limit_reached is False and result.meta.duration_ms >= 0

    history = sdk.axons.sql.query(axon.id, sql="SELECT * FROM rl_axon_events ORDER BY sequence DESC LIMIT 1")
    assert [c.name for c in history.columns] == ["sequence", "timestamp_ms", "origin", "source", "event_type", "payload"]
    assert [c.type for c in history.columns] == ["INTEGER", "INTEGER", "TEXT", "TEXT", "TEXT", "TEXT"]
    assert history.rows[0][0] == 5 and history.rows[0][2] == "AGENT_EVENT" and json.loads(history.rows[0][5]) == {"i": 4}


def test_user_tables_values_and_changes(sdk: Runloop, axon) -> None:
    sdk.axons.sql.query(axon.id, sql="CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(20), score DOUBLE, raw BLOB, x)")
    inserted = sdk.axons.sql.query(
        axon.id, sql="INSERT INTO notes (body, score, raw, x) VALUES (?, ?, ?, ?), ('b', 1e999, NULL, NULL)",
        params=["a", 2.5, None, True],
    )
    assert inserted.meta.changes == 2 and inserted.rows == [] and inserted.columns == []
    sdk.axons.sql.query(axon.id, sql="UPDATE notes SET raw = X'00FF10' WHERE id = 1")
    rows = sdk.axons.sql.query(axon.id, sql="SELECT id, body, score, raw, x FROM notes ORDER BY id")
    assert [c.type for c in rows.columns] == ["INTEGER", "TEXT", "REAL", "BLOB", ""]
    assert rows.rows == [[1, "a", 2.5, base64.b64encode(b"\x00\xff\x10").decode(), 1], [2, "b", "Infinity", None, None]]
    returning = sdk.axons.sql.query(axon.id, sql="DELETE FROM notes WHERE id = ? RETURNING body", params=[2])
    assert returning.rows == [["b"]] and returning.meta.changes == 1


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO rl_axon_events (sequence, timestamp_ms, origin, source, event_type, payload) VALUES (99, 0, 'USER_EVENT', 's', 't', '{}')",
        "UPDATE rl_axon_events SET payload = 'forged'",
        "DELETE FROM rl_axon_events",
        "DROP TABLE rl_axon_events",
        "ALTER TABLE rl_axon_events ADD COLUMN extra TEXT",
        "ALTER TABLE rl_axon_events RENAME TO old_events",
        "CREATE UNIQUE INDEX one_per_type ON rl_axon_events (event_type)",
        "DROP INDEX rl_axon_events_by_type",
        "CREATE TRIGGER wipe AFTER INSERT ON rl_axon_events BEGIN DELETE FROM rl_axon_events; END",
        "REPLACE INTO rl_axon_events (sequence, timestamp_ms, origin, source, event_type, payload) VALUES (1, 0, 'USER_EVENT', 's', 't', '{}')",
    ],
)
def test_history_is_append_only(backend: RunningBackend, sdk: Runloop, axon, sql: str) -> None:
    status, message = _error(backend, axon.id, sql)
    assert status == 400 and "append-only" in message
    rows = sdk.axons.sql.query(axon.id, sql="SELECT sequence, payload FROM rl_axon_events ORDER BY sequence").rows
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5] and json.loads(rows[0][1]) == {"i": 0}


def test_user_trigger_cannot_reach_history(backend: RunningBackend, sdk: Runloop, axon) -> None:
    sdk.axons.sql.query(axon.id, sql="CREATE TABLE t (a)")
    created = httpx.post(
        f"{backend.base_url}/v1/axons/{axon.id}/sql/query",
        json={"sql": "CREATE TRIGGER sneaky AFTER INSERT ON t BEGIN DELETE FROM rl_axon_events; END"},
        headers={"Authorization": f"Bearer {backend.api_key}"},
    )
    if created.status_code == 200:  # SQLite checks trigger bodies when they fire
        status, message = _error(backend, axon.id, "INSERT INTO t VALUES (1)")
        assert status == 400 and "append-only" in message
    else:
        assert created.status_code == 400
    assert sdk.axons.sql.query(axon.id, sql="SELECT count(*) FROM rl_axon_events").rows == [[5]]


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT * FROM rl_private_publish_requests", "internal"),
        ("CREATE TABLE rl_private_mine (a)", "internal"),
        ("ATTACH DATABASE '/tmp/evil.db' AS evil", "ATTACH"),
        ("VACUUM INTO '/tmp/copy.db'", "VACUUM"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA"),
        ("PRAGMA writable_schema = 1", "PRAGMA"),
        ("SELECT load_extension('/tmp/x.so')", "load_extension"),
        ("BEGIN", "transaction"),
        ("CREATE TEMP TABLE scratch (a)", "temporary"),
    ],
)
def test_guarded_statements_are_refused(backend: RunningBackend, axon, sql: str, fragment: str) -> None:
    status, message = _error(backend, axon.id, sql)
    assert status == 400 and fragment in message


@pytest.mark.parametrize(
    "sql", ["BEGIN", "BEGIN IMMEDIATE", "COMMIT", "END", "ROLLBACK", "SAVEPOINT s", "RELEASE s", "ROLLBACK TO s"]
)
def test_transaction_control_is_refused(backend: RunningBackend, sdk: Runloop, axon, sql: str) -> None:
    # A query first, so the pooled connection has run the backend's own BEGIN and COMMIT: the
    # refusal must not depend on whether a statement of the same text was prepared before.
    sdk.axons.sql.query(axon.id, sql="SELECT 1")
    status, message = _error(backend, axon.id, sql)
    assert status == 400 and "already atomic" in message


def test_commit_inside_a_batch_refuses_the_batch_and_keeps_nothing(sdk: Runloop, axon) -> None:
    sdk.axons.sql.query(axon.id, sql="SELECT 1")
    with pytest.raises(BadRequestError, match=r"statements\[2\]: COMMIT is not allowed") as caught:
        sdk.axons.sql.batch(
            axon.id,
            statements=[
                {"sql": "CREATE TABLE kept (a)"},
                {"sql": "INSERT INTO kept VALUES (1)"},
                {"sql": "COMMIT"},
                {"sql": "SELECT * FROM nowhere"},
            ],
        )
    assert "already atomic" in str(caught.value)
    with pytest.raises(BadRequestError, match="no such table: kept"):
        sdk.axons.sql.query(axon.id, sql="SELECT * FROM kept")


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE temp.keep (a)",
        "CREATE TEMP TABLE keep (a)",
        "CREATE TEMPORARY TABLE other AS SELECT 1",
        "CREATE VIEW temp.keep_view AS SELECT * FROM main.keep",
        "CREATE TEMP VIEW keep_view AS SELECT 1",
        "CREATE TRIGGER temp.on_keep AFTER INSERT ON keep BEGIN SELECT 1; END",
        "CREATE TEMP TRIGGER on_keep AFTER INSERT ON keep BEGIN SELECT 1; END",
        "CREATE VIRTUAL TABLE temp.keep USING fts5(a)",
    ],
)
def test_temporary_objects_are_refused_and_cannot_shadow(backend: RunningBackend, sdk: Runloop, axon, sql: str) -> None:
    sdk.axons.sql.query(axon.id, sql="CREATE TABLE keep (a)")
    status, message = _error(backend, axon.id, sql)
    assert status == 400 and "temporary" in message
    # Nothing in the temp schema, so `keep` is the axon's own table: inserts land there and stay.
    assert sdk.axons.sql.query(axon.id, sql="SELECT count(*) FROM temp.sqlite_master").rows == [[0]]
    sdk.axons.sql.query(axon.id, sql="INSERT INTO keep VALUES (1)")
    assert sdk.axons.sql.query(axon.id, sql="SELECT count(*) FROM main.keep").rows == [[1]]


def test_schema_introspection_is_allowed(sdk: Runloop, axon) -> None:
    info = sdk.axons.sql.query(axon.id, sql="PRAGMA table_info(rl_axon_events)")
    assert [row[1] for row in info.rows] == ["sequence", "timestamp_ms", "origin", "source", "event_type", "payload"]


def test_sql_errors_are_400_with_sqlite_message(backend: RunningBackend, axon) -> None:
    assert _error(backend, axon.id, "SELEC * FROM rl_axon_events") == (400, 'near "SELEC": syntax error')
    assert _error(backend, axon.id, "SELECT * FROM nowhere") == (400, "no such table: nowhere")
    status, message = _error(backend, axon.id, "SELECT ?", [1, 2])
    assert status == 400 and "bindings" in message
    status, message = _error(backend, axon.id, "SELECT ?", [{"a": 1}])
    assert status == 400 and "JSON-encode" in message
    status, message = _error(backend, axon.id, "SELECT CAST(X'FF41' AS TEXT)")
    assert status == 400 and "not valid UTF-8" in message
    status, message = _error(backend, axon.id, "  -- only a comment")
    assert status == 400 and "no statement" in message


def test_two_statements_in_one_query_are_refused_and_nothing_applies(backend: RunningBackend, sdk: Runloop, axon) -> None:
    sdk.axons.sql.query(axon.id, sql="CREATE TABLE once (a)")
    status, message = _error(backend, axon.id, "INSERT INTO once VALUES (1); SELECT 1")
    assert status == 400 and "/sql/batch" in message
    assert sdk.axons.sql.query(axon.id, sql="SELECT count(*) FROM once").rows == [[0]]


def test_row_limit(sdk: Runloop, axon) -> None:
    result = sdk.axons.sql.query(
        axon.id, sql="WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) SELECT x FROM n",
        params=[axon_sql.ROW_LIMIT + 5],
    )
    assert len(result.rows) == axon_sql.ROW_LIMIT and result.meta.rows_read_limit_reached is True
    assert result.rows[-1] == [axon_sql.ROW_LIMIT]


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Peak resident memory growth (bytes) of this process over the block: the backend runs in it.

    The kernel's own high-water mark (VmHWM, reset through clear_refs) sees every peak, however
    short, which a sampler could miss.
    """

    def status(field: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    growth: list[int] = []
    yield growth
    growth.append(status("VmHWM") - before)


MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT zeroblob(150000000)", []),
        ("SELECT length(zeroblob(150000000))", []),
        ("SELECT printf('%.*c', 150000000, 'x')", []),
        ("SELECT ?", ["x" * (axon_sql.VALUE_BYTES_LIMIT + 1)]),
    ],
)
def test_one_huge_value_is_refused_and_costs_no_memory(backend: RunningBackend, axon, sql: str, params: list) -> None:
    with peak_rss_growth() as growth:
        status, message = _error(backend, axon.id, sql, params)
    assert status == 400 and "larger than 4 MiB" in message and "substr" in message
    assert growth[0] < 64 * MIB, f"backend grew by {growth[0] / MIB:.0f} MiB"


def test_a_huge_value_cannot_be_stored_either(backend: RunningBackend, sdk: Runloop, axon) -> None:
    sdk.axons.sql.query(axon.id, sql="CREATE TABLE blobs (b)")
    status, message = _error(backend, axon.id, "INSERT INTO blobs VALUES (zeroblob(?))", [axon_sql.VALUE_BYTES_LIMIT + 1])
    assert status == 400 and "larger than 4 MiB" in message
    assert sdk.axons.sql.query(axon.id, sql="SELECT count(*) FROM blobs").rows == [[0]]


def test_rows_stop_before_the_result_size_limit_and_say_so(http: httpx.Client, axon) -> None:
    # Ten rows of 4 MB each as base64: the response holds the rows that fit, and says it was cut.
    sql = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10) SELECT x, zeroblob(3000000) FROM n"
    with peak_rss_growth() as growth:
        r = http.post(f"/v1/axons/{axon.id}/sql/query", json={"sql": sql})
    assert r.status_code == 200
    assert len(r.content) <= axon_sql.RESULT_BYTES_LIMIT + 4096
    body = r.json()
    assert body["meta"]["rows_read_limit_reached"] is True
    assert [row[0] for row in body["rows"]] == [1, 2, 3, 4]
    assert all(len(base64.b64decode(row[1])) == 3_000_000 for row in body["rows"])
    assert growth[0] < 160 * MIB, f"backend grew by {growth[0] / MIB:.0f} MiB"


def test_strings_are_counted_as_sent(http: httpx.Client, axon) -> None:
    # A control character is six bytes of JSON (\u0001): 3 MB of them are 18 MB, over the limit alone.
    r = http.post(f"/v1/axons/{axon.id}/sql/query", json={"sql": "SELECT printf('%.*c', 3000000, char(1))"})
    assert r.status_code == 400 and "first row is larger than 16 MiB" in r.json()["message"]


def test_a_row_wider_than_the_result_limit_is_refused(backend: RunningBackend, axon) -> None:
    sql = "SELECT " + ", ".join(["zeroblob(3000000)"] * 6)
    with peak_rss_growth() as growth:
        status, message = _error(backend, axon.id, sql)
    assert status == 400 and "first row is larger than 16 MiB" in message
    assert growth[0] < 160 * MIB, f"backend grew by {growth[0] / MIB:.0f} MiB"


def test_wide_rows_of_large_values_stop_at_sqlite_heap_limit(backend: RunningBackend, sdk: Runloop, axon) -> None:
    """200 columns of 2 MB: within the length limit each, 400 MB together; the heap limit stops them."""
    hard = apsw.memory_used() + 48 * MIB  # set low for the test, above what the backend already holds
    axon_sql.limit_sqlite_memory(soft=hard // 2, hard=hard)
    try:
        sql = "SELECT " + ", ".join(["zeroblob(2000000)"] * 200)
        with peak_rss_growth() as growth:
            status, message = _error(backend, axon.id, sql)
        assert status == 400 and "more memory than the backend gives SQL" in message
        assert growth[0] < 160 * MIB, f"backend grew by {growth[0] / MIB:.0f} MiB"
        assert sdk.axons.sql.query(axon.id, sql="SELECT count(*) FROM rl_axon_events").rows == [[5]]
    finally:
        axon_sql.limit_sqlite_memory()
    sdk.axons.publish(axon.id, event_type="t", origin="USER_EVENT", payload="{}", source="s")


def test_time_limit(backend: RunningBackend, axon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(axon_sql, "TIME_LIMIT_SECONDS", 0.2)  # the backend runs in this process
    status, message = _error(
        backend, axon.id, "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    )
    assert status == 400 and "0.2 s limit" in message


def test_batch_is_all_or_nothing(sdk: Runloop, axon) -> None:
    ok = sdk.axons.sql.batch(
        axon.id,
        statements=[
            {"sql": "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)"},
            {"sql": "INSERT INTO kv VALUES (?, ?)", "params": ["a", 1]},
            {"sql": "SELECT k, v FROM kv"},
        ],
    )
    assert [r.error for r in ok.results] == [None, None, None]
    assert ok.results[1].success.meta.changes == 1 and ok.results[2].success.rows == [["a", 1]]

    failed = sdk.axons.sql.batch(
        axon.id,
        statements=[
            {"sql": "INSERT INTO kv VALUES ('b', 2)"},
            {"sql": "CREATE TABLE kv2 (x)"},
            {"sql": "INSERT INTO kv VALUES ('a', 3)"},  # duplicate key
            {"sql": "INSERT INTO kv VALUES ('c', 4)"},
        ],
    )
    assert failed.results[0].success is not None and failed.results[1].success is not None
    assert "UNIQUE constraint failed" in failed.results[2].error.message
    assert "not run" in failed.results[3].error.message and failed.results[3].success is None
    assert sdk.axons.sql.query(axon.id, sql="SELECT k, v FROM kv ORDER BY k").rows == [["a", 1]]
    with pytest.raises(BadRequestError, match="no such table: kv2"):
        sdk.axons.sql.query(axon.id, sql="SELECT * FROM kv2")

    guarded = sdk.axons.sql.batch(
        axon.id, statements=[{"sql": "INSERT INTO kv VALUES ('z', 9)"}, {"sql": "DELETE FROM rl_axon_events"}]
    )
    assert "append-only" in guarded.results[1].error.message
    assert sdk.axons.sql.query(axon.id, sql="SELECT count(*) FROM kv").rows == [[1]]
    assert sdk.axons.sql.query(axon.id, sql="SELECT count(*) FROM rl_axon_events").rows == [[5]]


def test_user_writes_and_publishes_interleave(sdk: Runloop, axon) -> None:
    """User write transactions and the publish writer share the database without errors or gaps."""
    sdk.axons.sql.query(axon.id, sql="CREATE TABLE tally (n INTEGER)")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(30):
                sdk.axons.sql.batch(
                    axon.id,
                    statements=[
                        {"sql": "SELECT count(*) FROM rl_axon_events"},
                        {"sql": "INSERT INTO tally VALUES (?)", "params": [i]},
                    ],
                )
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    seqs = [
        sdk.axons.publish(axon.id, event_type="t", origin="USER_EVENT", payload="{}", source="s").sequence
        for _ in range(60)
    ]
    thread.join()
    assert not errors
    assert seqs == list(range(6, 66))
    assert sdk.axons.sql.query(axon.id, sql="SELECT count(*) FROM tally").rows == [[30]]


# ---- the time budget of a batch, write turns, per-axon concurrency ------------------------------


@dataclass
class Hooks:
    """SQL functions this test controls, on the user connections of axons created after the patch."""

    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hooks]:
    """`pause(s)` sleeps s seconds inside SQLite; `hold()` signals `entered` and waits for `release`."""
    h = Hooks()
    original = axon_sql.open_user_connection

    def hold() -> int:
        h.entered.release()
        h.release.wait(30)
        return 1

    def open_with_hooks(path, turns=None):  # noqa: ANN001, ANN202
        user = original(path, turns)
        user.conn.create_scalar_function("pause", lambda seconds: time.sleep(seconds))
        user.conn.create_scalar_function("hold", hold)
        return user

    monkeypatch.setattr(axon_sql, "open_user_connection", open_with_hooks)
    yield h
    h.release.set()


def _new_axon(sdk: Runloop) -> str:
    created = sdk.axons.create(name=f"sql-{uuid.uuid4().hex[:8]}")
    sdk.axons.publish(created.id, event_type="t", origin="USER_EVENT", payload="{}", source="s")
    return created.id


def _store(backend: RunningBackend) -> AxonStore:
    return backend._server.config.app.state.axons


def _in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, list]:  # noqa: ANN001
    """Run fn in a thread; the list gets its result, or the exception it raised."""
    out: list = []

    def run() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_batch_has_one_time_budget_for_all_its_statements(
    sdk: Runloop, hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(axon_sql, "TIME_LIMIT_SECONDS", 0.3)
    axon_id = _new_axon(sdk)
    # Each pause is within the budget on its own; together they are not.
    statements = [
        {"sql": "CREATE TABLE kept (a)"},
        {"sql": "INSERT INTO kept VALUES (1)"},
        {"sql": "SELECT pause(0.2)"},
        {"sql": "SELECT pause(0.2)"},
        {"sql": "SELECT 1"},
    ]
    with pytest.raises(BadRequestError, match=r"statements\[[34]\]: the batch ran longer than its 0.3 s time budget"):
        sdk.axons.sql.batch(axon_id, statements=statements)
    with pytest.raises(BadRequestError, match="no such table: kept"):
        sdk.axons.sql.query(axon_id, sql="SELECT * FROM kept")


def test_a_batch_over_its_budget_is_rolled_back_and_a_waiting_publish_goes_before_the_next_batch(
    backend: RunningBackend, sdk: Runloop, hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(axon_sql, "TIME_LIMIT_SECONDS", 0.5)
    axon_id = _new_axon(sdk)
    forever = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    first, first_out = _in_thread(
        sdk.axons.sql.batch,
        axon_id,
        statements=[{"sql": "CREATE TABLE first (a)"}, {"sql": "SELECT hold()"}, {"sql": forever}],
    )
    assert hooks.entered.acquire(timeout=10)  # the first batch holds the write turn
    turns = _store(backend)._logs[axon_id].turns
    publish, publish_out = _in_thread(
        sdk.axons.publish, axon_id, event_type="t", origin="USER_EVENT", payload="{}", source="s"
    )
    assert poll_until(lambda: turns.waiting(turns.PUBLISH) == 1)
    second, second_out = _in_thread(
        sdk.axons.sql.batch,
        axon_id,
        statements=[{"sql": "CREATE TABLE second (a)"}, {"sql": "SELECT max(sequence) FROM rl_axon_events"}],
    )
    assert poll_until(lambda: turns.waiting(turns.SQL) == 1)
    hooks.release.set()
    for thread in (first, publish, second):
        thread.join(30)

    assert isinstance(first_out[0], BadRequestError) and "time budget" in str(first_out[0])
    assert publish_out[0].sequence == 2  # the publish succeeded (no 503) ...
    assert second_out[0].results[1].success.rows == [[2]]  # ... and before the batch that came after it
    with pytest.raises(BadRequestError, match="no such table: first"):
        sdk.axons.sql.query(axon_id, sql="SELECT * FROM first")


def test_slow_queries_on_one_axon_do_not_hold_up_another(backend: RunningBackend, sdk: Runloop, hooks: Hooks) -> None:
    busy, other = _new_axon(sdk), _new_axon(sdk)
    store = _store(backend)
    # Twice the old global limit of four: all of them held inside SQLite, or queued behind the axon's own.
    slow = [_in_thread(sdk.axons.sql.query, busy, sql="SELECT hold()") for _ in range(8)]
    for _ in range(SQL_PER_AXON):
        assert hooks.entered.acquire(timeout=10)
    limiter = store.sql_limiter(busy)
    assert poll_until(lambda: limiter.statistics().tasks_waiting == 8 - SQL_PER_AXON)

    quick, quick_out = _in_thread(sdk.axons.sql.query, other, sql="SELECT 1")
    quick.join(30)
    assert quick_out and quick_out[0].rows == [[1]]
    assert not hooks.release.is_set() and all(thread.is_alive() for thread, _ in slow)  # still held

    hooks.release.set()
    for thread, out in slow:
        thread.join(30)
        assert out[0].rows == [[1]]
