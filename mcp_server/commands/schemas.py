"""`devbox-mcp schemas [--write]`: each tool's name, description, input and output schema and
annotations, as JSON files in `tool_schemas/`, generated from the code.

The files let reviewers see the contract an agent sees (and its size) without running anything;
a test regenerates them and fails when the checked-in copies differ from the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio

from ..runloop import RunloopClient
from ..server import build_server


def _unused_client() -> RunloopClient:
    raise RuntimeError("schemas are generated without connecting to any API")


async def tool_schemas() -> dict[str, dict[str, Any]]:
    """The schema document of every tool, keyed by name, exactly as `tools/list` reports them."""
    server = build_server(_unused_client)
    docs: dict[str, dict[str, Any]] = {}
    for tool in await server.list_tools():
        wire = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
        docs[tool.name] = {
            "name": wire["name"],
            "description": wire.get("description", ""),
            "inputSchema": wire.get("inputSchema"),
            "outputSchema": wire.get("outputSchema"),
            "annotations": wire.get("annotations"),
        }
    return docs


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(write: bool = False, directory: Path = Path("tool_schemas")) -> int:
    docs = anyio.run(tool_schemas)
    if not write:
        json.dump(docs, sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (directory / f"{name}.json").write_text(render(doc), encoding="utf-8")
    stale = sorted(p for p in directory.glob("*.json") if p.stem not in docs)
    for path in stale:
        path.unlink()
    print(f"wrote {len(docs)} tool schemas to {directory}", file=sys.stderr)
    return 0
