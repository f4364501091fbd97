"""Resources through a real MCP client (both eras) against the embedded backend: axon history,
single events, devbox views, execution output, listing, templates, completions, errors."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, MCPError
from mcp.types import Implementation, ResourceLink, ResourceTemplateReference
from support.mcp_client import MODES, call_ok, make_server, structured, text_of

from mcp_server.local.server import RunningBackend
from mcp_server.resources.uris import AXON_EVENTS, EXECUTION_OUTPUT
from mcp_server.runloop import RunloopClient
from mcp_server.settings import Settings

pytestmark = pytest.mark.anyio

N_EVENTS = 1000


def run(fn: Any) -> Any:
    return anyio.run(fn)


@pytest.fixture(scope="module")
def axon_1000(backend: RunningBackend) -> str:
    """An axon with 1,000 events of varied payloads (JSON objects, numbers, and plain text)."""

    async def build() -> str:
        async with RunloopClient(backend.base_url, backend.api_key) as client:
            async with httpx.AsyncClient(base_url=backend.base_url, headers=_auth(backend)) as http:
                axon = await client.create_axon(name="history")
                for i in range(N_EVENTS):
                    if i % 10 == 9:  # a payload that is not JSON, sent through the HTTP API directly
                        r = await http.post(f"/v1/axons/{axon.id}/publish", json={
                            "event_type": "raw", "origin": "USER_EVENT", "source": "test", "payload": f"plain {i}"})
                        r.raise_for_status()
                    else:
                        await client.publish(axon.id, event_type="step", payload={"i": i, "text": f"é{i}"})
            return axon.id

    return run(build)


def _auth(backend: RunningBackend) -> dict[str, str]:
    return {"Authorization": f"Bearer {backend.api_key}"}


@pytest.fixture(scope="module")
def devbox_id(backend: RunningBackend) -> str:
    async def create() -> str:
        async with Client(make_server(backend), mode="auto") as client:
            return structured(await call_ok(client, "create_devbox", {"name": "resources"}))["id"]

    return run(create)


async def read_text(client: Client, uri: str) -> str:
    result = await client.read_resource(uri)
    assert len(result.contents) == 1
    return result.contents[0].text  # type: ignore[union-attr]


async def read_json(client: Client, uri: str) -> dict[str, Any]:
    return json.loads(await read_text(client, uri))


async def sql_rows(backend: RunningBackend, axon_id: str) -> list[dict[str, Any]]:
    async with RunloopClient(backend.base_url, backend.api_key) as client:
        res = await client.sql_query(
            axon_id,
            "SELECT sequence, timestamp_ms, origin, source, event_type, payload FROM rl_axon_events ORDER BY sequence DESC",
        )
    return res.records()


def decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A SQL row in the resource's event form: payload decoded when it is JSON."""
    out = dict(row)
    try:
        out["payload"] = json.loads(row["payload"])
    except ValueError:
        out["payload_format"] = "text"
    return out


async def test_history_of_1000_events_pages_newest_first_and_matches_sql(
    mcp: Client, backend: RunningBackend, axon_1000: str
) -> None:
    expected = [decoded(r) for r in await sql_rows(backend, axon_1000)]
    assert len(expected) == N_EVENTS

    seen: list[dict[str, Any]] = []
    uri: str | None = f"axon://{axon_1000}/events?limit=100"
    pages = 0
    while uri is not None:
        page = await read_json(mcp, uri)
        assert page["order"] == "newest_first" and page["newest_sequence"] == N_EVENTS
        seen.extend(page["events"])
        uri = page["next_page"]
        assert page["has_more"] == (uri is not None)
        pages += 1
    assert pages == 10
    assert seen == expected
    assert any(e.get("payload_format") == "text" for e in seen)
    assert {"i": 0, "text": "é0"} in [e["payload"] for e in seen]

    default = await read_json(mcp, f"axon://{axon_1000}/events")
    assert [e["sequence"] for e in default["events"]] == list(range(N_EVENTS, N_EVENTS - 100, -1))


async def test_history_after_a_sequence_reads_forward_oldest_first(
    mcp: Client, backend: RunningBackend, axon_1000: str
) -> None:
    expected = [decoded(r) for r in reversed(await sql_rows(backend, axon_1000))]
    seen: list[dict[str, Any]] = []
    uri = f"axon://{axon_1000}/events?after_sequence=0&limit=300"
    while True:
        page = await read_json(mcp, uri)
        assert page["order"] == "oldest_first"
        seen.extend(page["events"])
        uri = page["next_page"]
        if not page["has_more"]:
            break
    assert seen == expected
    # Up to date: no events, and next_page is where new ones will appear.
    caught_up = await read_json(mcp, uri)
    assert caught_up["events"] == [] and caught_up["next_page"] == uri and "subscribe" in caught_up["note"]


