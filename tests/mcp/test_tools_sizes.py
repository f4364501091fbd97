"""Sizes through a real MCP client (both eras): create_devbox takes a size and says what the devbox
really has, get_devbox adds its usage, and execute says when the kernel killed a command for memory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from mcp import Client
from mcp.types import Implementation
from support.mcp_client import MODES, call_error, call_ok, make_server, structured, text_of

from mcp_server.local.server import RunningBackend

pytestmark = pytest.mark.anyio


async def test_create_devbox_takes_a_size_and_get_devbox_shows_it_with_usage(mcp: Client) -> None:
    box = structured(await call_ok(mcp, "create_devbox", {"name": "sized", "resource_size": "X_SMALL"}))
    try:
        assert box["status"] == "running"
        assert box["size"].startswith("X_SMALL: 0.5 CPU, 1 GiB memory, 4 GiB disk, 512 processes")
        if os.geteuid() == 0:  # this host enforces every limit: nothing is said to be missing
            assert "not enforced" not in box["size"], box["size"]
        else:
            assert "not enforced on this host: " in box["size"]
        got = await call_ok(mcp, "get_devbox", {"devbox_id": box["id"]})
        detail = structured(got)
        assert detail["size"] == box["size"]
        assert detail["usage"].startswith("active ") and " vCPU-s, " in detail["usage"]
        if os.geteuid() == 0:
            assert "; in use now: " in detail["usage"] and " memory, " in detail["usage"]
        assert detail["usage"] in text_of(got)
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})


async def test_a_custom_size_goes_through_and_a_bad_one_is_refused_with_the_rule(mcp: Client) -> None:
    args = {"resource_size": "CUSTOM_SIZE", "custom_cpu_cores": 0.5, "custom_gb_memory": 2, "custom_disk_size": 2}
    box = structured(await call_ok(mcp, "create_devbox", args))
    try:
        assert box["size"].startswith("CUSTOM_SIZE: 0.5 CPU, 2 GiB memory, 2 GiB disk, 1024 processes")
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})
    message = await call_error(mcp, "create_devbox", {**args, "custom_gb_memory": 8})
    assert "custom_gb_memory=8 with custom_cpu_cores=0.5" in message and "between 2 and 8" in message
    message = await call_error(mcp, "create_devbox", {"custom_cpu_cores": 2})
    assert "custom_cpu_cores needs resource_size_request CUSTOM_SIZE" in message


@pytest.fixture(params=MODES)
async def named(request: pytest.FixtureRequest, backend: RunningBackend) -> AsyncIterator[Client]:
    """A client under its own name: the SDK's default name "mcp" is held at most 3 s (budgets.py),
    and filling 1 GiB before the kernel steps in can take longer on a loaded machine."""
    info = Implementation(name="devbox-mcp-tests", version="1")
    async with Client(make_server(backend), mode=request.param, client_info=info) as client:
        yield client


@pytest.mark.skipif(os.geteuid() != 0, reason="the memory limit needs cgroups, which need root here")
async def test_execute_says_a_command_was_killed_for_memory(named: Client) -> None:
    mcp = named
    box = structured(await call_ok(mcp, "create_devbox", {"resource_size": "X_SMALL"}))
    try:
        hog = "python3 -c 'b = [bytearray(64 << 20) for _ in range(32)]'"  # stops at 2 GiB
        result = await call_ok(mcp, "execute", {"devbox_id": box["id"], "command": hog})
        out = structured(result)
        assert out["exit_status"] == 137
        assert out["hint"] == "killed: out of memory at the devbox's limit; retry in a devbox with a larger resource_size"
        assert text_of(result).splitlines()[1] == out["hint"]  # right under the exit line
        assert "out of memory, the devbox's limit is 1 GiB" in out["stderr"]
        killed = structured(await call_ok(mcp, "execute", {"devbox_id": box["id"], "command": "kill -9 $$"}))
        assert killed["exit_status"] == 137 and killed["hint"].startswith("exit 137: killed (SIGKILL)")
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})
