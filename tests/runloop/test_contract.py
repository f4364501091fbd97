"""The client speaks the published API: every request the MCP server sends, checked against the OpenAPI documents.

A recording proxy (tests/support/faultproxy.py, with no rules) sits between the MCP server and the
embedded backend; a real MCP client calls every tool (and reads, completes and subscribes to the
resources), then each request the proxy saw is checked with `openapi_support.PublishedApi`:
published operation, declared query parameters with valid values, JSON body valid against the
request schema. Users who outgrow one machine point the same tools at Runloop's cloud, which
these tests cannot reach: whatever passes here is what a strict server implementing the
documents accepts. Only requests are asserted on, so the tools' result shapes may change freely.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.types import CallToolResult, ResourceTemplateReference
from support.backend_process import devbox_home
from support.faultproxy import FaultProxy, running_proxy
from support.mcp_client import call_ok, make_server, text_of
from support.openapi import ALLOWANCES, QUERY_ALLOWANCES, VENDORED, PublishedApi, spec_dir, vendored_module

from mcp_server.local.server import RunningBackend
from mcp_server.settings import Settings

SPECS = spec_dir()
if SPECS is None:
    pytest.skip("the published OpenAPI documents (shared/reference/openapi) are not on this machine", allow_module_level=True)

GO_FILE = "/tmp/contract-go"  # the create_devbox launch command waits for it


def _id(result: CallToolResult, prefix: str) -> str:
    """The first id with `prefix` in the result (structured content first), whatever its shape."""
    found = re.findall(rf"\b{prefix}_[A-Za-z0-9]+", json.dumps(result.structured_content or {}) + text_of(result))
    assert found, f"no {prefix} id in {text_of(result)}"
    return found[0]


@pytest.fixture(scope="module")
def api() -> PublishedApi:
    assert SPECS is not None
    return PublishedApi(SPECS)


@pytest.fixture
async def recorded(backend: RunningBackend) -> AsyncIterator[tuple[Client, FaultProxy]]:
    with running_proxy(backend.base_url) as proxy:
        # Driven as Runloop's API: without the embedded backend's extensions (sub-second holds).
        # A set wait_seconds lifts the 3 s cap of the SDK's default client name (budgets.py), which
        # a loaded machine's boot outlasts: this test is about requests, not time budgets.
        server = make_server(backend, Settings(wait_seconds=50), base_url=proxy.url, subsecond_waits=False)
        async with Client(server, mode="auto") as client:
            yield client, proxy


async def _create_devbox(client: Client, proxy: FaultProxy, backend: RunningBackend, called: set[str]) -> str:
    """create_devbox, held in `initializing` until its status watch has long-polled wait_for_status
    (the request that once carried 'queued'), then let go."""
    result: dict[str, CallToolResult] = {}
    secret = f"CONTRACT_{uuid.uuid4().hex[:8]}"  # made directly, as a user would: not a request of the tools
    async with httpx.AsyncClient(base_url=backend.base_url, headers={"Authorization": f"Bearer {backend.api_key}"}) as http:
        (await http.post("/v1/secrets", json={"name": secret, "value": "v"})).raise_for_status()

    async def create() -> None:
        result["create"] = await call_ok(client, "create_devbox", {
            "name": "contract", "environment_variables": [{"name": "MODE", "value": "contract"}], "network_mode": "none",
            "launch_commands": [f"until [ -e {GO_FILE} ]; do sleep 0.02; done"],
            "secrets": [{"env_var": "TOKEN", "secret_name": secret}], "idle_timeout_seconds": 3600, "on_idle": "suspend",
        })  # fmt: skip

    async with anyio.create_task_group() as group:
        group.start_soon(create)
        waits = await anyio.to_thread.run_sync(proxy.wait_seen, r"^/v1/devboxes/[^/]+/wait_for_status", 1)
        devbox_id = waits[0].path.split("/")[3]
        # Its launch command runs once it is initializing: its disk is mounted by then (asked directly,
        # not through the proxy: not a request of the tools).
        async with httpx.AsyncClient(base_url=backend.base_url, headers={"Authorization": f"Bearer {backend.api_key}"},
                                     timeout=60) as http:  # fmt: skip
            r = await http.post(f"/v1/devboxes/{devbox_id}/wait_for_status", json={"statuses": ["initializing"]})
            assert r.json()["status"] == "initializing", r.text
        tmp = devbox_home(backend.config.data_dir, devbox_id).parent / "tmp"  # on the devbox's disk, if any
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / GO_FILE.rsplit("/", 1)[1]).touch()
    called.add("create_devbox")
    assert _id(result["create"], "dbx") == devbox_id
    return devbox_id


FORK = r"^/v1/devboxes/[^/]+/fork$"


async def _exercise(client: Client, proxy: FaultProxy, backend: RunningBackend) -> set[str]:
    called: set[str] = set()

    async def call(tool: str, args: dict[str, Any]) -> CallToolResult:
        called.add(tool)
        return await call_ok(client, tool, args)

    axon = _id(await call("create_axon", {"name": "contract", "metadata": [{"name": "team", "value": "qa"}]}), "axn")
    await call("list_axons", {"name": "contract", "limit": 5})
    await call("publish_event", {"axon_id": axon, "event_type": "note", "payload": {"n": 1}, "source": "contract",
                                 "origin": "USER_EVENT"})  # fmt: skip
    await call("sql_query", {"axon_id": axon, "sql": "SELECT ? AS a, ? AS b", "params": ["x", 2]})
    await call("sql_query", {"axon_id": axon, "sql": "CREATE TABLE t (x)", "allow_writes": True})
    await call("sql_batch", {"axon_id": axon, "statements": [
        {"sql": "INSERT INTO t VALUES (?)", "params": [1]}, {"sql": "SELECT count(*) FROM t"},
    ]})  # fmt: skip

    await call("create_blueprint", {"name": "contract", "dockerfile": "FROM devbox-mcp\nRUN echo built"})
    await call("list_blueprints", {"name": "contract"})

    devbox = await _create_devbox(client, proxy, backend, called)
    await call("list_devboxes", {"status": "running", "limit": 5})
    await call("get_devbox", {"devbox_id": devbox})
    await call("write_file", {"devbox_id": devbox, "path": "notes.txt", "contents": "one\ntwo\n"})
    await call("read_file", {"devbox_id": devbox, "path": "notes.txt"})
    await call("read_file", {"devbox_id": devbox, "path": "notes.txt", "tail_lines": 1})
    command = "echo out; echo err >&2; head -c 64 /dev/urandom > blob.bin"
    done = _id(await call("execute", {"devbox_id": devbox, "command": command, "wait_seconds": 30}), "exe")
    await call("read_file", {"devbox_id": devbox, "path": "blob.bin", "binary": True})
    await call("execute", {"devbox_id": devbox, "command": "true", "command_id": "contract-1", "wait_seconds": 30})
    # Longer than the fast window: attached to by a second execute, then streamed and waited for.
    await call("execute", {"devbox_id": devbox, "command": "echo start; sleep 0.5; echo end", "wait_seconds": 30})
    reader = _id(await call("execute", {"devbox_id": devbox, "command": "read -r line; echo got $line",
                                        "attach_stdin": True, "wait_seconds": 0}), "exe")  # fmt: skip
    await call("send_stdin", {"devbox_id": devbox, "execution_id": reader, "text": "x\n"})
    await call("stream_logs", {"devbox_id": devbox, "execution_id": reader, "until": "got", "wait_seconds": 30})
    cat = _id(await call("execute", {"devbox_id": devbox, "command": "cat", "attach_stdin": True, "wait_seconds": 0}), "exe")
    await call("send_stdin", {"devbox_id": devbox, "execution_id": cat, "signal": "EOF"})
    sleeper = _id(await call("execute", {"devbox_id": devbox, "command": "sleep 300", "wait_seconds": 0}), "exe")
    await call("kill_execution", {"devbox_id": devbox, "execution_id": sleeper})
    await call("expose_port", {"devbox_id": devbox, "port": 8000})
    await call("expose_port", {"devbox_id": devbox, "port": 8001, "public": True})  # the tunnel it has

    # Terminals: create_pty_tunnel on the API, then the PTY paths where the tunnel key routes.
    opened = await call("open_terminal", {"devbox_id": devbox, "cols": 80, "rows": 24})
    session = (opened.structured_content or {})["session"]
    await call("terminal_send", {"session": session, "text": "echo hi", "keys": ["Enter"], "wait_for": "^hi$",
                                 "resize": "100x30"})  # fmt: skip
    await call("terminal_read", {"session": session})
    await call("close_terminal", {"session": session})

    # Resources: the listing, each template, completions, and a subscription's feed.
    await client.list_resources()
    for uri in (f"devbox://{devbox}", f"axon://{axon}/events?limit=5", f"axon://{axon}/events/1",
                f"devbox://{devbox}/executions/{done}/stdout?offset=0&limit=100"):  # fmt: skip
        await client.read_resource(uri)
    for template, argument, value, known in (
        ("axon://{axon_id}/events{?after_sequence,before_sequence,limit}", "axon_id", axon[:5], None),
        ("devbox://{devbox_id}", "devbox_id", "dbx", None),
        ("devbox://{devbox_id}/executions/{execution_id}/{stream}{?offset,limit}", "execution_id", "exe", {"devbox_id": devbox}),
        ("axon://{axon_id}/events/{sequence}", "sequence", "", {"axon_id": axon}),
    ):  # fmt: skip
        await client.complete(ResourceTemplateReference(uri=template), {"name": argument, "value": value}, known)
    uris = [f"axon://{axon}/events", f"devbox://{devbox}", f"devbox://{devbox}/executions/{done}/stdout"]
    async with client.listen(resource_subscriptions=uris):
        await anyio.to_thread.run_sync(proxy.wait_seen, rf"^/v1/axons/{axon}/subscribe/sse", 1)

    snapshot = _id(await call("snapshot_devbox", {"devbox_id": devbox, "name": "contract", "commit_message": "m"}), "snp")
    await call("list_snapshots", {"devbox_id": devbox})
    await call("delete_snapshot", {"snapshot_id": snapshot})
    # /fork is our extension: fork_devbox falls back to published calls (a snapshot and creates)
    # where it is missing, as on Runloop's cloud. Those are what is checked here.
    proxy.fail(FORK, status=404, times=None, message="Not Found")
    forked = json.loads(text_of(await call("fork_devbox", {"devbox_id": devbox, "count": 1})))
    for fork in forked["devbox_ids"]:
        await call("shutdown_devbox", {"devbox_id": fork})

    await call("suspend_devbox", {"devbox_id": devbox})
    await call("resume_devbox", {"devbox_id": devbox})
    await call("shutdown_devbox", {"devbox_id": devbox})
    return called


@pytest.mark.anyio
async def test_every_request_of_every_tool_is_one_the_published_api_accepts(
    recorded: tuple[Client, FaultProxy], backend: RunningBackend, api: PublishedApi
) -> None:
    client, proxy = recorded
    called = await _exercise(client, proxy, backend)
    tools = {tool.name for tool in (await client.list_tools()).tools}
    assert tools <= called, f"tools this test does not exercise: {sorted(tools - called)}"

    # The PTY paths are served at the tunnel's base URL: Runloop's tunnel host, or here the API under
    # /tunnel/{key}; what is checked is the path below it, the spec's /pty/... The WebSocket upgrade
    # is the data plane, which the spec does not model.
    requests = [
        replace(r, target=re.sub(r"^/tunnel/[^/]+(?=/pty/)", "", r.target))
        for r in proxy.requests
        if r.headers.get("upgrade", "").lower() != "websocket" and not re.search(FORK, r.path)
    ]
    problems = [p for r in requests for p in api.check(r.method, r.target, r.headers, r.body)]
    assert not problems, "requests a strict server could refuse:\n" + "\n".join(dict.fromkeys(problems))
    operations = {f"{op.method} {op.template}" for r in requests if (op := api.operation(r.method, r.path))}
    # The watch that once sent "queued", the other long-poll, and the streams were among them.
    assert {"POST /v1/devboxes/{id}/wait_for_status",
            "POST /v1/devboxes/{devbox_id}/executions/{execution_id}/wait_for_status",
            "GET /v1/axons/{id}/subscribe/sse",
            "GET /v1/devboxes/{devbox_id}/executions/{execution_id}/stream_stdout_updates"} <= operations, operations  # fmt: skip


def test_the_checker_refuses_what_the_documents_refuse(api: PublishedApi) -> None:
    """The check is not hollow: the old status watch's request, and others a strict server refuses."""
    json_headers = {"content-type": "application/json"}

    def check(method: str, target: str, body: Any = None) -> list[str]:
        raw = b"" if body is None else json.dumps(body).encode()
        return api.check(method, target, json_headers if body is not None else {}, raw)

    assert "'queued' is not one of" in " ".join(
        check("POST", "/v1/devboxes/dbx_1/wait_for_status", {"statuses": ["queued", "running"], "timeout_seconds": 10})
    )
    assert "9.5 is not of type 'integer'" in " ".join(
        check("POST", "/v1/devboxes/dbx_1/wait_for_status", {"statuses": ["running"], "timeout_seconds": 9.5})
    )
    assert "'queued' is not one of" in " ".join(check("GET", "/v1/devboxes?status=queued"))
    assert "'bogus' is not declared" in " ".join(check("GET", "/v1/devboxes?bogus=1"))
    assert "no such operation" in " ".join(check("POST", "/v1/devboxes/dbx_1/snapshot"))
    assert "'extra' was unexpected" in " ".join(check("POST", "/v1/devboxes/dbx_1/execute_async", {"command": "ls", "extra": 1}))
    assert "'command_id' is a required property" in " ".join(check("POST", "/v1/devboxes/dbx_1/execute", {"command": "ls"}))
    assert "is not a 'int32'" in " ".join(
        check("POST", "/v1/devboxes/dbx_1/execute", {"command": "ls", "command_id": "c", "optimistic_timeout": 2**40})
    )
    # The allowances are exactly the documented ones.
    assert [a[1] for a in ALLOWANCES] == [
        "LaunchParameters.properties.network_mode",
        "AxonCreateParams.properties.metadata",
        "SqlStatementParams.properties.params.items",
        "LaunchParameters.properties.custom_cpu_cores",
    ]
    assert [(q[1], q[2]) for q in QUERY_ALLOWANCES] == [("/v1/axons", "search")]


