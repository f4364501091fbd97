"""`devbox-mcp demo` (`make demo`): the product end to end, as an agent would use it.

A real MCP client starts `devbox-mcp serve` as a stdio subprocess on the embedded backend
(no Runloop key needed) and, printing each step: creates a devbox, runs a command whose output
streams in live as progress, starts a web server in the background and fetches from it in a
second execution, and from a second `devbox-mcp` process (devboxes live in the shared backend,
not in the process that created them), writes and reads a file, uses a Python REPL through the
terminal tools (reading the rendered screen after each input), publishes events to an axon
and queries them with SQL, then shuts the devbox down and stops the backend it started.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, Implementation

from .. import __version__
from ..local import service

BOLD, DIM, GREEN, RED, RESET = ("\x1b[1m", "\x1b[2m", "\x1b[32m", "\x1b[31m", "\x1b[0m")
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""

BUILD = (
    "for step in fetch configure compile link test; do "
    "echo \"[$(date +%T)] $step ...\"; sleep 0.4; done; echo 'build OK'"
)
SERVE = "mkdir -p ~/site && cd ~/site && echo '<h1>hello from the devbox</h1>' > index.html && exec python3 -u -m http.server 8080 --bind 127.0.0.1"
FETCH = "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/').read().decode())\""


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n{BOLD}▶ {title}{RESET}", flush=True)


def show(text: str, prefix: str = "  ") -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"{prefix}{line}", flush=True)


async def live(progress: float, total: float | None, message: str | None) -> None:
    """Progress notifications as they arrive: the command's output, live."""
    if message:
        show(message, prefix=f"  {DIM}│{RESET} ")


