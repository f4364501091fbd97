"""The terminal tools through a real MCP client (both eras), against the embedded backend's PTYs in
real sandboxes: what an agent sees is the rendered screen.

No sleeps: every wait is a `wait_for` on the screen (the tool's own waiting), bounded by its timeout.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.client.subscriptions import ResourceUpdated
from support.mcp_client import MODES, call_error, call_ok, make_server, structured, text_of
from support.subscriptions import Updates

from mcp_server.local.server import RunningBackend
from mcp_server.settings import Settings

pytestmark = pytest.mark.anyio

WAIT = 60  # seconds a wait_for may take on a loaded machine (it returns as soon as it matches)
# The in-memory client sends the SDK's default name, whose calls are otherwise held 3 s at most
# (budgets.py); a set wait applies to every client, and a call's timeout may ask for more.
SETTINGS = Settings(wait_seconds=WAIT)


@pytest.fixture(params=MODES)
async def mcp(request: pytest.FixtureRequest, backend: RunningBackend) -> AsyncIterator[Client]:
    async with Client(make_server(backend, SETTINGS), mode=request.param) as client:
        yield client


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
    # Waits for the prompt after the value: waiting for the value alone could answer before the
    # prompt is drawn, with the cursor on a row the screen (trailing blank rows trimmed) lacks.
    out = await send(mcp, session, text="print('value', x, y)", keys=["Enter"], wait_for=r"^>>> $")
    lines = out["screen"].splitlines()
    row, _ = out["cursor"]
    assert "value 42 43" in lines[row - 1] and lines[row] == ">>> ", out["screen"]
    await call_ok(mcp, "close_terminal", {"session": session})


async def test_progress_carries_the_new_output_while_waiting(mcp: Client, devbox_id: str) -> None:
    session = await open_shell(mcp, devbox_id)
    messages: list[str] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    await call_ok(mcp, "terminal_send", {
        "session": session, "text": "for i in 1 2 3; do echo tick-$i; done; echo END$((1+1))", "keys": ["Enter"],
        "wait_for": "^END2", "timeout": WAIT,
    }, progress_callback=progress)
    seen = "".join(messages)
    assert all(f"tick-{i}" in seen for i in (1, 2, 3)) and "END2" in seen
    assert "\x1b" not in seen  # cleaned as execute's progress is


async def test_vi_edits_and_saves_a_file_that_read_file_then_shows(mcp: Client, devbox_id: str) -> None:
    session = await open_shell(mcp, devbox_id)
    await send(mcp, session, text="vi notes.txt", keys=["Enter"], wait_for=r"notes\.txt")
    await send(mcp, session, text="ihello from vi", keys=["Escape"], wait_for="hello from vi")
    await send(mcp, session, text=":wq", keys=["Enter"], wait_for=r"\$ $")  # vi left: the shell prompts again
    await send(mcp, session, text="echo SAVED$((1+1))", keys=["Enter"], wait_for="SAVED2")
    read = await call_ok(mcp, "read_file", {"devbox_id": devbox_id, "path": "notes.txt"})
    assert "hello from vi" in text_of(read)


async def test_ctrl_c_interrupts_sleep(mcp: Client, devbox_id: str) -> None:
    session = await open_shell(mcp, devbox_id)
    # The program says it runs: Ctrl-C must reach sleep, not a shell still starting it.
    await send(mcp, session, text="sh -c 'echo SLEEPING; exec sleep 100'", keys=["Enter"], wait_for="^SLEEPING")
    await send(mcp, session, keys=["Ctrl-C"], wait_for=r"\$ $")  # the shell prompts again
    out = await send(mcp, session, text="echo rc=$?", keys=["Enter"], wait_for=r"^rc=\d+")
    assert re.search(r"^rc=130$", out["screen"], re.M), out["screen"]


async def test_less_renders_a_full_screen_and_the_shell_screen_comes_back(mcp: Client, devbox_id: str) -> None:
    session = await open_shell(mcp, devbox_id, cols=80, rows=24)
    await send(mcp, session, text="seq 1 500 | sed 's/^/line /' > lines.txt; echo MADE$((1+1))", keys=["Enter"],
               wait_for="^MADE2")
    out = await send(mcp, session, text="less lines.txt", keys=["Enter"], wait_for=r"^line 23$")
    rows = out["screen"].splitlines()
    assert rows[:23] == [f"line {i}" for i in range(1, 24)]  # the page, top to bottom; the prompt row below
    out = await send(mcp, session, keys=["PageDown"], wait_for=r"^line 46$")
    assert out["screen"].splitlines()[0] == "line 24"
    out = await send(mcp, session, text="q", wait_for="^MADE2")  # the alternate screen is left: the shell's is back
    assert "line 24" not in out["screen"] and "READY42" in out["screen"]


async def test_a_resize_reaches_the_program(mcp: Client, devbox_id: str) -> None:
    session = await open_shell(mcp, devbox_id)
    script = (
        "import os, signal; "
        "signal.signal(signal.SIGWINCH, lambda *a: print('WINCH', *os.get_terminal_size(), flush=True)); "
        "print('WAITING', *os.get_terminal_size(), flush=True); signal.pause()"
    )
    await send(mcp, session, text=f'python3 -c "{script}"', keys=["Enter"], wait_for="WAITING 120 40")
    result = await call_ok(mcp, "terminal_send", {"session": session, "resize": "100x30", "wait_for": "WINCH 100 30",
                                                 "timeout": WAIT})
    assert structured(result)["status"].startswith("matched")
    assert "100x30" in text_of(result)  # the rendered screen has the new size too


async def test_bad_input_gets_a_clear_error(mcp: Client, devbox_id: str) -> None:
    session = await open_shell(mcp, devbox_id)
    assert "unknown key 'Hyper'" in await call_error(mcp, "terminal_send", {"session": session, "keys": ["Hyper"]})
    assert "not a valid regular expression" in await call_error(mcp, "terminal_send", {"session": session, "wait_for": "("})
    assert "COLSxROWS" in await call_error(mcp, "terminal_send", {"session": session, "resize": "wide"})
    assert "out of range" in await call_error(mcp, "open_terminal", {"devbox_id": devbox_id, "cols": 0})
    assert "not a terminal session id" in await call_error(mcp, "terminal_read", {"session": "nope"})
    message = await call_error(mcp, "open_terminal", {"devbox_id": "dbx_missing"})
    assert "dbx_missing" in message and "Traceback" not in message


def rss_bytes() -> int:
    """This process's resident memory (the MCP server and the backend both run in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_a_flood_keeps_memory_bounded_and_the_result_within_budget(backend: RunningBackend, devbox_id: str) -> None:
    budget = 4096  # a low limit, so the bound is tested
    async with Client(make_server(backend, Settings(output_budget=budget, wait_seconds=WAIT)), mode="auto") as mcp:
        session = await open_shell(mcp, devbox_id)
        before = rss_bytes()
        peak = [before]

        async def progress(value: float, total: float | None, message: str | None) -> None:
            peak.append(rss_bytes())

        result = await call_ok(mcp, "terminal_send", {
            "session": session, "text": "yes | head -c 50M; echo FLOOD$((1+1))", "keys": ["Enter"],
            "wait_for": "^FLOOD2", "timeout": 240,
        }, progress_callback=progress)
        peak.append(rss_bytes())
        body = structured(result)
        assert body["status"].startswith("matched"), text_of(result)
        # 50 MB went through; memory grew by a bounded amount, well under what keeping it would take.
        assert max(peak) - before < 40 * 1024 * 1024, (before, max(peak))
        # The result is within the budget (plus its one-line head), and says output was left out.
        assert len((body["screen"] + body["scrolled"]).encode()) <= budget
        assert len(text_of(result).encode()) <= budget + 200
        assert "not drawn" in body["scrolled"] or "omitted" in body["scrolled"]
        # The session still works after the flood.
        await send(mcp, session, text="echo AFTER$((1+1))", keys=["Enter"], wait_for="^AFTER2")


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_that_comes_back_gets_the_same_shell(backend: RunningBackend, devbox_id: str, mode: str) -> None:
    async with Client(make_server(backend, SETTINGS), mode=mode) as first:
        session = await open_shell(first, devbox_id)
        await send(first, session, text="KEEP=kept-$((6*7)); echo STORED", keys=["Enter"], wait_for="^STORED")
    # The client and its server are gone (as when a desktop app restarts the server): the PTY lives on.
    async with Client(make_server(backend, SETTINGS), mode=mode) as second:
        result = await call_ok(second, "terminal_send", {
            "session": session, "text": "echo $KEEP", "keys": ["Enter"], "wait_for": "^kept-42$", "timeout": WAIT,
        })
        body = structured(result)
        assert body["status"].startswith("matched") and "reattached to the same shell" in body["status"]
        await call_ok(second, "close_terminal", {"session": session})
        # Closed: the same id starts a fresh shell, without the variable.
        result = await call_ok(second, "terminal_send", {
            "session": session, "text": "echo [$KEEP]", "keys": ["Enter"], "wait_for": r"^\[\]$", "timeout": WAIT,
        })
        assert "new shell" in structured(result)["status"]