# -- the backend refuses what the published schemas refuse ----------------------------------------


def test_the_backends_vendored_schemas_are_the_published_ones() -> None:
    """mcp_server/local/published_schemas.py is generated from the documents; regenerate it when they change."""
    assert SPECS is not None
    assert VENDORED.read_text() == vendored_module(SPECS), "run: python tests/support/openapi.py --write"


def _invalid_values(api: PublishedApi, document: str, schema: dict[str, Any]) -> list[Any]:
    """Values the published `schema` refuses: the wrong type, or a value outside its enum or range."""
    schema = api.resolve(document, schema)
    if "enum" in schema:
        return ["no-such-value"]
    kind = schema.get("type")
    values: list[Any] = {
        "string": [12345], "integer": ["seven"], "number": ["seven"], "boolean": ["yes"],
        "array": ["not-an-array"], "object": ["not-an-object"],
    }.get(kind, [])  # fmt: skip
    if schema.get("format") == "int32":
        values.append(2**40)
    if kind == "array":
        values += [[bad] for bad in _invalid_values(api, document, schema.get("items", {}))]
    return values


@pytest.fixture(scope="module")
def targets(sdk) -> Any:  # noqa: ANN001
    """A running devbox, a running execution in it, and an axon: the ids the routes need."""
    box = sdk.devboxes.create_and_await_running(launch_parameters={"network_mode": "none"})
    running = sdk.devboxes.execute_async(box.id, command="sleep 600", attach_stdin=True)
    axon = sdk.axons.create(name="contract-targets")
    yield {"devbox": box.id, "execution": running.execution_id, "axon": axon.id}
    sdk.devboxes.shutdown(box.id)


