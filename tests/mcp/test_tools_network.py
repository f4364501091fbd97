"""create_devbox's network_policy and the reach it reports, through a real MCP client (both eras)
against the embedded backend. No devbox here sends a packet; what the policies let through is
proved on test hosts (tests/local/test_egress.py, including through MCP)."""

from __future__ import annotations

import uuid

import pytest
from mcp import Client
from support.mcp_client import call_error, call_ok, structured, text_of

pytestmark = pytest.mark.anyio


async def test_inline_hostnames_become_one_reused_policy_and_the_result_says_what_is_reached(
    mcp: Client, sdk
) -> None:  # noqa: ANN001
    hosts = [f"{uuid.uuid4().hex[:8]}.example", "*.PyPI.org"]
    created = await call_ok(mcp, "create_devbox", {"network_policy": hosts})
    box = structured(created)
    try:
        policy_id = sdk.devboxes.retrieve(box["id"]).launch_parameters.network_policy_id
        policy = sdk.network_policies.retrieve(policy_id)
        assert sorted(policy.egress.allowed_hostnames) == sorted(h.lower() for h in hosts)
        assert box["reach"] == f"HTTP(S) via proxy to *.pypi.org, {hosts[0]} only (policy {policy_id})"
        assert box["reach"] in text_of(created)
        got = structured(await call_ok(mcp, "get_devbox", {"devbox_id": box["id"]}))
        assert got["reach"] == box["reach"]
        again = structured(await call_ok(mcp, "create_devbox", {"network_policy": list(reversed(hosts))}))
        try:  # the same hosts: the same policy, not a new one per devbox
            assert sdk.devboxes.retrieve(again["id"]).launch_parameters.network_policy_id == policy_id
        finally:
            await call_ok(mcp, "shutdown_devbox", {"devbox_id": again["id"]})
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})


async def test_a_policy_id_an_empty_allowlist_and_the_default(mcp: Client, sdk) -> None:  # noqa: ANN001
    policy = sdk.network_policies.create(name=f"mcp-{uuid.uuid4().hex[:8]}", allowed_hostnames=[])
    try:
        box = structured(await call_ok(mcp, "create_devbox", {"network_policy": policy.id}))
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})
        assert box["reach"] == f"nothing: network policy {policy.id} allows no host"
    finally:
        sdk.network_policies.delete(policy.id)
    plain = structured(await call_ok(mcp, "create_devbox", {"network_mode": "none"}))
    await call_ok(mcp, "shutdown_devbox", {"devbox_id": plain["id"]})
    assert plain["reach"] == "nothing: no network"


async def test_an_unknown_policy_or_a_bad_hostname_is_a_clear_error(mcp: Client) -> None:
    assert "network_policy_id: no network policy has the id 'np_nope'" in await call_error(
        mcp, "create_devbox", {"network_policy": "np_nope"}
    )
    assert "is not a host name" in await call_error(mcp, "create_devbox", {"network_policy": ["https://x.org/"]})
