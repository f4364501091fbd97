"""execute / stream_logs / kill_execution / send_stdin through a real MCP client (both eras),
against the embedded backend with real sandboxes."""

from __future__ import annotations

import re
import uuid

import anyio
import pytest
from mcp import Client
from support.faultproxy import FaultProxy
from support.mcp_client import call_error, call_ok, make_server, structured, text_of

from mcp_server.local.server import RunningBackend
from mcp_server.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def devbox_id(backend: RunningBackend) -> str:
    async def create() -> str:
        async with Client(make_server(backend), mode="auto") as client:
            return structured(await call_ok(client, "create_devbox", {"name": "exec"}))["id"]

    return anyio.run(create)


def stdout_section(text: str) -> str:
    """The stdout part of an execute/stream_logs text result."""
    match = re.search(r"--- stdout ---\n(.*?)(?=--- stderr ---\n|\Z)", text, re.S)
    return match.group(1) if match else ""


class Progress:
    def __init__(self) -> None:
        self.values: list[float] = []
        self.messages: list[str] = []
        self.changed = anyio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.values.append(progress)
        self.messages.append(message or "")
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, needle: str) -> None:
        while needle not in "".join(self.messages):
            await self.changed.wait()


async def test_progress_carries_the_output_in_order_and_the_result_has_everything(mcp: Client, devbox_id: str) -> None:
    progress = Progress()
    command = "for i in $(seq 1 15); do echo line $i; sleep 0.03; done; echo oops >&2; exit 3"
    result = await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": command}, progress_callback=progress)
    expected = "".join(f"line {i}\n" for i in range(1, 16))
    envelope = structured(result)
    assert envelope["status"] == "completed" and envelope["exit_status"] == 3 and envelope["output_complete"]
    assert envelope["stdout_offset"] == len(expected) and envelope["stderr_offset"] == len("oops\n")
    assert envelope["duration_seconds"] > 0
    text = text_of(result)
    assert text.startswith("exit 3")
    assert stdout_section(text) == expected
    assert "--- stderr ---\noops\n" in text
    # Progress: every byte of output, in order, and progress counts bytes so far.
    joined = "".join(progress.messages)
    assert joined.replace("oops\n", "", 1) == expected
    assert progress.values == sorted(progress.values)
    assert progress.values[-1] == len(expected) + len("oops\n")
    # The structured content is the whole result: the same output as the text, as strings.
    assert envelope["stdout"] == expected and envelope["stderr"] == "oops\n"


async def test_output_printed_just_before_exit_is_not_lost(mcp: Client, devbox_id: str) -> None:
    command = "head -c 300000 /dev/zero | tr '\\0' 'a'; echo; echo LAST-LINE"
    result = await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": command})
    envelope = structured(result)
    assert envelope["exit_status"] == 0
    assert envelope["stdout_offset"] == 300000 + 1 + len("LAST-LINE\n")
    assert text_of(result).endswith("LAST-LINE\n")


async def test_big_output_is_shaped_and_the_marker_offset_reads_the_omitted_part(backend: RunningBackend, devbox_id: str) -> None:
    progress = Progress()
    async with Client(make_server(backend, Settings(output_budget=4096)), mode="auto") as client:
        result = await call_ok(client, "execute", {"devbox_id": devbox_id, "command": "seq 1 20000"},
                               progress_callback=progress)
        assert progress.messages and all(len(m.encode()) <= 1024 for m in progress.messages)
        text = text_of(result)
        envelope = structured(result)
        full = "".join(f"{i}\n" for i in range(1, 20001))
        assert len(text.encode()) <= 4096 + 300
        assert envelope["omitted_bytes"] > 0 and envelope["stdout_offset"] == len(full)
        offset = int(re.search(r"stdout_offset=(\d+)", text).group(1))
        shown_head = stdout_section(text).split("[…")[0]
        assert full.startswith(shown_head) and len(shown_head) == offset
        # The structured stdout is the text's stdout: same head, marker and tail.
        assert envelope["stdout"] == stdout_section(text) and envelope["stdout"].endswith("20000\n")
        assert f"stream_logs stdout_offset={offset}" in envelope["stdout"] and envelope["stderr"] == ""
        more = await call_ok(client, "stream_logs", {
            "devbox_id": devbox_id, "execution_id": envelope["execution_id"], "stdout_offset": offset,
            "stderr_offset": 0,
        })
        assert stdout_section(text_of(more)).startswith(full[offset:offset + 100])


