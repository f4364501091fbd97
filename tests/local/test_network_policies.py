"""`/v1/network-policies` driven by the official runloop-api-client: create, list (name filter,
pagination), get, update, delete; refusals by name; a policy applied at devbox create; a policy in
use cannot be deleted; policies outlive a backend restart. No devbox here sends a packet: what a
policy lets through is proved on test hosts in tests/local/test_egress_policy.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from runloop_api_client import BadRequestError, ConflictError, NotFoundError, Runloop

from mcp_server.local.server import start_in_thread


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_create_get_list_update_delete(sdk: Runloop) -> None:
    name = _name("ci")
    created = sdk.network_policies.create(
        name=name, description="for CI", allowed_hostnames=["github.com", "*.NPMJS.org."]
    )
    assert created.id.startswith("np_") and created.name == name and created.description == "for CI"
    assert created.egress.allowed_hostnames == ["github.com", "*.npmjs.org"]  # normalised
    assert (created.egress.allow_all, created.egress.allow_devbox_to_devbox) == (False, False)
    assert (created.egress.allow_agent_gateway, created.egress.allow_mcp_gateway) == (False, False)
    assert sdk.network_policies.retrieve(created.id) == created

    updated = sdk.network_policies.update(created.id, allowed_hostnames=["pypi.org"], description=None)
    assert updated.egress.allowed_hostnames == ["pypi.org"] and updated.description is None
    assert updated.name == name and updated.update_time_ms >= created.update_time_ms
    everything = sdk.network_policies.update(created.id, allow_all=True)
    assert everything.egress.allow_all and everything.egress.allow_devbox_to_devbox  # implied, as the spec says

    deleted = sdk.network_policies.delete(created.id)
    assert deleted.id == created.id
    with pytest.raises(NotFoundError, match=created.id):
        sdk.network_policies.retrieve(created.id)


def test_list_filters_by_name_and_pages(sdk: Runloop) -> None:
    tag = uuid.uuid4().hex[:8]
    made = [sdk.network_policies.create(name=f"page-{tag}-{i}") for i in range(5)]
    sdk.network_policies.create(name=_name("elsewhere"))
    page = sdk.network_policies.list(name=f"PAGE-{tag}", limit=2)  # partial, case-insensitive
    assert len(page.network_policies) == 2 and page.has_more and page.total_count == 5
    seen = [p.id for p in sdk.network_policies.list(name=f"page-{tag}", limit=2)]  # the SDK follows the pages
    assert sorted(seen) == sorted(p.id for p in made) and len(seen) == 5
    assert [p.id for p in sdk.network_policies.list(id=made[0].id)] == [made[0].id]
    assert [p.id for p in sdk.network_policies.list(search=made[1].id)] == [made[1].id]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"allow_agent_gateway": True}, "allow_agent_gateway: there is no agent gateway"),
        ({"allow_mcp_gateway": True}, "allow_mcp_gateway: there is no MCP hub"),
        ({"allowed_hostnames": ["https://github.com/x"]}, "allowed_hostnames[0] 'https://github.com/x' is not a host name"),
        ({"allowed_hostnames": ["a.*.com"]}, "allowed_hostnames[0]"),
        ({"allow_all": "yes"}, "allow_all"),
        ({"egress": {}}, "egress"),
    ],
)
def test_bad_input_is_refused_by_name(http: httpx.Client, body: dict, fragment: str) -> None:
    name = _name("bad")
    r = http.post("/v1/network-policies", json={"name": name, **body})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"]
    assert http.get("/v1/network-policies", params={"name": name}).json()["network_policies"] == []


def test_names_are_unique_and_false_gateways_are_accepted(sdk: Runloop) -> None:
    name = _name("unique")
    policy = sdk.network_policies.create(name=name, allow_agent_gateway=False, allow_mcp_gateway=False)
    with pytest.raises(BadRequestError, match="already exists"):
        sdk.network_policies.create(name=name)
    with pytest.raises(BadRequestError, match="allow_mcp_gateway"):
        sdk.network_policies.update(policy.id, allow_mcp_gateway=True)
    sdk.network_policies.delete(policy.id)


def test_a_policy_applies_at_create_and_cannot_be_deleted_while_in_use(sdk: Runloop) -> None:
    with pytest.raises(BadRequestError, match="network_policy_id: no network policy has the id 'np_nope'"):
        sdk.devboxes.create(launch_parameters={"network_policy_id": "np_nope"})
    policy = sdk.network_policies.create(name=_name("none"), allowed_hostnames=[])
    with pytest.raises(BadRequestError, match="applies to network_mode 'isolated', not 'host'"):
        sdk.devboxes.create(launch_parameters={"network_policy_id": policy.id, "network_mode": "host"})
    box = sdk.devboxes.create_and_await_running(launch_parameters={"network_policy_id": policy.id})
    try:
        assert box.launch_parameters.network_policy_id == policy.id
        with pytest.raises(ConflictError, match=box.id):
            sdk.network_policies.delete(policy.id)
        with pytest.raises(ConflictError, match="allow_all cannot change"):
            sdk.network_policies.update(policy.id, allow_all=True)
        # An allowlist with no host: no network at all, and the proxy's variables are set.
        done = sdk.devboxes.execute_sync(box.id, command="ip -o link | grep -vc ': lo:'; echo $http_proxy $HTTPS_PROXY")
        assert done.stdout == "0\nhttp://127.0.0.1:3128 http://127.0.0.1:3128\n"
    finally:
        sdk.devboxes.shutdown(box.id)
    assert sdk.network_policies.delete(policy.id).id == policy.id


def test_policies_outlive_a_backend_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_in_thread(data)
    try:
        with Runloop(bearer_token=first.api_key, base_url=first.base_url, max_retries=0) as sdk:
            policy = sdk.network_policies.create(name="kept", allowed_hostnames=["example.com"])
    finally:
        first.stop()
    second = start_in_thread(data)
    try:
        with Runloop(bearer_token=second.api_key, base_url=second.base_url, max_retries=0) as sdk:
            assert sdk.network_policies.retrieve(policy.id) == policy
    finally:
        second.stop()
