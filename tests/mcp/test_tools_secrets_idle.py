"""create_devbox's secrets and idle policy, and get_devbox's view of the policy, through a real MCP
client (both eras) against the embedded backend. Secrets are made the way a user makes them: with
the official SDK, outside the conversation."""

from __future__ import annotations

import json
import uuid

import pytest
from mcp import Client
from support.mcp_client import call_error, call_ok, structured, text_of

from mcp_server.local.server import RunningBackend
from mcp_server.runloop import RunloopClient

pytestmark = pytest.mark.anyio


@pytest.fixture
def secret(sdk):  # noqa: ANN001, ANN201
    name, value = f"GH_TOKEN_{uuid.uuid4().hex[:10]}", f"ghp-{uuid.uuid4().hex}"
    sdk.secrets.create(name=name, value=value)
    yield name, value
    sdk.secrets.delete(name)


async def test_secrets_reach_the_commands_and_never_the_results(mcp: Client, secret: tuple[str, str]) -> None:
    name, value = secret
    created = await call_ok(
        mcp, "create_devbox",
        {"name": "with-secret", "secrets": [{"env_var": "GITHUB_TOKEN", "secret_name": name}],
         "environment_variables": [{"name": "PLAIN", "value": "p"}]},
    )  # fmt: skip
    devbox_id = structured(created)["id"]
    try:
        ran = structured(await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": "printenv GITHUB_TOKEN PLAIN"}))
        assert ran["stdout"] == f"{value}\np\n"
        shown = [created, await call_ok(mcp, "get_devbox", {"devbox_id": devbox_id}),
                 await call_ok(mcp, "list_devboxes", {"limit": 100})]  # fmt: skip
        for result in shown:
            assert value not in text_of(result) and value not in json.dumps(result.structured_content)
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": devbox_id})


async def test_an_unknown_secret_or_a_variable_given_twice_is_a_clear_error(mcp: Client, secret: tuple[str, str]) -> None:
    message = await call_error(mcp, "create_devbox", {"secrets": [{"env_var": "TOKEN", "secret_name": "NO_SUCH_ONE"}]})
    assert "NO_SUCH_ONE" in message and "TOKEN" in message
    twice = [{"env_var": "TOKEN", "secret_name": secret[0]}, {"env_var": "TOKEN", "secret_name": secret[0]}]
    assert "'TOKEN' is given twice" in await call_error(mcp, "create_devbox", {"secrets": twice})
    bad = await call_error(mcp, "create_devbox", {"secrets": [{"env_var": "NOT-A-NAME", "secret_name": secret[0]}]})
    assert "env_var" in bad


async def test_an_idle_devbox_shuts_down_and_get_devbox_shows_the_policy(mcp: Client, backend: RunningBackend) -> None:
    created = structured(await call_ok(mcp, "create_devbox", {"idle_timeout_seconds": 1, "on_idle": "shutdown"}))
    async with RunloopClient(backend.base_url, backend.api_key) as client:
        view = await client.wait_for_devbox_status(created["id"], ["shutdown"], timeout_seconds=30)
    assert view.shutdown_reason == "idle"
    got = structured(await call_ok(mcp, "get_devbox", {"devbox_id": created["id"]}))
    assert got["idle_timeout_seconds"] == 1 and got["on_idle"] == "shutdown"
    assert got["status"] == "shutdown" and got["shutdown_reason"] == "idle"


async def test_idle_devboxes_are_suspended_by_default(mcp: Client, backend: RunningBackend) -> None:
    created = structured(await call_ok(mcp, "create_devbox", {"idle_timeout_seconds": 1}))
    async with RunloopClient(backend.base_url, backend.api_key) as client:
        view = await client.wait_for_devbox_status(created["id"], ["suspended", "shutdown"], timeout_seconds=30)
    assert view.status == "suspended"
    got = structured(await call_ok(mcp, "get_devbox", {"devbox_id": created["id"]}))
    assert got["idle_timeout_seconds"] == 1 and got["on_idle"] == "suspend"
    await call_ok(mcp, "shutdown_devbox", {"devbox_id": created["id"]})
    unbounded = structured(await call_ok(mcp, "create_devbox", {"launch_commands": []}))
    try:
        got = structured(await call_ok(mcp, "get_devbox", {"devbox_id": unbounded["id"]}))
        assert got.get("idle_timeout_seconds") is None and got.get("on_idle") is None
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": unbounded["id"]})
