"""tool_schemas/ matches the code, the tool list stays small and well annotated, and every
framework accepts the schemas strictly (no `$ref`, no open maps: openai-agents converts each
input schema to OpenAI's strict mode without falling back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from pydantic import TypeAdapter

from mcp_server.commands.schemas import main, render, tool_schemas
from mcp_server.runloop import RunloopClient
from mcp_server.server import build_server

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tool_schemas"
CORE = {"create_devbox", "execute", "stream_logs", "read_file", "publish_event", "sql_query"}
ALL = CORE | {
    "create_blueprint", "list_blueprints",
    "list_devboxes", "get_devbox", "shutdown_devbox", "suspend_devbox", "resume_devbox", "write_file",
    "send_stdin", "kill_execution", "create_axon", "list_axons", "sql_batch", "expose_port",
    "snapshot_devbox", "list_snapshots", "delete_snapshot", "fork_devbox",
    "open_terminal", "terminal_send", "terminal_read", "close_terminal",
}


def test_checked_in_schemas_match_the_code() -> None:
    docs = anyio.run(tool_schemas)
    on_disk = {p.stem: p.read_text(encoding="utf-8") for p in SCHEMAS.glob("*.json")}
    assert sorted(on_disk) == sorted(docs), "run `devbox-mcp schemas --write`"
    for name, doc in docs.items():
        assert on_disk[name] == render(doc), f"tool_schemas/{name}.json is stale: run `devbox-mcp schemas --write`"


def test_schemas_write_produces_the_files(tmp_path: Path) -> None:
    (tmp_path / "gone_tool.json").write_text("{}")
    assert main(write=True, directory=tmp_path) == 0
    assert {p.stem for p in tmp_path.glob("*.json")} == ALL
    doc = json.loads((tmp_path / "execute.json").read_text())
    assert set(doc) == {"name", "description", "inputSchema", "outputSchema", "annotations"}


# MCP's defaults: what a client reads for a hint the server leaves out.
DEFAULT_HINTS = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False, "openWorldHint": True}


def hints(doc: dict[str, Any]) -> dict[str, Any]:
    """A tool's hints as a client reads them: the published ones over MCP's defaults."""
    return DEFAULT_HINTS | doc["annotations"]


def test_every_tool_has_a_description_and_schemas() -> None:
    docs = anyio.run(tool_schemas)
    assert set(docs) == ALL
    for name, doc in docs.items():
        assert doc["description"] and len(doc["description"]) < 400, name
        assert doc["inputSchema"]["type"] == "object", name
        assert doc["outputSchema"] and doc["outputSchema"]["type"] == "object", name
        # A hint equal to its default is left out (it says nothing and costs tools/list bytes).
        assert all(DEFAULT_HINTS.get(key) != value for key, value in doc["annotations"].items()), name


def test_execute_says_plainly_that_it_runs_a_shell_command() -> None:
    # Clients with tool search (Codex) match a task like "run a shell command" against these words.
    execute = anyio.run(tool_schemas)["execute"]
    assert execute["description"].startswith("Run a shell command in a devbox")


def test_annotations_are_true_to_what_tools_do() -> None:
    docs = anyio.run(tool_schemas)
    read_only = {n for n, d in docs.items() if hints(d)["readOnlyHint"]}
    assert read_only == {"list_devboxes", "get_devbox", "stream_logs", "read_file", "list_axons", "list_snapshots",
                         "list_blueprints", "terminal_read"}  # fmt: skip
    # destructiveHint means something only for a tool that writes.
    destructive = {n for n, d in docs.items() if hints(d)["destructiveHint"] and n not in read_only}
    assert {"shutdown_devbox", "kill_execution", "write_file", "sql_batch", "sql_query", "execute", "send_stdin",
            "delete_snapshot"} <= destructive  # fmt: skip
    assert not {"create_devbox", "create_axon", "publish_event", "suspend_devbox", "resume_devbox",
                "snapshot_devbox", "fork_devbox"} & destructive  # fmt: skip
    assert hints(docs["execute"])["openWorldHint"] is True
    assert hints(docs["get_devbox"])["openWorldHint"] is False


def _walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _unconnected_server():
    return build_server(lambda: RunloopClient("http://127.0.0.1:9", "unused"))


def test_published_schemas_are_self_contained_without_refs() -> None:
    docs = anyio.run(tool_schemas)
    for name, doc in docs.items():
        for kind in ("inputSchema", "outputSchema"):
            for node in _walk(doc[kind]):
                assert not (isinstance(node, dict) and ({"$ref", "$defs"} & set(node))), (name, kind, node)
            Draft202012Validator.check_schema(doc[kind])


def test_every_input_schema_converts_to_openai_strict_mode_without_falling_back() -> None:
    """openai-agents' own MCP conversion (`convert_schemas_to_strict=True`): strict for every tool,
    every property kept, and every optional argument still optional (strict mode makes all of
    them required, so each one has a default or accepts null, and the server takes that null)."""
    from agents.mcp import MCPServerStdio, MCPUtil

    async def convert() -> list[tuple[Any, Any]]:
        server = _unconnected_server()
        tools = await server.list_tools()
        host = MCPServerStdio(params={"command": "true"}, name="devbox")  # never started
        arg_models = {t.name: t.fn_metadata.arg_model for t in server._tool_manager.list_tools()}
        return [(t, MCPUtil.to_function_tool(t, host, convert_schemas_to_strict=True), arg_models[t.name]) for t in tools]

    converted = anyio.run(convert)
    assert {t.name for t, _, _ in converted} == ALL
    for tool, function_tool, arg_model in converted:
        assert function_tool.strict_json_schema, f"{tool.name}: openai-agents fell back to a non-strict schema"
        strict = function_tool.params_json_schema
        assert set(strict["properties"]) == set(tool.input_schema["properties"]), tool.name
        for prop in set(tool.input_schema["properties"]) - set(tool.input_schema.get("required", [])):
            field = arg_model.model_fields[prop]
            if field.default is not None:
                continue  # the model can always send the default
            assert Draft202012Validator(strict["properties"][prop]).is_valid(None), (tool.name, prop)
            annotation = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
            TypeAdapter(annotation).validate_python(None)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tools_list_stays_under_20_kb(mode: str) -> None:
    async with Client(_unconnected_server(), mode=mode) as client:
        listed = await client.list_tools()
    size = len(listed.model_dump_json(by_alias=True, exclude_none=True).encode())
    assert size < 20_000, f"tools/list is {size} bytes: every conversation pays for it"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("execute", {"devbox_id": "dbx_1", "command": "x" * 100_001}, "at most 100,000 characters, got 100,001"),
        ("get_devbox", {"devbox_id": "d" * 201}, "at most 200 characters, got 201"),
        ("create_devbox", {"launch_commands": ["true"] * 51}, "at most 50 items, got 51"),
        ("get_devbox", {"devbox_id": "../axons"}, "an id has only letters, digits"),
        ("execute", {"devbox_id": "d", "command": "true", "command_id": "a b"}, "an id has only letters, digits"),
    ],
)
async def test_unpublished_bounds_are_still_enforced_with_a_clear_error(tool: str, arguments: dict, message: str) -> None:
    # Generous bounds are checked but left out of tools/list (tools/common.py `at_most`): the call is
    # refused before any API request (this server's API address is a closed port), saying the bound.
    async with Client(_unconnected_server()) as client:
        result = await client.call_tool(tool, arguments)
    assert result.is_error
    assert message in result.content[0].text
    assert "x" * 100 not in result.content[0].text


@pytest.mark.anyio
async def test_argument_errors_name_the_argument_and_never_echo_its_value() -> None:
    # pydantic repeats a bad input in its message; an environment variable's value may be a secret.
    arguments = {"environment_variables": [{"name": "TOKEN", "value": 271828182, "extra": "sk-live-31415"}]}
    async with Client(_unconnected_server()) as client:
        result = await client.call_tool("create_devbox", arguments)
    text = result.content[0].text
    assert result.is_error and "invalid arguments" in text
    assert "environment_variables.0.value: Input should be a valid string" in text
    assert "environment_variables.0.extra: Extra inputs are not permitted" in text
    assert "271828182" not in text and "sk-live" not in text and "input_value" not in text
