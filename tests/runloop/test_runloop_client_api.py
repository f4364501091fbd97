"""The Runloop client against the real embedded backend: every method the tools use.

Devboxes are real bubblewrap sandboxes; axons are real SQLite. One devbox serves the module.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from support.faultproxy import FaultProxy
from support.runloop_client import client_for

from mcp_server.runloop import (
    BadRequest,
    ExecutionView,
    FileTooLarge,
    InvalidArgument,
    NotFound,
    RunloopClient,
    ServerError,
    SqlStatement,
    WaitTimeout,
)

pytestmark = pytest.mark.anyio

UP = ["running", "failure", "shutdown"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(backend) -> AsyncIterator[RunloopClient]:  # noqa: ANN001
    async with client_for(backend.base_url, backend.api_key) as c:
        yield c


@pytest.fixture(scope="module")
async def devbox_id(backend) -> AsyncIterator[str]:  # noqa: ANN001
    async with client_for(backend.base_url, backend.api_key) as c:
        view = await c.create_devbox(name="client-tests", environment_variables={"GREETING": "hej"})
        view = await c.wait_for_devbox_status(view.id, UP, timeout_seconds=60)
        assert view.status == "running", view
        yield view.id
        await c.shutdown_devbox(view.id)




# --- devboxes --------------------------------------------------------------------------------


async def test_devbox_create_watch_list_update_shutdown(client: RunloopClient, backend) -> None:  # noqa: ANN001
    created = await client.create_devbox(name="watched", launch_commands=["echo launched > ~/launch.txt"],
                                         metadata={"team": "blue"})
    assert created.name == "watched" and created.metadata == {"team": "blue"}
    seen = [view.status async for view in client.watch_devbox(created.id, until=UP, timeout_seconds=60)]
    assert seen[-1] == "running"
    assert len(seen) == len(set(seen)), f"each yield is a new status: {seen}"
    assert created.launch_parameters.get("launch_commands") == ["echo launched > ~/launch.txt"]

    page = await client.list_devboxes(status="running", limit=100)
    assert created.id in [d.id for d in page.devboxes]
    assert all(d.status == "running" for d in page.devboxes)

    renamed = await client.update_devbox(created.id, name="renamed")
    assert renamed.name == "renamed" and (await client.get_devbox(created.id)).name == "renamed"

    down = await client.shutdown_devbox(created.id)
    final = await client.wait_for_devbox_status(created.id, ["shutdown"], timeout_seconds=30)
    assert down.id == final.id and final.status == "shutdown"


async def test_list_devboxes_pages_with_starting_after(client: RunloopClient, devbox_id: str) -> None:
    first = await client.list_devboxes(limit=1)
    assert len(first.devboxes) == 1 and first.total_count is not None and first.total_count >= 1
    if first.has_more:
        second = await client.list_devboxes(limit=1, starting_after=first.devboxes[0].id)
        assert second.devboxes[0].id != first.devboxes[0].id


async def test_unknown_devbox_is_not_found_with_the_api_message(client: RunloopClient, backend) -> None:  # noqa: ANN001
    with pytest.raises(NotFound) as info:
        await client.get_devbox("dbx_does_not_exist")
    assert info.value.status == 404
    assert "dbx_does_not_exist" in info.value.message, "the API's own message is kept"
    # One line, the API's message its only advice: no generic hint after it.
    assert str(info.value) == f"404 Not Found from GET /v1/devboxes/dbx_does_not_exist: {info.value.message}"


async def test_wait_for_status_gives_up_at_the_deadline(client: RunloopClient, devbox_id: str) -> None:
    with pytest.raises(WaitTimeout) as info:
        await client.wait_for_devbox_status(devbox_id, ["suspended"], timeout_seconds=0.5)
    assert "suspended" in str(info.value)


async def test_ids_that_would_change_the_path_are_refused(client: RunloopClient) -> None:
    with pytest.raises(InvalidArgument):
        await client.get_devbox("../axons")


async def test_create_devbox_retried_after_a_lost_response_creates_one(fault_proxy: FaultProxy, backend) -> None:  # noqa: ANN001
    name = f"once-{uuid.uuid4().hex[:8]}"
    fault_proxy.fail("^/v1/devboxes$", method="POST", status=503, times=1, forward=True, retry_after=0)
    async with client_for(fault_proxy.url, backend.api_key) as client:
        view = await client.create_devbox(name=name)
        page = await client.list_devboxes(limit=5000)
        assert [d.id for d in page.devboxes if d.name == name] == [view.id]
        attempts = fault_proxy.seen("^/v1/devboxes$", method="POST")
        assert len(attempts) == 2 and len({a.headers["x-request-id"] for a in attempts}) == 1
        await client.shutdown_devbox(view.id)


# --- executions ------------------------------------------------------------------------------


async def test_execute_completes_with_output_and_env(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    view = await client.execute(devbox_id, "echo $GREETING; echo err >&2; exit 3", optimistic_timeout=20)
    if not view.completed:
        view = await client.wait_for_execution(devbox_id, view.execution_id, timeout_seconds=30)
    assert (view.status, view.exit_status, view.stdout, view.stderr) == ("completed", 3, "hej\n", "err\n")
    again = await client.get_execution(devbox_id, view.execution_id)
    assert again.exit_status == 3


async def test_execute_with_the_same_command_id_runs_once(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    marker = f"ran-{uuid.uuid4().hex[:8]}.txt"
    command = f"echo x >> ~/{marker}; cat ~/{marker} | wc -l"
    command_id = str(uuid.uuid4())
    first = await client.execute(devbox_id, command, command_id=command_id, optimistic_timeout=20)
    second = await client.execute(devbox_id, command, command_id=command_id, optimistic_timeout=20)
    assert first.execution_id == second.execution_id
    done = await client.wait_for_execution(devbox_id, first.execution_id, timeout_seconds=30)
    assert done.stdout.strip() == "1"


async def test_execute_learns_that_the_embedded_backend_takes_fractions_of_a_second(
    devbox_id: str, backend  # noqa: ANN001
) -> None:
    """Whole seconds until the server's execute answer says otherwise; never with `subsecond_waits=False`."""
    async with client_for(backend.base_url, backend.api_key) as learning, \
            client_for(backend.base_url, backend.api_key, subsecond_waits=False) as strict:  # fmt: skip
        with pytest.raises(InvalidArgument, match="whole seconds"):
            await learning.execute(devbox_id, "true", optimistic_timeout=0.5)
        assert (await learning.execute(devbox_id, "echo one", optimistic_timeout=5)).stdout == "one\n"
        assert (await learning.execute(devbox_id, "echo two", optimistic_timeout=2.5)).stdout == "two\n"
        await strict.execute(devbox_id, "true", optimistic_timeout=5)
        with pytest.raises(InvalidArgument, match="whole seconds"):
            await strict.execute(devbox_id, "true", optimistic_timeout=0.5)


