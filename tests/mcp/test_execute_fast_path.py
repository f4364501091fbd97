"""`execute`'s fast path (the execute answer carries the whole result) against the streamed path.

The same commands run through a server whose window is long enough for any of them to finish in
it (every quick command takes the fast path, whatever the machine's load) and through one that
always streams (`fast_window=0`, today's path); the results must be identical but for the ids and
the duration. Requests are counted through a real proxy, never timed.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import anyio
import pytest
from mcp import Client
from support.faultproxy import FaultProxy, fault_proxy_fixture  # noqa: F401 - the fixture
from support.mcp_client import call_ok, make_server, structured, text_of

from mcp_server.local.executions import VIEW_MAX_BYTES
from mcp_server.local.server import RunningBackend
from mcp_server.settings import Settings
from mcp_server.tools.execute import FAST_LAST_N

pytestmark = pytest.mark.anyio

# Every quick command finishes within the window, however loaded the machine: no early answer on output.
FAST = Settings(fast_window=20.0, output_grace=20.0)
STREAMED = Settings(fast_window=0)
MIB = VIEW_MAX_BYTES
E_ACUTE = "yes é | tr -d '\\n' | head -c"  # a run of 2-byte characters, cut at a byte count


@pytest.fixture(scope="module")
def devbox_id(backend: RunningBackend) -> str:
    async def create() -> str:
        async with Client(make_server(backend), mode="auto") as client:
            return structured(await call_ok(client, "create_devbox", {"name": "fast-path"}))["id"]

    return anyio.run(create)


def comparable(result: Any) -> tuple[dict[str, Any], str]:
    """The result without what differs between two runs of one command: ids and the duration."""
    envelope = structured(result)
    for key in ("execution_id", "command_id", "duration_seconds"):
        envelope.pop(key)
    text = re.sub(r"exe_\w+", "EXE", text_of(result))
    return envelope, re.sub(r" · [\d.]+ s · ", " · T · ", text)


async def run(backend: RunningBackend, proxy: FaultProxy, settings: Settings, devbox_id: str, command: str,
              subsecond_waits: bool = True) -> tuple[Any, list[str]]:  # fmt: skip
    """The result of `execute` and the paths of the API requests it made."""
    server = make_server(backend, settings, base_url=proxy.url, subsecond_waits=subsecond_waits)
    async with Client(server, mode="auto") as client:
        with proxy.counting() as made:
            result = await call_ok(client, "execute", {"devbox_id": devbox_id, "command": command})
    return result, [r.path.rsplit("/", 1)[-1] for r in made]


# (command, which streams exceed what an execute answer carries whole)
CASES = [
    ("true", ()),
    ("exit 7", ()),
    ("echo only-stderr >&2; exit 2", ()),
    ("printf 'h\\xc3\\xa9llo w\\xc3\\xb6rld'", ()),  # multi-byte, no final newline
    ("printf 'a\\xe2\\x80\\xa8b\\xc2\\x85c\\x1cd'", ()),  # line separators JSON need not escape (U+2028, NEL)
    (f"seq 1 {FAST_LAST_N - 1}", ()),
    (f"seq 1 {FAST_LAST_N}", ()),
    (f"seq 1 {FAST_LAST_N + 1}; seq 1 5 >&2", ("stdout",)),
    (f"{E_ACUTE} {MIB - 2}", ()),  # one byte less than the cut-off ends on a whole character
    (f"{E_ACUTE} {MIB}", ()),  # exactly the cut-off
    (f"printf x; {E_ACUTE} {MIB}", ("stdout",)),  # one byte over: the cut falls on a character's start
    (f"{E_ACUTE} {MIB}; printf z", ("stdout",)),  # one byte over: the cut falls inside a character
    (f"{E_ACUTE} {MIB} >&2; printf z >&2; echo out", ("stderr",)),
]


@pytest.mark.parametrize(("command", "cut"), CASES, ids=[c for c, _ in CASES])
async def test_fast_and_streamed_paths_return_the_same_result(
    fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str, command: str, cut: tuple[str, ...]
) -> None:
    fast, fast_requests = await run(backend, fault_proxy, FAST, devbox_id, command)
    streamed, streamed_requests = await run(backend, fault_proxy, STREAMED, devbox_id, command)
    assert comparable(fast) == comparable(streamed)
    assert structured(fast)["output_complete"] and structured(fast)["status"] == "completed"
    # The fast path: one request, plus a stream for each stream the answer could not carry whole.
    assert fast_requests == ["execute", *(f"stream_{s}_updates" for s in cut)]
    # The streamed path: both streams, then a status read, unless the execute answer already said the
    # command completed (started by the devbox's fork server, a command this quick can end before it leaves).
    streams = ["execute", "stream_stderr_updates", "stream_stdout_updates"]
    assert sorted(streamed_requests) in (streams, [*streams, "wait_for_status"]), streamed_requests


async def test_a_command_still_running_after_the_window_continues_from_the_answer_exactly(
    fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str
) -> None:
    """The answer of a command still running carries its output so far; the streams continue
    from its byte length (multi-byte characters included), so nothing is lost or repeated."""
    marker = f"/tmp/fast-path-go-{id(fault_proxy)}"
    command = (f"printf 'd\\xc3\\xa9but\\n'; printf 'err \\xe2\\x82\\xac\\n' >&2; "
               f"while [ ! -e {marker} ]; do sleep 0.01; done; rm {marker}; printf 'fin \\xc3\\xa9'")  # fmt: skip
    results, streams = [], []
    for settings in (Settings(output_grace=0.5), STREAMED):
        fault_proxy.clear()
        server = make_server(backend, settings, base_url=fault_proxy.url)
        async with Client(server, mode="auto") as client, anyio.create_task_group() as tg:

            async def release() -> None:
                # Once the call follows the streams, let the command finish.
                await anyio.to_thread.run_sync(fault_proxy.wait_seen, r"/stream_stderr_updates", 1)
                await anyio.to_thread.run_sync(fault_proxy.wait_seen, r"/stream_stdout_updates", 1)
                async with Client(make_server(backend), mode="auto") as other:
                    await call_ok(other, "execute", {"devbox_id": devbox_id, "command": f"touch {marker}"})

            tg.start_soon(release)
            results.append(await call_ok(client, "execute", {"devbox_id": devbox_id, "command": command}))
        streams.append(sorted(r.target.rsplit("/", 1)[-1] for r in fault_proxy.seen(r"/stream_")))
    assert comparable(results[0]) == comparable(results[1])
    assert structured(results[0])["stdout"] == "début\nfin é" and structured(results[0])["stderr"] == "err €\n"
    # The window's answer carried the first lines: each stream started after them, in bytes.
    assert streams[0] == ["stream_stderr_updates?offset=8", "stream_stdout_updates?offset=7"]
    assert streams[1] == ["stream_stderr_updates?offset=0", "stream_stdout_updates?offset=0"]


@pytest.mark.parametrize("sleep_ms", [2, 4, 5, 6, 8, 12])
async def test_a_command_ending_at_the_end_of_the_window_loses_and_repeats_nothing(
    fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str, sleep_ms: int
) -> None:
    """Whether the command ends just before or just after the 5 ms the answer waits after its first
    output, the result is the same."""
    command = f"printf 'avant \\xc3\\xa9\\n'; echo e >&2; sleep 0.{sleep_ms:03d}; printf 'apr\\xc3\\xa8s'; exit 4"
    edge, _ = await run(backend, fault_proxy, Settings(output_grace=0.005), devbox_id, command)
    streamed, _ = await run(backend, fault_proxy, STREAMED, devbox_id, command)
    assert comparable(edge) == comparable(streamed)
    assert structured(edge)["stdout"] == "avant é\naprès" and structured(edge)["exit_status"] == 4


async def test_a_silent_command_is_awaited_in_its_one_request(
    fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str
) -> None:
    """Default settings: the embedded backend holds the execute request until the command prints
    or completes, so a silent one, however long (within the wait), is one request."""
    result, requests = await run(backend, fault_proxy, Settings(), devbox_id, "sleep 0.3; exit 5")
    assert requests == ["execute"] and structured(result)["exit_status"] == 5


async def test_cancelling_a_call_held_for_a_silent_command_kills_it(backend: RunningBackend, devbox_id: str) -> None:
    """The cancel lands while the execute request is held (no output yet, so no execution id):
    the same command_id attaches to the execution, which is then killed."""
    pid_file = f"/tmp/held-{uuid.uuid4().hex[:8]}"
    command = f"echo $$ > {pid_file}; sleep 300"
    async with Client(make_server(backend), mode="auto") as client, Client(make_server(backend), mode="auto") as other:

        async def check(probe: str) -> str:
            return structured(await call_ok(other, "execute", {"devbox_id": devbox_id, "command": probe}))["stdout"]

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "execute", {"devbox_id": devbox_id, "command": command})
                while True:  # until the command runs (it prints nothing: the call is still held)
                    if await check(f"cat {pid_file} 2>/dev/null; true"):
                        break
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        with anyio.fail_after(20):
            while True:
                if not await check(f"kill -0 $(cat {pid_file}) 2>/dev/null && echo alive; true"):
                    break
                await anyio.sleep(0.05)


async def test_against_whole_second_holds_a_fast_command_is_one_request(
    fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str
) -> None:
    """Driving the backend as Runloop's API (whole seconds only): a quick command is one request."""
    fast, requests = await run(backend, fault_proxy, Settings(fast_window=0.9), devbox_id, "echo hi", subsecond_waits=False)
    assert requests == ["execute"]
    (sent,) = [r for r in fault_proxy.requests if r.path.endswith("/execute")] or [None]
    assert sent is None or b'"optimistic_timeout":1' in sent.body.replace(b" ", b"")
    assert structured(fast)["stdout"] == "hi\n" and structured(fast)["exit_status"] == 0


