"""Code mounts at devbox create, driven by the official SDK, cloning from a git server on loopback
(`support.git_server`): the clone lands in the home at the ref, the install command runs as part of
provisioning, a failure says why, and the token never reaches the devbox, its logs or its views."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from runloop_api_client import RunloopError
from support.git_server import GitServer

from mcp_server.local.code_mounts import BASE_URL_ENV
from mcp_server.local.server import RunningBackend

TOKEN = "ghp_codemounttoken0123456789"


@pytest.fixture(scope="module")
def git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with GitServer(tmp_path_factory.mktemp("git")) as server:
        server.repo("acme", "tool", {"README.md": "main branch\n", "setup.sh": "echo installed > .installed\n"},
                    branches={"v2": {"README.md": "v2 branch\n"}})  # fmt: skip
        server.repo("acme", "private", {"SECRET.md": "private\n"}, token=TOKEN)
        yield server


@pytest.fixture(autouse=True)
def base_url(git: GitServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BASE_URL_ENV, git.url)


def _boot(sdk, **body):  # noqa: ANN001, ANN003, ANN202
    """Create a devbox and follow it until it runs or fails."""
    view = sdk.devboxes.create(launch_parameters={"network_mode": "none"}, **body)
    with contextlib.suppress(RunloopError):  # raised when it fails to start
        sdk.devboxes.await_running(view.id)
    return sdk.devboxes.retrieve(view.id)


def test_a_code_mount_is_cloned_at_its_ref_and_installed_before_running(sdk) -> None:  # noqa: ANN001
    mount = {"repo_owner": "acme", "repo_name": "tool", "install_command": "sh setup.sh && echo install-ran"}
    view = _boot(sdk, code_mounts=[mount])
    try:
        assert view.status == "running"
        assert sdk.devboxes.read_file_contents(view.id, file_path="/home/user/tool/README.md") == "main branch\n"
        assert sdk.devboxes.read_file_contents(view.id, file_path="tool/.installed") == "installed\n"
        owner = sdk.devboxes.execute_sync(view.id, command="stat -c %U tool/README.md && git -C tool status --short")
        assert owner.stdout == "user\n?? .installed\n", owner  # the user's, a checkout plus what the install made
        logs = sdk.devboxes.logs.list(view.id).logs
        assert any("cloned" in (e.message or "") and "acme/tool.git" in e.message for e in logs)
        install = [e for e in logs if e.cmd and "setup.sh" in e.cmd]
        assert install and install[0].exit_code == 0 and "install-ran" in install[0].message
    finally:
        sdk.devboxes.shutdown(view.id)


def test_git_ref_checks_out_that_branch(sdk) -> None:  # noqa: ANN001
    view = _boot(sdk, code_mounts=[{"repo_owner": "acme", "repo_name": "tool", "git_ref": "v2"}])
    try:
        assert sdk.devboxes.read_file_contents(view.id, file_path="tool/README.md") == "v2 branch\n"
    finally:
        sdk.devboxes.shutdown(view.id)


def test_a_failing_install_command_fails_the_devbox_with_the_reason_logged(sdk) -> None:  # noqa: ANN001
    view = _boot(sdk, code_mounts=[{"repo_owner": "acme", "repo_name": "tool", "install_command": "echo broke; exit 3"}])
    assert view.status == "failure" and view.failure_reason == "execution_failed"
    entry = next(e for e in sdk.devboxes.logs.list(view.id).logs if e.cmd and "exit 3" in e.cmd)
    assert entry.exit_code == 3 and "broke" in entry.message


def test_a_repository_that_cannot_be_cloned_fails_the_devbox_saying_why(sdk) -> None:  # noqa: ANN001
    view = _boot(sdk, code_mounts=[{"repo_owner": "acme", "repo_name": "missing"}])
    assert view.status == "failure" and view.failure_reason == "execution_failed"
    messages = [e.message or "" for e in sdk.devboxes.logs.list(view.id).logs]
    assert any("code mount acme/missing" in m and "git clone" in m for m in messages), messages


def test_the_token_is_used_for_the_clone_and_kept_nowhere(
    sdk, git: GitServer, backend: RunningBackend, http: httpx.Client  # noqa: ANN001
) -> None:
    denied = _boot(sdk, code_mounts=[{"repo_owner": "acme", "repo_name": "private"}])
    assert denied.status == "failure"
    assert any("401" in (e.message or "") or "Authentication" in (e.message or "") or "could not read" in (e.message or "")
               for e in sdk.devboxes.logs.list(denied.id).logs)  # fmt: skip
    git.requests.clear()
    view = _boot(sdk, code_mounts=[{"repo_owner": "acme", "repo_name": "private", "token": TOKEN}])
    try:
        assert view.status == "running"
        assert any(r["authorized"] for r in git.requests if r["path"].startswith("/acme/private.git"))
        assert sdk.devboxes.read_file_contents(view.id, file_path="private/SECRET.md") == "private\n"
        # Not in the devbox (its clone's config, its environment, its files), its logs, its view or its record.
        assert TOKEN not in json.dumps(http.get(f"/v1/devboxes/{view.id}").json())
        assert TOKEN not in http.get(f"/v1/devboxes/{view.id}/logs").text
        split = f'"{TOKEN[:8]}""{TOKEN[8:]}"'  # the command itself must not hold the token
        found = sdk.devboxes.execute_sync(view.id, command=f"grep -rl {split} ~ /etc /tmp 2>/dev/null; env | grep -c {split}")
        assert found.stdout.strip() == "0", found
        state_dir = Path(backend.config.data_dir) / "devboxes" / view.id
        for path in state_dir.glob("*.json*"):
            assert TOKEN not in path.read_text(errors="replace"), path
    finally:
        sdk.devboxes.shutdown(view.id)


@pytest.mark.parametrize(
    ("mount", "named"),
    [
        ({"repo_owner": "acme"}, "code_mounts[0].repo_name"),
        ({"repo_owner": "../etc", "repo_name": "x"}, "code_mounts[0].repo_owner"),
        ({"repo_owner": "acme", "repo_name": "tool", "git_ref": "--upload-pack=sh"}, "code_mounts[0].git_ref"),
    ],
)
def test_bad_code_mounts_are_refused_naming_the_field(http: httpx.Client, mount: dict, named: str) -> None:
    response = http.post("/v1/devboxes", json={"code_mounts": [mount]})
    assert response.status_code == 400 and named in response.json()["message"], response.text


def test_a_blueprints_code_mounts_are_in_its_devboxes_and_its_token_is_kept_nowhere(
    sdk, backend: RunningBackend, http: httpx.Client  # noqa: ANN001
) -> None:
    mount = {"repo_owner": "acme", "repo_name": "private", "token": TOKEN, "install_command": "echo ok > .installed"}
    blueprint = sdk.blueprints.create_and_await_build_complete(name="with-code", code_mounts=[mount])
    assert blueprint.parameters.code_mounts[0].token is None
    assert TOKEN not in http.get(f"/v1/blueprints/{blueprint.id}").text
    assert TOKEN not in http.get(f"/v1/blueprints/{blueprint.id}/logs").text
    for path in (Path(backend.config.data_dir) / "blueprints" / blueprint.id).iterdir():
        assert TOKEN not in path.read_text(errors="replace"), path
    box = sdk.devboxes.create_and_await_running(blueprint_id=blueprint.id)
    try:
        got = sdk.devboxes.execute_sync(box.id, command="cat private/SECRET.md private/.installed")
        assert got.stdout == "private\nok\n", got
    finally:
        sdk.devboxes.shutdown(box.id)
