"""`devbox-mcp` as a stdio subprocess, driven by a real MCP client in both eras: the tools work,
stdout carries protocol messages only, and the API key appears in no result and no log line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from support.mcp_client import MODES, call_error, call_ok, structured, text_of

from mcp_server.local.server import RunningBackend
from mcp_server.runloop import RunloopClient

pytestmark = pytest.mark.anyio

EXE = str(Path(sys.executable).with_name("devbox-mcp"))


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLOOP_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def devbox_id(backend: RunningBackend) -> str:
    async def create() -> str:
        async with RunloopClient(backend.base_url, backend.api_key) as client:
            box = await client.create_devbox(name="stdio")
            return (await client.wait_for_devbox_status(box.id, ["running"], timeout_seconds=60)).id

    return anyio.run(create)


@pytest.mark.parametrize("mode", MODES)
async def test_tools_over_stdio_with_progress_and_no_key_anywhere(
    mode: str, backend: RunningBackend, devbox_id: str, tmp_path: Path
) -> None:
    params = StdioServerParameters(
        command=EXE, args=["serve"],
        env=server_env(RUNLOOP_BASE_URL=backend.base_url, RUNLOOP_API_KEY=backend.api_key),
    )
    log_path = tmp_path / "stderr.log"
    seen: list[str] = []
    outputs: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    with log_path.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            tools = await client.list_tools()
            assert len(tools.tools) == 28
            result = await call_ok(
                client, "execute",
                {"devbox_id": devbox_id, "command": "for i in 1 2 3; do echo step $i; sleep 0.05; done; env | grep -c RUNLOOP_ || true"},
                progress_callback=on_progress,
            )
            outputs.append(text_of(result) + json.dumps(structured(result)))
            assert "step 1\nstep 2\nstep 3\n" in "".join(seen)
            outputs.append(await call_error(client, "get_devbox", {"devbox_id": "dbx_missing"}))
            outputs.append(await call_error(client, "execute", {"devbox_id": "dbx_missing", "command": "true"}))
            outputs.append(await call_error(client, "sql_query", {"axon_id": "axn_missing", "sql": "SELECT 1"}))
            outputs.append(text_of(await call_ok(client, "list_devboxes", {})))
    stderr = log_path.read_text()
    assert "using the Runloop API at " + backend.base_url in stderr
    for text in [*outputs, *seen, stderr]:
        assert backend.api_key not in text


async def test_cancelling_execute_over_stdio_kills_the_command(backend: RunningBackend, devbox_id: str, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=EXE, args=["serve"],
        env=server_env(RUNLOOP_BASE_URL=backend.base_url, RUNLOOP_API_KEY=backend.api_key),
    )
    tag = tmp_path.name[-12:]
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if "started" in (message or ""):
            started.set()

    command = f"echo $$ > /tmp/stdio-{tag}; echo started; exec sleep 300"
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="auto") as client:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:

                    async def run() -> None:
                        await client.call_tool("execute", {"devbox_id": devbox_id, "command": command},
                                               progress_callback=on_progress)

                    tg.start_soon(run)
                    await started.wait()
                    tg.cancel_scope.cancel()
            check = f"kill -0 $(cat /tmp/stdio-{tag}) 2>/dev/null && echo alive || echo gone"
            with anyio.fail_after(20):
                while True:
                    result = await call_ok(client, "execute", {"devbox_id": devbox_id, "command": check})
                    if "gone" in text_of(result):
                        break
                    await anyio.sleep(0.1)


async def test_wrong_key_error_is_clear_and_does_not_echo_the_key(backend: RunningBackend, tmp_path: Path) -> None:
    wrong = "rl_wrong_key_" + "x" * 24
    params = StdioServerParameters(command=EXE, args=["serve"], env=server_env(RUNLOOP_BASE_URL=backend.base_url, RUNLOOP_API_KEY=wrong))
    log_path = tmp_path / "stderr.log"
    with log_path.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="auto") as client:
            message = await call_error(client, "list_devboxes", {})
    assert "401" in message and "RUNLOOP_API_KEY" in message
    assert wrong not in message and wrong not in log_path.read_text()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"RUNLOOP_API_KEY": "rl_key with_a_space_0123456789"}, "RUNLOOP_API_KEY"),
        ({"RUNLOOP_API_KEY": "rl_good_key_0123456789", "RUNLOOP_BASE_URL": "ftp://example.com"}, "http://"),
    ],
)
def test_bad_runloop_environment_is_one_clear_line_not_a_traceback(env: dict[str, str], says: str) -> None:
    done = subprocess.run([EXE, "serve"], input="", capture_output=True, text=True, env=server_env(**env), timeout=30)
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr
    assert env["RUNLOOP_API_KEY"] not in done.stderr and not done.stdout


def test_embedded_mode_stdout_is_protocol_only_and_the_key_is_never_logged(data_dir: Path) -> None:
    """No RUNLOOP_API_KEY: the shared embedded backend starts on first use; stdout has JSON-RPC lines only."""
    proc = subprocess.Popen(
        [EXE, "serve", "--data-dir", str(data_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=server_env(), text=True,
    )
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "list_devboxes", "arguments": {}}},
    ]
    assert proc.stdin and proc.stdout and proc.stderr
    for message in requests:
        proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()
    lines = []
    answered: set[int] = set()
    while answered != {1, 2, 3}:
        line = proc.stdout.readline()
        assert line, f"server exited early: {proc.stderr.read()}"
        lines.append(line)
        message = json.loads(line)  # every stdout line is a JSON-RPC message
        assert message["jsonrpc"] == "2.0"
        if "id" in message:
            answered.add(message["id"])
    proc.stdin.close()
    proc.wait(timeout=30)
    stderr = proc.stderr.read()
    by_id = {json.loads(line).get("id"): json.loads(line) for line in lines}
    assert not by_id[3]["result"].get("isError")
    assert "started the embedded backend" in stderr
    backend_log = (data_dir / "backend.log").read_text()
    for text in (stderr, "".join(lines), backend_log):
        assert "dbxlocal_" not in text


async def test_tools_list_is_under_20_kb(backend: RunningBackend) -> None:
    from support.mcp_client import make_server

    for mode in MODES:
        async with Client(make_server(backend), mode=mode) as client:
            listed = await client.list_tools()
        size = len(listed.model_dump_json(by_alias=True, exclude_none=True))
        assert size < 20 * 1024, size