async def test_against_whole_second_holds_a_longer_command_attaches_after_the_window(
    fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str
) -> None:
    """A command still running when the window ends: a second execute with the same command_id
    attaches to it (one run), and its output is followed from there, the same as streamed."""
    command = "echo start; sleep 1.5; echo end >&2"
    raced, requests = await run(backend, fault_proxy, Settings(fast_window=0.05), devbox_id, command, subsecond_waits=False)
    streamed, _ = await run(backend, fault_proxy, STREAMED, devbox_id, command)
    assert comparable(raced) == comparable(streamed)
    assert requests.count("execute") == 2
    executions = {r.body for r in fault_proxy.requests if r.path.endswith("/execute")}
    assert len(executions) == 3  # two of the raced call (the same command_id, two holds), one streamed


WHOLE_PROGRESS = Settings(fast_window=20.0, output_grace=20.0, progress_message_bytes=1 << 20)


@pytest.mark.parametrize(
    ("settings", "more"),
    [(FAST, ""), (Settings(output_grace=0.001), ""), (WHOLE_PROGRESS, f"; seq 1 {FAST_LAST_N}")],
    ids=["completes-in-the-hold", "grace-ends", "answer-cut-stream-read-from-0"],
)
async def test_the_first_output_shows_as_progress_while_the_request_is_held(
    fault_proxy: FaultProxy, backend: RunningBackend, devbox_id: str, settings: Settings, more: str
) -> None:
    """The first line reaches the client as progress from the held execute request, before the
    command completes (here it completes only once the client has seen that line); then, whether
    the same request's answer completes it, the streams follow from there, or a stream the answer
    cut is read from its start, nothing is shown twice. The line holds U+2028, which JSON need not
    escape: the answer's lines are split at newlines only."""
    first = "déb\u2028ut\n"
    marker = f"/tmp/first-line-{uuid.uuid4().hex[:8]}"
    command = f"printf 'd\\xc3\\xa9b\\xe2\\x80\\xa8ut\\n'; until [ -e {marker} ]; do sleep 0.01; done; echo fin{more}"
    stdout = first + "fin\n" + "".join(f"{i}\n" for i in range(1, FAST_LAST_N + 1) if more)
    messages: list[str] = []
    server = make_server(backend, settings, base_url=fault_proxy.url)
    async with Client(server, mode="auto") as client, Client(make_server(backend), mode="auto") as other:

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            messages.append(message or "")
            if len(messages) == 1:
                await call_ok(other, "execute", {"devbox_id": devbox_id, "command": f"touch {marker}"})

        with fault_proxy.counting() as made:
            result = await call_ok(
                client, "execute", {"devbox_id": devbox_id, "command": command}, progress_callback=on_progress
            )
    assert structured(result)["exit_status"] == 0 and structured(result)["output_complete"]
    paths = [r.path.rsplit("/", 1)[-1] for r in made]
    if settings is FAST:  # the answer completes it: the rest is in the result, not in progress
        assert messages == [first] and paths == ["execute"]
    else:  # the streams follow from the answer's end, or (the answer cut stdout) from its start
        assert messages[0] == first and "".join(messages) == stdout
    if more:
        assert paths == ["execute", "stream_stdout_updates"]
    else:
        assert structured(result)["stdout"] == stdout