async def test_execute_retried_after_a_lost_response_runs_once(
    fault_proxy: FaultProxy, devbox_id: str, backend  # noqa: ANN001
) -> None:
    marker = f"retry-{uuid.uuid4().hex[:8]}.txt"
    fault_proxy.fail(r"/execute$", status=502, times=1, forward=True)
    async with client_for(fault_proxy.url, backend.api_key) as client:
        view = await client.execute(devbox_id, f"echo x >> ~/{marker}", optimistic_timeout=20)
        await client.wait_for_execution(devbox_id, view.execution_id, timeout_seconds=30)
        count = await client.execute(devbox_id, f"wc -l < ~/{marker}", optimistic_timeout=20)
        count = await client.wait_for_execution(devbox_id, count.execution_id, timeout_seconds=30)
    assert count.stdout.strip() == "1", "the retried execute did not run the command twice"
    bodies = fault_proxy.seen(r"/execute$")
    assert len(bodies) == 3


async def test_execute_retried_after_a_dropped_connection_runs_once(
    fault_proxy: FaultProxy, devbox_id: str, backend  # noqa: ANN001
) -> None:
    marker = f"cut-{uuid.uuid4().hex[:8]}.txt"
    fault_proxy.cut(r"/execute$", after_bytes=0, times=1)
    async with client_for(fault_proxy.url, backend.api_key) as client:
        view = await client.execute(devbox_id, f"echo x >> ~/{marker}; wc -l < ~/{marker}", optimistic_timeout=20)
        view = await client.wait_for_execution(devbox_id, view.execution_id, timeout_seconds=30)
    attempts = fault_proxy.seen(r"/execute$")
    assert len(attempts) == 2
    assert len({json.loads(a.body)["command_id"] for a in attempts}) == 1, "the retry reuses the command_id"
    assert view.stdout.strip() == "1"


