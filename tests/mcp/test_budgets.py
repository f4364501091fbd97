"""Time budgets that fit the client (budgets.py): a client known by its clientInfo name to time
out sooner than our 50 s default gets a hand-off (status running, offsets for stream_logs) inside
its timeout, in both protocol eras (clientInfo comes at initialize, or in each request's _meta);
other clients and an explicit DEVBOX_MCP_WAIT_SECONDS keep the longer hold. The same runs through
openai-agents itself, whose 5 s default is the case this exists for: tests/commands/test_frameworks.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from mcp import Client
from mcp.types import Implementation
from support.mcp_client import MODES, call_ok, make_server, structured, text_of

from mcp_server.budgets import DEFAULT_WAIT_SECONDS, KNOWN_CLIENTS
from mcp_server.local.server import RunningBackend
from mcp_server.settings import Settings

pytestmark = pytest.mark.anyio

SDK_DEFAULT = KNOWN_CLIENTS["mcp"]
# Longer than the hold for "mcp" clients, far shorter than the 50 s default.
SLOW = f"sleep {SDK_DEFAULT.hold_seconds + 1.5:g}; echo finished"


def as_client(name: str) -> Implementation:
    return Implementation(name=name, version="1.0")


@pytest.fixture(scope="module")
def devbox_id(backend: RunningBackend) -> Iterator[str]:
    async def create() -> str:
        async with Client(make_server(backend), mode="auto", client_info=as_client("tests")) as client:
            return structured(await call_ok(client, "create_devbox", {"name": "budgets"}))["id"]

    devbox = anyio.run(create)
    yield devbox

    async def shutdown() -> None:
        async with Client(make_server(backend), mode="auto", client_info=as_client("tests")) as client:
            await call_ok(client, "shutdown_devbox", {"devbox_id": devbox})

    anyio.run(shutdown)


async def run_slow(client: Client, devbox_id: str, **args: object) -> dict[str, object]:
    result = await call_ok(client, "execute", {"devbox_id": devbox_id, "command": SLOW, **args})
    envelope = structured(result)
    if envelope["status"] != "completed":
        await call_ok(client, "kill_execution", {"devbox_id": devbox_id, "execution_id": envelope["execution_id"]})
    return {**envelope, "text": text_of(result)}


def test_the_table_holds_less_than_the_client_timeout_and_the_default() -> None:
    for name, known in KNOWN_CLIENTS.items():
        assert 0 < known.hold_seconds < known.timeout_seconds, name
        assert known.hold_seconds < DEFAULT_WAIT_SECONDS, name


@pytest.mark.parametrize("mode", MODES)
async def test_a_python_sdk_client_gets_a_hand_off_inside_its_timeout(
    mode: str, backend: RunningBackend, devbox_id: str
) -> None:
    async with Client(make_server(backend), mode=mode) as client:  # the SDK's default name, "mcp"
        got = await run_slow(client, devbox_id)
    assert got["status"] == "running" and got.get("exit_status") is None, got
    assert f"after {SDK_DEFAULT.hold_seconds:g} s" in got["text"] and "stream_logs" in got["text"]


async def test_a_longer_wait_asked_by_the_call_is_capped_for_such_a_client(backend: RunningBackend, devbox_id: str) -> None:
    async with Client(make_server(backend), mode="auto", client_info=as_client("mcp")) as client:
        started = structured(await call_ok(client, "execute", {
            "devbox_id": devbox_id, "command": "sleep 60", "wait_seconds": 30,
        }))
        try:
            assert started["status"] == "running", started
            logs = structured(await call_ok(client, "stream_logs", {
                "devbox_id": devbox_id, "execution_id": started["execution_id"], "wait_seconds": 30,
            }))
            assert logs["stopped_because"] == "wait_ended" and logs["status"] == "running", logs
        finally:
            await call_ok(client, "kill_execution", {"devbox_id": devbox_id, "execution_id": started["execution_id"]})


async def test_other_clients_keep_the_default_hold(backend: RunningBackend, devbox_id: str) -> None:
    async with Client(make_server(backend), mode="auto", client_info=as_client("claude-code")) as client:
        got = await run_slow(client, devbox_id)
    assert got["status"] == "completed" and got["exit_status"] == 0 and "finished" in got["text"], got


async def test_devbox_mcp_wait_seconds_applies_to_every_client(backend: RunningBackend, devbox_id: str) -> None:
    settings = Settings.from_env({"DEVBOX_MCP_WAIT_SECONDS": "30"})
    async with Client(make_server(backend, settings), mode="auto", client_info=as_client("mcp")) as client:
        got = await run_slow(client, devbox_id)
    assert got["status"] == "completed" and "finished" in got["text"], got


async def test_create_devbox_returns_a_booting_devbox_inside_the_client_timeout(backend: RunningBackend) -> None:
    async with Client(make_server(backend), mode="auto") as client:
        box = structured(await call_ok(client, "create_devbox", {"launch_commands": ["sleep 30"]}))
        try:
            assert box["status"] not in ("running", "failure", "shutdown"), box
        finally:
            await call_ok(client, "shutdown_devbox", {"devbox_id": box["id"]})


def test_settings_from_env_types() -> None:
    settings = Settings.from_env({"DEVBOX_MCP_WAIT_SECONDS": "12.5", "DEVBOX_MCP_OUTPUT_BUDGET": "4096"})
    assert settings.wait_seconds == 12.5 and settings.output_budget == 4096
    assert Settings.from_env({}).wait_seconds is None  # unset: the per-client defaults apply
