"""Server-sent events as the Runloop SDK parses them.

Every event is one `data: <json>` line and a blank line; keep-alives are `:` comment lines
(the SDK JSON-decodes every dispatched event, so keep-alives must not be events). An
`event: error` carries `{"code", "message"}` and makes the SDK raise that status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse

KEEPALIVE_SECONDS = 15.0
KEEPALIVE = b": keep-alive\n\n"


def encode_event(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def encode_error(code: int, message: str) -> bytes:
    return b"event: error\n" + encode_event({"code": code, "message": message})


async def with_keepalives(
    events: AsyncIterator[bytes], interval: float = KEEPALIVE_SECONDS
) -> AsyncIterator[bytes]:
    """Yield encoded events from `events`, and a keep-alive whenever none came for `interval` seconds."""
    send, receive = anyio.create_memory_object_stream[bytes | None](0)

    async def pump() -> None:
        async with send:
            async for chunk in events:
                await send.send(chunk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        async with receive:
            while True:
                with anyio.move_on_after(interval) as scope:
                    try:
                        chunk = await receive.receive()
                    except anyio.EndOfStream:
                        break
                if scope.cancelled_caught:
                    yield KEEPALIVE
                    continue
                if chunk is not None:
                    yield chunk
        tg.cancel_scope.cancel()


def sse_response(events: AsyncIterator[bytes], interval: float = KEEPALIVE_SECONDS) -> StreamingResponse:
    """A streaming response for already-encoded events, with keep-alives and no proxy buffering."""
    return StreamingResponse(
        with_keepalives(events, interval),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
