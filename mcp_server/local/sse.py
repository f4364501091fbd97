"""Server-sent events as the Runloop SDK parses them.

Every event is one `data: <json>` line and a blank line; keep-alives are `:` comment lines
(the SDK JSON-decodes every dispatched event, so keep-alives must not be events). An
`event: error` carries `{"code", "message"}` and makes the SDK raise that status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse

KEEPALIVE_SECONDS = 15.0
KEEPALIVE = b": keep-alive\n\n"


def encode_event(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def encode_error(code: int, message: str) -> bytes:
    return b"event: error\n" + encode_event({"code": code, "message": message})


async def wait_or_timeout(wait: Callable[[], Awaitable[object]], seconds: float) -> bool:
    """Await `wait()` for at most `seconds`; False when the time ran out.

    Producers call this between events and yield `KEEPALIVE` on False. (A keep-alive
    wrapper around the generator would need a task group spanning `yield`, which is unsafe
    when Starlette abandons the generator on disconnect.)
    """
    with anyio.move_on_after(seconds):
        await wait()
        return True
    return False


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    """A streaming response for already-encoded events (keep-alives included), unbuffered by proxies."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
