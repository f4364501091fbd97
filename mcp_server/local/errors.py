"""The one error type of the embedded backend, and how it becomes an HTTP response.

Every failure a client can cause is an `ApiError` with a status and a message that
says what went wrong and what to do; anything else is a bug and answers 500 with a
generic message (the details go to the log, never to the client).
"""

from __future__ import annotations

import errno
import logging

import apsw
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("devbox_mcp.local")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(kind: str, ident: str, hint: str) -> ApiError:
    """A 404 naming what was missing and the one thing to do about it (`hint` must be doable:
    executions, for one, cannot be listed)."""
    return ApiError(404, f"{kind} {ident!r} not found; {hint}")


def conflict(message: str) -> ApiError:
    return ApiError(409, message)


# -- a full disk ----------------------------------------------------------------------------
# Not the client's fault and not a bug: 507 (Insufficient Storage) with a message that says so.
# Each write path leaves nothing half-written and answers `disk_full(...)`; the handlers below
# catch whatever path was missed, so a full disk is never a 500.

DISK_FULL_STATUS = 507


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, apsw.FullError):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(action: str) -> ApiError:
    """The error for a write refused by a full disk, once the write path has undone what it began."""
    return ApiError(
        DISK_FULL_STATUS,
        f"cannot {action}: the disk is full (no space left where the embedded backend keeps its data); "
        "nothing was changed. Free space (shut down devboxes you no longer need, delete files) and retry",
    )


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"message": exc.message}, status_code=exc.status)


async def os_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A full disk that a write path did not handle itself: still a 507 and no traceback; other OS errors are bugs."""
    if not is_disk_full(exc):
        return await unexpected_error_handler(request, exc)
    log.warning("disk full on %s %s: %s", request.method, request.url.path, exc)
    message = (
        "the disk is full (no space left where the embedded backend keeps its data), so the request did not "
        "complete. Free space (shut down devboxes you no longer need, delete files) and retry"
    )
    return JSONResponse({"message": message}, status_code=DISK_FULL_STATUS)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"message": "internal error in the embedded backend; see its log"}, status_code=500)
