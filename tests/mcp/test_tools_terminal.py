"""The terminal tools through a real MCP client (both eras), against the embedded backend's PTYs in
real sandboxes: what an agent sees is the rendered screen.

No sleeps: every wait is a `wait_for` on the screen (the tool's own waiting), bounded by its timeout.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import pytest
from mcp import Client
from support.mcp_client import call_error, call_ok, make_server, structured, text_of

from mcp_server.local.server import RunningBackend

pytestmark = pytest.mark.anyio

WAIT = 60  # seconds a wait_for may take on a loaded machine (it returns as soon as it matches)


@pytest.fixture(scope="module")
def devbox_id(backend: RunningBackend) -> str:
    async def create() -> str:
        async with Client(make_server(backend), mode="auto") as client:
            return structured(await call_ok(client, "create_devbox", {"name": "terminal"}))["id"]

    return anyio.run(create)


async def open_shell(mcp: Client, devbox_id: str, **args: Any) -> str:
    opened = structured(await call_ok(mcp, "open_terminal", {"devbox_id": devbox_id, **args}))
    session = opened["session"]
    # A prompt-independent point: the shell has read and run a command.
    await send(mcp, session, text="echo READY$((40+2))", keys=["Enter"], wait_for="READY42")
    return session


async def send(mcp: Client, session: str, **args: Any) -> dict[str, Any]:
    args.setdefault("timeout", WAIT)
    out = structured(await call_ok(mcp, "terminal_send", {"session": session, **args}))
    if "wait_for" in args:
        assert out["status"].startswith("matched"), out
    return out


async def test_a_python_repl_keeps_a_variable_across_three_sends(mcp: Client, devbox_id: str) -> None:
    session = await open_shell(mcp, devbox_id)
    await send(mcp, session, text="python3 -q", keys=["Enter"], wait_for=r"^>>> $")
    await send(mcp, session, text="x = 6 * 7", keys=["Enter"], wait_for=r"^>>> $")
    await send(mcp, session, text="y = x + 1", keys=["Enter"], wait_for=r"^>>> $")
    out = await send(mcp, session, text="print('value', x, y)", keys=["Enter"], wait_for=r"value 42 43")
    assert "value 42 43" in out["screen"]
    row, col = out["cursor"]
    assert out["screen"].splitlines()[row].startswith(">>> ") or "value 42 43" in out["screen"]
    await call_ok(mcp, "close_terminal", {"session": session})