def text_of(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def call(client: Client, tool: str, args: dict[str, Any], **kw: Any) -> CallToolResult:
    result = await client.call_tool(tool, args, **kw)
    if result.is_error:
        raise DemoFailed(f"{tool} failed: {text_of(result)}")
    return result


async def run_demo(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLOOP_")}
    exe = shutil.which("devbox-mcp") or str(Path(sys.executable).with_name("devbox-mcp"))
    params = StdioServerParameters(command=exe, args=["serve", "--data-dir", str(data_dir)], env=env)
    step("Start devbox-mcp over stdio (embedded backend: no RUNLOOP_API_KEY)")
    # The server's stderr (its log) goes to a file; its start-up line says which API it uses.
    with tempfile.TemporaryFile("w+") as errlog:
        # Named, so the server holds calls the default 50 s: the SDK's default name "mcp" is also
        # sent by clients that time out after 5 s, and gets 3 s holds (budgets.py).
        me = Implementation(name="devbox-mcp-demo", version=__version__)
        async with Client(stdio_client(params, errlog=errlog), mode="auto", client_info=me) as client:
            errlog.seek(0)
            show(f"{DIM}{errlog.read().strip()}{RESET}")
            await drive(client, lambda: Client(stdio_client(params, errlog=errlog), mode="auto"))
    print(f"\n{GREEN}{BOLD}demo complete{RESET}")


async def drive(client: Client, another: Callable[[], Client]) -> None:
    tools = await client.list_tools()
    size = len(tools.model_dump_json(by_alias=True, exclude_none=True))
    show(f"protocol {client.protocol_version}; {len(tools.tools)} tools ({size / 1024:.1f} KB of tools/list)")

    step("create_devbox: waits until running, each status as progress")
    started = time.monotonic()
    box = (await call(client, "create_devbox", {"name": "demo"}, progress_callback=live)).structured_content
    devbox = box["id"]
    show(f"{GREEN}{devbox} is {box['status']}{RESET} ({time.monotonic() - started:.1f} s)")

    try:
        step("execute: a 'build' whose output streams in live")
        result = await call(client, "execute", {"devbox_id": devbox, "command": BUILD}, progress_callback=live)
        meta = result.structured_content
        show(f"{GREEN}exit {meta['exit_status']} in {meta['duration_seconds']:.2f} s{RESET}, "
             f"{meta['stdout_offset']} bytes of stdout")

        step("execute in the background: a web server (hands off at once, the command keeps running)")
        server = (await call(client, "execute", {"devbox_id": devbox, "command": SERVE, "wait_seconds": 0})).structured_content
        show(f"status {server['status']}, execution {server['execution_id']}")
        step("stream_logs until the server says it is serving")
        ready = await call(client, "stream_logs", {
            "devbox_id": devbox, "execution_id": server["execution_id"], "until": "Serving HTTP",
            "wait_seconds": 30,
        }, progress_callback=live)
        show(f"stopped because: {ready.structured_content['stopped_because']} → "
             f"{ready.structured_content['matches']}")

        step("execute: fetch from the web server in a second execution")
        fetched = await call(client, "execute", {"devbox_id": devbox, "command": FETCH})
        show(text_of(fetched))

        step("a second devbox-mcp process (a restarted app, a per-call client) reaches the same server")
        async with another() as second:
            show(text_of(await call(second, "execute", {"devbox_id": devbox, "command": FETCH})))
        await call(client, "kill_execution", {"devbox_id": devbox, "execution_id": server["execution_id"]})
        show("web server stopped (kill_execution)")

        step("write_file, then read_file (last 2 lines)")
        notes = "".join(f"note {i}: all good\n" for i in range(1, 6))
        await call(client, "write_file", {"devbox_id": devbox, "path": "notes.txt", "contents": notes})
        read = await call(client, "read_file", {"devbox_id": devbox, "path": "notes.txt", "tail_lines": 2})
        show(text_of(read))

        await use_a_repl(client, devbox)

        step("create_axon, publish_event ×3, then sql_query over the history")
        axon = (await call(client, "create_axon", {"name": "demo-events"})).structured_content["id"]
        for i, status in enumerate(["started", "built", "served"], 1):
            done = await call(client, "publish_event", {
                "axon_id": axon, "event_type": "build.status", "payload": {"step": i, "status": status},
            })
            show(f"published sequence {done.structured_content['sequence']}: {status}")
        query = await call(client, "sql_query", {
            "axon_id": axon,
            "sql": "SELECT sequence, event_type, json_extract(payload, '$.status') AS status "
                   "FROM rl_axon_events WHERE source = ? ORDER BY sequence",
            "params": ["devbox-mcp"],
        })
        show(text_of(query))
        refused = await client.call_tool("sql_query", {"axon_id": axon, "sql": "DELETE FROM rl_axon_events"})
        show(f"a DELETE without allow_writes is refused: {RED}{text_of(refused)[:90]}…{RESET}")
    finally:
        step("shutdown_devbox")
        down = await call(client, "shutdown_devbox", {"devbox_id": devbox})
        show(json.dumps(down.structured_content))


async def use_a_repl(client: Client, devbox: str) -> None:
    """An agent at a Python REPL: it types, reads the rendered screen, and the REPL keeps its state."""
    step("open_terminal: an interactive shell; the result is the rendered screen")
    opened = (await call(client, "open_terminal", {"devbox_id": devbox, "cols": 80, "rows": 12})).structured_content
    session = opened["session"]
    show(f"session {session}")
    typed = [
        ("python3 -q", r"^>>> $"),
        ("import math; radius = 2", r"^>>> $"),
        ("area = math.pi * radius ** 2", r"^>>> $"),
        ("print(f'area of a circle of radius {radius}: {area:.2f}')", r"^area of .*\n>>> $"),
    ]
    for text, prompt in typed:
        step(f"terminal_send text={text!r} keys=[Enter] wait_for={prompt!r}")
        sent = await call(client, "terminal_send", {
            "session": session, "text": text, "keys": ["Enter"], "wait_for": prompt, "timeout": 30,
        })
        screen = sent.structured_content
        show(f"{DIM}{screen['status']}; cursor {screen['cursor']}; the screen:{RESET}")
        show(screen["screen"], prefix=f"  {DIM}┃{RESET} ")
    step("terminal_send keys=[Ctrl-D] (leave the REPL), then close_terminal")
    await call(client, "terminal_send", {"session": session, "keys": ["Ctrl-D"], "wait_for": r"\$ $", "timeout": 30})
    await call(client, "close_terminal", {"session": session})
    show("terminal closed")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="devbox-mcp-demo-") as tmp:
        try:
            anyio.run(run_demo, Path(tmp))
        except DemoFailed as exc:
            print(f"{RED}demo failed: {exc}{RESET}", file=sys.stderr)
            return 1
        finally:
            # The server started the shared backend of this throwaway data directory: stop it too.
            service.stop(Path(tmp))
    return 0
