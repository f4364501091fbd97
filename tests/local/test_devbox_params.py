"""Every field of the devbox create body is honoured or refused with a 400 naming it (never ignored)."""

from __future__ import annotations

import httpx
import pytest

from mcp_server.local.devbox_params import host_architecture

OTHER_ARCH = "arm64" if host_architecture() == "x86_64" else "x86_64"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"blueprint_name": "b"}, "blueprint_name is not supported"),
        ({"snapshot_id": "snp_x"}, "snapshot_id is not supported"),
        ({"repo_connection_id": "rc_x"}, "repo_connection_id is not supported"),
        ({"tunnel": {"auth_mode": "public"}}, "auth_mode"),
        ({"gateways": {"GWS": {"gateway": "anthropic", "secret": "k"}}}, "gateways are not supported"),
        ({"mcp": {"MCP": {"mcp_config": "c", "secret": "k"}}}, "mcp is not supported"),
        ({"mounts": [{"type": "object_mount", "object_id": "o", "object_path": "/x"}]}, "'object_mount'"),
        ({"mounts": [{"type": "file_mount", "target": "a.txt", "content": "x", "mode": 1}]}, "remove mode"),
        ({"launch_parameters": {"required_services": ["db"]}}, "required_services"),
        ({"launch_parameters": {"network_policy_id": "np_x"}}, "network_policy_id: no network policy has the id 'np_x'"),
        ({"launch_parameters": {"architecture": OTHER_ARCH}}, f"architecture {OTHER_ARCH!r}"),
        ({"launch_parameters": {"provisioning_tier": "flex"}}, "provisioning_tier 'flex'"),
        ({"shell_name": "bash"}, "unknown field shell_name"),
        ({"launch_parameters": {"launch_comands": ["ls"]}}, "unknown field launch_parameters.launch_comands"),
        ({"launch_parameters": {"lifecycle": {"after_idle": {"idle_time_seconds": 5, "on_idle": "suspend",
                                                             "grace": 1}}}},
         "unknown field launch_parameters.lifecycle.after_idle.grace"),
    ],  # fmt: skip
)
def test_what_cannot_be_honoured_is_refused_by_name(http: httpx.Client, body: dict, fragment: str) -> None:
    before = http.get("/v1/devboxes", params={"limit": 1}).json()["total_count"]
    r = http.post("/v1/devboxes", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"]
    assert http.get("/v1/devboxes", params={"limit": 1}).json()["total_count"] == before


def test_empty_values_ask_for_nothing_and_are_accepted(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create(
        blueprint_id=None,
        code_mounts=[],
        gateways={},
        mounts=[],
        launch_parameters={"required_services": [], "available_ports": [8080], "provisioning_tier": "standard",
                           "architecture": host_architecture(), "lifecycle": {"resume_triggers": {"axon_event": False}}},
        extra_body={"shell_name": None},  # a placeholder for a field this server does not know
    )  # fmt: skip
    try:
        params = sdk.devboxes.retrieve(view.id).launch_parameters
        assert params.architecture == host_architecture() and params.available_ports == [8080]
    finally:
        sdk.devboxes.shutdown(view.id)


def test_file_mounts_given_as_mounts_are_written(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(
        mounts=[{"type": "file_mount", "target": "conf/app.ini", "content": "[app]\n"}],
        file_mounts={"other.txt": "o"},
    )
    try:
        assert sdk.devboxes.read_file_contents(view.id, file_path="conf/app.ini") == "[app]\n"
        assert sdk.devboxes.read_file_contents(view.id, file_path="other.txt") == "o"
    finally:
        sdk.devboxes.shutdown(view.id)
    r = http.post(
        "/v1/devboxes",
        json={"file_mounts": {"a": "1"}, "mounts": [{"type": "file_mount", "target": "a", "content": "2"}]},
    )
    assert r.status_code == 400 and "mounted twice" in r.json()["message"]
    r = http.post("/v1/devboxes", json={"mounts": [{"type": "file_mount", "target": "/etc/x", "content": "2"}]})
    assert r.status_code == 400 and "/home/user" in r.json()["message"]
