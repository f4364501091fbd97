"""Resumable server-sent-event streams: execution output and axon subscriptions.

Both loop over connections: when one drops (cut, reset, client read timeout, HTTP 408 or an
`event: error` with code 408, 429/5xx), they reconnect from where the caller's data ends:
- execution output at `initial offset + UTF-8 bytes received` (never the chunk's own `offset`,
  whose start/end meaning is ambiguous), so no byte is lost or repeated;
- axon events after the last sequence seen (events at or below it are dropped if replayed).

A partly received event is never delivered (the SSE decoder dispatches only on the blank line
that ends an event), so counting bytes of delivered chunks is exact. Consecutive failures without
progress are bounded by the retry policy; idle closes (408, read timeout) are the protocol's
normal rhythm and never end a stream; a permanent error (401, 404, ...) is raised at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import anyio
import httpx
from httpx_sse import ServerSentEvent
from pydantic import ValidationError

from .errors import ApiStatusError, StreamError, error_for_status
from .models import AxonEventView, OutputChunk
from .retry import RetryPolicy, is_retryable_status

log = logging.getLogger("devbox_mcp.runloop")

# Opens one SSE connection: (path, query params) → events. Raises ApiStatusError for an error status.
Connect = Callable[[str, dict[str, str]], AbstractAsyncContextManager[AsyncIterator[ServerSentEvent]]]

# An idle close sooner than this after connecting is paced with backoff before reconnecting.
HEALTHY_CONNECTION_SECONDS = 1.0


class _Transient(Exception):
    """A drop worth reconnecting after. `idle` marks the server's or client's idle timeout."""

    def __init__(self, reason: str, *, idle: bool = False, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.idle = idle
        self.retry_after = retry_after


def _event_error(sse: ServerSentEvent, path: str) -> ApiStatusError:
    try:
        data = json.loads(sse.data) if sse.data else {}
        code = int(data.get("code", 500))
        message = str(data.get("message", ""))
    except (ValueError, TypeError, AttributeError):
        code, message = 500, sse.data[:200]
    return error_for_status(code, message, method="GET", path=path)


def _classify(exc: BaseException) -> _Transient | None:
    """The reconnectable form of a failure, or None if it is permanent."""
    if isinstance(exc, ApiStatusError):
        if exc.status == 408:
            return _Transient(f"408 {exc.message}", idle=True)
        if is_retryable_status(exc.status):
            return _Transient(f"{exc.status} {exc.message}", retry_after=exc.retry_after)
        return None
    if isinstance(exc, httpx.TimeoutException):
        return _Transient("no data within the idle timeout", idle=True)
    if isinstance(exc, httpx.TransportError):
        return _Transient(type(exc).__name__ + (f": {exc}" if str(exc) else ""))
    return None


async def _resumable(
    connect: Connect,
    path: str,
    params: Callable[[], dict[str, str]],
    handle: Callable[[ServerSentEvent], Any],
    policy: RetryPolicy,
    *,
    end_on_close: bool,
) -> AsyncIterator[Any]:
    """Yield `handle(event)` results (None results skipped) across reconnects."""
    failures = 0  # consecutive drops without data, idle closes excluded
    idles = 0  # consecutive quick idle closes: paced, never fatal
    while True:
        progressed = False
        started = time.monotonic()
        try:
            try:
                async with connect(path, params()) as events:
                    async for sse in events:
                        if sse.event == "error":
                            raise _event_error(sse, path)
                        if sse.event not in ("", "message") or not sse.data.strip():
                            continue
                        item = handle(sse)
                        if item is None:
                            continue
                        progressed = True
                        failures = idles = 0
                        yield item
                if end_on_close:
                    return
                raise _Transient("server closed the stream")
            except (ApiStatusError, httpx.TransportError) as exc:
                transient = _classify(exc)
                if transient is None:
                    raise
                raise transient from None
        except _Transient as drop:
            if progressed:
                log.debug("stream %s dropped (%s); resuming", path, drop.reason)
                continue
            if drop.idle:
                # "Nothing new, ask again": the protocol's normal rhythm, not a failure. Only a
                # server that idles out at once is paced, so it cannot make us spin.
                if time.monotonic() - started < HEALTHY_CONNECTION_SECONDS:
                    idles += 1
                    await anyio.sleep(policy.backoff(idles))
                continue
            failures += 1
            if failures >= policy.max_attempts:
                raise StreamError(
                    f"stream {path} failed {failures} times in a row without data ({drop.reason}); "
                    "check the server, then resume from the last offset/sequence"
                ) from None
            delay = policy.backoff(failures, drop.retry_after)
            log.info("stream %s dropped (%s); reconnecting in %.2f s", path, drop.reason, delay)
            await anyio.sleep(delay)


def output_chunks(
    connect: Connect,
    devbox_id: str,
    execution_id: str,
    stream: Literal["stdout", "stderr"],
    offset: int,
    policy: RetryPolicy,
) -> AsyncIterator[OutputChunk]:
    """Chunks of one output stream from byte `offset` until the server ends it (execution done)."""
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
    path = f"/v1/devboxes/{devbox_id}/executions/{execution_id}/stream_{stream}_updates"
    position = offset

    def handle(sse: ServerSentEvent) -> OutputChunk | None:
        nonlocal position
        try:
            text = json.loads(sse.data)["output"]
        except (ValueError, KeyError, TypeError):
            raise StreamError(f"stream {path} sent an event that is not an output chunk: {sse.data[:200]!r}") from None
        if not isinstance(text, str):
            raise StreamError(f"stream {path} sent a non-text output: {sse.data[:200]!r}")
        if not text:
            return None
        position += len(text.encode("utf-8"))
        return OutputChunk(stream=stream, text=text, offset=position)

    return _resumable(connect, path, lambda: {"offset": str(position)}, handle, policy, end_on_close=True)


def axon_events(
    connect: Connect, axon_id: str, after_sequence: int | None, policy: RetryPolicy
) -> AsyncIterator[AxonEventView]:
    """Events of an axon after `after_sequence` (None: from the first), forever."""
    path = f"/v1/axons/{axon_id}/subscribe/sse"
    last = after_sequence

    def params() -> dict[str, str]:
        return {} if last is None else {"after_sequence": str(last)}

    def handle(sse: ServerSentEvent) -> AxonEventView | None:
        nonlocal last
        try:
            event = AxonEventView.model_validate_json(sse.data)
        except ValidationError:
            raise StreamError(f"stream {path} sent an event that is not an axon event: {sse.data[:200]!r}") from None
        if last is not None and event.sequence <= last:
            return None
        last = event.sequence
        return event

    return _resumable(connect, path, params, handle, policy, end_on_close=False)
