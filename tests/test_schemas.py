"""tool_schemas/ matches the code, and the tool list stays small and well annotated."""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from mcp_server.schemas import main, render, tool_schemas

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "tool_schemas"
CORE = {"create_devbox", "execute", "stream_logs", "read_file", "publish_event", "sql_query"}
ALL = CORE | {
    "list_devboxes", "get_devbox", "shutdown_devbox", "suspend_devbox", "resume_devbox", "write_file",
    "send_stdin", "kill_execution", "create_axon", "list_axons", "sql_batch",
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


def test_every_tool_has_description_schemas_and_all_four_hints() -> None:
    docs = anyio.run(tool_schemas)
    assert set(docs) == ALL
    for name, doc in docs.items():
        assert doc["description"] and len(doc["description"]) < 400, name
        assert doc["inputSchema"]["type"] == "object", name
        assert doc["outputSchema"] and doc["outputSchema"]["type"] == "object", name
        hints = doc["annotations"]
        for key in ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"):
            assert isinstance(hints.get(key), bool), (name, key)


def test_annotations_are_true_to_what_tools_do() -> None:
    docs = anyio.run(tool_schemas)
    read_only = {n for n, d in docs.items() if d["annotations"]["readOnlyHint"]}
    assert read_only == {"list_devboxes", "get_devbox", "stream_logs", "read_file", "list_axons"}
    destructive = {n for n, d in docs.items() if d["annotations"]["destructiveHint"]}
    assert {"shutdown_devbox", "kill_execution", "write_file", "sql_batch", "sql_query", "execute", "send_stdin"} <= destructive
    assert not {"create_devbox", "create_axon", "publish_event", "suspend_devbox", "resume_devbox"} & destructive
    assert not destructive & read_only
    assert docs["execute"]["annotations"]["openWorldHint"] is True
