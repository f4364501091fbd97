"""The one error hierarchy of the Runloop client.

Every failure the client raises is a `RunloopError`. HTTP failures are `ApiStatusError`
subclasses chosen by status, carrying the API's `message`; `str()` is one line an agent can act
on (what failed, why, what to do), with one hint at most: for a status whose message is the API's
own account of the request (400, 404, 409, 422) the message is that hint, and a generic one is
added only when the API sent no message (the embedded backend's messages say what to do; a
second, generic hint would repeat or contradict them). Statuses about the caller's situation
(401, 403, 408, 429, 5xx) always get theirs. No error ever holds the API key: messages are redacted,
and transport exceptions are not chained (their request objects carry the Authorization header).
"""

from __future__ import annotations

from http import HTTPStatus


class RunloopError(Exception):
    """Base of every error the Runloop client raises."""


class InvalidArgument(RunloopError, ValueError):
    """The call was refused locally, before anything was sent (e.g. publishing a SYSTEM_EVENT)."""


class ConnectionFailed(RunloopError):
    """The API could not be reached (refused, reset, DNS, TLS) after the retries allowed."""

    def __init__(self, method: str, path: str, reason: str, *, attempts: int = 1) -> None:
        self.method = method
        self.path = path
        self.reason = reason
        self.attempts = attempts
        super().__init__(
            f"could not reach the Runloop API for {method} {path}: {reason}; "
            "check RUNLOOP_BASE_URL and that the server is up, then retry"
        )


class UnexpectedResponse(RunloopError):
    """The API answered 2xx with a body that is not the documented view (wrong JSON or fields)."""


class StreamError(RunloopError):
    """A server-sent-event stream failed for good (too many reconnects, or malformed data)."""


class WaitTimeout(RunloopError, TimeoutError):
    """A client-side wait (devbox status, execution status) reached its overall deadline.

    `last` holds the most recent view seen, if any, so the caller can report where things stand.
    """

    def __init__(self, what: str, seconds: float, last: object | None = None) -> None:
        self.what = what
        self.seconds = seconds
        self.last = last
        status = getattr(last, "status", None)
        now = f" (last status: {status})" if status else ""
        super().__init__(f"gave up waiting for {what} after {seconds:g} s{now}; wait again or check its state")


class FileTooLarge(RunloopError):
    """A file exceeded the size cap of a read/download; nothing beyond the cap was buffered."""

    def __init__(self, path: str, limit: int, size: int | None) -> None:
        self.path = path
        self.limit = limit
        self.size = size
        known = f"is {size} bytes" if size is not None else f"is larger than {limit} bytes"
        super().__init__(f"file {path!r} {known}, over the {limit}-byte limit; read a smaller part or raise the limit")


class ApiStatusError(RunloopError):
    """The API answered with an error status. `status` and `message` are the API's own."""

    hint = "see the message for what to change"
    # Whether `hint` is added even when the API's message says what went wrong (see the module docstring).
    hint_always = False
    # How many times the request was sent (set by the client; > 1 means retried).
    attempts = 1

    def __init__(
        self, status: int, message: str, *, method: str = "", path: str = "", retry_after: float | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        self.retry_after = retry_after
        super().__init__(status, message)

    def __str__(self) -> str:
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "error"
        where = f" from {self.method} {self.path}" if self.method else ""
        text = f"{self.status} {phrase}{where}: {self.message or '(no message)'}"
        return f"{text} ({self.hint})" if self.hint and (self.hint_always or not self.message) else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r}, path={self.path!r})"


class BadRequest(ApiStatusError):
    hint = "the request was refused; check its arguments"


class Authentication(ApiStatusError):
    hint = "check RUNLOOP_API_KEY"
    hint_always = True


class PermissionDenied(ApiStatusError):
    hint = "the API key may not do this"
    hint_always = True


class NotFound(ApiStatusError):
    hint = "check the id"


class Conflict(ApiStatusError):
    hint = "the resource is in a state that does not allow this; check its status"


class Unprocessable(ApiStatusError):
    hint = "check the arguments"


class RequestTimeout(ApiStatusError):
    hint = "the server timed out; retry"
    hint_always = True


class RateLimited(ApiStatusError):
    hint = "too many requests; wait and retry"
    hint_always = True


class ServerError(ApiStatusError):
    hint = "the API failed; retrying later may help"
    hint_always = True


_BY_STATUS: dict[int, type[ApiStatusError]] = {
    400: BadRequest,
    401: Authentication,
    403: PermissionDenied,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    422: Unprocessable,
    429: RateLimited,
}


def error_for_status(
    status: int, message: str, *, method: str = "", path: str = "", retry_after: float | None = None
) -> ApiStatusError:
    """The error class for an HTTP status (5xx → ServerError; other 4xx → ApiStatusError)."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiStatusError)
    return cls(status, message, method=method, path=path, retry_after=retry_after)


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced, so a key echoed by a server never escapes.

    Secrets shorter than 8 characters are not real keys and would redact ordinary words.
    """
    if not secret or len(secret) < 8:
        return text
    return text.replace(secret, "[redacted]")


class PtyDisconnected(RunloopError):
    """A PTY session's WebSocket could not be opened or was closed by the server.

    `code` is the WebSocket close code (None when the upgrade itself failed: `status` then holds
    the HTTP status of the refusal)."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        self.code = code
        self.status = status
        super().__init__(message)