async def test_wait_budget_hands_off_and_stream_logs_continues_exactly(mcp: Client, devbox_id: str) -> None:
    command = "for i in $(seq 1 30); do echo tick $i; sleep 0.1; done"
    first = await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": command, "wait_seconds": 0.8})
    envelope = structured(first)
    assert envelope["status"] == "running" and not envelope["output_complete"]
    assert "stream_logs" in envelope["hint"] and "stream_logs" in text_of(first)
    got = stdout_section(text_of(first))
    assert len(got) == envelope["stdout_offset"] and envelope["stdout"] == got
    offsets = {"stdout_offset": envelope["stdout_offset"], "stderr_offset": envelope["stderr_offset"]}
    rounds = 0
    while True:
        rounds += 1
        more = await call_ok(mcp, "stream_logs", {
            "devbox_id": devbox_id, "execution_id": envelope["execution_id"], "wait_seconds": 1, **offsets,
        })
        m = structured(more)
        assert m["stdout"] == stdout_section(text_of(more))
        got += m["stdout"]
        offsets = {"stdout_offset": m["stdout_offset"], "stderr_offset": m["stderr_offset"]}
        if m["stopped_because"] == "completed":
            assert m["exit_status"] == 0
            break
        assert rounds < 30
    assert got == "".join(f"tick {i}\n" for i in range(1, 31))