# A valid body per operation (what is required): each case changes one field of it.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/v1/devboxes/{id}/wait_for_status": {"statuses": ["running"]},
    "/v1/devboxes/{devbox_id}/executions/{execution_id}/wait_for_status": {"statuses": ["completed"]},
    "/v1/devboxes/{id}/execute": {"command": "true", "command_id": "contract-bad-values"},
    "/v1/devboxes/{id}/execute_async": {"command": "true"},
    "/v1/devboxes/{id}/execute_sync": {"command": "true"},
    "/v1/devboxes/{id}/read_file_contents": {"file_path": "missing.txt"},
    "/v1/devboxes/{id}/write_file_contents": {"file_path": "contract.txt", "contents": ""},
    "/v1/devboxes/{id}/download_file": {"path": "missing.txt"},
    "/v1/axons/{id}/publish": {"source": "s", "event_type": "t", "origin": "USER_EVENT", "payload": "{}"},
    "/v1/axons/{id}/sql/query": {"sql": "SELECT 1"},
    "/v1/axons/{id}/sql/batch": {"statements": [{"sql": "SELECT 1"}]},
    "/v1/blueprints": {"name": "contract-bad-values"},
    "/v1/blueprints/preview": {"name": "contract-bad-values"},
    "/v1/blueprints/create_from_inspection": {"name": "contract-bad-values", "inspection_source": {"inspection_id": "i"}},
}


