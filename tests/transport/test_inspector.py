"""The MCP Inspector CLI (an independent client) lists our tools and runs `execute`, over stdio and HTTP."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.http_serving import devbox_mcp_exe, serve_process

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / ".tools" / "node" / "bin" / "node"
INSPECTOR = (
    ROOT
    / ".tools"
    / "node_modules"
    / "@modelcontextprotocol"
    / "inspector"
    / "clients"
    / "launcher"
    / "build"
    / "index.js"
)
TOKEN = "inspector-test-token-0123456789abcdef"

pytestmark = pytest.mark.skipif(
    not NODE.exists() or not INSPECTOR.exists(),
    reason="MCP Inspector not installed: run .ci/node-tools (make install does)",
)


def run_inspector(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{NODE.parent}:{os.environ['PATH']}",
        "MCP_CATALOG_PATH": str(tmp_path / "catalog.json"),
    }
    return subprocess.run(
        [str(NODE), str(INSPECTOR), "--cli", *args, "--format", "json", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )


def inspector(tmp_path: Path, *args: str) -> dict:
    done = run_inspector(tmp_path, *args)
    assert done.returncode == 0, f"inspector failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    data = json.loads(done.stdout)
    return data.get("result", data)


def running_devbox(sdk) -> str:
    return sdk.devboxes.create_and_await_running().id


def backend_env(backend) -> dict[str, str]:
    return {"RUNLOOP_API_KEY": backend.api_key, "RUNLOOP_BASE_URL": backend.base_url}


def assert_lists_execute(result: dict) -> None:
    names = {tool["name"] for tool in result["tools"]}
    assert "execute" in names
    assert all(tool.get("description") for tool in result["tools"])


def assert_executed(result: dict, expected: str) -> None:
    assert result.get("isError") is False, result
    assert result["structuredContent"]["exit_status"] == 0
    assert expected in result["content"][0]["text"]


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_over_http(tmp_path: Path, backend, sdk, era: str) -> None:
    devbox_id = running_devbox(sdk)
    with serve_process(tmp_path, env={**backend_env(backend), "DEVBOX_MCP_TOKEN": TOKEN}) as server:
        target = [server.url, "--header", f"Authorization: Bearer {TOKEN}", "--protocol-era", era]
        assert_lists_execute(inspector(tmp_path, *target, "--method", "tools/list"))
        result = inspector(
            tmp_path,
            *target,
            "--method",
            "tools/call",
            "--tool-name",
            "execute",
            "--tool-arg",
            f"devbox_id={devbox_id}",
            "--tool-arg",
            "command=echo over-http-$((6*7))",
        )
        assert_executed(result, "over-http-42")
        refused = run_inspector(tmp_path, server.url, "--protocol-era", era, "--method", "tools/list")
        assert refused.returncode != 0 and '"tools"' not in refused.stdout
        assert TOKEN not in server.stderr and backend.api_key not in server.stderr


def test_inspector_over_stdio(tmp_path: Path, backend, sdk) -> None:
    devbox_id = running_devbox(sdk)
    env = [arg for key, value in backend_env(backend).items() for arg in ("-e", f"{key}={value}")]
    target = [*env, devbox_mcp_exe(), "serve", "--data-dir", str(tmp_path / "data")]
    assert_lists_execute(inspector(tmp_path, *target, "--method", "tools/list"))
    result = inspector(
        tmp_path,
        *target,
        "--method",
        "tools/call",
        "--tool-name",
        "execute",
        "--tool-arg",
        f"devbox_id={devbox_id}",
        "--tool-arg",
        "command=echo over-stdio-$((6*7))",
    )
    assert_executed(result, "over-stdio-42")
