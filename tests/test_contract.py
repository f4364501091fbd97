"""The client speaks the published API: every request the MCP server sends, checked against the OpenAPI documents.

A recording proxy (tests/faultproxy.py, with no rules) sits between the MCP server and the
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
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from faultproxy import FaultProxy, running_proxy
from mcp import Client
from mcp.types import CallToolResult, ResourceTemplateReference
from mcp_support import call_ok, make_server, text_of
from openapi_support import ALLOWANCES, QUERY_ALLOWANCES, PublishedApi, spec_dir

from mcp_server.local.server import RunningBackend

pytestmark = pytest.mark.anyio

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
        async with Client(make_server(backend, base_url=proxy.url), mode="auto") as client:
            yield client, proxy


async def _create_devbox(client: Client, proxy: FaultProxy, backend: RunningBackend, called: set[str]) -> str:
    """create_devbox, held in `initializing` until its status watch has long-polled wait_for_status
    (the request that once carried 'queued'), then let go."""
    result: dict[str, CallToolResult] = {}

    async def create() -> None:
        result["create"] = await call_ok(client, "create_devbox", {
            "name": "contract", "environment_variables": {"MODE": "contract"}, "network_mode": "none",
            "launch_commands": [f"until [ -e {GO_FILE} ]; do sleep 0.02; done"],
        })  # fmt: skip

    async with anyio.create_task_group() as group:
        group.start_soon(create)
        waits = await anyio.to_thread.run_sync(proxy.wait_seen, r"^/v1/devboxes/[^/]+/wait_for_status", 1)
        devbox_id = waits[0].path.split("/")[3]
        tmp = backend.config.data_dir / "devboxes" / devbox_id / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / GO_FILE.rsplit("/", 1)[1]).touch()
    called.add("create_devbox")
    assert _id(result["create"], "dbx") == devbox_id
    return devbox_id


async def _exercise(client: Client, proxy: FaultProxy, backend: RunningBackend) -> set[str]:
    called: set[str] = set()

    async def call(tool: str, args: dict[str, Any]) -> CallToolResult:
        called.add(tool)
        return await call_ok(client, tool, args)

    axon = _id(await call("create_axon", {"name": "contract", "metadata": {"team": "qa"}}), "axn")
    await call("list_axons", {"name": "contract", "limit": 5})
    await call("publish_event", {"axon_id": axon, "event_type": "note", "payload": {"n": 1}, "source": "contract",
                                 "origin": "USER_EVENT"})  # fmt: skip
    await call("sql_query", {"axon_id": axon, "sql": "SELECT ? AS a, ? AS b", "params": ["x", 2]})
    await call("sql_query", {"axon_id": axon, "sql": "CREATE TABLE t (x)", "allow_writes": True})
    await call("sql_batch", {"axon_id": axon, "statements": [
        {"sql": "INSERT INTO t VALUES (?)", "params": [1]}, {"sql": "SELECT count(*) FROM t"},
    ]})  # fmt: skip

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
    reader = _id(await call("execute", {"devbox_id": devbox, "command": "read -r line; echo got $line",
                                        "attach_stdin": True, "wait_seconds": 0}), "exe")  # fmt: skip
    await call("send_stdin", {"devbox_id": devbox, "execution_id": reader, "text": "x\n"})
    await call("stream_logs", {"devbox_id": devbox, "execution_id": reader, "until": "got", "wait_seconds": 30})
    cat = _id(await call("execute", {"devbox_id": devbox, "command": "cat", "attach_stdin": True, "wait_seconds": 0}), "exe")
    await call("send_stdin", {"devbox_id": devbox, "execution_id": cat, "signal": "EOF"})
    sleeper = _id(await call("execute", {"devbox_id": devbox, "command": "sleep 300", "wait_seconds": 0}), "exe")
    await call("kill_execution", {"devbox_id": devbox, "execution_id": sleeper})

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

    await call("suspend_devbox", {"devbox_id": devbox})
    await call("resume_devbox", {"devbox_id": devbox})
    await call("shutdown_devbox", {"devbox_id": devbox})
    return called


async def test_every_request_of_every_tool_is_one_the_published_api_accepts(
    recorded: tuple[Client, FaultProxy], backend: RunningBackend, api: PublishedApi
) -> None:
    client, proxy = recorded
    called = await _exercise(client, proxy, backend)
    tools = {tool.name for tool in (await client.list_tools()).tools}
    assert tools <= called, f"tools this test does not exercise: {sorted(tools - called)}"

    requests = list(proxy.requests)
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
    ]
    assert [(q[1], q[2]) for q in QUERY_ALLOWANCES] == [("/v1/axons", "search")]
