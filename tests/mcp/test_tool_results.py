"""Every tool's result is whole in its structured content, which validates against the output
schema the tool publishes.

Claude Code, Codex and pydantic-ai hand their model only the structured content of a result
that has one; other clients only its text. So the structured content must carry everything the
text shows (the output itself, not an envelope around it), and it must validate against the
published `outputSchema`: the TypeScript SDK and fastmcp refuse a result that does not. The
schemas are checked here with `jsonschema` (draft 2020-12, MCP's default dialect), against the
`tools/list` a real client receives, for representative calls of every tool.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from mcp.types import CallToolResult, ImageContent
from support.mcp_client import call_ok, make_server, structured, text_of
from test_schemas import ALL

from mcp_server.local.server import RunningBackend
from mcp_server.runloop import RunloopClient
from mcp_server.settings import Settings

pytestmark = pytest.mark.anyio

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
# Tools whose text is their own rendering; every other tool's text is its structured content as JSON.
RENDERED = {
    "execute", "stream_logs", "read_file", "sql_query", "sql_batch", "list_devboxes", "list_axons", "expose_port",
    "list_snapshots", "create_blueprint", "list_blueprints", "open_terminal", "terminal_send", "terminal_read",
}


class Checked:
    """Calls tools and checks each result against the published output schema."""

    def __init__(self, client: Client, schemas: dict[str, dict[str, Any]]) -> None:
        self.client = client
        self.validators = {name: Draft202012Validator(schema) for name, schema in schemas.items()}
        self.called: set[str] = set()

    async def __call__(self, tool: str, args: dict[str, Any]) -> tuple[CallToolResult, dict[str, Any]]:
        result = await call_ok(self.client, tool, args)
        data = structured(result)
        errors = sorted(self.validators[tool].iter_errors(data), key=str)
        assert not errors, f"{tool}: structured content does not match its outputSchema: {errors[0]}"
        if tool not in RENDERED:
            assert json.loads(text_of(result)) == data, tool
        self.called.add(tool)
        return result, data


def section(text: str, stream: str) -> str:
    """A stream's section of an execute/stream_logs text ('' when the text has none)."""
    match = re.search(rf"--- {stream} ---\n(.*?)(?=\n--- std(?:out|err) ---\n|\n?\Z)", text, re.S)
    return match.group(1) if match else ""


def assert_streams_match_text(result: CallToolResult, data: dict[str, Any]) -> None:
    text = text_of(result)
    for stream in ("stdout", "stderr"):
        # The text adds a final newline a stream lacks; otherwise it shows exactly the structured string.
        assert section(text, stream) == data[stream].removesuffix("\n"), stream


