"""`transport/stdio.py`: stdio served by the event loop, driven by the SDK's client in both eras.

A small server runs `run_stdio` in a subprocess, as `devbox-mcp serve` does: its tools say which
threads exist (the SDK's transport would start worker threads to read and write), echo a
message larger than asyncio's default line limit, and print to stdout (which must miss the
wire). With stdout a terminal, the SDK's own transport serves instead.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap
import tty
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from support.mcp_client import MODES

pytestmark = pytest.mark.anyio

SERVER = textwrap.dedent(
    """
    import os, sys, threading
    import anyio
    from mcp.server import MCPServer
    from mcp_server.transport.stdio import run_stdio

    server = MCPServer("stdio-probe")

    @server.tool()
    async def threads() -> list[str]:
        return sorted(t.name for t in threading.enumerate())

    @server.tool()
    async def echo(text: str) -> str:
        print("stray output on stdout")
        sys.stdout.flush()
        os.write(1, b"stray bytes on fd 1\\n")
        return text

    anyio.run(run_stdio, server)
    """
)


@pytest.fixture
def server_script(tmp_path: Path) -> Path:
    path = tmp_path / "probe_server.py"
    path.write_text(SERVER)
    return path


@pytest.mark.parametrize("mode", MODES)
async def test_messages_go_through_the_event_loop_whole_and_stray_output_misses_the_wire(
    mode: str, server_script: Path, tmp_path: Path
) -> None:
    params = StdioServerParameters(command=sys.executable, args=[str(server_script)])
    big = "é" * 100_000 + "\n" + "x" * 100_000  # 300 KB of JSON: above asyncio's 64 KiB line default
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            for _ in range(3):
                result = await client.call_tool("echo", {"text": big})
                assert not result.is_error
                assert result.structured_content == {"result": big}
            names = (await client.call_tool("threads", {})).structured_content["result"]
    # The SDK's threaded transport reads and writes through AnyIO's worker threads.
    assert not [n for n in names if "worker" in n.lower()], names
    assert "stray output on stdout" in (tmp_path / "stderr.log").read_text()  # fd 1 points at stderr


def test_a_terminal_is_served_by_the_sdks_transport(server_script: Path) -> None:
    """stdout a terminal (not a pipe): the SDK's threaded transport, which leaves its mode alone."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # no newline translation: the wire's bytes as written
    proc = subprocess.Popen([sys.executable, str(server_script)], stdin=subprocess.PIPE, stdout=slave)
    os.close(slave)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "threads", "arguments": {}}},
        ]))  # fmt: skip
        proc.stdin.flush()
        answers: dict[object, dict] = {}
        received = b""
        while 2 not in answers:
            chunk = os.read(master, 65536)
            assert chunk, "the server closed its terminal without answering"
            received += chunk
            *lines, received = received.split(b"\n")
            answers.update((m.get("id"), m) for m in map(json.loads, lines))  # JSON-RPC lines only
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    names = answers[2]["result"]["structuredContent"]["result"]
    assert [n for n in names if "worker" in n.lower()], names


@pytest.mark.parametrize("end", ["stdin closed", "SIGTERM"])
def test_the_wire_is_blocking_again_when_the_server_ends(end: str) -> None:
    """The event loop makes the wire's pipes non-blocking; a process that shares them after ours
    (a wrapper script) expects blocking I/O, so they are restored at exit, by signal too."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLOOP_", "DEVBOX_MCP_"))}
    env |= {"RUNLOOP_BASE_URL": "http://127.0.0.1:9", "RUNLOOP_API_KEY": "unused"}  # no call is made
    exe = str(Path(sys.executable).with_name("devbox-mcp"))
    proc = subprocess.Popen([exe, "serve"], stdin=stdin_r, stdout=stdout_w, stderr=subprocess.DEVNULL, env=env)
    try:
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}  # fmt: skip
        os.write(stdin_w, json.dumps(initialize).encode() + b"\n")
        with os.fdopen(os.dup(stdout_r), "rb") as out:
            assert json.loads(out.readline())["id"] == 1  # serving
        # The same open pipes as the server's: it made them non-blocking.
        assert not os.get_blocking(stdin_r) and not os.get_blocking(stdout_w)
        if end == "SIGTERM":
            proc.terminate()
        else:
            os.close(stdin_w)
        proc.wait(timeout=30)
        assert os.get_blocking(stdin_r) and os.get_blocking(stdout_w)
    finally:
        proc.kill()
        proc.wait()
        for fd in (stdin_r, stdout_r, stdout_w, *([stdin_w] if end == "SIGTERM" else [])):
            os.close(fd)
