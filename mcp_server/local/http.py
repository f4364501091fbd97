"""Request parsing and response helpers shared by every route of the embedded backend."""

from __future__ import annotations

import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from . import validation
from .errors import ApiError

M = TypeVar("M", bound=BaseModel)

MAX_JSON_BODY = 64 * 1024 * 1024
# No API field needs a longer number; Python refuses to convert integers of more than 4300 digits.
MAX_NUMBER_DIGITS = 1000


async def body_chunks(request: Request, limit: int, hint: str = "") -> AsyncIterator[bytes]:
    """The request body as it arrives, refused with 413 as soon as it passes `limit` bytes.

    Every route reads its body through here: a chunked body has no Content-Length to check up
    front, so the bytes are counted while they arrive and nothing past the limit is read.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {int(declared)} bytes; the limit is {limit} bytes{hint}")
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ApiError(413, f"request body is more than {limit} bytes, the limit{hint}; nothing was done")
            if chunk:
                yield chunk
    except ClientDisconnect:
        # Nobody is left to read an answer; the status only keeps it out of the error log.
        raise ApiError(400, "the client closed the connection before the whole request body arrived") from None


async def read_body(request: Request, limit: int = MAX_JSON_BODY) -> bytearray:
    """The whole body (at most `limit` bytes), in one buffer that grows in place."""
    body = bytearray()
    async for chunk in body_chunks(request, limit, " (files this large go through upload_file)"):
        body += chunk
    return body


async def parse_body(request: Request, model: type[M]) -> M:
    """Parse a JSON body into `model`: 413 past the size limit, 400 for malformed JSON and for
    fields the model, or the published schema it names (`published_schema`, see `validation`), refuses.

    An empty body counts as `{}` because the SDK sends none for argument-less POSTs.
    """
    raw = await read_body(request)
    try:
        data = (
            json.loads(raw, parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float)
            if raw.strip()
            else {}
        )
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply; flatten it (no API field needs deep nesting)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw) and not _is_unicode(data):
        raise ApiError(
            400,
            "request body is not valid Unicode: a string holds a lone surrogate escape (\\ud800-\\udfff); "
            "send UTF-8 text",
        )
    published = getattr(model, "published_schema", None)
    if published is not None:
        validation.check(published, data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc)) from None


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; accepted, they would be stored and then break every view that echoes them."""
    raise ApiError(400, f"request body is not valid JSON: {name} is not a JSON number; send a finite number or a string")


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise ApiError(
            400, f"request body holds a number of {len(text)} digits; numbers may have at most {MAX_NUMBER_DIGITS}"
        )
    return int(text)


def _parse_float(text: str) -> float:
    """`1e999` parses as infinity, which is no more a JSON number than `Infinity` is."""
    if len(text) > MAX_NUMBER_DIGITS:
        raise ApiError(
            400, f"request body holds a number of {len(text)} characters; numbers may have at most {MAX_NUMBER_DIGITS}"
        )
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, f"request body holds the number {text[:40]}, which is too large for a 64-bit float")
    return value


# JSON may spell a lone UTF-16 surrogate (`"\ud800"`), which no file, process or database can
# take as text; only bodies with such an escape (pairs included) pay for the full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _is_unicode(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "invalid request: " + "; ".join(parts)


def query_int(request: Request, name: str, default: int | None, *, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):  # OverflowError: "inf", "1e999"
        raise ApiError(400, f"query parameter {name!r} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"query parameter {name!r} must be between {lo} and {hi}, got {value}")
    return value


def query_bool(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"query parameter {name!r} must be true or false, got {raw!r}")


def paginate(
    request: Request, items: Sequence[dict[str, Any]], items_key: str, *, id_key: str = "id"
) -> dict[str, Any]:
    """Runloop pagination over an already ordered list: `limit`, `starting_after`, `has_more`, `total_count`."""
    limit = query_int(request, "limit", 20, lo=1, hi=5000) or 20
    after = request.query_params.get("starting_after")
    start = 0
    if after:
        ids = [str(item[id_key]) for item in items]
        if after not in ids:
            raise ApiError(400, f"starting_after {after!r} is not an id in this list")
        start = ids.index(after) + 1
    page = list(items[start : start + limit])
    body: dict[str, Any] = {items_key: page, "has_more": start + limit < len(items)}
    if query_bool(request, "include_total_count", True):
        body["total_count"] = len(items)
    return body


class IdempotencyCache:
    """Remembers the result of a POST by its idempotency key (`x-request-id`).

    The official SDK reuses one key across the retries of one call, so a retry that
    arrives after the first attempt acted gets the first result instead of acting twice.
    Concurrent duplicates wait for the first to finish. Keys are kept for `ttl` seconds.
    """

    def __init__(self, ttl: float = 3600.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._done: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._pending: dict[str, anyio.Event] = {}

    async def run(self, key: str | None, action: Callable[[], Awaitable[Any]]) -> Any:
        if not key:
            return await action()
        while True:
            self._expire()
            if key in self._done:
                return self._done[key][1]
            pending = self._pending.get(key)
            if pending is None:
                break
            await pending.wait()
        event = self._pending[key] = anyio.Event()
        try:
            result = await action()
            self._done[key] = (time.monotonic(), result)
            return result
        finally:
            del self._pending[key]
            event.set()

    def _expire(self) -> None:
        now = time.monotonic()
        while self._done and (
            len(self._done) > self._max or now - next(iter(self._done.values()))[0] > self._ttl
        ):
            self._done.popitem(last=False)


def idempotency_key(request: Request, scope: str) -> str | None:
    key = request.headers.get("x-request-id")
    return f"{scope}:{key}" if key else None