def _served(backend: RunningBackend) -> set[tuple[str, str]]:
    """(method, path with every parameter as {}) of each route the backend serves."""
    return {
        (method, re.sub(r"\{[^}]*\}", "{}", route.path))
        for route in backend._server.config.app.routes
        for method in getattr(route, "methods", None) or ()
    }


def _cases(api: PublishedApi, backend: RunningBackend) -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """(method, path template, a valid body with one bad field, that field's name) for every
    published JSON body the backend takes, each top-level field and each of launch_parameters."""
    served = _served(backend)
    for op in api.operations:
        if (op.method, re.sub(r"\{[^}]*\}", "{}", op.template)) not in served:
            continue
        body = op.op.get("requestBody", {}).get("content", {}).get("application/json")
        if body is None:
            continue
        schema = api.resolve(op.document, body["schema"])
        valid = VALID_BODIES.get(op.template, {})
        for name, prop in schema.get("properties", {}).items():
            for bad in _invalid_values(api, op.document, prop):
                yield op.method, op.template, {**valid, name: bad}, name
            if name == "launch_parameters":
                nested = api.resolve(op.document, prop)
                for inner, inner_prop in nested.get("properties", {}).items():
                    for bad in _invalid_values(api, op.document, inner_prop):
                        yield op.method, op.template, {**valid, name: {inner: bad}}, f"{name}.{inner}"


