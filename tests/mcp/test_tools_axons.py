"""Axon tools through a real MCP client (both eras) against the embedded backend."""

from __future__ import annotations

import json

import pytest
from mcp import Client
from support.faultproxy import FaultProxy
from support.mcp_client import call_error, call_ok, make_server, structured, text_of

from mcp_server.local.server import RunningBackend
from mcp_server.settings import Settings

pytestmark = pytest.mark.anyio


async def new_axon(client: Client, name: str = "t") -> str:
    created = structured(await call_ok(client, "create_axon", {"name": name}))
    assert created["id"]
    return created["id"]


async def test_publish_any_json_payload_and_query_it_back_as_objects(mcp: Client) -> None:
    axon = await new_axon(mcp)
    payloads = [{"step": 1, "ok": True}, [1, 2, 3], "plain", 42, None]
    sequences = []
    for payload in payloads:
        out = structured(await call_ok(mcp, "publish_event", {"axon_id": axon, "event_type": "note", "payload": payload}))
        sequences.append(out["sequence"])
        assert out["timestamp_ms"] > 0
    assert sequences == sorted(sequences) and len(set(sequences)) == len(payloads)

    result = await call_ok(
        mcp, "sql_query",
        {"axon_id": axon, "sql": "SELECT sequence, source, origin, payload FROM rl_axon_events WHERE event_type = ? ORDER BY sequence",
         "params": ["note"]},
    )
    envelope = structured(result)
    assert envelope["row_count"] == len(payloads) and not envelope["rows_cut"]
    assert [c["name"] for c in envelope["columns"]] == ["sequence", "source", "origin", "payload"]
    rows = [json.loads(line) for line in text_of(result).splitlines()[1:]]
    assert [json.loads(r["payload"]) for r in rows] == payloads
    assert {r["source"] for r in rows} == {"devbox-mcp"}
    # The structured content carries the same rows, as value arrays in column order.
    assert [dict(zip(["sequence", "source", "origin", "payload"], r, strict=True)) for r in envelope["rows"]] == rows


async def test_sql_query_refuses_writes_before_sending_and_allow_writes_lifts_it(mcp: Client) -> None:
    axon = await new_axon(mcp)
    await call_ok(mcp, "publish_event", {"axon_id": axon, "event_type": "e", "payload": 1})
    for sql in ("DELETE FROM rl_axon_events", "WITH x AS (SELECT 1) DELETE FROM rl_axon_events",
                "SELECT 1; DROP TABLE rl_axon_events"):
        message = await call_error(mcp, "sql_query", {"axon_id": axon, "sql": sql})
        assert "allow_writes" in message or "sql_batch" in message
    # Nothing was sent: the event is still there.
    count = await call_ok(mcp, "sql_query", {"axon_id": axon, "sql": "SELECT count(*) AS n FROM rl_axon_events"})
    assert json.loads(text_of(count).splitlines()[1]) == {"n": 1}
    made = await call_ok(mcp, "sql_query", {"axon_id": axon, "sql": "CREATE TABLE notes (t TEXT)", "allow_writes": True})
    assert not made.is_error
    await call_ok(mcp, "sql_batch", {"axon_id": axon, "statements": [
        {"sql": "INSERT INTO notes VALUES (?)", "params": ["a"]},
        {"sql": "INSERT INTO notes VALUES (?)", "params": ["b"]},
    ]})
    rows = await call_ok(mcp, "sql_query", {"axon_id": axon, "sql": "SELECT t FROM notes ORDER BY t"})
    assert text_of(rows).splitlines()[1:] == ['{"t": "a"}', '{"t": "b"}']


async def test_rows_are_bounded_with_a_note(backend: RunningBackend) -> None:
    server = make_server(backend, Settings(sql_max_rows=5))
    async with Client(server, mode="auto") as client:
        axon = await new_axon(client)
        for i in range(8):
            await call_ok(client, "publish_event", {"axon_id": axon, "event_type": "e", "payload": i})
        result = await call_ok(client, "sql_query", {"axon_id": axon, "sql": "SELECT sequence FROM rl_axon_events"})
        envelope = structured(result)
        assert envelope["row_count"] == 8 and len(envelope["rows"]) == 5 and envelope["rows_cut"]
        assert len(text_of(result).splitlines()) == 1 + 5 + 1  # summary, the 5 rows, the note
        assert "Narrow the query" in envelope["note"] and "Narrow the query" in text_of(result)


async def test_one_huge_row_is_cut_to_the_budget(backend: RunningBackend) -> None:
    budget = 4096
    async with Client(make_server(backend, Settings(output_budget=budget)), mode="auto") as client:
        axon = await new_axon(client)
        await call_ok(client, "publish_event", {"axon_id": axon, "event_type": "big", "payload": "x" * 100_000})
        result = await call_ok(client, "sql_query", {"axon_id": axon, "sql": "SELECT sequence, payload FROM rl_axon_events"})
        envelope = structured(result)
        assert len(envelope["rows"]) == 1 and envelope["rows_cut"] and "substr" in envelope["note"]
        assert len(text_of(result).encode()) < 2 * budget
        assert len(json.dumps(envelope).encode()) < 2 * budget
        row = json.loads(text_of(result).splitlines()[1])
        assert row["payload"].startswith('"xxx') and "bytes cut]" in row["payload"]
        assert envelope["rows"] == [[row["sequence"], row["payload"]]]


