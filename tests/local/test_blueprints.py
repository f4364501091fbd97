"""Blueprints over the real HTTP API, driven by the official SDK: builds run their steps in a build
devbox and log each line with its time; what this machine cannot build fails naming the line and
why; list, get, logs, preview, metadata and delete follow the published API."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mcp_server.local import dockerfile
from mcp_server.local.server import start_in_thread

FINAL = ("build_complete", "failed")


def built(sdk, blueprint_id: str):  # noqa: ANN001, ANN202
    """Follow a build to its end (the SDK's own poller raises on failure; here a failure is a result)."""
    view = sdk.blueprints.retrieve(blueprint_id)
    while view.status not in FINAL:
        view = sdk.blueprints.retrieve(blueprint_id)
    return view


def messages(sdk, blueprint_id: str) -> list[str]:  # noqa: ANN001
    return [line.message for line in sdk.blueprints.logs(blueprint_id).logs]


def test_each_run_step_runs_in_the_build_devbox_and_its_output_is_logged_with_times(sdk) -> None:  # noqa: ANN001
    text = (
        "FROM devbox-mcp\n"
        "ARG GREETING=hello\n"
        "ENV TARGET=${GREETING}-world\n"
        "WORKDIR /opt/app\n"
        "RUN echo \"$TARGET from $(pwd) as $(id -un)\" && \\\n    echo second line >&2\n"
        "USER user\n"
        "RUN echo now $(id -un)\n"
        "COPY notes.txt /opt/notes.txt\n"
    )
    view = sdk.blueprints.create(
        name="steps", dockerfile=text, build_args={"GREETING": "hi"}, file_mounts={"notes.txt": "n\n"},
        system_setup_commands=["cat /opt/notes.txt; stat -c %U /opt/notes.txt"],
        launch_parameters={"network_mode": "none"},
    )  # fmt: skip
    assert view.status in ("queued", "provisioning") and view.name == "steps"
    assert built(sdk, view.id).status == "build_complete"
    logs = sdk.blueprints.logs(view.id)
    assert logs.blueprint_id == view.id
    lines = [entry.message for entry in logs.logs]
    for expected in ("step 2/6: line 5: RUN echo", "hi-world from /opt/app as root", "second line", "now user",
                     "step 6/6: RUN cat /opt/notes.txt", "n", "user"):  # fmt: skip
        assert expected in lines or any(line.startswith(expected) for line in lines), (expected, lines)
    assert lines.index("hi-world from /opt/app as root") < lines.index("now user")
    times = [entry.timestamp_ms for entry in logs.logs]
    assert times == sorted(times) and all(entry.level in ("info", "error") for entry in logs.logs)
    # The build devbox is not one of the caller's devboxes.
    assert all(not (d.name or "").startswith("build of blueprint") for d in sdk.devboxes.list().devboxes)


def test_devboxes_start_from_a_build_by_id_or_by_the_latest_build_of_its_name(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    old = sdk.blueprints.create_and_await_build_complete(
        name="tools", dockerfile="FROM devbox-mcp\nRUN echo old > /etc/tool-version"
    )
    new = sdk.blueprints.create_and_await_build_complete(
        name="tools",
        dockerfile="FROM devbox-mcp\nENV TOOL_HOME=/opt/tool\nRUN mkdir -p /opt/tool && echo new > /etc/tool-version",
        system_setup_commands=["echo from setup > /home/user/setup.txt && chown user /home/user/setup.txt"],
        launch_parameters={"network_mode": "none", "launch_commands": ["echo launched > launched.txt"]},
        metadata={"kind": "tools"},
    )
    assert new.status == "build_complete" and new.build_finish_time_ms >= new.create_time_ms
    assert new.parameters.metadata == {"kind": "tools"}
    by_name = sdk.devboxes.create_and_await_running(blueprint_name="tools")
    by_id = sdk.devboxes.create_and_await_running(blueprint_id=old.id, environment_variables={"TOOL_HOME": "mine"})
    try:
        assert by_name.blueprint_id == new.id and by_id.blueprint_id == old.id
        got = sdk.devboxes.execute_sync(by_name.id, command="cat /etc/tool-version setup.txt launched.txt; echo $TOOL_HOME")
        assert got.stdout == "new\nfrom setup\nlaunched\n/opt/tool\n", got
        assert by_name.launch_parameters.network_mode == "none"  # the blueprint's launch parameters are defaults
        got = sdk.devboxes.execute_sync(by_id.id, command="cat /etc/tool-version; echo $TOOL_HOME; touch /etc/mine")
        assert got.stdout == "old\nmine\n", got
        # Copy-on-write: what one devbox writes, the blueprint and its other devboxes do not see.
        again = sdk.devboxes.create_and_await_running(blueprint_id=old.id)
        assert sdk.devboxes.execute_sync(again.id, command="test -e /etc/mine; echo $?").stdout == "1\n"
        sdk.devboxes.shutdown(again.id)
        refused = http.post(f"/v1/blueprints/{new.id}/delete")
        assert refused.status_code == 409 and f"devbox {by_name.id}" in refused.json()["message"]
    finally:
        sdk.devboxes.shutdown(by_name.id)
        sdk.devboxes.shutdown(by_id.id)
    sdk.blueprints.delete(new.id)
    # The latest successful build of the name is now the older one.
    fallback = sdk.devboxes.create(blueprint_name="tools")
    assert fallback.blueprint_id == old.id
    sdk.devboxes.shutdown(fallback.id)


def test_a_blueprint_on_a_blueprint_is_a_layer_on_a_layer(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    base = sdk.blueprints.create_and_await_build_complete(
        name="layer-base", dockerfile="FROM devbox-mcp\nRUN echo base > /etc/layer-base"
    )
    by_field = sdk.blueprints.create_and_await_build_complete(
        name="layer-top", base_blueprint_name="layer-base", system_setup_commands=["echo top > /etc/layer-top"],
        file_mounts={"top.txt": "top file"},
    )  # fmt: skip
    by_from = sdk.blueprints.create_and_await_build_complete(
        name="layer-from", dockerfile=f"FROM {base.id}\nRUN cat /etc/layer-base > /etc/layer-from"
    )
    assert by_field.base_blueprint_id == base.id and by_from.base_blueprint_id == base.id
    box = sdk.devboxes.create_and_await_running(blueprint_id=by_field.id)
    try:
        got = sdk.devboxes.execute_sync(box.id, command="cat /etc/layer-base /etc/layer-top top.txt")
        assert got.stdout == "base\ntop\ntop file", got
    finally:
        sdk.devboxes.shutdown(box.id)
    refused = http.post(f"/v1/blueprints/{base.id}/delete")
    assert refused.status_code == 409
    assert f"blueprint {by_field.id}" in refused.json()["message"] and f"blueprint {by_from.id}" in refused.json()["message"]


def test_a_blueprints_user_is_its_devboxes_user(sdk) -> None:  # noqa: ANN001
    blueprint = sdk.blueprints.create_and_await_build_complete(
        name="as-root", launch_parameters={"user_parameters": {"username": "root", "uid": 0}},
        file_mounts={"f.txt": "x"}, dockerfile="FROM devbox-mcp\nCOPY f.txt /etc/f.txt",
    )  # fmt: skip
    box = sdk.devboxes.create_and_await_running(blueprint_id=blueprint.id)
    try:
        assert sdk.devboxes.execute_sync(box.id, command="id -un; cat /etc/f.txt ~/f.txt").stdout == "root\nxx"
    finally:
        sdk.devboxes.shutdown(box.id)


def test_a_snapshot_of_a_devbox_from_a_blueprint_keeps_the_blueprint(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    blueprint = sdk.blueprints.create_and_await_build_complete(name="snapped", dockerfile="FROM devbox-mcp\nRUN true")
    box = sdk.devboxes.create_and_await_running(blueprint_id=blueprint.id)
    snapshot = sdk.devboxes.snapshot_disk(box.id)
    sdk.devboxes.shutdown(box.id)
    refused = http.post(f"/v1/blueprints/{blueprint.id}/delete")
    assert refused.status_code == 409 and f"snapshot {snapshot.id}" in refused.json()["message"]
    sdk.devboxes.disk_snapshots.delete(snapshot.id)
    sdk.blueprints.delete(blueprint.id)


def test_a_failing_run_fails_the_build_naming_the_step_and_its_status(sdk) -> None:  # noqa: ANN001
    view = sdk.blueprints.create(
        name="fails", dockerfile="FROM devbox-mcp\nRUN echo about to fail && exit 7\nRUN echo never",
        launch_parameters={"network_mode": "none"},
    )
    done = built(sdk, view.id)
    assert done.status == "failed" and done.failure_reason == "build_failed"
    assert done.build_finish_time_ms is not None
    lines = messages(sdk, view.id)
    assert "about to fail" in lines
    assert lines[-1] == "line 2: RUN echo about to fail && exit 7: exited with status 7"
    assert "never" not in lines


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("FROM python:3.12\nRUN true", "line 1: FROM python:3.12: this machine cannot fetch container images"),
        ("FROM devbox-mcp\nEXPOSE 80", "line 2: EXPOSE: devboxes do not publish ports"),
        ("FROM devbox-mcp\nCOPY app.py /app.py", "line 2: COPY: app.py: the build context here is the blueprint's file_mounts"),
        ("FROM devbox-mcp\nRUN --mount=type=cache,target=/x true", "line 2: RUN: RUN --mount=type=cache,target=/x: flags"),
        ("FROM devbox-mcp AS build\nRUN true", "line 1: FROM: FROM takes one image"),
        ("RUN true", "line 1: RUN: only ARG may come before FROM"),
        ("FROM devbox-mcp\nFROM devbox-mcp", "line 2: FROM: a second FROM"),
    ],
)
def test_what_this_machine_cannot_build_fails_with_a_line_saying_which_instruction_and_why(
    sdk, text: str, fragment: str  # noqa: ANN001
) -> None:
    view = sdk.blueprints.create(name="unbuildable", dockerfile=text)
    done = built(sdk, view.id)
    assert done.status == "failed" and done.failure_reason == "build_failed"
    assert any(fragment in line for line in messages(sdk, view.id)), messages(sdk, view.id)


def test_build_args_must_name_a_declared_arg(sdk) -> None:  # noqa: ANN001
    view = sdk.blueprints.create(name="args", dockerfile="FROM devbox-mcp\nRUN true", build_args={"NOPE": "1"})
    assert built(sdk, view.id).status == "failed"
    assert any("build_args NOPE: the dockerfile declares no such ARG" in m for m in messages(sdk, view.id))


def test_preview_is_the_dockerfile_the_parameters_amount_to(sdk) -> None:  # noqa: ANN001
    text = sdk.blueprints.preview(
        name="p", dockerfile="FROM devbox-mcp\nRUN make", system_setup_commands=["echo a", "echo b"],
        file_mounts={"a.txt": "x"},
    ).dockerfile  # fmt: skip
    assert text == "# file mount: a.txt\nFROM devbox-mcp\nRUN make\nRUN echo a\nRUN echo b\n"
    assert sdk.blueprints.preview(name="p", system_setup_commands=["ls"]).dockerfile == "FROM devbox-mcp\nRUN ls\n"


def test_list_filters_by_name_and_status_and_metadata_keys_and_values_are_listed(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    first = sdk.blueprints.create(name="listed-one", dockerfile="FROM nowhere", metadata={"team": "blue"})
    second = sdk.blueprints.create(name="listed-two", dockerfile="FROM nowhere", metadata={"team": "red", "tier": "x"})
    built(sdk, first.id), built(sdk, second.id)
    page = sdk.blueprints.list(name="listed-one")
    assert [b.id for b in page.blueprints] == [first.id]
    failed = {b.id for b in sdk.blueprints.list(status="failed", limit=100).blueprints}
    assert {first.id, second.id} <= failed
    assert {"team", "tier"} <= set(http.get("/v1/blueprints/metadata/keys").json()["keys"])
    values = http.get("/v1/blueprints/metadata/keys/team/values").json()
    assert values["key"] == "team" and {"blue", "red"} <= set(values["values"])
    assert http.get("/v1/blueprints", params={"status": "done"}).status_code == 400


def test_there_are_no_public_blueprints(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    page = sdk.blueprints.list_public()
    assert page.blueprints == [] and page.has_more is False
    assert http.get("/v1/blueprints/public/metadata/keys").json() == {"keys": []}
    assert http.get("/v1/blueprints/public/metadata/keys/team/values").json() == {"key": "team", "values": []}


def test_delete_removes_the_blueprint(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    view = sdk.blueprints.create(name="to-delete", dockerfile="FROM nowhere")
    built(sdk, view.id)
    assert sdk.blueprints.delete(view.id) is not None
    missing = http.get(f"/v1/blueprints/{view.id}")
    assert missing.status_code == 404 and view.id in missing.json()["message"]
    assert http.post(f"/v1/blueprints/{view.id}/delete").status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "name is required"),
        ({"name": "x", "services": [{"name": "db", "image": "postgres"}]}, "services"),
        ({"name": "x", "build_context": {"type": "object", "object_id": "obj_1"}}, "build_context"),
        ({"name": "x", "network_policy_id": "np_1"}, "network_policy_id"),
        ({"name": "x", "base_blueprint_id": "bpt_missing"}, "base_blueprint_id: no blueprint 'bpt_missing'"),
        ({"name": "x", "base_blueprint_name": "never-built"}, "base_blueprint_name: no blueprint named 'never-built'"),
        ({"name": "x", "code_mounts": [{"repo_owner": "a"}]}, "code_mounts[0].repo_name"),
        ({"name": "x", "file_mounts": {"/etc/x": "y"}}, "/home/user"),
        ({"name": "x", "secrets": {"T": "no_such_secret"}}, "no secret is named 'no_such_secret'"),
        ({"name": "x", "launch_parameters": {"resource_size_request": "HUGE"}}, "resource_size_request"),
        ({"name": "x", "launch_parameters": {"required_services": ["db"]}}, "required_services"),
        ({"name": "x", "dockerfile": 12}, "dockerfile"),
        ({"name": "x", "colour": "red"}, "unknown field colour"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name_and_nothing_is_built(
    http: httpx.Client, body: dict, fragment: str
) -> None:
    before = http.get("/v1/blueprints", params={"limit": 1}).json()["total_count"]
    response = http.post("/v1/blueprints", json=body)
    assert response.status_code == 400 and fragment in response.json()["message"], response.text
    assert http.get("/v1/blueprints", params={"limit": 1}).json()["total_count"] == before


def test_builds_survive_a_restart_and_one_cut_short_is_failed_at_the_next_start(tmp_path: Path) -> None:
    backend = start_in_thread(tmp_path)
    try:
        from runloop_api_client import Runloop

        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        sdk.blueprints.create_and_await_build_complete(name="kept", dockerfile="FROM devbox-mcp\nRUN echo kept > /etc/kept")
        view = sdk.blueprints.create(name="interrupted", dockerfile="FROM devbox-mcp\nRUN echo started; sleep 600")
        while "started" not in messages(sdk, view.id):
            sdk.blueprints.retrieve(view.id)
    finally:
        backend.stop()
    again = start_in_thread(tmp_path, api_key=backend.api_key)
    try:
        sdk = Runloop(bearer_token=again.api_key, base_url=again.base_url, max_retries=0)
        # A build that completed survives the restart, and devboxes still start from it.
        kept = sdk.devboxes.create_and_await_running(blueprint_name="kept")
        assert sdk.devboxes.execute_sync(kept.id, command="cat /etc/kept").stdout == "kept\n"
        sdk.devboxes.shutdown(kept.id)
        done = sdk.blueprints.retrieve(view.id)
        assert done.status == "failed" and done.failure_reason == "build_failed"
        lines = messages(sdk, view.id)
        assert "started" in lines and lines[-1].startswith("the backend stopped while this blueprint was building")
        assert [b.id for b in sdk.blueprints.list(name="interrupted").blueprints] == [view.id]
    finally:
        again.stop()


def test_the_dockerfile_parser_joins_continuations_and_substitutes_like_docker() -> None:
    plan = dockerfile.parse(
        "# comment\nARG V=1\nFROM devbox-mcp\nARG V\nENV A=$V B=\"${V:-x} y\" C=${MISSING:-dflt}\n"
        "RUN echo one \\\n  # a comment in the middle\n  two\nRUN [\"echo\", \"exec form\"]\nENV OLD legacy value\n",
    )  # fmt: skip
    assert plan.base is None
    assert plan.env == {"A": "1", "B": "1 y", "C": "dflt", "OLD": "legacy value"}
    runs = [step for step in plan.steps if step.kind == "run"]
    assert [step.command for step in runs] == ["echo one two", "echo 'exec form'"]
    assert dict(runs[0].env)["V"] == "1"
    assert dockerfile.parse("FROM my-base\n").base == "my-base"
