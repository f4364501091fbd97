"""Secrets over the real HTTP API, driven by the official Runloop SDK: the store, and devboxes that use it.

Each test makes secrets of its own (uuid-suffixed names): the backend and its store are shared.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import uuid
from pathlib import Path

import httpx
import pytest
from runloop_api_client import BadRequestError, NotFoundError

from mcp_server.local.server import RunningBackend, start_in_thread


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def secret_value() -> str:
    """A value no test output, log line or file would hold by chance."""
    return f"s3cr3t-{uuid.uuid4().hex}"


def test_create_list_get_update_delete_without_ever_returning_the_value(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    name, value, new_value = unique("DB_PASSWORD"), secret_value(), secret_value()
    created = sdk.secrets.create(name=name, value=value)
    assert created.name == name and created.id.startswith("sec_")
    assert created.create_time_ms == created.update_time_ms
    bodies = [created.model_dump()]

    assert sdk.secrets.retrieve(name).id == created.id
    assert sdk.secrets.retrieve_by_id(created.id).name == name
    listed = sdk.secrets.list(limit=5000)
    assert [s.id for s in listed.secrets].count(created.id) == 1
    assert listed.total_count is not None and listed.total_count >= 1
    bodies += [sdk.secrets.retrieve(name).model_dump(), listed.model_dump()]

    updated = sdk.secrets.update(name, value=new_value)
    assert updated.id == created.id and updated.update_time_ms >= created.update_time_ms
    again = sdk.secrets.update_by_id(created.id, value=value)
    bodies += [updated.model_dump(), again.model_dump()]
    # Raw answers too: the SDK's models would drop a field they do not declare.
    for response in (
        http.get("/v1/secrets", params={"limit": 5000}),
        http.get(f"/v1/secrets/{name}"),
        http.get(f"/v1/secrets/id/{created.id}"),
    ):
        assert response.status_code == 200
        bodies.append(response.json())
        assert set(response.json()) <= {"secrets", "has_more", "total_count", "id", "name", "create_time_ms",
                                        "update_time_ms"}  # fmt: skip

    deleted = sdk.secrets.delete(name)
    assert deleted.id == created.id
    bodies.append(deleted.model_dump())
    with pytest.raises(NotFoundError, match=name):
        sdk.secrets.retrieve(name)
    with pytest.raises(NotFoundError):
        sdk.secrets.delete_by_id(created.id)
    text = json.dumps(bodies)
    assert value not in text and new_value not in text


def test_the_store_is_a_0600_file_in_a_0700_directory(sdk, backend: RunningBackend) -> None:  # noqa: ANN001
    name, value = unique("TOKEN"), secret_value()
    sdk.secrets.create(name=name, value=value)
    store = backend.config.data_dir / "secrets" / "secrets.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert value in store.read_text()  # it is stored (not encrypted: the mode guards it)
    sdk.secrets.delete(name)
    assert value not in store.read_text()
    assert {p.name for p in store.parent.iterdir()} == {"secrets.json", ".lock"}, "no temporary file is left"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "1ABC", "value": "x"}, "not a valid secret name"),
        ({"name": "has-dash", "value": "x"}, "not a valid secret name"),
        ({"name": "A" * 300, "value": "x"}, "at most 256 characters"),
        ({"name": "NUL_VALUE", "value": "before\0after-HIDDEN"}, "NUL character"),
        ({"name": "HUGE_VALUE", "value": "HIDDEN" * 20_000}, "at most 65536 bytes"),
    ],
)
def test_bad_secrets_are_refused_without_echoing_the_value(http: httpx.Client, body: dict, fragment: str) -> None:
    before = http.get("/v1/secrets", params={"limit": 1}).json()["total_count"]
    r = http.post("/v1/secrets", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"] and "HIDDEN" not in r.text
    assert http.get("/v1/secrets", params={"limit": 1}).json()["total_count"] == before


def test_wrong_types_and_unknown_fields_are_400s_that_do_not_echo_the_value(http: httpx.Client) -> None:
    r = http.post("/v1/secrets", json={"name": unique("X"), "value": 12345678901})
    assert r.status_code == 400 and "value" in r.json()["message"] and "12345678901" not in r.text
    r = http.post("/v1/secrets", json={"name": unique("X"), "value": "HIDDEN", "description": "d"})
    assert r.status_code == 400 and "description" in r.json()["message"] and "HIDDEN" not in r.text


def test_a_name_is_unique_and_a_retried_create_is_not_a_duplicate(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    name = unique("API_KEY")
    headers = {"x-request-id": unique("retry")}
    first = http.post("/v1/secrets", json={"name": name, "value": "a"}, headers=headers)
    second = http.post("/v1/secrets", json={"name": name, "value": "a"}, headers=headers)
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    with pytest.raises(BadRequestError, match="already exists"):
        sdk.secrets.create(name=name, value="b")
    sdk.secrets.delete(name)


def test_a_devbox_gets_its_secrets_in_every_command_and_nowhere_else(
    sdk, http: httpx.Client, backend: RunningBackend, caplog: pytest.LogCaptureFixture  # noqa: ANN001
) -> None:
    caplog.set_level(logging.DEBUG)
    name, value = unique("DATABASE_PASSWORD"), secret_value()
    sdk.secrets.create(name=name, value=value)
    view = sdk.devboxes.create_and_await_running(
        secrets={"DB_PASS": name},
        environment_variables={"PLAIN": "visible"},
        launch_parameters={"launch_commands": ["printenv DB_PASS | sha256sum > sum"]},
    )
    try:
        out = sdk.devboxes.execute_and_await_completion(view.id, command="printenv DB_PASS; printenv PLAIN")
        assert out.exit_status == 0 and out.stdout == f"{value}\nvisible\n"
        # The launch command saw it too (it wrote a digest, not the value, to keep it out of the logs).
        digest = sdk.devboxes.execute_and_await_completion(view.id, command="printenv DB_PASS | sha256sum")
        assert sdk.devboxes.read_file_contents(view.id, file_path="sum") == digest.stdout

        # A running command's environment holds the value, its command line does not (`ps` on the host).
        running = sdk.devboxes.execute_async(view.id, command="sleep 600")
        cmdlines = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
        assert not [c for c in cmdlines if value.encode() in c]
        sdk.devboxes.executions.kill(running.execution_id, devbox_id=view.id)

        # No answer about the devbox holds it.
        answers = [
            http.get(f"/v1/devboxes/{view.id}").text,
            http.get("/v1/devboxes", params={"limit": 100}).text,
            http.get(f"/v1/devboxes/{view.id}/logs").text,
            http.get(f"/v1/devboxes/{view.id}/usage").text,
        ]
        assert not [a for a in answers if value in a]
        # Nor its records on disk, nor the backend's log.
        state = backend.config.data_dir / "devboxes" / view.id
        for record in ("devbox.json", "logs.jsonl"):
            assert value not in (state / record).read_text()
        assert name in (state / "devbox.json").read_text()  # the name is kept, to look the value up
        # The backend's log, that is: the SDK logs its own request bodies at DEBUG.
        clients = ("runloop_api_client", "httpx", "httpcore")
        backend_lines = [caplog.handler.format(r) for r in caplog.records if not r.name.startswith(clients)]
        assert not [line for line in backend_lines if value in line]
    finally:
        sdk.devboxes.shutdown(view.id)
        sdk.secrets.delete(name)


def test_an_update_reaches_the_next_command_and_a_delete_unsets_the_variable(sdk) -> None:  # noqa: ANN001
    name, first, second = unique("ROTATED"), secret_value(), secret_value()
    sdk.secrets.create(name=name, value=first)
    view = sdk.devboxes.create_and_await_running(secrets={"TOKEN": name})
    try:
        command = "printenv TOKEN || echo unset"
        assert sdk.devboxes.execute_and_await_completion(view.id, command=command).stdout == f"{first}\n"
        sdk.secrets.update(name, value=second)
        assert sdk.devboxes.execute_and_await_completion(view.id, command=command).stdout == f"{second}\n"
        sdk.secrets.delete(name)
        assert sdk.devboxes.execute_and_await_completion(view.id, command=command).stdout == "unset\n"
    finally:
        sdk.devboxes.shutdown(view.id)


def test_an_unknown_secret_or_a_doubled_variable_is_a_400_naming_it(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    before = http.get("/v1/devboxes", params={"limit": 1}).json()["total_count"]
    missing = unique("NO_SUCH_SECRET")
    with pytest.raises(BadRequestError) as info:
        sdk.devboxes.create(secrets={"API_KEY": missing})
    assert missing in str(info.value) and "API_KEY" in str(info.value)
    name = unique("EXISTS")
    sdk.secrets.create(name=name, value="v")
    try:
        with pytest.raises(BadRequestError, match="both environment_variables and secrets"):
            sdk.devboxes.create(secrets={"API_KEY": name}, environment_variables={"API_KEY": "plain"})
        r = http.post("/v1/devboxes", json={"secrets": {"BAD-NAME": name}})
        assert r.status_code == 400 and "BAD-NAME" in r.json()["message"]
    finally:
        sdk.secrets.delete(name)
    assert http.get("/v1/devboxes", params={"limit": 1}).json()["total_count"] == before


def test_secrets_survive_a_restart_and_an_unreadable_store_is_kept_aside(tmp_path: Path) -> None:
    from runloop_api_client import Runloop

    value = secret_value()
    running = start_in_thread(tmp_path)
    try:
        with Runloop(bearer_token=running.api_key, base_url=running.base_url) as client:
            created = client.secrets.create(name="KEPT", value=value)
    finally:
        running.stop()
    running = start_in_thread(tmp_path)
    try:
        with Runloop(bearer_token=running.api_key, base_url=running.base_url) as client:
            assert client.secrets.retrieve("KEPT").id == created.id
    finally:
        running.stop()

    store = tmp_path / "secrets" / "secrets.json"
    store.write_text('[{"name": "TORN", "va')
    running = start_in_thread(tmp_path)
    try:
        with Runloop(bearer_token=running.api_key, base_url=running.base_url) as client:
            assert client.secrets.list().secrets == []
            client.secrets.create(name="AFTER", value="v")
    finally:
        running.stop()
    aside = [p for p in store.parent.iterdir() if p.name.startswith("secrets.json.unreadable-")]
    assert len(aside) == 1 and aside[0].read_text() == '[{"name": "TORN", "va'

