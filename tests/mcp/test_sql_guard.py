"""The read-only check of sql_query: refuses anything that could write, before sending."""

from __future__ import annotations

import pytest

from mcp_server.tools.sql_guard import SqlRefused, check_read_only

READS = [
    "SELECT * FROM rl_axon_events",
    "select count(*) from rl_axon_events where event_type = 'delete'",
    "SELECT 'DROP TABLE x; DELETE FROM y' AS s",
    "WITH recent AS (SELECT * FROM rl_axon_events ORDER BY sequence DESC LIMIT 5) SELECT * FROM recent",
    "SELECT replace(payload, 'a', 'b') FROM rl_axon_events",
    "EXPLAIN QUERY PLAN SELECT * FROM rl_axon_events",
    "PRAGMA table_info(rl_axon_events)",
    "PRAGMA user_version",
    "SELECT 1; ",
    "-- a comment with DELETE\nSELECT 1 /* UPDATE t SET x = 1 */",
    'SELECT "delete" FROM t',
    "VALUES (1), (2)",
]

WRITES = [
    ("DELETE FROM rl_axon_events", "DELETE"),
    ("WITH x AS (SELECT 1) DELETE FROM rl_axon_events", "DELETE"),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT"),
    ("SELECT 1; DROP TABLE rl_axon_events", "2"),
    ("SELECT 1;DELETE FROM t", "2"),
    ("INSERT INTO t VALUES (1)", "INSERT"),
    ("REPLACE INTO t VALUES (1)", "REPLACE"),
    ("UPDATE t SET a = 1", "UPDATE"),
    ("CREATE TABLE t (a)", "CREATE"),
    ("ATTACH DATABASE 'x' AS y", "ATTACH"),
    ("PRAGMA user_version = 7", "PRAGMA"),
    ("PRAGMA journal_mode(WAL)", "PRAGMA"),
    ("PRAGMA writable_schema", "PRAGMA"),
    ("SELECT load_extension('x')", "LOAD_EXTENSION"),
    ("/* SELECT */ DELETE FROM t", "DELETE"),
    ("SELECT 'it''s' ; DELETE FROM t", "2"),
    ("VACUUM", "VACUUM"),
    ("BEGIN; DELETE FROM t; COMMIT", "3"),
    ("INSERT INTO t VALUES (1) RETURNING *", "INSERT"),
]


@pytest.mark.parametrize("sql", READS)
def test_reads_pass(sql: str) -> None:
    check_read_only(sql)


@pytest.mark.parametrize(("sql", "named"), WRITES)
def test_writes_are_refused_with_a_message_naming_the_problem(sql: str, named: str) -> None:
    with pytest.raises(SqlRefused) as err:
        check_read_only(sql)
    message = str(err.value)
    assert named in message
    assert "allow_writes" in message or "sql_batch" in message


@pytest.mark.parametrize("sql", ["SELECT 'unterminated", "SELECT 1 /* open", "", "  ;  "])
def test_unparseable_or_empty_sql_is_refused(sql: str) -> None:
    with pytest.raises(SqlRefused):
        check_read_only(sql)
