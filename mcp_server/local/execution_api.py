"""Execution routes: `/v1/devboxes/{id}/execute*` and `/v1/devboxes/{id}/executions/{execution_id}/...`.

Request parsing and rules live here; `executions.ExecutionManager` does the work.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .errors import ApiError
from .executions import STATUSES, Execution, ExecutionManager
from .http import idempotency_key, parse_body, query_int
from .output import stream_output
from .sse import sse_response

MAX_WAIT_SECONDS = 25.0  # the long-poll limit of executions (the SDK's EXEC_LONG_POLL_SERVER_MAX_SECONDS)
MAX_LAST_N = 10_000_000
# On execute answers: this server takes `optimistic_timeout` in fractions of a second and
# `output_grace_seconds` (our extensions); a client that learns it can use them.
SUBSECOND_HEADER = {"x-devbox-mcp-subsecond-waits": "1"}
# Also ours: an execute request that accepts this gets its held answer as lines of views, one as
# soon as the command first prints (if it still runs then), the last one the answer itself.
NDJSON = "application/x-ndjson"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `shell_name` from older SDKs


class ExecuteAsyncBody(_Body):
    published_schema: ClassVar[str] = "DevboxCreateExecutionParameters"

    command: StrictStr
    attach_stdin: StrictBool | None = None


class ExecuteBody(_Body):
    published_schema: ClassVar[str] = "DevboxStartExecutionParameters"

    command: StrictStr
    command_id: StrictStr | None = None
    # Our extensions: fractions of a second too (validation.py); and `output_grace_seconds`: answer
    # once the command has printed and that much more time passed without it completing
    # (`ExecutionManager.wait_optimistic`).
    optimistic_timeout: StrictInt | StrictFloat | None = None
    output_grace_seconds: StrictInt | StrictFloat | None = None


class ExecuteSyncBody(_Body):
    published_schema: ClassVar[str] = "DevboxCreateExecutionParameters"

    command: StrictStr


class WaitBody(_Body):
    published_schema: ClassVar[str] = "DevboxWaitForCommandRequest"

    statuses: list[StrictStr]
    timeout_seconds: StrictInt | StrictFloat | None = None


class KillBody(_Body):
    published_schema: ClassVar[str] = "DevboxKillExecutionRequest"

    kill_process_group: StrictBool | None = None


class StdinBody(_Body):
    published_schema: ClassVar[str] = "DevboxSendStdInRequest"

    text: StrictStr | None = None
    signal: StrictStr | None = None


def _check_command(command: str) -> str:
    if not command.strip():
        raise ApiError(400, "command must not be empty: give the shell command to run, e.g. \"ls -la\"")
    if "\0" in command:
        raise ApiError(400, "command contains a NUL character, which a shell command cannot hold")
    return command


def _seconds(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise ApiError(400, f"{name} must be between 0 and {MAX_WAIT_SECONDS:g} seconds, got {value}")
    return float(value)


def _last_n(request: Request) -> int:
    return query_int(request, "last_n", 100, lo=0, hi=MAX_LAST_N) or 0


def _offset(request: Request) -> int:
    raw = request.query_params.get("offset")
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"offset must be a byte offset (a whole number ≥ 0), got {raw!r}") from None
    if value < 0:
        raise ApiError(400, f"offset must be a byte offset (a whole number ≥ 0), got {value}")
    return value


def _executions(request: Request) -> ExecutionManager:
    return request.app.state.executions


async def execute_async(request: Request) -> Response:
    manager = _executions(request)
    devbox_id = request.path_params["id"]
    body = await parse_body(request, ExecuteAsyncBody)
    command = _check_command(body.command)
    last_n = _last_n(request)

    async def start():
        return await manager.start(devbox_id, command, attach_stdin=bool(body.attach_stdin))

    ex = await manager.idempotency.run(idempotency_key(request, f"execute_async:{devbox_id}"), start)
    return JSONResponse(manager.view(ex, last_n))


async def execute(request: Request) -> Response:
    manager = _executions(request)
    devbox_id = request.path_params["id"]
    body = await parse_body(request, ExecuteBody)
    command = _check_command(body.command)
    last_n = _last_n(request)
    optimistic = _seconds("optimistic_timeout", body.optimistic_timeout, MAX_WAIT_SECONDS)
    grace = None if body.output_grace_seconds is None else _seconds("output_grace_seconds", body.output_grace_seconds, 0)
    if body.command_id is not None and not body.command_id.strip():
        raise ApiError(400, "command_id must not be empty; send a fresh UUIDv7, or leave it out")
    if body.command_id is not None:
        ex = await manager.start(devbox_id, command, command_id=body.command_id)
    else:  # no command_id (not the SDK's way): the idempotency header still guards retries

        async def start():
            return await manager.start(devbox_id, command)

        ex = await manager.idempotency.run(idempotency_key(request, f"execute:{devbox_id}"), start)
    if NDJSON in request.headers.get("accept", ""):
        return await _held_views(manager, ex, optimistic, grace, last_n)
    await manager.wait_optimistic(ex, optimistic, output_grace=grace)
    return JSONResponse(manager.view(ex, last_n), headers=SUBSECOND_HEADER)


async def _held_views(manager: ExecutionManager, ex: Execution, seconds: float, grace: float | None, last_n: int) -> Response:
    """The held execute answer as lines: the view of the command when it first prints (if it is
    still running then), so a client can show that output without waiting for the hold to end;
    then the view at the end of the hold, the same as the one-object answer.

    Nothing is sent before the first line: a command that completes (or stays silent) within the
    hold gets its one line as a whole body, sent at once with the headers (no chunks, no second
    wake-up of the client for the headers alone: the quick command's round trip).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    printed = await manager.wait_for_output(ex, seconds)
    first = orjson.dumps(manager.view(ex, last_n)) + b"\n"
    if not printed or ex.finished:
        return Response(first, media_type=NDJSON, headers=SUBSECOND_HEADER)

    async def lines() -> AsyncIterator[bytes]:
        yield first
        await manager.wait_optimistic(ex, max(0.0, deadline - loop.time()), output_grace=grace)
        yield orjson.dumps(manager.view(ex, last_n)) + b"\n"

    return StreamingResponse(lines(), media_type=NDJSON, headers=SUBSECOND_HEADER)


async def execute_sync(request: Request) -> Response:
    manager = _executions(request)
    devbox_id = request.path_params["id"]
    body = await parse_body(request, ExecuteSyncBody)
    command = _check_command(body.command)

    async def run():
        ex = await manager.start(devbox_id, command)
        await ex.done.wait()
        return ex

    # The cache keeps the execution, not its view: views hold up to 8 MiB of output, and the
    # cache keeps thousands of entries for an hour.
    ex = await manager.idempotency.run(idempotency_key(request, f"execute_sync:{devbox_id}"), run)
    return JSONResponse(manager.sync_view(ex))


def _lookup(request: Request) -> Execution:
    return _executions(request).get(request.path_params["devbox_id"], request.path_params["execution_id"])


async def get_execution(request: Request) -> Response:
    manager = _executions(request)
    last_n = _last_n(request)
    return JSONResponse(manager.view(_lookup(request), last_n))


async def wait_for_status(request: Request) -> Response:
    manager = _executions(request)
    ex = _lookup(request)
    body = await parse_body(request, WaitBody)
    last_n = _last_n(request)
    if not body.statuses:
        raise ApiError(400, "statuses must name at least one of: queued, running, completed")
    unknown = [s for s in body.statuses if s not in STATUSES]
    if unknown:
        raise ApiError(400, f"unknown execution status {unknown[0]!r}; use queued, running or completed")
    timeout = _seconds("timeout_seconds", body.timeout_seconds, MAX_WAIT_SECONDS)
    if not await manager.wait_for(ex, body.statuses, timeout):
        raise ApiError(
            408,
            f"execution {ex.id} is still {ex.record.status} after {timeout:g} s; call wait_for_status again",
        )
    return JSONResponse(manager.view(ex, last_n))


async def kill(request: Request) -> Response:
    manager = _executions(request)
    ex = _lookup(request)
    body = await parse_body(request, KillBody)
    last_n = _last_n(request)
    await manager.kill(ex, process_group=bool(body.kill_process_group))
    return JSONResponse(manager.view(ex, last_n))


async def send_std_in(request: Request) -> Response:
    manager = _executions(request)
    ex = _lookup(request)
    body = await parse_body(request, StdinBody)
    if (body.text is None) == (body.signal is None):
        raise ApiError(400, 'send exactly one of "text" (the input) or "signal" ("EOF" or "INTERRUPT")')
    if body.text is not None and body.text == "":
        raise ApiError(400, 'text must not be empty; to close stdin send {"signal": "EOF"}')
    if body.signal is not None and body.signal not in ("EOF", "INTERRUPT"):
        raise ApiError(400, f'unknown signal {body.signal!r}; use "EOF" (close stdin) or "INTERRUPT" (SIGINT)')
    await manager.send_stdin(ex, text=body.text, signal_name=body.signal)
    return JSONResponse({"devbox_id": ex.record.devbox_id, "execution_id": ex.id, "success": True})


async def _stream_updates(request: Request, stream: Literal["stdout", "stderr"]) -> Response:
    ex = _lookup(request)
    offset = _offset(request)
    path = ex.path(stream)
    size = os.stat(path).st_size
    if offset > size:
        raise ApiError(
            400,
            f"offset {offset} is past the end of the {stream} of execution {ex.id} ({size} bytes so far); "
            "resume from the offset of the last chunk received plus its length in bytes",
        )
    return sse_response(stream_output(ex.source(stream), offset, _executions(request).watcher))


async def stream_stdout_updates(request: Request) -> Response:
    return await _stream_updates(request, "stdout")


async def stream_stderr_updates(request: Request) -> Response:
    return await _stream_updates(request, "stderr")


EXECUTION = "/v1/devboxes/{devbox_id}/executions/{execution_id}"
ROUTES = [
    Route("/v1/devboxes/{id}/execute_async", execute_async, methods=["POST"]),
    Route("/v1/devboxes/{id}/execute", execute, methods=["POST"]),
    Route("/v1/devboxes/{id}/execute_sync", execute_sync, methods=["POST"]),
    Route(EXECUTION, get_execution, methods=["GET"]),
    Route(EXECUTION + "/wait_for_status", wait_for_status, methods=["POST"]),
    Route(EXECUTION + "/kill", kill, methods=["POST"]),
    Route(EXECUTION + "/send_std_in", send_std_in, methods=["POST"]),
    Route(EXECUTION + "/stream_stdout_updates", stream_stdout_updates, methods=["GET"]),
    Route(EXECUTION + "/stream_stderr_updates", stream_stderr_updates, methods=["GET"]),
]