async def test_list_axons_finds_the_created_one(mcp: Client) -> None:
    labels = [{"name": "team", "value": "infra"}, {"name": "env", "value": "test"}]
    created = structured(await call_ok(mcp, "create_axon", {"name": "findme-axon", "metadata": labels}))
    assert created["metadata"] == {"team": "infra", "env": "test"}
    listed = structured(await call_ok(mcp, "list_axons", {"name": "findme-axon", "limit": 100}))
    assert created["id"] in [a["id"] for a in listed["axons"]]


async def test_bad_input_gives_clear_errors(mcp: Client) -> None:
    axon = await new_axon(mcp)
    message = await call_error(mcp, "publish_event", {"axon_id": "axn_doesnotexist", "event_type": "e", "payload": 1})
    assert "404" in message and "axn_doesnotexist" in message
    assert message.endswith("axon 'axn_doesnotexist' not found; list axons to see which ids exist"), message  # one hint
    message = await call_error(mcp, "publish_event", {"axon_id": axon, "event_type": "e", "payload": 1, "origin": "SYSTEM_EVENT"})
    assert "origin" in message
    message = await call_error(mcp, "sql_query", {"axon_id": axon, "sql": "SELECT * FROM no_such_table"})
    assert "no_such_table" in message
    message = await call_error(mcp, "sql_query", {"axon_id": "../etc", "sql": "SELECT 1"})
    assert "axon_id" in message
    message = await call_error(mcp, "sql_batch", {"axon_id": axon, "statements": []})
    assert "statements" in message
    message = await call_error(mcp, "sql_batch", {"axon_id": "axn_nope", "statements": [{"sql": "SELECT 1"}]})
    assert "axn_nope" in message
    message = await call_error(mcp, "create_axon", {"metadata": {"a": ["not", "a", "string"]}})
    assert "metadata" in message
    message = await call_error(mcp, "create_axon", {"metadata": [{"name": "k", "value": "1"}, {"name": "k", "value": "2"}]})
    assert "metadata" in message and "'k' is given twice" in message
    message = await call_error(mcp, "list_axons", {"limit": 1000})
    assert "limit" in message


async def test_sql_batch_reports_each_statement_and_is_atomic(mcp: Client) -> None:
    axon = await new_axon(mcp)
    await call_ok(mcp, "sql_query", {"axon_id": axon, "sql": "CREATE TABLE kv (k TEXT PRIMARY KEY)", "allow_writes": True})
    message = await call_error(mcp, "sql_batch", {"axon_id": axon, "statements": [
        {"sql": "INSERT INTO kv VALUES ('a')"},
        {"sql": "INSERT INTO kv VALUES ('a')"},
    ]})
    assert "rolled back" in message and "statement 2 of 2" in message and "UNIQUE" in message
    rows = await call_ok(mcp, "sql_query", {"axon_id": axon, "sql": "SELECT count(*) AS n FROM kv"})
    assert json.loads(text_of(rows).splitlines()[1]) == {"n": 0}
    done = await call_ok(mcp, "sql_batch", {"axon_id": axon, "statements": [
        {"sql": "INSERT INTO kv VALUES (?)", "params": ["b"]},
        {"sql": "SELECT k FROM kv"},
    ]})
    envelope = structured(done)
    assert envelope["results"][0]["changes"] == 1 and envelope["results"][0]["rows"] == []
    assert text_of(done).splitlines()[-2:] == ["statement 2: 1 row(s); columns: k", '{"k": "b"}']
    # The structured content carries each statement's rows, as the text does.
    assert envelope["results"][1]["columns"] == ["k"] and envelope["results"][1]["rows"] == [["b"]]


async def test_publish_retried_after_a_lost_response_stores_one_event(fault_proxy: FaultProxy, backend: RunningBackend) -> None:
    async with Client(make_server(backend, base_url=fault_proxy.url), mode="auto") as client:
        axon = await new_axon(client)
        fault_proxy.fail(r"/publish$", status=503, times=1, forward=True, retry_after=0)
        fault_proxy.fail(r"/publish$", status=429, times=1, forward=True, retry_after=0)
        done = structured(await call_ok(client, "publish_event", {"axon_id": axon, "event_type": "once", "payload": {"n": 1}}))
        attempts = fault_proxy.seen(r"/publish$")
        assert len(attempts) == 3 and len({a.headers.get("x-request-id") for a in attempts}) == 1
        rows = await call_ok(client, "sql_query", {"axon_id": axon, "sql": "SELECT sequence FROM rl_axon_events WHERE event_type = 'once'"})
    assert text_of(rows).splitlines()[1:] == [json.dumps({"sequence": done["sequence"]})]


async def test_sql_query_retries_a_read_but_never_a_write(fault_proxy: FaultProxy, backend: RunningBackend) -> None:
    async with Client(make_server(backend, base_url=fault_proxy.url), mode="auto") as client:
        axon = await new_axon(client)
        fault_proxy.fail(r"/sql/query$", status=503, times=1, retry_after=0)
        rows = await call_ok(client, "sql_query", {"axon_id": axon, "sql": "SELECT 1 AS one"})
        assert text_of(rows).splitlines()[1:] == ['{"one": 1}']
        assert len(fault_proxy.seen(r"/sql/query$")) == 2
        fault_proxy.clear()
        fault_proxy.fail(r"/sql/query$", status=503, times=1, forward=True, retry_after=0)
        message = await call_error(
            client, "sql_query", {"axon_id": axon, "sql": "CREATE TABLE once (x)", "allow_writes": True}
        )
        assert "503" in message and len(fault_proxy.seen(r"/sql/query$")) == 1
