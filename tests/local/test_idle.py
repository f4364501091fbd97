"""Idle lifecycle (`after_idle`, `lifecycle.after_idle`) over the real HTTP API, driven by the official SDK.

Waits are the API's own `wait_for_status` long-polls, never sleeps. Idle times are 1 s where the
test only waits for the devbox to idle out, 2 s where it must use the devbox first (one request
after `running` must arrive within that time).
"""

from __future__ import annotations

import httpx
import pytest
from runloop_api_client import BadRequestError

SUSPEND = {"idle_time_seconds": 2, "on_idle": "suspend"}
SHUTDOWN = {"idle_time_seconds": 2, "on_idle": "shutdown"}
SHUTDOWN_1S = {"idle_time_seconds": 1, "on_idle": "shutdown"}


def wait_for(http: httpx.Client, devbox_id: str, statuses: list[str], seconds: float = 20) -> httpx.Response:
    return http.post(f"/v1/devboxes/{devbox_id}/wait_for_status", json={"statuses": statuses, "timeout_seconds": seconds})


def test_an_unused_devbox_is_suspended_and_again_after_a_resume(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(launch_parameters={"after_idle": SUSPEND})
    try:
        assert view.launch_parameters.after_idle.on_idle == "suspend"  # the view shows the policy
        sdk.devboxes.execute_and_await_completion(view.id, command="echo kept > file.txt")
        suspended = sdk.devboxes.await_suspended(view.id)  # observing (wait_for_status) is not activity
        assert suspended.status == "suspended" and suspended.shutdown_reason is None
        logs = sdk.devboxes.logs.list(view.id).logs
        assert any("idle for 2 s (after_idle): suspending" in (e.message or "") for e in logs)
        # Resumed, it is running again with its files, and idles out again.
        sdk.devboxes.resume(view.id)
        sdk.devboxes.await_running(view.id)
        assert sdk.devboxes.read_file_contents(view.id, file_path="file.txt") == "kept\n"
        assert sdk.devboxes.await_suspended(view.id).status == "suspended"
    finally:
        sdk.devboxes.shutdown(view.id)


def test_lifecycle_after_idle_shuts_an_unused_devbox_down_with_reason_idle(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(
        launch_parameters={"lifecycle": {"after_idle": SHUTDOWN_1S}, "keep_alive_time_seconds": 3600}
    )
    r = wait_for(http, view.id, ["shutdown"])
    assert r.status_code == 200, r.text
    assert r.json()["shutdown_reason"] == "idle"


def test_a_running_command_keeps_the_devbox_busy(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(launch_parameters={"after_idle": SHUTDOWN})
    try:
        sdk.devboxes.execute_and_await_completion(view.id, command="mkfifo /tmp/go")
        waiting = sdk.devboxes.execute_async(view.id, command="read -r line < /tmp/go; echo got-$line")
        # Two idle times later the devbox is still running: the command is activity.
        r = wait_for(http, view.id, ["shutdown", "suspended"], seconds=4)
        assert r.status_code == 408, r.text
        assert sdk.devboxes.retrieve(view.id).status == "running"
        sdk.devboxes.execute_and_await_completion(view.id, command="echo now > /tmp/go")
        done = sdk.devboxes.executions.await_completed(waiting.execution_id, devbox_id=view.id)
        assert done.exit_status == 0 and done.stdout == "got-now\n"  # finished, not killed by the shutdown
        # Once it has ended, the idle time runs out.
        r = wait_for(http, view.id, ["shutdown"])
        assert r.status_code == 200 and r.json()["shutdown_reason"] == "idle"
    finally:
        sdk.devboxes.shutdown(view.id)


@pytest.mark.parametrize(
    ("launch_parameters", "status", "fragment"),
    [
        ({"after_idle": SUSPEND, "lifecycle": {"after_idle": SHUTDOWN}}, 400, "differ"),
        ({"after_idle": {"idle_time_seconds": 0, "on_idle": "suspend"}}, 400, "idle_time_seconds"),
        ({"after_idle": {"idle_time_seconds": 5, "on_idle": "hibernate"}}, 400, "on_idle"),
        ({"after_idle": {"idle_time_seconds": 5}}, 400, "on_idle"),
        ({"lifecycle": {"resume_triggers": {"axon_event": True}}}, 400, "resume_triggers.axon_event"),
        ({"lifecycle": {"lifecycle_hooks": {"suspend_commands": ["sync"]}}}, 400, "lifecycle_hooks"),
    ],
)
def test_bad_idle_policies_are_refused(http: httpx.Client, launch_parameters: dict, status: int, fragment: str) -> None:
    r = http.post("/v1/devboxes", json={"launch_parameters": launch_parameters})
    assert r.status_code == status, r.text
    assert fragment in r.json()["message"]


def test_equal_policies_in_both_places_are_accepted(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create(
        launch_parameters={"after_idle": SUSPEND, "lifecycle": {"after_idle": SUSPEND, "resume_triggers": {"http": False}}}
    )
    sdk.devboxes.shutdown(view.id)
    with pytest.raises(BadRequestError, match="differ"):
        sdk.devboxes.create(launch_parameters={"after_idle": SUSPEND, "lifecycle": {"after_idle": SHUTDOWN}})
