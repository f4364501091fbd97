"""Devbox lifecycle over the real HTTP API, driven by the official Runloop SDK (and raw httpx for bad input)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from runloop_api_client import BadRequestError, NotFoundError

from mcp_server.local.server import RunningBackend, start_in_thread


@pytest.fixture(scope="module")
def devbox(sdk):  # noqa: ANN001, ANN201 - one running devbox shared by the read-only tests of this module
    view = sdk.devboxes.create_and_await_running(
        name="shared", environment_variables={"GREETING": "hi"}, metadata={"team": "a"}
    )
    yield view
    sdk.devboxes.shutdown(view.id)


def data_dir_of(backend: RunningBackend) -> Path:
    return backend.config.data_dir


def test_create_and_await_running_returns_a_running_view(devbox) -> None:  # noqa: ANN001
    assert devbox.id.startswith("dbx_")
    assert devbox.status == "running"
    assert devbox.name == "shared"
    assert devbox.metadata == {"team": "a"}
    assert [t.status for t in devbox.state_transitions] == ["provisioning", "initializing", "running"]
    params = devbox.launch_parameters.model_dump()
    assert params["network_mode"] == "isolated"
    assert params["sandbox"] == "bubblewrap"


def test_create_returns_at_once_and_await_running_gets_there(sdk) -> None:  # noqa: ANN001
    created = sdk.devboxes.create(name="async-create")
    assert created.status in ("provisioning", "initializing", "running")
    running = sdk.devboxes.await_running(created.id)
    assert running.status == "running"
    sdk.devboxes.shutdown(created.id)


def test_launch_commands_run_in_order_and_are_logged(sdk, backend: RunningBackend) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(
        launch_parameters={
            "launch_commands": ["echo one > order.txt", "echo two >> order.txt; echo $GREETING"]
        },
        environment_variables={"GREETING": "hello"},
    )
    try:
        assert sdk.devboxes.read_file_contents(view.id, file_path="order.txt") == "one\ntwo\n"
        logs = [entry for entry in sdk.devboxes.logs.list(view.id).logs if entry.source == "setup_commands"]
        assert [entry.cmd for entry in logs] == [
            "echo one > order.txt",
            "echo two >> order.txt; echo $GREETING",
        ]
        assert [entry.exit_code for entry in logs] == [0, 0]
        assert logs[1].message == "hello\n"
    finally:
        sdk.devboxes.shutdown(view.id)


def test_failing_launch_command_marks_failure(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    created = sdk.devboxes.create(
        launch_parameters={"launch_commands": ["echo ok", "echo broken >&2; exit 3", "echo never"]}
    )
    view = http.post(
        f"/v1/devboxes/{created.id}/wait_for_status",
        json={"statuses": ["running", "failure"], "timeout_seconds": 20},
    ).json()
    assert view["status"] == "failure"
    assert view["failure_reason"] == "execution_failed"
    assert view["state_transitions"][-1]["failure_reason"] == "execution_failed"
    logs = sdk.devboxes.logs.list(created.id).logs
    assert [(e.cmd, e.exit_code) for e in logs if e.source == "setup_commands"] == [
        ("echo ok", 0),
        ("echo broken >&2; exit 3", 3),
    ]
    assert "broken" in logs[-1].message
    with pytest.raises(BadRequestError, match="failed"):
        sdk.devboxes.read_file_contents(created.id, file_path="x")


def test_file_mounts_are_placed_before_launch_commands(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(
        file_mounts={"conf/app.ini": "[app]\n", "/home/user/notes.txt": "note"},
        launch_parameters={"launch_commands": ["cat conf/app.ini notes.txt > combined.txt"]},
    )
    try:
        assert sdk.devboxes.read_file_contents(view.id, file_path="combined.txt") == "[app]\nnote"
    finally:
        sdk.devboxes.shutdown(view.id)


def test_get_and_update(sdk, devbox) -> None:  # noqa: ANN001
    assert sdk.devboxes.retrieve(devbox.id).id == devbox.id
    updated = sdk.devboxes.update(devbox.id, name="renamed", metadata={"team": "b", "x": "1"})
    assert updated.name == "renamed" and updated.metadata == {"team": "b", "x": "1"}
    again = sdk.devboxes.retrieve(devbox.id)
    assert again.name == "renamed" and again.metadata == {"team": "b", "x": "1"}
    sdk.devboxes.update(devbox.id, name="shared")
    assert sdk.devboxes.retrieve(devbox.id).metadata == {"team": "b", "x": "1"}  # patch-like


def test_unknown_devbox_is_404_with_a_clear_message(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    with pytest.raises(NotFoundError, match="dbx_nope"):
        sdk.devboxes.retrieve("dbx_nope")
    for method, path in [
        ("POST", "/v1/devboxes/dbx_nope/suspend"),
        ("POST", "/v1/devboxes/dbx_nope/resume"),
        ("POST", "/v1/devboxes/dbx_nope/shutdown"),
        ("POST", "/v1/devboxes/dbx_nope/keep_alive"),
        ("GET", "/v1/devboxes/dbx_nope/logs"),
        ("POST", "/v1/devboxes/dbx_nope"),
        ("POST", "/v1/devboxes/dbx_nope/wait_for_status"),
    ]:
        r = http.request(method, path, json={"statuses": ["running"]})
        assert r.status_code == 404, (path, r.text)
        assert "dbx_nope" in r.json()["message"] and "not found" in r.json()["message"]


def test_list_paginates_and_filters(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    ids = [sdk.devboxes.create(name=f"page-{i}").id for i in range(3)]
    try:
        first = http.get("/v1/devboxes", params={"limit": 1}).json()
        assert len(first["devboxes"]) == 1 and first["has_more"] is True
        assert first["devboxes"][0]["id"] == ids[-1]  # newest first
        total = first["total_count"]
        seen = [d.id for d in sdk.devboxes.list(limit=2)]  # the SDK follows starting_after / has_more
        assert len(seen) == total == len(set(seen))
        assert seen[:3] == ids[::-1]
        for i in ids:
            sdk.devboxes.await_running(i)
        sdk.devboxes.shutdown(ids[0])
        shut = [d.id for d in sdk.devboxes.list(status="shutdown")]
        assert ids[0] in shut and ids[1] not in shut
        running = [d.id for d in sdk.devboxes.list(status="running")]
        assert ids[1] in running and ids[0] not in running
        assert http.get("/v1/devboxes", params={"status": "sleeping"}).status_code == 400
        assert http.get("/v1/devboxes", params={"starting_after": "dbx_unknown"}).status_code == 400
        for limit in ("lots", "inf", "1e999"):
            assert http.get("/v1/devboxes", params={"limit": limit}).status_code == 400
    finally:
        for i in ids:
            sdk.devboxes.shutdown(i)


def test_wait_for_status_times_out_with_408_on_float_timeout(http: httpx.Client, devbox) -> None:  # noqa: ANN001
    started = time.monotonic()
    r = http.post(
        f"/v1/devboxes/{devbox.id}/wait_for_status", json={"statuses": ["suspended"], "timeout_seconds": 0.25}
    )
    assert r.status_code == 408
    assert "still 'running'" in r.json()["message"]
    assert time.monotonic() - started >= 0.25
    ok = http.post(
        f"/v1/devboxes/{devbox.id}/wait_for_status", json={"statuses": ["running"], "timeout_seconds": 12.7}
    )
    assert ok.status_code == 200 and ok.json()["status"] == "running"


def test_wait_for_status_rejects_bad_input(http: httpx.Client, devbox) -> None:  # noqa: ANN001
    url = f"/v1/devboxes/{devbox.id}/wait_for_status"
    assert http.post(url, json={"statuses": ["sleeping"]}).status_code == 400
    assert http.post(url, json={"statuses": ["running"], "timeout_seconds": 31}).status_code == 400
    assert http.post(url, json={"statuses": []}).status_code == 400
    assert http.post(url, json={"statuses": "running"}).status_code == 400
    assert http.post(url, json={"statuses": ["running"], "timeout_seconds": "soon"}).status_code == 400


def test_wait_for_status_wakes_on_the_change(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running()
    result: dict[str, object] = {}

    def wait() -> None:
        r = http.post(
            f"/v1/devboxes/{view.id}/wait_for_status", json={"statuses": ["suspended"], "timeout_seconds": 30}
        )
        result["status"] = r.status_code
        result["body"] = r.json()

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        # The waiter is parked (a 30 s long-poll); the suspend must wake it, not its timeout,
        # so it is done well before those 30 s.
        sdk.devboxes.suspend(view.id)
        waiter.join(timeout=15)
        assert not waiter.is_alive()
        assert result["status"] == 200 and result["body"]["status"] == "suspended"  # type: ignore[index]
    finally:
        sdk.devboxes.shutdown(view.id)


def test_suspend_resume_keeps_the_home(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running()
    try:
        sdk.devboxes.write_file_contents(view.id, file_path="work/state.txt", contents="persist me")
        suspended = sdk.devboxes.suspend(view.id)
        assert suspended.status in ("suspending", "suspended")
        assert sdk.devboxes.await_suspended(view.id).status == "suspended"
        with pytest.raises(BadRequestError, match="is suspended; resume it first"):
            sdk.devboxes.read_file_contents(view.id, file_path="work/state.txt")
        with pytest.raises(BadRequestError, match="not running"):
            sdk.devboxes.suspend(view.id)
        sdk.devboxes.resume(view.id)
        resumed = sdk.devboxes.await_running(view.id)
        assert resumed.status == "running"
        assert sdk.devboxes.read_file_contents(view.id, file_path="work/state.txt") == "persist me"
        with pytest.raises(BadRequestError, match="not suspended"):
            sdk.devboxes.resume(view.id)
        statuses = [t.status for t in resumed.state_transitions]
        assert statuses[-4:] == ["suspending", "suspended", "resuming", "running"]
    finally:
        sdk.devboxes.shutdown(view.id)


def test_launch_commands_run_at_create_not_at_resume(sdk) -> None:  # noqa: ANN001
    """The spec: launch commands run "at launch time, before the entrypoint process is run". A resume
    boots the devbox's kept disk, where what they did still is (and `git clone` would fail a second
    time): they do not run again. Had they, they would have before the devbox was running again."""
    view = sdk.devboxes.create_and_await_running(
        launch_parameters={"launch_commands": ["echo launched >> launches.txt"]},
    )
    try:
        sdk.devboxes.suspend(view.id)
        sdk.devboxes.await_suspended(view.id)
        sdk.devboxes.resume(view.id)
        assert sdk.devboxes.await_running(view.id).status == "running"
        assert sdk.devboxes.execute_sync(view.id, command="cat launches.txt").stdout == "launched\n"
        ran = [e for e in sdk.devboxes.logs.list(view.id).logs if e.cmd == "echo launched >> launches.txt"]
        assert len(ran) == 1
    finally:
        sdk.devboxes.shutdown(view.id)


def test_shutdown_is_final(sdk, backend: RunningBackend) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running()
    sdk.devboxes.write_file_contents(view.id, file_path="gone.txt", contents="x")
    down = sdk.devboxes.shutdown(view.id)
    assert down.status == "shutdown" and down.shutdown_reason == "api_shutdown" and down.end_time_ms
    assert sdk.devboxes.shutdown(view.id).status == "shutdown"  # idempotent
    with pytest.raises(BadRequestError, match="is shutdown; create a new one"):
        sdk.devboxes.write_file_contents(view.id, file_path="x", contents="y")
    with pytest.raises(BadRequestError, match="not suspended"):
        sdk.devboxes.resume(view.id)
    state = data_dir_of(backend) / "devboxes" / view.id
    assert not (state / "home").exists() and not (state / "disk").exists() and not (state / "disk.img").exists()
    assert sdk.devboxes.retrieve(view.id).status == "shutdown"


def test_keep_alive_returns_empty_object(http: httpx.Client, devbox) -> None:  # noqa: ANN001
    r = http.post(f"/v1/devboxes/{devbox.id}/keep_alive")
    assert r.status_code == 200 and r.json() == {}


def test_logs_filter_by_execution_id(http: httpx.Client, devbox) -> None:  # noqa: ANN001
    assert http.get(f"/v1/devboxes/{devbox.id}/logs").status_code == 200
    r = http.get(f"/v1/devboxes/{devbox.id}/logs", params={"execution_id": "exe_unknown"})
    assert r.status_code == 200 and r.json() == {"logs": []}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"launch_parameters": {"x": NaN}}', 400, "NaN is not a JSON number"),
        (b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested too deeply"),
        (b'{"metadata": {"k": "v"}, "extra": -Infinity}', 400, "-Infinity is not a JSON number"),
        (json.dumps({"name": 123}).encode(), 400, "name"),
        (json.dumps({"environment_variables": {"A": 1}}).encode(), 400, "environment_variables"),
        (json.dumps({"environment_variables": {"BAD-NAME": "x"}}).encode(), 400, "BAD-NAME"),
        (json.dumps({"launch_parameters": {"launch_commands": "ls"}}).encode(), 400, "launch_commands"),
        (json.dumps({"launch_parameters": {"network_mode": "internet"}}).encode(), 400, "network_mode"),
        (json.dumps({"metadata": ["a"]}).encode(), 400, "metadata"),
        (json.dumps({"blueprint_id": "bpt_x"}).encode(), 400, "blueprint_id"),
        (json.dumps({"file_mounts": {"/etc/passwd": "x"}}).encode(), 400, "/home/user"),
        (json.dumps({"secrets": {"TOKEN": "my_secret"}}).encode(), 400, "no secret is named 'my_secret'"),
        (json.dumps({"code_mounts": [{"repo_name": "x"}]}).encode(), 400, "code_mounts[0].repo_owner"),
        (json.dumps({"entrypoint": ["ls"]}).encode(), 400, "entrypoint"),
        (json.dumps({"entrypoint": "serve\0"}).encode(), 400, "NUL"),
        (json.dumps({"environment_variables": {"A": "x\0y"}}).encode(), 400, "value of A"),
        (json.dumps({"launch_parameters": {"launch_commands": ["ls\0"]}}).encode(), 400, "NUL"),
        (json.dumps({"launch_parameters": {"user_parameters": {"uid": 0, "username": "alice"}}}).encode(), 400, "uid 0 is `root`"),
        (json.dumps({"launch_parameters": {"user_parameters": {"uid": 7, "username": "user"}}}).encode(), 400, "uid 1000 is `user`"),
        (json.dumps({"launch_parameters": {"user_parameters": {"username": "root"}}}).encode(), 400, "exactly `username` and `uid`"),
        (json.dumps({"launch_parameters": {"user_parameters": {"uid": -1, "username": "bob"}}}).encode(), 400, "0 to 65533"),
        (json.dumps({"launch_parameters": {"user_parameters": {"uid": 1001, "username": "Bob Smith"}}}).encode(), 400, "Linux user name"),
    ],
)
def test_create_rejects_bad_input(http: httpx.Client, body: bytes, status: int, fragment: str) -> None:
    before = http.get("/v1/devboxes", params={"limit": 1}).json()["total_count"]
    r = http.post("/v1/devboxes", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["message"]
    assert http.get("/v1/devboxes", params={"limit": 1}).json()["total_count"] == before


def test_update_rejects_wrong_types(http: httpx.Client, devbox) -> None:  # noqa: ANN001
    assert http.post(f"/v1/devboxes/{devbox.id}", json={"metadata": "x"}).status_code == 400
    assert (
        http.post(
            f"/v1/devboxes/{devbox.id}", content=b"{", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )


def test_create_is_idempotent_on_request_id(http: httpx.Client, sdk) -> None:  # noqa: ANN001
    headers = {"x-request-id": "stainless-python-retry-test-create-once"}
    body = {"name": "once", "launch_parameters": {"available_ports": [80]}}
    first = http.post("/v1/devboxes", json=body, headers=headers)
    second = http.post("/v1/devboxes", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert sum(1 for d in sdk.devboxes.list(limit=100) if d.name == "once") == 1
    sdk.devboxes.shutdown(first.json()["id"])


def test_registry_survives_a_restart(tmp_path: Path) -> None:
    first = start_in_thread(tmp_path)
    headers = {"Authorization": f"Bearer {first.api_key}"}
    with httpx.Client(base_url=first.base_url, headers=headers, timeout=30) as c:
        created = c.post("/v1/devboxes/create_and_await_running", json={"name": "survivor"}).json()
        assert created["status"] == "running"
        c.post(
            f"/v1/devboxes/{created['id']}/write_file_contents",
            json={"file_path": "keep.txt", "contents": "kept"},
        )
        shut = c.post("/v1/devboxes", json={"name": "ended"}).json()
        c.post(f"/v1/devboxes/{shut['id']}/shutdown")
    # Simulate a crash for the first devbox: its record still says running when the backend goes away.
    record_path = tmp_path / "devboxes" / created["id"] / "devbox.json"
    crashed_record = record_path.read_text()
    assert json.loads(crashed_record)["status"] == "running"
    first.stop()
    record_path.write_text(crashed_record)
    # And one that was still setting up when the backend died: its setup never finished.
    booting = json.loads(crashed_record) | {"id": "dbx_wasbooting", "status": "initializing"}
    (tmp_path / "devboxes" / "dbx_wasbooting").mkdir()
    (tmp_path / "devboxes" / "dbx_wasbooting" / "devbox.json").write_text(json.dumps(booting))
    (tmp_path / "devboxes" / "garbage").mkdir()
    (tmp_path / "devboxes" / "garbage" / "devbox.json").write_text("{half a record")

    second = start_in_thread(tmp_path)
    headers = {"Authorization": f"Bearer {second.api_key}"}
    try:
        with httpx.Client(base_url=second.base_url, headers=headers, timeout=30) as c:
            view = c.get(f"/v1/devboxes/{created['id']}").json()
            assert view["status"] == "suspended" and view["name"] == "survivor"
            assert c.get(f"/v1/devboxes/{shut['id']}").json()["status"] == "shutdown"
            was_booting = c.get("/v1/devboxes/dbx_wasbooting").json()
            assert was_booting["status"] == "failure" and was_booting["failure_reason"] == "execution_failed"
            assert (
                c.get("/v1/devboxes/garbage").status_code == 404
            )  # an unreadable record is skipped, not fatal
            assert c.post(f"/v1/devboxes/{created['id']}/resume").status_code == 200
            running = c.post(
                f"/v1/devboxes/{created['id']}/wait_for_status",
                json={"statuses": ["running"], "timeout_seconds": 20},
            ).json()
            assert running["status"] == "running"
            r = c.post(f"/v1/devboxes/{created['id']}/read_file_contents", json={"file_path": "keep.txt"})
            assert r.text == "kept"
    finally:
        second.stop()
    # A graceful stop also leaves running devboxes suspended, ready to resume.
    third = start_in_thread(tmp_path)
    try:
        with httpx.Client(base_url=third.base_url, headers={"Authorization": f"Bearer {third.api_key}"}) as c:
            assert c.get(f"/v1/devboxes/{created['id']}").json()["status"] == "suspended"
    finally:
        third.stop()


def test_missing_bubblewrap_is_a_clear_error_unless_unsafe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_server.local import sandbox

    # Fault injection: this machine has bubblewrap, so pretend it does not.
    monkeypatch.setattr(
        sandbox,
        "tools",
        lambda: {"bwrap": None, "nsenter": "/usr/bin/nsenter", "slirp4netns": None, "bash": "/bin/bash"},
    )
    safe = start_in_thread(tmp_path / "safe")
    try:
        r = httpx.post(
            f"{safe.base_url}/v1/devboxes", json={}, headers={"Authorization": f"Bearer {safe.api_key}"}
        )
        assert r.status_code == 400
        assert (
            "apt-get install bubblewrap" in r.json()["message"]
            and "--unsafe-no-sandbox" in r.json()["message"]
        )
    finally:
        safe.stop()
    unsafe = start_in_thread(tmp_path / "unsafe", unsafe_no_sandbox=True)
    try:
        with httpx.Client(
            base_url=unsafe.base_url, headers={"Authorization": f"Bearer {unsafe.api_key}"}, timeout=30
        ) as c:
            view = c.post(
                "/v1/devboxes/create_and_await_running",
                json={"launch_parameters": {"launch_commands": ["echo $HOME > where.txt"]}},
            ).json()
            assert view["status"] == "running"
            assert view["launch_parameters"]["sandbox"].startswith("none (unsafe")
            home = tmp_path / "unsafe" / "devboxes" / view["id"] / "home"
            text = c.post(
                f"/v1/devboxes/{view['id']}/read_file_contents", json={"file_path": "where.txt"}
            ).text
            assert text.strip() == str(home)
            assert (
                c.get(f"/v1/devboxes/{view['id']}")
                .json()["launch_parameters"]["sandbox"]
                .startswith("none (unsafe")
            )
    finally:
        unsafe.stop()


# The placeholder demo this file tested is replaced by the MCP demo: see tests/commands/test_demo.py.


def test_background_process_in_launch_command_does_not_hold_up_boot(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(
        launch_parameters={"launch_commands": ["sleep 300 & echo started-in-background"]}
    )
    try:
        assert view.status == "running"
        logs = [e for e in sdk.devboxes.logs.list(view.id).logs if e.source == "setup_commands"]
        assert logs[0].message == "started-in-background\n" and logs[0].exit_code == 0
    finally:
        sdk.devboxes.shutdown(view.id)


def test_sandbox_dying_on_its_own_leaves_the_devbox_resumable(
    sdk, backend: RunningBackend, http: httpx.Client
) -> None:  # noqa: ANN001
    import os
    import signal

    view = sdk.devboxes.create_and_await_running()
    try:
        sdk.devboxes.write_file_contents(view.id, file_path="still-here.txt", contents="yes")
        manager = backend._server.config.app.state.devboxes
        # Fault injection: the sandbox is killed from outside (as an OOM kill would).
        os.kill(manager.get(view.id).sandbox.init_pid, signal.SIGKILL)
        r = http.post(
            f"/v1/devboxes/{view.id}/wait_for_status", json={"statuses": ["suspended"], "timeout_seconds": 20}
        )
        assert r.status_code == 200 and r.json()["status"] == "suspended"
        assert any("exited unexpectedly" in (e.message or "") for e in sdk.devboxes.logs.list(view.id).logs)
        sdk.devboxes.resume(view.id)
        assert sdk.devboxes.await_running(view.id).status == "running"
        assert sdk.devboxes.read_file_contents(view.id, file_path="still-here.txt") == "yes"
    finally:
        sdk.devboxes.shutdown(view.id)


def test_shutdown_while_booting_stops_cleanly(http: httpx.Client) -> None:
    # Regression: a shutdown that cancelled a sandbox mid-start hung forever.
    for _ in range(15):
        created = http.post("/v1/devboxes", json={}).json()
        down = http.post(f"/v1/devboxes/{created['id']}/shutdown", timeout=20)
        assert down.status_code == 200 and down.json()["status"] == "shutdown"
        assert http.get(f"/v1/devboxes/{created['id']}").json()["status"] == "shutdown"


def test_entrypoint_runs_in_the_background_and_its_exit_shuts_the_devbox_down(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(
        entrypoint="echo serving > entry.txt; read line < /tmp/go-fifo; echo done-$line; exit 4",
        launch_parameters={"launch_commands": ["mkfifo /tmp/go-fifo"]},
    )
    try:
        assert view.status == "running"  # not held up by the entrypoint, which waits on the fifo
        deadline = time.monotonic() + 20  # it runs beside the devbox, on its own time
        while sdk.devboxes.execute_and_await_completion(view.id, command="cat entry.txt").stdout != "serving\n":
            assert time.monotonic() < deadline, "the entrypoint never wrote entry.txt"
            time.sleep(0.02)
        assert not [e for e in sdk.devboxes.logs.list(view.id).logs if e.source == "entrypoint"]
        sdk.devboxes.execute_and_await_completion(view.id, command="echo now > /tmp/go-fifo")
        deadline = time.monotonic() + 20
        while not (entries := [e for e in sdk.devboxes.logs.list(view.id).logs if e.source == "entrypoint"]):
            assert time.monotonic() < deadline, "the entrypoint's exit was never logged"
            time.sleep(0.02)
        assert entries[0].exit_code == 4 and entries[0].message.endswith("done-now\n")
        # Its end is the devbox's end (the API binds the devbox's lifecycle to its entrypoint).
        r = http.post(
            f"/v1/devboxes/{view.id}/wait_for_status", json={"statuses": ["shutdown"], "timeout_seconds": 20}
        )
        assert r.status_code == 200 and r.json()["shutdown_reason"] == "entrypoint_exit"
    finally:
        sdk.devboxes.shutdown(view.id)


def test_bubblewrap_that_cannot_sandbox_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_server.local import sandbox

    # Fault injection: a bubblewrap that fails the way it does in a container without user namespaces.
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    found = dict(sandbox.tools()) | {"bwrap": str(fake)}
    monkeypatch.setattr(sandbox, "tools", lambda: found)
    running = start_in_thread(tmp_path / "data")
    try:
        r = httpx.post(
            f"{running.base_url}/v1/devboxes", json={}, headers={"Authorization": f"Bearer {running.api_key}"}
        )
        assert r.status_code == 400
        message = r.json()["message"]
        assert "cannot create a sandbox here" in message and "No permissions" in message
        assert "--unsafe-no-sandbox" in message
    finally:
        running.stop()


def test_keep_alive_time_seconds_shuts_an_unattended_devbox_down(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(launch_parameters={"keep_alive_time_seconds": 1})
    # Kept alive well past its 1 s window, it stays up...
    until = time.monotonic() + 2.5
    while time.monotonic() < until:
        assert http.post(f"/v1/devboxes/{view.id}/keep_alive").json() == {}
        time.sleep(0.1)
    assert sdk.devboxes.retrieve(view.id).status == "running"
    # ...and left alone, it shuts itself down.
    r = http.post(
        f"/v1/devboxes/{view.id}/wait_for_status", json={"statuses": ["shutdown"], "timeout_seconds": 20}
    )
    assert r.status_code == 200
    assert r.json()["shutdown_reason"] == "keep_alive_timeout"
    assert any("no keep_alive within 1 s" in (e.message or "") for e in sdk.devboxes.logs.list(view.id).logs)


def test_usage_counts_running_time_only(tmp_path: Path) -> None:
    # A devbox whose history is known: running 5 s, suspended 10 s, running 3 s, then shut down.
    t0 = 1_700_000_000_000
    history = [("provisioning", 0), ("running", 2_000), ("suspending", 7_000), ("suspended", 7_100),
               ("resuming", 17_000), ("running", 17_000), ("shutdown", 20_000)]  # fmt: skip
    record = {
        "id": "dbx_planted", "status": "shutdown", "create_time_ms": t0, "state_dir": "x",
        "state_transitions": [{"status": s, "transition_time_ms": t0 + dt} for s, dt in history],
        "end_time_ms": t0 + 20_000, "shutdown_reason": "api_shutdown",
    }  # fmt: skip
    (tmp_path / "devboxes" / "dbx_planted").mkdir(parents=True)
    (tmp_path / "devboxes" / "dbx_planted" / "devbox.json").write_text(json.dumps(record))
    running = start_in_thread(tmp_path)
    try:
        from runloop_api_client import Runloop

        with Runloop(bearer_token=running.api_key, base_url=running.base_url) as client:
            usage = client.devboxes.retrieve_resource_usage("dbx_planted")
        assert usage.status == "shutdown" and usage.start_time_ms == t0 and usage.end_time_ms == t0 + 20_000
        assert usage.total_active_seconds == 8
        assert usage.total_elapsed_seconds == 20
        # Recorded before devboxes had sizes, it ran as the default, SMALL: 1 vCPU, 2 GiB, 4 GiB disk.
        assert (usage.vcpu_seconds, usage.memory_gb_seconds, usage.disk_gb_seconds) == (8, 16, 80)
    finally:
        running.stop()