async def test_one_event_by_sequence(mcp: Client, backend: RunningBackend, axon_1000: str) -> None:
    row = next(r for r in await sql_rows(backend, axon_1000) if r["sequence"] == 500)
    event = await read_json(mcp, f"axon://{axon_1000}/events/500")
    assert {k: event[k] for k in decoded(row)} == decoded(row)
    assert event["uri"] == f"axon://{axon_1000}/events/500"


async def test_unknown_ids_give_resource_not_found(mcp: Client, axon_1000: str, devbox_id: str) -> None:
    done = await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": "echo hi"})
    execution = structured(done)["execution_id"]
    cases = {
        "axon://axn_nope/events": "axon 'axn_nope' not found",
        "axon://axn_nope/events/1": "axon 'axn_nope' not found",
        f"axon://{axon_1000}/events/{N_EVENTS + 5}": f"has no event {N_EVENTS + 5}; its newest is {N_EVENTS}",
        "devbox://dbx_nope": "devbox 'dbx_nope' not found",
        "devbox://dbx_nope/executions/x/stdout": "not found",
        f"devbox://{devbox_id}/executions/exe_nope/stdout": "execution 'exe_nope'",
        f"devbox://{devbox_id}/executions/{execution}/stdin": "no output stream 'stdin'",
        "axon://a%2Fb/events": "not found",
        "nothing://here": "",
    }
    for uri, fragment in cases.items():
        with pytest.raises(MCPError) as err:
            await mcp.read_resource(uri)
        assert err.value.error.code == -32602, uri
        assert fragment in err.value.error.message, (uri, err.value.error.message)


async def test_bad_parameters_say_what_is_wrong(mcp: Client, axon_1000: str) -> None:
    cases = {
        f"axon://{axon_1000}/events?limit=abc": "limit must be an integer, got 'abc'",
        f"axon://{axon_1000}/events?limit=0": "limit must be between 1 and 1000",
        f"axon://{axon_1000}/events?limit=5000": "limit must be between 1 and 1000",
        f"axon://{axon_1000}/events?after_sequence=1&before_sequence=5": "not both",
        f"axon://{axon_1000}/events/x": "sequence must be an integer",
    }
    for uri, fragment in cases.items():
        with pytest.raises(MCPError) as err:
            await mcp.read_resource(uri)
        assert err.value.error.code == -32602 and fragment in err.value.error.message, (uri, err.value.error.message)


