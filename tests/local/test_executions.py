"""Executions through the official SDK against the real backend and real sandboxes.

Synchronisation is by output (a command prints a marker, the test reads it from the stream)
or by long-poll, never by sleeping.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from runloop_api_client import APIStatusError, BadRequestError, NotFoundError


@pytest.fixture(scope="module")
def devbox(sdk) -> Iterator[str]:
    view = sdk.devboxes.create_and_await_running(name="executions")
    assert view.status == "running"
    yield view.id
    sdk.devboxes.shutdown(view.id)


def run(sdk, devbox: str, command: str) -> Any:
    return sdk.devboxes.execute_and_await_completion(devbox, command=command)


def sse_chunks(http: httpx.Client, path: str, **params: Any) -> Iterator[dict[str, Any]]:
    """The `data:` events of an SSE response, decoded (keep-alive comments skipped)."""
    with http.stream("GET", path, params=params) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[len("data: ") :])


def read_until(chunks: Iterator[dict[str, Any]], done: Callable[[str], bool]) -> str:
    text = ""
    for chunk in chunks:
        text += chunk["output"]
        if done(text):
            return text
    raise AssertionError(f"stream ended before the expected output; got {text!r}")


def poll_until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"


def test_execute_and_await_completion_returns_output_and_exit_status(sdk, devbox):
    result = run(sdk, devbox, "echo out; echo err >&2; printf 'héllo'; exit 3")
    assert result.status == "completed"
    assert result.exit_status == 3
    assert result.stdout == "out\nhéllo"
    assert result.stderr == "err\n"
    assert result.stdout_truncated is False and result.stderr_truncated is False


def test_executions_share_the_devbox_home_and_processes(sdk, devbox):
    run(sdk, devbox, "echo persisted > shared.txt")
    assert run(sdk, devbox, "pwd; cat shared.txt").stdout == "/home/user\npersisted\n"


def test_execute_returns_running_then_completes_on_wait(sdk, devbox):
    gate = f"gate-{uuid.uuid4().hex}"
    command = f"while [ ! -e {gate} ]; do sleep 0.01; done; echo passed"
    started = sdk.devboxes.execute(devbox, command=command, command_id=str(uuid.uuid4()), optimistic_timeout=0)
    assert started.status == "running"
    assert started.exit_status is None
    run(sdk, devbox, f"touch {gate}")
    done = sdk.devboxes.wait_for_command(started.execution_id, devbox_id=devbox, statuses=["completed"])
    assert (done.status, done.exit_status, done.stdout) == ("completed", 0, "passed\n")


def test_command_id_runs_the_command_once(sdk, devbox):
    command_id = str(uuid.uuid4())
    first = sdk.devboxes.execute(devbox, command="echo x >> counter", command_id=command_id)
    second = sdk.devboxes.execute(devbox, command="echo x >> counter", command_id=command_id)
    assert first.execution_id == second.execution_id
    assert run(sdk, devbox, "wc -l < counter").stdout.strip() == "1"


def test_command_id_returns_the_running_execution(sdk, devbox, http):
    command_id = str(uuid.uuid4())
    command = "echo once >> once.txt; echo started; sleep 600"
    first = sdk.devboxes.execute(devbox, command=command, command_id=command_id, optimistic_timeout=0)
    again = sdk.devboxes.execute(devbox, command=command, command_id=command_id, optimistic_timeout=0)
    assert first.status == again.status == "running"
    assert again.execution_id == first.execution_id
    path = f"/v1/devboxes/{devbox}/executions/{first.execution_id}/stream_stdout_updates"
    read_until(sse_chunks(http, path), lambda text: "started" in text)  # the echo has run: kill now
    sdk.devboxes.executions.kill(first.execution_id, devbox_id=devbox)
    assert run(sdk, devbox, "cat once.txt").stdout == "once\n"


def test_execute_takes_a_fraction_of_a_second_and_answers_with_the_output_so_far(http, devbox, sdk):
    """Our extension: `optimistic_timeout` in fractions of a second; a command still running after
    it is answered with its output so far, whole characters only, and the flags saying it is whole."""
    marker = f"frac-{uuid.uuid4().hex[:8]}"
    body = {"command": f"printf 'caf\\xc3\\xa9\\n'; until [ -e {marker} ]; do sleep 0.01; done",
            "command_id": str(uuid.uuid4()), "optimistic_timeout": 0.25}  # fmt: skip
    view = http.post(f"/v1/devboxes/{devbox}/execute", json=body, params={"last_n": 10}).json()
    assert view["status"] == "running" and view["stdout"] == "café\n" and view["stdout_truncated"] is False
    run(sdk, devbox, f"touch {marker}")
    done = sdk.devboxes.executions.await_completed(view["execution_id"], devbox_id=devbox)
    assert done.exit_status == 0
    quick = {"command": "echo quick", "command_id": str(uuid.uuid4()), "optimistic_timeout": 5.5}
    assert http.post(f"/v1/devboxes/{devbox}/execute", json=quick).json()["stdout"] == "quick\n"


def test_execute_with_an_output_grace_answers_once_the_command_prints(http, devbox, sdk):
    """Our extension `output_grace_seconds`: a long hold ends once the command has printed (and
    the grace passed without it completing); a silent command is held until it completes."""
    marker = f"grace-{uuid.uuid4().hex[:8]}"
    body = {"command": f"echo early; until [ -e {marker} ]; do sleep 0.01; done; echo late",
            "command_id": str(uuid.uuid4()), "optimistic_timeout": 25, "output_grace_seconds": 0.01}  # fmt: skip
    view = http.post(f"/v1/devboxes/{devbox}/execute", json=body).json()
    assert view["status"] == "running" and view["stdout"] == "early\n"
    run(sdk, devbox, f"touch {marker}")
    assert sdk.devboxes.executions.await_completed(view["execution_id"], devbox_id=devbox).stdout == "early\nlate\n"
    silent = {"command": "sleep 0.2; exit 3", "command_id": str(uuid.uuid4()), "optimistic_timeout": 25,
              "output_grace_seconds": 0.01}  # fmt: skip
    assert http.post(f"/v1/devboxes/{devbox}/execute", json=silent).json()["exit_status"] == 3
    bad = {"command": "true", "command_id": str(uuid.uuid4()), "output_grace_seconds": 26}
    assert "output_grace_seconds" in http.post(f"/v1/devboxes/{devbox}/execute", json=bad).json()["message"]


def test_execute_accepting_ndjson_sends_the_first_output_while_the_request_is_held(http, devbox, sdk):
    """Our extension: with `Accept: application/x-ndjson` the held answer comes as lines of views,
    the first as soon as the command prints (still running, the request held on), the last the
    answer the one-object form gives; a command done before it prints is one line."""
    marker = f"ndjson-{uuid.uuid4().hex[:8]}"
    body = {"command": f"printf 'd\\xc3\\xa9but\\n'; until [ -e {marker} ]; do sleep 0.01; done; echo fin; exit 3",
            "command_id": str(uuid.uuid4()), "optimistic_timeout": 25, "output_grace_seconds": 20}  # fmt: skip
    accept = {"Accept": "application/x-ndjson"}
    with http.stream("POST", f"/v1/devboxes/{devbox}/execute", json=body, headers=accept) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = response.iter_lines()
        first = json.loads(next(lines))
        assert first["status"] == "running" and first["stdout"] == "début\n" and first["stdout_truncated"] is False
        run(sdk, devbox, f"touch {marker}")  # only now can it complete: the request was held on
        last = json.loads(next(lines))
        assert [line for line in lines if line.strip()] == []
    assert last["execution_id"] == first["execution_id"]
    assert (last["status"], last["exit_status"], last["stdout"]) == ("completed", 3, "début\nfin\n")
    silent = {"command": "sleep 0.1; exit 4", "command_id": str(uuid.uuid4()), "optimistic_timeout": 25,
              "output_grace_seconds": 20}  # fmt: skip
    answer = http.post(f"/v1/devboxes/{devbox}/execute", json=silent, headers=accept)
    (only,) = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    assert only["status"] == "completed" and only["exit_status"] == 4
    # Nothing was sent before that line: it came as a whole body with the headers, not in chunks.
    assert answer.headers["content-length"] == str(len(answer.content)) and "transfer-encoding" not in answer.headers


def test_x_request_id_makes_execute_async_idempotent(http, devbox, sdk):
    headers = {"x-request-id": f"stainless-python-retry-{uuid.uuid4()}"}
    body = {"command": "echo y >> async_counter"}
    first = http.post(f"/v1/devboxes/{devbox}/execute_async", json=body, headers=headers)
    second = http.post(f"/v1/devboxes/{devbox}/execute_async", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["execution_id"] == second.json()["execution_id"]
    sdk.devboxes.executions.await_completed(first.json()["execution_id"], devbox_id=devbox)
    assert run(sdk, devbox, "wc -l < async_counter").stdout.strip() == "1"


def test_x_request_id_guards_execute_without_command_id(http, devbox, sdk):
    headers = {"x-request-id": f"retry-{uuid.uuid4()}"}
    body = {"command": "echo w >> plain_counter"}
    first = http.post(f"/v1/devboxes/{devbox}/execute", json=body, headers=headers).json()
    second = http.post(f"/v1/devboxes/{devbox}/execute", json=body, headers=headers).json()
    assert first["execution_id"] == second["execution_id"] and second["status"] == "completed"
    assert run(sdk, devbox, "wc -l < plain_counter").stdout.strip() == "1"


def test_x_request_id_makes_execute_sync_idempotent(http, devbox, sdk):
    headers = {"x-request-id": f"stainless-python-retry-{uuid.uuid4()}"}
    body = {"command": "echo z >> sync_counter; echo done"}
    first = http.post(f"/v1/devboxes/{devbox}/execute_sync", json=body, headers=headers)
    second = http.post(f"/v1/devboxes/{devbox}/execute_sync", json=body, headers=headers)
    assert first.json() == second.json() == {"devbox_id": devbox, "exit_status": 0, "stdout": "done\n", "stderr": ""}
    assert run(sdk, devbox, "wc -l < sync_counter").stdout.strip() == "1"


def test_execute_sync_waits_for_the_command(sdk, devbox):
    result = sdk.devboxes.execute_sync(devbox, command="echo a; echo b >&2; exit 4")
    assert (result.exit_status, result.stdout, result.stderr) == (4, "a\n", "b\n")


def test_wait_for_status_answers_408_with_a_float_timeout(http, devbox, sdk):
    ex = sdk.devboxes.execute_async(devbox, command="cat", attach_stdin=True)
    response = http.post(
        f"/v1/devboxes/{devbox}/executions/{ex.execution_id}/wait_for_status",
        json={"statuses": ["completed"], "timeout_seconds": 0.25},
    )
    assert response.status_code == 408
    assert "still running" in response.json()["message"]
    running = http.post(
        f"/v1/devboxes/{devbox}/executions/{ex.execution_id}/wait_for_status",
        json={"statuses": ["running"], "timeout_seconds": 0.25},
    )
    assert running.status_code == 200 and running.json()["status"] == "running"
    sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, signal="EOF")
    done = sdk.devboxes.wait_for_command(ex.execution_id, devbox_id=devbox, statuses=["completed"], timeout_seconds=12.7)
    assert done.exit_status == 0


def test_send_stdin_text_then_eof(sdk, devbox):
    ex = sdk.devboxes.execute_async(devbox, command="cat; echo end", attach_stdin=True)
    for text in ("first line\n", "ünïcode ✓\n"):
        sent = sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text=text)
        assert sent.success is True
    sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, signal="EOF")
    done = sdk.devboxes.executions.await_completed(ex.execution_id, devbox_id=devbox)
    assert done.stdout == "first line\nünïcode ✓\nend\n"
    with pytest.raises(BadRequestError, match="has completed"):
        sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text="late\n")


def test_send_stdin_needs_attach_stdin(sdk, devbox):
    ex = sdk.devboxes.execute_async(devbox, command="cat")  # stdin is /dev/null: cat ends at once
    with pytest.raises(BadRequestError, match="attach_stdin"):
        sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text="x")
    assert sdk.devboxes.executions.await_completed(ex.execution_id, devbox_id=devbox).exit_status == 0


def test_text_after_eof_is_refused(sdk, devbox):
    ex = sdk.devboxes.execute_async(devbox, command="cat >/dev/null; sleep 600", attach_stdin=True)
    sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, signal="EOF")
    with pytest.raises(BadRequestError, match="closed by an EOF"):
        sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text="more")
    sdk.devboxes.executions.kill(ex.execution_id, devbox_id=devbox)


def test_interrupt_sends_sigint_to_the_command(sdk, devbox, http):
    ex = sdk.devboxes.execute_async(devbox, command="trap 'echo interrupted; exit 7' INT; cat", attach_stdin=True)
    path = f"/v1/devboxes/{devbox}/executions/{ex.execution_id}/stream_stdout_updates"
    chunks = sse_chunks(http, path)
    # cat echoing the line proves it runs: a SIGINT between bash's fork and cat's exec would be lost.
    sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text="ready\n")
    read_until(chunks, lambda text: "ready" in text)
    sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, signal="INTERRUPT")
    rest = read_until(chunks, lambda text: "interrupted" in text)
    assert "interrupted" in rest
    done = sdk.devboxes.executions.await_completed(ex.execution_id, devbox_id=devbox)
    assert done.exit_status == 7
    assert done.stdout == "ready\ninterrupted\n"


def _background_pid(http: httpx.Client, devbox: str, execution_id: str) -> int:
    path = f"/v1/devboxes/{devbox}/executions/{execution_id}/stream_stdout_updates"
    return int(read_until(sse_chunks(http, path), lambda text: text.endswith("\n")).strip())


def _alive(sdk, devbox: str, pid: int) -> bool:
    # A killed process may linger a moment as a zombie until the sandbox's init reaps it.
    result = run(sdk, devbox, f"test -d /proc/{pid} && ! grep -q '^State:.*Z' /proc/{pid}/status")
    return result.exit_status == 0


def test_kill_process_group_kills_background_children(sdk, devbox, http):
    ex = sdk.devboxes.execute_async(devbox, command="sleep 1000 & echo $!; wait")
    child = _background_pid(http, devbox, ex.execution_id)
    assert _alive(sdk, devbox, child)
    killed = sdk.devboxes.executions.kill(ex.execution_id, devbox_id=devbox, kill_process_group=True)
    assert killed.status == "completed"
    assert killed.exit_status in (137, 143)
    poll_until(lambda: not _alive(sdk, devbox, child))


def test_kill_without_process_group_kills_only_the_shell(sdk, devbox, http):
    ex = sdk.devboxes.execute_async(devbox, command="sleep 1000 & echo $!; wait")
    child = _background_pid(http, devbox, ex.execution_id)
    killed = sdk.devboxes.executions.kill(ex.execution_id, devbox_id=devbox)
    assert (killed.status, killed.exit_status) == ("completed", 137)
    assert _alive(sdk, devbox, child)
    run(sdk, devbox, f"kill {child}")
    poll_until(lambda: not _alive(sdk, devbox, child))


def test_kill_of_a_completed_execution_changes_nothing(sdk, devbox):
    done = run(sdk, devbox, "echo fine")
    again = sdk.devboxes.executions.kill(done.execution_id, devbox_id=devbox, kill_process_group=True)
    assert (again.status, again.exit_status, again.stdout) == ("completed", 0, "fine\n")


def test_a_background_process_holding_stdout_does_not_hold_the_execution(sdk, devbox, http):
    result = run(sdk, devbox, "(sleep 1000; echo late) & echo early")
    assert (result.status, result.stdout) == ("completed", "early\n")
    chunks = list(sse_chunks(http, f"/v1/devboxes/{devbox}/executions/{result.execution_id}/stream_stdout_updates"))
    assert "".join(c["output"] for c in chunks) == "early\n"


def test_get_execution_last_n_lines_and_truncated_flags(sdk, devbox):
    done = run(sdk, devbox, "seq 1 500; echo oops >&2")
    assert done.stdout == "".join(f"{i}\n" for i in range(401, 501))
    assert done.stdout_truncated is True and done.stderr_truncated is False
    tail = sdk.devboxes.executions.retrieve(done.execution_id, devbox_id=devbox, last_n="3")
    assert tail.stdout == "498\n499\n500\n" and tail.stdout_truncated is True
    everything = sdk.devboxes.executions.retrieve(done.execution_id, devbox_id=devbox, last_n="1000")
    assert everything.stdout == "".join(f"{i}\n" for i in range(1, 501)) and everything.stdout_truncated is False


def test_execution_logs_record_start_and_exit(sdk, devbox):
    done = run(sdk, devbox, "exit 5")
    logs = sdk.devboxes.logs.list(devbox, execution_id=done.execution_id).logs
    assert [entry.source for entry in logs] == ["exec", "exec"]
    assert logs[0].cmd == "exit 5" and logs[0].cmd_id == done.execution_id
    assert logs[1].exit_code == 5


def test_unknown_devbox_and_execution_are_404(sdk, devbox):
    with pytest.raises(NotFoundError, match="dbx_missing"):
        sdk.devboxes.execute_async("dbx_missing", command="true")
    with pytest.raises(NotFoundError, match="exe_missing"):
        sdk.devboxes.executions.retrieve("exe_missing", devbox_id=devbox)
    with pytest.raises(NotFoundError):
        sdk.devboxes.executions.retrieve("exe_missing", devbox_id="dbx_missing")


def test_executing_on_a_suspended_or_shut_down_devbox_says_so(sdk):
    view = sdk.devboxes.create_and_await_running()
    command_id = str(uuid.uuid4())
    before = sdk.devboxes.execute(view.id, command="echo before", command_id=command_id)
    ex = sdk.devboxes.execute_async(view.id, command="cat", attach_stdin=True)
    sdk.devboxes.suspend(view.id)
    # The running command died with the sandbox: its execution is completed, killed.
    stopped = sdk.devboxes.executions.retrieve(ex.execution_id, devbox_id=view.id)
    assert (stopped.status, stopped.exit_status) == ("completed", 137)
    sdk.devboxes.await_suspended(view.id)
    with pytest.raises(BadRequestError, match="suspended; resume it"):
        sdk.devboxes.execute(view.id, command="true", command_id=str(uuid.uuid4()))
    # A retry of a command that ran before the suspension still gets its execution.
    assert sdk.devboxes.execute(view.id, command="cat", command_id=command_id).execution_id == before.execution_id
    sdk.devboxes.shutdown(view.id)
    with pytest.raises(BadRequestError, match="shutdown"):
        sdk.devboxes.execute_async(view.id, command="true")
    # Completed executions stay readable after the devbox is gone.
    assert sdk.devboxes.executions.retrieve(ex.execution_id, devbox_id=view.id).status == "completed"


BAD_BODIES = [
    ("execute_async", b"{not json", 400, "not valid JSON"),
    ("execute_async", b"[1]", 400, "JSON object"),
    ("execute_async", b"{}", 400, "command"),
    ("execute_async", b'{"command": 12}', 400, "command"),
    ("execute_async", b'{"command": "  "}', 400, "must not be empty"),
    ("execute_async", b'{"command": "a\\u0000b"}', 400, "NUL"),
    ("execute_async", b'{"command": "echo \\ud800"}', 400, "lone surrogate"),
    ("execute", b'{"command": "echo \\udfff"}', 400, "lone surrogate"),
    ("execute_async", b'{"command": "true", "attach_stdin": "yes"}', 400, "attach_stdin"),
    ("execute", b'{"command": "true", "command_id": 5}', 400, "command_id"),
    ("execute", b'{"command": "true", "command_id": ""}', 400, "command_id"),
    ("execute", b'{"command": "true", "optimistic_timeout": 30}', 400, "optimistic_timeout"),
    ("execute", b'{"command": "true", "optimistic_timeout": "soon"}', 400, "optimistic_timeout"),
    ("execute_sync", b'{"command": null}', 400, "command"),
]


@pytest.mark.parametrize(("endpoint", "body", "status", "message"), BAD_BODIES)
def test_bad_execute_bodies(http, devbox, endpoint, body, status, message):
    response = http.post(f"/v1/devboxes/{devbox}/{endpoint}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["message"]


def test_bad_last_n_query(http, devbox, sdk):
    done = run(sdk, devbox, "echo ok")
    for value in ("-1", "many", "99999999999", "inf", "1e999", "nan"):
        for response in (
            http.post(f"/v1/devboxes/{devbox}/execute", params={"last_n": value}, json={"command": "true"}),
            http.post(f"/v1/devboxes/{devbox}/execute_async", params={"last_n": value}, json={"command": "true"}),
            http.get(f"/v1/devboxes/{devbox}/executions/{done.execution_id}", params={"last_n": value}),
        ):
            assert response.status_code == 400 and "last_n" in response.json()["message"]


@pytest.fixture(scope="module")
def running_cat(sdk, devbox) -> Iterator[str]:
    ex = sdk.devboxes.execute_async(devbox, command="cat", attach_stdin=True)
    yield ex.execution_id
    sdk.devboxes.executions.kill(ex.execution_id, devbox_id=devbox)


BAD_EXECUTION_REQUESTS = [
    ("wait_for_status", b"{}", 400, "statuses"),
    ("wait_for_status", b'{"statuses": []}', 400, "at least one"),
    ("wait_for_status", b'{"statuses": ["done"]}', 400, "statuses[0] must be one of queued, running, completed"),
    ("wait_for_status", b'{"statuses": ["completed"], "timeout_seconds": 26}', 400, "timeout_seconds"),
    ("wait_for_status", b'{"statuses": ["completed"], "timeout_seconds": "1"}', 400, "timeout_seconds"),
    ("wait_for_status", b"{oops", 400, "not valid JSON"),
    ("kill", b'{"kill_process_group": "always"}', 400, "kill_process_group"),
    ("send_std_in", b"{}", 400, "exactly one"),
    ("send_std_in", b'{"text": "a", "signal": "EOF"}', 400, "exactly one"),
    ("send_std_in", b'{"text": ""}', 400, "must not be empty"),
    ("send_std_in", b'{"signal": "KILL"}', 400, "signal must be one of EOF, INTERRUPT"),
    ("send_std_in", b'{"text": 3}', 400, "text"),
]


@pytest.mark.parametrize(("endpoint", "body", "status", "message"), BAD_EXECUTION_REQUESTS)
def test_bad_execution_requests(http, devbox, running_cat, endpoint, body, status, message):
    path = f"/v1/devboxes/{devbox}/executions/{running_cat}/{endpoint}"
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["message"]
    # The bad request changed nothing: the command still runs.
    assert http.get(f"/v1/devboxes/{devbox}/executions/{running_cat}").json()["status"] == "running"


def test_sdk_surfaces_errors_as_status_errors(sdk, devbox, running_cat):
    with pytest.raises(APIStatusError) as info:
        sdk.devboxes.executions.send_std_in(running_cat, devbox_id=devbox, signal="KILL")  # type: ignore[arg-type]
    assert info.value.status_code == 400