async def test_execute_shows_the_first_output_while_the_request_is_held(
    fault_proxy: FaultProxy, devbox_id: str, backend  # noqa: ANN001
) -> None:
    """`on_output` gets the running command's view as soon as it prints, from the same request,
    which is held on: here the command completes only once `on_output` has run."""
    marker = f"held-{uuid.uuid4().hex[:8]}"
    seen: list[ExecutionView] = []
    async with client_for(fault_proxy.url, backend.api_key, subsecond_waits=True) as client, \
            client_for(backend.base_url, backend.api_key) as other:  # fmt: skip

        async def on_output(view: ExecutionView) -> None:
            seen.append(view)
            await other.execute(devbox_id, f"touch /tmp/{marker}", optimistic_timeout=20)

        with fault_proxy.counting() as made:
            view = await client.execute(
                devbox_id, f"echo début; until [ -e /tmp/{marker} ]; do sleep 0.01; done; echo fin >&2",
                optimistic_timeout=20, output_grace=20, on_output=on_output,
            )  # fmt: skip
    assert [(v.status, v.stdout, v.stderr) for v in seen] == [("running", "début\n", "")]
    assert (view.status, view.stdout, view.stderr) == ("completed", "début\n", "fin\n")
    assert view.execution_id == seen[0].execution_id and [r.path.rsplit("/", 1)[-1] for r in made] == ["execute"]


async def test_execute_broken_off_after_the_first_output_attaches_to_the_same_run(
    fault_proxy: FaultProxy, devbox_id: str, backend  # noqa: ANN001
) -> None:
    """The line answer cut after its first view: asked again with the same command_id, the
    answer is the same execution's (the command ran once)."""
    marker = f"once-{uuid.uuid4().hex[:8]}"
    fault_proxy.cut(r"/execute$", after_bytes=5, after_first_line=True, times=1)
    seen: list[ExecutionView] = []
    async with client_for(fault_proxy.url, backend.api_key, subsecond_waits=True) as client, \
            client_for(backend.base_url, backend.api_key) as other:  # fmt: skip

        async def on_output(view: ExecutionView) -> None:
            seen.append(view)
            await other.execute(devbox_id, f"touch /tmp/{marker}.go", optimistic_timeout=20)

        view = await client.execute(
            devbox_id, f"echo x >> /tmp/{marker}; cat /tmp/{marker}; until [ -e /tmp/{marker}.go ]; do sleep 0.01; done",
            optimistic_timeout=20, output_grace=20, on_output=on_output,
        )  # fmt: skip
    attempts = fault_proxy.seen(r"/execute$")
    assert len(attempts) == 2 and len({json.loads(a.body)["command_id"] for a in attempts}) == 1
    assert [v.stdout for v in seen] == ["x\n"]
    assert (view.execution_id, view.status, view.stdout) == (seen[0].execution_id, "completed", "x\n")