async def test_every_tool_result_validates_and_carries_what_the_text_shows(backend: RunningBackend) -> None:
    settings = Settings(output_budget=2048, sql_max_rows=3)
    async with Client(make_server(backend, settings), mode="auto") as client:
        schemas = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        assert set(schemas) == ALL and all(schemas.values())
        call = Checked(client, schemas)

        # Optional arguments given as null, as a model in OpenAI's strict mode sends them.
        _, box = await call("create_devbox", {
            "name": "results", "environment_variables": [{"name": "GREETING", "value": "hi"}],
            "launch_commands": None, "network_mode": None,
        })
        devbox = box["id"]
        _, got = await call("get_devbox", {"devbox_id": devbox})
        assert got["id"] == devbox
        listed, page = await call("list_devboxes", {"status": "running", "limit": 100})
        assert devbox in [d["id"] for d in page["devboxes"]] and devbox in text_of(listed)

        # execute: output and exit status; a cut output; a hand-off to stream_logs.
        result, done = await call("execute", {
            "devbox_id": devbox, "command": "echo line1; echo line2; echo err >&2; exit 3",
            "wait_seconds": None, "command_id": None, "attach_stdin": False,
        })
        assert done["stdout"] == "line1\nline2\n" and done["stderr"] == "err\n" and done["exit_status"] == 3
        assert_streams_match_text(result, done)
        result, cut = await call("execute", {"devbox_id": devbox, "command": "seq 1 200000"})
        assert cut["omitted_bytes"] > 0 and cut["stdout"].startswith("1\n2\n") and cut["stdout"].endswith("200000\n")
        assert "bytes of stdout omitted" in cut["stdout"] and "stream_logs stdout_offset=" in cut["stdout"]
        assert_streams_match_text(result, cut)
        result, running = await call("execute", {"devbox_id": devbox, "command": "printf tick; sleep 300", "wait_seconds": 0.5})
        assert running["status"] == "running" and running.get("exit_status") is None and running["hint"]
        assert_streams_match_text(result, running)
        execution = running["execution_id"]
        result, logs = await call("stream_logs", {
            "devbox_id": devbox, "execution_id": execution, "stdout_offset": 0, "until": "tick", "wait_seconds": 20,
        })
        assert logs["stopped_because"] == "matched" and logs["stdout"] == "tick" and logs["matches"] == ["tick"]
        assert_streams_match_text(result, logs)
        _, killed = await call("kill_execution", {"devbox_id": devbox, "execution_id": execution})
        assert killed["execution_id"] == execution
        _, waiting = await call("execute", {"devbox_id": devbox, "command": "cat", "attach_stdin": True, "wait_seconds": 0})
        _, sent = await call("send_stdin", {"devbox_id": devbox, "execution_id": waiting["execution_id"], "signal": "EOF"})
        assert sent["success"]

        # Files: text (whole and cut), an image, a binary.
        body = "".join(f"row {i}\n" for i in range(2000))
        _, wrote = await call("write_file", {"devbox_id": devbox, "path": "rows.txt", "contents": body})
        assert wrote["bytes_written"] == len(body)
        result, small = await call("read_file", {
            "devbox_id": devbox, "path": "rows.txt", "start_line": 2, "end_line": 3, "tail_lines": None,
        })
        assert small["text"] == "row 1\nrow 2\n" and text_of(result).endswith(small["text"])
        result, big = await call("read_file", {"devbox_id": devbox, "path": "rows.txt"})
        assert big["omitted_bytes"] > 0 and "read_file start_line=" in big["text"] and text_of(result).endswith(big["text"])
        async with RunloopClient(backend.base_url, backend.api_key) as api:
            await api.upload_file(devbox, "pic.png", PNG)
            await api.upload_file(devbox, "blob.bin", bytes(range(256)))
        result, image = await call("read_file", {"devbox_id": devbox, "path": "pic.png", "binary": True})
        assert image["kind"] == "image" and isinstance(result.content[image["content_index"]], ImageContent)
        result, blob = await call("read_file", {"devbox_id": devbox, "path": "blob.bin", "binary": True})
        assert blob["kind"] == "binary" and base64.b64decode(blob["base64"]) == bytes(range(256))
        assert blob["base64"] in text_of(result)

        # Axons: events, rows (bounded), a batch.
        _, axon = await call("create_axon", {"name": "results"})
        _, listed_axons = await call("list_axons", {"name": "results", "limit": 100})
        assert axon["id"] in [a["id"] for a in listed_axons["axons"]]
        for n in range(5):
            _, published = await call("publish_event", {"axon_id": axon["id"], "event_type": "e", "payload": {"n": n}})
        assert published["sequence"] > 0
        result, rows = await call("sql_query", {
            "axon_id": axon["id"], "sql": "SELECT event_type, payload FROM rl_axon_events ORDER BY sequence",
        })
        assert rows["row_count"] == 5 and rows["rows_cut"] and rows["note"] in text_of(result)
        assert [[k, json.loads(p)] for k, p in rows["rows"]] == [["e", {"n": n}] for n in range(3)]
        shown = [json.loads(line) for line in text_of(result).splitlines()[1:4]]
        assert [[r["event_type"], r["payload"]] for r in shown] == rows["rows"]
        result, batch = await call("sql_batch", {"axon_id": axon["id"], "statements": [
            {"sql": "CREATE TABLE t (k TEXT, v INTEGER)"},
            {"sql": "INSERT INTO t VALUES (?, ?), (?, ?)", "params": ["a", 1, "b", None]},
            {"sql": "SELECT k, v FROM t ORDER BY k"},
        ]})
        assert batch["results"][1]["changes"] == 2 and batch["results"][2]["rows"] == [["a", 1], ["b", None]]
        assert '{"k": "b", "v": null}' in text_of(result)

        # A port a person opens: the URL as text too (the structured content is the whole result).
        result, exposed = await call("expose_port", {"devbox_id": devbox, "port": 8000, "public": False})
        assert exposed["url"] in text_of(result) and exposed["token"] in text_of(result)

        # Blueprints: a failed build carries its failing step; the list, one line per blueprint.
        result, failed = await call("create_blueprint", {"name": "results", "dockerfile": "FROM devbox-mcp\nRUN exit 5"})
        assert failed["status"] == "failed" and failed["log"] in text_of(result) and "exited with status 5" in failed["log"]
        result, blueprints = await call("list_blueprints", {"name": "results"})
        assert blueprints["blueprints"][0].startswith(failed["id"]) and blueprints["blueprints"][0] in text_of(result)

        # Terminals: the rendered screen, whole in the structured content and in the text.
        result, opened = await call("open_terminal", {"devbox_id": devbox, "command": None, "cols": 80, "rows": 24})
        session = opened["session"]
        result, typed = await call("terminal_send", {
            "session": session, "text": "echo T$((1+1))", "keys": ["Enter"], "wait_for": "^T2$", "timeout": None,
            "resize": None,
        })
        assert typed["status"].startswith("matched") and text_of(result).endswith(typed["screen"] + "\n")
        _, read = await call("terminal_read", {"session": session})
        assert "T2" in read["screen"] and read["status"] == "screen"
        _, closed = await call("close_terminal", {"session": session})
        assert closed == {"session": session, "closed": True}

        # Lifecycle last: suspend, resume, shut down.
        _, suspended = await call("suspend_devbox", {"devbox_id": devbox})
        assert suspended["status"] in ("suspending", "suspended")
        _, resumed = await call("resume_devbox", {"devbox_id": devbox})
        assert resumed["status"] == "running"
        _, snap = await call("snapshot_devbox", {"devbox_id": devbox, "name": "results"})
        assert snap["devbox_id"] == devbox
        _, snaps = await call("list_snapshots", {"devbox_id": devbox})
        assert [s["id"] for s in snaps["snapshots"]] == [snap["id"]]
        _, forked = await call("fork_devbox", {"devbox_id": devbox, "count": 1})
        for fork in forked["devbox_ids"]:
            await call("shutdown_devbox", {"devbox_id": fork})
        _, deleted = await call("delete_snapshot", {"snapshot_id": snap["id"]})
        assert deleted == {"id": snap["id"]}
        _, down = await call("shutdown_devbox", {"devbox_id": devbox})
        assert down["id"] == devbox
        assert call.called == ALL