def test_the_backend_refuses_what_the_published_schemas_refuse(
    api: PublishedApi, backend: RunningBackend, http: Any, targets: dict[str, str]
) -> None:
    cases = list(_cases(api, backend))
    templates = {template for _, template, _, _ in cases}
    assert {"/v1/devboxes", "/v1/devboxes/{id}/wait_for_status", "/v1/devboxes/{id}/execute",
            "/v1/devboxes/{devbox_id}/executions/{execution_id}/wait_for_status", "/v1/axons/{id}/sql/batch",
            "/v1/axons/{id}/publish"} <= templates, templates  # fmt: skip
    wrong = []
    for method, template, body, field in cases:
        path = (
            template.replace("{devbox_id}", targets["devbox"]).replace("{execution_id}", targets["execution"])
            .replace("{id}", targets["axon"] if template.startswith("/v1/axons") else targets["devbox"])
        )  # fmt: skip
        response = http.request(method, path, json=body)
        message = response.json().get("message", "") if response.headers.get("content-type", "").startswith("application/json") else ""
        if response.status_code != 400 or field.rsplit(".", 1)[-1] not in message:
            wrong.append(f"{method} {template} {json.dumps(body)[:80]} -> {response.status_code} {message[:120]}")
    assert not wrong, f"{len(wrong)} of {len(cases)} bad values were not refused with 400 naming the field:\n" + "\n".join(wrong)
    refused = http.get("/v1/devboxes", params={"status": "queued"})
    assert refused.status_code == 400 and "status" in refused.json()["message"]


def test_the_backend_ignores_fields_it_does_not_know(http: Any, targets: dict[str, str]) -> None:
    """Newer (or older) SDKs send fields this server does not know: they are not errors."""
    response = http.post(
        f"/v1/devboxes/{targets['devbox']}/execute_async",
        json={"command": "true", "shell_name": None, "a_future_field": {"any": ["shape"]}},
    )
    assert response.status_code == 200, response.text