async def test_long_poll_treats_408_as_not_yet(fault_proxy: FaultProxy, devbox_id: str, backend) -> None:  # noqa: ANN001
    async with client_for(fault_proxy.url, backend.api_key) as client:
        started = await client.execute_async(devbox_id, "echo polled")
        fault_proxy.fail(r"/wait_for_status$", status=408, times=3, message="not yet")
        done = await client.wait_for_execution(devbox_id, started.execution_id, timeout_seconds=30)
    assert done.stdout == "polled\n"
    polls = fault_proxy.seen(r"/wait_for_status$")
    assert len(polls) == 4
    holds = [json.loads(p.body)["timeout_seconds"] for p in polls]
    assert all(isinstance(h, int) and 0 < h <= 25 for h in holds), holds  # whole seconds, as the API takes them


async def test_execute_async_wait_and_kill(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    started = await client.execute_async(devbox_id, "sleep 300")
    assert started.status in ("queued", "running")
    with pytest.raises(WaitTimeout):
        await client.wait_for_execution(devbox_id, started.execution_id, timeout_seconds=0.3)
    killed = await client.kill_execution(devbox_id, started.execution_id)
    done = await client.wait_for_execution(devbox_id, started.execution_id, timeout_seconds=30)
    assert killed.execution_id == done.execution_id and done.status == "completed"
    assert done.exit_status != 0


async def test_send_stdin_text_and_eof(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    started = await client.execute_async(devbox_id, "cat", attach_stdin=True)
    sent = await client.send_stdin(devbox_id, started.execution_id, text="piped ✓\n")
    assert sent.success
    await client.send_stdin(devbox_id, started.execution_id, signal="EOF")
    done = await client.wait_for_execution(devbox_id, started.execution_id, timeout_seconds=30)
    assert done.stdout == "piped ✓\n" and done.exit_status == 0


async def test_send_stdin_is_not_resent_after_a_lost_response(
    fault_proxy: FaultProxy, devbox_id: str, backend  # noqa: ANN001
) -> None:
    async with client_for(fault_proxy.url, backend.api_key) as client:
        started = await client.execute_async(devbox_id, "cat", attach_stdin=True)
        fault_proxy.fail(r"/send_std_in$", status=503, times=1, forward=True)
        with pytest.raises(ServerError) as info:
            await client.send_stdin(devbox_id, started.execution_id, text="once\n")
        assert info.value.attempts == 1
        await client.send_stdin(devbox_id, started.execution_id, signal="EOF")
        done = await client.wait_for_execution(devbox_id, started.execution_id, timeout_seconds=30)
    assert done.stdout == "once\n", "the text reached the command exactly once"


async def test_suspend_and_resume_retried_after_a_lost_response_succeed(
    fault_proxy: FaultProxy, backend  # noqa: ANN001
) -> None:
    async with client_for(fault_proxy.url, backend.api_key) as client:
        box = await client.create_devbox(name="suspend-retry")
        await client.wait_for_devbox_status(box.id, UP, timeout_seconds=60)
        fault_proxy.fail(r"/suspend$", status=503, times=1, forward=True, retry_after=0)
        suspended = await client.suspend_devbox(box.id)
        assert suspended.status in ("suspending", "suspended")
        await client.wait_for_devbox_status(box.id, ["suspended"], timeout_seconds=60)
        fault_proxy.fail(r"/resume$", status=503, times=1, forward=True, retry_after=0)
        resumed = await client.resume_devbox(box.id)
        assert resumed.status in ("resuming", "running")
        assert len(fault_proxy.seen(r"/suspend$")) == 2 and len(fault_proxy.seen(r"/resume$")) == 2
        await client.wait_for_devbox_status(box.id, ["running"], timeout_seconds=60)
        with pytest.raises(BadRequest) as info:
            await client.resume_devbox(box.id)
        assert info.value.attempts == 1, "a first-attempt refusal is reported, not explained away"
        await client.shutdown_devbox(box.id)


async def test_send_stdin_refuses_bad_arguments_locally(client: RunloopClient) -> None:
    for kwargs in ({}, {"text": "a", "signal": "EOF"}, {"text": ""}, {"signal": "KILL"}):
        with pytest.raises(InvalidArgument):
            await client.send_stdin("dbx_x", "exe_x", **kwargs)


async def test_unknown_execution_is_not_found(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    with pytest.raises(NotFound) as info:
        await client.get_execution(devbox_id, "exe_missing")
    assert "exe_missing" in info.value.message


async def test_devbox_logs_and_keep_alive(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    view = await client.execute(devbox_id, "echo logged", optimistic_timeout=20)
    await client.wait_for_execution(devbox_id, view.execution_id, timeout_seconds=30)
    await client.keep_alive_devbox(devbox_id)
    logs = await client.get_devbox_logs(devbox_id, execution_id=view.execution_id)
    assert logs and all(entry.cmd_id == view.execution_id for entry in logs)
    assert logs[-1].source == "exec" and logs[-1].exit_code == 0 and logs[-1].cmd == "echo logged"


# --- files -----------------------------------------------------------------------------------


async def test_write_then_read_text(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    text = "första rad ✓\n" * 100
    await client.write_file_contents(devbox_id, "notes/a.txt", text)
    assert await client.read_file_contents(devbox_id, "notes/a.txt") == text
    with pytest.raises(FileTooLarge) as info:
        await client.read_file_contents(devbox_id, "notes/a.txt", max_bytes=100)
    assert info.value.limit == 100
    assert "notes/a.txt" in str(info.value)


async def test_upload_then_download_bytes_with_a_cap(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    await client.upload_file(devbox_id, "bin/blob.bin", data)
    full = await client.download_file(devbox_id, "bin/blob.bin")
    assert full.data == data and not full.truncated and full.size == len(data)
    head = await client.download_file(devbox_id, "bin/blob.bin", max_bytes=1000)
    assert head.data == data[:1000] and head.truncated
    assert head.size in (len(data), None)


async def test_download_of_a_huge_file_stops_at_the_cap(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    view = await client.execute(devbox_id, "head -c 50000000 /dev/zero > ~/huge.bin", optimistic_timeout=20)
    await client.wait_for_execution(devbox_id, view.execution_id, timeout_seconds=60)
    part = await client.download_file(devbox_id, "huge.bin", max_bytes=1_000_000)
    assert len(part.data) == 1_000_000 and part.truncated
    assert part.size in (50_000_000, None)


async def test_reading_a_missing_file_is_a_clear_error(client: RunloopClient, devbox_id: str, backend) -> None:  # noqa: ANN001
    with pytest.raises((NotFound, BadRequest)) as info:
        await client.read_file_contents(devbox_id, "no/such/file.txt")
    assert "no/such/file.txt" in info.value.message


# --- axons -----------------------------------------------------------------------------------


async def test_axon_create_get_list_publish_events_sql(client: RunloopClient, backend) -> None:  # noqa: ANN001
    axon = await client.create_axon(name=f"client-{uuid.uuid4().hex[:6]}", metadata={"k": "v"})
    assert (await client.get_axon(axon.id)).name == axon.name
    assert axon.id in [a.id for a in (await client.list_axons(limit=5000)).axons]

    payloads = [{"n": 1, "text": "ä"}, [1, 2], "plain", 7, None]
    results = [await client.publish(axon.id, event_type="note", payload=p) for p in payloads]
    assert [r.sequence for r in results] == [1, 2, 3, 4, 5]

    first_two = await client.list_events(axon.id, limit=2)
    assert [e.sequence for e in first_two.events] == [5, 4] and first_two.has_more and first_two.total_count == 5
    next_two = await client.list_events(axon.id, limit=2, starting_after=first_two.events[-1].sequence)
    assert [e.sequence for e in next_two.events] == [3, 2]

    page = await client.list_events(axon.id, limit=10)
    assert [e.sequence for e in page.events] == [5, 4, 3, 2, 1], "newest first"
    assert [e.payload_json() for e in reversed(page.events)] == payloads
    assert page.events[-1].payload == json.dumps({"n": 1, "text": "ä"}, ensure_ascii=False)
    assert {(e.source, e.event_type) for e in page.events} == {("devbox-mcp", "note")}

    result = await client.sql_query(
        axon.id, "SELECT sequence, event_type FROM rl_axon_events WHERE sequence > ? ORDER BY sequence", [3]
    )
    assert [c.name for c in result.columns] == ["sequence", "event_type"]
    assert result.records() == [{"sequence": 4, "event_type": "note"}, {"sequence": 5, "event_type": "note"}]

    batch = await client.sql_batch(axon.id, [
        SqlStatement(sql="CREATE TABLE t (x INTEGER)"),
        {"sql": "INSERT INTO t VALUES (?)", "params": [42]},
        {"sql": "SELECT x FROM t"},
    ])
    assert batch.results[2].success is not None and batch.results[2].success.rows == [[42]]


async def test_publish_refuses_system_events_and_bad_payloads_locally(fault_proxy: FaultProxy, backend) -> None:  # noqa: ANN001
    async with client_for(fault_proxy.url, backend.api_key) as client:
        with pytest.raises(InvalidArgument) as info:
            await client.publish("axn_x", event_type="turn.started", payload={}, origin="SYSTEM_EVENT")
        assert "SYSTEM_EVENT" in str(info.value) and "AGENT_EVENT" in str(info.value)
        with pytest.raises(InvalidArgument):
            await client.publish("axn_x", event_type="e", payload=object())
        with pytest.raises(InvalidArgument):
            await client.publish("axn_x", event_type="e", payload=float("nan"))
    assert fault_proxy.requests == [], "nothing was sent"


async def test_publish_retried_after_a_lost_response_appends_once(fault_proxy: FaultProxy, backend) -> None:  # noqa: ANN001
    async with client_for(fault_proxy.url, backend.api_key) as client:
        axon = await client.create_axon()
        fault_proxy.fail(r"/publish$", status=503, times=2, forward=True, retry_after=0)
        result = await client.publish(axon.id, event_type="once", payload={"a": 1})
        page = await client.list_events(axon.id)
    assert result.sequence == 1
    assert [e.sequence for e in page.events] == [1], "three attempts, one event"
    assert len(fault_proxy.seen(r"/publish$")) == 3


async def test_sql_writes_are_sent_once_and_reads_retried(fault_proxy: FaultProxy, backend) -> None:  # noqa: ANN001
    async with client_for(fault_proxy.url, backend.api_key) as client:
        axon = await client.create_axon()
        await client.sql_query(axon.id, "CREATE TABLE t (x INTEGER)")
        fault_proxy.fail(r"/sql/query$", status=503, times=1, forward=True, retry_after=0)
        with pytest.raises(ServerError):
            await client.sql_query(axon.id, "INSERT INTO t VALUES (1)")
        fault_proxy.fail(r"/sql/batch$", status=503, times=1, forward=True, retry_after=0)
        with pytest.raises(ServerError):
            await client.sql_batch(axon.id, [{"sql": "INSERT INTO t VALUES (2)"}])
        fault_proxy.fail(r"/sql/query$", status=503, times=1, forward=True, retry_after=0)
        counted = await client.sql_query(axon.id, "SELECT count(*) AS n FROM t", read_only=True)
    assert counted.records() == [{"n": 2}], "each write applied once, though its answer was lost"
    assert len(fault_proxy.seen(r"/sql/query$")) == 4 and len(fault_proxy.seen(r"/sql/batch$")) == 1


async def test_unknown_axon_is_not_found(client: RunloopClient, backend) -> None:  # noqa: ANN001
    with pytest.raises(NotFound) as info:
        await client.get_axon("axn_missing")
    assert "axn_missing" in info.value.message
