"""How many API requests each tool call makes, counted through a real proxy (never timed).

Against Runloop's cloud every request is an internet round trip, so each tool's requests are
pinned here, one by one: a change that adds one fails this test and has to say why. Each entry
is `(method, path)` with ids replaced by their kind (`{devbox}`, `{execution}`, `{axon}`).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from mcp import Client
from support.faultproxy import FaultProxy, fault_proxy_fixture  # noqa: F401 - the fixture
from support.mcp_client import call_ok, make_server, structured

from mcp_server.local.server import RunningBackend
from mcp_server.settings import Settings

pytestmark = pytest.mark.anyio

# Quick commands finish within the window on any load: no answer comes early on output.
SETTINGS = Settings(fast_window=20.0, output_grace=20.0)
IDS = [(re.compile(r"dbx_\w+"), "{devbox}"), (re.compile(r"exe_\w+"), "{execution}"), (re.compile(r"axn_\w+"), "{axon}")]


def shape(method: str, path: str) -> str:
    for rx, name in IDS:
        path = rx.sub(name, path)
    return f"{method} {path}"


@pytest.fixture
async def counted(fault_proxy: FaultProxy, backend: RunningBackend, request: pytest.FixtureRequest):  # noqa: ANN201
    """Call a tool; returns its result and the requests it made, in the order the proxy saw them.
    The server's settings: SETTINGS, or the test's indirect parameter."""
    settings = getattr(request, "param", SETTINGS)
    async with Client(make_server(backend, settings, base_url=fault_proxy.url), mode="auto") as client:

        async def call(tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
            with fault_proxy.counting() as made:
                result = await call_ok(client, tool, args)
            return structured(result), [shape(r.method, r.path) for r in made]

        yield call


DEVBOX = "/v1/devboxes/{devbox}"
EXECUTION = DEVBOX + "/executions/{execution}"
STREAMS = [f"GET {EXECUTION}/stream_stderr_updates", f"GET {EXECUTION}/stream_stdout_updates"]


async def test_every_tool_makes_only_the_requests_it_needs(counted) -> None:  # noqa: ANN001
    created, requests = await counted("create_devbox", {"name": "counted"})
    # The create answer is where the status watch starts: no read of the devbox just created.
    assert requests[0] == "POST /v1/devboxes" and set(requests[1:]) == {f"POST {DEVBOX}/wait_for_status"}
    box = created["id"]
    for tool, args, want in [
        ("get_devbox", {"devbox_id": box}, [f"GET {DEVBOX}", f"GET {DEVBOX}/usage"]),
        ("list_devboxes", {"limit": 5}, ["GET /v1/devboxes"]),
        ("write_file", {"devbox_id": box, "path": "n.txt", "contents": "a\n"}, [f"POST {DEVBOX}/write_file_contents"]),
        ("read_file", {"devbox_id": box, "path": "n.txt"}, [f"POST {DEVBOX}/download_file"]),
        # A quick command: its answer carries exit status and output.
        ("execute", {"devbox_id": box, "command": "echo hi; echo err >&2; exit 3"}, [f"POST {DEVBOX}/execute"]),
    ]:
        _, requests = await counted(tool, args)
        assert requests == want, (tool, requests)

    # No time to wait: the answer is the state (no read after it).
    slow, requests = await counted("execute", {"devbox_id": box, "command": "sleep 30", "wait_seconds": 0})
    assert requests == [f"POST {DEVBOX}/execute"] and slow["status"] == "running"
    execution = {"devbox_id": box, "execution_id": slow["execution_id"]}
    _, requests = await counted("stream_logs", {**execution, "wait_seconds": 0})
    assert requests == [f"GET {EXECUTION}"]
    _, requests = await counted("kill_execution", execution)
    assert requests == [f"POST {EXECUTION}/kill"]
    # Following output: both streams, then the exit status (the streams do not carry it).
    _, requests = await counted("stream_logs", execution)
    assert sorted(requests) == [*STREAMS, f"POST {EXECUTION}/wait_for_status"]

    reader, requests = await counted("execute", {"devbox_id": box, "command": "cat", "attach_stdin": True, "wait_seconds": 0})
    assert requests == [f"POST {DEVBOX}/execute_async"]
    _, requests = await counted("send_stdin", {"devbox_id": box, "execution_id": reader["execution_id"], "signal": "EOF"})
    assert requests == [f"POST {EXECUTION}/send_std_in"]

    axon, requests = await counted("create_axon", {"name": "counted"})
    assert requests == ["POST /v1/axons"]
    for tool, args, want in [
        ("list_axons", {"limit": 5}, ["GET /v1/axons"]),
        ("publish_event", {"axon_id": axon["id"], "event_type": "n", "payload": {"a": 1}}, ["POST /v1/axons/{axon}/publish"]),
        ("sql_query", {"axon_id": axon["id"], "sql": "SELECT 1"}, ["POST /v1/axons/{axon}/sql/query"]),
        ("sql_batch", {"axon_id": axon["id"], "statements": [{"sql": "SELECT 1"}]}, ["POST /v1/axons/{axon}/sql/batch"]),
        ("suspend_devbox", {"devbox_id": box}, [f"POST {DEVBOX}/suspend"]),
    ]:
        _, requests = await counted(tool, args)
        assert requests == want, (tool, requests)
    _, requests = await counted("resume_devbox", {"devbox_id": box})
    assert requests[0] == f"POST {DEVBOX}/resume" and set(requests[1:]) <= {f"POST {DEVBOX}/wait_for_status"}
    _, requests = await counted("shutdown_devbox", {"devbox_id": box})
    assert requests == [f"POST {DEVBOX}/shutdown"]


@pytest.mark.parametrize("counted", [Settings()], indirect=True, ids=["default settings"])
async def test_a_longer_command_streams_once_and_reads_its_exit_status_once(counted) -> None:  # noqa: ANN001
    created, _ = await counted("create_devbox", {"name": "counted-long"})
    result, requests = await counted(
        "execute", {"devbox_id": created["id"], "command": "echo start; sleep 0.3; echo end"}
    )
    assert result["stdout"] == "start\nend\n"
    # Held until the first line (the answer carries it), then the rest from the streams.
    assert requests[0] == f"POST {DEVBOX}/execute" and sorted(requests[1:]) == [*STREAMS, f"POST {EXECUTION}/wait_for_status"]
    await counted("shutdown_devbox", {"devbox_id": created["id"]})