async def test_output_resource_matches_stream_logs_byte_for_byte(mcp: Client, devbox_id: str) -> None:
    command = r"for i in $(seq 1 200); do printf 'line %s \033[1mbold\033[0m é ✓\n' $i; done; echo err >&2"
    started = structured(await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": command}))
    execution = started["execution_id"]
    logs = text_of(await call_ok(mcp, "stream_logs", {"devbox_id": devbox_id, "execution_id": execution}))
    stdout_section = logs.split("--- stdout ---\n", 1)[1].split("--- stderr ---\n", 1)[0]
    stderr_section = logs.split("--- stderr ---\n", 1)[1]

    stdout = await read_text(mcp, f"devbox://{devbox_id}/executions/{execution}/stdout")
    stderr = await read_text(mcp, f"devbox://{devbox_id}/executions/{execution}/stderr")
    assert stdout.encode() == stdout_section.encode()
    assert stderr.encode() == stderr_section.encode() == b"err\n"
    assert "\x1b" not in stdout and stdout.startswith("line 1 bold é ✓\n")


async def test_cut_output_links_to_resources_that_page_through_every_byte(backend: RunningBackend, devbox_id: str) -> None:
    settings = Settings(output_budget=2048, resource_links="always")
    async with Client(make_server(backend, settings), mode="auto") as mcp:
        command = "seq 1 20000"  # 108,894 bytes
        result = await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": command})
        links = [b for b in result.content if isinstance(b, ResourceLink)]
        execution = structured(result)["execution_id"]
        assert [link.uri for link in links] == [f"devbox://{devbox_id}/executions/{execution}/stdout"]

        whole = await read_text(mcp, links[0].uri)
        assert len(whole.encode()) <= 2048 and "bytes of stdout omitted" in whole
        assert whole.startswith("1\n2\n") and whole.endswith("19999\n20000\n")
        # The marker points at a resource URI that reads exactly the omitted range.
        hinted = whole.split("read them at ", 1)[1].split(" ", 1)[0]
        assert hinted.startswith(f"devbox://{devbox_id}/executions/{execution}/stdout?offset=")

        expected = "".join(f"{i}\n" for i in range(1, 20001))
        got, offset, pages = "", 0, 0
        while offset < len(expected):
            text = await read_text(mcp, f"{links[0].uri}?offset={offset}&limit=1500")
            body, _, trailer = text.partition("\n[… more output from byte ")
            got += body
            offset += len(body.encode())
            pages += 1
            if trailer:
                assert trailer.startswith(f"{offset}: read ")
        assert got == expected and pages == -(-len(expected) // 1500)


async def cut_links(client: Client, devbox_id: str) -> list[ResourceLink]:
    """The resource links of an execute whose output is cut; its text says how to read the rest."""
    result = await call_ok(client, "execute", {"devbox_id": devbox_id, "command": "seq 1 20000"})
    assert "read them with stream_logs stdout_offset=" in text_of(result)
    assert "read them with stream_logs stdout_offset=" in structured(result)["stdout"]
    return [b for b in result.content if isinstance(b, ResourceLink)]


@pytest.mark.parametrize("mode", MODES)
async def test_links_go_only_to_a_client_that_has_read_a_resource(backend: RunningBackend, devbox_id: str, mode: str) -> None:
    server = make_server(backend, Settings(output_budget=2048))  # resource_links: auto
    async with Client(server, mode=mode) as reader, Client(
        server, mode=mode, client_info=Implementation(name="other-client", version="1")
    ) as other:
        assert await cut_links(reader, devbox_id) == []  # nothing read yet: no links
        await read_json(reader, f"devbox://{devbox_id}")
        links = await cut_links(reader, devbox_id)
        assert [link.uri.rsplit("/", 1)[1] for link in links] == ["stdout"]
        assert "bytes of stdout omitted" in await read_text(reader, links[0].uri)
        # Another client (its own session; in the 2026 era, another clientInfo) has read nothing.
        assert await cut_links(other, devbox_id) == []
    # A new session of the same kind starts over in the handshake era (the links followed the
    # connection); the 2026 era has no sessions and knows the client by name and version.
    async with Client(server, mode=mode) as again:
        assert bool(await cut_links(again, devbox_id)) == (mode == "auto")


@pytest.mark.parametrize(("setting", "linked"), [("always", True), ("never", False)])
async def test_links_setting_always_or_never_overrides_auto(
    backend: RunningBackend, devbox_id: str, setting: str, linked: bool
) -> None:
    server = make_server(backend, Settings(output_budget=2048, resource_links=setting))
    async with Client(server, mode="legacy") as client:
        assert bool(await cut_links(client, devbox_id)) == linked
        await read_json(client, f"devbox://{devbox_id}")
        assert bool(await cut_links(client, devbox_id)) == linked


def test_links_setting_comes_from_the_environment_and_bad_values_are_refused() -> None:
    assert Settings().resource_links == "auto"
    assert Settings.from_env({"DEVBOX_MCP_RESOURCE_LINKS": "Never"}).resource_links == "never"
    with pytest.raises(ValueError, match="DEVBOX_MCP_RESOURCE_LINKS='sometimes' is not one of auto, always, never"):
        Settings.from_env({"DEVBOX_MCP_RESOURCE_LINKS": "sometimes"})


async def test_devbox_resource_is_its_view(mcp: Client, devbox_id: str) -> None:
    view = await read_json(mcp, f"devbox://{devbox_id}")
    assert view["id"] == devbox_id and view["status"] == "running" and view["name"] == "resources"


async def test_list_pages_through_axons_and_running_devboxes(backend: RunningBackend, devbox_id: str) -> None:
    async with RunloopClient(backend.base_url, backend.api_key) as client:
        made = [(await client.create_axon(name=f"list-{i}")).id for i in range(60)]
        gone = (await client.create_axon(name="deleted")).id
        async with httpx.AsyncClient(base_url=backend.base_url, headers=_auth(backend)) as http:
            (await http.delete(f"/v1/axons/{gone}")).raise_for_status()
    for mode in MODES:
        async with Client(make_server(backend), mode=mode) as mcp:
            uris: list[str] = []
            cursor = None
            pages = 0
            while True:
                page = await mcp.list_resources(cursor=cursor)
                uris.extend(r.uri for r in page.resources)
                pages += 1
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert pages >= 2
            assert len(uris) == len(set(uris))
            assert {f"axon://{a}/events" for a in made} <= set(uris)
            assert f"axon://{gone}/events" not in uris
            assert f"devbox://{devbox_id}" in uris
            with pytest.raises(MCPError) as err:
                await mcp.list_resources(cursor="not-a-cursor")
            assert err.value.error.code == -32602 and "cursor" in err.value.error.message


async def test_templates_are_listed(mcp: Client) -> None:
    templates = {t.uri_template: t for t in (await mcp.list_resource_templates()).resource_templates}
    assert set(templates) == {
        AXON_EVENTS,
        "axon://{axon_id}/events/{sequence}",
        "devbox://{devbox_id}",
        EXECUTION_OUTPUT,
        "terminal://{devbox_id}/{session}",
    }
    assert templates[EXECUTION_OUTPUT].mime_type == "text/plain"
    assert all(t.description for t in templates.values())


async def test_completions_suggest_axon_devbox_and_execution_ids(mcp: Client, axon_1000: str, devbox_id: str) -> None:
    caps = mcp.server_capabilities
    assert caps is not None and caps.completions is not None
    axons = await mcp.complete(ResourceTemplateReference(type="ref/resource", uri=AXON_EVENTS),
                               {"name": "axon_id", "value": axon_1000[:8]})
    assert axon_1000 in axons.completion.values
    assert all(v.startswith(axon_1000[:8]) for v in axons.completion.values)
    boxes = await mcp.complete(ResourceTemplateReference(type="ref/resource", uri=EXECUTION_OUTPUT),
                               {"name": "devbox_id", "value": ""})
    assert devbox_id in boxes.completion.values

    execution = structured(await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": "true"}))["execution_id"]
    ref = ResourceTemplateReference(type="ref/resource", uri=EXECUTION_OUTPUT)
    found = await mcp.complete(ref, {"name": "execution_id", "value": ""}, context_arguments={"devbox_id": devbox_id})
    assert found.completion.values[0] == execution
    streams = await mcp.complete(ref, {"name": "stream", "value": "std"})
    assert streams.completion.values == ["stdout", "stderr"]
    none = await mcp.complete(ref, {"name": "execution_id", "value": ""})
    assert none.completion.values == []


async def test_reading_a_running_commands_output_returns_what_exists_so_far(mcp: Client, devbox_id: str) -> None:
    # A command that never goes quiet: the read must still return (the output so far).
    started = structured(await call_ok(mcp, "execute", {
        "devbox_id": devbox_id, "wait_seconds": 0, "command": "while true; do echo tick; done"}))
    execution = started["execution_id"]
    try:
        with anyio.fail_after(30):
            text = await read_text(mcp, f"devbox://{devbox_id}/executions/{execution}/stdout")
        assert text.startswith("tick\ntick\n")
    finally:
        await call_ok(mcp, "kill_execution", {"devbox_id": devbox_id, "execution_id": execution})


async def test_history_page_of_big_payloads_is_cut_by_bytes_and_continues(mcp: Client) -> None:
    axon = structured(await call_ok(mcp, "create_axon", {"name": "big-payloads"}))["id"]
    for i in range(6):
        await call_ok(mcp, "publish_event", {"axon_id": axon, "event_type": "big", "payload": {"i": i, "blob": "x" * 100_000}})
    for start, order in ((f"axon://{axon}/events?limit=10", "newest"), (f"axon://{axon}/events?after_sequence=0&limit=10", "oldest")):
        first = await read_json(mcp, start)
        assert 0 < len(first["events"]) < 6 and first["has_more"] and "cut" in first["note"]
        assert len(json.dumps(first["events"])) <= 256 * 1024 + 110_000  # at most one event past the budget
        seen, uri = list(first["events"]), first["next_page"]
        while len(seen) < 6:
            page = await read_json(mcp, uri)
            assert page["events"], f"no progress reading {order} first"
            seen.extend(page["events"])
            uri = page["next_page"]
        expected = list(range(6, 0, -1)) if order == "newest" else list(range(1, 7))
        assert [e["sequence"] for e in seen] == expected