async def test_stream_logs_until_returns_the_matching_lines(mcp: Client, devbox_id: str) -> None:
    command = "for i in $(seq 1 50); do echo step $i; sleep 0.05; done; echo 'server READY on 8080'; sleep 30"
    started = structured(await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": command, "wait_seconds": 0}))
    found = await call_ok(mcp, "stream_logs", {
        "devbox_id": devbox_id, "execution_id": started["execution_id"], "until": r"READY on \d+", "wait_seconds": 20,
    })
    m = structured(found)
    assert m["stopped_because"] == "matched" and m["matches"] == ["server READY on 8080"]
    assert m["status"] == "running"
    await call_ok(mcp, "kill_execution", {"devbox_id": devbox_id, "execution_id": started["execution_id"]})


async def test_a_huge_matching_line_is_returned_cut_around_the_match(mcp: Client, devbox_id: str) -> None:
    command = "printf '%050000dREADY%050000d\\n' 0 0"
    started = structured(await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": command}))
    found = await call_ok(mcp, "stream_logs", {
        "devbox_id": devbox_id, "execution_id": started["execution_id"], "until": "READY", "wait_seconds": 20,
    })
    (line,) = structured(found)["matches"]
    assert "READY" in line and line.startswith("…") and line.endswith("…") and len(line) < 1000
    assert len(text_of(found).encode()) < 40_000  # the 16 KB output budget, plus the cut line once


async def test_cancelling_execute_kills_the_process_group_in_the_devbox(mcp: Client, devbox_id: str) -> None:
    tag = uuid.uuid4().hex[:8]
    command = f"sleep 300 & echo $! > /tmp/child-{tag}; echo $$ > /tmp/parent-{tag}; echo started; wait"
    progress = Progress()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await mcp.call_tool("execute", {"devbox_id": devbox_id, "command": command}, progress_callback=progress)

            tg.start_soon(run)
            await progress.wait_for("started")
            tg.cancel_scope.cancel()
    check = f"for f in /tmp/child-{tag} /tmp/parent-{tag}; do kill -0 $(cat $f) 2>/dev/null && echo alive; done; true"
    with anyio.fail_after(20):
        while True:
            result = await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": check})
            if "alive" not in stdout_section(text_of(result)):
                break
            await anyio.sleep(0.1)


async def test_command_id_runs_the_command_once(mcp: Client, devbox_id: str) -> None:
    tag = uuid.uuid4().hex[:8]
    args = {"devbox_id": devbox_id, "command": f"echo run >> /tmp/once-{tag}; echo hello", "command_id": f"cmd-{tag}"}
    first = structured(await call_ok(mcp, "execute", args))
    second = structured(await call_ok(mcp, "execute", args))
    assert first["execution_id"] == second["execution_id"]
    assert second["exit_status"] == 0 and second["stdout_offset"] == len("hello\n")
    count = await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": f"wc -l < /tmp/once-{tag}"})
    assert stdout_section(text_of(count)).strip() == "1"


async def test_cut_sse_connections_lose_and_repeat_nothing(fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str) -> None:
    # The backend sends what has accumulated as one event (up to 256 KB), so the command writes in
    # small batches: every connection then carries whole events before the proxy cuts it.
    fault_proxy.cut(r"/stream_std(out|err)_updates", after_bytes=4000)
    server = make_server(backend, Settings(output_budget=1 << 20), base_url=fault_proxy.url)
    command = (
        "for b in $(seq 0 39); do for i in $(seq 1 10); do n=$((b*10+i)); "
        "echo \"row $n ----------------------------------------\"; echo \"err $n\" >&2; done; sleep 0.05; done"
    )
    async with Client(server, mode="auto") as client:
        progress = Progress()
        result = await call_ok(client, "execute", {"devbox_id": devbox_id, "command": command}, progress_callback=progress)
    text = text_of(result)
    expected_out = "".join(f"row {i} ----------------------------------------\n" for i in range(1, 401))
    expected_err = "".join(f"err {i}\n" for i in range(1, 401))
    assert stdout_section(text) == expected_out
    assert text.split("--- stderr ---\n", 1)[1] == expected_err
    assert structured(result)["stdout_offset"] == len(expected_out)
    assert len(fault_proxy.seen(r"/stream_stdout_updates")) > 5


async def test_5xx_and_429_are_retried_without_running_twice(fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str) -> None:
    tag = uuid.uuid4().hex[:8]
    fault_proxy.fail(r"/execute(\?|$)", status=503, times=1, forward=True, retry_after=0)
    fault_proxy.fail(r"/execute(\?|$)", status=429, times=1, forward=True, retry_after=0)
    fault_proxy.fail(r"/stream_stdout_updates", status=502, times=1, retry_after=0)
    server = make_server(backend, base_url=fault_proxy.url)
    async with Client(server, mode="legacy") as client:
        result = await call_ok(client, "execute", {"devbox_id": devbox_id, "command": f"echo x >> /tmp/retry-{tag}; echo done"})
        assert structured(result)["exit_status"] == 0 and stdout_section(text_of(result)) == "done\n"
        assert len(fault_proxy.seen(r"/execute(\?|$)")) == 3
        count = await call_ok(client, "execute", {"devbox_id": devbox_id, "command": f"wc -l < /tmp/retry-{tag}"})
    assert stdout_section(text_of(count)).strip() == "1"


async def test_send_stdin_reaches_a_command_started_with_attach_stdin(mcp: Client, devbox_id: str) -> None:
    started = structured(await call_ok(mcp, "execute", {
        "devbox_id": devbox_id, "command": "read name; echo hello $name", "attach_stdin": True, "wait_seconds": 0,
    }))
    sent = structured(await call_ok(mcp, "send_stdin", {
        "devbox_id": devbox_id, "execution_id": started["execution_id"], "text": "world\n",
    }))
    assert sent["success"]
    done = await call_ok(mcp, "stream_logs", {"devbox_id": devbox_id, "execution_id": started["execution_id"], "wait_seconds": 20})
    assert structured(done)["stopped_because"] == "completed"
    assert stdout_section(text_of(done)) == "hello world\n"


async def test_kill_execution_stops_a_running_command(mcp: Client, devbox_id: str) -> None:
    started = structured(await call_ok(mcp, "execute", {"devbox_id": devbox_id, "command": "sleep 300", "wait_seconds": 0}))
    killed = structured(await call_ok(mcp, "kill_execution", {"devbox_id": devbox_id, "execution_id": started["execution_id"]}))
    assert killed["execution_id"] == started["execution_id"]
    after = await call_ok(mcp, "stream_logs", {"devbox_id": devbox_id, "execution_id": started["execution_id"], "wait_seconds": 20})
    assert structured(after)["status"] == "completed"


async def test_an_unknown_execution_gets_one_hint_that_can_be_followed(mcp: Client, devbox_id: str) -> None:
    # Executions cannot be listed: the hint says where their ids come from, once.
    for tool, extra in (("stream_logs", {"wait_seconds": 5}), ("kill_execution", {}), ("send_stdin", {"text": "x"})):
        message = await call_error(mcp, tool, {"devbox_id": devbox_id, "execution_id": "exe_nope", **extra})
        assert "execution 'exe_nope' not found" in message, message
        assert message.count("use the id returned by the call that started the command") == 1, message
        assert "list" not in message and "(" not in message.split("not found", 1)[1], message


async def test_execute_bad_input_gives_clear_errors(mcp: Client, devbox_id: str) -> None:
    message = await call_error(mcp, "execute", {"devbox_id": "dbx_nope", "command": "true"})
    assert "dbx_nope" in message and "404" in message
    assert message.endswith("devbox 'dbx_nope' not found; list devboxes to see which ids exist"), message  # one hint
    message = await call_error(mcp, "execute", {"devbox_id": devbox_id, "command": ""})
    assert "command" in message
    message = await call_error(mcp, "execute", {"devbox_id": devbox_id, "command": "true", "wait_seconds": -1})
    assert "wait_seconds" in message
    message = await call_error(mcp, "stream_logs", {"devbox_id": devbox_id, "execution_id": "exe_nope"})
    assert "exe_nope" in message
    message = await call_error(mcp, "stream_logs", {"devbox_id": devbox_id, "execution_id": "x", "until": "("})
    assert "regular expression" in message
    message = await call_error(mcp, "kill_execution", {"devbox_id": devbox_id, "execution_id": "exe_nope"})
    assert "exe_nope" in message
    message = await call_error(mcp, "send_stdin", {"devbox_id": devbox_id, "execution_id": "exe_nope"})
    assert "exactly one of text or signal" in message
    message = await call_error(mcp, "execute", {"devbox_id": devbox_id, "command": "cat", "attach_stdin": True, "command_id": "x"})
    assert "command_id" in message and "attach_stdin" in message


async def test_cut_mid_event_on_bursty_output_loses_and_repeats_nothing(
    fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str
) -> None:
    fault_proxy.cut(r"/stream_std(out|err)_updates", after_bytes=2048, after_first_event=True)
    server = make_server(backend, Settings(output_budget=1 << 21), base_url=fault_proxy.url)
    command = "seq 1 50000; seq 1 20000 >&2; sleep 0.2; seq 50001 60000"
    async with Client(server, mode="legacy") as client:
        result = await call_ok(client, "execute", {"devbox_id": devbox_id, "command": command})
    text = text_of(result)
    assert stdout_section(text) == "".join(f"{i}\n" for i in range(1, 60001))
    assert text.split("--- stderr ---\n", 1)[1] == "".join(f"{i}\n" for i in range(1, 20001))
    assert len(fault_proxy.seen(r"/stream_stdout_updates")) > 1


async def test_cancel_while_the_execute_request_is_in_flight_leaves_no_orphan(
    fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str
) -> None:
    """The cancel lands before the execution id is known: the tool asks again with the same
    command_id (which never starts a second run) and kills what that returns."""
    from mcp_server.runloop import RunloopClient

    fault_proxy.delay(r"/execute(\?|$)", seconds=1.5, times=1)
    command_id = f"inflight-{uuid.uuid4().hex[:8]}"
    command = "sleep 300"
    async with Client(make_server(backend, base_url=fault_proxy.url), mode="auto") as client:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await client.call_tool("execute", {"devbox_id": devbox_id, "command": command, "command_id": command_id})

                tg.start_soon(run)
                while True:  # the proxy runs on its own thread: poll its request log
                    if fault_proxy.seen(r"/execute(\?|$)"):
                        break
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    async with RunloopClient(backend.base_url, backend.api_key) as direct:
        same = await direct.execute(devbox_id, command, command_id=command_id, optimistic_timeout=0)
        done = await direct.wait_for_execution(devbox_id, same.execution_id, timeout_seconds=20)
    assert done.status == "completed"  # killed, not left sleeping for 300 s