@pytest.mark.parametrize("mode", MODES)
async def test_the_terminal_resource_is_the_screen_and_subscribers_hear_it_change(
    backend: RunningBackend, devbox_id: str, mode: str
) -> None:
    updates = Updates()
    server = make_server(backend, SETTINGS)
    handler = updates.handle if mode == "legacy" else None
    async with Client(server, mode=mode, message_handler=handler) as mcp:
        session = await open_shell(mcp, devbox_id)
        uri = f"terminal://{session}"
        async with anyio.create_task_group() as tg:
            if mode == "legacy":
                await mcp.subscribe_resource(uri)
            else:
                listening = anyio.Event()

                async def listen() -> None:
                    async with mcp.listen(resource_subscriptions=[uri]) as events:
                        listening.set()
                        async for event in events:
                            if isinstance(event, ResourceUpdated):
                                updates.add(event.uri)

                tg.start_soon(listen)
                await listening.wait()
            before = len(updates.uris)
            await send(mcp, session, text="echo SHOWN$((2+2))", keys=["Enter"], wait_for="^SHOWN4")
            await updates.until(lambda: len(updates.uris) > before)
            assert set(updates.uris) == {uri}
            screen = (await mcp.read_resource(uri)).contents[0]
            assert "SHOWN4" in screen.text and screen.mime_type == "text/plain"
            tg.cancel_scope.cancel()
        with pytest.raises(MCPError) as missing:
            await mcp.read_resource(f"terminal://{devbox_id}/nosuch")
        assert "open_terminal" in missing.value.error.message
