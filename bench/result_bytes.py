"""Bytes a client hands its model per tool call, for a few representative calls.

Clients differ in what they pass on: Claude Code, Codex, pydantic-ai and openai-agents (with
`use_structured_content`) give the model the structured content (serialized as JSON) when a
result has it; others give it the text blocks. This prints both sizes for each call, so a change
to the result shapes can be judged by what it costs in context:
- `structured`: the structured content as compact JSON (UTF-8, non-ASCII unescaped, as
  `JSON.stringify` writes it);
- `text`: the UTF-8 bytes of the result's text blocks.

Calls: `execute` of `echo line1; echo line2; echo err >&2; exit 3`, `execute` of
`seq 1 200000` (output cut to head and tail), `read_file` of a small file, `sql_query` returning
10 rows. Runs on the embedded backend in a temporary data directory, in-memory MCP client.

Run: .venv/bin/python -m bench.result_bytes
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# bench/mcp.py is named like the `mcp` package and this folder comes first on sys.path when a
# script here runs: drop the folder so `import mcp` finds the SDK.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import anyio  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.types import CallToolResult  # noqa: E402

from mcp_server.local.server import start_in_thread  # noqa: E402
from mcp_server.runloop import RunloopClient  # noqa: E402
from mcp_server.server import build_server  # noqa: E402

SMALL_FILE = "".join(f"line {n}: the quick brown fox jumps over the lazy dog\n" for n in range(1, 21))


def sizes(result: CallToolResult) -> tuple[int, int]:
    assert not result.is_error, result.content
    structured = result.structured_content
    s = len(json.dumps(structured, ensure_ascii=False, separators=(",", ":")).encode()) if structured else 0
    t = sum(len(block.text.encode()) for block in result.content if getattr(block, "type", "") == "text")
    return s, t


async def measure(base_url: str, api_key: str) -> list[tuple[str, int, int]]:
    server = build_server(lambda: RunloopClient(base_url, api_key))
    rows: list[tuple[str, int, int]] = []
    async with Client(server) as client:

        async def call(name: str, args: dict[str, Any]) -> CallToolResult:
            return await client.call_tool(name, args)

        box = (await call("create_devbox", {"name": "bytes"})).structured_content["id"]
        try:
            small = "echo line1; echo line2; echo err >&2; exit 3"
            rows.append((f"execute `{small}`", *sizes(await call("execute", {"devbox_id": box, "command": small}))))
            big = "seq 1 200000"
            rows.append((f"execute `{big}`", *sizes(await call("execute", {"devbox_id": box, "command": big}))))
            await call("write_file", {"devbox_id": box, "path": "small.txt", "contents": SMALL_FILE})
            rows.append(("read_file (20 lines, 1 KB)", *sizes(await call("read_file", {"devbox_id": box, "path": "small.txt"}))))
            axon = (await call("create_axon", {"name": "bytes"})).structured_content["id"]
            for n in range(10):
                await call("publish_event", {"axon_id": axon, "event_type": "tick", "payload": {"n": n, "ok": True}})
            sql = "SELECT sequence, event_type, payload FROM rl_axon_events ORDER BY sequence LIMIT 10"
            rows.append(("sql_query (10 rows)", *sizes(await call("sql_query", {"axon_id": axon, "sql": sql}))))
        finally:
            await call("shutdown_devbox", {"devbox_id": box})
    return rows


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-result-bytes-"))
    backend = start_in_thread(data_dir)
    try:
        rows = anyio.run(measure, backend.base_url, backend.api_key)
    finally:
        backend.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'call':<{width}}  {'structured':>10}  {'text':>7}")
    for name, s, t in rows:
        print(f"{name:<{width}}  {s:>10}  {t:>7}")


if __name__ == "__main__":
    main()
