"""Runs a framework runner in its own environment against `devbox-mcp` and reads back what the
framework handed its model, call by call. Used by tests/commands/test_frameworks.py; run directly it prints
the bytes each framework hands its model per call:

    .venv/bin/python tests/frameworks/harness.py

The environments come from .ci/framework-clients (make install): .tools/frameworks/<venv>.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TOOLS = ROOT / ".tools" / "frameworks"
NODE = ROOT / ".tools" / "node" / "bin" / "node"
SERVER = str(Path(sys.executable).with_name("devbox-mcp"))


@dataclass(frozen=True)
class Framework:
    id: str
    env: str  # its environment under .tools/frameworks
    runner: str
    variant: str = "default"
    slow: bool = False  # also run a command longer than the client's request timeout

    @property
    def installed(self) -> bool:
        return (TOOLS / self.env / ".installed").is_file() and (self.runner.endswith(".py") or NODE.exists())

    def command(self, data_dir: Path, out: Path) -> list[str]:
        args = ["--server", SERVER, "--data-dir", str(data_dir), "--out", str(out)]
        if self.slow:
            args.append("--slow")
        if self.runner.endswith(".mjs"):
            return [str(NODE), str(HERE / self.runner), "--modules", str(TOOLS / self.env), *args]
        return [str(TOOLS / self.env / "bin" / "python"), str(HERE / self.runner), "--variant", self.variant, *args]


FRAMEWORKS = [
    Framework("pydantic-ai", "pydantic-ai", "pydantic_ai_runner.py"),
    Framework("pydantic-ai-1", "pydantic-ai-1", "pydantic_ai_runner.py"),
    Framework("openai-agents", "openai-agents", "openai_agents_runner.py", slow=True),
    Framework("openai-agents-structured", "openai-agents", "openai_agents_runner.py", "structured", slow=True),
    Framework("langchain-session", "langchain", "langchain_runner.py", "session"),
    Framework("langchain-get-tools", "langchain", "langchain_runner.py", "get_tools"),
    Framework("typescript-sdk", "typescript-sdk", "typescript_runner.mjs"),
]


@dataclass
class Record:
    framework: Framework
    client: dict[str, Any]
    calls: list[dict[str, Any]]
    stopped: str | None
    error: str | None
    stderr: str

    def call(self, label: str) -> dict[str, Any]:
        found = [c for c in self.calls if c["label"] == label]
        assert found, f"{self.framework.id} never called {label}: {self.problem()}"
        return found[0]

    def problem(self) -> str:
        """Why the run ended early, short enough for an assertion message."""
        if self.error:
            # The exception line, then the traceback's end: a task group nests it in decorations.
            lines = [line.strip(" |+-") for line in self.error.splitlines()]
            return f"runner failed: {[line for line in lines if line][-1]}\n{self.error.strip()[-1500:]}"
        return f"plan stopped: {self.stopped}" if self.stopped else "no problem"


def run(framework: Framework, data_dir: Path, timeout: float = 150) -> Record:
    """Run one framework's runner: it starts `devbox-mcp serve` itself, over stdio, with this data
    directory and no Runloop key (the embedded backend)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLOOP_", "DEVBOX_MCP_"))}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seen.json"
        proc = subprocess.run(
            framework.command(data_dir, out), env=env, cwd=HERE, capture_output=True, text=True, timeout=timeout
        )
        if not out.exists():
            raise AssertionError(f"{framework.id} runner wrote nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        data = json.loads(out.read_text())
    return Record(framework, data["client"], data["calls"], data.get("stopped"), data.get("error"), proc.stderr)


def model_bytes(wire: Any) -> int:
    """UTF-8 bytes of what the model reads for one result: a string as is; of content parts, their
    text (a part without text as its JSON); of a bare MCP result (TypeScript SDK: no model), its
    text blocks plus its structured content as JSON, which is what a host has to hand on."""
    if isinstance(wire, str):
        return len(wire.encode())
    if isinstance(wire, list):
        return sum(model_bytes(p.get("text", p) if isinstance(p, dict) else p) for p in wire)
    if isinstance(wire, dict) and "content" in wire:
        structured = wire.get("structuredContent")
        extra = len(json.dumps(structured, ensure_ascii=False).encode()) if structured is not None else 0
        return model_bytes(wire["content"]) + extra
    return len(json.dumps(wire, ensure_ascii=False).encode())


def main() -> int:
    labels = ["create_devbox", "execute", "execute_big", "read_file", "sql_query", "execute_slow"]
    print("bytes the model reads per call (· = not called, ! = shown as an error)")
    print(f"{'framework':<26}" + "".join(f"{label:>14}" for label in labels))
    for framework in FRAMEWORKS:
        if not framework.installed:
            print(f"{framework.id:<26} not installed (make install)")
            continue
        with tempfile.TemporaryDirectory() as data_dir:
            record = run(framework, Path(data_dir))
        cells = []
        for label in labels:
            calls = [c for c in record.calls if c["label"] == label]
            cells.append(f"{model_bytes(calls[0]['wire'])}{'!' if calls[0]['error'] else ''}" if calls else "·")
        print(f"{framework.id:<26}" + "".join(f"{cell:>14}" for cell in cells))
        if record.problem() != "no problem":
            print(f"  {record.problem().splitlines()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
